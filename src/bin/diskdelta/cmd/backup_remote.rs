//! Remote sources of `backup`: the image is read by `diskdelta serve` on
//! the remote host over ssh.

use diskdelta::remote::connection::Connection;
use diskdelta::remote::location::Location;
use diskdelta::remote::ssh::Remote;
use diskdelta::repo::backup::{BackupOptions, BackupSession, BackupSummary};
use diskdelta::repo::claims::Claims;
use diskdelta::repo::{remote, Repository};
use std::sync::Arc;

#[allow(clippy::too_many_arguments)]
pub fn run(
    repo: &Repository,
    claims: &Arc<Claims>,
    loc: &Location,
    sudo: bool,
    rsh: &str,
    remote_path: &str,
    deploy: bool,
    options: BackupOptions,
    quiet: bool,
) -> anyhow::Result<BackupSummary> {
    let host = loc.host.clone().unwrap_or_default();
    let mut session = BackupSession::start(repo, options)?;
    session.share_claims(claims.clone());
    super::warn_stale_locks(&session.stale_locks, quiet);
    super::warn_damaged_index(&session.damaged_index_files);
    let mut conn = Connection::remote(&Remote {
        host,
        rsh: rsh.split_whitespace().map(str::to_string).collect(),
        remote_path: remote_path.to_string(),
        sudo,
        deploy: super::deployment(deploy)?,
    })?;
    let result = remote::run_remote(&session, &mut conn, &loc.path);
    let (wire_in, wire_out) = conn.wire_bytes();
    let closed = conn.close();
    let mut summary = result?;
    closed?;
    summary.bytes_sent = wire_in + wire_out;
    Ok(summary)
}
