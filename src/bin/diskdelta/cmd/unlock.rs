//! `diskdelta unlock [--all]`

use diskdelta::repo::lock;

use crate::cli::UnlockArgs;
use crate::report;

pub fn run(args: UnlockArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let removed = lock::unlock(repo.backend().as_ref(), args.all)?;
    if !args.common.json && !args.common.quiet {
        for r in &removed {
            eprintln!("removed {r}");
        }
    }
    report::summary(
        &args.common,
        false,
        &format!("unlock: {} locks removed", removed.len()),
        &serde_json::json!({ "removed": removed }),
    )
}
