//! Restoring a snapshot: to a new file, a block device or a stream, or in
//! place onto a target that holds an older version.
//!
//! ```text
//!  feeder ──> workers (one per core)                         ──> collector (this thread)
//!  unit of     read blobs (one range read per run of blobs       in image order: image
//!  4 MiB +     adjacent in a pack), decompress, check each       digest (and the writes of
//!  its ids     chunk's BLAKE3, segment hashes for the digest     a stream); commit after
//!                  │                                             the digest matches
//!                  └──> placers (files, devices): write each unit at its offset
//!                       (`O_DIRECT` on new files), return its buffer to the pool
//! ```
//!
//! In place, workers also read the target's unit, compare chunk ids and
//! write only the chunks that differ (`pwrite`, so workers write in
//! parallel); the writer thread only assembles the digest.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::backup::UNIT_SIZE;
use super::index::{BlobLocation, Index};
use super::{pack_key, ChunkDecoder, RepoError, Repository};
use crate::digest::{hash_segment, zero_segment, Digest, ImageHasher, SEGMENT_SIZE};
use crate::format::snapshot::Snapshot;
use crate::id::{ChunkId, IdBuildHasher, PackId};
use crate::io::output::{Output, OutputKind};
use crate::io::reader::{AlignedBuf, ChunkReader, ReaderOptions};
use crate::io::{Input, InputOptions};
use crate::pipeline::{self, Cancel};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Worker threads; the number of cores when 0.
    pub threads: usize,
    /// Bytes done so far (for progress bars).
    pub progress: Option<Arc<AtomicU64>>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Image size.
    pub size: u64,
    /// Image digest of what was restored.
    pub digest: String,
    /// Whether it matched the snapshot's (false when the snapshot records
    /// no image digest; every chunk was checked by its id either way).
    pub digest_checked: bool,
    /// Bytes written to the target (zeros of new files are holes, not writes).
    pub bytes_written: u64,
    /// Chunks read from the repository.
    pub chunks_fetched: u64,
    /// In place: chunks the target already held.
    pub chunks_unchanged: u64,
    /// Wall time.
    pub seconds: f64,
    /// Index files that could not be read; their packs were read from
    /// their own tables instead.
    pub damaged_index_files: Vec<String>,
}

/// Reads, decodes and verifies the chunks `ids` (non-zero) into `out`:
/// blobs are read in pack order, one range read per run of blobs in one
/// pack that lie back to back, or with gaps of at most the backend's
/// [`read_gap`](super::backend::Backend::read_gap) between them.
///
/// # Errors
/// [`RepoError::MissingChunk`], [`RepoError::CorruptChunk`], storage failures.
pub fn fetch_chunks(
    repo: &Repository,
    index: &Index,
    ids: &[(usize, ChunkId)],
    chunk_size: usize,
    out: &mut [u8],
    decoder: &mut ChunkDecoder,
) -> Result<(), RepoError> {
    let mut located = Vec::with_capacity(ids.len());
    for &(slot, id) in ids {
        let loc = *index
            .get(&id)
            .ok_or(RepoError::MissingChunk { chunk: id })?;
        located.push((slot, id, loc));
    }
    located.sort_unstable_by_key(|(_, _, l)| (l.pack, l.offset));
    let gap = repo.backend().read_gap();
    let mut i = 0;
    while i < located.len() {
        let first = located[i].2;
        let start = u64::from(first.offset);
        let mut end = start + u64::from(first.stored_len);
        let mut j = i + 1;
        while j < located.len() {
            let next = located[j].2;
            let (at, len) = (u64::from(next.offset), u64::from(next.stored_len));
            // The same blob again (a chunk used twice), or one close enough
            // that reading the bytes between costs less than a request.
            if next.pack != first.pack || at < start || at > end + gap {
                break;
            }
            end = end.max(at + len);
            j += 1;
        }
        let pack = *index.pack_id(first.pack);
        let data = match repo
            .backend()
            .get_range(&pack_key(&pack), start, end - start)
        {
            Ok(d) => d,
            // A listed pack that is gone: other copies may exist.
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for &(slot, id, l) in &located[i..j] {
            let begin = slot * chunk_size;
            let primary =
                decode_located(repo, index, &data, start, id, l, &mut out[begin..], decoder);
            if let Err(e) = primary {
                // Each other copy is tried before the chunk counts as lost.
                let recovered = index.alternates(&id).iter().any(|alt| {
                    let from = u64::from(alt.offset);
                    repo.backend()
                        .get_range(
                            &pack_key(index.pack_id(alt.pack)),
                            from,
                            u64::from(alt.stored_len),
                        )
                        .is_ok_and(|d| {
                            decode_located(
                                repo,
                                index,
                                &d,
                                from,
                                id,
                                *alt,
                                &mut out[begin..],
                                decoder,
                            )
                            .is_ok()
                        })
                });
                if !recovered {
                    return Err(e);
                }
            }
        }
        i = j;
    }
    Ok(())
}

/// Decodes and verifies the blob of `id` at `l` from `data`, which holds
/// its pack's bytes from offset `start`, into the start of `out`.
#[allow(clippy::too_many_arguments)]
fn decode_located(
    repo: &Repository,
    index: &Index,
    data: &[u8],
    start: u64,
    id: ChunkId,
    l: BlobLocation,
    out: &mut [u8],
    decoder: &mut ChunkDecoder,
) -> Result<(), RepoError> {
    let pack = *index.pack_id(l.pack);
    // Named as the pack table and `verify` name it (its stored id).
    let stored = index.stored_id(&id);
    let corrupt = |reason: String| RepoError::CorruptChunk {
        chunk: stored,
        pack,
        reason,
    };
    let from = (u64::from(l.offset) - start) as usize;
    let blob = data
        .get(from..from + l.stored_len as usize)
        .ok_or_else(|| corrupt("pack is shorter than its index says".into()))?;
    let raw_len = l.raw_len as usize;
    let target = out
        .get_mut(..raw_len)
        .ok_or_else(|| corrupt(format!("stored length {raw_len} does not fit the image")))?;
    let content = repo
        .decode_blob(&stored, l.encoding, blob, target, decoder)
        .map_err(corrupt)?;
    if content != id {
        return Err(corrupt("content does not match its id".into()));
    }
    Ok(())
}

/// Checks that every chunk of `snap` is listed in `index` before anything
/// is written.
///
/// # Errors
/// [`RepoError::MissingChunk`] for the first chunk missing.
pub fn check_chunks_present(snap: &Snapshot, index: &Index) -> Result<(), RepoError> {
    for id in snap
        .chunk_ids()
        .map_err(|source| snapshot_err(snap, source))?
    {
        let id = id.map_err(|source| snapshot_err(snap, source))?;
        if !id.is_zero_marker() && !index.contains(&id) {
            return Err(RepoError::MissingChunk { chunk: id });
        }
    }
    Ok(())
}

/// Checks that every chunk of `snap` is listed in `index` and that the
/// pack holding it exists, before anything is written: a pack deleted by
/// hand or by a gc that raced this restore must not leave a stream or a
/// device half written.
///
/// # Errors
/// [`RepoError::MissingChunk`] for the first chunk not listed,
/// [`RepoError::Damaged`] for the first pack missing, storage failures.
pub fn check_restorable(
    repo: &Repository,
    snap: &Snapshot,
    index: &Index,
) -> Result<(), RepoError> {
    let stored: HashSet<PackId, IdBuildHasher> =
        repo.list_packs()?.into_iter().map(|(id, _)| id).collect();
    let mut checked: HashSet<u32> = HashSet::new();
    for id in snap
        .chunk_ids()
        .map_err(|source| snapshot_err(snap, source))?
    {
        let id = id.map_err(|source| snapshot_err(snap, source))?;
        if id.is_zero_marker() {
            continue;
        }
        let loc = index
            .get(&id)
            .ok_or(RepoError::MissingChunk { chunk: id })?;
        let held = |l: &BlobLocation| stored.contains(index.pack_id(l.pack));
        let primary_held = checked.contains(&loc.pack) || (held(loc) && checked.insert(loc.pack));
        if !primary_held && !index.alternates(&id).iter().any(held) {
            return Err(RepoError::Damaged(format!(
                "pack {} holding chunk {id} is missing from the repository",
                index.pack_id(loc.pack)
            )));
        }
    }
    Ok(())
}

fn snapshot_err(
    snap: &Snapshot,
    source: crate::format::snapshot::SnapshotFormatError,
) -> RepoError {
    RepoError::Snapshot {
        key: super::snapshot_key(&snap.id),
        source,
    }
}

/// Segment hashes of a unit (for the image digest).
fn unit_segments(data: &[u8], ids: &[ChunkId], chunk_size: usize) -> Vec<(blake3::Hash, usize)> {
    if chunk_size == SEGMENT_SIZE {
        return ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let len = chunk_size.min(data.len() - i * chunk_size);
                if id.is_zero_marker() {
                    (zero_segment(len), len)
                } else {
                    (blake3::Hash::from_bytes(*id.as_bytes()), len)
                }
            })
            .collect();
    }
    data.chunks(SEGMENT_SIZE)
        .map(|seg| (hash_segment(seg), seg.len()))
        .collect()
}

struct Job {
    seq: u64,
    offset: u64,
    len: usize,
    ids: Vec<ChunkId>,
}

struct Done {
    seq: u64,
    data: Vec<u8>,
    zero: bool,
    segments: Vec<(blake3::Hash, usize)>,
    fetched: u64,
    unchanged: u64,
    written: u64,
}

fn feed(
    snap: &Snapshot,
    chunk_size: usize,
    unit_size: usize,
    jobs: Sender<Job>,
    cancel: &Cancel,
) -> Result<(), RepoError> {
    let per_unit = unit_size / chunk_size;
    let mut ids = snap
        .chunk_ids()
        .map_err(|source| snapshot_err(snap, source))?;
    let size = snap.meta.size;
    let mut offset = 0u64;
    let mut seq = 0;
    while offset < size {
        let len = (size - offset).min(unit_size as u64) as usize;
        let n = len.div_ceil(chunk_size).min(per_unit);
        let mut unit = Vec::with_capacity(n);
        for _ in 0..n {
            match ids.next() {
                Some(Ok(id)) => unit.push(id),
                Some(Err(source)) => return Err(snapshot_err(snap, source)),
                None => return Err(RepoError::Internal("snapshot list ended early")),
            }
        }
        let job = Job {
            seq,
            offset,
            len,
            ids: unit,
        };
        if cancel.send(&jobs, job).is_err() {
            return Ok(());
        }
        offset += len as u64;
        seq += 1;
    }
    Ok(())
}

/// A unit's bytes on their way to a positional output.
struct Placement {
    offset: u64,
    len: usize,
    buf: AlignedBuf,
}

/// Where workers put restored units of a positional output: buffers come
/// from `pool` and go, filled, to the placers.
struct Placing<'a> {
    output: &'a Output,
    pool: Receiver<AlignedBuf>,
    placements: Sender<Placement>,
}

/// Writes units at their offsets, then hands their buffers back. Writes
/// to disk block (`O_DIRECT`, devices): with placers of their own, the
/// workers keep every core decoding while several writes are in flight.
fn placer(
    output: &Output,
    placements: Receiver<Placement>,
    pool: Sender<AlignedBuf>,
    cancel: &Cancel,
) -> Result<(), RepoError> {
    while let Ok(p) = cancel.recv(&placements) {
        output.place(p.offset, &p.buf.as_slice()[..p.len])?;
        // The pool only closes when the workers stopped.
        let _ = cancel.send(&pool, p.buf);
    }
    Ok(())
}

/// Restores units: fetches and verifies their chunks, then passes them
/// to the placers when the output takes writes at any offset, or to the
/// ordered writer otherwise.
fn worker(
    repo: &Repository,
    index: &Index,
    chunk_size: usize,
    placing: Option<Placing<'_>>,
    jobs: Receiver<Job>,
    done: Sender<Result<Done, RepoError>>,
    cancel: &Cancel,
) {
    let mut decoder = match ChunkDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = cancel.send(&done, Err(e));
            return;
        }
    };
    while let Ok(job) = cancel.recv(&jobs) {
        let result = (|| {
            let zero = job.ids.iter().all(ChunkId::is_zero_marker);
            if zero {
                if let Some(p) = &placing {
                    p.output.place_zeros(job.offset, job.len as u64)?;
                }
                let segments = (0..job.len.div_ceil(SEGMENT_SIZE))
                    .map(|i| {
                        let l = SEGMENT_SIZE.min(job.len - i * SEGMENT_SIZE);
                        (zero_segment(l), l)
                    })
                    .collect();
                return Ok(Done::of(&job, Vec::new(), true, segments, 0, 0));
            }
            let mut owned = Vec::new();
            let mut buf = match &placing {
                Some(p) => Some(
                    cancel
                        .recv(&p.pool)
                        .map_err(|_| RepoError::Stopped("restore writers"))?,
                ),
                None => None,
            };
            let data = match buf.as_mut() {
                Some(b) => &mut b.as_mut_slice()[..job.len],
                None => {
                    owned.resize(job.len, 0);
                    &mut owned[..]
                }
            };
            let mut wanted = Vec::with_capacity(job.ids.len());
            for (i, id) in job.ids.iter().enumerate() {
                if id.is_zero_marker() {
                    let end = ((i + 1) * chunk_size).min(data.len());
                    data[i * chunk_size..end].fill(0);
                } else {
                    wanted.push((i, *id));
                }
            }
            fetch_chunks(repo, index, &wanted, chunk_size, data, &mut decoder)?;
            let segments = unit_segments(data, &job.ids, chunk_size);
            let written = match (&placing, buf) {
                (Some(p), Some(buf)) => {
                    let placement = Placement {
                        offset: job.offset,
                        len: job.len,
                        buf,
                    };
                    cancel
                        .send(&p.placements, placement)
                        .map_err(|_| RepoError::Stopped("restore writers"))?;
                    job.len as u64
                }
                _ => 0,
            };
            Ok(Done::of(
                &job,
                owned,
                false,
                segments,
                wanted.len() as u64,
                written,
            ))
        })();
        let failed = result.is_err();
        if cancel.send(&done, result).is_err() || failed {
            return;
        }
    }
}

impl Done {
    fn of(
        job: &Job,
        data: Vec<u8>,
        zero: bool,
        segments: Vec<(blake3::Hash, usize)>,
        fetched: u64,
        written: u64,
    ) -> Done {
        Done {
            seq: job.seq,
            data,
            zero,
            segments,
            fetched,
            unchanged: 0,
            written,
        }
    }
}

/// Hands the workers' results to `each` in unit order, as they complete;
/// false when some unit never arrived (a worker stopped).
fn in_unit_order(
    done: Receiver<Result<Done, RepoError>>,
    mut each: impl FnMut(Done) -> Result<(), RepoError>,
) -> Result<bool, RepoError> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for d in done {
        let d = d?;
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&next) {
            next += 1;
            each(d)?;
        }
    }
    Ok(pending.is_empty())
}

/// Writer threads of a positional output (see [`placer`]): enough to keep
/// a disk's queue busy while the workers decode.
const PLACERS: usize = 4;

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        n
    }
}

/// Restores `snap` into `output` (a new file, a device or a stream). A file
/// output is committed only after the image digest matched.
///
/// # Errors
/// Missing or corrupt chunks, digest mismatch, write failures.
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    mut output: Output,
    options: &RestoreOptions,
) -> Result<RestoreSummary, RepoError> {
    let started = Instant::now();
    let chunk_size = snap.meta.chunk_size as usize;
    if chunk_size == 0 || !UNIT_SIZE.is_multiple_of(chunk_size) {
        return Err(RepoError::Invalid(format!(
            "snapshot chunk size {chunk_size} is not supported"
        )));
    }
    let (mut index, damaged_index_files) = repo.load_index_lenient()?;
    if !damaged_index_files.is_empty() {
        repo.index_unlisted_packs(&mut index)?;
    }
    check_restorable(repo, snap, &index)?;
    output.require_capacity(snap.meta.size)?;
    output.set_sparse(output.kind() == OutputKind::File);
    if output.kind() == OutputKind::File {
        output.use_direct_placement();
    }
    let threads = threads(options.threads);
    // Each unit's blobs that lie back to back in a pack are one range read:
    // stores where every request costs restore in larger units.
    let unit_size = repo.backend().restore_unit().max(UNIT_SIZE);
    let (job_tx, job_rx) = bounded::<Job>(threads);
    let (done_tx, done_rx) = bounded::<Result<Done, RepoError>>(threads * 2);
    let mut hasher = ImageHasher::new();
    let mut summary = RestoreSummary {
        snapshot: snap.id.to_hex(),
        size: snap.meta.size,
        damaged_index_files: damaged_index_files.clone(),
        ..RestoreSummary::default()
    };
    let index = &index;
    // Files and devices are written by the workers themselves, in
    // parallel; a stream needs its bytes in order from one writer.
    let positional_output = output.is_positional();
    let (positional, mut ordered) = if positional_output {
        (Some(&output), None)
    } else {
        (None, Some(&mut output))
    };
    let cancel = Cancel::new();
    let written = pipeline::scope(&cancel, |s| -> Result<(), RepoError> {
        let feeder = s.spawn("feeder", {
            let cancel = s.cancel().clone();
            move || feed(snap, chunk_size, unit_size, job_tx, &cancel)
        });
        // A buffer per worker and per placer, and as many again queued
        // (4 MiB units); fewer of the larger units of remote stores.
        let placers = if positional.is_some() { PLACERS } else { 0 };
        let buffers = (2 * (threads + placers) * UNIT_SIZE / unit_size).max(threads + placers + 1);
        let (pool_tx, pool_rx) = bounded::<AlignedBuf>(buffers);
        let (place_tx, place_rx) = bounded::<Placement>(threads + placers);
        for _ in 0..buffers {
            if positional.is_some() {
                let _ = pool_tx.send(AlignedBuf::new(unit_size));
            }
        }
        let mut placer_threads = Vec::new();
        if let Some(out) = positional {
            for _ in 0..placers {
                let (rx, pool) = (place_rx.clone(), pool_tx.clone());
                let cancel = s.cancel().clone();
                placer_threads.push(s.spawn("placer", move || placer(out, rx, pool, &cancel)));
            }
        }
        drop((pool_tx, place_rx));
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            let placing = positional.map(|output| Placing {
                output,
                pool: pool_rx.clone(),
                placements: place_tx.clone(),
            });
            let cancel = s.cancel().clone();
            s.spawn("worker", move || -> Result<(), RepoError> {
                worker(repo, index, chunk_size, placing, jobs, done, &cancel);
                Ok(())
            });
        }
        drop((job_rx, pool_rx, place_tx));
        drop(done_tx);
        let complete = in_unit_order(done_rx, |d| {
            if let Some(ordered) = ordered.as_mut() {
                if d.zero {
                    let len: usize = d.segments.iter().map(|s| s.1).sum();
                    ordered.append_zeros(len as u64)?;
                } else {
                    ordered.append(&d.data)?;
                    summary.bytes_written += d.data.len() as u64;
                }
            }
            summary.bytes_written += d.written;
            summary.chunks_fetched += d.fetched;
            for (h, l) in &d.segments {
                hasher.push_segment(h, *l);
            }
            if let Some(p) = &options.progress {
                let len: usize = d.segments.iter().map(|s| s.1).sum();
                p.fetch_add(len as u64, Ordering::Relaxed);
            }
            Ok(())
        });
        // A placer's failure is the cause of a worker's "writers stopped".
        for t in placer_threads {
            t.join()
                .unwrap_or(Err(RepoError::Internal("restore writer panicked")))?;
        }
        let complete = complete?;
        feeder
            .join()
            .unwrap_or(Err(RepoError::Internal("feeder thread panicked")))?;
        if !complete || hasher.len() != snap.meta.size {
            return Err(RepoError::Internal("restore ended early"));
        }
        Ok(())
    });
    written?;
    if positional_output {
        output.set_position(snap.meta.size);
    }
    let digest = hasher.finalize();
    summary.digest_checked = check_digest(snap, &digest, &output.path().display().to_string())?;
    output.commit()?;
    summary.digest = digest.to_hex();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Compares the restored image's digest with the snapshot's; false when
/// the snapshot records none (every chunk was still checked by its id).
fn check_digest(snap: &Snapshot, digest: &Digest, what: &str) -> Result<bool, RepoError> {
    if snap.meta.digest.is_empty() {
        return Ok(false);
    }
    if digest.to_hex() != snap.meta.digest {
        return Err(RepoError::DigestMismatch {
            what: what.to_string(),
            expected: snap.meta.digest.clone(),
            actual: digest.to_hex(),
        });
    }
    Ok(true)
}

/// An in-place worker's channels: units of the target paired with their
/// jobs in, buffers back to the target's reader, results out.
struct InPlaceLinks<'a> {
    work: Receiver<(Job, crate::io::reader::Chunk)>,
    recycler: crate::io::reader::Recycler,
    done: Sender<Result<Done, RepoError>>,
    cancel: &'a Cancel,
}

fn in_place_worker(
    repo: &Repository,
    index: &Index,
    target: &Output,
    chunk_size: usize,
    links: InPlaceLinks<'_>,
) {
    let InPlaceLinks {
        work,
        recycler,
        done,
        cancel,
    } = links;
    let mut decoder = match ChunkDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = cancel.send(&done, Err(e));
            return;
        }
    };
    while let Ok((job, mut chunk)) = cancel.recv(&work) {
        let result = (|| {
            chunk.materialize();
            let mut fetched = 0;
            let mut unchanged = 0;
            let mut written = 0;
            let mut wanted = Vec::new();
            let data = chunk.data_mut();
            for (i, id) in job.ids.iter().enumerate() {
                let piece = &data[i * chunk_size..((i + 1) * chunk_size).min(data.len())];
                let same = if id.is_zero_marker() {
                    crate::digest::is_zero(piece)
                } else {
                    ChunkId::of(piece) == *id
                };
                if same {
                    unchanged += 1;
                } else if id.is_zero_marker() {
                    let off = job.offset + (i * chunk_size) as u64;
                    target.zero_range(off, piece.len() as u64)?;
                    let end = ((i + 1) * chunk_size).min(data.len());
                    data[i * chunk_size..end].fill(0);
                    written += (end - i * chunk_size) as u64;
                } else {
                    wanted.push((i, *id));
                }
            }
            if !wanted.is_empty() {
                fetch_chunks(repo, index, &wanted, chunk_size, data, &mut decoder)?;
                fetched = wanted.len() as u64;
                for &(i, _) in &wanted {
                    let end = ((i + 1) * chunk_size).min(data.len());
                    target.write_at(
                        job.offset + (i * chunk_size) as u64,
                        &data[i * chunk_size..end],
                    )?;
                    written += (end - i * chunk_size) as u64;
                }
            }
            let segments = unit_segments(data, &job.ids, chunk_size);
            Ok(Done {
                seq: job.seq,
                data: Vec::new(),
                zero: false,
                segments,
                fetched,
                unchanged,
                written,
            })
        })();
        recycler.recycle(chunk);
        let failed = result.is_err();
        if cancel.send(&done, result).is_err() || failed {
            return;
        }
    }
}

/// Restores `snap` onto an existing target, writing only the chunks whose
/// content differs. Every check (chunks present, target size) passes
/// before the first write.
///
/// # Errors
/// Missing or corrupt chunks, a target too small, digest mismatch.
pub fn restore_in_place(
    repo: &Repository,
    snap: &Snapshot,
    target_path: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary, RepoError> {
    let started = Instant::now();
    let chunk_size = snap.meta.chunk_size as usize;
    let size = snap.meta.size;
    let (mut index, damaged_index_files) = repo.load_index_lenient()?;
    if !damaged_index_files.is_empty() {
        repo.index_unlisted_packs(&mut index)?;
    }
    check_restorable(repo, snap, &index)?;
    let target = Output::open_or_create_in_place(target_path)?;
    match target.kind() {
        OutputKind::BlockDevice => target.require_capacity(size)?,
        OutputKind::File => {}
        OutputKind::Stream => {
            return Err(RepoError::Invalid(format!(
                "{}: an in-place target must be a file or block device",
                target_path.display()
            )))
        }
    }
    if target.kind() == OutputKind::File {
        target.set_len(size)?;
    }
    let input = Input::open(target_path, &InputOptions::default())?;
    let threads = threads(options.threads);
    let cancel = Cancel::new();
    let mut reader = ChunkReader::spawn(
        input,
        ReaderOptions {
            chunk_size: UNIT_SIZE,
            depth: threads + 2,
            digest: false,
            limit: Some(size),
            progress: options.progress.clone(),
            cancel: Some(cancel.clone()),
            ..ReaderOptions::default()
        },
    );
    let recycler = reader.recycler();
    let (job_tx, job_rx) = bounded::<Job>(threads);
    let (work_tx, work_rx) = bounded::<(Job, crate::io::reader::Chunk)>(threads);
    let (done_tx, done_rx) = bounded::<Result<Done, RepoError>>(threads * 2);
    let mut hasher = ImageHasher::new();
    let mut summary = RestoreSummary {
        snapshot: snap.id.to_hex(),
        size,
        damaged_index_files: damaged_index_files.clone(),
        ..RestoreSummary::default()
    };
    let index = &index;
    let target_ref = &target;
    let result = pipeline::scope(&cancel, |s| -> Result<(), RepoError> {
        let feeder = s.spawn("feeder", {
            let cancel = s.cancel().clone();
            move || feed(snap, chunk_size, UNIT_SIZE, job_tx, &cancel)
        });
        let pairing = s.cancel().clone();
        let pairer = s.spawn("target reader", move || -> Result<(), RepoError> {
            while let Ok(job) = pairing.recv(&job_rx) {
                let chunk = match reader.next_chunk() {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        reader.abandon();
                        return Err(e.into());
                    }
                    None => return Err(RepoError::Internal("target ended early")),
                };
                if chunk.offset != job.offset || chunk.len != job.len {
                    return Err(RepoError::Internal("target read out of step"));
                }
                if pairing.send(&work_tx, (job, chunk)).is_err() {
                    break;
                }
            }
            reader.abandon();
            Ok(())
        });
        for _ in 0..threads {
            let work = work_rx.clone();
            let done = done_tx.clone();
            let recycler = recycler.clone();
            let cancel = s.cancel().clone();
            s.spawn("worker", move || -> Result<(), RepoError> {
                let links = InPlaceLinks {
                    work,
                    recycler,
                    done,
                    cancel: &cancel,
                };
                in_place_worker(repo, index, target_ref, chunk_size, links);
                Ok(())
            });
        }
        drop(work_rx);
        drop(done_tx);
        in_unit_order(done_rx, |d| {
            summary.chunks_fetched += d.fetched;
            summary.chunks_unchanged += d.unchanged;
            summary.bytes_written += d.written;
            for (h, l) in &d.segments {
                hasher.push_segment(h, *l);
            }
            Ok(())
        })?;
        feeder
            .join()
            .unwrap_or(Err(RepoError::Internal("feeder thread panicked")))?;
        pairer
            .join()
            .unwrap_or(Err(RepoError::Internal("target reader panicked")))?;
        if hasher.len() != size {
            return Err(RepoError::Internal("restore ended early"));
        }
        Ok(())
    });
    result?;
    target.sync()?;
    let digest = hasher.finalize();
    summary.digest_checked = check_digest(snap, &digest, &target_path.display().to_string())?;
    summary.digest = digest.to_hex();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::{Encoding, PackEntry};
    use crate::format::pack_index;
    use crate::io::{Input, InputOptions};
    use crate::repo::backup::{BackupOptions, BackupSession};
    use crate::repo::{index_key, no_password, InitOptions};

    const MIB: usize = 1 << 20;

    /// An index that lists a garbage copy of every chunk first: reads fall
    /// back to the good copies, listed second.
    #[test]
    fn a_chunk_whose_first_copy_is_bad_is_read_from_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let init = InitOptions {
            chunk_size: MIB as u32,
            encrypt: false,
            ..InitOptions::default()
        };
        let password = no_password("test");
        let repo = Repository::open_local(&root, Some(&init), &password).expect("repo");
        let data: Vec<u8> = (0..4 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, &data).expect("image");
        let session = BackupSession::start(
            &repo,
            BackupOptions {
                name: "disk".into(),
                source: "disk".into(),
                host: "test".into(),
                ..BackupOptions::default()
            },
        )
        .expect("session");
        let input = Input::open(&image, &InputOptions::default()).expect("input");
        session.run_local(input).expect("backup");
        drop(session);
        let (good, _) = repo.load_index_lenient().expect("index");
        let mut records = Vec::new();
        for file in good.files() {
            let bytes = repo.backend().get(&index_key(file)).expect("index file");
            records.extend(pack_index::decode(&bytes).expect("decode"));
        }
        let garbage = vec![0x5a; 2 * MIB];
        let garbage_id = PackId::of(&garbage);
        repo.backend()
            .put_if_absent(&pack_key(&garbage_id), &garbage)
            .expect("put garbage");
        let forged: Vec<PackEntry> = records
            .iter()
            .flat_map(|r| r.entries.iter())
            .map(|e| PackEntry {
                offset: 0,
                encoding: Encoding::Raw,
                stored_len: e.raw_len,
                ..*e
            })
            .collect();
        let mut index = Index::new(None);
        index.add_pack(garbage_id, &forged);
        for r in &records {
            index.add_pack(r.pack, &r.entries);
        }
        let snap = repo.resolve("disk").expect("snapshot");
        check_restorable(&repo, &snap, &index).expect("restorable");
        let ids: Vec<(usize, ChunkId)> = snap
            .chunk_ids()
            .expect("ids")
            .map(|i| i.expect("id"))
            .enumerate()
            .collect();
        assert!(ids.iter().all(|(_, id)| !index.alternates(id).is_empty()));
        let mut out = vec![0u8; data.len()];
        let mut decoder = ChunkDecoder::new().expect("decoder");
        fetch_chunks(&repo, &index, &ids, MIB, &mut out, &mut decoder).expect("fetch");
        assert!(out == data);
        // Without the good copies the bad one is reported, not returned.
        let mut only_bad = Index::new(None);
        only_bad.add_pack(garbage_id, &forged);
        let err =
            fetch_chunks(&repo, &only_bad, &ids, MIB, &mut out, &mut decoder).expect_err("garbage");
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err}");
    }
}
