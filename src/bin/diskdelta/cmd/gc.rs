//! `diskdelta gc [--dry-run]`

use diskdelta::repo::maintenance;
use diskdelta::units::human_bytes;

use crate::cli::GcArgs;
use crate::report;

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let r = maintenance::gc(&repo, args.dry_run)?;
    super::warn_stale_locks(&r.stale_locks, args.common.quiet);
    let mut line = format!(
        "gc{}: {} packs deleted, {} repacked into {}, {} orphan packs, {} chunks removed, {} freed",
        if r.dry_run { " (dry run)" } else { "" },
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        r.orphan_packs_deleted,
        r.chunks_removed,
        human_bytes(r.bytes_freed)
    );
    line.push_str(&left_in_packs(&r));
    if !r.damaged_index_files.is_empty() {
        line.push_str(&format!(
            ", {} damaged index files {} (their packs re-indexed from their own tables)",
            r.damaged_index_files.len(),
            if r.dry_run { "to replace" } else { "replaced" }
        ));
    }
    report::summary(&args.common, false, &line, &r)
}

/// The garbage gc leaves in packs that are mostly live, for the summary
/// line; empty when there is none.
pub fn left_in_packs(r: &maintenance::GcReport) -> String {
    if r.chunks_left == 0 {
        return String::new();
    }
    format!(
        " ({} unreferenced chunks, {}, {} in packs that are mostly live)",
        r.chunks_left,
        human_bytes(r.bytes_left),
        if r.dry_run { "would stay" } else { "stay" }
    )
}
