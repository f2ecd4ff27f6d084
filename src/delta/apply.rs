//! `apply`: rebuild NEW from OLD and a delta.
//!
//! **Stream mode** reads OLD and the delta once, in order, and writes NEW
//! in order, so all three may be pipes:
//! ```text
//!  OLD reader thread ──(chunks, digest OLD)──> overlay (this thread) ──(chunks)──> writer thread (digest NEW, sparse write)
//!  delta reader thread ──(verified extents)──────┘
//! ```
//! A regular-file NEW is published only when the NEW digest matched.
//!
//! **In-place mode** changes a TARGET that holds OLD. Nothing is written
//! until the whole delta was read and verified and the base check passed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::journal;
use super::source::{DeltaKind, DeltaSource, DeltaStream};
use super::DeltaError;
use crate::digest::{Digest, ImageHasher, SEGMENT_SIZE};
use crate::format::delta::{RawRecord, Trailer};
use crate::format::{Extent, ExtentData};
use crate::io::reader::{AlignedBuf, Chunk, ReaderOptions, DEFAULT_CHUNK_SIZE};
use crate::io::{ChunkReader, Input, InputKind, InputOptions, IoError, Output, OutputKind};
use crate::pipeline::{self, Cancel};

/// How much of the base to check before changing a target in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckBase {
    /// No check.
    None,
    /// Hash the sampled OLD blocks recorded in the delta.
    Sample,
    /// Hash the whole base and compare with the OLD digest.
    Full,
}

impl CheckBase {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CheckBase::None => "none",
            CheckBase::Sample => "sample",
            CheckBase::Full => "full",
        }
    }
}

/// Validated options of `apply`.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Delta format; detected when `None`.
    pub format: Option<DeltaKind>,
    /// Record size of foreign formats that do not store one.
    pub block_size: Option<u32>,
    /// In-place base check; `None` means the default (`sample` for native
    /// deltas, `none` for formats without hashes).
    pub check_base: Option<CheckBase>,
    /// Re-read the target after an in-place apply and compare digests.
    pub verify: bool,
    /// Added to as NEW bytes are produced.
    pub progress: Option<Arc<AtomicU64>>,
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct ApplySummary {
    /// Format of the delta.
    pub format: DeltaKind,
    /// NEW size.
    pub new_size: u64,
    /// Extents applied.
    pub extents: u64,
    /// NEW bytes written from the delta.
    pub changed_bytes: u64,
    /// NEW digest, when the format records one (verified).
    pub new_digest: Option<Digest>,
    /// Base check performed.
    pub check_base: CheckBase,
    /// True when the result was verified against a recorded digest.
    pub verified: bool,
    /// Notes for the user (e.g. "format has no checksums").
    pub notes: Vec<String>,
}

fn open_delta(delta: Input, options: &ApplyOptions) -> Result<DeltaSource, DeltaError> {
    let path = delta.path().to_path_buf();
    let stream: DeltaStream = Box::new(delta.into_file()?);
    DeltaSource::open(&path, stream, options.format, options.block_size)
}

/// Events from the delta reader thread.
pub(super) enum DeltaEvent {
    Extent(Extent),
    End(Box<DeltaSource>),
    Failed(DeltaError),
}

/// Reads `source` on its own thread, at most `depth` extents ahead.
pub(super) fn spawn_delta_reader(mut source: DeltaSource, depth: usize) -> Receiver<DeltaEvent> {
    let (tx, rx) = bounded(depth);
    let spawned = std::thread::Builder::new()
        .name("read delta".into())
        .spawn({
            let tx = tx.clone();
            move || loop {
                match source.next_extent() {
                    Ok(Some(e)) => {
                        if tx.send(DeltaEvent::Extent(e)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(DeltaEvent::End(Box::new(source)));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(DeltaEvent::Failed(e));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(DeltaEvent::Failed(DeltaError::Io(IoError::Op {
            op: "spawn delta reader",
            path: PathBuf::from("-"),
            source: e,
        })));
    }
    rx
}

/// Extents pulled from the delta, in order, plus the end state.
struct ExtentQueue {
    events: Receiver<DeltaEvent>,
    queue: VecDeque<Extent>,
    end: Option<Box<DeltaSource>>,
    count: u64,
    changed: u64,
    /// NEW is at least as large as the base (C++ diff-dd formats).
    base_relative: bool,
    /// NEW size from the native header, when known there.
    header_new_size: Option<u64>,
    /// OLD for positioned reads, when the delta holds copy records.
    copy_base: Option<Input>,
}

impl ExtentQueue {
    /// Pulls extents until one starts at or after `until`, or the end.
    fn fill_until(&mut self, until: u64) -> Result<(), DeltaError> {
        while self.end.is_none() && self.queue.back().is_none_or(|e| e.offset < until) {
            match self.events.recv() {
                Ok(DeltaEvent::Extent(e)) => {
                    self.count += 1;
                    self.changed += e.len();
                    self.queue.push_back(e);
                }
                Ok(DeltaEvent::End(source)) => self.end = Some(source),
                Ok(DeltaEvent::Failed(e)) => return Err(e),
                Err(_) => return Err(DeltaError::Panic("delta reader")),
            }
        }
        Ok(())
    }

    /// True when an extent reaches `offset`, so NEW is at least that long.
    fn reaches(&self, offset: u64) -> bool {
        self.queue.back().is_some_and(|e| e.end() >= offset)
    }

    /// Reads to the end of the delta and fails if extents remain unapplied.
    fn expect_no_more(&mut self) -> Result<(), DeltaError> {
        self.fill_until(u64::MAX)?;
        match self.queue.front() {
            None => Ok(()),
            Some(e) => Err(DeltaError::Size {
                path: self
                    .end
                    .as_deref()
                    .map_or_else(|| PathBuf::from("delta"), |s| s.path().to_path_buf()),
                detail: format!(
                    "the delta has an extent at byte {} past NEW's end",
                    e.offset
                ),
            }),
        }
    }

    /// Writes the extents' bytes that fall into `chunk`; drops extents that
    /// end inside it. Reference-compressed records are decoded here, from
    /// the chunk's bytes before they are overwritten (a record lies inside
    /// one reference window, so inside one chunk).
    fn overlay(&mut self, chunk: &mut Chunk) -> Result<(), DeltaError> {
        let (start, end) = (chunk.offset, chunk.end());
        while let Some(e) = self.queue.front_mut() {
            if e.offset >= end {
                break;
            }
            if let ExtentData::Referenced(raw) = &e.data {
                if raw.copy_source().is_some() {
                    // A copy reads OLD anywhere, not this chunk, so it may
                    // cross chunks like a literal record once decoded.
                    let Some(base) = &self.copy_base else {
                        return Err(DeltaError::Panic("apply (copy record without a base)"));
                    };
                    e.data = ExtentData::Bytes(read_copy(base, raw)?);
                    continue;
                }
                if e.offset < start || e.end() > end {
                    return Err(DeltaError::Panic("apply (reference record across chunks)"));
                }
                let range = (e.offset - start) as usize..(e.end() - start) as usize;
                let decoded = if chunk.hole {
                    raw.decode_against(&vec![0; range.len()])?
                } else {
                    raw.decode_against(&chunk.data()[range])?
                };
                e.data = ExtentData::Bytes(decoded);
            }
            let from = e.offset.max(start);
            let to = e.end().min(end);
            if from < to {
                let dst = (from - start) as usize..(to - start) as usize;
                match &e.data {
                    ExtentData::Bytes(b) => {
                        let src = (from - e.offset) as usize..(to - e.offset) as usize;
                        chunk.range_mut(dst).copy_from_slice(&b[src]);
                    }
                    ExtentData::Zeros(_) => {
                        if !chunk.hole {
                            chunk.range_mut(dst).fill(0);
                        }
                    }
                    ExtentData::Referenced(_) => {
                        return Err(DeltaError::Panic("apply (undecoded reference record)"))
                    }
                }
            }
            if e.end() <= end {
                self.queue.pop_front();
            } else {
                break;
            }
        }
        Ok(())
    }
}

pub(super) struct Written {
    pub(super) output: Output,
    pub(super) bytes: u64,
    pub(super) digest: Digest,
}

fn writer_loop(
    mut output: Output,
    chunks: Receiver<Chunk>,
    recycle: Sender<AlignedBuf>,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Written, DeltaError> {
    let mut hasher = ImageHasher::new();
    for chunk in chunks {
        digest_chunk(&mut hasher, &chunk);
        if chunk.hole {
            output.append_zeros(chunk.len as u64)?;
        } else {
            output.append(chunk.data())?;
        }
        if let Some(p) = &progress {
            p.fetch_add(chunk.len as u64, Ordering::Relaxed);
        }
        let _ = recycle.try_send(chunk.into_buf());
    }
    Ok(Written {
        bytes: output.position(),
        output,
        digest: hasher.finalize(),
    })
}

/// Runs `produce`, which sends NEW's chunks in order (taking back the
/// buffers the writer is done with), against a writer thread. Returns what
/// both gave, and the channel of buffers the writer handed back: they
/// belong to OLD's reader, which needs them to read OLD's rest.
pub(super) fn with_writer<T>(
    cancel: &Cancel,
    output: Output,
    progress: Option<Arc<AtomicU64>>,
    produce: impl FnOnce(Sender<Chunk>, &Receiver<AlignedBuf>) -> Result<T, DeltaError>,
) -> (Result<(T, Written), DeltaError>, Receiver<AlignedBuf>) {
    let (chunk_tx, chunk_rx) = bounded::<Chunk>(2);
    let (recycle_tx, recycle_rx) = bounded::<AlignedBuf>(4);
    let result = pipeline::scope(cancel, |stages| {
        let writer = stages.spawn("writer", move || {
            writer_loop(output, chunk_rx, recycle_tx, progress)
        });
        let produced = produce(chunk_tx, &recycle_rx);
        let written = writer.join().map_err(|_| DeltaError::Panic("writer"))?;
        // A writer failure (disk full) stops the producer too; report its cause.
        match (produced, written) {
            (_, Err(e)) | (Err(e), _) => Err(e),
            (Ok(made), Ok(written)) => Ok((made, written)),
        }
    });
    (result, recycle_rx)
}

/// Feeds a chunk of NEW to the digest, reusing the hashes of digest
/// segments that the overlay left as the OLD reader hashed them.
fn digest_chunk(hasher: &mut ImageHasher, chunk: &Chunk) {
    let mut at = 0;
    let mut index = 0;
    while at < chunk.len {
        let end = (at + SEGMENT_SIZE).min(chunk.len);
        let reused = chunk
            .segment_hash(index)
            .is_some_and(|h| hasher.push_segment(h, end - at));
        if !reused {
            if chunk.hole {
                hasher.update_zeros((end - at) as u64);
            } else {
                hasher.update(&chunk.data()[at..end]);
            }
        }
        at = end;
        index += 1;
    }
}

/// Stream mode: writes NEW = delta applied to `base` into `output`.
///
/// # Errors
/// Format errors, I/O errors, [`DeltaError::BaseMismatch`] when `base` is not
/// the delta's OLD, [`DeltaError::ResultMismatch`] when NEW's digest differs.
/// A regular-file output is left unpublished on any error.
pub fn apply_stream(
    delta: Input,
    base: Input,
    output: Output,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    apply_stream_source(open_delta(delta, options)?, base, output, options)
}

/// [`apply_stream`] of a delta already opened.
pub(super) fn apply_stream_source(
    source: DeltaSource,
    base: Input,
    output: Output,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    let kind = source.kind();
    if let (Some(n), OutputKind::BlockDevice) = (source.new_size(None), output.kind()) {
        output.require_capacity(n)?;
    }
    let base_path = base.path().to_path_buf();
    // A regular file's size is OLD's size: a wrong base is named as such
    // before any record is decoded against it.
    if let (Some(expected), InputKind::File, Some(actual)) = (
        source.header().and_then(|h| h.old_size),
        base.kind(),
        base.size(),
    ) {
        check_base_size(expected, actual, &base_path)?;
    }
    let copy_base = match source.header() {
        Some(h) if h.copies => Some(positioned_base(&base)?),
        _ => None,
    };
    let out_path = output.path().to_path_buf();
    let cancel = Cancel::new();
    let mut old = ChunkReader::spawn(
        base,
        ReaderOptions {
            digest: kind.has_checksums(),
            cancel: Some(cancel.clone()),
            ..ReaderOptions::default()
        },
    );
    let base_relative = source.base_relative();
    let header_new_size = source.header().and_then(|h| h.new_size);
    let mut queue = ExtentQueue {
        events: spawn_delta_reader(source, 8),
        queue: VecDeque::new(),
        end: None,
        count: 0,
        changed: 0,
        base_relative,
        header_new_size,
        copy_base,
    };
    let (result, recycle_rx) = with_writer(&cancel, output, options.progress.clone(), |tx, rx| {
        produce_new(&mut old, &mut queue, tx, rx)
    });
    let (new_size, written) = match result {
        Ok(r) => r,
        Err(e) => {
            old.abandon();
            return Err(e);
        }
    };
    // Buffers the writer handed back after the producer stopped belong to
    // OLD's reader: without them it cannot read OLD's rest (a NEW shorter
    // than OLD stops early) and `finish` would wait forever.
    while let Ok(buf) = recycle_rx.try_recv() {
        old.recycle_buf(buf);
    }
    let old_summary = old.finish()?;
    let source = queue
        .end
        .take()
        .ok_or(DeltaError::Panic("delta reader (no end)"))?;
    let mut notes = Vec::new();
    let mut verified = false;
    let mut new_digest = None;
    if let Some(trailer) = source.trailer() {
        check_sizes(trailer, old_summary.bytes, &base_path)?;
        if let (Some(expected), Some(actual)) = (trailer.old_digest, old_summary.digest) {
            if expected != actual {
                return Err(DeltaError::BaseMismatch {
                    path: base_path,
                    detail: format!("OLD digest is {expected}, base has {actual}"),
                });
            }
        }
        let unknown_new = trailer.new_digest == Digest::NONE && trailer.old_digest.is_none();
        if !unknown_new && written.digest != trailer.new_digest {
            return Err(DeltaError::ResultMismatch {
                path: out_path,
                expected: trailer.new_digest,
                actual: written.digest,
            });
        }
        if trailer.old_digest.is_none() {
            notes.push("delta made from change tracking: the base was not checked".into());
        }
        if unknown_new {
            notes.push(
                "delta made from change tracking records no NEW digest: each record was verified, the whole result could not be"
                    .into(),
            );
        }
        verified = !unknown_new;
        new_digest = Some(written.digest);
    } else {
        notes.push(format!(
            "{} deltas carry no checksums: the result could not be verified",
            kind.name()
        ));
    }
    debug_assert_eq!(written.bytes, new_size);
    written.output.commit()?;
    Ok(ApplySummary {
        format: kind,
        new_size,
        extents: queue.count,
        changed_bytes: queue.changed,
        new_digest,
        check_base: if verified {
            CheckBase::Full
        } else {
            CheckBase::None
        },
        verified,
        notes,
    })
}

/// A second handle on the base for the positioned reads of copy records
/// (without O_DIRECT, whose alignment rules they would break).
///
/// # Errors
/// [`DeltaError::Size`] when the base is a pipe; opening errors.
pub(super) fn positioned_base(base: &Input) -> Result<Input, DeltaError> {
    if base.kind() == InputKind::Stream {
        return Err(DeltaError::Size {
            path: base.path().into(),
            detail: "the delta holds copy records, which read OLD at any offset: give OLD as a file or block device, not a pipe".into(),
        });
    }
    if base.is_direct() {
        return Ok(Input::open(base.path(), &InputOptions::default())?);
    }
    Ok(base.try_clone()?)
}

/// The bytes a copy record copies, read from OLD and verified.
///
/// # Errors
/// I/O errors; the record's checksum error when OLD holds other bytes
/// there (or is too short).
pub(super) fn read_copy(base: &Input, raw: &RawRecord) -> Result<Vec<u8>, DeltaError> {
    let range = raw.reference_range();
    let mut bytes = vec![0u8; raw.length as usize];
    let readable = base
        .size()
        .unwrap_or(u64::MAX)
        .saturating_sub(range.start)
        .min(raw.length) as usize;
    if readable > 0 {
        base.read_exact_at(&mut bytes[..readable], range.start)?;
    }
    Ok(raw.decode_against(&bytes)?)
}

pub(super) fn check_sizes(trailer: &Trailer, old_size: u64, base: &Path) -> Result<(), DeltaError> {
    check_base_size(trailer.old_size, old_size, base)
}

/// The base must be as long as the OLD the delta was made from.
pub(super) fn check_base_size(expected: u64, actual: u64, base: &Path) -> Result<(), DeltaError> {
    if expected != actual {
        return Err(DeltaError::BaseMismatch {
            path: base.into(),
            detail: format!("delta was made from a {expected}-byte OLD, base has {actual} bytes"),
        });
    }
    Ok(())
}

/// OLD's chunks for an overlay loop, then chunks of zeros past its end.
/// Buffers the writer is done with go back to OLD's reader while it reads,
/// and are kept for the zero chunks after.
pub(super) struct OldChunks<'a> {
    pub(super) reader: &'a mut ChunkReader,
    /// OLD has ended (its last chunk was short, or there was none).
    pub(super) done: bool,
    spare: Vec<AlignedBuf>,
}

impl<'a> OldChunks<'a> {
    pub(super) fn new(reader: &'a mut ChunkReader) -> Self {
        OldChunks {
            reader,
            done: false,
            spare: Vec::new(),
        }
    }

    /// Takes back the buffers the writer returned.
    pub(super) fn reclaim(&mut self, recycled: &Receiver<AlignedBuf>) {
        while let Ok(buf) = recycled.try_recv() {
            if self.done {
                self.spare.push(buf);
            } else {
                self.reader.recycle_buf(buf);
            }
        }
    }

    /// OLD's next chunk; `None` once OLD has ended.
    pub(super) fn next(&mut self) -> Result<Option<Chunk>, DeltaError> {
        if self.done {
            return Ok(None);
        }
        let chunk = self.reader.next_chunk().transpose()?;
        if chunk.as_ref().is_none_or(|c| c.len < DEFAULT_CHUNK_SIZE) {
            self.done = true;
        }
        Ok(chunk)
    }

    /// A chunk of `len` zeros at `pos` (past OLD's end).
    pub(super) fn zeros(&mut self, pos: u64, len: usize) -> Chunk {
        let buf = self
            .spare
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(DEFAULT_CHUNK_SIZE));
        Chunk::zeros(pos, len, buf)
    }
}

/// The overlay loop: OLD chunks (or zeros past OLD's end), cut to NEW's
/// size, with the extents written over them, sent to the writer in order.
/// Returns NEW's size.
fn produce_new(
    old: &mut ChunkReader,
    queue: &mut ExtentQueue,
    chunks: Sender<Chunk>,
    recycled: &Receiver<AlignedBuf>,
) -> Result<u64, DeltaError> {
    let chunk_size = DEFAULT_CHUNK_SIZE as u64;
    let mut pos = 0u64;
    let mut old_size = 0u64;
    let mut source = OldChunks::new(old);
    loop {
        source.reclaim(recycled);
        let was_done = source.done;
        let old_chunk = source.next()?;
        let old_len = old_chunk.as_ref().map_or(0, |c| c.len as u64);
        if !was_done && source.done {
            old_size = pos + old_len;
        }
        let old_done = source.done;
        let chunk_end = pos + chunk_size;
        queue.fill_until(chunk_end)?;
        let exact = queue.header_new_size.or_else(|| {
            queue
                .end
                .as_deref()
                .and_then(|s| s.new_size(old_done.then_some(old_size)))
        });
        let len = match exact {
            Some(n) => n.saturating_sub(pos).min(chunk_size),
            None if queue.reaches(chunk_end) => chunk_size,
            None if queue.base_relative && old_len == chunk_size => chunk_size,
            None => return Err(DeltaError::Panic("apply (NEW size undetermined)")),
        };
        if len == 0 {
            if let Some(c) = old_chunk {
                source.reader.recycle(c);
            }
            queue.expect_no_more()?;
            return Ok(pos);
        }
        let mut chunk = match old_chunk {
            Some(mut c) => {
                c.set_len(len as usize);
                c
            }
            None => source.zeros(pos, len as usize),
        };
        queue.overlay(&mut chunk)?;
        pos += len;
        if chunks.send(chunk).is_err() {
            return Err(DeltaError::Panic("writer (stopped)"));
        }
        if len < chunk_size {
            queue.expect_no_more()?;
            return Ok(pos);
        }
    }
}

/// A delta as a seekable file: the delta itself when it is a regular file,
/// else a spooled temporary copy.
pub(super) fn seekable_delta(delta: Input) -> Result<(PathBuf, File), DeltaError> {
    let path = delta.path().to_path_buf();
    if delta.kind() == InputKind::File {
        return Ok((path, delta.into_file()?));
    }
    let mut spool = tempfile::tempfile().map_err(|source| IoError::Op {
        op: "create spool file",
        path: std::env::temp_dir(),
        source,
    })?;
    let mut file = delta.into_file()?;
    std::io::copy(&mut file, &mut spool).map_err(|source| IoError::Read {
        path: path.clone(),
        offset: 0,
        source,
    })?;
    Ok((path, spool))
}

/// The delta read again from its start, as the kind found on the first pass.
fn reopen(
    path: &Path,
    file: &mut File,
    kind: DeltaKind,
    options: &ApplyOptions,
) -> Result<DeltaSource, DeltaError> {
    DeltaSource::open(path, rewind(path, file)?, Some(kind), options.block_size)
}

pub(super) fn rewind(path: &Path, file: &mut File) -> Result<DeltaStream, DeltaError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|source| IoError::Op {
            op: "seek",
            path: path.into(),
            source,
        })?;
    let clone = file.try_clone().map_err(|source| IoError::Op {
        op: "dup",
        path: path.into(),
        source,
    })?;
    Ok(Box::new(clone))
}

/// In-place mode: changes `target` (holding OLD) into NEW, writing only the
/// changed extents. The delta is verified completely and the base checked
/// before the first write.
///
/// # Errors
/// Format errors and [`DeltaError::BaseMismatch`] before any write; I/O
/// errors; [`DeltaError::ResultMismatch`] when `verify` finds a difference.
pub fn apply_in_place(
    delta: Input,
    target: &Path,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    let (delta_path, delta_file) = seekable_delta(delta)?;
    apply_in_place_file(&delta_path, delta_file, target, options)
}

/// [`apply_in_place`] of a delta in a seekable file.
pub(super) fn apply_in_place_file(
    delta_path: &Path,
    mut delta_file: File,
    target: &Path,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    let delta_path = delta_path.to_path_buf();

    // Pass 1: verify the whole delta.
    let mut source = DeltaSource::open(
        &delta_path,
        rewind(&delta_path, &mut delta_file)?,
        options.format,
        options.block_size,
    )?;
    let kind = source.kind();
    let mut extents = 0u64;
    let mut changed = 0u64;
    let mut max_end = 0u64;
    let mut referenced = 0u64;
    while let Some(e) = source.next_extent()? {
        extents += 1;
        changed += e.len();
        max_end = max_end.max(e.end());
        referenced += u64::from(matches!(e.data, ExtentData::Referenced(_)));
    }
    let trailer = source.trailer().cloned();
    let mut notes = Vec::new();

    let output = Output::open_in_place(target)?;
    let target_size = output.size().unwrap_or(0);
    let old_size = trailer.as_ref().map_or(target_size, |t| t.old_size);
    let new_size = match &trailer {
        Some(t) => t.new_size,
        None => source
            .new_size(Some(target_size))
            .unwrap_or(target_size.max(max_end)),
    };
    let check = match (options.check_base, &trailer) {
        (Some(c), _) => c,
        (None, Some(t)) if t.old_digest.is_some() || !t.samples.is_empty() => CheckBase::Sample,
        (None, _) => CheckBase::None,
    };
    match output.kind() {
        OutputKind::BlockDevice => output.require_capacity(new_size.max(old_size))?,
        _ => {
            if trailer.is_some() && target_size != old_size && check != CheckBase::None {
                return Err(DeltaError::BaseMismatch {
                    path: target.into(),
                    detail: format!(
                        "delta was made from a {old_size}-byte OLD, target has {target_size} bytes"
                    ),
                });
            }
        }
    }
    match (&trailer, check) {
        (_, CheckBase::None) => {
            if trailer.as_ref().is_some_and(|t| t.old_digest.is_none())
                || options.check_base.is_none()
            {
                notes.push("the base was not checked".into());
            }
        }
        (None, mode) => {
            return Err(DeltaError::CheckUnsupported {
                mode: mode.name(),
                reason: format!("{} deltas carry no base hashes", kind.name()),
            })
        }
        (Some(t), CheckBase::Sample) if !t.samples.is_empty() => {
            check_samples(&output, t, source.header().map_or(4096, |h| h.block_size))?;
        }
        (Some(t), CheckBase::Sample) => {
            // No block was left unchanged to sample: check the whole base
            // rather than nothing.
            let Some(expected) = t.old_digest else {
                return Err(DeltaError::CheckUnsupported {
                    mode: "sample",
                    reason: "the delta has no base samples and no OLD digest".into(),
                });
            };
            notes.push("the delta has no base samples: checked the whole base instead".into());
            let actual = digest_of(target, old_size, None)?;
            if actual != expected {
                return Err(DeltaError::BaseMismatch {
                    path: target.into(),
                    detail: format!("OLD digest is {expected}, target has {actual}"),
                });
            }
        }
        (Some(t), CheckBase::Full) => {
            let Some(expected) = t.old_digest else {
                return Err(DeltaError::CheckUnsupported {
                    mode: "full",
                    reason: "the delta was made from change tracking and has no OLD digest".into(),
                });
            };
            let actual = digest_of(target, old_size, None)?;
            if actual != expected {
                return Err(DeltaError::BaseMismatch {
                    path: target.into(),
                    detail: format!("OLD digest is {expected}, target has {actual}"),
                });
            }
        }
    }

    // Records compressed against OLD must decode against the target
    // before anything is written; one already applied (a rerun after an
    // interrupted apply) is recognized by its checksum, one whose write was
    // cut short is taken from the journal of that apply.
    let journal = journal::journal_path(target, output.kind() == OutputKind::File);
    let records_digest = trailer
        .as_ref()
        .map(|t| t.records_digest)
        .unwrap_or_default();
    // Copy records read OLD anywhere, and earlier records may overwrite
    // their sources: their bytes are read now, into a spill beside the
    // journal, which a rerun reuses.
    let spill_path = journal::spill_path(&journal);
    let (recovered, spill) = if referenced > 0 {
        let recovered = journal::Recovered::load(&journal, &records_digest);
        let earlier = journal::CopySpill::load(&spill_path, &records_digest);
        let mut spill = None;
        let mut source = reopen(&delta_path, &mut delta_file, kind, options)?;
        while let Some(e) = source.next_extent()? {
            let ExtentData::Referenced(raw) = &e.data else {
                continue;
            };
            if raw.copy_source().is_none() {
                decode_in_place(&output, raw, old_size, &recovered)?;
                continue;
            }
            let Some(bytes) =
                copy_source_in_place(&output, raw, old_size, &recovered, earlier.as_ref())?
            else {
                continue;
            };
            if spill.is_none() {
                spill = Some(journal::SpillWriter::create(
                    spill_path.clone(),
                    &records_digest,
                )?);
            }
            if let Some(w) = spill.as_mut() {
                w.push(raw.index, &bytes)?;
            }
        }
        drop(earlier);
        let spill = match spill {
            Some(w) => Some(w.finish(&records_digest)?),
            None => None,
        };
        (recovered, spill)
    } else {
        (journal::Recovered::default(), None)
    };
    let mut batch = journal::Batch::new(journal, records_digest);

    // Pass 2: write. Every check has passed.
    let mut source = reopen(&delta_path, &mut delta_file, kind, options)?;
    if output.kind() == OutputKind::File {
        output.set_len(new_size)?;
    } else if new_size > old_size {
        output.zero_range(old_size, new_size - old_size)?;
    }
    while let Some(e) = source.next_extent()? {
        match &e.data {
            ExtentData::Bytes(b) => output.write_at(e.offset, b)?,
            // Discarded where the device supports it, so thin volumes
            // unmap instead of filling the pool with zeros.
            ExtentData::Zeros(n) => output.discard_range(e.offset, *n)?,
            ExtentData::Referenced(raw) => {
                let bytes = if raw.copy_source().is_some() {
                    copy_from_spill(&output, raw, spill.as_ref())?
                } else {
                    decode_in_place(&output, raw, old_size, &recovered)?
                };
                if let Some(bytes) = bytes {
                    if batch.push(raw, bytes) {
                        batch.flush(&output)?;
                    }
                }
            }
        }
        if let Some(p) = &options.progress {
            p.fetch_add(e.len(), Ordering::Relaxed);
        }
    }
    batch.flush(&output)?;
    output.sync()?;
    batch.finish();
    if spill.is_some() {
        drop(spill);
        let _ = std::fs::remove_file(&spill_path);
    }
    let mut verified = false;
    if options.verify {
        match &trailer {
            Some(t) if t.new_digest == Digest::NONE && t.old_digest.is_none() => notes.push(
                "delta made from change tracking records no NEW digest: --verify had nothing to compare"
                    .into(),
            ),
            Some(t) => {
                let actual = digest_of(target, new_size, None)?;
                if actual != t.new_digest {
                    return Err(DeltaError::ResultMismatch {
                        path: target.into(),
                        expected: t.new_digest,
                        actual,
                    });
                }
                verified = true;
            }
            None => notes.push(format!(
                "{} deltas carry no NEW digest: --verify had nothing to compare",
                kind.name()
            )),
        }
    }
    Ok(ApplySummary {
        format: kind,
        new_size,
        extents,
        changed_bytes: changed,
        new_digest: trailer.as_ref().map(|t| t.new_digest),
        check_base: check,
        verified,
        notes,
    })
}

/// Decodes a reference-compressed record against the target's bytes at its
/// range (OLD's, zero past OLD's end), or takes it from the journal of an
/// interrupted apply. `None` when the target already holds the record's
/// result.
fn decode_in_place(
    output: &Output,
    raw: &RawRecord,
    old_size: u64,
    recovered: &journal::Recovered,
) -> Result<Option<Vec<u8>>, DeltaError> {
    let current = target_bytes(output, raw.offset, raw.length, old_size)?;
    if raw.holds(&current) {
        return Ok(None);
    }
    if let Ok(bytes) = raw.decode_against(&current) {
        return Ok(Some(bytes));
    }
    match recovered.bytes_of(raw) {
        Some(bytes) => Ok(Some(bytes.to_vec())),
        None => Err(DeltaError::BaseMismatch {
            path: output.path().into(),
            detail: format!(
                "bytes {}..{} hold neither OLD's bytes for delta record {} nor its result (a damaged record, or another base)",
                raw.offset,
                raw.offset + raw.length,
                raw.index
            ),
        }),
    }
}

/// The source bytes of copy record `raw` before the target is changed:
/// from the spill of an interrupted apply, from the target (OLD's bytes at
/// the source), or from the journal. `None` when the target already holds
/// the record's result (a rerun).
fn copy_source_in_place(
    output: &Output,
    raw: &RawRecord,
    old_size: u64,
    recovered: &journal::Recovered,
    earlier: Option<&journal::CopySpill>,
) -> Result<Option<Vec<u8>>, DeltaError> {
    if let Some(bytes) = earlier.and_then(|s| s.bytes_of(raw)) {
        return Ok(Some(bytes));
    }
    let source = raw.reference_range();
    let bytes = target_bytes(output, source.start, raw.length, old_size)?;
    if raw.holds(&bytes) {
        return Ok(Some(bytes));
    }
    if raw.holds(&target_bytes(output, raw.offset, raw.length, old_size)?) {
        return Ok(None);
    }
    match recovered.bytes_of(raw) {
        Some(bytes) => Ok(Some(bytes.to_vec())),
        None => Err(DeltaError::BaseMismatch {
            path: output.path().into(),
            detail: format!(
                "bytes {}..{} do not hold the OLD bytes that delta record {} copies (a damaged record, or another base)",
                source.start, source.end, raw.index
            ),
        }),
    }
}

/// The bytes to write for copy record `raw`: from the spill made before
/// the first write; `None` when the target already holds them.
fn copy_from_spill(
    output: &Output,
    raw: &RawRecord,
    spill: Option<&journal::CopySpill>,
) -> Result<Option<Vec<u8>>, DeltaError> {
    if let Some(bytes) = spill.and_then(|s| s.bytes_of(raw)) {
        return Ok(Some(bytes));
    }
    let size = output.size().unwrap_or(u64::MAX);
    if raw.holds(&target_bytes(output, raw.offset, raw.length, size)?) {
        return Ok(None);
    }
    Err(DeltaError::Panic(
        "apply in place (copy record missing from the spill)",
    ))
}

/// The target's `length` bytes at `offset`, zero past `size`.
fn target_bytes(
    output: &Output,
    offset: u64,
    length: u64,
    size: u64,
) -> Result<Vec<u8>, DeltaError> {
    let mut bytes = vec![0u8; length as usize];
    let readable = size.saturating_sub(offset).min(length) as usize;
    read_exact_at(output.file(), &mut bytes[..readable], offset, output.path())?;
    Ok(bytes)
}

fn check_samples(output: &Output, trailer: &Trailer, block_size: u32) -> Result<(), DeltaError> {
    let bs = u64::from(block_size);
    let mut buf = vec![0u8; block_size as usize];
    for sample in &trailer.samples {
        let offset = sample.block.saturating_mul(bs);
        let len = bs.min(trailer.old_size.saturating_sub(offset)) as usize;
        let data = &mut buf[..len];
        read_exact_at(output.file(), data, offset, output.path())?;
        if Digest::of(data) != sample.digest {
            return Err(DeltaError::BaseMismatch {
                path: output.path().into(),
                detail: format!(
                    "sampled OLD block {} (bytes {}..{}) differs",
                    sample.block,
                    offset,
                    offset + len as u64
                ),
            });
        }
    }
    Ok(())
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<(), IoError> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|source| IoError::Read {
            path: path.into(),
            offset,
            source,
        })
}

/// The image digest of the first `len` bytes of `path`.
///
/// # Errors
/// I/O errors, or [`DeltaError::Size`] when `path` is shorter than `len`.
pub fn digest_of(
    path: &Path,
    len: u64,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Digest, DeltaError> {
    let input = Input::open(path, &InputOptions::default())?;
    if input.size().is_some_and(|s| s < len) {
        return Err(DeltaError::Size {
            path: path.into(),
            detail: format!(
                "has {} bytes, expected at least {len}",
                input.size().unwrap_or(0)
            ),
        });
    }
    let reader = ChunkReader::spawn(
        input,
        ReaderOptions {
            limit: Some(len),
            progress,
            ..ReaderOptions::default()
        },
    );
    let summary = reader.finish()?;
    summary.digest.ok_or(DeltaError::Panic("digest reader"))
}
