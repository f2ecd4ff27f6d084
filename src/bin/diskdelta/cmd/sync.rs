//! `diskdelta sync SRC DST`

use std::time::Instant;

use anyhow::{bail, Context};
use diskdelta::remote::connection::Connection;
use diskdelta::remote::location::Location;
use diskdelta::remote::ssh::Remote;
use diskdelta::sync::driver::{self, SyncOptions};
use diskdelta::units::{human_bytes, parse_size};
use serde::Serialize;

use crate::cli::SyncArgs;
use crate::progress::Progress;
use crate::report;

#[derive(Serialize)]
struct SyncReport {
    source: String,
    target: String,
    #[serde(flatten)]
    summary: driver::SyncSummary,
    wire_bytes_sent: u64,
    wire_bytes_received: u64,
    seconds: f64,
}

fn connect(loc: &Location, args: &SyncArgs, role: &str) -> anyhow::Result<Connection> {
    Ok(match &loc.host {
        None => Connection::local(role, diskdelta::sync::endpoint::serve),
        Some(host) => {
            let rsh: Vec<String> = args
                .remote
                .rsh
                .split_whitespace()
                .map(str::to_string)
                .collect();
            Connection::remote(&Remote {
                host: host.clone(),
                rsh,
                remote_path: args.remote.remote_path.clone(),
                sudo: false,
                deploy: super::deployment(args.deploy)?,
            })?
        }
    })
}

pub fn run(args: SyncArgs) -> anyhow::Result<()> {
    let block = parse_size(&args.block_size).context("invalid --block-size")?;
    if !block.is_power_of_two() || !(512..=1 << 20).contains(&block) {
        bail!("block size {block} must be a power of two from 512 to 1M");
    }
    let src_is_nbd = diskdelta::nbd::client::uri::is_nbd_uri(&args.src);
    let src = if src_is_nbd {
        // An NBD export, read by the local endpoint.
        Location {
            host: None,
            path: args.src.clone().into(),
        }
    } else {
        Location::parse(&args.src)?
    };
    let mut dst = Location::parse(&args.dst)?;
    if src_is_nbd && dst.host.is_none() && dst.path.is_dir() {
        bail!(
            "{} is a directory: give the target file's name for an NBD source",
            dst.path.display()
        );
    }
    if dst.host.is_none() && dst.path.is_dir() {
        let name = src
            .path
            .file_name()
            .with_context(|| format!("source {} has no file name", src.display()))?;
        dst.path = dst.path.join(name);
    }
    let started = Instant::now();
    let progress = Progress::start("sync", None, args.common.quiet);
    let options = SyncOptions {
        block: block as u32,
        dry_run: args.dry_run,
        compared: Some(progress.counter()),
        moved: None,
        total: Some(progress.total()),
    };
    let mut source = connect(&src, &args, "source")?;
    let mut target = connect(&dst, &args, "target")?;
    let summary = driver::run(&mut source, &mut target, &src.path, &dst.path, &options)
        .with_context(|| format!("sync {} -> {} failed", src.display(), dst.display()))?;
    let (in_a, out_a) = source.wire_bytes();
    let (in_b, out_b) = target.wire_bytes();
    source.close()?;
    target.close()?;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let line = format!(
        "sync{}: {} compared, {} blocks changed ({}), {} moved, {} on the wire{} ({:.2} s)",
        if summary.dry_run { " (dry run)" } else { "" },
        human_bytes(summary.bytes_compared),
        summary.changed_blocks,
        human_bytes(summary.changed_bytes),
        human_bytes(summary.payload_bytes),
        human_bytes(in_a + out_a + in_b + out_b),
        if summary.verified { ", verified" } else { "" },
        seconds
    );
    report::summary(
        &args.common,
        false,
        &line,
        &SyncReport {
            source: src.display(),
            target: dst.display(),
            summary,
            wire_bytes_sent: out_a + out_b,
            wire_bytes_received: in_a + in_b,
            seconds,
        },
    )
}
