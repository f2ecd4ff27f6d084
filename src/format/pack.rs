//! Pack files of the repository, version 1 (spec: `docs/formats/repository.md`).
//!
//! A pack holds many chunks ("blobs") back to back and describes itself in
//! a trailer, so the index can always be rebuilt from the packs alone.
//! All integers are little-endian.
//!
//! ```text
//! offset          size  field
//! 0               8     magic "DDLTPACK"
//! 8               4     version (1)
//! 12              4     reserved, zero
//! 16              ...   blobs, each `stored_len` bytes, in entry order
//! T = 16+Σstored  48*n  entry table, one entry per blob:
//!                         0  32  chunk id (BLAKE3 of the plaintext)
//!                        32   4  offset of the blob in the pack
//!                        36   4  stored length
//!                        40   4  plaintext length
//!                        44   1  encoding: 0 raw, 1 zstd
//!                        45   3  reserved, zero
//! T+48n           48    footer:
//!                         0  32  BLAKE3 of the entry table
//!                        32   4  entry count n
//!                        36   4  version (1)
//!                        40   8  magic "DDLTPEND"
//! ```
//!
//! The pack's id is the BLAKE3 of the whole file.
//!
//! Version 2 is the pack of an encrypted repository: the same layout, but
//! every blob is sealed (`format::sealed`) and the entry table is stored
//! sealed as well, as nonce (24), ciphertext (48n) and tag (16); the
//! footer's checksum covers those 48n + 40 bytes. The footer's count and
//! version stay plain so that the table can be located with two range
//! reads before any key is used.

use super::{arr32, le32};
use crate::id::{ChunkId, PackId};

/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"DDLTPACK";
/// Magic at the end.
pub const END_MAGIC: [u8; 8] = *b"DDLTPEND";
/// Format version of plain packs.
pub const VERSION: u32 = 1;
/// Format version of packs whose blobs and table are sealed.
pub const SEALED_VERSION: u32 = 2;
/// Header bytes.
pub const HEADER_LEN: usize = 16;
/// Bytes per entry.
pub const ENTRY_LEN: usize = 48;
/// Footer bytes.
pub const FOOTER_LEN: usize = 48;
/// Packs are capped well below 4 GiB so offsets fit in 32 bits.
pub const MAX_PACK_LEN: u64 = 1 << 31;

/// How a blob's bytes encode the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// The plaintext itself (incompressible chunks).
    Raw = 0,
    /// A zstd frame.
    Zstd = 1,
}

impl Encoding {
    /// Decodes the encoding byte.
    pub fn from_byte(b: u8) -> Option<Encoding> {
        match b {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// One blob of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk it holds.
    pub id: ChunkId,
    /// Byte offset of the blob in the pack.
    pub offset: u32,
    /// Bytes of the blob.
    pub stored_len: u32,
    /// Bytes of the plaintext chunk.
    pub raw_len: u32,
    /// How the blob encodes the chunk.
    pub encoding: Encoding,
}

impl PackEntry {
    /// Appends the 48-byte table entry.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.encoding as u8);
        out.extend_from_slice(&[0; 3]);
    }

    /// Parses one 48-byte entry.
    pub fn decode(b: &[u8]) -> Result<PackEntry, PackError> {
        if b.len() != ENTRY_LEN {
            return Err(PackError::Truncated);
        }
        let id = ChunkId::from_bytes(arr32(&b[0..32]));
        let encoding = Encoding::from_byte(b[44]).ok_or(PackError::BadEncoding(b[44]))?;
        if b[45..48] != [0; 3] {
            return Err(PackError::Reserved);
        }
        Ok(PackEntry {
            id,
            offset: le32(&b[32..36]),
            stored_len: le32(&b[36..40]),
            raw_len: le32(&b[40..44]),
            encoding,
        })
    }

    /// Offset one past the blob.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.stored_len)
    }
}

/// What is wrong with a pack's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// Shorter than its structure says.
    #[error("pack is truncated")]
    Truncated,
    /// Not a pack file.
    #[error("not a diskdelta pack (bad magic)")]
    BadMagic,
    /// Written by a newer diskdelta.
    #[error("pack format version {0} is not supported (this build reads versions {VERSION} and {SEALED_VERSION})")]
    Version(u32),
    /// A sealed pack where no key is known (a plain repository).
    #[error("pack is encrypted but the repository is not")]
    Sealed,
    /// A plain pack in an encrypted repository: never written by it.
    #[error("pack is not encrypted but the repository is: it was not written with this repository's key")]
    NotSealed,
    /// The sealed table does not open with the repository's key.
    #[error("pack entry table fails authentication (tampered with, or written with another key)")]
    TableAuthentication,
    /// The entry table does not match its checksum.
    #[error("pack entry table checksum mismatch")]
    TableChecksum,
    /// Unknown blob encoding.
    #[error("unknown blob encoding {0}")]
    BadEncoding(u8),
    /// Reserved bytes are not zero.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// A blob lies outside the blob area or overlaps another.
    #[error("blob {index} lies outside the pack's blob area")]
    BadBlobRange {
        /// Entry number.
        index: usize,
    },
}

/// Seals and opens pack entry tables; implemented by the repository's
/// key, so that this module stays free of cryptography.
pub trait TableSeal {
    /// The sealed form of the `count`-entry `table`.
    fn seal_table(&self, table: &[u8], count: u32) -> Vec<u8>;
    /// The table inside a sealed region, or `None` when it does not
    /// authenticate.
    fn open_table(&self, region: &[u8], count: u32) -> Option<Vec<u8>>;
}

/// The parsed footer of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// [`VERSION`] or [`SEALED_VERSION`].
    pub version: u32,
    /// Number of entries.
    pub count: u32,
    /// BLAKE3 of the table region.
    pub checksum: [u8; 32],
}

impl Footer {
    /// Bytes of the table region (sealed or not).
    pub fn table_len(&self) -> u64 {
        let plain = u64::from(self.count) * ENTRY_LEN as u64;
        if self.version == SEALED_VERSION {
            plain + super::sealed::SEAL_OVERHEAD as u64
        } else {
            plain
        }
    }

    /// Bytes of the trailer: table region and footer.
    pub fn trailer_len(&self) -> u64 {
        self.table_len() + FOOTER_LEN as u64
    }
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        let mut bytes = Vec::with_capacity(HEADER_LEN);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        PackBuilder {
            bytes,
            entries: Vec::new(),
        }
    }

    /// An empty pack written into `buffer` (its contents are dropped, its
    /// capacity kept): a backup reuses the buffers of packs it uploaded
    /// rather than touching fresh memory for every pack.
    pub fn reusing(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        let mut builder = PackBuilder::new();
        buffer.extend_from_slice(&builder.bytes);
        builder.bytes = buffer;
        builder
    }

    /// Bytes so far (without the trailer).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of blobs.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Adds a blob; returns its entry.
    pub fn add(&mut self, id: ChunkId, blob: &[u8], raw_len: u32, encoding: Encoding) -> PackEntry {
        let entry = PackEntry {
            id,
            offset: self.bytes.len() as u32,
            stored_len: blob.len() as u32,
            raw_len,
            encoding,
        };
        self.bytes.extend_from_slice(blob);
        self.entries.push(entry);
        entry
    }

    /// Appends the trailer and returns the file bytes, its id and its entries.
    pub fn finish(self) -> (Vec<u8>, PackId, Vec<PackEntry>) {
        self.finish_sealed(None)
    }

    /// Appends the trailer, its table sealed by `seal` when given (a
    /// version 2 pack, whose blobs the caller sealed), and returns the
    /// file bytes, its id and its entries.
    pub fn finish_sealed(
        mut self,
        seal: Option<&dyn TableSeal>,
    ) -> (Vec<u8>, PackId, Vec<PackEntry>) {
        let mut table = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            e.encode(&mut table);
        }
        let count = self.entries.len() as u32;
        let version = match seal {
            Some(seal) => {
                table = seal.seal_table(&table, count);
                SEALED_VERSION
            }
            None => VERSION,
        };
        self.bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let checksum = blake3::hash(&table);
        self.bytes.extend_from_slice(&table);
        self.bytes.extend_from_slice(checksum.as_bytes());
        self.bytes.extend_from_slice(&count.to_le_bytes());
        self.bytes.extend_from_slice(&version.to_le_bytes());
        self.bytes.extend_from_slice(&END_MAGIC);
        let id = PackId::of(&self.bytes);
        (self.bytes, id, self.entries)
    }
}

/// Parses a footer (the last [`FOOTER_LEN`] bytes).
///
/// # Errors
/// Bad magic, version or length.
pub fn parse_footer(footer: &[u8]) -> Result<Footer, PackError> {
    if footer.len() != FOOTER_LEN {
        return Err(PackError::Truncated);
    }
    if footer[40..48] != END_MAGIC {
        return Err(PackError::BadMagic);
    }
    let version = le32(&footer[36..40]);
    if version != VERSION && version != SEALED_VERSION {
        return Err(PackError::Version(version));
    }
    Ok(Footer {
        version,
        count: le32(&footer[32..36]),
        checksum: arr32(&footer[0..32]),
    })
}

/// Bytes of a plain pack's trailer (table and footer) for `count` entries.
pub fn trailer_len(count: u32) -> u64 {
    u64::from(count) * ENTRY_LEN as u64 + FOOTER_LEN as u64
}

/// Parses the table region against the footer; `pack_len` is the whole
/// pack's length, to check that every blob lies in the blob area. A
/// sealed table needs `open` (the repository's key), and a repository
/// with a key accepts only sealed tables.
///
/// # Errors
/// Checksum mismatch, a table that does not authenticate, a sealed pack
/// without a key or a plain one with, malformed entries, blobs outside
/// the blob area.
pub fn parse_table(
    region: &[u8],
    footer: &Footer,
    pack_len: u64,
    open: Option<&dyn TableSeal>,
) -> Result<Vec<PackEntry>, PackError> {
    if region.len() as u64 != footer.table_len() {
        return Err(PackError::Truncated);
    }
    if blake3::hash(region).as_bytes() != &footer.checksum {
        return Err(PackError::TableChecksum);
    }
    let opened;
    let table = match (footer.version == SEALED_VERSION, open) {
        (false, None) => region,
        (true, Some(open)) => {
            opened = open
                .open_table(region, footer.count)
                .ok_or(PackError::TableAuthentication)?;
            &opened[..]
        }
        (true, None) => return Err(PackError::Sealed),
        (false, Some(_)) => return Err(PackError::NotSealed),
    };
    if table.len() != footer.count as usize * ENTRY_LEN {
        return Err(PackError::Truncated);
    }
    let blob_end = pack_len
        .checked_sub(footer.trailer_len())
        .ok_or(PackError::Truncated)?;
    let mut entries = Vec::with_capacity(table.len() / ENTRY_LEN);
    let mut prev_end = HEADER_LEN as u64;
    for (index, raw) in table.chunks_exact(ENTRY_LEN).enumerate() {
        let e = PackEntry::decode(raw)?;
        if u64::from(e.offset) < prev_end || e.end() > blob_end {
            return Err(PackError::BadBlobRange { index });
        }
        prev_end = e.end();
        entries.push(e);
    }
    Ok(entries)
}

/// Parses a whole plain pack: header, trailer, entries.
///
/// # Errors
/// Anything [`parse_sealed`] reports.
pub fn parse(bytes: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    parse_sealed(bytes, None)
}

/// Parses a whole pack, its table opened by `open` when the repository
/// has a key.
///
/// # Errors
/// Anything [`parse_footer`] and [`parse_table`] report, and a bad
/// header or one whose version differs from the footer's.
pub fn parse_sealed(
    bytes: &[u8],
    open: Option<&dyn TableSeal>,
) -> Result<Vec<PackEntry>, PackError> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(PackError::Truncated);
    }
    if bytes[0..8] != MAGIC {
        return Err(PackError::BadMagic);
    }
    if bytes[12..16] != [0; 4] {
        return Err(PackError::Reserved);
    }
    let footer = parse_footer(&bytes[bytes.len() - FOOTER_LEN..])?;
    let version = le32(&bytes[8..12]);
    if version != footer.version {
        return Err(PackError::Version(version));
    }
    let trailer = footer.trailer_len();
    if trailer + HEADER_LEN as u64 > bytes.len() as u64 {
        return Err(PackError::Truncated);
    }
    let table_start = bytes.len() - trailer as usize;
    parse_table(
        &bytes[table_start..bytes.len() - FOOTER_LEN],
        &footer,
        bytes.len() as u64,
        open,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (Vec<u8>, PackId, Vec<PackEntry>) {
        let mut b = PackBuilder::new();
        b.add(ChunkId::of(b"one"), b"one", 3, Encoding::Raw);
        b.add(ChunkId::of(b"two"), b"xx", 3, Encoding::Zstd);
        b.finish()
    }

    #[test]
    fn round_trip() {
        let (bytes, id, entries) = sample();
        assert_eq!(id, PackId::of(&bytes));
        assert_eq!(parse(&bytes), Ok(entries.clone()));
        assert_eq!(entries[1].offset, 19);
        assert_eq!(bytes.len(), 16 + 5 + 2 * 48 + 48);
    }

    #[test]
    fn every_flipped_byte_outside_blobs_is_caught() {
        let (bytes, _, _) = sample();
        for i in (0..16).chain(21..bytes.len()) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(parse(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let (bytes, _, _) = sample();
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn empty_pack() {
        let (bytes, _, entries) = PackBuilder::new().finish();
        assert!(entries.is_empty());
        assert_eq!(parse(&bytes), Ok(vec![]));
    }

    /// Blobs as (bytes, plaintext length, zstd?).
    fn blobs() -> impl Strategy<Value = Vec<(Vec<u8>, u32, bool)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<u32>(),
                any::<bool>(),
            ),
            0..12,
        )
    }

    fn build(blobs: &[(Vec<u8>, u32, bool)]) -> (Vec<u8>, PackId, Vec<PackEntry>, Vec<PackEntry>) {
        let mut b = PackBuilder::new();
        let mut added = Vec::new();
        for (data, raw_len, zstd) in blobs {
            let encoding = if *zstd { Encoding::Zstd } else { Encoding::Raw };
            added.push(b.add(ChunkId::of(data), data, *raw_len, encoding));
        }
        let (bytes, id, entries) = b.finish();
        (bytes, id, entries, added)
    }

    proptest! {
        #[test]
        fn built_packs_parse_back_and_rebuild_identically(blobs in blobs()) {
            let (bytes, id, entries, added) = build(&blobs);
            prop_assert_eq!(&entries, &added);
            prop_assert_eq!(id, PackId::of(&bytes));
            let blob_bytes: usize = blobs.iter().map(|b| b.0.len()).sum();
            prop_assert_eq!(
                bytes.len() as u64,
                (HEADER_LEN + blob_bytes) as u64 + trailer_len(entries.len() as u32)
            );
            prop_assert_eq!(parse(&bytes), Ok(entries.clone()));
            // The trailer alone (as the repository reads it) agrees.
            let footer = parse_footer(&bytes[bytes.len() - FOOTER_LEN..]).expect("footer");
            prop_assert_eq!(footer.count as usize, entries.len());
            let table = &bytes[bytes.len() - footer.trailer_len() as usize..bytes.len() - FOOTER_LEN];
            prop_assert_eq!(parse_table(table, &footer, bytes.len() as u64, None), Ok(entries.clone()));
            // Blobs lie back to back, each holding what was added.
            for (e, (data, _, _)) in entries.iter().zip(&blobs) {
                prop_assert_eq!(&bytes[e.offset as usize..e.end() as usize], &data[..]);
            }
            // Rebuilt from its own blobs, a pack is the same bytes.
            let mut again = PackBuilder::new();
            for e in &entries {
                again.add(e.id, &bytes[e.offset as usize..e.end() as usize], e.raw_len, e.encoding);
            }
            prop_assert_eq!(again.finish().0, bytes);
        }

        #[test]
        fn damaged_packs_are_refused_or_stay_in_bounds(
            blobs in blobs(),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
            cut in any::<usize>(),
        ) {
            let (bytes, _, _, _) = build(&blobs);
            let mut bad = bytes.clone();
            for (at, x) in &flips {
                let i = at % bad.len();
                bad[i] ^= x;
            }
            let cut = cut % (bad.len() + 1);
            for candidate in [&bad[..], &bad[..cut], &bytes[..cut]] {
                if let Ok(entries) = parse(candidate) {
                    let end = candidate.len() as u64 - trailer_len(entries.len() as u32);
                    let mut prev = HEADER_LEN as u64;
                    for e in &entries {
                        prop_assert!(u64::from(e.offset) >= prev && e.end() <= end);
                        prev = e.end();
                    }
                }
            }
        }
    }
}
