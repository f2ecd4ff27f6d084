//! `diskdelta diff OLD NEW [-o DELTA]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use diskdelta::delta::inspect_stream;
use diskdelta::io::{Input, InputOptions, Output, OutputKind};
use diskdelta::units::human_bytes;
use diskdelta::{create_delta, BlockSize, Compression, DiffOptions, OutputFormat};
use serde::Serialize;

use crate::cli::DiffArgs;
use crate::progress::Progress;
use crate::report;

#[derive(Serialize)]
struct DiffReport {
    format: &'static str,
    old_size: u64,
    new_size: u64,
    extents: u64,
    changed_bytes: u64,
    delta_bytes: u64,
    seconds: f64,
    bytes_per_second: f64,
    old_digest: String,
    new_digest: String,
}

fn parse_compression(text: &str) -> anyhow::Result<Compression> {
    match text.split_once(':') {
        None if text == "none" => Ok(Compression::None),
        None if text == "zstd" => Ok(Compression::DEFAULT),
        Some(("zstd", level)) => {
            let level: i32 = level
                .parse()
                .with_context(|| format!("invalid zstd level {level:?}"))?;
            if !(1..=19).contains(&level) {
                bail!("zstd level {level} out of range (1-19)");
            }
            Ok(Compression::Zstd(level))
        }
        _ => bail!("invalid --compress {text:?} (expected none, zstd or zstd:LEVEL)"),
    }
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let block_size: BlockSize = args
        .block_size
        .parse()
        .with_context(|| "invalid --block-size")?;
    let compression = parse_compression(&args.compress)?;
    let format = match args.format.as_str() {
        "diskdelta" => OutputFormat::Native,
        "diff-dd-v2" => OutputFormat::DiffDdV2,
        other => bail!("unknown output format {other:?} (expected diskdelta or diff-dd-v2)"),
    };
    if args.old == Path::new("-") && args.new == Path::new("-") {
        bail!("OLD and NEW cannot both be stdin");
    }
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let input_options = InputOptions {
        direct: args.direct,
    };
    let old = Input::open(&args.old, &input_options)?;
    let new = Input::open(&args.new, &input_options)?;
    for (name, input) in [("OLD", &old), ("NEW", &new)] {
        if super::same_file(&out_path, input.file()) {
            bail!(
                "refusing to overwrite {name} ({}) with the delta",
                input.path().display()
            );
        }
    }
    if format == OutputFormat::DiffDdV2 {
        if let (Some(o), Some(n)) = (old.size(), new.size()) {
            if n < o {
                bail!(
                    "NEW ({n} bytes) is smaller than OLD ({o} bytes), which the diff-dd-v2 format cannot express"
                );
            }
        }
    }
    let mut output = Output::create(&out_path)?;
    output.set_sparse(false);

    let progress = Progress::start("diff", new.size(), args.common.quiet);
    let options = DiffOptions {
        block_size,
        compression,
        threads: args
            .threads
            .unwrap_or_else(|| DiffOptions::default().threads),
        format,
        progress: Some(progress.counter()),
    };
    let started = Instant::now();
    let (mut output, summary) = create_delta(old, new, output, &options)
        .with_context(|| format!("cannot write the delta to {}", out_path.display()))?;
    output.flush()?;
    let delta_bytes = output.position();
    if matches!(output.kind(), OutputKind::File) && format == OutputFormat::Native {
        // Read the delta back before publishing it: a delta that does not
        // verify must never appear under its final name.
        inspect_stream(&out_path, Box::new(output.read_back()?), None, None)
            .context("the delta written does not verify")?;
    }
    output.commit()?;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let line = format!(
        "diff: {} extents, {} of {} changed, delta {} ({:.2} s, {})",
        summary.records,
        human_bytes(summary.changed_bytes),
        human_bytes(summary.new_size),
        human_bytes(delta_bytes),
        seconds,
        report::rate(summary.new_size, seconds),
    );
    report::summary(
        &args.common,
        out_path == Path::new("-"),
        &line,
        &DiffReport {
            format: match format {
                OutputFormat::Native => "diskdelta",
                OutputFormat::DiffDdV2 => "diff-dd-v2",
            },
            old_size: summary.old_size,
            new_size: summary.new_size,
            extents: summary.records,
            changed_bytes: summary.changed_bytes,
            delta_bytes,
            seconds,
            bytes_per_second: summary.new_size as f64 / seconds.max(1e-9),
            old_digest: summary.old_digest.to_hex(),
            new_digest: summary.new_digest.to_hex(),
        },
    )
}
