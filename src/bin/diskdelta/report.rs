//! Summaries: one human line on stderr, or JSON.

use std::io::Write;

use serde::Serialize;

use crate::cli::Common;

/// Prints a summary: JSON when `--json` (to stdout, or to stderr when stdout
/// carries data), else `line` on stderr unless `--quiet`.
pub fn summary<T: Serialize>(
    common: &Common,
    stdout_busy: bool,
    line: &str,
    value: &T,
) -> anyhow::Result<()> {
    if common.json {
        let text = serde_json::to_string_pretty(value)?;
        if stdout_busy {
            eprintln!("{text}");
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")?;
            out.flush()?;
        }
    } else if !common.quiet {
        eprintln!("{line}");
    }
    Ok(())
}

/// Decimal throughput, e.g. `1.92 GB/s`.
pub fn rate(bytes: u64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".into();
    }
    let r = bytes as f64 / seconds;
    if r >= 1e9 {
        format!("{:.2} GB/s", r / 1e9)
    } else {
        format!("{:.0} MB/s", r / 1e6)
    }
}
