//! Copy-on-write overlay files, version 1 (spec: `docs/formats/overlay.md`):
//! the writes a client made to a snapshot served by `diskdelta nbd
//! --writable`, kept beside the repository (which is never written).
//!
//! The file holds two map slots, then the data area. Each slot is a
//! header and a bitmap of the blocks written (bit `i % 8` of byte `i / 8`
//! set: block `i` is in the data area; clear: it reads from the snapshot).
//! A flush writes the slot not in use with the next generation; opening
//! picks the valid slot with the highest generation, so a torn map write
//! leaves the previous flush's map. Block `i` lives at
//! `data_offset + i * block_size` (the file is sparse: unwritten blocks
//! take no space). All integers are little-endian.
//!
//! ```text
//! slot offset  size  field
//! 0            8     magic "DDLTOVL\0"
//! 8            4     version (1)
//! 12           4     block size (a power of two, 4 KiB to 4 MiB)
//! 16           8     image size in bytes
//! 24           32    id of the snapshot the overlay belongs to
//! 56           8     generation (a flush writes the other slot with +1)
//! 64           8     data offset (2 * slot length, rounded up to the block size)
//! 72           24    reserved, zero
//! 96           32    BLAKE3 of bytes 0..96 followed by the bitmap
//! 128          m     bitmap, m = ceil(ceil(size / block size) / 8)
//! 128+m        ...   zero up to the slot length (128 + m rounded up to 4 KiB)
//! ```
//!
//! Slot 0 is at file offset 0, slot 1 at the slot length.

use super::{le32, le64};
use crate::id::SnapshotId;

/// Magic at the start of each slot.
pub const MAGIC: [u8; 8] = *b"DDLTOVL\0";
/// Format version written and read.
pub const VERSION: u32 = 1;
/// Bytes of a slot header.
pub const HEADER_LEN: usize = 128;
/// The block size new overlays use.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Smallest and largest block sizes accepted.
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;
/// Largest image an overlay covers (its map must stay small enough to
/// read whole: 2^40 blocks).
pub const MAX_BLOCKS: u64 = 1 << 40;

/// Errors of overlay files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverlayFormatError {
    #[error("not a diskdelta overlay (bad magic)")]
    BadMagic,
    #[error("overlay format version {0} is not supported (this build reads 1)")]
    Version(u32),
    #[error("overlay block size {0} is not a power of two from 4K to 4M")]
    BlockSize(u32),
    #[error("overlay map is truncated")]
    Truncated,
    #[error("overlay map checksum does not match")]
    Checksum,
    #[error("overlay header is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("neither map slot of the overlay is valid ({0})")]
    NoValidSlot(Box<OverlayFormatError>),
}

/// The header fields of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayHeader {
    pub block_size: u32,
    pub size: u64,
    pub snapshot: SnapshotId,
    pub generation: u64,
}

/// Where things are in an overlay of a given image size and block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub blocks: u64,
    pub map_len: usize,
    pub slot_len: u64,
    pub data_offset: u64,
}

impl Layout {
    /// # Errors
    /// A bad block size, or an image too large.
    pub fn new(size: u64, block_size: u32) -> Result<Layout, OverlayFormatError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(OverlayFormatError::BlockSize(block_size));
        }
        let blocks = size.div_ceil(u64::from(block_size));
        if blocks > MAX_BLOCKS {
            return Err(OverlayFormatError::Inconsistent("image too large"));
        }
        let map_len = blocks.div_ceil(8) as usize;
        let slot_len = (HEADER_LEN as u64 + map_len as u64).div_ceil(4096) * 4096;
        let data_offset = (2 * slot_len).div_ceil(u64::from(block_size)) * u64::from(block_size);
        Ok(Layout {
            blocks,
            map_len,
            slot_len,
            data_offset,
        })
    }

    /// File offset of slot `n` (0 or 1).
    pub fn slot_offset(&self, n: usize) -> u64 {
        n as u64 * self.slot_len
    }

    /// The file length: both slots and every block (sparse).
    pub fn file_len(&self, block_size: u32) -> u64 {
        self.data_offset + self.blocks * u64::from(block_size)
    }
}

/// Is block `i` set in `map`?
pub fn is_set(map: &[u8], i: u64) -> bool {
    map.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets block `i` in `map`.
pub fn set(map: &mut [u8], i: u64) {
    if let Some(b) = map.get_mut((i / 8) as usize) {
        *b |= 1 << (i % 8);
    }
}

/// Encodes a slot (header and bitmap, padded to the slot length).
///
/// # Errors
/// A bad block size, or a map of the wrong length.
pub fn encode_slot(h: &OverlayHeader, map: &[u8]) -> Result<Vec<u8>, OverlayFormatError> {
    let layout = Layout::new(h.size, h.block_size)?;
    if map.len() != layout.map_len {
        return Err(OverlayFormatError::Inconsistent("map length"));
    }
    let mut b = vec![0u8; layout.slot_len as usize];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.block_size.to_le_bytes());
    b[16..24].copy_from_slice(&h.size.to_le_bytes());
    b[24..56].copy_from_slice(h.snapshot.as_bytes());
    b[56..64].copy_from_slice(&h.generation.to_le_bytes());
    b[64..72].copy_from_slice(&layout.data_offset.to_le_bytes());
    b[HEADER_LEN..HEADER_LEN + map.len()].copy_from_slice(map);
    let sum = checksum(&b[..96], map);
    b[96..128].copy_from_slice(sum.as_bytes());
    Ok(b)
}

fn checksum(head: &[u8], map: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(map);
    h.finalize()
}

/// Decodes the header of a slot from its first [`HEADER_LEN`] bytes,
/// without checking the bitmap (see [`decode_slot`]).
///
/// # Errors
/// Bad magic, version, block size or data offset.
pub fn decode_header(b: &[u8]) -> Result<(OverlayHeader, Layout), OverlayFormatError> {
    if b.len() < HEADER_LEN {
        return Err(OverlayFormatError::Truncated);
    }
    if b[0..8] != MAGIC {
        return Err(OverlayFormatError::BadMagic);
    }
    let version = le32(&b[8..12]);
    if version != VERSION {
        return Err(OverlayFormatError::Version(version));
    }
    let mut snap = [0u8; 32];
    snap.copy_from_slice(&b[24..56]);
    let h = OverlayHeader {
        block_size: le32(&b[12..16]),
        size: le64(&b[16..24]),
        snapshot: SnapshotId::from_bytes(snap),
        generation: le64(&b[56..64]),
    };
    let layout = Layout::new(h.size, h.block_size)?;
    if le64(&b[64..72]) != layout.data_offset {
        return Err(OverlayFormatError::Inconsistent("data offset"));
    }
    if b[72..96].iter().any(|&x| x != 0) {
        return Err(OverlayFormatError::Inconsistent(
            "reserved bytes are not zero",
        ));
    }
    Ok((h, layout))
}

/// Decodes a whole slot: header and bitmap, checksum checked.
///
/// # Errors
/// As [`decode_header`]; [`OverlayFormatError::Truncated`],
/// [`OverlayFormatError::Checksum`].
pub fn decode_slot(b: &[u8]) -> Result<(OverlayHeader, Vec<u8>), OverlayFormatError> {
    let (h, layout) = decode_header(b)?;
    let map = b
        .get(HEADER_LEN..HEADER_LEN + layout.map_len)
        .ok_or(OverlayFormatError::Truncated)?;
    if checksum(&b[..96], map).as_bytes()[..] != b[96..128] {
        return Err(OverlayFormatError::Checksum);
    }
    let padding = &b[HEADER_LEN + layout.map_len..b.len().min(layout.slot_len as usize)];
    if padding.iter().any(|&x| x != 0) {
        return Err(OverlayFormatError::Inconsistent("slot padding is not zero"));
    }
    // Bits past the last block must be clear.
    if layout.blocks % 8 != 0 {
        if let Some(last) = map.last() {
            if last >> (layout.blocks % 8) != 0 {
                return Err(OverlayFormatError::Inconsistent("bits past the last block"));
            }
        }
    }
    Ok((h, map.to_vec()))
}

/// Picks the slot to use from the two decoded: the valid one with the
/// higher generation.
///
/// # Errors
/// [`OverlayFormatError::NoValidSlot`] with the first slot's error.
pub fn choose(
    a: Result<(OverlayHeader, Vec<u8>), OverlayFormatError>,
    b: Result<(OverlayHeader, Vec<u8>), OverlayFormatError>,
) -> Result<(usize, OverlayHeader, Vec<u8>), OverlayFormatError> {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            if y.0.generation > x.0.generation {
                Ok((1, y.0, y.1))
            } else {
                Ok((0, x.0, x.1))
            }
        }
        (Ok(x), Err(_)) => Ok((0, x.0, x.1)),
        (Err(_), Ok(y)) => Ok((1, y.0, y.1)),
        (Err(e), Err(_)) => Err(OverlayFormatError::NoValidSlot(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(size: u64, block_size: u32, generation: u64) -> OverlayHeader {
        OverlayHeader {
            block_size,
            size,
            snapshot: SnapshotId::from_bytes([7; 32]),
            generation,
        }
    }

    proptest! {
        #[test]
        fn slots_round_trip(
            size in 0u64..(64 << 20),
            shift in 12u32..=22,
            generation: u64,
            bits in proptest::collection::vec(any::<u64>(), 0..40),
        ) {
            let h = header(size, 1 << shift, generation);
            let layout = Layout::new(size, h.block_size).expect("layout");
            let mut map = vec![0u8; layout.map_len];
            for b in bits {
                if layout.blocks > 0 {
                    set(&mut map, b % layout.blocks);
                }
            }
            let slot = encode_slot(&h, &map).expect("encode");
            prop_assert_eq!(slot.len() as u64, layout.slot_len);
            prop_assert_eq!(layout.data_offset % u64::from(h.block_size), 0);
            prop_assert!(layout.data_offset >= 2 * layout.slot_len);
            let (h2, map2) = decode_slot(&slot).expect("decode");
            prop_assert_eq!(h2, h);
            prop_assert_eq!(map2, map);
        }

        #[test]
        fn any_flipped_byte_is_caught(at in 0usize..200, flip in 1u8..=255) {
            let h = header(1 << 20, 4096, 3);
            let layout = Layout::new(h.size, h.block_size).expect("layout");
            let mut map = vec![0u8; layout.map_len];
            set(&mut map, 5);
            let mut slot = encode_slot(&h, &map).expect("encode");
            let at = at.min(HEADER_LEN + layout.map_len - 1);
            slot[at] ^= flip;
            prop_assert!(decode_slot(&slot).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_slot(&b);
        }
    }

    #[test]
    fn the_newer_valid_slot_wins() {
        let map = vec![0u8; Layout::new(4096, 4096).expect("layout").map_len];
        let old = encode_slot(&header(4096, 4096, 1), &map).expect("encode");
        let new = encode_slot(&header(4096, 4096, 2), &map).expect("encode");
        let pick = |a: &[u8], b: &[u8]| choose(decode_slot(a), decode_slot(b)).map(|c| c.0);
        assert_eq!(pick(&old, &new), Ok(1));
        assert_eq!(pick(&new, &old), Ok(0));
        let mut torn = new.clone();
        torn[HEADER_LEN] ^= 1;
        assert_eq!(pick(&old, &torn), Ok(0));
        assert!(matches!(
            pick(&torn, &torn),
            Err(OverlayFormatError::NoValidSlot(_))
        ));
    }

    #[test]
    fn bad_block_sizes_are_refused() {
        assert!(Layout::new(1 << 20, 1000).is_err());
        assert!(Layout::new(1 << 20, 2048).is_err());
        assert!(Layout::new(1 << 20, 8 << 20).is_err());
    }

    /// The golden overlay of version 1 (`tests/golden/overlay/`) decodes
    /// to what its README says.
    #[test]
    fn golden_v1_decodes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/overlay/v1.ovl");
        let b = std::fs::read(path).expect("golden overlay");
        let (h, _) = decode_header(&b).expect("header");
        let layout = Layout::new(h.size, h.block_size).expect("layout");
        let slot = |n: usize| {
            let at = layout.slot_offset(n) as usize;
            decode_slot(&b[at..at + layout.slot_len as usize])
        };
        let (n, h, map) = choose(slot(0), slot(1)).expect("a valid slot");
        assert_eq!(n, 1);
        assert_eq!(h.generation, 2);
        assert_eq!(h.size, 16 * 1024);
        assert_eq!(h.block_size, 4096);
        assert_eq!(h.snapshot, SnapshotId::from_bytes([0xab; 32]));
        let set_blocks: Vec<u64> = (0..layout.blocks).filter(|&i| is_set(&map, i)).collect();
        assert_eq!(set_blocks, vec![1, 3]);
        let block = |i: u64| {
            let at = (layout.data_offset + i * u64::from(h.block_size)) as usize;
            &b[at..at + h.block_size as usize]
        };
        assert!(block(1).iter().all(|&x| x == 0x11));
        assert!(block(3).iter().all(|&x| x == 0xff));
        assert!(block(0).iter().chain(block(2)).all(|&x| x == 0));
        assert_eq!(b.len() as u64, layout.file_len(h.block_size));
    }
}
