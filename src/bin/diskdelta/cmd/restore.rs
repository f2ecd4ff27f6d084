//! `diskdelta restore SNAPSHOT [-o OUT | --in-place TARGET]`

use std::path::{Path, PathBuf};

use anyhow::Context;
use diskdelta::io::output::Output;
use diskdelta::repo::restore::{self, RestoreOptions};
use diskdelta::units::human_bytes;

use crate::cli::RestoreArgs;
use crate::progress::Progress;
use crate::report;

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let snap = repo.resolve(&args.snapshot)?;
    let progress = Progress::start("restore", Some(snap.meta.size), args.common.quiet);
    let options = RestoreOptions {
        threads: args.threads.unwrap_or(0),
        progress: Some(progress.counter()),
    };
    let (summary, target, to_stdout) = match &args.in_place {
        Some(target) => (
            restore::restore_in_place(&repo, &snap, target, &options)
                .with_context(|| format!("restore onto {} failed", target.display()))?,
            target.clone(),
            false,
        ),
        None if args.format != "raw" => {
            let out = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
            if out == Path::new("-") {
                anyhow::bail!("--format {} writes a file: give -o OUT", args.format);
            }
            (
                diskdelta::nbd::convert::restore_as(&repo, &snap, &out, &args.format, &options)
                    .with_context(|| format!("restore to {} failed", out.display()))?,
                out,
                false,
            )
        }
        None => {
            let out = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
            super::check_binary_stdout(&out)?;
            let output = Output::create(&out)?;
            let to_stdout = out == Path::new("-");
            (
                restore::restore(&repo, &snap, output, &options)
                    .with_context(|| format!("restore to {} failed", out.display()))?,
                out,
                to_stdout,
            )
        }
    };
    drop(progress);
    super::warn_damaged_index(&summary.damaged_index_files);
    if !summary.digest_checked && !args.common.quiet {
        eprintln!(
            "diskdelta: note: snapshot {} records no image digest (a change-tracked backup with {}-byte chunks): every chunk was checked against its id, the image as a whole could not be",
            &summary.snapshot[..8],
            snap.meta.chunk_size
        );
    }
    let line = format!(
        "restored {} ({} {}) to {}: {}, {} written, {} chunks fetched{}, {} ({:.2} s, {})",
        &summary.snapshot[..8],
        snap.meta.name,
        snap.meta.time,
        target.display(),
        human_bytes(summary.size),
        human_bytes(summary.bytes_written),
        summary.chunks_fetched,
        if args.in_place.is_some() {
            format!(", {} unchanged", summary.chunks_unchanged)
        } else {
            String::new()
        },
        if summary.digest_checked {
            "image digest verified"
        } else {
            "every chunk verified"
        },
        summary.seconds,
        report::rate(summary.size, summary.seconds)
    );
    report::summary(&args.common, to_stdout, &line, &summary)
}
