//! `diskdelta snapshots [NAME]`

use diskdelta::units::human_bytes;
use serde::Serialize;

use crate::cli::SnapshotsArgs;

#[derive(Serialize)]
struct Row {
    id: String,
    name: String,
    time: String,
    size: u64,
    source: String,
    host: String,
    tags: Vec<String>,
    digest: String,
    chunk_size: u32,
    parent: Option<String>,
}

pub fn run(args: SnapshotsArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let rows: Vec<Row> = repo
        .snapshots()?
        .into_iter()
        .filter(|s| args.name.as_ref().is_none_or(|n| &s.meta.name == n))
        .map(|s| Row {
            id: s.id.to_hex(),
            name: s.meta.name,
            time: s.meta.time,
            size: s.meta.size,
            source: s.meta.source,
            host: s.meta.host,
            tags: s.meta.tags,
            digest: s.meta.digest,
            chunk_size: s.meta.chunk_size,
            parent: s.meta.parent,
        })
        .collect();
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        if !args.common.quiet {
            eprintln!("no snapshots");
        }
        return Ok(());
    }
    println!(
        "{:<10} {:<20} {:<24} {:>10}  {:<30} tags",
        "id", "time", "name", "size", "source"
    );
    for r in &rows {
        println!(
            "{:<10} {:<20} {:<24} {:>10}  {:<30} {}",
            &r.id[..8],
            r.time.replace('T', " ").trim_end_matches('Z'),
            r.name,
            human_bytes(r.size),
            r.source,
            r.tags.join(",")
        );
    }
    Ok(())
}
