//! One module per subcommand; each converts raw arguments into library
//! options, runs the library, and reports.

mod apply;
mod backup;
mod backup_remote;
mod copy;
mod diff;
mod docs;
mod forget;
mod gc;
mod hash;
mod info;
mod init;
mod key;
mod merge;
mod mount;
mod nbd;
mod restore;
mod signature;
mod snapshots;
mod status;
mod sync;
mod tracking;
mod unlock;
mod verify;

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
        Command::Merge(a) => merge::run(a),
        Command::Signature(a) => signature::run(a),
        Command::Hash(a) => hash::run(a),
        Command::Sync(a) => sync::run(a),
        Command::Init(a) => init::run(a),
        Command::Backup(a) => backup::run(a),
        Command::Import(a) => backup::import(a),
        Command::Restore(a) => restore::run(a),
        Command::Nbd(a) => nbd::run(a),
        Command::Mount(a) => mount::run(a),
        Command::Snapshots(a) => snapshots::run(a),
        Command::Status(a) => status::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Forget(a) => forget::run(a),
        Command::Unlock(a) => unlock::run(a),
        Command::Copy(a) => copy::run(a),
        Command::Key(k) => key::run(k),
        Command::ImportDiskdump(a) => backup::import_diskdump(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::Serve(a) => Ok(diskdelta::service::serve_stdio(
            &diskdelta::repo::serve::ServeOptions {
                repo: a.repo,
                restrict_to: a.restrict_to_path,
                append_only: a.append_only,
            },
        )?),
    }
}

/// Where the repository is: `-r`, `DISKDELTA_REPO`, or the default directory.
pub fn repo_location(
    arg: &crate::cli::RepoArg,
) -> anyhow::Result<diskdelta::repo::location::RepoLocation> {
    use diskdelta::repo::location::{self, RepoLocation};
    match &arg.repo {
        Some(p) => Ok(location::parse(p.as_os_str())?),
        None => diskdelta::repo::default_location()
            .map(RepoLocation::Local)
            .context("no repository given and neither XDG_DATA_HOME nor HOME is set: pass -r PATH"),
    }
}

/// Opens the repository (`create`: make the default one on first use).
pub fn open_repo(
    arg: &crate::cli::RepoArg,
    create: bool,
) -> anyhow::Result<diskdelta::repo::Repository> {
    use diskdelta::repo::location::{self, RepoLocation};
    use diskdelta::repo::{InitOptions, RepoError, Repository};
    match repo_location(arg)? {
        RepoLocation::Local(path) => {
            // Only the embedded default is created implicitly; a path the
            // user typed must exist (a typo must not start a new empty
            // repository).
            let create = create && arg.repo.is_none();
            let where_ = path.display().to_string();
            let password = |new: bool| crate::password::repository_password(arg, &where_, new);
            let options = InitOptions::default();
            Ok(Repository::open_local(
                &path,
                create.then_some(&options),
                &password,
            )?)
        }
        loc => {
            let opened = location::open_backend_with(&loc, deployment_for(&loc, arg.deploy)?)?;
            let where_ = opened.backend.location();
            let password = |new: bool| crate::password::repository_password(arg, &where_, new);
            match Repository::open_with(opened.backend.clone(), &password) {
                Err(RepoError::Missing(where_)) => {
                    if let Some(s3) = &opened.s3 {
                        if !s3.bucket_exists()? {
                            bail!(
                                "bucket {} does not exist at {} (`diskdelta init` creates it)",
                                s3.options().bucket,
                                s3.options().endpoint
                            );
                        }
                    }
                    Err(RepoError::Missing(where_).into())
                }
                other => Ok(other?),
            }
        }
    }
}

/// The binary `--deploy` copies to remote hosts, loaded (read and hashed)
/// once per run and only when a remote host needs it.
pub fn deployment(
    wanted: bool,
) -> anyhow::Result<Option<std::sync::Arc<diskdelta::remote::deploy::Deployment>>> {
    use diskdelta::remote::deploy::Deployment;
    use std::sync::{Arc, OnceLock};
    static LOADED: OnceLock<Arc<Deployment>> = OnceLock::new();
    if !wanted {
        return Ok(None);
    }
    if let Some(d) = LOADED.get() {
        return Ok(Some(d.clone()));
    }
    let d = Arc::new(Deployment::from_env()?);
    Ok(Some(LOADED.get_or_init(|| d).clone()))
}

/// [`deployment`] for an `ssh://` repository location, `None` for others.
pub fn deployment_for(
    loc: &diskdelta::repo::location::RepoLocation,
    wanted: bool,
) -> anyhow::Result<Option<std::sync::Arc<diskdelta::remote::deploy::Deployment>>> {
    match loc {
        diskdelta::repo::location::RepoLocation::Ssh(_) => deployment(wanted),
        _ => Ok(None),
    }
}

/// Prints warnings about stale locks.
pub fn warn_stale_locks(lines: &[String], quiet: bool) {
    if !quiet {
        for l in lines {
            eprintln!("diskdelta: warning: {l}");
        }
    }
}

/// Reports index files that could not be read (always: the repository
/// needs attention even when a command got by without them).
pub fn warn_damaged_index(keys: &[String]) {
    for key in keys {
        eprintln!(
            "diskdelta: warning: index file {key} is damaged; its packs were read from their own tables (`diskdelta gc` replaces it)"
        );
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
pub fn same_file(path: &Path, file: Option<&std::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = file else {
        return false;
    };
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
