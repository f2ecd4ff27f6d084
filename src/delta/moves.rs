//! Moved blocks: NEW blocks that OLD holds at another offset.
//!
//! File systems rarely rewrite a file where it was: a package upgrade
//! writes each file beside its target and renames it over, so unchanged
//! file contents reappear at new offsets, and the blocks they left are
//! freed (trimmed to zeros, or reused). Those NEW blocks compress badly on
//! their own and against the OLD bytes they replace, but are free as copy
//! records ([`crate::format::delta::encode_copy`]).
//!
//! The candidates are gathered while OLD and NEW are compared, from the
//! changed blocks only: a moved block's source is almost always a changed
//! block too (the freed copy of the file), and changed blocks are few, so
//! memory stays small and bounded ([`MAX_BLOCKS`] per side). Hashes are
//! 64-bit xxh3; every match is confirmed byte by byte before it is used.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use xxhash_rust::xxh3::xxh3_64;

use super::DeltaError;
use crate::format::delta::{
    encode_copy, Compression, DeltaReader, DeltaWriter, Header, RecordEncoder, TrailerInput,
    WRITER_RECORD_LEN,
};
use crate::format::{Extent, ExtentData};
use crate::io::{Input, IoError};

/// Most changed blocks remembered per side (16 bytes each); past that,
/// later blocks are not considered (the delta is still right, only larger).
pub(super) const MAX_BLOCKS: usize = 2 << 20;

/// Changed blocks of OLD and NEW, by content hash.
#[derive(Debug, Default)]
pub(super) struct MoveFinder {
    /// (hash, offset) of OLD blocks at changed positions, not all zero.
    old: Vec<(u64, u64)>,
    /// (offset, hash) of NEW data blocks at changed positions.
    new: Vec<(u64, u64)>,
}

impl MoveFinder {
    /// An OLD block at a position whose bytes change.
    pub(super) fn offer_old(&mut self, offset: u64, block: &[u8]) {
        if self.old.len() < MAX_BLOCKS && !crate::digest::is_zero(block) {
            self.old.push((xxh3_64(block), offset));
        }
    }

    /// A NEW block of data at a position whose bytes change.
    pub(super) fn offer_new(&mut self, offset: u64, block: &[u8]) {
        if self.new.len() < MAX_BLOCKS {
            self.new.push((offset, xxh3_64(block)));
        }
    }

    /// NEW offsets with an OLD offset that may hold the same block, in
    /// increasing NEW order (unconfirmed: the hashes may collide).
    pub(super) fn candidates(self) -> Vec<(u64, u64)> {
        if self.old.is_empty() || self.new.is_empty() {
            return Vec::new();
        }
        let mut by_hash: HashMap<u64, u64> = HashMap::with_capacity(self.old.len());
        for (hash, offset) in self.old {
            by_hash.entry(hash).or_insert(offset);
        }
        let mut out: Vec<(u64, u64)> = self
            .new
            .into_iter()
            .filter_map(|(offset, hash)| by_hash.get(&hash).map(|&source| (offset, source)))
            .collect();
        out.sort_unstable();
        out
    }
}

/// A run of NEW bytes that OLD holds at `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copy {
    pub(super) offset: u64,
    pub(super) source: u64,
    pub(super) length: u64,
}

/// Joins confirmed block copies (sorted by NEW offset, each `block` long
/// or shorter at NEW's end) into runs whose NEW and OLD ranges both
/// continue, each at most `max_len`.
pub(super) fn join_runs(blocks: &[(u64, u64, u64)], max_len: u64) -> Vec<Copy> {
    let mut out: Vec<Copy> = Vec::new();
    for &(offset, source, length) in blocks {
        if let Some(last) = out.last_mut() {
            if last.offset + last.length == offset
                && last.source + last.length == source
                && last.length + length <= max_len
            {
                last.length += length;
                continue;
            }
        }
        out.push(Copy {
            offset,
            source,
            length,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_found_elsewhere_is_a_candidate_and_zero_blocks_are_not() {
        let mut f = MoveFinder::default();
        let a = vec![7u8; 4096];
        let zero = vec![0u8; 4096];
        f.offer_old(8192, &a);
        f.offer_old(0, &zero);
        f.offer_new(40960, &a);
        f.offer_new(4096, &zero);
        f.offer_new(12288, &[9u8; 4096]);
        assert_eq!(f.candidates(), vec![(40960, 8192)]);
    }

    #[test]
    fn runs_join_only_where_both_sides_continue() {
        let blocks = [
            (0, 100, 10),
            (10, 110, 10),
            (20, 500, 10),
            (40, 510, 10),
            (50, 520, 10),
        ];
        let runs = join_runs(&blocks, 25);
        assert_eq!(
            runs,
            vec![
                Copy {
                    offset: 0,
                    source: 100,
                    length: 20
                },
                Copy {
                    offset: 20,
                    source: 500,
                    length: 10
                },
                Copy {
                    offset: 40,
                    source: 510,
                    length: 20
                },
            ]
        );
    }
}

/// Rewrites the delta in `spool` (made by the first pass, whose header has
/// no copy flag) into `out`, with every confirmed moved block of NEW as a
/// copy record. Records without candidates are copied as they are; a
/// record with some is decoded, and its other parts are encoded again.
/// Without candidates the spool is copied unchanged.
///
/// # Errors
/// I/O on the spool, OLD or `out`; [`DeltaError::Panic`] if the spool does
/// not read back as the delta just written.
pub(super) fn rewrite_with_copies<W: Write>(
    spool: File,
    old: &Input,
    candidates: &[(u64, u64)],
    out: W,
    compression: Compression,
) -> Result<(W, Rewritten), DeltaError> {
    let spool_io = |source| {
        DeltaError::Io(IoError::Op {
            op: "read the spooled delta",
            path: PathBuf::from("(temporary file)"),
            source,
        })
    };
    let mut spool = spool;
    spool.seek(SeekFrom::Start(0)).map_err(spool_io)?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    if candidates.is_empty() {
        let bytes = std::io::copy(&mut spool, &mut out).map_err(spool_io)?;
        let out = out
            .into_inner()
            .map_err(|e| DeltaError::Write(e.into_error()))?;
        return Ok((
            out,
            Rewritten {
                delta_bytes: bytes,
                ..Rewritten::default()
            },
        ));
    }
    let mut reader = DeltaReader::new(BufReader::with_capacity(1 << 20, spool))?;
    let first = *reader.header();
    let old_size = first.old_size.or(old.size()).unwrap_or(0);
    let block = u64::from(first.block_size);
    let mut writer = DeltaWriter::new(
        out,
        Header {
            copies: true,
            ..first
        },
    )?;
    let mut encoder = RecordEncoder::new(compression);
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| DeltaError::Write(std::io::Error::other(e)))?;
    let mut next = 0usize;
    let mut copied = 0u64;
    let mut copy_records = 0u64;
    let mut source_block = vec![0u8; block as usize];
    while let Some(raw) = reader.next_record()? {
        let end = raw.offset + raw.length;
        while next < candidates.len() && candidates[next].0 < raw.offset {
            next += 1;
        }
        let first_candidate = next;
        while next < candidates.len() && candidates[next].0 < end {
            next += 1;
        }
        let inside = &candidates[first_candidate..next];
        if inside.is_empty() || raw.encoding() == "zero" {
            writer.write_record(&raw.encoded())?;
            continue;
        }
        let reference = read_old(old, raw.offset, raw.length, old_size)?;
        let new_bytes = if raw.encoding() == "zstd-ref" {
            raw.decode_against(&reference)?
        } else {
            match raw.clone().decode(&mut decompressor)?.data {
                ExtentData::Bytes(b) => b,
                _ => return Err(DeltaError::Panic("rewrite (record decoded to no bytes)")),
            }
        };
        let mut confirmed = Vec::new();
        for &(offset, source) in inside {
            let at = (offset - raw.offset) as usize;
            if offset + block > end || source + block > old_size {
                continue;
            }
            old.read_exact_at(&mut source_block, source)?;
            if source_block[..] == new_bytes[at..at + block as usize] {
                confirmed.push((offset, source, block));
            }
        }
        if confirmed.is_empty() {
            writer.write_record(&raw.encoded())?;
            continue;
        }
        let mut pos = raw.offset;
        let piece = |from: u64, to: u64| (from - raw.offset) as usize..(to - raw.offset) as usize;
        for run in join_runs(&confirmed, WRITER_RECORD_LEN as u64) {
            if run.offset > pos {
                let range = piece(pos, run.offset);
                let extent = Extent {
                    offset: pos,
                    data: ExtentData::Bytes(new_bytes[range.clone()].to_vec()),
                };
                writer.write_record(&encoder.encode(&extent, Some(&reference[range])))?;
            }
            let range = piece(run.offset, run.offset + run.length);
            writer.write_record(&encode_copy(run.offset, run.source, &new_bytes[range]))?;
            copied += run.length;
            copy_records += 1;
            pos = run.offset + run.length;
        }
        if pos < end {
            let range = piece(pos, end);
            let extent = Extent {
                offset: pos,
                data: ExtentData::Bytes(new_bytes[range.clone()].to_vec()),
            };
            writer.write_record(&encoder.encode(&extent, Some(&reference[range])))?;
        }
    }
    let Some(trailer) = reader.trailer().cloned() else {
        return Err(DeltaError::Panic("rewrite (spooled delta without trailer)"));
    };
    let (out, written, bytes) = writer.finish(TrailerInput {
        old_size: trailer.old_size,
        new_size: trailer.new_size,
        old_digest: trailer.old_digest,
        new_digest: trailer.new_digest,
        samples: trailer.samples,
    })?;
    let out = out
        .into_inner()
        .map_err(|e| DeltaError::Write(e.into_error()))?;
    Ok((
        out,
        Rewritten {
            records: written.record_count,
            changed_bytes: written.changed_bytes,
            delta_bytes: bytes,
            copy_records,
            copied_bytes: copied,
        },
    ))
}

/// What the rewrite wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Rewritten {
    pub(super) records: u64,
    pub(super) changed_bytes: u64,
    pub(super) delta_bytes: u64,
    pub(super) copy_records: u64,
    pub(super) copied_bytes: u64,
}

/// OLD's bytes at `offset .. offset + length`, zero past OLD's end.
fn read_old(old: &Input, offset: u64, length: u64, old_size: u64) -> Result<Vec<u8>, DeltaError> {
    let mut buf = vec![0u8; length as usize];
    let readable = old_size.saturating_sub(offset).min(length) as usize;
    if readable > 0 {
        old.read_exact_at(&mut buf[..readable], offset)?;
    }
    Ok(buf)
}
