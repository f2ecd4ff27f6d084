//! `diskdelta apply DELTA --base OLD [-o NEW]` and
//! `diskdelta apply DELTA --in-place TARGET`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use diskdelta::io::{Input, InputOptions, Output};
use diskdelta::units::human_bytes;
use diskdelta::{
    apply_chain_in_place, apply_chain_stream, apply_in_place, apply_stream, ApplyOptions,
    ApplySummary, CheckBase,
};
use serde::Serialize;

use crate::cli::ApplyArgs;
use crate::progress::Progress;
use crate::report;

#[derive(Serialize)]
struct ApplyReport {
    mode: &'static str,
    format: &'static str,
    new_size: u64,
    extents: u64,
    changed_bytes: u64,
    check_base: &'static str,
    verified: bool,
    new_digest: Option<String>,
    seconds: f64,
    bytes_per_second: f64,
    notes: Vec<String>,
}

fn parse_check(text: Option<&str>) -> anyhow::Result<Option<CheckBase>> {
    Ok(match text {
        None => None,
        Some("none") => Some(CheckBase::None),
        Some("sample") => Some(CheckBase::Sample),
        Some("full") => Some(CheckBase::Full),
        Some(other) => bail!("invalid --check-base {other:?} (expected none, sample or full)"),
    })
}

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let check_base = parse_check(args.check_base.as_deref())?;
    let format = super::delta_kind(args.format.as_deref())?;
    let block_size = super::record_size(args.block_size.as_deref())?;
    let started = Instant::now();
    let chain = args.deltas.len() > 1;
    if chain && format.is_some_and(|f| f != diskdelta::DeltaKind::Native) {
        bail!(
            "only diskdelta deltas, which record their images' digests, can be applied as a series"
        );
    }
    if args.deltas.iter().filter(|d| *d == Path::new("-")).count() > 1 {
        bail!("only one DELTA can be stdin");
    }
    let deltas = args
        .deltas
        .iter()
        .map(|d| Input::open(d, &InputOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let (mode, summary, stdout_busy) = if let Some(target) = &args.in_place {
        let progress = Progress::start("apply", None, args.common.quiet);
        let options = ApplyOptions {
            format,
            block_size,
            check_base,
            verify: args.verify,
            progress: Some(progress.counter()),
        };
        let summary = if chain {
            apply_chain_in_place(deltas, target, &options)?
        } else {
            apply_in_place(single(deltas)?, target, &options)?
        };
        ("in-place", summary, false)
    } else {
        let Some(base_path) = &args.base else {
            bail!("pass --base OLD (stream mode) or --in-place TARGET");
        };
        if check_base.is_some() {
            bail!("--check-base applies to --in-place; stream mode always checks the whole base against the OLD digest");
        }
        if args.deltas.iter().any(|d| d == Path::new("-")) && base_path == Path::new("-") {
            bail!("DELTA and OLD cannot both be stdin");
        }
        let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
        super::check_binary_stdout(&out_path)?;
        let base = Input::open(base_path, &InputOptions::default())?;
        let total = base.size();
        let output = Output::create(&out_path)?;
        let progress = Progress::start("apply", total, args.common.quiet);
        let options = ApplyOptions {
            format,
            block_size,
            check_base: None,
            verify: true,
            progress: Some(progress.counter()),
        };
        let summary = if chain {
            apply_chain_stream(deltas, base, output, &options)?
        } else {
            apply_stream(single(deltas)?, base, output, &options)?
        };
        ("stream", summary, out_path == Path::new("-"))
    };
    let seconds = started.elapsed().as_secs_f64();
    report_summary(&args, mode, &summary, seconds, stdout_busy)
}

fn single(mut deltas: Vec<Input>) -> anyhow::Result<Input> {
    match deltas.pop() {
        Some(d) if deltas.is_empty() => Ok(d),
        _ => bail!("expected one delta"),
    }
}

fn report_summary(
    args: &ApplyArgs,
    mode: &'static str,
    summary: &ApplySummary,
    seconds: f64,
    stdout_busy: bool,
) -> anyhow::Result<()> {
    if !args.common.quiet && !args.common.json {
        for note in &summary.notes {
            eprintln!("diskdelta: note: {note}");
        }
    }
    let line = format!(
        "apply ({mode}): {} extents, {} written from the delta, NEW {}{} ({:.2} s, {})",
        summary.extents,
        human_bytes(summary.changed_bytes),
        human_bytes(summary.new_size),
        if summary.verified { ", verified" } else { "" },
        seconds,
        report::rate(summary.new_size, seconds),
    );
    report::summary(
        &args.common,
        stdout_busy,
        &line,
        &ApplyReport {
            mode,
            format: summary.format.name(),
            new_size: summary.new_size,
            extents: summary.extents,
            changed_bytes: summary.changed_bytes,
            check_base: summary.check_base.name(),
            verified: summary.verified,
            new_digest: summary.new_digest.map(|d| d.to_hex()),
            seconds,
            bytes_per_second: summary.new_size as f64 / seconds.max(1e-9),
            notes: summary.notes.clone(),
        },
    )
}
