//! Opening the change tracker chosen on the command line.

use std::io::BufReader;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use anyhow::Context;
use diskdelta::change::thin::{self, MetadataSnapshot, ThinSource};
use diskdelta::change::tracked::TrackedRuns;
use diskdelta::delta::tracked::RunStream;

use crate::cli::TrackingArgs;

/// A running change tracker.
pub struct Tracker {
    /// The runs it reports.
    pub runs: RunStream,
    /// What it is, for messages and `--json`.
    pub what: String,
    /// Thin id of NEW, when the tracker knows it.
    pub new_thin_id: Option<u64>,
    /// Thin id of OLD, when the tracker knows it.
    pub old_thin_id: Option<u64>,
    /// Held until the runs are read: released on drop and on interruption.
    _metadata_snapshot: Option<MetadataSnapshot>,
}

/// Starts the tracker `args` chose for NEW (`new` is its path), or `None`.
pub fn open(args: &TrackingArgs, new: &Path) -> anyhow::Result<Option<Tracker>> {
    if let Some(list) = &args.changed_ranges {
        let what = if list == Path::new("-") {
            "changed ranges on stdin".to_string()
        } else {
            list.display().to_string()
        };
        let runs = if list == Path::new("-") {
            TrackedRuns::parse(what.clone(), BufReader::new(std::io::stdin()))
        } else {
            let file = std::fs::File::open(list)
                .with_context(|| format!("cannot open {}", list.display()))?;
            TrackedRuns::parse(what.clone(), BufReader::with_capacity(1 << 16, file))
        };
        return Ok(Some(Tracker {
            runs: Box::new(runs),
            what,
            new_thin_id: None,
            old_thin_id: None,
            _metadata_snapshot: None,
        }));
    }
    if let Some(metadata) = &args.thin_metadata {
        let ids = args.thin_ids.as_deref().unwrap_or_default();
        let (old_id, new_id) = thin::parse_thin_ids(ids).map_err(anyhow::Error::msg)?;
        let kind = std::fs::metadata(metadata)
            .with_context(|| format!("cannot open thin metadata {}", metadata.display()))?;
        // A live metadata device is read through its reserved metadata
        // snapshot; a file is read as it is.
        let source = ThinSource {
            metadata: metadata.clone(),
            old_id,
            new_id,
            metadata_snap: kind.file_type().is_block_device(),
        };
        let runs = thin::thin_delta_runs(&source)?;
        return Ok(Some(Tracker {
            runs: Box::new(runs),
            what: format!(
                "thin_delta of devices {old_id} and {new_id} in {}",
                metadata.display()
            ),
            new_thin_id: Some(new_id),
            old_thin_id: Some(old_id),
            _metadata_snapshot: None,
        }));
    }
    if let Some(old) = &args.lvm {
        let pair = thin::lvm_pair(old, &new.display().to_string())?;
        let snapshot = MetadataSnapshot::reserve(&pair)?;
        let source = snapshot.source(&pair);
        let runs = thin::thin_delta_runs(&source)?;
        return Ok(Some(Tracker {
            runs: Box::new(runs),
            what: format!(
                "thin pool {}/{} (thin ids {} and {})",
                pair.pool.vg, pair.pool.lv, source.old_id, source.new_id
            ),
            new_thin_id: Some(source.new_id),
            old_thin_id: Some(source.old_id),
            _metadata_snapshot: Some(snapshot),
        }));
    }
    Ok(None)
}
