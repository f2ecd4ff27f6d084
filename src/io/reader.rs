//! The read-ahead thread: fills large recycled buffers from a source, in
//! order, and optionally computes the source's image digest on the way, so
//! hashing runs on the reader's core while the consumer compares or writes.
//!
//! Memory is bounded by construction: the reader owns `depth` buffers and
//! blocks until the consumer hands one back with [`ChunkReader::recycle`].
//! Holes of sparse regular files (found with `SEEK_DATA`) are never read:
//! a chunk that lies entirely inside a hole arrives with `hole == true`.

mod nbd;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{sparse, Input, InputKind, IoError};
use crate::digest::{hash_segment, zero_segment, Digest, ImageHasher, SEGMENT_SIZE};
use crate::pipeline::Cancel;

/// Default chunk size: large enough for sequential throughput, a multiple
/// of every block size up to 4 MiB and of the digest segment.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;
/// Default number of buffers a reader owns.
pub const DEFAULT_DEPTH: usize = 4;

const ALIGN: usize = 4096;

/// A buffer whose usable part starts at a 4 KiB boundary (for `O_DIRECT`).
#[derive(Debug)]
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    capacity: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `capacity` usable bytes.
    pub fn new(capacity: usize) -> Self {
        let vec = vec![0u8; capacity + ALIGN];
        let start = vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf {
            vec,
            start,
            capacity,
        }
    }

    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The usable bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.capacity]
    }

    /// The usable bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.capacity]
    }
}

/// One piece of a source, at a chunk-aligned offset.
#[derive(Debug)]
pub struct Chunk {
    /// Byte offset in the source.
    pub offset: u64,
    /// Valid bytes (less than the chunk size only at the end).
    pub len: usize,
    /// The whole chunk is zeros and its buffer was not filled.
    pub hole: bool,
    buf: AlignedBuf,
    /// Digest-segment hashes of the chunk's bytes, when the reader computed
    /// them; `None` for a segment changed since.
    segments: Vec<Option<blake3::Hash>>,
}

impl Chunk {
    /// A chunk of zeros (a hole) with a fresh buffer.
    pub fn zeros(offset: u64, len: usize, buf: AlignedBuf) -> Chunk {
        Chunk {
            offset,
            len,
            hole: true,
            buf,
            segments: Vec::new(),
        }
    }

    /// The known hash of digest segment `index` (segments are counted from
    /// the chunk's start, which is segment-aligned).
    pub fn segment_hash(&self, index: usize) -> Option<&blake3::Hash> {
        self.segments.get(index).and_then(Option::as_ref)
    }

    fn invalidate(&mut self, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        let first = range.start / SEGMENT_SIZE;
        let last = (range.end - 1) / SEGMENT_SIZE;
        for seg in self.segments.iter_mut().skip(first).take(last + 1 - first) {
            *seg = None;
        }
    }

    /// A mutable range of the bytes (a hole becomes real zeros first); only
    /// the digest segments it touches lose their known hashes.
    pub fn range_mut(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        self.materialize();
        self.invalidate(range.clone());
        &mut self.buf.as_mut_slice()[..self.len][range]
    }

    /// The bytes. Call [`Chunk::materialize`] first when `hole` is set.
    pub fn data(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }

    /// The bytes, mutable; turns a hole into real zeros first.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.range_mut(0..self.len)
    }

    /// Fills a hole chunk's buffer with zeros so [`Chunk::data`] is valid.
    pub fn materialize(&mut self) {
        if self.hole {
            self.buf.as_mut_slice()[..self.len].fill(0);
            self.hole = false;
        }
    }

    /// Changes the valid length (to truncate, or to grow with zeros up to
    /// the buffer capacity).
    pub fn set_len(&mut self, len: usize) {
        let len = len.min(self.buf.capacity());
        if len == self.len {
            return;
        }
        if len > self.len && !self.hole {
            self.buf.as_mut_slice()[self.len..len].fill(0);
        }
        let changed_from = self.len.min(len);
        self.invalidate(changed_from..self.len.max(len));
        self.segments.resize(len.div_ceil(SEGMENT_SIZE), None);
        self.len = len;
    }

    /// The offset one past the last valid byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }

    /// Takes the buffer back for recycling.
    pub fn into_buf(self) -> AlignedBuf {
        self.buf
    }
}

/// How a [`ChunkReader`] reads.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// Bytes per chunk; a multiple of 4 KiB.
    pub chunk_size: usize,
    /// Buffers in flight.
    pub depth: usize,
    /// Compute the image digest of everything read.
    pub digest: bool,
    /// Read at most this many bytes (counted from offset 0).
    pub limit: Option<u64>,
    /// Start reading here (files and devices; a multiple of the chunk size).
    pub start: u64,
    /// Added to as bytes are read (for progress bars).
    pub progress: Option<Arc<AtomicU64>>,
    /// The pipeline's stop signal: when it fires, the reader stops waiting
    /// for buffers and ends.
    pub cancel: Option<Cancel>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            depth: DEFAULT_DEPTH,
            digest: true,
            limit: None,
            start: 0,
            progress: None,
            cancel: None,
        }
    }
}

/// What a finished reader saw.
#[derive(Debug, Clone, Copy)]
pub struct ReadSummary {
    /// Bytes in the source (up to the limit).
    pub bytes: u64,
    /// Its image digest, when requested.
    pub digest: Option<Digest>,
}

/// Returns buffers to a [`ChunkReader`] from any thread.
#[derive(Debug, Clone)]
pub struct Recycler(Sender<AlignedBuf>);

impl Recycler {
    /// Hands a chunk's buffer back.
    pub fn recycle(&self, chunk: Chunk) {
        let _ = self.0.send(chunk.into_buf());
    }
}

/// A source being read ahead on its own thread.
///
/// The reader waits for recycled buffers; a consumer that fails may never
/// return them. So [`ChunkReader::abandon`], and dropping the reader, fire
/// the reader's own stop signal before joining the thread (a child of
/// [`ReaderOptions::cancel`], so the pipeline's signal stops it as well).
#[derive(Debug)]
pub struct ChunkReader {
    chunks: Receiver<Result<Chunk, IoError>>,
    recycle: Sender<AlignedBuf>,
    thread: Option<JoinHandle<Result<ReadSummary, IoError>>>,
    path: PathBuf,
    cancel: Cancel,
}

impl ChunkReader {
    /// Starts reading `input` on a new thread.
    pub fn spawn(input: Input, options: ReaderOptions) -> ChunkReader {
        let cancel = options
            .cancel
            .as_ref()
            .map_or_else(Cancel::new, Cancel::child);
        let depth = options.depth.max(2);
        let (chunk_tx, chunks) = bounded(depth);
        let (recycle, free) = bounded(depth);
        for _ in 0..depth {
            // Cannot fail: the channel holds exactly `depth` buffers.
            let _ = recycle.send(AlignedBuf::new(options.chunk_size));
        }
        let path = input.path().to_path_buf();
        let thread = std::thread::Builder::new()
            .name(format!("read {}", path.display()))
            .spawn({
                let cancel = cancel.clone();
                move || read_loop(input, options, chunk_tx, free, &cancel)
            });
        match thread {
            Ok(handle) => ChunkReader {
                chunks,
                recycle,
                thread: Some(handle),
                path,
                cancel,
            },
            Err(source) => {
                let (tx, chunks) = bounded(1);
                let _ = tx.send(Err(IoError::Op {
                    op: "spawn reader thread",
                    path: path.clone(),
                    source,
                }));
                ChunkReader {
                    chunks,
                    recycle,
                    thread: None,
                    path,
                    cancel,
                }
            }
        }
    }

    /// The next chunk in order, `None` at the end of the source; an error
    /// when the reader was stopped before the end.
    pub fn next_chunk(&mut self) -> Option<Result<Chunk, IoError>> {
        match self.chunks.recv() {
            Ok(chunk) => Some(chunk),
            // A stopped reader is not the end of the source.
            Err(_) if self.cancel.is_cancelled() => Some(Err(stopped(&self.path))),
            Err(_) => None,
        }
    }

    /// Returns a chunk's buffer to the reader.
    pub fn recycle(&self, chunk: Chunk) {
        let _ = self.recycle.send(chunk.into_buf());
    }

    /// Returns a bare buffer to the reader.
    pub fn recycle_buf(&self, buf: AlignedBuf) {
        let _ = self.recycle.send(buf);
    }

    /// A handle other threads use to return buffers to the reader.
    pub fn recycler(&self) -> Recycler {
        Recycler(self.recycle.clone())
    }

    /// The source path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the rest of the source (still digesting it) and returns what
    /// the reader saw.
    ///
    /// # Errors
    /// The first read error.
    pub fn finish(mut self) -> Result<ReadSummary, IoError> {
        while let Some(chunk) = self.next_chunk() {
            let chunk = chunk?;
            self.recycle(chunk);
        }
        self.join()
    }

    /// Stops reading early and waits for the thread.
    pub fn abandon(mut self) {
        self.stop();
    }

    /// Releases everything the thread may wait on, then joins it.
    fn stop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.cancel.cancel();
        let (_, empty) = bounded(0);
        drop(std::mem::replace(&mut self.chunks, empty));
        let _ = self.join();
    }

    fn join(&mut self) -> Result<ReadSummary, IoError> {
        match self.thread.take() {
            Some(handle) => match handle.join() {
                Ok(result) => result,
                Err(_) => Err(IoError::Op {
                    op: "reader thread",
                    path: self.path.clone(),
                    source: std::io::Error::other("panicked"),
                }),
            },
            None => Err(IoError::Op {
                op: "reader thread",
                path: self.path.clone(),
                source: std::io::Error::other("not running"),
            }),
        }
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Feeds a chunk (bytes, or `len` zeros when `data` is `None`) to the
/// image digest segment by segment, keeping each segment's hash for reuse.
fn digest_segments(
    hasher: &mut ImageHasher,
    data: Option<&[u8]>,
    len: usize,
    offset: u64,
    segments: &mut Vec<Option<blake3::Hash>>,
) {
    if !offset.is_multiple_of(SEGMENT_SIZE as u64) {
        match data {
            Some(d) => hasher.update(d),
            None => hasher.update_zeros(len as u64),
        }
        return;
    }
    let mut at = 0;
    while at < len {
        let end = (at + SEGMENT_SIZE).min(len);
        let hash = match data {
            Some(d) => hash_segment(&d[at..end]),
            None => zero_segment(end - at),
        };
        if !hasher.push_segment(&hash, end - at) {
            match data {
                Some(d) => hasher.update(&d[at..end]),
                None => hasher.update_zeros((end - at) as u64),
            }
        }
        segments.push(Some(hash));
        at = end;
    }
}

/// The reader was stopped (its consumer left or the pipeline was
/// cancelled) before the end of the source.
fn stopped(path: &std::path::Path) -> IoError {
    IoError::Stopped {
        path: path.to_path_buf(),
    }
}

fn fill_stream(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn fill_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads `buf.len()` bytes at `offset` of a regular file whose size covers
/// them, reading only its data ranges and zero-filling its holes in memory.
/// Reading a hole through the kernel costs a page allocation, a zeroing and
/// a copy per page; that was half of the reader's time on VM-like images.
fn fill_sparse_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let end = offset + buf.len() as u64;
    let mut pos = offset;
    while pos < end {
        let data = sparse::next_data(file, pos)?.unwrap_or(end).min(end);
        if data > pos {
            buf[(pos - offset) as usize..(data - offset) as usize].fill(0);
            pos = data;
            continue;
        }
        let hole = sparse::next_hole(file, pos)?.clamp(pos + 1, end);
        let range = (pos - offset) as usize..(hole - offset) as usize;
        let want = range.len();
        let got = fill_at(file, &mut buf[range], pos)?;
        if got < want {
            return Ok((pos - offset) as usize + got);
        }
        pos = hole;
    }
    Ok(buf.len())
}

fn read_loop(
    input: Input,
    options: ReaderOptions,
    chunks: Sender<Result<Chunk, IoError>>,
    free: Receiver<AlignedBuf>,
    cancel: &Cancel,
) -> Result<ReadSummary, IoError> {
    let path = input.path().to_path_buf();
    if let Some(source) = input.nbd().cloned() {
        drop(input);
        return nbd::read_loop(&source, &path, options, chunks, free, cancel);
    }
    let kind = input.kind();
    let end = match (input.size(), options.limit) {
        (Some(size), Some(limit)) => Some(size.min(limit)),
        (size, limit) => size.or(limit),
    };
    let size_known = input.size().is_some();
    // O_DIRECT reads need lengths in whole sectors; the tail is read rounded
    // up and cut back.
    let direct_align = if input.is_direct() {
        input.sector_size().max(512) as usize
    } else {
        1
    };
    let mut file = input.into_file()?;
    let mut hasher = options.digest.then(ImageHasher::new);
    let mut offset = if kind == InputKind::Stream {
        0
    } else {
        options.start
    };
    // Start of the next data region at or after `offset`, for sparse files.
    let mut data_from = 0u64;
    let result = loop {
        let mut buf = match cancel.recv(&free) {
            Ok(buf) => buf,
            Err(_) => break Err(stopped(&path)),
        };
        let want = match end {
            Some(end) => (end - offset).min(buf.capacity() as u64) as usize,
            None => buf.capacity(),
        };
        if want == 0 {
            break Ok(());
        }
        if kind == InputKind::File && offset >= data_from {
            match sparse::next_data(&file, offset) {
                Ok(next) => data_from = next.unwrap_or(u64::MAX),
                Err(source) => {
                    let err = IoError::Read {
                        path: path.clone(),
                        offset,
                        source,
                    };
                    let _ = cancel.send(&chunks, Err(err));
                    break Ok(());
                }
            }
        }
        let chunk = if kind == InputKind::File && data_from >= offset + want as u64 {
            let mut segments = Vec::new();
            if let Some(h) = hasher.as_mut() {
                digest_segments(h, None, want, offset, &mut segments);
            }
            Chunk {
                offset,
                len: want,
                hole: true,
                buf,
                segments,
            }
        } else {
            let read_len = want.next_multiple_of(direct_align).min(buf.capacity());
            let filled = match kind {
                InputKind::Stream => fill_stream(&mut file, &mut buf.as_mut_slice()[..want]),
                InputKind::File if direct_align == 1 => {
                    fill_sparse_at(&file, &mut buf.as_mut_slice()[..want], offset)
                }
                _ => {
                    fill_at(&file, &mut buf.as_mut_slice()[..read_len], offset).map(|n| n.min(want))
                }
            };
            let filled = match filled {
                Ok(n) => n,
                Err(source) => {
                    let err = IoError::Read {
                        path: path.clone(),
                        offset,
                        source,
                    };
                    let _ = cancel.send(&chunks, Err(err));
                    break Ok(());
                }
            };
            if filled < want && size_known {
                let err = IoError::Read {
                    path: path.clone(),
                    offset: offset + filled as u64,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "source shrank while being read",
                    ),
                };
                let _ = cancel.send(&chunks, Err(err));
                break Ok(());
            }
            if filled == 0 {
                break Ok(());
            }
            let mut segments = Vec::new();
            if let Some(h) = hasher.as_mut() {
                digest_segments(
                    h,
                    Some(&buf.as_slice()[..filled]),
                    filled,
                    offset,
                    &mut segments,
                );
            }
            Chunk {
                offset,
                len: filled,
                hole: false,
                buf,
                segments,
            }
        };
        let len = chunk.len as u64;
        if let Some(p) = &options.progress {
            p.fetch_add(len, Ordering::Relaxed);
        }
        offset += len;
        if cancel.send(&chunks, Ok(chunk)).is_err() {
            break Err(stopped(&path));
        }
        if len < want as u64 {
            break Ok(());
        }
    };
    result?;
    Ok(ReadSummary {
        bytes: offset
            - if kind == InputKind::Stream {
                0
            } else {
                options.start
            },
        digest: hasher.map(ImageHasher::finalize),
    })
}
