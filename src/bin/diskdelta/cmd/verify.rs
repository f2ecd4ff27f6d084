//! `diskdelta verify [--read-data]`

use diskdelta::repo::maintenance;
use diskdelta::repo::RepoError;

use crate::cli::VerifyArgs;
use crate::progress::Progress;

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let progress = Progress::start("verify", None, args.common.quiet || !args.read_data);
    let counter = progress.counter();
    let total = progress.total();
    let report_progress = move |done: u64, all: u64| {
        total.store(all, std::sync::atomic::Ordering::Relaxed);
        counter.store(done, std::sync::atomic::Ordering::Relaxed);
    };
    let report = maintenance::verify(&repo, args.read_data, Some(&report_progress))?;
    drop(progress);
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        for s in &report.damaged_snapshots {
            eprintln!(
                "damaged snapshot: {} {} {}",
                &s.id[..8.min(s.id.len())],
                s.name,
                s.time
            );
        }
        if !args.common.quiet {
            eprintln!(
                "verify{}: {} snapshots, {} packs{}, {} orphan packs, {} errors",
                if args.read_data { " --read-data" } else { "" },
                report.snapshots,
                report.packs,
                if args.read_data {
                    format!(", {} chunks read", report.chunks_read)
                } else {
                    String::new()
                },
                report.orphan_packs,
                report.errors.len()
            );
        }
    }
    if !report.errors.is_empty() {
        return Err(RepoError::Damaged(format!(
            "verify found {} problems affecting {} snapshots",
            report.errors.len(),
            report.damaged_snapshots.len()
        ))
        .into());
    }
    Ok(())
}
