//! `diskdelta info DELTA... [--json]`

use anyhow::bail;
use diskdelta::delta::chain::{describe_series, Link};
use diskdelta::io::{Input, InputOptions};
use diskdelta::units::human_bytes;
use serde::Serialize;

use crate::cli::InfoArgs;

#[derive(Serialize)]
struct SeriesReport {
    connects: bool,
    problem: Option<String>,
    old_size: u64,
    new_size: u64,
    changed_bytes: u64,
    stored_bytes: u64,
    deltas: Vec<SeriesDelta>,
}

#[derive(Serialize)]
struct SeriesDelta {
    path: String,
    old_size: u64,
    new_size: u64,
    records: u64,
    changed_bytes: u64,
    stored_bytes: u64,
    /// `connects`, `sizes-agree` (change-tracked: no OLD digest) or
    /// `broken`; absent for the first.
    link: Option<&'static str>,
}

/// `info D1 ... Dn`: whether the series connects, from the deltas' ends.
fn run_series(args: &InfoArgs) -> anyhow::Result<()> {
    if args.format.as_deref().is_some_and(|f| f != "diskdelta") {
        bail!("only diskdelta deltas, which record their images' digests, form a series");
    }
    let deltas = args
        .deltas
        .iter()
        .map(|d| Input::open(d, &InputOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let entries = describe_series(deltas)?;
    let problem = entries.iter().find_map(|e| match &e.link {
        Some(Link::Broken(why)) => Some(why.clone()),
        _ => None,
    });
    let report = SeriesReport {
        connects: problem.is_none(),
        problem: problem.clone(),
        old_size: entries.first().map_or(0, |e| e.old_size),
        new_size: entries.last().map_or(0, |e| e.new_size),
        changed_bytes: entries.iter().map(|e| e.changed_bytes).sum(),
        stored_bytes: entries.iter().map(|e| e.stored_bytes).sum(),
        deltas: entries
            .iter()
            .map(|e| SeriesDelta {
                path: e.path.display().to_string(),
                old_size: e.old_size,
                new_size: e.new_size,
                records: e.records,
                changed_bytes: e.changed_bytes,
                stored_bytes: e.stored_bytes,
                link: e.link.as_ref().map(|l| match l {
                    Link::Connects => "connects",
                    Link::SizesAgree => "sizes-agree",
                    Link::Broken(_) => "broken",
                }),
            })
            .collect(),
    };
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (i, (d, e)) in report.deltas.iter().zip(&entries).enumerate() {
            let link = match &e.link {
                None => "first".to_string(),
                Some(Link::Connects) => "follows the previous".to_string(),
                Some(Link::SizesAgree) => {
                    "sizes agree (change-tracked: no OLD digest to compare)".to_string()
                }
                Some(Link::Broken(_)) => "DOES NOT FOLLOW the previous".to_string(),
            };
            println!(
                "{:>3}. {}: {} -> {}, {} records, {} changed, {} stored; {link}",
                i + 1,
                d.path,
                human_bytes(d.old_size),
                human_bytes(d.new_size),
                d.records,
                human_bytes(d.changed_bytes),
                human_bytes(d.stored_bytes),
            );
        }
        println!(
            "series:        {}",
            if report.connects {
                "connects"
            } else {
                "does not connect"
            }
        );
        println!(
            "sizes:         {} -> {}",
            human_bytes(report.old_size),
            human_bytes(report.new_size)
        );
        println!(
            "changed:       {} in all",
            human_bytes(report.changed_bytes)
        );
        println!("stored:        {} in all", human_bytes(report.stored_bytes));
    }
    if let Some(why) = problem {
        bail!("the series does not connect: {why}");
    }
    Ok(())
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    if args.deltas.len() > 1 {
        return run_series(&args);
    }
    let format = super::delta_kind(args.format.as_deref())?;
    let block_size = super::record_size(args.block_size.as_deref())?;
    let delta = Input::open(&args.deltas[0], &InputOptions::default())?;
    let info = diskdelta::inspect(delta, format, block_size)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let size = |s: Option<u64>| {
        s.map_or_else(|| "unknown".into(), |n| format!("{n} ({})", human_bytes(n)))
    };
    println!(
        "format:        {}{}",
        info.format,
        info.version.map_or(String::new(), |v| format!(" v{v}"))
    );
    println!(
        "checksums:     {}",
        match (info.checksums, info.zstd_ref_extents + info.copy_extents) {
            (false, _) => "none: this format cannot be verified".to_string(),
            (true, 0) => "yes (all verified)".to_string(),
            (true, n) => format!(
                "yes (all verified but the {n} records made from OLD's bytes: those are verified when applied)"
            ),
        }
    );
    if let Some(bs) = info.block_size {
        println!("block size:    {bs}");
    }
    println!("OLD size:      {}", size(info.old_size));
    println!("NEW size:      {}", size(info.new_size));
    println!(
        "extents:       {} ({} copied from OLD, {} zstd against OLD, {} zstd, {} raw, {} zero)",
        info.extents,
        info.copy_extents,
        info.zstd_ref_extents,
        info.zstd_extents,
        info.raw_extents,
        info.zero_extents
    );
    if info.copy_extents > 0 {
        println!("copied:        {}", size(Some(info.copied_bytes)));
    }
    println!("changed:       {}", size(Some(info.changed_bytes)));
    println!("stored:        {}", size(Some(info.stored_bytes)));
    println!("delta file:    {}", size(Some(info.delta_bytes)));
    println!("compression:   {:.2}x", info.compression_ratio);
    if let Some(d) = &info.old_digest {
        println!("OLD digest:    {d}");
    }
    if let Some(d) = &info.new_digest {
        println!("NEW digest:    {d}");
    }
    if info.checksums {
        println!("base samples:  {}", info.base_samples);
    }
    if info.change_tracked {
        println!(
            "origin:        change tracking (OLD was not read; NEW was read only where it changed)"
        );
    }
    Ok(())
}
