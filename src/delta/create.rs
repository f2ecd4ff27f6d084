//! `diff`: the delta of NEW against OLD.
//!
//! ```text
//!  OLD reader thread ──(chunks, digest OLD)──┐
//!                                           ├─> compare thread ──(extents)──> encoder pool ──(records)──> writer (this thread)
//!  NEW reader thread ──(chunks, digest NEW)──┘         │ samples of unchanged OLD blocks
//! ```
//! Every channel is bounded and records in flight are capped by tokens, so
//! memory does not grow with the image size.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::moves::{rewrite_with_copies, MoveFinder};
use super::DeltaError;
use crate::change::compare::{compare_blocks, BlockChange, View};
use crate::digest::Digest;
use crate::format::delta::{
    encode_record, Compression, DeltaWriter, EncodedRecord, Header, RecordEncoder, Sample,
    TrailerInput, REFERENCE_WINDOW, VERSION, VERSION_1, VERSION_2,
};
use crate::format::diffdd::DiffDdV2Writer;
use crate::format::{Extent, ExtentData};
use crate::io::reader::{Chunk, ReaderOptions};
use crate::io::{ChunkReader, Input, InputKind, IoError};
use crate::units::BlockSize;

/// Which format `diff` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The native format, version 2: records may be compressed against
    /// the OLD bytes they replace.
    Native,
    /// The native format, version 2 (no copy records), for readers older
    /// than version 3.
    NativeV2,
    /// The native format, version 1, for readers older than version 2.
    NativeV1,
    /// C++ diff-dd format v2, for users who must keep that tool.
    DiffDdV2,
}

impl OutputFormat {
    /// The native format version this writes (for the header of native
    /// deltas).
    pub fn native_version(self) -> u16 {
        match self {
            OutputFormat::NativeV1 => VERSION_1,
            OutputFormat::NativeV2 => VERSION_2,
            _ => VERSION,
        }
    }

    /// True for the native format, any version.
    pub fn is_native(self) -> bool {
        matches!(
            self,
            OutputFormat::Native | OutputFormat::NativeV2 | OutputFormat::NativeV1
        )
    }
}

/// Validated options of `diff`.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Comparison granularity.
    pub block_size: BlockSize,
    /// Payload compression.
    pub compression: Compression,
    /// Encoder threads.
    pub threads: usize,
    /// Output format.
    pub format: OutputFormat,
    /// Added to as NEW is read.
    pub progress: Option<Arc<AtomicU64>>,
    /// Where the first pass of a version 3 delta is spooled before moved
    /// blocks become copy records (default: the temporary directory).
    pub spool_dir: Option<PathBuf>,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            block_size: BlockSize::DEFAULT,
            compression: Compression::DEFAULT,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            format: OutputFormat::Native,
            progress: None,
            spool_dir: None,
        }
    }
}

/// What `diff` did.
#[derive(Debug, Clone)]
pub struct DiffSummary {
    /// Format written.
    pub format: OutputFormat,
    /// OLD size.
    pub old_size: u64,
    /// NEW size.
    pub new_size: u64,
    /// OLD image digest (`None` when made from change tracking).
    pub old_digest: Option<Digest>,
    /// NEW image digest ([`Digest::NONE`] when made from change tracking,
    /// which does not read all of NEW).
    pub new_digest: Digest,
    /// Bytes of NEW (and OLD) read.
    pub bytes_read: u64,
    /// Made from a change tracker rather than by comparing OLD and NEW.
    pub change_tracked: bool,
    /// Records written.
    pub records: u64,
    /// NEW bytes carried by records.
    pub changed_bytes: u64,
    /// Bytes of the delta file.
    pub delta_bytes: u64,
    /// Copy records written (NEW blocks found in OLD at another offset).
    pub copy_records: u64,
    /// NEW bytes carried by copy records.
    pub copied_bytes: u64,
}

/// Number of sampled OLD blocks (fewer only when fewer blocks qualify).
pub(super) const SAMPLE_TARGET: usize = 64;
/// Records encoded or waiting to be written at once.
const RECORDS_IN_FLIGHT: usize = 16;

/// Picks OLD blocks to sample, in one pass and bounded memory: of all
/// candidate blocks, keep the [`SAMPLE_TARGET`] whose mixed index
/// ([`sample_key`]) is smallest (a bottom-k sketch). The choice is spread
/// over the image, depends on no pattern of block indices, and always
/// yields `min(SAMPLE_TARGET, candidates)` samples. Only blocks the delta
/// leaves unchanged are candidates, so an interrupted in-place apply still
/// passes the sample check when rerun.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    /// Max-heap on the key: the root is the first to go.
    heap: std::collections::BinaryHeap<(u64, u64, Digest)>,
}

/// The splitmix64 finalizer of a block index: a fixed, well-mixed
/// permutation, so the smallest keys fall anywhere in the image.
pub fn sample_key(block: u64) -> u64 {
    let mut z = block.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sampler {
    pub(super) fn new() -> Self {
        Sampler::default()
    }

    pub(super) fn offer(&mut self, block: u64, data: &[u8]) {
        self.offer_with(block, || Digest::of(data));
    }

    /// [`Sampler::offer`] of a block whose BLAKE3 is known.
    pub(super) fn offer_digest(&mut self, block: u64, digest: Digest) {
        self.offer_with(block, || digest);
    }

    fn offer_with(&mut self, block: u64, digest: impl FnOnce() -> Digest) {
        let key = sample_key(block);
        if self.heap.len() >= SAMPLE_TARGET && self.heap.peek().is_some_and(|top| key >= top.0) {
            return;
        }
        self.heap.push((key, block, digest()));
        if self.heap.len() > SAMPLE_TARGET {
            self.heap.pop();
        }
    }

    pub(super) fn into_samples(self) -> Vec<Sample> {
        let mut samples: Vec<Sample> = self
            .heap
            .into_iter()
            .map(|(_, block, digest)| Sample { block, digest })
            .collect();
        samples.sort_by_key(|s| s.block);
        samples
    }
}

/// Initial capacity of an extent's buffer.
const EXTENT_START_CAPACITY: usize = 64 << 10;

/// Longest run of unchanged bytes a reference-compressed extent may carry
/// between two changes: against OLD such a run costs a few bytes, less
/// than the record header a split would add.
const GAP_MAX: usize = 16 << 10;

/// What OLD holds under a changed block, for reference compression.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reference<'a> {
    /// Not used: the writer makes self-contained records.
    Absent,
    /// Zeros (a hole in OLD, or past its end).
    Zeros,
    /// OLD's bytes, zero-extended if shorter than the block.
    Old(&'a [u8]),
}

/// An extent ready for the encoders, with the bytes the applier will hold
/// at its range (same length) when the writer uses reference compression.
#[derive(Debug)]
pub(super) struct Built {
    pub(super) extent: Extent,
    pub(super) reference: Option<Vec<u8>>,
}

/// Accumulates changed blocks into extents: contiguous, of one kind (data
/// or zeros), data extents inside one [`REFERENCE_WINDOW`]. With
/// references, short runs of unchanged bytes between changes join the
/// extent (tentatively: a run that no change follows is cut off again).
#[derive(Debug, Default)]
pub(super) struct ExtentBuilder {
    pending: Option<Extent>,
    reference: Option<Vec<u8>>,
    /// Bytes of the pending data extent up to its last change.
    committed: usize,
}

fn same_window(start: u64, end: u64) -> bool {
    start / REFERENCE_WINDOW == (end - 1) / REFERENCE_WINDOW
}

impl ExtentBuilder {
    /// Adds changed NEW bytes without a reference.
    pub(super) fn push_data(&mut self, offset: u64, bytes: &[u8]) -> Option<Built> {
        self.push_data_against(offset, bytes, Reference::Absent)
    }

    /// Adds changed NEW bytes with what OLD holds under them.
    pub(super) fn push_data_against(
        &mut self,
        offset: u64,
        bytes: &[u8],
        reference: Reference<'_>,
    ) -> Option<Built> {
        let with_reference = !matches!(reference, Reference::Absent);
        if let Some(Extent {
            offset: start,
            data: ExtentData::Bytes(buf),
        }) = &mut self.pending
        {
            if *start + buf.len() as u64 == offset
                && same_window(*start, offset + bytes.len() as u64)
                && with_reference == self.reference.is_some()
            {
                buf.extend_from_slice(bytes);
                self.committed = buf.len();
                if let Some(r) = &mut self.reference {
                    extend_reference(r, reference, bytes.len());
                }
                return None;
            }
        }
        let flushed = self.flush();
        // Most extents are a few blocks: start small (below the C
        // allocators' mmap thresholds, so a buffer is not mapped and
        // unmapped for every extent) and let joined extents grow.
        let mut buf = Vec::with_capacity(EXTENT_START_CAPACITY.max(bytes.len()));
        buf.extend_from_slice(bytes);
        self.committed = buf.len();
        self.reference = with_reference.then(|| {
            let mut r = Vec::with_capacity(buf.capacity());
            extend_reference(&mut r, reference, bytes.len());
            r
        });
        self.pending = Some(Extent {
            offset,
            data: ExtentData::Bytes(buf),
        });
        flushed
    }

    /// Notes NEW bytes equal to OLD's. A short run inside a
    /// reference-compressed extent joins it; anything else ends the extent.
    pub(super) fn push_unchanged(&mut self, offset: u64, bytes: &[u8]) -> Option<Built> {
        if let (
            Some(Extent {
                offset: start,
                data: ExtentData::Bytes(buf),
            }),
            Some(reference),
        ) = (&mut self.pending, &mut self.reference)
        {
            if *start + buf.len() as u64 == offset
                && buf.len() - self.committed + bytes.len() <= GAP_MAX
                && same_window(*start, offset + bytes.len() as u64)
            {
                buf.extend_from_slice(bytes);
                reference.extend_from_slice(bytes);
                return None;
            }
        }
        self.flush()
    }

    pub(super) fn push_zeros(&mut self, offset: u64, len: u64) -> Option<Built> {
        if let Some(Extent {
            offset: start,
            data: ExtentData::Zeros(n),
        }) = &mut self.pending
        {
            if *start + *n == offset {
                *n += len;
                return None;
            }
        }
        let flushed = self.flush();
        self.pending = Some(Extent {
            offset,
            data: ExtentData::Zeros(len),
        });
        flushed
    }

    pub(super) fn flush(&mut self) -> Option<Built> {
        let mut extent = self.pending.take()?;
        let mut reference = self.reference.take();
        if let ExtentData::Bytes(buf) = &mut extent.data {
            buf.truncate(self.committed);
            if let Some(r) = &mut reference {
                r.truncate(self.committed);
            }
        }
        Some(Built { extent, reference })
    }
}

fn extend_reference(r: &mut Vec<u8>, reference: Reference<'_>, len: usize) {
    let old: &[u8] = match reference {
        Reference::Old(old) => &old[..old.len().min(len)],
        Reference::Absent | Reference::Zeros => &[],
    };
    r.extend_from_slice(old);
    r.resize(r.len() + len - old.len(), 0);
}

/// What the extent producer hands back.
pub(super) struct Compared {
    pub(super) old_size: u64,
    pub(super) new_size: u64,
    pub(super) old_digest: Option<Digest>,
    pub(super) new_digest: Digest,
    pub(super) samples: Vec<Sample>,
    pub(super) bytes_read: u64,
    /// Changed blocks gathered to find moved ones (plain diffs of version 3).
    pub(super) moves: Option<MoveFinder>,
}

fn view(chunk: &Chunk) -> View<'_> {
    if chunk.hole {
        View::Zeros(chunk.len)
    } else {
        View::Bytes(chunk.data())
    }
}

/// Sends extents to the encoders, one token per extent so at most
/// [`RECORDS_IN_FLIGHT`] are buffered anywhere.
pub(super) struct ExtentSink {
    seq: u64,
    jobs: Sender<(u64, Built)>,
    tokens: Receiver<()>,
    /// The encoders use references: worth collecting them.
    pub(super) references: bool,
}

impl ExtentSink {
    /// Returns false when the writer has stopped.
    pub(super) fn send(&mut self, extent: Option<Built>) -> bool {
        let Some(extent) = extent else { return true };
        if self.tokens.recv().is_err() {
            return false;
        }
        let ok = self.jobs.send((self.seq, extent)).is_ok();
        self.seq += 1;
        ok
    }
}

fn compare_all(
    mut old: ChunkReader,
    mut new: ChunkReader,
    block: usize,
    mut sink: ExtentSink,
    mut moves: Option<MoveFinder>,
) -> Result<Option<Compared>, DeltaError> {
    let mut builder = ExtentBuilder::default();
    let mut sampler = Sampler::new();
    let mut old_done = false;
    let references = sink.references;
    let block_u64 = block as u64;
    let stopped = loop {
        let new_chunk = match new.next_chunk() {
            None => break false,
            Some(c) => c?,
        };
        let old_chunk = if old_done {
            None
        } else {
            match old.next_chunk() {
                None => {
                    old_done = true;
                    None
                }
                Some(c) => Some(c?),
            }
        };
        let base = new_chunk.offset;
        let old_len = old_chunk.as_ref().map_or(0, |c| c.len);
        let mut stop = false;
        compare_blocks(
            old_chunk.as_ref().map(view),
            view(&new_chunk),
            block,
            |start, end, change| {
                if stop {
                    return;
                }
                let offset = base + start as u64;
                if let Some(finder) = moves.as_mut() {
                    gather_moves(
                        finder,
                        old_chunk.as_ref(),
                        &new_chunk,
                        start..end,
                        change,
                        block,
                    );
                }
                let flushed = match change {
                    BlockChange::Unchanged => {
                        if end - start == block && end <= old_len {
                            if let Some(oc) = &old_chunk {
                                let data: &[u8] = if oc.hole {
                                    &ZERO_BLOCK_SOURCE[..block.min(ZERO_BLOCK_SOURCE.len())]
                                } else {
                                    &oc.data()[start..end]
                                };
                                if data.len() == block {
                                    sampler.offer(offset / block_u64, data);
                                }
                            }
                        }
                        if references && !new_chunk.hole {
                            builder.push_unchanged(offset, &new_chunk.data()[start..end])
                        } else {
                            builder.flush()
                        }
                    }
                    BlockChange::Zeroed => builder.push_zeros(offset, (end - start) as u64),
                    BlockChange::Data => {
                        let reference = match &old_chunk {
                            _ if !references => Reference::Absent,
                            Some(oc) if !oc.hole && start < old_len => {
                                Reference::Old(&oc.data()[start..end.min(old_len)])
                            }
                            _ => Reference::Zeros,
                        };
                        builder.push_data_against(offset, &new_chunk.data()[start..end], reference)
                    }
                };
                if !sink.send(flushed) {
                    stop = true;
                }
            },
        );
        if let Some(oc) = old_chunk {
            old_done = old_done || oc.len < new_chunk.len;
            old.recycle(oc);
        }
        new.recycle(new_chunk);
        if stop {
            break true;
        }
    };
    if stopped || !sink.send(builder.flush()) {
        old.abandon();
        new.abandon();
        return Ok(None);
    }
    drop(sink);
    let old_summary = old.finish()?;
    let new_summary = new.finish()?;
    Ok(Some(Compared {
        old_size: old_summary.bytes,
        new_size: new_summary.bytes,
        old_digest: Some(old_summary.digest.unwrap_or_default()),
        new_digest: new_summary.digest.unwrap_or_default(),
        samples: sampler.into_samples(),
        bytes_read: old_summary.bytes + new_summary.bytes,
        moves,
    }))
}

/// Offers the full blocks of a changed run to `finder`: OLD's bytes there
/// as possible sources, NEW's data blocks as possible moves.
fn gather_moves(
    finder: &mut MoveFinder,
    old_chunk: Option<&Chunk>,
    new_chunk: &Chunk,
    range: std::ops::Range<usize>,
    change: BlockChange,
    block: usize,
) {
    if change == BlockChange::Unchanged {
        return;
    }
    let base = new_chunk.offset;
    let mut at = range.start;
    while at + block <= range.end {
        let offset = base + at as u64;
        if let Some(oc) = old_chunk.filter(|c| !c.hole && at + block <= c.len) {
            finder.offer_old(offset, &oc.data()[at..at + block]);
        }
        if change == BlockChange::Data && !new_chunk.hole {
            finder.offer_new(offset, &new_chunk.data()[at..at + block]);
        }
        at += block;
    }
}

/// Source of zero bytes for sampling blocks inside holes (block sizes above
/// this are never sampled from holes, only from read data).
static ZERO_BLOCK_SOURCE: [u8; 64 * 1024] = [0; 64 * 1024];

enum Encoded {
    Record(EncodedRecord),
    Plain(Extent),
}

fn encoder(
    jobs: Receiver<(u64, Built)>,
    done: Sender<(u64, Encoded)>,
    format: OutputFormat,
    compression: Compression,
) {
    let mut compressor = match (format, compression) {
        (OutputFormat::NativeV1, Compression::Zstd(level)) => {
            zstd::bulk::Compressor::new(level).ok()
        }
        _ => None,
    };
    let mut record_encoder = RecordEncoder::new(compression);
    for (seq, built) in jobs {
        let out = match format {
            OutputFormat::Native | OutputFormat::NativeV2 => {
                Encoded::Record(record_encoder.encode(&built.extent, built.reference.as_deref()))
            }
            OutputFormat::NativeV1 => {
                Encoded::Record(encode_record(&built.extent, compressor.as_mut()))
            }
            OutputFormat::DiffDdV2 => Encoded::Plain(built.extent),
        };
        if done.send((seq, out)).is_err() {
            return;
        }
    }
}

enum Sink<W: Write> {
    Native(Box<DeltaWriter<W>>),
    DiffDd(DiffDdV2Writer<W>, u64),
}

impl<W: Write> Sink<W> {
    fn write(&mut self, encoded: Encoded, last_end: &mut u64) -> Result<(), DeltaError> {
        match (self, encoded) {
            (Sink::Native(w), Encoded::Record(r)) => w.write_record(&r)?,
            (Sink::DiffDd(w, changed), Encoded::Plain(e)) => {
                *changed += e.len();
                *last_end = e.end();
                w.write(&e)?;
            }
            _ => return Err(DeltaError::Panic("encoder (format mix-up)")),
        }
        Ok(())
    }
}

/// Writes the delta of `new` against `old` to `out`, returning the stream.
///
/// # Errors
/// I/O errors on either input or the output; [`DeltaError::Write`] when the
/// delta cannot be written.
pub fn create_delta<W: Write + Send>(
    old: Input,
    new: Input,
    out: W,
    options: &DiffOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let block = options.block_size.as_usize();
    let header = Header {
        version: options.format.native_version(),
        block_size: options.block_size.get(),
        old_size: old.size(),
        new_size: new.size(),
        change_tracked: false,
        copies: false,
    };
    // Copy records need OLD's bytes at any offset, again, after the pass.
    let old_at = match (options.format, old.kind()) {
        (OutputFormat::Native, InputKind::File | InputKind::BlockDevice) => {
            Some(super::apply::positioned_base(&old)?)
        }
        _ => None,
    };
    let old_reader = ChunkReader::spawn(old, ReaderOptions::default());
    let new_reader = ChunkReader::spawn(
        new,
        ReaderOptions {
            progress: options.progress.clone(),
            ..ReaderOptions::default()
        },
    );
    let Some(old_at) = old_at else {
        return write_delta(header, out, options, move |sink| {
            compare_all(old_reader, new_reader, block, sink, None)
        });
    };
    // First pass into a spool; then the rewrite turns moved blocks into
    // copy records on the way to `out`.
    let spool = match &options.spool_dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
    .map_err(|source| {
        DeltaError::Io(IoError::Op {
            op: "create a temporary file for the delta",
            path: options.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
            source,
        })
    })?;
    let (spool, summary, moves) = write_delta_gathering(header, spool, options, move |sink| {
        compare_all(
            old_reader,
            new_reader,
            block,
            sink,
            Some(MoveFinder::default()),
        )
    })?;
    let candidates = moves.map(MoveFinder::candidates).unwrap_or_default();
    let (out, rewritten) =
        rewrite_with_copies(spool, &old_at, &candidates, out, options.compression)?;
    let summary = if rewritten.copy_records > 0 {
        DiffSummary {
            records: rewritten.records,
            changed_bytes: rewritten.changed_bytes,
            delta_bytes: rewritten.delta_bytes,
            copy_records: rewritten.copy_records,
            copied_bytes: rewritten.copied_bytes,
            ..summary
        }
    } else {
        summary
    };
    Ok((out, summary))
}

/// Writes a delta whose extents `produce` makes on its own thread, in
/// increasing order, while a pool of encoders compresses them.
pub(super) fn write_delta<W, P>(
    header: Header,
    out: W,
    options: &DiffOptions,
    produce: P,
) -> Result<(W, DiffSummary), DeltaError>
where
    W: Write + Send,
    P: FnOnce(ExtentSink) -> Result<Option<Compared>, DeltaError> + Send,
{
    write_delta_gathering(header, out, options, produce).map(|(w, s, _)| (w, s))
}

/// [`write_delta`], also returning the changed blocks `produce` gathered
/// for finding moved ones.
fn write_delta_gathering<W, P>(
    header: Header,
    out: W,
    options: &DiffOptions,
    produce: P,
) -> Result<(W, DiffSummary, Option<MoveFinder>), DeltaError>
where
    W: Write + Send,
    P: FnOnce(ExtentSink) -> Result<Option<Compared>, DeltaError> + Send,
{
    let change_tracked = header.change_tracked;
    let out = BufWriter::with_capacity(1 << 20, out);
    let mut sink = match options.format {
        OutputFormat::Native | OutputFormat::NativeV2 | OutputFormat::NativeV1 => {
            Sink::Native(Box::new(DeltaWriter::new(out, header)?))
        }
        OutputFormat::DiffDdV2 => Sink::DiffDd(DiffDdV2Writer::new(out)?, 0),
    };
    let threads = options.threads.clamp(1, 16);
    let (job_tx, job_rx) = bounded::<(u64, Built)>(threads);
    let (done_tx, done_rx) = bounded::<(u64, Encoded)>(RECORDS_IN_FLIGHT);
    let (token_tx, token_rx) = bounded::<()>(RECORDS_IN_FLIGHT);
    for _ in 0..RECORDS_IN_FLIGHT {
        let _ = token_tx.send(());
    }
    let format = options.format;
    let compression = options.compression;
    std::thread::scope(|scope| {
        let compare = scope.spawn(move || {
            produce(ExtentSink {
                seq: 0,
                jobs: job_tx,
                tokens: token_rx,
                references: matches!(format, OutputFormat::Native | OutputFormat::NativeV2)
                    && compression != Compression::None,
            })
        });
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            scope.spawn(move || encoder(jobs, done, format, compression));
        }
        drop(job_rx);
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        let mut last_end = 0u64;
        let mut write_result = Ok(());
        for (seq, encoded) in &done_rx {
            waiting.insert(seq, encoded);
            while let Some(encoded) = waiting.remove(&next) {
                if let Err(e) = sink.write(encoded, &mut last_end) {
                    write_result = Err(e);
                    break;
                }
                next += 1;
                let _ = token_tx.send(());
            }
            if write_result.is_err() {
                break;
            }
        }
        drop(token_tx);
        drop(done_rx);
        let compared = compare.join().map_err(|_| DeltaError::Panic("compare"))?;
        write_result?;
        let Some(mut c) = compared? else {
            return Err(DeltaError::Panic("compare (stopped early)"));
        };
        let moves = c.moves.take();
        let summary = DiffSummary {
            format,
            old_size: c.old_size,
            new_size: c.new_size,
            old_digest: c.old_digest,
            new_digest: c.new_digest,
            bytes_read: c.bytes_read,
            change_tracked,
            records: 0,
            changed_bytes: 0,
            delta_bytes: 0,
            copy_records: 0,
            copied_bytes: 0,
        };
        let (buffered, summary) = match sink {
            Sink::Native(w) => {
                let (w, trailer, bytes) = w.finish(TrailerInput {
                    old_size: c.old_size,
                    new_size: c.new_size,
                    old_digest: c.old_digest,
                    new_digest: c.new_digest,
                    samples: c.samples,
                })?;
                (
                    w,
                    DiffSummary {
                        records: trailer.record_count,
                        changed_bytes: trailer.changed_bytes,
                        delta_bytes: bytes,
                        ..summary
                    },
                )
            }
            Sink::DiffDd(mut w, mut changed) => {
                // diff-dd v2 has no sizes: restore keeps the base's size,
                // extended to the end of the last record.
                if c.new_size < c.old_size {
                    return Err(DeltaError::Size {
                        path: PathBuf::from("NEW"),
                        detail: format!(
                            "NEW ({} bytes) is smaller than OLD ({} bytes), which the diff-dd-v2 format cannot express",
                            c.new_size, c.old_size
                        ),
                    });
                }
                if c.new_size > c.old_size && last_end < c.new_size {
                    // A one-byte zero record at the end makes restore extend
                    // the target to NEW's size.
                    w.write_zeros(c.new_size - 1, 1)?;
                    changed += 1;
                }
                let (records, bytes) = (w.records(), w.position());
                let w = w.finish()?;
                (
                    w,
                    DiffSummary {
                        records,
                        changed_bytes: changed,
                        delta_bytes: bytes,
                        ..summary
                    },
                )
            }
        };
        let inner = buffered
            .into_inner()
            .map_err(|e| DeltaError::Write(e.into_error()))?;
        Ok((inner, summary, moves))
    })
}

#[cfg(test)]
mod sampler_tests {
    use super::*;

    #[test]
    fn any_pattern_of_candidates_gives_full_samples() {
        for pattern in [
            |b: u64| b % 2 == 1,
            |b: u64| b.is_multiple_of(2),
            |b: u64| b % 7 == 3,
            |b: u64| b < 100,
            |_b: u64| true,
        ] {
            let mut s = Sampler::new();
            let mut candidates = 0;
            for b in 0..100_000u64 {
                if pattern(b) {
                    candidates += 1;
                    s.offer(b, &b.to_le_bytes());
                }
            }
            let samples = s.into_samples();
            assert_eq!(samples.len(), SAMPLE_TARGET.min(candidates));
            assert!(samples.windows(2).all(|w| w[0].block < w[1].block));
            assert!(samples.iter().all(|x| pattern(x.block)));
        }
    }

    #[test]
    fn samples_spread_over_the_image() {
        let mut s = Sampler::new();
        for b in 0..1_000_000u64 {
            s.offer(b, &[]);
        }
        let samples = s.into_samples();
        let quarters = (0..4)
            .map(|q| samples.iter().filter(|x| x.block / 250_000 == q).count())
            .collect::<Vec<_>>();
        assert!(quarters.iter().all(|&n| n >= 5), "{quarters:?}");
    }
}
