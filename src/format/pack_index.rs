//! Index files of the repository, version 1 (spec: `docs/formats/repository.md`).
//!
//! An index file lists, for some packs, every blob they hold: the same
//! entries as the packs' own trailers, gathered so that opening a
//! repository reads a few index files instead of every pack. All integers
//! are little-endian.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "DDLTINDX"
//! 8       4     version (1)
//! 12      4     pack count p
//! 16      ...   p pack records:
//!                 0  32  pack id
//!                32   4  entry count n
//!                36  48n entries, laid out as in the pack trailer
//! end-32  32    BLAKE3 of everything before
//! ```
//!
//! The file's id is the BLAKE3 of the whole file.

use super::le32;
use super::pack::{PackEntry, PackError, ENTRY_LEN};
use crate::id::{IndexId, PackId};

/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"DDLTINDX";
/// Format version written and read.
pub const VERSION: u32 = 1;

/// What is wrong with an index file's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexFormatError {
    /// Shorter than its structure says, or longer.
    #[error("index file is truncated or has trailing bytes")]
    Length,
    /// Not an index file.
    #[error("not a diskdelta index file (bad magic)")]
    BadMagic,
    /// Written by a newer diskdelta.
    #[error("index format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// Checksum mismatch.
    #[error("index file checksum mismatch")]
    Checksum,
    /// A malformed entry.
    #[error("bad entry: {0}")]
    Entry(#[from] PackError),
}

/// The blobs of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRecord {
    /// The pack.
    pub pack: PackId,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// Encodes an index file; returns its bytes and id.
pub fn encode(packs: &[PackRecord]) -> (Vec<u8>, IndexId) {
    let entries: usize = packs.iter().map(|p| p.entries.len()).sum();
    let mut out = Vec::with_capacity(16 + packs.len() * 36 + entries * ENTRY_LEN + 32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(p.pack.as_bytes());
        out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
        for e in &p.entries {
            e.encode(&mut out);
        }
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    let id = IndexId::of(&out);
    (out, id)
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], IndexFormatError> {
    let end = pos.checked_add(n).ok_or(IndexFormatError::Length)?;
    let s = bytes.get(*pos..end).ok_or(IndexFormatError::Length)?;
    *pos = end;
    Ok(s)
}

/// Decodes an index file.
///
/// # Errors
/// Any structural problem or checksum mismatch.
pub fn decode(bytes: &[u8]) -> Result<Vec<PackRecord>, IndexFormatError> {
    if bytes.len() < 16 + 32 {
        return Err(IndexFormatError::Length);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if body[0..8] != MAGIC {
        return Err(IndexFormatError::BadMagic);
    }
    let version = le32(&body[8..12]);
    if version != VERSION {
        return Err(IndexFormatError::Version(version));
    }
    if blake3::hash(body).as_bytes()[..] != sum[..] {
        return Err(IndexFormatError::Checksum);
    }
    let count = le32(&body[12..16]) as usize;
    let mut pos = 16;
    let mut packs = Vec::with_capacity(count.min(body.len() / 36));
    for _ in 0..count {
        let mut id = [0u8; 32];
        id.copy_from_slice(take(body, &mut pos, 32)?);
        let n = le32(take(body, &mut pos, 4)?) as usize;
        let table = take(
            body,
            &mut pos,
            n.checked_mul(ENTRY_LEN).ok_or(IndexFormatError::Length)?,
        )?;
        let entries = table
            .chunks_exact(ENTRY_LEN)
            .map(PackEntry::decode)
            .collect::<Result<Vec<_>, _>>()?;
        packs.push(PackRecord {
            pack: PackId::from_bytes(id),
            entries,
        });
    }
    if pos != body.len() {
        return Err(IndexFormatError::Length);
    }
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::Encoding;
    use crate::id::ChunkId;
    use proptest::prelude::*;

    fn sample() -> Vec<PackRecord> {
        vec![
            PackRecord {
                pack: PackId::of(b"p1"),
                entries: vec![PackEntry {
                    id: ChunkId::of(b"c1"),
                    offset: 16,
                    stored_len: 10,
                    raw_len: 20,
                    encoding: Encoding::Zstd,
                }],
            },
            PackRecord {
                pack: PackId::of(b"p2"),
                entries: vec![],
            },
        ]
    }

    #[test]
    fn round_trip_and_damage() {
        let (bytes, id) = encode(&sample());
        assert_eq!(id, IndexId::of(&bytes));
        assert_eq!(decode(&bytes), Ok(sample()));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "length {n}");
        }
    }

    fn entry() -> impl Strategy<Value = PackEntry> {
        (
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(id, offset, stored_len, raw_len, zstd)| PackEntry {
                id: ChunkId::from_bytes(id),
                offset,
                stored_len,
                raw_len,
                encoding: if zstd { Encoding::Zstd } else { Encoding::Raw },
            })
    }

    fn records() -> impl Strategy<Value = Vec<PackRecord>> {
        proptest::collection::vec(
            (any::<[u8; 32]>(), proptest::collection::vec(entry(), 0..8)).prop_map(
                |(pack, entries)| PackRecord {
                    pack: PackId::from_bytes(pack),
                    entries,
                },
            ),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(records in records()) {
            let (bytes, id) = encode(&records);
            prop_assert_eq!(id, IndexId::of(&bytes));
            let entries: usize = records.iter().map(|r| r.entries.len()).sum();
            prop_assert_eq!(bytes.len(), 16 + 36 * records.len() + ENTRY_LEN * entries + 32);
            let back = decode(&bytes);
            prop_assert_eq!(back.as_ref(), Ok(&records));
            // Deterministic: what decodes encodes to the same bytes again.
            prop_assert_eq!(encode(&records).0, bytes);
        }

        #[test]
        fn damaged_index_files_never_decode(
            records in records(),
            at in any::<usize>(),
            x in 1u8..,
            cut in any::<usize>(),
        ) {
            let (bytes, _) = encode(&records);
            let mut bad = bytes.clone();
            let i = at % bad.len();
            bad[i] ^= x;
            prop_assert!(decode(&bad).is_err(), "flipped byte {}", i);
            let cut = cut % bytes.len();
            prop_assert!(decode(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }
}
