//! `info`: what a delta holds, with every record decoded and verified.

use crate::digest::Digest;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::source::{DeltaKind, DeltaSource, DeltaStream};
use super::DeltaError;
use crate::io::Input;

/// A description of a delta, as printed by `info`.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaInfo {
    /// Format name (`diskdelta`, `diff-dd-v1`, `diff-dd-v2`, `diff-dd-py`).
    pub format: &'static str,
    /// Native format version.
    pub version: Option<u16>,
    /// True when the format carries checksums (every record and both images).
    pub checksums: bool,
    /// True when every checksum was verified (not those of records
    /// compressed against OLD, which need OLD).
    pub verified: bool,
    /// Comparison block size, where recorded.
    pub block_size: Option<u32>,
    /// OLD size in bytes, where recorded.
    pub old_size: Option<u64>,
    /// NEW size in bytes, where recorded or implied.
    pub new_size: Option<u64>,
    /// Number of extent records.
    pub extents: u64,
    /// Extent records by encoding.
    pub raw_extents: u64,
    /// zstd-compressed extents.
    pub zstd_extents: u64,
    /// Extents compressed against the OLD bytes they replace (version 2):
    /// their checksums can be verified only against OLD, when applied.
    pub zstd_ref_extents: u64,
    /// Extents copied from another offset of OLD (version 3): verified
    /// only against OLD, when applied.
    pub copy_extents: u64,
    /// NEW bytes carried by copy extents.
    pub copied_bytes: u64,
    /// Zero extents (holes).
    pub zero_extents: u64,
    /// NEW bytes covered by extents.
    pub changed_bytes: u64,
    /// Payload bytes stored for them.
    pub stored_bytes: u64,
    /// Size of the delta file.
    pub delta_bytes: u64,
    /// changed_bytes / stored_bytes of data extents.
    pub compression_ratio: f64,
    /// OLD image digest (hex), where recorded.
    pub old_digest: Option<String>,
    /// NEW image digest (hex), where recorded.
    pub new_digest: Option<String>,
    /// Number of sampled OLD blocks for `--check-base sample`.
    pub base_samples: usize,
    /// Made from change tracking (no OLD digest).
    pub change_tracked: bool,
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads a whole delta and describes it.
///
/// # Errors
/// Any format or I/O error; a delta that fails verification is an error.
pub fn inspect(
    delta: Input,
    format: Option<DeltaKind>,
    block_size: Option<u32>,
) -> Result<DeltaInfo, DeltaError> {
    let path = delta.path().to_path_buf();
    inspect_stream(&path, Box::new(delta.into_file()?), format, block_size)
}

/// Reads a whole delta from a stream and describes it.
///
/// # Errors
/// As [`inspect`].
pub fn inspect_stream(
    path: &Path,
    stream: DeltaStream,
    format: Option<DeltaKind>,
    block_size: Option<u32>,
) -> Result<DeltaInfo, DeltaError> {
    let count = Arc::new(AtomicU64::new(0));
    let stream: DeltaStream = Box::new(Counting {
        inner: stream,
        count: count.clone(),
    });
    let mut source = DeltaSource::open(path, stream, format, block_size)?;
    let kind = source.kind();
    let (mut extents, mut raw, mut zstd, mut zero) = (0u64, 0u64, 0u64, 0u64);
    let (mut zstd_ref, mut copies, mut copied) = (0u64, 0u64, 0u64);
    let (mut changed, mut stored, mut data_changed) = (0u64, 0u64, 0u64);
    while let Some(r) = source.next_record()? {
        extents += 1;
        changed += r.extent.len();
        stored += r.stored;
        match r.encoding {
            "zstd" => zstd += 1,
            "zstd-ref" => zstd_ref += 1,
            "copy" => {
                copies += 1;
                copied += r.extent.len();
            }
            "zero" => zero += 1,
            _ => raw += 1,
        }
        if r.encoding != "zero" && r.encoding != "copy" {
            data_changed += r.extent.len();
        }
    }
    let header = source.header().copied();
    let trailer = source.trailer().cloned();
    let ratio = if stored == 0 {
        1.0
    } else {
        data_changed as f64 / stored as f64
    };
    Ok(DeltaInfo {
        format: kind.name(),
        version: header.map(|h| h.version),
        checksums: kind.has_checksums(),
        verified: kind.has_checksums() && zstd_ref == 0 && copies == 0,
        block_size: header.map(|h| h.block_size).or_else(|| {
            (kind != DeltaKind::DiffDdV2).then(|| block_size.unwrap_or(kind.default_block_size()))
        }),
        old_size: source.old_size(),
        new_size: source.new_size(None),
        extents,
        raw_extents: raw,
        zstd_extents: zstd,
        zstd_ref_extents: zstd_ref,
        copy_extents: copies,
        copied_bytes: copied,
        zero_extents: zero,
        changed_bytes: changed,
        stored_bytes: stored,
        delta_bytes: count.load(Ordering::Relaxed),
        compression_ratio: (ratio * 1000.0).round() / 1000.0,
        old_digest: trailer
            .as_ref()
            .and_then(|t| t.old_digest)
            .map(|d| d.to_hex()),
        new_digest: trailer
            .as_ref()
            .filter(|t| !(t.old_digest.is_none() && t.new_digest == Digest::NONE))
            .map(|t| t.new_digest.to_hex()),
        base_samples: trailer.as_ref().map_or(0, |t| t.samples.len()),
        change_tracked: header.is_some_and(|h| h.change_tracked),
    })
}
