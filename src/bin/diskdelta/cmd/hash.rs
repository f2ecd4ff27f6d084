//! `diskdelta hash PATH...`: image digests as recorded in deltas.

use diskdelta::io::reader::ReaderOptions;
use diskdelta::io::{ChunkReader, Input, InputOptions};
use serde::Serialize;

use crate::cli::HashArgs;

#[derive(Serialize)]
struct HashReport {
    path: String,
    size: u64,
    digest: String,
}

pub fn run(args: HashArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.paths {
        let input = Input::open(
            path,
            &InputOptions {
                format: args.source_format.format(),
                ..InputOptions::default()
            },
        )?;
        let summary = ChunkReader::spawn(input, ReaderOptions::default()).finish()?;
        let report = HashReport {
            path: path.display().to_string(),
            size: summary.bytes,
            digest: summary.digest.map(|d| d.to_hex()).unwrap_or_default(),
        };
        if !args.common.json {
            println!("{}  {}  {}", report.digest, report.size, report.path);
        }
        reports.push(report);
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}
