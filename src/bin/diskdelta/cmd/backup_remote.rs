//! Remote sources of `backup`: the image is read by `diskdelta serve` on
//! the remote host over ssh.

use anyhow::bail;
use diskdelta::repo::backup::{BackupOptions, BackupSummary};
use diskdelta::repo::Repository;
use diskdelta::sync::location::Location;

pub fn run(
    _repo: &Repository,
    loc: &Location,
    _sudo: bool,
    _rsh: &str,
    _remote_path: &str,
    _options: BackupOptions,
    _quiet: bool,
) -> anyhow::Result<BackupSummary> {
    bail!("remote sources are not supported yet: {}", loc.display())
}
