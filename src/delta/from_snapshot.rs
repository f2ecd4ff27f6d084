//! `diff --from-snapshot`: the delta of NEW against a repository snapshot
//! instead of an OLD image. NEW is read and each repository chunk of it
//! hashed; a chunk whose BLAKE3 equals the snapshot's chunk id is
//! unchanged. The snapshot supplies everything an OLD image would: its
//! size, its image digest (so `apply --check-base full` works) and, since
//! a chunk id is the BLAKE3 of the chunk, base samples at the chunk size
//! (so `--check-base sample` works). The delta's block size is the chunk
//! size.
//!
//! ```text
//!  NEW reader thread ──(4 MiB units, image digest)──> compare with ids ──(extents)──> encoder pool ──> writer
//! ```

use super::create::{
    write_delta, Compared, DiffOptions, DiffSummary, ExtentBuilder, ExtentSink, Sampler,
};
use super::DeltaError;
use crate::digest::{is_zero, Digest, SEGMENT_SIZE};
use crate::format::delta::{Header, WRITER_RECORD_LEN};
use crate::format::snapshot::Snapshot;
use crate::id::ChunkId;
use crate::io::reader::ReaderOptions;
use crate::io::{ChunkReader, Input};

/// Bytes per read unit: a multiple of every repository chunk size.
const UNIT: usize = 4 << 20;

/// Writes the delta of `new` against the image `snap` describes.
///
/// # Errors
/// [`DeltaError::BaseUnusable`] when the snapshot records no image digest
/// or its chunk list cannot be read; I/O and write errors.
pub fn create_delta_from_snapshot<W: std::io::Write + Send>(
    snap: &Snapshot,
    new: Input,
    out: W,
    options: &DiffOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let unusable = |detail: String| DeltaError::BaseUnusable {
        snapshot: snap.id.to_hex(),
        detail,
    };
    let old_digest = Digest::from_hex(&snap.meta.digest)
        .ok_or_else(|| unusable("it records no image digest (a change-tracked backup)".into()))?;
    let chunk = snap.meta.chunk_size as usize;
    if chunk < 512 || !chunk.is_power_of_two() || !UNIT.is_multiple_of(chunk) {
        return Err(unusable(format!("chunk size {chunk} is not supported")));
    }
    let mut ids = snap
        .chunk_ids()
        .map_err(|e| unusable(format!("its chunk list: {e}")))?;
    let old_size = snap.meta.size;
    let snapshot_id = snap.id.to_hex();
    let header = Header {
        version: options.format.native_version(),
        block_size: chunk as u32,
        old_size: Some(old_size),
        new_size: new.size(),
        change_tracked: false,
        copies: false,
    };
    let progress = options.progress.clone();
    write_delta(header, out, options, move |mut sink| {
        let mut reader = ChunkReader::spawn(
            new,
            ReaderOptions {
                chunk_size: UNIT,
                digest: true,
                progress,
                ..ReaderOptions::default()
            },
        );
        let mut compare = Comparer {
            builder: ExtentBuilder::default(),
            sampler: Sampler::new(),
            chunk,
            old_size,
        };
        let mut index = 0u64;
        while let Some(unit) = reader.next_chunk() {
            let unit = unit?;
            let mut at = 0;
            while at < unit.len {
                let len = chunk.min(unit.len - at);
                let previous = if index * (chunk as u64) < old_size {
                    match ids.next() {
                        Some(Ok(id)) => Some(id),
                        Some(Err(e)) => {
                            reader.abandon();
                            return Err(DeltaError::BaseUnusable {
                                snapshot: snapshot_id,
                                detail: format!("its chunk list: {e}"),
                            });
                        }
                        None => None,
                    }
                } else {
                    None
                };
                let piece = if unit.hole {
                    None
                } else {
                    Some(&unit.data()[at..at + len])
                };
                // At 1 MiB the reader's digest segments are the chunks:
                // their hashes are the chunk ids, no second pass.
                let known = (chunk == SEGMENT_SIZE && len == chunk)
                    .then(|| {
                        unit.segment_hash(at / SEGMENT_SIZE)
                            .map(|h| ChunkId::from(*h))
                    })
                    .flatten();
                let offset = unit.offset + at as u64;
                let piece = Piece {
                    offset,
                    len,
                    bytes: piece,
                    known,
                };
                if !compare.chunk(&mut sink, index, piece, previous) {
                    reader.abandon();
                    return Ok(None);
                }
                at += len;
                index += 1;
            }
            reader.recycle(unit);
        }
        let flushed = compare.builder.flush();
        if !sink.send(flushed) {
            reader.abandon();
            return Ok(None);
        }
        drop(sink);
        let read = reader.finish()?;
        Ok(Some(Compared {
            old_size,
            new_size: read.bytes,
            old_digest: Some(old_digest),
            new_digest: read.digest.unwrap_or_default(),
            samples: compare.sampler.into_samples(),
            bytes_read: read.bytes,
            moves: None,
        }))
    })
}

struct Comparer {
    builder: ExtentBuilder,
    sampler: Sampler,
    chunk: usize,
    old_size: u64,
}

/// One chunk of NEW.
struct Piece<'a> {
    offset: u64,
    len: usize,
    /// Its bytes; `None` for a hole (zeros).
    bytes: Option<&'a [u8]>,
    /// Its BLAKE3 when the reader already computed it.
    known: Option<ChunkId>,
}

impl Comparer {
    /// Compares one chunk of NEW with the snapshot's id for it; false when
    /// the writer stopped.
    fn chunk(
        &mut self,
        sink: &mut ExtentSink,
        index: u64,
        piece: Piece<'_>,
        previous: Option<ChunkId>,
    ) -> bool {
        let Piece {
            offset,
            len,
            bytes: piece,
            known,
        } = piece;
        // OLD's bytes here: the snapshot's chunk (shorter at OLD's end),
        // then zeros past OLD's end, as the delta format defines NEW.
        let old_len = self.old_size.saturating_sub(offset).min(len as u64) as usize;
        let zero = piece.is_none_or(is_zero);
        let same = match (previous, piece) {
            (None, _) => zero,
            // All-zero chunks are stored as the zero marker, never by id.
            (Some(id), None) => id.is_zero_marker(),
            (Some(id), Some(bytes)) => {
                let (head, tail) = bytes.split_at(old_len);
                let head_same = if id.is_zero_marker() {
                    is_zero(head)
                } else {
                    match known {
                        Some(k) if old_len == len => k == id,
                        _ => ChunkId::of(head) == id,
                    }
                };
                head_same && is_zero(tail)
            }
        };
        if same {
            if let (Some(bytes), true) = (piece, len == self.chunk && old_len == self.chunk) {
                match previous {
                    // Same bytes: the snapshot's id is their BLAKE3.
                    Some(id) if !id.is_zero_marker() => {
                        self.sampler
                            .offer_digest(index, Digest::from_bytes(*id.as_bytes()));
                    }
                    _ => self.sampler.offer(index, bytes),
                }
            }
            let flushed = self.builder.flush();
            return sink.send(flushed);
        }
        if zero {
            let flushed = self.builder.push_zeros(offset, len as u64);
            return sink.send(flushed);
        }
        let bytes = piece.unwrap_or_default();
        for (i, part) in bytes.chunks(WRITER_RECORD_LEN).enumerate() {
            let flushed = self
                .builder
                .push_data(offset + (i * WRITER_RECORD_LEN) as u64, part);
            if !sink.send(flushed) {
                return false;
            }
        }
        true
    }
}
