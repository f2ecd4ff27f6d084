//! `diskdelta diff OLD NEW [-o DELTA]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use diskdelta::delta::inspect_stream;
use diskdelta::delta::{
    create_delta_from_signature, create_delta_from_snapshot, create_tracked_delta,
};
use diskdelta::io::{Input, InputKind, InputOptions, Output, OutputKind};
use diskdelta::units::human_bytes;
use diskdelta::{create_delta, BlockSize, Compression, DiffOptions, OutputFormat};
use serde::Serialize;

use crate::cli::{Common, DiffArgs};
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
    old_digest: Option<String>,
    new_digest: Option<String>,
    bytes_read: u64,
    change_tracked: bool,
    copy_records: u64,
    copied_bytes: u64,
}

pub(super) fn parse_compression(text: &str) -> anyhow::Result<Compression> {
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
        .as_deref()
        .unwrap_or("4K")
        .parse()
        .with_context(|| "invalid --block-size")?;
    let compression = parse_compression(&args.compress)?;
    let format = match args.format.as_str() {
        "diskdelta" => OutputFormat::Native,
        "diskdelta-v2" => OutputFormat::NativeV2,
        "diskdelta-v1" => OutputFormat::NativeV1,
        "diff-dd-v2" => OutputFormat::DiffDdV2,
        other => bail!(
            "unknown output format {other:?} (expected diskdelta, diskdelta-v2, diskdelta-v1 or diff-dd-v2)"
        ),
    };
    if args.tracking.any() {
        return run_tracked(args, block_size, compression, format);
    }
    if args.from_snapshot.is_some() {
        return run_from_snapshot(args, compression, format);
    }
    if args.signature.is_some() {
        return run_from_signature(args, compression, format);
    }
    if args.base_sample.is_some() {
        bail!("--base-sample goes with change tracking (--changed-ranges, --thin-metadata, --lvm)");
    }
    let [old_path, new_path] = args.images.as_slice() else {
        bail!(
            "diff needs OLD and NEW (or NEW alone with --changed-ranges, --thin-metadata or --lvm)"
        );
    };
    if old_path == Path::new("-") && new_path == Path::new("-") {
        bail!("OLD and NEW cannot both be stdin");
    }
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let input_options = InputOptions {
        direct: args.direct,
        format: args.source_format.format(),
    };
    let old = Input::open(old_path, &input_options)?;
    let new = Input::open(new_path, &input_options)?;
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
    let options = diff_options(&args, block_size, compression, format);
    publish_diff(&args, &out_path, new.size(), options, |output, options| {
        create_delta(old, new, output, options)
    })
}

fn diff_options(
    args: &DiffArgs,
    block_size: BlockSize,
    compression: Compression,
    format: OutputFormat,
) -> DiffOptions {
    DiffOptions {
        block_size,
        compression,
        threads: args
            .threads
            .unwrap_or_else(|| DiffOptions::default().threads),
        format,
        progress: None,
        // The first pass is spooled beside the delta, where there is room
        // for the delta itself.
        spool_dir: args
            .output
            .as_deref()
            .filter(|p| *p != Path::new("-"))
            .and_then(Path::parent)
            .map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            })
            .map(Path::to_path_buf),
    }
}

/// `diff --changed-ranges/--thin-*/--lvm NEW`: reads only what changed.
fn run_tracked(
    args: DiffArgs,
    block_size: BlockSize,
    compression: Compression,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let [new_path] = args.images.as_slice() else {
        bail!("with change tracking, give only NEW: OLD is not read (--base-sample OLD samples it for apply's base check)");
    };
    if !format.is_native() {
        bail!("change-tracked deltas are written in the diskdelta format only");
    }
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let input_options = InputOptions {
        direct: args.direct,
        format: args.source_format.format(),
    };
    let new = Input::open(new_path, &input_options)?;
    if !matches!(new.kind(), InputKind::File | InputKind::BlockDevice) {
        bail!(
            "{}: change tracking reads NEW at the changed offsets: give a file or block device, not a pipe",
            new.path().display()
        );
    }
    let base = match &args.base_sample {
        Some(p) => Some(Input::open(p, &input_options)?),
        None => None,
    };
    for input in std::iter::once(&new).chain(base.as_ref()) {
        if super::same_file(&out_path, input.file()) {
            bail!(
                "refusing to overwrite {} with the delta",
                input.path().display()
            );
        }
    }
    let mut tracker =
        super::tracking::open(&args.tracking, new_path)?.context("no change tracker chosen")?;
    let runs = std::mem::replace(&mut tracker.runs, Box::new(std::iter::empty()));
    let result = publish_diff(
        &args,
        &out_path,
        new.size(),
        diff_options(&args, block_size, compression, format),
        |output, options| create_tracked_delta(runs, new, base, output, options),
    );
    // The metadata snapshot (LVM mode) is released only now, after
    // thin_delta's output was read to its end.
    drop(tracker);
    result
}

/// `diff --from-snapshot SNAPSHOT NEW`: OLD is a repository snapshot.
fn run_from_snapshot(
    args: DiffArgs,
    compression: Compression,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let [new_path] = args.images.as_slice() else {
        bail!("with --from-snapshot, give only NEW: the snapshot is OLD");
    };
    if !format.is_native() {
        bail!("deltas from a snapshot are written in the diskdelta format only");
    }
    let spec = args.from_snapshot.clone().unwrap_or_default();
    let repo = super::open_repo(&args.repo, false)?;
    let snap = repo.resolve(&spec)?;
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let new = Input::open(
        new_path,
        &InputOptions {
            direct: args.direct,
            format: args.source_format.format(),
        },
    )?;
    if super::same_file(&out_path, new.file()) {
        bail!(
            "refusing to overwrite NEW ({}) with the delta",
            new.path().display()
        );
    }
    publish_diff(
        &args,
        &out_path,
        new.size(),
        diff_options(&args, BlockSize::DEFAULT, compression, format),
        |output, options| create_delta_from_snapshot(&snap, new, output, options),
    )
}

/// `diff --signature SIG NEW`: OLD is described by a signature.
fn run_from_signature(
    args: DiffArgs,
    compression: Compression,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let [new_path] = args.images.as_slice() else {
        bail!("with --signature, give only NEW: the signature describes OLD");
    };
    if !format.is_native() {
        bail!("deltas from a signature are written in the diskdelta format only");
    }
    let sig_path = args.signature.clone().unwrap_or_default();
    if sig_path == Path::new("-") && new_path == Path::new("-") {
        bail!("the signature and NEW cannot both be stdin");
    }
    // The block size is the signature's unless one is asked for explicitly.
    let asked = match args.block_size.as_deref() {
        Some(text) => Some(
            text.parse::<BlockSize>()
                .with_context(|| "invalid --block-size")?,
        ),
        None => None,
    };
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let input_options = InputOptions {
        direct: args.direct,
        format: args.source_format.format(),
    };
    let sig = Input::open(&sig_path, &InputOptions::default())?;
    let new = Input::open(new_path, &input_options)?;
    for input in [&sig, &new] {
        if super::same_file(&out_path, input.file()) {
            bail!(
                "refusing to overwrite {} with the delta",
                input.path().display()
            );
        }
    }
    publish_diff(
        &args,
        &out_path,
        new.size(),
        diff_options(&args, BlockSize::DEFAULT, compression, format),
        |output, options| {
            create_delta_from_signature(Box::new(sig.into_file()?), new, output, asked, options)
        },
    )
}

/// [`publish`] for `diff`, with a progress bar over NEW's size.
fn publish_diff(
    args: &DiffArgs,
    out_path: &Path,
    new_size: Option<u64>,
    options: DiffOptions,
    make: impl FnOnce(
        Output,
        &DiffOptions,
    ) -> Result<(Output, diskdelta::DiffSummary), diskdelta::delta::DeltaError>,
) -> anyhow::Result<()> {
    let progress = Progress::start("diff", new_size, args.common.quiet);
    let options = DiffOptions {
        progress: Some(progress.counter()),
        ..options
    };
    publish(
        "diff",
        &args.common,
        out_path,
        progress,
        options.format,
        |output| make(output, &options),
    )
}

/// Writes a delta made by `make` to `out_path` (a temporary name first for
/// a file), reads it back to verify it, publishes it and reports.
pub(super) fn publish(
    verb: &str,
    common: &Common,
    out_path: &Path,
    progress: Progress,
    format: OutputFormat,
    make: impl FnOnce(Output) -> Result<(Output, diskdelta::DiffSummary), diskdelta::delta::DeltaError>,
) -> anyhow::Result<()> {
    let mut output = Output::create(out_path)?;
    output.set_sparse(false);
    let started = Instant::now();
    let (mut output, summary) = make(output)
        .with_context(|| format!("cannot write the delta to {}", out_path.display()))?;
    output.flush()?;
    let delta_bytes = output.position();
    if matches!(output.kind(), OutputKind::File) && format.is_native() {
        // Read the delta back before publishing it: a delta that does not
        // verify must never appear under its final name.
        inspect_stream(out_path, Box::new(output.read_back()?), None, None)
            .context("the delta written does not verify")?;
    }
    output.commit()?;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let mut line = format!(
        "{verb}: {} extents, {} of {} changed, delta {} ({:.2} s, {})",
        summary.records,
        human_bytes(summary.changed_bytes),
        human_bytes(summary.new_size),
        human_bytes(delta_bytes),
        seconds,
        report::rate(summary.new_size, seconds),
    );
    if summary.copy_records > 0 {
        line.push_str(&format!(
            "; {} found elsewhere in OLD ({} copy records)",
            human_bytes(summary.copied_bytes),
            summary.copy_records
        ));
    }
    if summary.change_tracked {
        line.push_str(&format!(
            "; change-tracked, read {}",
            human_bytes(summary.bytes_read)
        ));
    }
    report::summary(
        common,
        out_path == Path::new("-"),
        &line,
        &DiffReport {
            format: match format {
                OutputFormat::Native => "diskdelta",
                OutputFormat::NativeV2 => "diskdelta-v2",
                OutputFormat::NativeV1 => "diskdelta-v1",
                OutputFormat::DiffDdV2 => "diff-dd-v2",
            },
            old_size: summary.old_size,
            new_size: summary.new_size,
            extents: summary.records,
            changed_bytes: summary.changed_bytes,
            delta_bytes,
            seconds,
            bytes_per_second: summary.new_size as f64 / seconds.max(1e-9),
            old_digest: summary.old_digest.map(|d| d.to_hex()),
            new_digest: (summary.new_digest != diskdelta::digest::Digest::NONE)
                .then(|| summary.new_digest.to_hex()),
            bytes_read: summary.bytes_read,
            change_tracked: summary.change_tracked,
            copy_records: summary.copy_records,
            copied_bytes: summary.copied_bytes,
        },
    )
}
