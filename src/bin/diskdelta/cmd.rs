//! One module per subcommand; each converts raw arguments into library
//! options, runs the library, and reports.

mod apply;
mod diff;
mod hash;
mod info;
mod sync;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context};
use diskdelta::units::parse_size;
use diskdelta::DeltaKind;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Diff(a) => diff::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Info(a) => info::run(a),
        Command::Hash(a) => hash::run(a),
        Command::Sync(a) => sync::run(a),
        Command::Serve => Ok(diskdelta::sync::connection::serve_stdio()?),
    }
}

/// Parses `--format NAME` for reading deltas.
pub fn delta_kind(name: Option<&str>) -> anyhow::Result<Option<DeltaKind>> {
    name.map(|n| {
        DeltaKind::from_name(n).with_context(|| {
            format!(
                "unknown format {n:?} (expected diskdelta, diff-dd-v1, diff-dd-v2 or diff-dd-py)"
            )
        })
    })
    .transpose()
}

/// Parses an optional record size for foreign formats.
pub fn record_size(text: Option<&str>) -> anyhow::Result<Option<u32>> {
    text.map(|t| {
        let n = parse_size(t)?;
        match u32::try_from(n) {
            Ok(v) if v > 0 && v <= 64 << 20 => Ok(v),
            _ => bail!("block size {t} out of range (1 byte to 64M)"),
        }
    })
    .transpose()
}

/// True when `path` exists and is the same file as the open `file`.
pub fn same_file(path: &Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Refuses to write binary data to a terminal.
pub fn check_binary_stdout(path: &Path) -> anyhow::Result<()> {
    if path == Path::new("-") && std::io::stdout().is_terminal() {
        bail!("refusing to write binary data to a terminal: use -o FILE or redirect stdout");
    }
    Ok(())
}
