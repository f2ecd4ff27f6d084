//! `diskdelta info DELTA [--json]`

use diskdelta::io::{Input, InputOptions};
use diskdelta::units::human_bytes;

use crate::cli::InfoArgs;

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let format = super::delta_kind(args.format.as_deref())?;
    let block_size = super::record_size(args.block_size.as_deref())?;
    let delta = Input::open(&args.delta, &InputOptions::default())?;
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
        match (info.checksums, info.zstd_ref_extents) {
            (false, _) => "none: this format cannot be verified".to_string(),
            (true, 0) => "yes (all verified)".to_string(),
            (true, n) => format!(
                "yes (all verified but the {n} records compressed against OLD: those are verified when applied)"
            ),
        }
    );
    if let Some(bs) = info.block_size {
        println!("block size:    {bs}");
    }
    println!("OLD size:      {}", size(info.old_size));
    println!("NEW size:      {}", size(info.new_size));
    println!(
        "extents:       {} ({} zstd against OLD, {} zstd, {} raw, {} zero)",
        info.extents, info.zstd_ref_extents, info.zstd_extents, info.raw_extents, info.zero_extents
    );
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
