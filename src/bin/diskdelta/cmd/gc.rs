//! `diskdelta gc [--dry-run]`

use diskdelta::repo::maintenance;
use diskdelta::units::human_bytes;

use crate::cli::GcArgs;
use crate::report;

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let r = maintenance::gc(&repo, args.dry_run)?;
    super::warn_stale_locks(&r.stale_locks, args.common.quiet);
    let line = format!(
        "gc{}: {} packs deleted, {} repacked into {}, {} orphan packs, {} chunks removed, {} freed",
        if r.dry_run { " (dry run)" } else { "" },
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        r.orphan_packs_deleted,
        r.chunks_removed,
        human_bytes(r.bytes_freed)
    );
    report::summary(&args.common, false, &line, &r)
}
