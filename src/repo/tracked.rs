//! Change-tracked backups: a change tracker (thin-pool metadata, a
//! changed-range list) says which bytes changed since the previous
//! snapshot of the same name; only the repository chunks those bytes touch
//! are read, the others keep the previous snapshot's chunk ids.
//!
//! ```text
//!  planner (this thread's helper)        workers (one per core)          sink, uploader
//!  tracked runs + previous ids ─(units)─> read the chunks to read, hash, ─> as for a full
//!  widened to whole chunks:               compress; reused ids give the    backup
//!  reuse, zero, or read                   digest segments unread
//! ```
//!
//! A reused id stands for bytes that are not read, so the image digest is
//! assembled from chunk ids: at the default 1 MiB chunks they are the
//! digest's segment hashes. At other chunk sizes the snapshot records no
//! image digest (restore then checks every chunk by its id, and says that
//! the whole image could not be checked). A chunk that a run touches
//! only in part is read whole; a chunk wholly inside an unmapped run is
//! zero; a chunk past the previous image's end, or whose previous id the
//! index does not list, is read. `verify_sample` re-reads that many
//! reused chunks, picked at random, and fails the backup when one differs
//! from its previous id (a tracker that missed a change).

use std::collections::VecDeque;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::backup::{
    classify_unit, BackupSession, BackupSummary, ChunkOutcome, Dedup, PreviousIds, Unit, UNIT_SIZE,
};
use super::RepoError;
use crate::change::tracked::{RunStream, TrackedKind, TrackedRun};
use crate::digest::{zero_segment, SEGMENT_SIZE};
use crate::id::ChunkId;
use crate::io::{Input, InputKind, IoError};

/// What to do with one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Unchanged: the previous snapshot's id.
    Reuse(ChunkId),
    /// Unmapped in NEW: zeros, not read.
    Zero,
    /// Changed: read it.
    Read,
}

#[derive(Debug)]
struct PlannedUnit {
    seq: u64,
    offset: u64,
    len: usize,
    plans: Vec<Plan>,
}

/// What a tracked backup did beyond a full one.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrackedStats {
    /// Chunks read because the tracker reported them changed (or they
    /// could not be reused).
    pub chunks_read: u64,
    /// Chunks that kept the previous snapshot's id unread.
    pub chunks_reused: u64,
    /// Chunks that became unmapped (zeros, unread).
    pub chunks_unmapped: u64,
    /// Reused chunks re-read and checked (`verify_sample`).
    pub chunks_verified: u64,
}

/// How change tracking went, for the backup summary and `--json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrackingReport {
    /// The tracker, as described to the user.
    pub tracker: String,
    /// False when the backup fell back to a full hash scan.
    pub used: bool,
    /// Why it fell back.
    pub fallback_reason: Option<String>,
    /// Chunk counts (zero after a fallback).
    #[serde(flatten)]
    pub stats: TrackedStats,
}

impl BackupSession {
    /// Why a change-tracked backup cannot be trusted here (a broken chain),
    /// or `None` when it can. `tracker_old_thin_id` is the thin id the
    /// tracker compares from, when it is thin-pool metadata.
    pub fn tracking_obstacle(&self, tracker_old_thin_id: Option<u64>) -> Option<String> {
        let name = &self.options().name;
        let Some(parent) = self.parent() else {
            return Some(format!("{name} has no previous snapshot to compare with"));
        };
        match (tracker_old_thin_id, parent.meta.thin_id) {
            (Some(old), Some(recorded)) if old != recorded => Some(format!(
                "the previous snapshot of {name} was read from thin device {recorded}, but the change tracker compares from thin device {old}"
            )),
            (Some(_), None) => Some(format!(
                "the previous snapshot of {name} records no thin device id, so the chain cannot be checked"
            )),
            _ => None,
        }
    }

    /// Backs up `input` reading only what `runs` report changed since the
    /// previous snapshot. Call only when [`Self::tracking_obstacle`] found
    /// nothing.
    ///
    /// # Errors
    /// Tracker errors, read failures, storage failures, a reused chunk that
    /// `verify_sample` found changed.
    pub fn run_tracked(
        &self,
        input: Input,
        runs: RunStream,
        verify_sample: usize,
    ) -> Result<(BackupSummary, TrackedStats), RepoError> {
        if !matches!(input.kind(), InputKind::File | InputKind::BlockDevice) {
            return Err(RepoError::Invalid(format!(
                "{}: change tracking needs a file or block device",
                input.path().display()
            )));
        }
        let size = input.size().ok_or_else(|| {
            RepoError::Invalid(format!("{}: size unknown", input.path().display()))
        })?;
        self.run_tracked_from(&input, size, runs, verify_sample)
    }

    /// Backs up `size` bytes of any random-access `source` reading only
    /// what `runs` report changed since the parent snapshot (the other
    /// chunks keep the parent's ids unread).
    ///
    /// # Errors
    /// As [`Self::run_tracked`].
    pub fn run_tracked_from(
        &self,
        input: &dyn TrackedSource,
        size: u64,
        runs: RunStream,
        verify_sample: usize,
    ) -> Result<(BackupSummary, TrackedStats), RepoError> {
        let chunk_size = self.chunk_size();
        let parent = self
            .parent()
            .ok_or(RepoError::Internal("tracked backup without a parent"))?;
        // Reused ids give the image digest only when chunks are digest
        // segments; otherwise the snapshot records no image digest (every
        // chunk is still verified by its id on restore).
        let digest_known = chunk_size == SEGMENT_SIZE;
        let threads = if self.options().threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.options().threads
        };
        let level = self.repo().config().compression_level;
        let (unit_tx, unit_rx) = bounded::<Unit>(threads * 2);
        let (work_tx, work_rx) = bounded::<PlannedUnit>(threads);
        let (read_tx, read_rx) = bounded::<u64>(threads * 2);
        let dedup = Dedup::new(Some(self.index()), self.repo().crypto().map(|c| &**c));
        let failure: std::sync::Mutex<Option<IoError>> = std::sync::Mutex::new(None);
        let failure = &failure;
        let progress = self.options().progress.clone();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let work_rx = work_rx.clone();
                let unit_tx = unit_tx.clone();
                let read_tx = read_tx.clone();
                let dedup = &dedup;
                s.spawn(move || {
                    if let Err(e) =
                        worker(input, work_rx, unit_tx, read_tx, dedup, chunk_size, level)
                    {
                        // The first read error explains the backup's end
                        // better than the unit it leaves missing.
                        let mut slot = failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        slot.get_or_insert(e);
                    }
                });
            }
            drop(unit_tx);
            drop(work_rx);
            drop(read_tx);
            let reader_total = s.spawn(move || read_rx.iter().sum::<u64>());
            let planner = s.spawn(move || -> Result<(TrackedStats, Vec<Sampled>), RepoError> {
                let mut planner = Planner {
                    runs,
                    window: VecDeque::new(),
                    exhausted: false,
                    previous: PreviousIds::new(Some(parent))?,
                    parent_size: parent.meta.size,
                    size,
                    chunk_size,
                    index: self.index(),
                    stats: TrackedStats::default(),
                    sampler: Sampler::new(verify_sample),
                };
                let mut offset = 0u64;
                let mut seq = 0u64;
                while offset < size {
                    let len = (size - offset).min(UNIT_SIZE as u64) as usize;
                    let plans = planner.plan_unit(offset, len)?;
                    if work_tx
                        .send(PlannedUnit {
                            seq,
                            offset,
                            len,
                            plans,
                        })
                        .is_err()
                    {
                        return Err(RepoError::Stopped("backup workers"));
                    }
                    if let Some(p) = &progress {
                        p.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    offset += len as u64;
                    seq += 1;
                }
                drop(work_tx);
                // Runs past the image's end are fine; a failure of the
                // tracker after the last chunk is not.
                for run in planner.runs.by_ref() {
                    run?;
                }
                Ok((planner.stats, planner.sampler.picked))
            });
            let mut stats_out = TrackedStats::default();
            let committed = self.commit_with(
                unit_rx,
                || {
                    let (mut stats, sampled) = planner
                        .join()
                        .unwrap_or(Err(RepoError::Internal("planner thread panicked")))?;
                    let bytes_read = reader_total.join().unwrap_or(0);
                    stats.chunks_verified = verify_reused(input, &sampled)?;
                    stats_out = stats;
                    Ok((
                        size,
                        None,
                        bytes_read + stats_out.chunks_verified * chunk_size as u64,
                        0,
                    ))
                },
                !digest_known,
            );
            let read_failure = failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match (committed, read_failure) {
                (_, Some(e)) => Err(e.into()),
                (Err(e), None) => Err(e),
                (Ok(summary), None) => Ok((summary, stats_out)),
            }
        })
    }
}

/// A reused chunk picked for re-reading.
#[derive(Debug, Clone, Copy)]
struct Sampled {
    offset: u64,
    len: usize,
    id: ChunkId,
}

/// Reservoir sampling of reused chunks (uniform over all of them).
#[derive(Debug)]
struct Sampler {
    want: usize,
    seen: u64,
    state: u64,
    picked: Vec<Sampled>,
}

impl Sampler {
    fn new(want: usize) -> Self {
        let seed = crate::repo::time::now_nanos() as u64 | 1;
        Sampler {
            want,
            seen: 0,
            state: seed,
            picked: Vec::new(),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: enough to spread picks; not for secrets.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn offer(&mut self, chunk: Sampled) {
        if self.want == 0 {
            return;
        }
        self.seen += 1;
        if self.picked.len() < self.want {
            self.picked.push(chunk);
        } else {
            let j = self.random() % self.seen;
            if (j as usize) < self.want {
                self.picked[j as usize] = chunk;
            }
        }
    }
}

/// What a change-tracked backup reads: a file, a block device, or a
/// snapshot with its overlay.
pub trait TrackedSource: Sync {
    /// The source, for messages.
    fn describe(&self) -> String;
    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// [`IoError::Read`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError>;
}

impl TrackedSource for Input {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        Input::read_exact_at(self, buf, offset)
    }
}

fn verify_reused(input: &dyn TrackedSource, sampled: &[Sampled]) -> Result<u64, RepoError> {
    let mut buf = vec![0u8; sampled.iter().map(|s| s.len).max().unwrap_or(0)];
    for s in sampled {
        let data = &mut buf[..s.len];
        input.read_exact_at(data, s.offset)?;
        let same = if s.id.is_zero_marker() {
            crate::digest::is_zero(data)
        } else {
            ChunkId::of(data) == s.id
        };
        if !same {
            return Err(RepoError::TrackerMissedChange {
                path: input.describe(),
                offset: s.offset,
                len: s.len as u64,
            });
        }
    }
    Ok(sampled.len() as u64)
}

struct Planner<'a> {
    runs: RunStream,
    /// Runs that may still overlap chunks to come, in order.
    window: VecDeque<TrackedRun>,
    exhausted: bool,
    previous: PreviousIds<'a>,
    parent_size: u64,
    size: u64,
    chunk_size: usize,
    index: &'a super::index::Index,
    stats: TrackedStats,
    sampler: Sampler,
}

impl Planner<'_> {
    fn plan_unit(&mut self, offset: u64, len: usize) -> Result<Vec<Plan>, RepoError> {
        let n = len.div_ceil(self.chunk_size);
        let previous = self.previous.take(n);
        let mut plans = Vec::with_capacity(n);
        for i in 0..n {
            let start = offset + (i * self.chunk_size) as u64;
            let end = (start + self.chunk_size as u64).min(self.size);
            let plan = self.plan_chunk(start, end, previous.get(i).copied())?;
            match plan {
                Plan::Reuse(id) => {
                    self.stats.chunks_reused += 1;
                    self.sampler.offer(Sampled {
                        offset: start,
                        len: (end - start) as usize,
                        id,
                    });
                }
                Plan::Zero => self.stats.chunks_unmapped += 1,
                Plan::Read => self.stats.chunks_read += 1,
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    fn plan_chunk(
        &mut self,
        start: u64,
        end: u64,
        previous: Option<ChunkId>,
    ) -> Result<Plan, RepoError> {
        // Pull runs until one starts at or after this chunk's end.
        while !self.exhausted && self.window.back().is_none_or(|r| r.run.offset < end) {
            match self.runs.next() {
                Some(run) => self.window.push_back(run?),
                None => self.exhausted = true,
            }
        }
        while self.window.front().is_some_and(|r| r.run.end() <= start) {
            self.window.pop_front();
        }
        let mut touched = false;
        for r in self.window.iter().take_while(|r| r.run.offset < end) {
            if r.run.end() <= start {
                continue;
            }
            if r.kind == TrackedKind::Unmapped && r.run.offset <= start && r.run.end() >= end {
                return Ok(Plan::Zero);
            }
            touched = true;
        }
        if touched {
            return Ok(Plan::Read);
        }
        // Reusable only where the previous image had this very chunk, of
        // the same length, and the repository still has it.
        let previous_end = (start + self.chunk_size as u64).min(self.parent_size);
        match previous {
            Some(id)
                if previous_end == end && (id.is_zero_marker() || self.index.contains(&id)) =>
            {
                Ok(Plan::Reuse(id))
            }
            _ => Ok(Plan::Read),
        }
    }
}

fn worker(
    input: &dyn TrackedSource,
    work: Receiver<PlannedUnit>,
    units: Sender<Unit>,
    read: Sender<u64>,
    dedup: &Dedup<'_>,
    chunk_size: usize,
    level: i32,
) -> Result<(), IoError> {
    let Ok(mut compressor) = zstd::bulk::Compressor::new(level) else {
        return Ok(());
    };
    let mut buf = vec![0u8; UNIT_SIZE];
    for unit in work {
        let result = (|| -> Result<Unit, IoError> {
            let mut chunks = Vec::with_capacity(unit.plans.len());
            let mut segments = Vec::with_capacity(unit.plans.len());
            let mut bytes_read = 0u64;
            let mut i = 0;
            while i < unit.plans.len() {
                let start = i * chunk_size;
                let len = chunk_size.min(unit.len - start);
                match unit.plans[i] {
                    Plan::Zero => {
                        chunks.push(ChunkOutcome::Zero);
                        segments.push((zero_segment(len), len));
                        i += 1;
                    }
                    Plan::Reuse(id) if id.is_zero_marker() => {
                        chunks.push(ChunkOutcome::Zero);
                        segments.push((zero_segment(len), len));
                        i += 1;
                    }
                    Plan::Reuse(id) => {
                        chunks.push(ChunkOutcome::Known(id));
                        // At 1 MiB chunks an id is its segment's hash.
                        segments.push((blake3::Hash::from_bytes(*id.as_bytes()), len));
                        i += 1;
                    }
                    Plan::Read => {
                        // One read for a run of chunks to read.
                        let mut j = i;
                        while j < unit.plans.len() && unit.plans[j] == Plan::Read {
                            j += 1;
                        }
                        let end = (j * chunk_size).min(unit.len);
                        let data = &mut buf[start..end];
                        let offset = unit.offset + start as u64;
                        input.read_exact_at(data, offset)?;
                        bytes_read += data.len() as u64;
                        for piece in data.chunks(chunk_size) {
                            segments.push((crate::digest::hash_segment(piece), piece.len()));
                        }
                        let no_ids = |_: usize| None;
                        chunks.extend(classify_unit(
                            data,
                            chunk_size,
                            &no_ids,
                            &[],
                            dedup,
                            &mut compressor,
                        ));
                        i = j;
                    }
                }
            }
            let _ = read.send(bytes_read);
            if chunk_size != SEGMENT_SIZE {
                // Pieces of other sizes are not digest segments.
                segments.clear();
            }
            Ok(Unit {
                seq: unit.seq,
                chunks,
                segments,
                appendix: false,
                flush: false,
            })
        })();
        if units.send(result?).is_err() {
            return Ok(());
        }
    }
    Ok(())
}
