//! `diskdelta copy --from REPO [SNAPSHOT|NAME...]`

use diskdelta::format::snapshot::Snapshot;
use diskdelta::repo::{copy, Repository};
use diskdelta::units::human_bytes;

use crate::cli::{CopyArgs, RepoArg};
use crate::report;

/// The snapshots `specs` select: every snapshot of a name, else the one an
/// id or prefix names; all of them without specs. Oldest first.
fn select(repo: &Repository, specs: &[String]) -> anyhow::Result<Vec<Snapshot>> {
    let all = repo.snapshots_strict()?;
    let mut chosen: Vec<Snapshot> = if specs.is_empty() {
        all
    } else {
        let mut out: Vec<Snapshot> = Vec::new();
        for spec in specs {
            let named: Vec<&Snapshot> = all.iter().filter(|s| s.meta.name == *spec).collect();
            let found = if named.is_empty() {
                vec![repo.resolve(spec)?]
            } else {
                named.into_iter().cloned().collect()
            };
            for s in found {
                if !out.iter().any(|o| o.id == s.id) {
                    out.push(s);
                }
            }
        }
        out
    };
    chosen.sort_by(|a, b| a.meta.time.cmp(&b.meta.time));
    Ok(chosen)
}

pub fn run(args: CopyArgs) -> anyhow::Result<()> {
    let from = super::open_repo(
        &RepoArg {
            repo: Some(args.from.clone()),
            password_file: args.from_password_file.clone(),
            password_command: args.from_password_command.clone(),
            password_env: Some("DISKDELTA_FROM_PASSWORD"),
            deploy: args.repo.deploy,
        },
        false,
    )?;
    let to = super::open_repo(&args.repo, false)?;
    if from.config().id == to.config().id {
        anyhow::bail!(
            "--from and -r are the same repository ({})",
            to.backend().location()
        );
    }
    let snapshots = select(&from, &args.snapshots)?;
    let r = copy::copy(&from, &to, &snapshots)?;
    super::warn_stale_locks(&r.stale_locks, args.common.quiet);
    let line = format!(
        "copy {} -> {}: {} snapshots copied, {} already there; {} chunks sent ({}), {} already there ({:.2} s)",
        from.backend().location(),
        to.backend().location(),
        r.copied.len(),
        r.already_present.len(),
        r.chunks_copied,
        human_bytes(r.bytes_copied),
        r.chunks_present,
        r.seconds
    );
    report::summary(&args.common, false, &line, &r)
}
