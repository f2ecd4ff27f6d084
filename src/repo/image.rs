//! Random access to one snapshot: the image a restore would write, read
//! at any offset without restoring it (the NBD export and the FUSE mount
//! are built on it).
//!
//! ```text
//!  read_at / read_segments ──> chunk cache (LRU, bounded in bytes,    ──> fetch_chunks (restore's:
//!  (any thread)                 decompressed, verified by id;              range read, decompress,
//!       │                       one fetch per chunk at a time)             check the id)
//!       └─ sequential? ──> read-ahead workers (one per core) fetch the next chunks
//! ```
//!
//! Everything goes through the repository's backend and index, so every
//! backend (local directory, S3, ssh) serves. All-zero chunks are known
//! from the snapshot's list without fetching and reported as holes by
//! [`SnapshotImage::extents`]. A chunk that fails verification is an
//! error for the ranges that cover it, never wrong bytes; it is not
//! cached, so a repaired repository serves it on the next read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::index::Index;
use super::restore::fetch_chunks;
use super::{ChunkDecoder, RepoError, Repository};
use crate::format::snapshot::Snapshot;
use crate::id::{ChunkId, IdBuildHasher};

/// Errors of snapshot images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A read or query outside the image.
    #[error("range {offset}+{len} lies beyond the image's end ({size} bytes)")]
    PastEnd { offset: u64, len: u64, size: u64 },
    /// A chunk could not be read or verified.
    #[error("chunk {chunk} at image offset {offset} cannot be read")]
    Chunk {
        chunk: ChunkId,
        offset: u64,
        #[source]
        source: Box<RepoError>,
    },
    /// Opening the image failed (index, snapshot list).
    #[error(transparent)]
    Repo(Box<RepoError>),
}

impl From<RepoError> for ImageError {
    fn from(e: RepoError) -> Self {
        ImageError::Repo(Box::new(e))
    }
}

/// How a snapshot image is served.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Bytes of decompressed chunks kept (at least a few chunks are kept
    /// whatever this says).
    pub cache_size: u64,
    /// Chunks fetched ahead of a sequential reader (0: none).
    pub read_ahead: usize,
    /// Read-ahead threads; the number of cores when 0.
    pub threads: usize,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            cache_size: 256 << 20,
            read_ahead: 16,
            threads: 0,
        }
    }
}

/// A piece of a read: bytes of a cached chunk, or zeros.
#[derive(Debug, Clone)]
pub enum Segment {
    /// `len` bytes of `chunk` from `start`.
    Data {
        chunk: Arc<Vec<u8>>,
        start: usize,
        len: usize,
    },
    /// `len` zero bytes.
    Zero(usize),
}

impl Segment {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Segment::Data { len, .. } | Segment::Zero(len) => *len,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes, or `None` for zeros.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Segment::Data { chunk, start, len } => Some(&chunk[*start..*start + *len]),
            Segment::Zero(_) => None,
        }
    }

    /// Copies it into the start of `out`.
    pub fn copy_to(&self, out: &mut [u8]) {
        match self.data() {
            Some(d) => out[..d.len()].copy_from_slice(d),
            None => out[..self.len()].fill(0),
        }
    }
}

/// A run of the image that is data or reads as zeros (a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// An all-zero chunk: stored as nothing, reads as zeros.
    pub zero: bool,
}

/// What the cache holds for one chunk id.
enum Slot {
    /// Some thread is fetching it; others wait on the condition variable.
    Loading,
    Ready {
        data: Arc<Vec<u8>>,
        tick: u64,
    },
}

struct Cache {
    slots: HashMap<ChunkId, Slot, IdBuildHasher>,
    /// Use order: tick -> id, oldest first.
    order: BTreeMap<u64, ChunkId>,
    tick: u64,
    bytes: u64,
    capacity: u64,
}

impl Cache {
    fn touch(&mut self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let next = self.tick + 1;
        match self.slots.get_mut(id) {
            Some(Slot::Ready { data, tick }) => {
                self.order.remove(tick);
                *tick = next;
                self.order.insert(next, *id);
                self.tick = next;
                Some(data.clone())
            }
            _ => None,
        }
    }

    /// Inserts a chunk; returns the evicted chunks' buffers that nobody
    /// else holds (for reuse).
    fn insert(&mut self, id: ChunkId, data: Arc<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut freed = Vec::new();
        self.tick += 1;
        self.bytes += data.len() as u64;
        self.order.insert(self.tick, id);
        self.slots.insert(
            id,
            Slot::Ready {
                data,
                tick: self.tick,
            },
        );
        while self.bytes > self.capacity {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = self.slots.remove(&old) {
                self.bytes -= data.len() as u64;
                if let Ok(buf) = Arc::try_unwrap(data) {
                    freed.push(buf);
                }
            }
        }
        freed
    }
}

/// Evicted chunk buffers kept for reuse.
const SPARE_BUFFERS: usize = 8;

/// Recent sequential readers: where each is expected to read next.
#[derive(Default)]
struct Streams {
    /// (next chunk expected, chunks already scheduled up to), most recent last.
    recent: Vec<(u64, u64)>,
}

struct Inner {
    repo: Repository,
    index: Arc<Index>,
    snapshot: Snapshot,
    ids: Vec<ChunkId>,
    chunk_size: usize,
    size: u64,
    cache: Mutex<Cache>,
    loaded: Condvar,
    decoders: Mutex<Vec<ChunkDecoder>>,
    /// Buffers of evicted chunks, reused for the next fetches: no fresh
    /// memory to fault in and zero per chunk, and a steady heap.
    spare: Mutex<Vec<Vec<u8>>>,
    streams: Mutex<Streams>,
    read_ahead: usize,
    fetched: AtomicU64,
}

/// Random access to one snapshot's image. Cheap to share between threads
/// (`&self` everywhere); dropping it stops its read-ahead workers.
pub struct SnapshotImage {
    inner: Arc<Inner>,
    ahead: Option<Sender<u64>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SnapshotImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotImage")
            .field("snapshot", &self.inner.snapshot.id)
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SnapshotImage {
    /// Opens `snapshot` of `repo` with a freshly loaded index.
    ///
    /// # Errors
    /// Index or snapshot list unreadable, a chunk the index does not list.
    pub fn open(
        repo: &Repository,
        snapshot: Snapshot,
        options: &ImageOptions,
    ) -> Result<SnapshotImage, ImageError> {
        let (mut index, damaged) = repo.load_index_lenient()?;
        if !damaged.is_empty() {
            repo.index_unlisted_packs(&mut index)?;
        }
        Self::with_index(repo, snapshot, Arc::new(index), options)
    }

    /// Opens `snapshot` with an index already loaded.
    ///
    /// # Errors
    /// Snapshot list unreadable, a chunk the index does not list.
    pub fn with_index(
        repo: &Repository,
        snapshot: Snapshot,
        index: Arc<Index>,
        options: &ImageOptions,
    ) -> Result<SnapshotImage, ImageError> {
        let chunk_size = snapshot.meta.chunk_size as usize;
        let list_err = |source| RepoError::Snapshot {
            key: super::snapshot_key(&snapshot.id),
            source,
        };
        let mut ids = Vec::with_capacity(snapshot.count as usize);
        for id in snapshot.chunk_ids().map_err(list_err)? {
            let id = id.map_err(list_err)?;
            if !id.is_zero_marker() && !index.contains(&id) {
                return Err(RepoError::MissingChunk { chunk: id }.into());
            }
            ids.push(id);
        }
        // Room for the chunks of a few requests in flight and the read-ahead.
        let floor = (chunk_size * (options.read_ahead + 4)) as u64;
        let inner = Arc::new(Inner {
            repo: repo.clone(),
            index,
            size: snapshot.meta.size,
            snapshot,
            ids,
            chunk_size,
            cache: Mutex::new(Cache {
                slots: HashMap::default(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                capacity: options.cache_size.max(floor),
            }),
            loaded: Condvar::new(),
            decoders: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            streams: Mutex::new(Streams::default()),
            read_ahead: options.read_ahead,
            fetched: AtomicU64::new(0),
        });
        let mut image = SnapshotImage {
            inner,
            ahead: None,
            workers: Vec::new(),
        };
        if options.read_ahead > 0 {
            let threads = if options.threads == 0 {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                options.threads
            };
            let (tx, rx) = bounded::<u64>(options.read_ahead * 2);
            for n in 0..threads {
                let inner = image.inner.clone();
                let rx: Receiver<u64> = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("read-ahead-{n}"))
                    .spawn(move || {
                        for chunk in rx {
                            // Errors show when a reader asks for the chunk.
                            let _ = inner.chunk(chunk);
                        }
                    });
                if let Ok(h) = spawned {
                    image.workers.push(h);
                }
            }
            image.ahead = Some(tx);
        }
        Ok(image)
    }

    /// The snapshot served.
    pub fn snapshot(&self) -> &Snapshot {
        &self.inner.snapshot
    }

    /// The image size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The snapshot's chunk size.
    pub fn chunk_size(&self) -> usize {
        self.inner.chunk_size
    }

    /// The chunk ids in image order (the zero marker for all-zero chunks).
    pub fn chunk_ids(&self) -> &[ChunkId] {
        &self.inner.ids
    }

    /// Chunks fetched from the repository so far (cache misses).
    pub fn chunks_fetched(&self) -> u64 {
        self.inner.fetched.load(Ordering::Relaxed)
    }

    /// Bytes of decompressed chunks in the cache now.
    pub fn cached_bytes(&self) -> u64 {
        lock(&self.inner.cache).bytes
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.size => Ok(()),
            _ => Err(ImageError::PastEnd {
                offset,
                len,
                size: self.inner.size,
            }),
        }
    }

    /// The bytes of `offset..offset + len` as pieces of cached chunks and
    /// zeros, without copying them.
    ///
    /// # Errors
    /// [`ImageError::PastEnd`]; [`ImageError::Chunk`] for the first chunk
    /// of the range that cannot be read or verified.
    pub fn read_segments(&self, offset: u64, len: usize) -> Result<Vec<Segment>, ImageError> {
        self.check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let cs = self.inner.chunk_size as u64;
        let first = offset / cs;
        let last = (offset + len as u64 - 1) / cs;
        self.schedule_read_ahead(first, last);
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut at = offset;
        let end = offset + len as u64;
        for c in first..=last {
            let chunk_start = c * cs;
            let from = (at - chunk_start) as usize;
            let upto = (end.min(chunk_start + cs) - chunk_start) as usize;
            let piece = upto - from;
            match self.inner.chunk(c)? {
                None => out.push(Segment::Zero(piece)),
                Some(chunk) => out.push(Segment::Data {
                    chunk,
                    start: from,
                    len: piece,
                }),
            }
            at += piece as u64;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// As [`Self::read_segments`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let mut at = 0;
        for s in self.read_segments(offset, buf.len())? {
            s.copy_to(&mut buf[at..]);
            at += s.len();
        }
        Ok(())
    }

    /// Data and zero runs covering `offset..offset + len`, coalesced, the
    /// first starting at `offset` and the last ending at the range's end.
    ///
    /// # Errors
    /// [`ImageError::PastEnd`].
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ImageError> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let cs = self.inner.chunk_size as u64;
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let c = at / cs;
            let upto = ((c + 1) * cs).min(end);
            let zero = self.inner.ids[c as usize].is_zero_marker();
            match out.last_mut() {
                Some(e) if e.zero == zero => e.len += upto - at,
                _ => out.push(Extent {
                    offset: at,
                    len: upto - at,
                    zero,
                }),
            }
            at = upto;
        }
        Ok(out)
    }

    /// Fetches the chunks of `offset..offset + len` into the cache (a
    /// client's hint that it will read them).
    pub fn prefetch(&self, offset: u64, len: u64) {
        if self.check_range(offset, len).is_err() || len == 0 {
            return;
        }
        let cs = self.inner.chunk_size as u64;
        if let Some(tx) = &self.ahead {
            for c in offset / cs..=(offset + len - 1) / cs {
                let _ = tx.try_send(c);
            }
        }
    }

    /// Sends the chunks after a sequential reader's request to the
    /// read-ahead workers. A request that starts at (or just after) where
    /// a recent one ended continues that stream; others start a new one.
    fn schedule_read_ahead(&self, first: u64, last: u64) {
        let Some(tx) = &self.ahead else {
            return;
        };
        let count = self.inner.ids.len() as u64;
        let want = self.inner.read_ahead as u64;
        let mut streams = lock(&self.inner.streams);
        let found = streams
            .recent
            .iter()
            .position(|&(next, _)| first >= next.saturating_sub(1) && first <= next + 1);
        let (from, to) = match found {
            Some(i) => {
                let (_, scheduled) = streams.recent.remove(i);
                let from = scheduled.max(last + 1);
                (from, (last + 1 + want).min(count))
            }
            None => {
                // A new reader: nothing ahead until it proves sequential.
                if streams.recent.len() >= 16 {
                    streams.recent.remove(0);
                }
                streams.recent.push((last + 1, last + 1));
                return;
            }
        };
        streams.recent.push((last + 1, to.max(from)));
        drop(streams);
        for c in from..to {
            if self.inner.ids[c as usize].is_zero_marker() {
                continue;
            }
            if tx.try_send(c).is_err() {
                break;
            }
        }
    }
}

impl Drop for SnapshotImage {
    fn drop(&mut self) {
        // Closing the channel ends the workers' loops.
        self.ahead = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Clears a chunk's loading mark if its fetch unwinds.
struct Loading<'a> {
    inner: &'a Inner,
    id: ChunkId,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        lock(&self.inner.cache).slots.remove(&self.id);
        self.inner.loaded.notify_all();
    }
}

impl Inner {
    fn chunk_len(&self, c: u64) -> usize {
        let start = c * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64) as usize
    }

    /// The decompressed chunk `c`, from the cache or fetched; `None` for
    /// an all-zero chunk.
    fn chunk(&self, c: u64) -> Result<Option<Arc<Vec<u8>>>, ImageError> {
        let id = self.ids[c as usize];
        if id.is_zero_marker() {
            return Ok(None);
        }
        let mut cache = lock(&self.cache);
        loop {
            if let Some(data) = cache.touch(&id) {
                return Ok(Some(data));
            }
            match cache.slots.get(&id) {
                Some(Slot::Loading) => {
                    cache = self
                        .loaded
                        .wait(cache)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                _ => break,
            }
        }
        cache.slots.insert(id, Slot::Loading);
        drop(cache);
        // Should the fetch panic, the waiters are woken and retry.
        let loading = Loading { inner: self, id };
        let fetched = self.fetch(c, id);
        std::mem::forget(loading);
        let mut cache = lock(&self.cache);
        cache.slots.remove(&id);
        let mut freed = Vec::new();
        let result = match fetched {
            Ok(data) => {
                let data = Arc::new(data);
                freed = cache.insert(id, data.clone());
                Ok(Some(data))
            }
            Err(source) => Err(ImageError::Chunk {
                chunk: id,
                offset: c * self.chunk_size as u64,
                source: Box::new(source),
            }),
        };
        drop(cache);
        self.loaded.notify_all();
        if !freed.is_empty() {
            let mut spare = lock(&self.spare);
            for buf in freed {
                if spare.len() < SPARE_BUFFERS {
                    spare.push(buf);
                }
            }
        }
        result
    }

    fn fetch(&self, c: u64, id: ChunkId) -> Result<Vec<u8>, RepoError> {
        let len = self.chunk_len(c);
        let mut buf = lock(&self.spare).pop().unwrap_or_default();
        // Every byte is overwritten by the decoder; only growth is zeroed.
        buf.resize(len, 0);
        let mut decoder = match lock(&self.decoders).pop() {
            Some(d) => d,
            None => ChunkDecoder::new()?,
        };
        let result = fetch_chunks(
            &self.repo,
            &self.index,
            &[(0, id)],
            len,
            &mut buf,
            &mut decoder,
        );
        lock(&self.decoders).push(decoder);
        self.fetched.fetch_add(1, Ordering::Relaxed);
        result.map(|()| buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn cache_evicts_least_recently_used_first() {
        let mut c = Cache {
            slots: HashMap::default(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            capacity: 30,
        };
        assert!(c.insert(id(1), Arc::new(vec![1; 10])).is_empty());
        c.insert(id(2), Arc::new(vec![2; 10]));
        c.insert(id(3), Arc::new(vec![3; 10]));
        assert!(c.touch(&id(1)).is_some());
        let held = match c.slots.get(&id(2)) {
            Some(Slot::Ready { data, .. }) => data.clone(),
            _ => panic!("chunk 2 is cached"),
        };
        let freed = c.insert(id(4), Arc::new(vec![4; 10]));
        assert!(freed.is_empty(), "a chunk still held is not reused");
        drop(held);
        assert!(c.touch(&id(2)).is_none(), "the oldest is evicted");
        assert!(c.touch(&id(1)).is_some(), "a touched one stays");
        assert!(c.touch(&id(3)).is_some());
        assert!(c.touch(&id(4)).is_some());
        assert_eq!(c.bytes, 30);
        let freed = c.insert(id(5), Arc::new(vec![5; 10]));
        assert_eq!(
            freed,
            vec![vec![1u8; 10]],
            "an unheld evicted buffer comes back"
        );
    }

    #[test]
    fn segments_copy_their_bytes() {
        let s = Segment::Data {
            chunk: Arc::new(vec![1, 2, 3, 4]),
            start: 1,
            len: 2,
        };
        let mut out = [9u8; 3];
        s.copy_to(&mut out);
        assert_eq!(out, [2, 3, 9]);
        Segment::Zero(2).copy_to(&mut out);
        assert_eq!(out, [0, 0, 9]);
    }
}
