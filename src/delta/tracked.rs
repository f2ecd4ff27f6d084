//! `diff` from change tracking: NEW is read only where a tracker (thin-pool
//! metadata, a changed-range list) reports changes; OLD is not read at all,
//! except for the blocks sampled with `--base-sample`.
//!
//! ```text
//!  tracked runs ──> reader thread (pread of changed runs, zero blocks ──(extents)──> encoder pool ──> writer
//!                   become zero records, unmapped runs zero records)
//! ```
//!
//! The delta is marked change-tracked: it has no OLD digest, and no NEW
//! digest either (NEW was not read whole); each record still carries its
//! checksum. Bytes of NEW past OLD's end are always read.

use super::create::{
    sample_key, write_delta, Compared, DiffOptions, DiffSummary, ExtentBuilder, ExtentSink,
    SAMPLE_TARGET,
};
use super::DeltaError;
use crate::change::tracked::{TrackedKind, TrackedRun};
use crate::digest::{is_zero, Digest};
use crate::format::delta::{Header, Sample, WRITER_RECORD_LEN};
use crate::io::{Input, InputKind};

pub use crate::change::tracked::RunStream;

/// Writes the change-tracked delta of NEW: only the tracked runs of `new`
/// are read. `base_sample`, when given, is OLD, of which only the sampled
/// unchanged blocks are read.
///
/// # Errors
/// Tracker errors ([`DeltaError::Tracking`]), I/O errors, a NEW that is
/// not a file or block device.
pub fn create_tracked_delta<W: std::io::Write + Send>(
    runs: RunStream,
    new: Input,
    base_sample: Option<Input>,
    out: W,
    options: &DiffOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let positional =
        |input: &Input| matches!(input.kind(), InputKind::File | InputKind::BlockDevice);
    for input in std::iter::once(&new).chain(base_sample.as_ref()) {
        if !positional(input) || input.size().is_none() {
            return Err(DeltaError::Size {
                path: input.path().into(),
                detail: "change tracking reads at offsets: this must be a file or a block device"
                    .into(),
            });
        }
    }
    let new_size = new.size().unwrap_or(0);
    let old_size = base_sample
        .as_ref()
        .and_then(Input::size)
        .unwrap_or(new_size);
    let header = Header {
        version: options.format.native_version(),
        block_size: options.block_size.get(),
        old_size: Some(old_size),
        new_size: Some(new_size),
        change_tracked: true,
        copies: false,
    };
    let block = options.block_size.as_usize();
    let progress = options.progress.clone();
    write_delta(header, out, options, move |sink| {
        let mut reader = TrackedReader {
            new: &new,
            new_size,
            old_size,
            block: block as u64,
            sink,
            builder: ExtentBuilder::default(),
            keys: base_sample.as_ref().map(|_| SampleKeys::default()),
            buf: vec![0u8; WRITER_RECORD_LEN.max(block)],
            bytes_read: 0,
            pos: 0,
            progress,
        };
        for run in runs {
            let run = run?;
            if !reader.process(run)? {
                return Ok(None);
            }
        }
        if !reader.finish()? {
            return Ok(None);
        }
        let samples = match (&base_sample, reader.keys.take()) {
            (Some(old), Some(keys)) => {
                let (samples, read) = keys.read(old, block, old_size)?;
                reader.bytes_read += read;
                samples
            }
            _ => Vec::new(),
        };
        Ok(Some(Compared {
            old_size,
            new_size,
            old_digest: None,
            new_digest: Digest::NONE,
            samples,
            bytes_read: reader.bytes_read,
            moves: None,
        }))
    })
}

struct TrackedReader<'a> {
    new: &'a Input,
    new_size: u64,
    old_size: u64,
    block: u64,
    sink: ExtentSink,
    builder: ExtentBuilder,
    keys: Option<SampleKeys>,
    buf: Vec<u8>,
    bytes_read: u64,
    /// Everything before this offset is done.
    pos: u64,
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl TrackedReader<'_> {
    /// Handles the gap before `run` and the run; false when the writer
    /// stopped.
    fn process(&mut self, run: TrackedRun) -> Result<bool, DeltaError> {
        let start = run.run.offset.min(self.new_size);
        let end = run.run.end().min(self.new_size);
        if !self.gap(start)? {
            return Ok(false);
        }
        if start >= end {
            return Ok(true);
        }
        let ok = match run.kind {
            TrackedKind::Changed => self.read_changed(start, end)?,
            TrackedKind::Unmapped => {
                let flushed = self.builder.push_zeros(start, end - start);
                self.sink.send(flushed)
            }
        };
        self.advance(end);
        Ok(ok)
    }

    fn finish(&mut self) -> Result<bool, DeltaError> {
        if !self.gap(self.new_size)? {
            return Ok(false);
        }
        let flushed = self.builder.flush();
        Ok(self.sink.send(flushed))
    }

    fn advance(&mut self, to: u64) {
        if let Some(p) = &self.progress {
            p.fetch_add(
                to.saturating_sub(self.pos),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.pos = self.pos.max(to);
    }

    /// `pos..to` is unchanged, except what lies past OLD's end, which
    /// NEW holds and the delta must carry.
    fn gap(&mut self, to: u64) -> Result<bool, DeltaError> {
        if to <= self.pos {
            return Ok(true);
        }
        let unchanged_end = to.min(self.old_size.max(self.pos));
        if let Some(keys) = &mut self.keys {
            let first = self.pos.div_ceil(self.block);
            let limit = unchanged_end.min(self.old_size).min(self.new_size);
            let mut b = first;
            while (b + 1) * self.block <= limit {
                keys.offer(b);
                b += 1;
            }
        }
        let flushed = self.builder.flush();
        if !self.sink.send(flushed) {
            return Ok(false);
        }
        if unchanged_end < to {
            self.advance(unchanged_end);
            if !self.read_changed(unchanged_end, to)? {
                return Ok(false);
            }
        }
        self.advance(to);
        Ok(true)
    }

    /// Reads NEW's `start..end` and turns it into data and zero extents,
    /// block by block (blocks aligned to offset 0).
    fn read_changed(&mut self, start: u64, end: u64) -> Result<bool, DeltaError> {
        let mut at = start;
        while at < end {
            let piece = (end - at).min(self.buf.len() as u64) as usize;
            let data = &mut self.buf[..piece];
            self.new.read_exact_at(data, at)?;
            self.bytes_read += piece as u64;
            let mut off = 0usize;
            while off < piece {
                let abs = at + off as u64;
                let block_end = ((abs / self.block + 1) * self.block).min(at + piece as u64);
                let len = (block_end - abs) as usize;
                let bytes = &data[off..off + len];
                let flushed = if is_zero(bytes) {
                    self.builder.push_zeros(abs, len as u64)
                } else {
                    self.builder.push_data(abs, bytes)
                };
                if !self.sink.send(flushed) {
                    return Ok(false);
                }
                off += len;
            }
            at += piece as u64;
        }
        Ok(true)
    }
}

/// The [`SAMPLE_TARGET`] unchanged blocks with the smallest keys, chosen
/// before any of them is read (the same bottom-k rule as a full `diff`).
#[derive(Debug, Default)]
struct SampleKeys {
    heap: std::collections::BinaryHeap<(u64, u64)>,
}

impl SampleKeys {
    fn offer(&mut self, block: u64) {
        let key = sample_key(block);
        if self.heap.len() >= SAMPLE_TARGET && self.heap.peek().is_some_and(|top| key >= top.0) {
            return;
        }
        self.heap.push((key, block));
        if self.heap.len() > SAMPLE_TARGET {
            self.heap.pop();
        }
    }

    /// Reads and hashes the chosen blocks of OLD; returns them and the
    /// bytes read.
    fn read(
        self,
        old: &Input,
        block: usize,
        old_size: u64,
    ) -> Result<(Vec<Sample>, u64), DeltaError> {
        let mut blocks: Vec<u64> = self.heap.into_iter().map(|(_, b)| b).collect();
        blocks.sort_unstable();
        let mut buf = vec![0u8; block];
        let mut samples = Vec::with_capacity(blocks.len());
        let mut read = 0;
        for b in blocks {
            let offset = b * block as u64;
            if offset + block as u64 > old_size {
                continue;
            }
            old.read_exact_at(&mut buf, offset)?;
            read += block as u64;
            samples.push(Sample {
                block: b,
                digest: Digest::of(&buf),
            });
        }
        Ok((samples, read))
    }
}
