//! The native delta format, versions 1, 2 and 3 (spec: `docs/formats/delta.md`).
//!
//! A delta turns OLD into NEW: NEW is OLD cut or zero-extended to NEW's size,
//! with the delta's extents written over it. It is written in one pass (to a
//! pipe if need be) and read in one pass. All integers are little-endian.
//!
//! ```text
//! file     = header record* end-record trailer
//!
//! header (64 bytes)
//!   0   8  magic "DSKDELTA"
//!   8   2  version (1, 2 or 3)
//!  10   2  header length (64)
//!  12   4  flags: 1 OLD size known, 2 NEW size known, 4 change-tracked,
//!              8 may hold copy records (version 3)
//!  16   4  block size (bytes, power of two)
//!  20   4  reserved, zero
//!  24   8  OLD size (0 unless flag 1)
//!  32   8  NEW size (0 unless flag 2)
//!  40  16  reserved, zero
//!  56   8  first 8 bytes of BLAKE3(header bytes 0..56)
//!
//! record header (56 bytes), then `stored length` payload bytes
//!   0   1  kind: 1 raw, 2 zstd, 3 zero, 4 zstd against OLD (version 2),
//!              5 copy of OLD's bytes at another offset (version 3), 255 end
//!   1   3  reserved, zero
//!   4   4  stored length (payload bytes)
//!   8   8  offset in NEW        (end record: 0)
//!  16   8  length in NEW        (end record: 0)
//!  24  32  BLAKE3(record header bytes 0..24 ‖ decoded data)
//!          (end record: BLAKE3(bytes 0..24 ‖ trailer))
//!
//! trailer (the end record's payload: 176 + 40 × samples bytes)
//!   0   8  OLD size
//!   8   8  NEW size
//!  16   8  record count (without the end record)
//!  24   8  changed bytes (sum of record lengths)
//!  32   8  stored bytes (sum of payload lengths)
//!  40  32  image digest of OLD (zero when change-tracked)
//!  72  32  image digest of NEW
//! 104  32  BLAKE3 of the concatenated 32-byte record checksums, in order
//! 136  32  BLAKE3 of the 64 header bytes
//! 168   4  sample count
//! 172   4  reserved, zero
//! 176  40× sample: 8 block index, 32 BLAKE3 of that OLD block
//! ```

use std::io::{self, Read, Write};

use crate::digest::Digest;
use crate::format::{read_full, Extent, ExtentData};

/// File magic.
pub const MAGIC: [u8; 8] = *b"DSKDELTA";
/// Version 3: copy records (OLD's bytes at another offset).
pub const VERSION_3: u16 = 3;
/// The version this module writes by default.
pub const VERSION: u16 = VERSION_3;
/// The first version: records are self-contained.
pub const VERSION_1: u16 = 1;
/// Version 2: records compressed against the OLD bytes they replace.
pub const VERSION_2: u16 = 2;
/// The versions this module reads.
pub const VERSIONS: [u16; 3] = [VERSION_1, VERSION_2, VERSION];
/// A reference-compressed record (version 2) lies inside one aligned window
/// of this many bytes, so an applier streaming OLD in aligned chunks of a
/// multiple of it always holds a record's whole reference.
pub const REFERENCE_WINDOW: u64 = 1 << 20;
/// Header size in bytes.
pub const HEADER_LEN: usize = 64;
/// Record header size in bytes.
pub const RECORD_HEADER_LEN: usize = 56;
/// Fixed part of the trailer in bytes.
pub const TRAILER_FIXED_LEN: usize = 176;
/// Size of one sample entry in the trailer.
pub const SAMPLE_LEN: usize = 40;
/// Most samples a trailer may carry.
pub const MAX_SAMPLES: u32 = 4096;
/// Largest record length a reader accepts; bounds memory on hostile input.
pub const MAX_RECORD_LEN: u64 = 16 << 20;
/// Longest data record the writer produces.
pub const WRITER_RECORD_LEN: usize = 1 << 20;

/// Header flag: the OLD size field is valid.
pub const FLAG_OLD_SIZE: u32 = 1;
/// Header flag: the NEW size field is valid.
pub const FLAG_NEW_SIZE: u32 = 2;
/// Header flag: made from change tracking; OLD was not read, so the trailer
/// has no OLD digest.
pub const FLAG_CHANGE_TRACKED: u32 = 4;
/// Header flag (version 3): the delta may hold copy records, so an applier
/// needs random access to OLD.
pub const FLAG_COPIES: u32 = 8;
const KNOWN_FLAGS: u32 = FLAG_OLD_SIZE | FLAG_NEW_SIZE | FLAG_CHANGE_TRACKED;

const KIND_RAW: u8 = 1;
const KIND_ZSTD: u8 = 2;
const KIND_ZERO: u8 = 3;
const KIND_ZSTD_REF: u8 = 4;
const KIND_COPY: u8 = 5;
/// Payload bytes of a copy record: the OLD offset it copies from.
pub const COPY_PAYLOAD_LEN: usize = 8;
const KIND_END: u8 = 255;

/// Errors of reading or writing the native delta format.
#[derive(Debug, thiserror::Error)]
pub enum DeltaFormatError {
    /// Reading or writing the underlying stream failed.
    #[error("I/O error at delta byte {offset}")]
    Io {
        /// Byte offset in the delta stream.
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// The magic is wrong.
    #[error("not a diskdelta delta file (bad magic)")]
    NotADelta,
    /// A version this build does not read.
    #[error("unsupported delta format version {version} (this build reads versions 1, 2 and 3)")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// The header is inconsistent or damaged.
    #[error("corrupt delta header: {reason}")]
    CorruptHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The stream ended early.
    #[error("delta is truncated at byte {offset} ({context})")]
    Truncated {
        /// Where it ended.
        offset: u64,
        /// What was being read.
        context: &'static str,
    },
    /// A record header is inconsistent.
    #[error("corrupt delta record {index} at delta byte {offset}: {reason}")]
    CorruptRecord {
        /// Record number, from 0.
        index: u64,
        /// Byte offset of the record in the delta.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record's data does not match its checksum.
    #[error("checksum mismatch in delta record {index} (NEW bytes {start}..{end})")]
    Checksum {
        /// Record number, from 0.
        index: u64,
        /// First NEW byte covered.
        start: u64,
        /// One past the last NEW byte covered.
        end: u64,
    },
    /// A reference-compressed record does not decode against the bytes the
    /// image holds at its range.
    #[error("delta record {index} (NEW bytes {start}..{end}) does not decode against the base's bytes it refers to: the base is not the delta's OLD, or the record is damaged")]
    ReferenceMismatch {
        /// Record number, from 0.
        index: u64,
        /// First NEW byte covered.
        start: u64,
        /// One past the last NEW byte covered.
        end: u64,
    },
    /// The trailer is inconsistent with the header or the records.
    #[error("corrupt delta trailer: {reason}")]
    CorruptTrailer {
        /// What is wrong.
        reason: String,
    },
    /// Bytes follow the trailer.
    #[error("unexpected data after the delta trailer at byte {offset}")]
    TrailingData {
        /// Where they start.
        offset: u64,
    },
    /// The writer was asked for records out of order.
    #[error("record at NEW byte {offset} is out of order (previous ended at {previous_end})")]
    OutOfOrder {
        /// Offending offset.
        offset: u64,
        /// End of the previous record.
        previous_end: u64,
    },
}

type Result<T> = std::result::Result<T, DeltaFormatError>;

/// The delta header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version: one of [`VERSIONS`].
    pub version: u16,
    /// Comparison granularity used to make the delta.
    pub block_size: u32,
    /// OLD size, if known when writing started.
    pub old_size: Option<u64>,
    /// NEW size, if known when writing started.
    pub new_size: Option<u64>,
    /// Made from change tracking (no OLD digest in the trailer).
    pub change_tracked: bool,
    /// May hold copy records (version 3 only).
    pub copies: bool,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn digest_at(b: &[u8], at: usize) -> Digest {
    let mut w = [0u8; 32];
    w.copy_from_slice(&b[at..at + 32]);
    Digest::from_bytes(w)
}

impl Header {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        let mut flags = 0;
        if self.old_size.is_some() {
            flags |= FLAG_OLD_SIZE;
        }
        if self.new_size.is_some() {
            flags |= FLAG_NEW_SIZE;
        }
        if self.change_tracked {
            flags |= FLAG_CHANGE_TRACKED;
        }
        if self.copies {
            flags |= FLAG_COPIES;
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.block_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.old_size.unwrap_or(0).to_le_bytes());
        b[32..40].copy_from_slice(&self.new_size.unwrap_or(0).to_le_bytes());
        let check = blake3::hash(&b[0..56]);
        b[56..64].copy_from_slice(&check.as_bytes()[0..8]);
        b
    }

    /// Parses and checks the 64 header bytes.
    ///
    /// # Errors
    /// [`DeltaFormatError::NotADelta`], [`DeltaFormatError::UnsupportedVersion`]
    /// or [`DeltaFormatError::CorruptHeader`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..8] != MAGIC {
            return Err(DeltaFormatError::NotADelta);
        }
        let version = le_u16(b, 8);
        if !VERSIONS.contains(&version) {
            return Err(DeltaFormatError::UnsupportedVersion { version });
        }
        let corrupt = |reason| Err(DeltaFormatError::CorruptHeader { reason });
        if blake3::hash(&b[0..56]).as_bytes()[0..8] != b[56..64] {
            return corrupt("header checksum mismatch");
        }
        if usize::from(le_u16(b, 10)) != HEADER_LEN {
            return corrupt("wrong header length");
        }
        let flags = le_u32(b, 12);
        let known = if version >= VERSION_3 {
            KNOWN_FLAGS | FLAG_COPIES
        } else {
            KNOWN_FLAGS
        };
        if flags & !known != 0 {
            return corrupt("unknown flags");
        }
        let block_size = le_u32(b, 16);
        if !block_size.is_power_of_two() || block_size < 512 {
            return corrupt("block size is not a power of two of at least 512");
        }
        if le_u32(b, 20) != 0 || b[40..56].iter().any(|&x| x != 0) {
            return corrupt("reserved bytes are not zero");
        }
        let old_size = le_u64(b, 24);
        let new_size = le_u64(b, 32);
        if (flags & FLAG_OLD_SIZE == 0 && old_size != 0)
            || (flags & FLAG_NEW_SIZE == 0 && new_size != 0)
        {
            return corrupt("size given without its flag");
        }
        Ok(Header {
            version,
            block_size,
            old_size: (flags & FLAG_OLD_SIZE != 0).then_some(old_size),
            new_size: (flags & FLAG_NEW_SIZE != 0).then_some(new_size),
            change_tracked: flags & FLAG_CHANGE_TRACKED != 0,
            copies: flags & FLAG_COPIES != 0,
        })
    }
}

/// How record payloads are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored raw.
    None,
    /// zstd at this level (records that do not shrink are stored raw).
    Zstd(i32),
}

impl Compression {
    /// The default: zstd at a fast level.
    pub const DEFAULT: Compression = Compression::Zstd(3);
}

/// A hash of one OLD block, for a cheap check that a target holds OLD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Block index (byte offset / block size).
    pub block: u64,
    /// BLAKE3 of the block's bytes (shorter at the end of OLD).
    pub digest: Digest,
}

/// The delta trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// OLD size.
    pub old_size: u64,
    /// NEW size.
    pub new_size: u64,
    /// Number of records.
    pub record_count: u64,
    /// Sum of record lengths (NEW bytes carried).
    pub changed_bytes: u64,
    /// Sum of payload lengths (bytes stored).
    pub stored_bytes: u64,
    /// Image digest of OLD; `None` for change-tracked deltas.
    pub old_digest: Option<Digest>,
    /// Image digest of NEW.
    pub new_digest: Digest,
    /// BLAKE3 over the record checksums.
    pub records_digest: Digest,
    /// BLAKE3 of the header bytes.
    pub header_digest: Digest,
    /// Sampled OLD blocks.
    pub samples: Vec<Sample>,
}

impl Trailer {
    /// The trailer bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TRAILER_FIXED_LEN + SAMPLE_LEN * self.samples.len());
        b.extend_from_slice(&self.old_size.to_le_bytes());
        b.extend_from_slice(&self.new_size.to_le_bytes());
        b.extend_from_slice(&self.record_count.to_le_bytes());
        b.extend_from_slice(&self.changed_bytes.to_le_bytes());
        b.extend_from_slice(&self.stored_bytes.to_le_bytes());
        b.extend_from_slice(self.old_digest.unwrap_or(Digest::NONE).as_bytes());
        b.extend_from_slice(self.new_digest.as_bytes());
        b.extend_from_slice(self.records_digest.as_bytes());
        b.extend_from_slice(self.header_digest.as_bytes());
        b.extend_from_slice(&(self.samples.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for s in &self.samples {
            b.extend_from_slice(&s.block.to_le_bytes());
            b.extend_from_slice(s.digest.as_bytes());
        }
        b
    }

    /// Parses trailer bytes (layout only; consistency is checked by the reader).
    ///
    /// # Errors
    /// [`DeltaFormatError::CorruptTrailer`].
    pub fn decode(b: &[u8], change_tracked: bool) -> Result<Trailer> {
        let corrupt = |reason: &str| DeltaFormatError::CorruptTrailer {
            reason: reason.into(),
        };
        if b.len() < TRAILER_FIXED_LEN {
            return Err(corrupt("too short"));
        }
        let count = le_u32(b, 168);
        if count > MAX_SAMPLES {
            return Err(corrupt("too many samples"));
        }
        if b.len() != TRAILER_FIXED_LEN + SAMPLE_LEN * count as usize {
            return Err(corrupt("length does not match sample count"));
        }
        if le_u32(b, 172) != 0 {
            return Err(corrupt("reserved bytes are not zero"));
        }
        let old_digest = digest_at(b, 40);
        if change_tracked != (old_digest == Digest::NONE) {
            return Err(corrupt(
                "OLD digest presence contradicts the change-tracked flag",
            ));
        }
        let samples = (0..count as usize)
            .map(|i| {
                let at = TRAILER_FIXED_LEN + SAMPLE_LEN * i;
                Sample {
                    block: le_u64(b, at),
                    digest: digest_at(b, at + 8),
                }
            })
            .collect();
        Ok(Trailer {
            old_size: le_u64(b, 0),
            new_size: le_u64(b, 8),
            record_count: le_u64(b, 16),
            changed_bytes: le_u64(b, 24),
            stored_bytes: le_u64(b, 32),
            old_digest: (!change_tracked).then_some(old_digest),
            new_digest: digest_at(b, 72),
            records_digest: digest_at(b, 104),
            header_digest: digest_at(b, 136),
            samples,
        })
    }
}

/// A record ready to be written: header and payload bytes.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    bytes: Vec<u8>,
    offset: u64,
    length: u64,
    checksum: Digest,
}

impl EncodedRecord {
    /// The record bytes (header and payload).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// NEW offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// NEW length.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Payload bytes.
    pub fn stored_len(&self) -> u64 {
        (self.bytes.len() - RECORD_HEADER_LEN) as u64
    }
}

fn record_prefix(kind: u8, stored_len: u32, offset: u64, length: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = kind;
    p[4..8].copy_from_slice(&stored_len.to_le_bytes());
    p[8..16].copy_from_slice(&offset.to_le_bytes());
    p[16..24].copy_from_slice(&length.to_le_bytes());
    p
}

fn record_checksum(prefix: &[u8; 24], data: Option<&[u8]>) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(prefix);
    if let Some(d) = data {
        h.update(d);
    }
    h.finalize().into()
}

/// Encodes one extent as a record. `compressor` is reused across calls by
/// a worker thread; pass `None` for [`Compression::None`].
///
/// # Panics
/// Never for extents up to [`MAX_RECORD_LEN`]; larger data records are a
/// caller bug and are rejected by readers.
pub fn encode_record(
    extent: &Extent,
    compressor: Option<&mut zstd::bulk::Compressor<'_>>,
) -> EncodedRecord {
    let (kind, payload, data): (u8, Option<Vec<u8>>, Option<&[u8]>) = match &extent.data {
        ExtentData::Referenced(raw) => return raw.encoded(),
        ExtentData::Zeros(_) => (KIND_ZERO, None, None),
        ExtentData::Bytes(bytes) => {
            let compressed = compressor
                .and_then(|c| c.compress(bytes).ok())
                .filter(|c| c.len() < bytes.len());
            match compressed {
                Some(c) => (KIND_ZSTD, Some(c), Some(bytes)),
                None => (KIND_RAW, None, Some(bytes)),
            }
        }
    };
    let stored: &[u8] = match (&payload, data) {
        (Some(p), _) => p,
        (None, Some(d)) if kind == KIND_RAW => d,
        _ => &[],
    };
    assemble(kind, extent, Some(stored), data)
}

/// Encodes records of a version 2 delta: zstd against the OLD bytes of the
/// same range where that is smaller, plain zstd or raw otherwise. One per
/// worker thread.
pub struct RecordEncoder {
    level: Option<i32>,
    plain: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for RecordEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordEncoder")
            .field("level", &self.level)
            .finish()
    }
}

impl RecordEncoder {
    /// An encoder for `compression`.
    pub fn new(compression: Compression) -> Self {
        let level = match compression {
            Compression::None => None,
            Compression::Zstd(level) => Some(level),
        };
        RecordEncoder {
            level,
            plain: level.and_then(|l| zstd::bulk::Compressor::new(l).ok()),
        }
    }

    /// Encodes `extent`. `reference` is what the applier will hold at the
    /// extent's range before writing it: OLD's bytes there, zero past OLD's
    /// end (as long as the extent). Only extents inside one
    /// [`REFERENCE_WINDOW`] can use it.
    pub fn encode(&mut self, extent: &Extent, reference: Option<&[u8]>) -> EncodedRecord {
        let (ExtentData::Bytes(bytes), Some(level)) = (&extent.data, self.level) else {
            return encode_record(extent, None);
        };
        let reference = reference.filter(|r| {
            r.len() == bytes.len()
                && within_window(extent.offset, extent.len())
                && r.iter().any(|&b| b != 0)
        });
        let referenced = reference.and_then(|r| compress_with_reference(bytes, r, level));
        // Against a reference that did not help much, plain zstd may do
        // better; compressing twice costs only on such extents.
        let try_plain = referenced
            .as_ref()
            .is_none_or(|c| c.len() > bytes.len() / 2);
        let plain = if try_plain {
            self.plain.as_mut().and_then(|c| c.compress(bytes).ok())
        } else {
            None
        };
        match (referenced, plain) {
            (Some(r), p)
                if r.len() < bytes.len() && p.as_ref().is_none_or(|p| r.len() <= p.len()) =>
            {
                assemble(KIND_ZSTD_REF, extent, Some(&r), Some(bytes))
            }
            (_, Some(p)) if p.len() < bytes.len() => {
                assemble(KIND_ZSTD, extent, Some(&p), Some(bytes))
            }
            _ => assemble(KIND_RAW, extent, Some(bytes), Some(bytes)),
        }
    }
}

/// A copy record (version 3): NEW's `data` at `offset` are OLD's bytes at
/// `source`.
pub fn encode_copy(offset: u64, source: u64, data: &[u8]) -> EncodedRecord {
    let extent = Extent {
        offset,
        data: ExtentData::Zeros(data.len() as u64),
    };
    assemble(KIND_COPY, &extent, Some(&source.to_le_bytes()), Some(data))
}

/// True when `offset .. offset + length` lies in one [`REFERENCE_WINDOW`].
pub fn within_window(offset: u64, length: u64) -> bool {
    length > 0
        && length <= REFERENCE_WINDOW
        && offset
            .checked_add(length - 1)
            .is_some_and(|last| offset / REFERENCE_WINDOW == last / REFERENCE_WINDOW)
}

fn compress_with_reference(data: &[u8], reference: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut cctx = zstd::zstd_safe::CCtx::create();
    cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
        .ok()?;
    cctx.ref_prefix(reference).ok()?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).ok()?;
    Some(out)
}

fn decompress_with_reference(payload: &[u8], reference: &[u8], length: usize) -> Option<Vec<u8>> {
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(reference).ok()?;
    let mut out = Vec::with_capacity(length);
    dctx.decompress(&mut out, payload).ok()?;
    Some(out)
}

fn assemble(
    kind: u8,
    extent: &Extent,
    stored: Option<&[u8]>,
    data: Option<&[u8]>,
) -> EncodedRecord {
    let stored = stored.unwrap_or(&[]);
    let prefix = record_prefix(kind, stored.len() as u32, extent.offset, extent.len());
    let checksum = record_checksum(&prefix, data);
    let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + stored.len());
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(checksum.as_bytes());
    bytes.extend_from_slice(stored);
    EncodedRecord {
        bytes,
        offset: extent.offset,
        length: extent.len(),
        checksum,
    }
}

/// What the writer needs at the end to write the trailer.
#[derive(Debug, Clone)]
pub struct TrailerInput {
    /// OLD size.
    pub old_size: u64,
    /// NEW size.
    pub new_size: u64,
    /// OLD image digest (`None` for change-tracked deltas).
    pub old_digest: Option<Digest>,
    /// NEW image digest.
    pub new_digest: Digest,
    /// Sampled OLD blocks.
    pub samples: Vec<Sample>,
}

/// Streams a delta: header, records in order, trailer.
#[derive(Debug)]
pub struct DeltaWriter<W: Write> {
    out: W,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    records: blake3::Hasher,
    count: u64,
    changed: u64,
    stored: u64,
    last_end: u64,
    written: u64,
    /// End of the furthest copy source, checked against OLD's size.
    copy_end: u64,
}

impl<W: Write> DeltaWriter<W> {
    /// Writes the header.
    ///
    /// # Errors
    /// [`DeltaFormatError::Io`].
    pub fn new(mut out: W, header: Header) -> Result<Self> {
        let header_bytes = header.encode();
        out.write_all(&header_bytes)
            .map_err(|source| DeltaFormatError::Io { offset: 0, source })?;
        Ok(DeltaWriter {
            out,
            header,
            header_bytes,
            records: blake3::Hasher::new(),
            count: 0,
            changed: 0,
            stored: 0,
            last_end: 0,
            written: HEADER_LEN as u64,
            copy_end: 0,
        })
    }

    /// Appends one record; records must come in increasing NEW order.
    ///
    /// # Errors
    /// [`DeltaFormatError::OutOfOrder`] or [`DeltaFormatError::Io`].
    pub fn write_record(&mut self, record: &EncodedRecord) -> Result<()> {
        let kind = record.bytes[0];
        let data = kind != KIND_ZERO;
        let refuse = |reason: String| DeltaFormatError::CorruptRecord {
            index: self.count,
            offset: self.written,
            reason,
        };
        if record.length == 0 || (data && record.length > MAX_RECORD_LEN) {
            return Err(refuse(format!(
                "record length {} is out of range",
                record.length
            )));
        }
        let version = self.header.version;
        if (kind == KIND_ZSTD_REF && version < VERSION_2)
            || (kind == KIND_COPY && (version < VERSION_3 || !self.header.copies))
        {
            return Err(refuse(format!(
                "record kind {kind} cannot be written in this version {version} delta"
            )));
        }
        if kind == KIND_COPY {
            let source = le_u64(&record.bytes, RECORD_HEADER_LEN);
            let within = source
                .checked_add(record.length)
                .is_some_and(|e| self.header.old_size.is_none_or(|old| e <= old));
            if !within {
                return Err(refuse(format!(
                    "copy record reads {source}+{}, past OLD's end",
                    record.length
                )));
            }
            self.copy_end = self.copy_end.max(source + record.length);
        }
        if record.offset < self.last_end {
            return Err(DeltaFormatError::OutOfOrder {
                offset: record.offset,
                previous_end: self.last_end,
            });
        }
        self.out
            .write_all(&record.bytes)
            .map_err(|source| DeltaFormatError::Io {
                offset: self.written,
                source,
            })?;
        self.records.update(record.checksum.as_bytes());
        self.count += 1;
        self.changed += record.length;
        self.stored += record.stored_len();
        self.last_end = record.offset + record.length;
        self.written += record.bytes.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn record_count(&self) -> u64 {
        self.count
    }

    /// Delta bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes the end record and trailer, flushes, and returns the stream
    /// and the trailer written.
    ///
    /// # Errors
    /// [`DeltaFormatError::Io`], or [`DeltaFormatError::CorruptTrailer`] when
    /// the sizes contradict the header or the records.
    pub fn finish(mut self, input: TrailerInput) -> Result<(W, Trailer, u64)> {
        let bad = |reason: &str| DeltaFormatError::CorruptTrailer {
            reason: reason.into(),
        };
        if self.header.old_size.is_some_and(|s| s != input.old_size) {
            return Err(bad("OLD size differs from the header"));
        }
        if self.header.new_size.is_some_and(|s| s != input.new_size) {
            return Err(bad("NEW size differs from the header"));
        }
        if self.last_end > input.new_size {
            return Err(bad("records extend past NEW size"));
        }
        if self.copy_end > input.old_size {
            return Err(bad("copy records read past OLD size"));
        }
        if input.samples.len() > MAX_SAMPLES as usize {
            return Err(bad("too many samples"));
        }
        if !self.header.change_tracked && input.old_digest.is_none() {
            return Err(bad(
                "an OLD digest is required unless the delta is change-tracked",
            ));
        }
        let trailer = Trailer {
            old_size: input.old_size,
            new_size: input.new_size,
            record_count: self.count,
            changed_bytes: self.changed,
            stored_bytes: self.stored,
            old_digest: if self.header.change_tracked {
                None
            } else {
                input.old_digest
            },
            new_digest: input.new_digest,
            records_digest: self.records.finalize().into(),
            header_digest: Digest::of(&self.header_bytes),
            samples: input.samples,
        };
        let body = trailer.encode();
        let prefix = record_prefix(KIND_END, body.len() as u32, 0, 0);
        let checksum = record_checksum(&prefix, Some(&body));
        let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
        bytes.extend_from_slice(&prefix);
        bytes.extend_from_slice(checksum.as_bytes());
        bytes.extend_from_slice(&body);
        let io = |offset| move |source| DeltaFormatError::Io { offset, source };
        self.out.write_all(&bytes).map_err(io(self.written))?;
        self.written += bytes.len() as u64;
        self.out.flush().map_err(io(self.written))?;
        Ok((self.out, trailer, self.written))
    }
}

/// A record as read, before its payload is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Record number, from 0.
    pub index: u64,
    kind: u8,
    prefix: [u8; 24],
    /// NEW offset.
    pub offset: u64,
    /// NEW length.
    pub length: u64,
    checksum: Digest,
    payload: Vec<u8>,
}

impl RawRecord {
    /// Payload bytes as stored.
    pub fn stored_len(&self) -> u64 {
        self.payload.len() as u64
    }

    /// Encoding name: `raw`, `zstd`, `zstd-ref`, `copy` or `zero`.
    pub fn encoding(&self) -> &'static str {
        match self.kind {
            KIND_RAW => "raw",
            KIND_ZSTD => "zstd",
            KIND_ZSTD_REF => "zstd-ref",
            KIND_COPY => "copy",
            _ => "zero",
        }
    }

    /// Decodes a record that refers to OLD against `reference`: the bytes
    /// OLD holds at [`RawRecord::reference_range`] (zero past OLD's end),
    /// and verifies the result.
    ///
    /// # Errors
    /// [`DeltaFormatError::Checksum`] when the payload does not decode
    /// against this reference to the recorded bytes.
    pub fn decode_against(&self, reference: &[u8]) -> Result<Vec<u8>> {
        let length = self.length as usize;
        let mismatch = || DeltaFormatError::ReferenceMismatch {
            index: self.index,
            start: self.offset,
            end: self.offset + self.length,
        };
        if reference.len() != length {
            return Err(mismatch());
        }
        if self.kind == KIND_COPY {
            return if self.holds(reference) {
                Ok(reference.to_vec())
            } else {
                Err(mismatch())
            };
        }
        let out = decompress_with_reference(&self.payload, reference, length)
            .filter(|out| out.len() == length)
            .ok_or_else(mismatch)?;
        if record_checksum(&self.prefix, Some(&out)) != self.checksum {
            return Err(mismatch());
        }
        Ok(out)
    }

    /// The range of OLD this record is decoded from: its own range for a
    /// zstd-ref record, the source range for a copy record.
    pub fn reference_range(&self) -> std::ops::Range<u64> {
        let start = self.copy_source().unwrap_or(self.offset);
        start..start.saturating_add(self.length)
    }

    /// The OLD offset a copy record copies from.
    pub fn copy_source(&self) -> Option<u64> {
        (self.kind == KIND_COPY).then(|| le_u64(&self.payload, 0))
    }

    /// The record as it was stored, to be written again unchanged.
    pub fn encoded(&self) -> EncodedRecord {
        let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&self.prefix);
        bytes.extend_from_slice(self.checksum.as_bytes());
        bytes.extend_from_slice(&self.payload);
        EncodedRecord {
            bytes,
            offset: self.offset,
            length: self.length,
            checksum: self.checksum,
        }
    }

    /// True when `bytes` are what this record decodes to (a target that
    /// already holds them needs no write).
    pub fn holds(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.length
            && record_checksum(&self.prefix, Some(bytes)) == self.checksum
    }

    /// Decodes the payload and verifies the checksum. CPU-bound, so callers
    /// may run it on worker threads.
    ///
    /// # Errors
    /// [`DeltaFormatError::Checksum`] or [`DeltaFormatError::CorruptRecord`].
    pub fn decode(self, decompressor: &mut zstd::bulk::Decompressor<'_>) -> Result<Extent> {
        let (index, start, end) = (self.index, self.offset, self.offset + self.length);
        let mismatch = move || DeltaFormatError::Checksum { index, start, end };
        let data = match self.kind {
            KIND_ZSTD_REF | KIND_COPY => {
                return Ok(Extent {
                    offset: self.offset,
                    data: ExtentData::Referenced(Box::new(self)),
                })
            }
            KIND_ZERO => {
                if record_checksum(&self.prefix, None) != self.checksum {
                    return Err(mismatch());
                }
                ExtentData::Zeros(self.length)
            }
            KIND_RAW => ExtentData::Bytes(self.payload),
            _ => {
                let out = decompressor
                    .decompress(&self.payload, self.length as usize)
                    .map_err(|_| mismatch())?;
                if out.len() as u64 != self.length {
                    return Err(mismatch());
                }
                ExtentData::Bytes(out)
            }
        };
        if let ExtentData::Bytes(bytes) = &data {
            if record_checksum(&self.prefix, Some(bytes)) != self.checksum {
                return Err(mismatch());
            }
        }
        Ok(Extent {
            offset: self.offset,
            data,
        })
    }
}

/// Reads a delta in one pass, checking structure as it goes. Payload
/// checksums are checked by [`RawRecord::decode`]; the trailer's sums and
/// digests of the record sequence are checked when the end is reached.
#[derive(Debug)]
pub struct DeltaReader<R: Read> {
    input: R,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    records: blake3::Hasher,
    count: u64,
    changed: u64,
    stored: u64,
    last_end: u64,
    /// End of the furthest copy source, checked against OLD's size.
    copy_end: u64,
    pos: u64,
    trailer: Option<Trailer>,
}

/// Reads and checks the header at the start of `input`.
fn read_header<R: Read>(input: &mut R) -> Result<(Header, [u8; HEADER_LEN])> {
    let mut bytes = [0u8; HEADER_LEN];
    let n = read_full(input, &mut bytes)
        .map_err(|source| DeltaFormatError::Io { offset: 0, source })?;
    if n >= 8 && bytes[0..8] != MAGIC {
        return Err(DeltaFormatError::NotADelta);
    }
    if n < HEADER_LEN {
        return Err(DeltaFormatError::Truncated {
            offset: n as u64,
            context: "header",
        });
    }
    Ok((Header::decode(&bytes)?, bytes))
}

impl<R: Read> DeltaReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// Any header error, or [`DeltaFormatError::Truncated`].
    pub fn new(mut input: R) -> Result<Self> {
        let (header, header_bytes) = read_header(&mut input)?;
        Ok(DeltaReader {
            input,
            header,
            header_bytes,
            records: blake3::Hasher::new(),
            count: 0,
            changed: 0,
            stored: 0,
            last_end: 0,
            copy_end: 0,
            pos: HEADER_LEN as u64,
            trailer: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The trailer, once [`DeltaReader::next_record`] returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// Delta bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn read_exact_at(&mut self, buf: &mut [u8], context: &'static str) -> Result<()> {
        let n = read_full(&mut self.input, buf).map_err(|source| DeltaFormatError::Io {
            offset: self.pos,
            source,
        })?;
        if n < buf.len() {
            return Err(DeltaFormatError::Truncated {
                offset: self.pos + n as u64,
                context,
            });
        }
        self.pos += n as u64;
        Ok(())
    }

    /// The next record, or `None` after the trailer was read and checked.
    ///
    /// # Errors
    /// Structural errors, truncation, or trailer inconsistencies.
    pub fn next_record(&mut self) -> Result<Option<RawRecord>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let at = self.pos;
        let mut h = [0u8; RECORD_HEADER_LEN];
        self.read_exact_at(&mut h, "record header")?;
        let mut prefix = [0u8; 24];
        prefix.copy_from_slice(&h[0..24]);
        let kind = h[0];
        let stored_len = u64::from(le_u32(&h, 4));
        let offset = le_u64(&h, 8);
        let length = le_u64(&h, 16);
        let checksum = digest_at(&h, 24);
        let index = self.count;
        let corrupt = |reason: String| DeltaFormatError::CorruptRecord {
            index,
            offset: at,
            reason,
        };
        if h[1..4] != [0, 0, 0] {
            return Err(corrupt("reserved bytes are not zero".into()));
        }
        if kind == KIND_END {
            return self.read_trailer(prefix, stored_len, offset, length, checksum);
        }
        match kind {
            KIND_RAW if stored_len != length => {
                return Err(corrupt(format!(
                    "raw record stores {stored_len} bytes for length {length}"
                )))
            }
            KIND_ZSTD if stored_len == 0 || stored_len >= length => {
                return Err(corrupt(format!(
                    "zstd record stores {stored_len} bytes for length {length}"
                )))
            }
            KIND_ZERO if stored_len != 0 => return Err(corrupt("zero record with payload".into())),
            KIND_ZSTD_REF if self.header.version == VERSION_1 => {
                return Err(corrupt(format!("unknown record kind {kind}")))
            }
            KIND_ZSTD_REF if stored_len == 0 || stored_len >= length => {
                return Err(corrupt(format!(
                    "zstd-ref record stores {stored_len} bytes for length {length}"
                )))
            }
            KIND_ZSTD_REF if !within_window(offset, length) => {
                return Err(corrupt(format!(
                    "zstd-ref record {offset}+{length} crosses a {REFERENCE_WINDOW}-byte window"
                )))
            }
            KIND_COPY if self.header.version < VERSION_3 => {
                return Err(corrupt(format!("unknown record kind {kind}")))
            }
            KIND_COPY if !self.header.copies => {
                return Err(corrupt(
                    "copy record in a delta whose header announces none".into(),
                ))
            }
            KIND_COPY if stored_len != COPY_PAYLOAD_LEN as u64 => {
                return Err(corrupt(format!(
                    "copy record stores {stored_len} bytes, not {COPY_PAYLOAD_LEN}"
                )))
            }
            KIND_RAW | KIND_ZSTD | KIND_ZERO | KIND_ZSTD_REF | KIND_COPY => {}
            other => return Err(corrupt(format!("unknown record kind {other}"))),
        }
        if length == 0 {
            return Err(corrupt("empty record".into()));
        }
        if kind != KIND_ZERO && length > MAX_RECORD_LEN {
            return Err(corrupt(format!("record length {length} exceeds the limit")));
        }
        if offset < self.last_end {
            return Err(corrupt(format!(
                "offset {offset} overlaps the previous record ending at {}",
                self.last_end
            )));
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| corrupt("offset + length overflows".into()))?;
        if self.header.new_size.is_some_and(|n| end > n) {
            return Err(corrupt(format!("record ends at {end}, past NEW size")));
        }
        let mut payload = vec![0u8; stored_len as usize];
        self.read_exact_at(&mut payload, "record payload")?;
        if kind == KIND_COPY {
            let source = le_u64(&payload, 0);
            let within = source
                .checked_add(length)
                .is_some_and(|e| self.header.old_size.is_none_or(|old| e <= old));
            if !within {
                return Err(corrupt(format!(
                    "copy record reads {source}+{length}, past OLD's end"
                )));
            }
            self.copy_end = self.copy_end.max(source + length);
        }
        self.records.update(checksum.as_bytes());
        self.count += 1;
        self.changed += length;
        self.stored += stored_len;
        self.last_end = end;
        Ok(Some(RawRecord {
            index,
            kind,
            prefix,
            offset,
            length,
            checksum,
            payload,
        }))
    }

    fn read_trailer(
        &mut self,
        prefix: [u8; 24],
        stored_len: u64,
        offset: u64,
        length: u64,
        checksum: Digest,
    ) -> Result<Option<RawRecord>> {
        let bad = |reason: &str| DeltaFormatError::CorruptTrailer {
            reason: reason.into(),
        };
        if offset != 0 || length != 0 {
            return Err(bad("end record has an offset or length"));
        }
        let max = (TRAILER_FIXED_LEN + SAMPLE_LEN * MAX_SAMPLES as usize) as u64;
        if !(TRAILER_FIXED_LEN as u64..=max).contains(&stored_len) {
            return Err(bad("trailer length out of range"));
        }
        let mut body = vec![0u8; stored_len as usize];
        self.read_exact_at(&mut body, "trailer")?;
        if record_checksum(&prefix, Some(&body)) != checksum {
            return Err(bad("trailer checksum mismatch"));
        }
        let trailer = Trailer::decode(&body, self.header.change_tracked)?;
        if trailer.header_digest != Digest::of(&self.header_bytes) {
            return Err(bad("trailer does not belong to this header"));
        }
        if trailer.record_count != self.count {
            return Err(DeltaFormatError::CorruptTrailer {
                reason: format!(
                    "{} records expected, {} found",
                    trailer.record_count, self.count
                ),
            });
        }
        if trailer.changed_bytes != self.changed || trailer.stored_bytes != self.stored {
            return Err(bad("byte counts do not match the records"));
        }
        if trailer.records_digest != Digest::from(self.records.finalize()) {
            return Err(bad(
                "record sequence digest mismatch (records missing or reordered)",
            ));
        }
        if self.header.old_size.is_some_and(|s| s != trailer.old_size)
            || self.header.new_size.is_some_and(|s| s != trailer.new_size)
        {
            return Err(bad("sizes contradict the header"));
        }
        if self.last_end > trailer.new_size {
            return Err(bad("records extend past NEW size"));
        }
        if self.copy_end > trailer.old_size {
            return Err(bad("copy records read past OLD size"));
        }
        let mut probe = [0u8; 1];
        let n = read_full(&mut self.input, &mut probe).map_err(|source| DeltaFormatError::Io {
            offset: self.pos,
            source,
        })?;
        if n != 0 {
            return Err(DeltaFormatError::TrailingData { offset: self.pos });
        }
        self.trailer = Some(trailer);
        Ok(None)
    }

    /// The next record decoded and verified (single-threaded convenience).
    ///
    /// # Errors
    /// As [`DeltaReader::next_record`] and [`RawRecord::decode`].
    pub fn next_extent(
        &mut self,
        decompressor: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<Option<Extent>> {
        match self.next_record()? {
            Some(raw) => raw.decode(decompressor).map(Some),
            None => Ok(None),
        }
    }
}

/// Reads a delta's header and its trailer from the end of the file without
/// reading the records, so a series of deltas can be checked before any is
/// applied. The end record's checksum and the trailer's header digest are
/// checked; the records are checked when the delta is read in full.
///
/// # Errors
/// Header errors, [`DeltaFormatError::Truncated`] or
/// [`DeltaFormatError::CorruptTrailer`] when no valid end record ends the
/// file, [`DeltaFormatError::Io`].
pub fn read_ends<R: Read + io::Seek>(input: &mut R) -> Result<(Header, Trailer)> {
    let io_at = |offset| move |source| DeltaFormatError::Io { offset, source };
    let len = input.seek(io::SeekFrom::End(0)).map_err(io_at(0))?;
    input.seek(io::SeekFrom::Start(0)).map_err(io_at(0))?;
    let (header, header_bytes) = read_header(input)?;
    let longest =
        (RECORD_HEADER_LEN + TRAILER_FIXED_LEN + SAMPLE_LEN * MAX_SAMPLES as usize) as u64;
    let tail_len = longest.min(len - HEADER_LEN as u64);
    let tail_start = len - tail_len;
    input
        .seek(io::SeekFrom::Start(tail_start))
        .map_err(io_at(tail_start))?;
    let mut tail = vec![0u8; tail_len as usize];
    let n = read_full(input, &mut tail).map_err(io_at(tail_start))?;
    if n < tail.len() {
        return Err(DeltaFormatError::Truncated {
            offset: tail_start + n as u64,
            context: "trailer",
        });
    }
    let body = (0..=MAX_SAMPLES as usize)
        .map(|count| TRAILER_FIXED_LEN + SAMPLE_LEN * count)
        .take_while(|body_len| body_len + RECORD_HEADER_LEN <= tail.len())
        .find_map(|body_len| {
            let at = tail.len() - body_len - RECORD_HEADER_LEN;
            let h = &tail[at..at + RECORD_HEADER_LEN];
            if h[0] != KIND_END
                || h[1..4] != [0, 0, 0]
                || le_u32(h, 4) as usize != body_len
                || h[8..24].iter().any(|&b| b != 0)
            {
                return None;
            }
            let mut prefix = [0u8; 24];
            prefix.copy_from_slice(&h[0..24]);
            let body = &tail[at + RECORD_HEADER_LEN..];
            (record_checksum(&prefix, Some(body)) == digest_at(h, 24)).then_some(body)
        })
        .ok_or(DeltaFormatError::CorruptTrailer {
            reason: "no valid end record at the end of the file (truncated or damaged)".into(),
        })?;
    let trailer = Trailer::decode(body, header.change_tracked)?;
    let bad = |reason: &str| DeltaFormatError::CorruptTrailer {
        reason: reason.into(),
    };
    if trailer.header_digest != Digest::of(&header_bytes) {
        return Err(bad("trailer does not belong to this header"));
    }
    if header.old_size.is_some_and(|s| s != trailer.old_size)
        || header.new_size.is_some_and(|s| s != trailer.new_size)
    {
        return Err(bad("sizes contradict the header"));
    }
    input.seek(io::SeekFrom::Start(0)).map_err(io_at(0))?;
    Ok((header, trailer))
}

#[cfg(test)]
mod tests;
