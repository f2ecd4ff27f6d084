//! `diskdelta merge D1 D2 ... Dn [-o DELTA] [--base OLD]`

use std::path::{Path, PathBuf};

use anyhow::bail;
use diskdelta::io::{Input, InputOptions};
use diskdelta::{merge, DiffOptions, MergeOptions, OutputFormat};

use crate::cli::MergeArgs;
use crate::progress::Progress;

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let compression = super::diff::parse_compression(&args.compress)?;
    if args.deltas.iter().filter(|d| *d == Path::new("-")).count() > 1 {
        bail!("only one DELTA can be stdin");
    }
    let out_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    super::check_binary_stdout(&out_path)?;
    let deltas = args
        .deltas
        .iter()
        .map(|d| Input::open(d, &InputOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    for input in &deltas {
        if super::same_file(&out_path, input.file()) {
            bail!(
                "refusing to overwrite {} with the merged delta",
                input.path().display()
            );
        }
    }
    if let Some(base) = &args.base {
        if base == Path::new("-") {
            bail!(
                "--base must be a file or block device: merge reads it where the series changes it"
            );
        }
    }
    let options = MergeOptions {
        diff: DiffOptions {
            compression,
            threads: args
                .threads
                .unwrap_or_else(|| DiffOptions::default().threads),
            ..DiffOptions::default()
        },
    };
    let progress = Progress::start("merge", None, args.common.quiet);
    super::diff::publish(
        "merge",
        &args.common,
        &out_path,
        progress,
        OutputFormat::Native,
        |output| merge(deltas, args.base.as_deref(), output, &options),
    )
}
