//! `diskdelta signature IMAGE [-o SIG]` and `signature --from-snapshot SNAPSHOT`

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use diskdelta::delta::{create_signature, SignatureOptions};
use diskdelta::format::signature::SignatureReader;
use diskdelta::io::{Input, InputOptions, Output, OutputKind};
use diskdelta::repo::restore::{self, RestoreOptions};
use diskdelta::units::human_bytes;
use diskdelta::BlockSize;
use serde::Serialize;

use crate::cli::SignatureArgs;
use crate::progress::Progress;
use crate::report;

#[derive(Serialize)]
struct SignatureReport {
    image_size: u64,
    image_digest: String,
    block_size: u32,
    blocks: u64,
    signature_bytes: u64,
    seconds: f64,
    bytes_per_second: f64,
}

pub fn run(args: SignatureArgs) -> anyhow::Result<()> {
    let block_size: BlockSize = args
        .block_size
        .parse()
        .with_context(|| "invalid --block-size")?;
    if block_size.get() > 1 << 20 {
        bail!("--block-size of a signature is at most 1M");
    }
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let started = Instant::now();
    let mut output = Output::create(&out_path)?;
    output.set_sparse(false);
    let (mut output, summary) = match (&args.from_snapshot, &args.image) {
        (Some(spec), _) => {
            let repo = super::open_repo(&args.repo, false)?;
            let snap = repo.resolve(spec)?;
            let progress = Progress::start("signature", Some(snap.meta.size), args.common.quiet);
            // The snapshot is restored into a pipe that the signature reads;
            // the restore's own digest check decides whether the signature
            // may be published.
            let (read_end, write_end) = std::io::pipe().context("cannot create a pipe")?;
            let write_path = PathBuf::from(format!("/proc/self/fd/{}", write_end.as_raw_fd()));
            let restore_output = Output::create(&write_path)?;
            drop(write_end);
            let read_path = PathBuf::from(format!("/proc/self/fd/{}", read_end.as_raw_fd()));
            let image = Input::open(&read_path, &InputOptions::default())?;
            drop(read_end);
            let restore_options = RestoreOptions {
                threads: 0,
                progress: Some(progress.counter()),
            };
            let result = std::thread::scope(|scope| {
                let restorer = scope
                    .spawn(|| restore::restore(&repo, &snap, restore_output, &restore_options));
                let options = SignatureOptions {
                    block_size,
                    image_size: Some(snap.meta.size),
                    seed: args.seed,
                    ..SignatureOptions::default()
                };
                let made = create_signature(image, output, &options);
                let restored = restorer.join();
                (made, restored)
            });
            drop(progress);
            match result {
                (_, Err(_)) => bail!("internal error: the restore thread panicked"),
                (_, Ok(Err(e))) => {
                    return Err(e).with_context(|| format!("cannot read snapshot {spec}"))
                }
                (made, Ok(Ok(_))) => made.with_context(|| {
                    format!("cannot write the signature to {}", out_path.display())
                })?,
            }
        }
        (None, Some(image_path)) => {
            let image = Input::open(image_path, &InputOptions::default())?;
            if super::same_file(&out_path, image.file()) {
                bail!(
                    "refusing to overwrite the image ({}) with its signature",
                    image.path().display()
                );
            }
            let progress = Progress::start("signature", image.size(), args.common.quiet);
            let options = SignatureOptions {
                block_size,
                progress: Some(progress.counter()),
                seed: args.seed,
                ..SignatureOptions::default()
            };
            let made = create_signature(image, output, &options)
                .with_context(|| format!("cannot write the signature to {}", out_path.display()))?;
            drop(progress);
            made
        }
        (None, None) => bail!("give IMAGE or --from-snapshot SNAPSHOT"),
    };
    output.flush()?;
    if matches!(output.kind(), OutputKind::File) {
        // Read it back before publishing: a signature that does not verify
        // must never appear under its final name.
        let mut reader = SignatureReader::new(std::io::BufReader::new(output.read_back()?))
            .context("the signature written does not verify")?;
        while reader
            .next_hash()
            .context("the signature written does not verify")?
            .is_some()
        {}
    }
    output.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    let line = format!(
        "signature: {} blocks of {}, image {}, signature {} ({:.2} s, {})",
        summary.blocks,
        human_bytes(u64::from(summary.block_size)),
        human_bytes(summary.image_size),
        human_bytes(summary.signature_bytes),
        seconds,
        report::rate(summary.image_size, seconds),
    );
    report::summary(
        &args.common,
        out_path == Path::new("-"),
        &line,
        &SignatureReport {
            image_size: summary.image_size,
            image_digest: summary.image_digest.to_hex(),
            block_size: summary.block_size,
            blocks: summary.blocks,
            signature_bytes: summary.signature_bytes,
            seconds,
            bytes_per_second: summary.image_size as f64 / seconds.max(1e-9),
        },
    )
}
