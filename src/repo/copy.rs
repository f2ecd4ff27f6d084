//! Copying snapshots between repositories (offsite replication: local to
//! S3, S3 to local, bucket to bucket), sending only the chunks the
//! destination lacks.
//!
//! ```text
//!   source packs ──range reads──> verify (decode, hash) ──> packer ──> destination
//!   (runs of blobs back to back)   every blob, before it     (stored     packs, then
//!                                  is sent                    bytes kept) index, then snapshot
//! ```
//!
//! Blobs travel compressed, so nothing is recompressed, but each is
//! decoded and checked against its id first: a damaged source never
//! becomes a damaged destination. Between plain repositories blobs and
//! snapshot files are copied as stored, so snapshot ids stay the same;
//! when either side is encrypted, each blob and snapshot is opened with
//! the source's key and sealed with the destination's (the snapshot gets a
//! new id there; its content id stays the same). Per snapshot, the
//! destination gets packs, then an index file listing them, then the
//! snapshot: a copy killed at any point leaves the destination valid, and
//! a rerun skips the snapshots whose content the destination holds.

use std::collections::HashSet;

use serde::Serialize;

use super::lock::Lock;
use super::{pack_key, snapshot_key, ChunkDecoder, RepoError, Repository};
use crate::format::pack::PackBuilder;
use crate::format::pack_index::PackRecord;
use crate::format::sealed::Kind;
use crate::format::snapshot::Snapshot;
use crate::id::{ChunkId, IdBuildHasher, SnapshotId};

/// Range reads of the source are at most this long.
const READ_SPAN: u64 = 16 << 20;

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Snapshots copied (ids).
    pub copied: Vec<String>,
    /// Snapshots the destination already had.
    pub already_present: Vec<String>,
    /// Chunks sent.
    pub chunks_copied: u64,
    /// Chunks the destination already held.
    pub chunks_present: u64,
    /// Stored (compressed) bytes sent in packs.
    pub bytes_copied: u64,
    /// Wall time.
    pub seconds: f64,
    /// Stale locks of the destination seen and ignored.
    pub stale_locks: Vec<String>,
}

/// Copies `snapshots` of `from` into `to`.
///
/// # Errors
/// Different chunk sizes, a damaged source chunk (nothing of that snapshot
/// is written then), storage failures.
pub fn copy(
    from: &Repository,
    to: &Repository,
    snapshots: &[Snapshot],
) -> Result<CopyReport, RepoError> {
    let started = std::time::Instant::now();
    if from.chunk_size() != to.chunk_size() {
        return Err(RepoError::Invalid(format!(
            "chunk sizes differ ({} has {}, {} has {}); copy needs equal chunk sizes",
            from.backend().location(),
            from.chunk_size(),
            to.backend().location(),
            to.chunk_size()
        )));
    }
    let lock = Lock::acquire(to.backend().clone(), false, "copy")?;
    let mut report = CopyReport {
        stale_locks: lock.stale.clone(),
        ..CopyReport::default()
    };
    let (source_index, _) = from.load_index_lenient()?;
    let (mut dest_index, _) = to.load_index_lenient()?;
    let mut decoder = ChunkDecoder::new()?;
    let mut plain = Vec::new();
    let as_stored = from.crypto().is_none() && to.crypto().is_none();
    let present: HashSet<SnapshotId, IdBuildHasher> =
        to.snapshots()?.iter().map(|s| s.content_id).collect();
    for snap in snapshots {
        let hex = snap.id.to_hex();
        let key = snapshot_key(&snap.id);
        if present.contains(&snap.content_id) {
            report.already_present.push(hex);
            continue;
        }
        // The chunks to send, in pack order for long range reads.
        let mut seen: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
        let mut wanted = Vec::new();
        for id in snap.chunk_ids().map_err(|e| snapshot_error(snap, e))? {
            let id = id.map_err(|e| snapshot_error(snap, e))?;
            if id.is_zero_marker() || !seen.insert(id) {
                continue;
            }
            if dest_index.contains(&id) {
                report.chunks_present += 1;
                continue;
            }
            let loc = source_index
                .get(&id)
                .ok_or(RepoError::MissingChunk { chunk: id })?;
            wanted.push((loc.pack, loc.offset, id));
        }
        wanted.sort_unstable_by_key(|&(pack, offset, _)| (pack, offset));

        let mut records = Vec::new();
        let mut builder = PackBuilder::new();
        let mut i = 0;
        while i < wanted.len() {
            // A run of blobs back to back in one pack.
            let (pack_n, offset, first) = wanted[i];
            let first_loc = source_index
                .get(&first)
                .ok_or(RepoError::MissingChunk { chunk: first })?;
            let mut end = u64::from(offset) + u64::from(first_loc.stored_len);
            let mut j = i + 1;
            while j < wanted.len() && end - u64::from(offset) < READ_SPAN {
                let (p, o, id) = wanted[j];
                let l = source_index
                    .get(&id)
                    .ok_or(RepoError::MissingChunk { chunk: id })?;
                if p != pack_n || u64::from(o) != end {
                    break;
                }
                end += u64::from(l.stored_len);
                j += 1;
            }
            let pack = *source_index.pack_id(pack_n);
            let data = from.backend().get_range(
                &pack_key(&pack),
                u64::from(offset),
                end - u64::from(offset),
            )?;
            let mut pos = 0usize;
            for &(_, _, id) in &wanted[i..j] {
                let l = source_index
                    .get(&id)
                    .ok_or(RepoError::MissingChunk { chunk: id })?;
                let corrupt = |reason: String| RepoError::CorruptChunk {
                    chunk: id,
                    pack,
                    reason,
                };
                let blob = data
                    .get(pos..pos + l.stored_len as usize)
                    .ok_or_else(|| corrupt("pack is shorter than its index says".into()))?;
                pos += l.stored_len as usize;
                let stored = source_index.stored_id(&id);
                plain.resize(l.raw_len as usize, 0);
                // Opened once (when sealed), checked, and sealed again for
                // the destination unless both sides store it the same way.
                let encoded = if as_stored {
                    std::borrow::Cow::Borrowed(blob)
                } else {
                    std::borrow::Cow::Owned(
                        from.unseal_blob(&stored, l.encoding, l.raw_len, blob)
                            .map_err(corrupt)?,
                    )
                };
                let content = from
                    .decode_encoded(
                        &stored,
                        l.encoding,
                        &encoded,
                        &mut plain,
                        &mut decoder.decompressor,
                    )
                    .map_err(corrupt)?;
                if content != id {
                    return Err(corrupt("content does not match its id".into()));
                }
                let dest_id = to.stored_id(&id);
                if as_stored {
                    builder.add(dest_id, blob, l.raw_len, l.encoding);
                } else {
                    let sealed =
                        to.seal_blob(&dest_id, l.encoding, l.raw_len, encoded.into_owned());
                    builder.add(dest_id, &sealed, l.raw_len, l.encoding);
                }
                report.chunks_copied += 1;
                if builder.len() >= super::backup::PACK_TARGET {
                    let full = std::mem::take(&mut builder);
                    report.bytes_copied += store_pack(to, full, &mut records, &mut dest_index)?;
                }
            }
            i = j;
        }
        if !builder.is_empty() {
            report.bytes_copied += store_pack(to, builder, &mut records, &mut dest_index)?;
        }
        if !records.is_empty() {
            to.write_index(&records)?;
        }
        let bytes = from.backend().get(&key)?;
        if as_stored {
            to.backend().put_if_absent(&key, &bytes)?;
        } else {
            to.put_snapshot(from.open_object(Kind::Snapshot, &key, bytes)?)?;
        }
        report.copied.push(hex);
    }
    drop(lock);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn store_pack(
    to: &Repository,
    builder: PackBuilder,
    records: &mut Vec<PackRecord>,
    index: &mut super::index::Index,
) -> Result<u64, RepoError> {
    let (data, id, entries) = builder.finish_sealed(to.table_seal());
    let len = data.len() as u64;
    to.backend().put_if_absent_vec(&pack_key(&id), data)?;
    index.add_pack(id, &entries);
    records.push(PackRecord { pack: id, entries });
    Ok(len)
}

fn snapshot_error(
    snap: &Snapshot,
    source: crate::format::snapshot::SnapshotFormatError,
) -> RepoError {
    RepoError::Snapshot {
        key: snapshot_key(&snap.id),
        source,
    }
}
