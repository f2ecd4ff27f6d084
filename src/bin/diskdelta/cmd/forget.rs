//! `diskdelta forget`

use anyhow::bail;
use diskdelta::repo::maintenance::{self, ForgetSelection, KeepPolicy};

use crate::cli::ForgetArgs;
use crate::report;

pub fn run(args: ForgetArgs) -> anyhow::Result<()> {
    let policy = KeepPolicy {
        last: args.keep_last,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
    };
    let selection = match (args.snapshots.is_empty(), policy.is_empty()) {
        (false, true) => ForgetSelection::Snapshots(args.snapshots.clone()),
        (true, false) => ForgetSelection::Policy {
            policy,
            name: args.name.clone(),
        },
        (false, false) => bail!("give either SNAPSHOTs or --keep-* rules, not both"),
        (true, true) => {
            bail!("nothing to forget: give SNAPSHOTs or at least one --keep-* rule")
        }
    };
    let repo = super::open_repo(&args.repo, false)?;
    let r = maintenance::forget(&repo, &selection, args.prune, args.dry_run)?;
    if !args.common.json && !args.common.quiet {
        for d in &r.decisions {
            eprintln!(
                "{} {} {} {}{}",
                if d.keep { "keep  " } else { "remove" },
                &d.id[..8],
                d.time,
                d.name,
                if d.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.reasons.join(", "))
                }
            );
        }
    }
    let line = format!(
        "forget{}: {} snapshots removed{}",
        if r.dry_run { " (dry run)" } else { "" },
        r.removed,
        match &r.prune {
            Some(g) => format!(
                ", prune: {} packs deleted, {} repacked, {} chunks removed, {} freed{}",
                g.packs_deleted,
                g.packs_repacked,
                g.chunks_removed,
                diskdelta::units::human_bytes(g.bytes_freed),
                super::gc::left_in_packs(g)
            ),
            None => String::new(),
        }
    );
    report::summary(&args.common, false, &line, &r)
}
