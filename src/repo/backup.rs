//! Backing an image up into the repository.
//!
//! ```text
//!  feeder (this thread)     workers (one per core)           sink               uploader
//!  reader chunks of 4 MiB ─> zero check, chunk ids,      ─> in image order: ─> put pack,
//!  + previous snapshot's     compare with the previous      snapshot list,     collect its
//!    ids for that range      snapshot and the index,        packs of 32 MiB    index record
//!                            compress what is new
//! ```
//!
//! A remote source (see [`crate::sync`]'s `serve`) runs the feeder and the
//! workers on the remote host and sends the same per-chunk outcomes over
//! ssh; the sink and the uploader are shared.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::claims::Claims;
use super::crypto::Crypto;
use super::index::Index;
use super::lock::Lock;
use super::{pack_key, time, RepoError, Repository};
use crate::digest::{hash_segment, zero_segment, Digest, ImageHasher, SEGMENT_SIZE};
use crate::format::pack::{Encoding, PackBuilder, PackEntry};
use crate::format::pack_index::PackRecord;
use crate::format::snapshot::{Snapshot, SnapshotMeta, SnapshotWriter};
use crate::id::{ChunkId, IdBuildHasher, PackId};
use crate::io::reader::{ChunkReader, ReaderOptions, Recycler};
use crate::io::Input;
use crate::pipeline::{self, Cancel};

/// Packs are closed once they hold this many bytes.
pub const PACK_TARGET: usize = 32 << 20;
/// Bytes per unit of work: one reader buffer, a multiple of every chunk size.
pub const UNIT_SIZE: usize = 4 << 20;

/// What a backup is about.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Snapshot series name.
    pub name: String,
    /// The source as the user wrote it.
    pub source: String,
    /// Host the source is on.
    pub host: String,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Snapshot time (seconds since the epoch); now when `None`.
    pub time: Option<i64>,
    /// Nanoseconds within `time`'s second.
    pub time_nanos: u32,
    /// Bytes read so far (for progress bars).
    pub progress: Option<Arc<AtomicU64>>,
    /// Worker threads; the number of cores when 0.
    pub threads: usize,
    /// Fail instead of committing when the source ends at another size
    /// (sources fed through a pipe by an importer).
    pub expected_size: Option<u64>,
    /// Thin device id of the source, recorded for the next thin-aware
    /// backup's chain check.
    pub thin_id: Option<u64>,
    /// The snapshot to compare with (id, unique prefix or name), instead
    /// of the latest of `name`.
    pub parent: Option<String>,
}

/// What a backup did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackupSummary {
    /// The new snapshot.
    pub snapshot: String,
    /// Its name.
    pub name: String,
    /// The snapshot it was compared against.
    pub parent: Option<String>,
    /// Image size.
    pub size: u64,
    /// Image digest.
    pub digest: String,
    /// Bytes read from the source (holes are not read).
    pub bytes_read: u64,
    /// Bytes that crossed the network (0 for local sources).
    pub bytes_sent: u64,
    /// Chunks stored by this backup.
    pub new_chunks: u64,
    /// Chunks already in the repository.
    pub reused_chunks: u64,
    /// Chunks of zeros (never stored).
    pub zero_chunks: u64,
    /// Chunk bytes this backup stored, before compression.
    pub new_bytes: u64,
    /// Bytes this backup added to the repository (packs and index).
    pub bytes_added: u64,
    /// Image size over bytes added.
    pub dedup_ratio: f64,
    /// Packs left by interrupted backups that were adopted.
    pub adopted_packs: usize,
    /// Wall time.
    pub seconds: f64,
    /// How change tracking went, when a tracker was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_tracking: Option<super::tracked::TrackingReport>,
}

/// What happened to one chunk of the image.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// All zeros.
    Zero,
    /// Already in the repository (or being stored by this backup).
    Known(ChunkId),
    /// New content, encoded (and sealed, in an encrypted repository).
    New {
        /// Its content hash.
        id: ChunkId,
        /// Plaintext length.
        raw_len: u32,
        /// How `blob` encodes it.
        encoding: Encoding,
        /// The stored bytes.
        blob: Vec<u8>,
    },
}

/// The outcomes of one unit of the image, in order.
#[derive(Debug)]
pub struct Unit {
    /// Position of the unit in the image (0, 1, 2, ...).
    pub seq: u64,
    /// One outcome per chunk.
    pub chunks: Vec<ChunkOutcome>,
    /// Image-digest segment hashes of the unit, when this side read it
    /// (empty for remote sources, which send their digest at the end).
    pub segments: Vec<(blake3::Hash, usize)>,
    /// Chunks sent again after the image (another source's promise not
    /// kept): stored, but not part of the snapshot's list.
    pub appendix: bool,
    /// After this unit, the open pack goes to the uploaders at once (a
    /// remote backup's last unit: parallel backups may wait for its chunks).
    pub flush: bool,
}

/// Compresses a chunk, or keeps it raw when zstd does not gain 1/32.
pub fn encode_chunk(
    compressor: &mut zstd::bulk::Compressor<'_>,
    data: &[u8],
) -> (Encoding, Vec<u8>) {
    match compressor.compress(data) {
        Ok(c) if c.len() < data.len() - data.len() / 32 => (Encoding::Zstd, c),
        _ => (Encoding::Raw, data.to_vec()),
    }
}

/// Decides for each chunk of `data` (chunk-aligned, `chunk_size` each but
/// the last) whether it is zero, known or new. `segment_ids` supplies
/// chunk ids already computed (digest segments when chunk size equals the
/// segment size); `prev` holds the previous snapshot's ids for these
/// chunks, which count as known.
pub fn classify_unit(
    data: &[u8],
    chunk_size: usize,
    segment_ids: &dyn Fn(usize) -> Option<ChunkId>,
    prev: &[ChunkId],
    dedup: &Dedup<'_>,
    compressor: &mut zstd::bulk::Compressor<'_>,
) -> Vec<ChunkOutcome> {
    let count = data.len().div_ceil(chunk_size);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let piece = &data[i * chunk_size..((i + 1) * chunk_size).min(data.len())];
        if crate::digest::is_zero(piece) {
            out.push(ChunkOutcome::Zero);
            continue;
        }
        let id = segment_ids(i).unwrap_or_else(|| ChunkId::of(piece));
        let same_as_prev = prev.get(i) == Some(&id) && dedup.index.is_none();
        if same_as_prev || dedup.known(&id) || !dedup.claim(&id) {
            out.push(ChunkOutcome::Known(id));
            continue;
        }
        let (encoding, blob) = encode_chunk(compressor, piece);
        let raw_len = piece.len() as u32;
        let blob = match dedup.crypto {
            Some(c) => c.seal_blob(&c.stored_id(&id), encoding as u8, raw_len, &blob),
            None => blob,
        };
        out.push(ChunkOutcome::New {
            id,
            raw_len,
            encoding,
            blob,
        });
    }
    out
}

/// Shared state of a backup's workers: what is stored already, and which
/// new chunks a worker has taken on.
#[derive(Debug)]
pub struct Dedup<'a> {
    /// `None` on a remote source, which trusts the previous snapshot's ids
    /// instead (the repository side checks its index again).
    index: Option<&'a Index>,
    /// The repository's key: new chunks are sealed by the workers, in
    /// parallel. `None` for plain repositories and remote sources (which
    /// never hold the key; the repository side seals what they send).
    crypto: Option<&'a Crypto>,
    claimed: Mutex<HashSet<ChunkId, IdBuildHasher>>,
}

impl<'a> Dedup<'a> {
    /// Dedup against `index`, or against the previous snapshot only; new
    /// chunks sealed with `crypto` when given.
    pub fn new(index: Option<&'a Index>, crypto: Option<&'a Crypto>) -> Self {
        Dedup {
            index,
            crypto,
            claimed: Mutex::new(HashSet::default()),
        }
    }

    /// True when the chunk is stored.
    pub fn known(&self, id: &ChunkId) -> bool {
        self.index.is_some_and(|i| i.contains(id))
    }

    /// True for the first caller with this id.
    pub fn claim(&self, id: &ChunkId) -> bool {
        match self.claimed.lock() {
            Ok(mut set) => set.insert(*id),
            // A panicked worker: compressing twice is harmless.
            Err(_) => true,
        }
    }
}

/// A backup in progress: the repository side (lock, index, sink).
#[derive(Debug)]
pub struct BackupSession {
    repo: Repository,
    index: Index,
    parent: Option<Snapshot>,
    options: BackupOptions,
    started: Instant,
    time: i64,
    nanos: u32,
    adopted: usize,
    /// Stops every stage of this backup's pipelines when one fails.
    cancel: Cancel,
    _lock: Lock,
    /// Stale locks seen while locking, to report.
    pub stale_locks: Vec<String>,
    /// Index files that could not be read (their packs were adopted).
    pub damaged_index_files: Vec<String>,
    /// The run's registry of chunks promised by parallel remote backups,
    /// and this backup's number in it.
    claims: Option<(Arc<Claims>, u64)>,
    /// Packs of other backups of the run holding chunks this one borrowed:
    /// listed in this backup's index file too.
    borrowed: Mutex<Vec<PackRecord>>,
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        if let Some((claims, owner)) = &self.claims {
            claims.release(*owner);
        }
    }
}

/// Counts of the sink.
#[derive(Debug, Default)]
struct SinkStats {
    new_chunks: u64,
    reused_chunks: u64,
    zero_chunks: u64,
    new_bytes: u64,
}

impl BackupSession {
    /// Locks the repository (shared), loads the index, adopts orphan packs
    /// and finds the previous snapshot of `options.name`.
    ///
    /// # Errors
    /// Locked repository, storage failures.
    pub fn start(repo: &Repository, options: BackupOptions) -> Result<BackupSession, RepoError> {
        let started = Instant::now();
        let now = time::now_nanos();
        let now_secs = (now / 1_000_000_000) as i64;
        let now_nanos = (now % 1_000_000_000) as u32;
        let lock = Lock::acquire(
            repo.backend().clone(),
            false,
            &format!("backup {}", options.source),
        )?;
        // A damaged index file must not stop backups: its packs are
        // adopted from their own tables like those of a killed backup.
        let (mut index, damaged_index_files) = repo.load_index_lenient()?;
        let adopted = repo.adopt_orphan_packs(&mut index)?;
        let parent = match &options.parent {
            Some(spec) => {
                let chosen = repo.resolve(spec)?;
                if chosen.meta.chunk_size != repo.chunk_size() {
                    return Err(RepoError::Invalid(format!(
                        "parent snapshot {} has {}-byte chunks, the repository {}",
                        chosen.id.short(),
                        chosen.meta.chunk_size,
                        repo.chunk_size()
                    )));
                }
                Some(chosen)
            }
            None => repo
                .latest(&options.name)?
                .filter(|p| p.meta.chunk_size == repo.chunk_size()),
        };
        Ok(BackupSession {
            repo: repo.clone(),
            index,
            parent,
            time: options.time.unwrap_or(now_secs),
            nanos: if options.time.is_some() {
                options.time_nanos
            } else {
                now_nanos
            },
            options,
            started,
            adopted,
            stale_locks: lock.stale.clone(),
            damaged_index_files,
            cancel: Cancel::new(),
            _lock: lock,
            claims: None,
            borrowed: Mutex::new(Vec::new()),
        })
    }

    /// Joins the run's registry of promised chunks (parallel remote
    /// backups share chunks on the wire through it).
    pub fn share_claims(&mut self, claims: Arc<Claims>) {
        let owner = claims.new_owner();
        self.claims = Some((claims, owner));
    }

    /// The run's registry and this backup's number in it.
    pub fn claims(&self) -> Option<(&Claims, u64)> {
        self.claims.as_ref().map(|(c, o)| (&**c, *o))
    }

    /// Lists a borrowed chunk's pack entry in this backup's index file.
    pub fn add_borrowed(&self, pack: PackId, entry: PackEntry) {
        let mut borrowed = self
            .borrowed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match borrowed.iter_mut().find(|r| r.pack == pack) {
            Some(r) => r.entries.push(entry),
            None => borrowed.push(PackRecord {
                pack,
                entries: vec![entry],
            }),
        }
    }

    /// What the backup is about.
    pub fn options(&self) -> &BackupOptions {
        &self.options
    }

    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The previous snapshot of the same name.
    pub fn parent(&self) -> Option<&Snapshot> {
        self.parent.as_ref()
    }

    /// The repository's index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The stop signal of this backup's pipelines: sources feeding
    /// [`Self::commit`] watch it in their blocking waits.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> usize {
        self.repo.chunk_size() as usize
    }

    /// Runs the sink over `units` (any order; they are put in `seq` order),
    /// then writes the index file and, if the source's `result` is good,
    /// the snapshot. `result` is called after all units arrived and gives
    /// the image size, its digest, bytes read and bytes sent.
    ///
    /// # Errors
    /// Storage failures; the source's error.
    pub fn commit(
        &self,
        units: Receiver<Unit>,
        result: impl FnOnce() -> Result<(u64, Option<Digest>, u64, u64), RepoError>,
    ) -> Result<BackupSummary, RepoError> {
        self.commit_with(units, result, false)
    }

    /// [`Self::commit`]; with `digest_optional`, a source that could not
    /// give the whole image digest (a change-tracked backup whose chunks
    /// are not digest segments) makes a snapshot without one.
    pub(super) fn commit_with(
        &self,
        units: Receiver<Unit>,
        result: impl FnOnce() -> Result<(u64, Option<Digest>, u64, u64), RepoError>,
        digest_optional: bool,
    ) -> Result<BackupSummary, RepoError> {
        // Handed over, not queued: every pack in flight is held whole, so
        // memory is the uploaders' packs, the one being filled and a spare.
        let (pack_tx, pack_rx) = bounded::<PackBuilder>(0);
        // Uploaded packs' buffers go back to the sink for the next packs.
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(1);
        let backend = self.repo.backend().clone();
        let repo = &self.repo;
        let cancel = &self.cancel;
        let uploaders = backend.upload_concurrency().max(1);
        let claims = self.claims();
        let stored = pipeline::scope(cancel, |s| {
            // Remote stores hide their latency behind several puts in
            // flight; each uploader holds at most one pack.
            let handles: Vec<_> = (0..uploaders)
                .map(|_| {
                    let backend = backend.clone();
                    let pack_rx = pack_rx.clone();
                    let spare_tx = spare_tx.clone();
                    s.spawn("uploader", move || -> Result<_, RepoError> {
                        let mut records = Vec::new();
                        let mut bytes = 0u64;
                        while let Ok(builder) = cancel.recv(&pack_rx) {
                            let (data, id, entries) = builder.finish_sealed(repo.table_seal());
                            bytes += data.len() as u64;
                            let (_, spare) = backend.put_if_absent_vec(&pack_key(&id), data)?;
                            if let Some((claims, _)) = claims {
                                claims.stored(&id, &entries);
                            }
                            records.push(PackRecord { pack: id, entries });
                            if let Some(spare) = spare {
                                let _ = spare_tx.try_send(spare);
                            }
                        }
                        if cancel.is_cancelled() {
                            return Err(RepoError::Stopped("backup"));
                        }
                        Ok((records, bytes))
                    })
                })
                .collect();
            drop(pack_rx);
            drop(spare_tx);
            let sink = run_sink(&self.index, units, pack_tx, &spare_rx, cancel);
            let mut uploaded: Result<(Vec<PackRecord>, u64), RepoError> = Ok((Vec::new(), 0));
            for handle in handles {
                let one = handle
                    .join()
                    .unwrap_or(Err(RepoError::Internal("uploader thread panicked")));
                uploaded = match pipeline::both(uploaded, one) {
                    Ok(((mut records, bytes), (more, more_bytes))) => {
                        records.extend(more);
                        Ok((records, bytes + more_bytes))
                    }
                    Err(e) => Err(e),
                };
            }
            pipeline::both(sink, uploaded)
        });
        // The producer behind `units` (joined by `result`) may have failed
        // first: its error is then the cause of the sink's "stopped".
        let (
            ((writer, stats, hasher), (records, pack_bytes)),
            (size, digest, bytes_read, bytes_sent),
        ) = pipeline::both(stored, result())?;
        let digest = match digest {
            Some(d) => Some(d),
            None if hasher.len() == size => Some(hasher.finalize()),
            None if digest_optional => None,
            None => return Err(RepoError::Internal("image digest is incomplete")),
        };
        if let Some(expected) = self.options.expected_size {
            if expected != size {
                return Err(RepoError::Invalid(format!(
                    "source ended after {size} bytes, expected {expected}"
                )));
            }
        }
        if writer.count() != crate::format::snapshot::chunk_count(size, self.repo.chunk_size()) {
            return Err(RepoError::Internal(
                "chunk count does not match the image size",
            ));
        }
        let mut records = records;
        records.extend(
            self.borrowed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain(..),
        );
        let mut index_bytes = 0;
        if !records.is_empty() {
            let id = self.repo.write_index(&records)?;
            index_bytes = self
                .repo
                .backend()
                .size(&super::index_key(&id))
                .unwrap_or(0);
        }
        let meta = SnapshotMeta {
            name: self.options.name.clone(),
            source: self.options.source.clone(),
            host: self.options.host.clone(),
            time: time::rfc3339(self.time),
            unix_time: self.time,
            nanos: self.nanos,
            size,
            chunk_size: self.repo.chunk_size(),
            digest: digest.map(|d| d.to_hex()).unwrap_or_default(),
            parent: self.parent.as_ref().map(|p| p.id.to_hex()),
            tags: self.options.tags.clone(),
            program: format!("diskdelta {}", env!("CARGO_PKG_VERSION")),
            thin_id: self.options.thin_id,
        };
        let (bytes, _) = writer
            .finish(&meta)
            .map_err(|e| RepoError::Invalid(format!("encoding snapshot: {e}")))?;
        let (snapshot_id, snapshot_bytes) = self.repo.put_snapshot(bytes)?;
        let bytes_added = pack_bytes + index_bytes + snapshot_bytes;
        Ok(BackupSummary {
            snapshot: snapshot_id.to_hex(),
            name: meta.name,
            parent: meta.parent,
            size,
            digest: meta.digest,
            bytes_read,
            bytes_sent,
            new_chunks: stats.new_chunks,
            reused_chunks: stats.reused_chunks,
            zero_chunks: stats.zero_chunks,
            new_bytes: stats.new_bytes,
            bytes_added,
            dedup_ratio: if bytes_added == 0 {
                0.0
            } else {
                size as f64 / bytes_added as f64
            },
            adopted_packs: self.adopted,
            seconds: self.started.elapsed().as_secs_f64(),
            change_tracking: None,
        })
    }

    /// Backs up a local source (file, block device, pipe or stdin).
    ///
    /// # Errors
    /// Read failures, storage failures.
    pub fn run_local(&self, input: Input) -> Result<BackupSummary, RepoError> {
        let chunk_size = self.chunk_size();
        let threads = if self.options.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.options.threads
        };
        let mut reader = ChunkReader::spawn(
            input,
            ReaderOptions {
                chunk_size: UNIT_SIZE,
                depth: threads + 3,
                digest: false,
                progress: self.options.progress.clone(),
                cancel: Some(self.cancel.clone()),
                ..ReaderOptions::default()
            },
        );
        let recycler = reader.recycler();
        let level = self.repo.config().compression_level;
        let (unit_tx, unit_rx) = bounded::<Unit>(threads * 2);
        let (work_tx, work_rx) = bounded::<Work>(threads);
        let dedup = Dedup::new(Some(&self.index), self.repo.crypto().map(|c| &**c));
        let parent = self.parent.as_ref();
        let cancel = &self.cancel;
        pipeline::scope(cancel, |s| {
            for _ in 0..threads {
                let work_rx = work_rx.clone();
                let unit_tx = unit_tx.clone();
                let recycler = recycler.clone();
                let dedup = &dedup;
                s.spawn("worker", move || -> Result<(), RepoError> {
                    worker(work_rx, unit_tx, recycler, dedup, chunk_size, level, cancel);
                    Ok(())
                });
            }
            drop(unit_tx);
            drop(work_rx);
            let feeder = s.spawn("feeder", move || -> Result<(u64, u64), RepoError> {
                let mut prev_ids = PreviousIds::new(parent)?;
                let mut bytes_read = 0u64;
                let mut seq = 0u64;
                while let Some(chunk) = reader.next_chunk() {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            reader.abandon();
                            return Err(e.into());
                        }
                    };
                    let prev = prev_ids.take(chunk.len.div_ceil(chunk_size));
                    if !chunk.hole {
                        bytes_read += chunk.len as u64;
                    }
                    if cancel.send(&work_tx, (seq, chunk, prev)).is_err() {
                        reader.abandon();
                        return Err(RepoError::Stopped("backup workers"));
                    }
                    seq += 1;
                }
                drop(work_tx);
                let summary = reader.finish()?;
                Ok((summary.bytes, bytes_read))
            });
            self.commit(unit_rx, || {
                let (size, read) = feeder
                    .join()
                    .unwrap_or(Err(RepoError::Internal("feeder thread panicked")))?;
                Ok((size, None, read, 0))
            })
        })
    }
}

type Work = (u64, crate::io::reader::Chunk, Vec<ChunkId>);

/// The previous snapshot's chunk ids, handed out unit by unit. Once the
/// list ends (the image grew) or cannot be read, the rest of the image
/// simply has no previous ids: they only save work, never decide content.
pub struct PreviousIds<'a> {
    ids: Option<crate::format::snapshot::ChunkIds<'a>>,
}

impl<'a> PreviousIds<'a> {
    /// The ids of `parent`, or none.
    ///
    /// # Errors
    /// The parent's chunk list cannot be opened.
    pub fn new(parent: Option<&'a Snapshot>) -> Result<Self, RepoError> {
        let ids = match parent {
            Some(p) => Some(p.chunk_ids().map_err(|source| RepoError::Snapshot {
                key: super::snapshot_key(&p.id),
                source,
            })?),
            None => None,
        };
        Ok(PreviousIds { ids })
    }

    /// The next `n` ids (fewer, or none, past the end of the list).
    pub fn take(&mut self, n: usize) -> Vec<ChunkId> {
        let mut out = Vec::with_capacity(n);
        if let Some(ids) = self.ids.as_mut() {
            for _ in 0..n {
                match ids.next() {
                    Some(Ok(id)) => out.push(id),
                    _ => {
                        self.ids = None;
                        break;
                    }
                }
            }
        }
        out
    }
}

impl std::fmt::Debug for PreviousIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousIds").finish_non_exhaustive()
    }
}

fn worker(
    work: Receiver<Work>,
    units: Sender<Unit>,
    recycler: Recycler,
    dedup: &Dedup<'_>,
    chunk_size: usize,
    level: i32,
    cancel: &Cancel,
) {
    let Ok(mut compressor) = zstd::bulk::Compressor::new(level) else {
        return;
    };
    while let Ok((seq, chunk, prev)) = cancel.recv(&work) {
        if chunk.hole {
            let n = chunk.len.div_ceil(chunk_size);
            let chunks = (0..n).map(|_| ChunkOutcome::Zero).collect();
            let segments = (0..chunk.len.div_ceil(SEGMENT_SIZE))
                .map(|i| {
                    let l = SEGMENT_SIZE.min(chunk.len - i * SEGMENT_SIZE);
                    (zero_segment(l), l)
                })
                .collect();
            recycler.recycle(chunk);
            let unit = Unit {
                seq,
                chunks,
                segments,
                appendix: false,
                flush: false,
            };
            if cancel.send(&units, unit).is_err() {
                return;
            }
            continue;
        }
        // Digest segments are hashed here, in parallel, rather than on the
        // reader's thread; at a 1 MiB chunk size they are the chunk ids.
        let segments: Vec<(blake3::Hash, usize)> = chunk
            .data()
            .chunks(SEGMENT_SIZE)
            .map(|s| (hash_segment(s), s.len()))
            .collect();
        let per_segment = chunk_size == SEGMENT_SIZE;
        let segment_ids = |i: usize| -> Option<ChunkId> {
            if per_segment {
                segments.get(i).map(|(h, _)| ChunkId::from(*h))
            } else {
                None
            }
        };
        let outcomes = classify_unit(
            chunk.data(),
            chunk_size,
            &segment_ids,
            &prev,
            dedup,
            &mut compressor,
        );
        recycler.recycle(chunk);
        let unit = Unit {
            seq,
            chunks: outcomes,
            segments,
            appendix: false,
            flush: false,
        };
        if cancel.send(&units, unit).is_err() {
            return;
        }
    }
}

/// Puts units in order and turns them into the snapshot list, packs and
/// (for local sources) the image digest.
fn run_sink(
    index: &Index,
    units: Receiver<Unit>,
    packs: Sender<PackBuilder>,
    spare: &Receiver<Vec<u8>>,
    cancel: &Cancel,
) -> Result<(SnapshotWriter, SinkStats, ImageHasher), RepoError> {
    // A pack holds PACK_TARGET plus at most one chunk (4 MiB) and its table.
    let fresh = || Vec::with_capacity(PACK_TARGET + (5 << 20));
    let mut hasher = ImageHasher::new();
    let io_err = |e: std::io::Error| RepoError::Invalid(format!("encoding snapshot list: {e}"));
    let mut writer = SnapshotWriter::new().map_err(io_err)?;
    let mut stats = SinkStats::default();
    let mut pending: BTreeMap<u64, Unit> = BTreeMap::new();
    let mut next = 0u64;
    let mut pack = PackBuilder::reusing(fresh());
    let mut stored: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    let flush_if = |pack: &mut PackBuilder, now: bool| -> Result<(), RepoError> {
        if pack.len() >= PACK_TARGET || (now && !pack.is_empty()) {
            let next = PackBuilder::reusing(spare.try_recv().unwrap_or_else(|_| fresh()));
            let full = std::mem::replace(pack, next);
            if cancel.send(&packs, full).is_err() {
                return Err(RepoError::Stopped("uploader"));
            }
        }
        Ok(())
    };
    while let Ok(unit) = cancel.recv(&units) {
        if unit.appendix {
            for outcome in unit.chunks {
                if let ChunkOutcome::New {
                    id,
                    raw_len,
                    encoding,
                    blob,
                } = outcome
                {
                    if index.contains(&id) || !stored.insert(id) {
                        continue;
                    }
                    stats.new_chunks += 1;
                    stats.new_bytes += u64::from(raw_len);
                    pack.add(index.stored_id(&id), &blob, raw_len, encoding);
                    flush_if(&mut pack, false)?;
                }
            }
            continue;
        }
        pending.insert(unit.seq, unit);
        while let Some(unit) = pending.remove(&next) {
            next += 1;
            let flush = unit.flush;
            for (h, l) in &unit.segments {
                hasher.push_segment(h, *l);
            }
            for outcome in unit.chunks {
                match outcome {
                    ChunkOutcome::Zero => {
                        stats.zero_chunks += 1;
                        writer.push(&ChunkId::ZERO).map_err(io_err)?;
                    }
                    ChunkOutcome::Known(id) => {
                        stats.reused_chunks += 1;
                        writer.push(&id).map_err(io_err)?;
                    }
                    ChunkOutcome::New {
                        id,
                        raw_len,
                        encoding,
                        blob,
                    } => {
                        writer.push(&id).map_err(io_err)?;
                        if index.contains(&id) || !stored.insert(id) {
                            stats.reused_chunks += 1;
                            continue;
                        }
                        stats.new_chunks += 1;
                        stats.new_bytes += u64::from(raw_len);
                        pack.add(index.stored_id(&id), &blob, raw_len, encoding);
                        flush_if(&mut pack, false)?;
                    }
                }
            }
            flush_if(&mut pack, flush)?;
        }
    }
    if cancel.is_cancelled() {
        return Err(RepoError::Stopped("backup"));
    }
    if !pending.is_empty() {
        return Err(RepoError::Internal("a unit of the image is missing"));
    }
    if !pack.is_empty() && cancel.send(&packs, pack).is_err() {
        return Err(RepoError::Stopped("uploader"));
    }
    Ok((writer, stats, hasher))
}
