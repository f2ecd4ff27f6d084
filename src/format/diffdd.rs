//! The delta formats of the C++ `diff-dd` by Ján Sučan (`jansucan/diff-dd`
//! on GitHub): format v2 (current, with a header) and format v1
//! (headerless, one sector per record, made by its earlier versions).
//!
//! Both carry only the changed bytes of NEW and where they go; everything
//! else comes from the base image OLD. Neither format stores the size of
//! NEW, a checksum, or an end marker. The full description, with what the
//! C++ tool does on restore and what we check beyond it, is in
//! `docs/formats/diff-dd.md`.
//!
//! # Format v2
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! | 0      | 13   | signature, the ASCII bytes `diff-dd image` (no NUL) |
//! | 13     | 1    | version, `2`                                       |
//! | 14     | ...  | records, until the end of the file                 |
//!
//! Each record:
//!
//! | offset | size   | field                                  |
//! |-------:|-------:|----------------------------------------|
//! | 0      | 8      | byte offset in NEW, u64 **big-endian** |
//! | 8      | 4      | data size `n`, u32 **big-endian**      |
//! | 12     | `n`    | the bytes of NEW at that offset        |
//!
//! # Format v1
//!
//! No header. With the sector size `s` chosen by the user when the image
//! was made (default 512, not stored in the file), each record is:
//!
//! | offset | size | field                                     |
//! |-------:|-----:|-------------------------------------------|
//! | 0      | 8    | byte offset in NEW, u64 **little-endian** |
//! | 8      | `s`  | one sector of NEW at that offset          |
//!
//! # What the readers enforce
//!
//! Records must come in strictly increasing, non-overlapping order (the
//! C++ tool writes them so; its v2 restore does not check). A record cut
//! short, a v2 record over [`V2_MAX_RECORD_LEN`], or an offset that
//! overflows is an error naming the record and its byte position. A file
//! cut exactly between two records cannot be told from a complete one: the
//! formats have no count, length or end marker.
//!
//! Both readers stream in one pass from any [`Read`] (a pipe works) and hold
//! at most about [`EXTENT_CHUNK_LEN`] bytes (or one v1 sector, if larger).

use std::fmt;
use std::io::{self, Read, Write};

use crate::format::{read_full, Extent, ExtentData};

/// The ASCII signature at the start of a v2 file (13 bytes, no NUL).
pub const V2_SIGNATURE: &[u8; 13] = b"diff-dd image";
/// The version byte following [`V2_SIGNATURE`].
pub const V2_VERSION: u8 = 2;
/// The whole v2 header: signature then version byte.
pub const V2_MAGIC: &[u8; 14] = b"diff-dd image\x02";
/// Length of the v2 header in bytes.
pub const V2_HEADER_LEN: usize = V2_MAGIC.len();
/// Length of a v2 record header: u64 offset + u32 size.
pub const V2_RECORD_HEADER_LEN: usize = 12;
/// Largest v2 record data size we accept. The C++ tool makes records of at
/// most its buffer size (`-B`, default 4 MiB); a larger size field is taken
/// as corruption.
pub const V2_MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;
/// Largest record data size [`DiffDdV2Writer`] writes; longer extents are
/// split. Below the C++ tool's default buffer size, though its reader
/// accepts any size.
pub const V2_WRITE_RECORD_LEN: usize = 1024 * 1024;
/// Length of the offset field of a v1 record.
pub const V1_OFFSET_LEN: usize = 8;
/// The C++ tool's default v1 sector size.
pub const V1_DEFAULT_SECTOR_SIZE: u32 = 512;
/// Largest v1 sector size we accept (a sector is held in memory).
pub const V1_MAX_SECTOR_SIZE: u32 = 64 * 1024 * 1024;
/// The readers hand out extents of about this many bytes at most: long v2
/// records are split, consecutive v1 sectors are joined up to it.
pub const EXTENT_CHUNK_LEN: usize = 1024 * 1024;

/// Which of the two C++ diff-dd formats a reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffDdVersion {
    /// Headerless, little-endian offsets, one sector per record.
    V1,
    /// `diff-dd image` header, big-endian offset and size per record.
    V2,
}

impl DiffDdVersion {
    /// The name used on the command line and in `info --json`.
    pub fn name(self) -> &'static str {
        match self {
            DiffDdVersion::V1 => "diff-dd-v1",
            DiffDdVersion::V2 => "diff-dd-v2",
        }
    }
}

impl fmt::Display for DiffDdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from reading or writing C++ diff-dd files.
#[derive(Debug, thiserror::Error)]
pub enum DiffDdError {
    /// Reading the delta failed.
    #[error("cannot read {version} delta at byte {position}")]
    Read {
        version: DiffDdVersion,
        /// Byte position in the delta file.
        position: u64,
        #[source]
        source: io::Error,
    },
    /// Writing the delta failed.
    #[error("cannot write diff-dd-v2 delta at byte {position}")]
    Write {
        /// Byte position in the delta file.
        position: u64,
        #[source]
        source: io::Error,
    },
    /// The file ends before the v2 header is complete.
    #[error("not a diff-dd-v2 delta: only {actual} of {expected} header bytes")]
    TruncatedHeader { expected: usize, actual: usize },
    /// The first 13 bytes are not `diff-dd image`.
    #[error("not a diff-dd-v2 delta: the signature is {found:?}, not \"diff-dd image\"")]
    BadSignature {
        /// The bytes found, lossily decoded.
        found: String,
    },
    /// The header names a version other than 2.
    #[error("unsupported diff-dd version {found} (expected {expected})")]
    UnsupportedVersion { expected: u8, found: u8 },
    /// The v1 sector size is 0 or above [`V1_MAX_SECTOR_SIZE`].
    #[error("invalid diff-dd-v1 sector size {sector_size} (1..={max})")]
    InvalidSectorSize { sector_size: u32, max: u32 },
    /// The file ends inside a record.
    #[error(
        "truncated {version} delta: record {record} at byte {position} needs \
         {expected} more bytes, found {actual}"
    )]
    Truncated {
        version: DiffDdVersion,
        /// Index of the record, from 0.
        record: u64,
        /// Byte position in the delta file where the record starts.
        position: u64,
        /// Bytes still needed after the part already decoded.
        expected: u64,
        /// Bytes found before the end of the file.
        actual: u64,
    },
    /// A v2 record claims more data than [`V2_MAX_RECORD_LEN`].
    #[error(
        "corrupt diff-dd-v2 delta: record {record} at byte {position} claims \
         {size} bytes (limit {limit})"
    )]
    RecordTooLarge {
        record: u64,
        position: u64,
        size: u32,
        limit: u32,
    },
    /// A record starts before the end of the previous one.
    #[error(
        "corrupt {version} delta: record {record} at byte {position} writes \
         offset {offset}, before the end {previous_end} of the previous record"
    )]
    OutOfOrder {
        version: DiffDdVersion,
        record: u64,
        position: u64,
        /// Offset in NEW named by the record.
        offset: u64,
        /// End offset in NEW of the previous record.
        previous_end: u64,
    },
    /// Offset plus size does not fit in a u64.
    #[error(
        "corrupt {version} delta: record {record} at byte {position}: offset \
         {offset} plus {size} bytes overflows"
    )]
    OffsetOverflow {
        version: DiffDdVersion,
        record: u64,
        position: u64,
        offset: u64,
        size: u64,
    },
}

/// True when `prefix` (the first bytes of a file, at least
/// [`V2_HEADER_LEN`] of them) starts with the v2 header.
///
/// Format v1 has no header and cannot be detected; Python diff-dd files
/// start with 32 KiB of NULs and are not detected either.
pub fn detect_v2(prefix: &[u8]) -> bool {
    prefix.starts_with(V2_MAGIC)
}

/// Format-specific reader state.
#[derive(Debug)]
enum State {
    /// v1 with its sector size; `peeked` is the offset of a record whose
    /// offset field was read (to see whether it continues the previous
    /// extent) but whose data was not.
    V1 {
        sector_size: u32,
        peeked: Option<Peeked>,
    },
    /// v2; `pending` is the rest of a record longer than one extent.
    V2 { pending: Option<Pending> },
}

/// A v1 record whose offset was read ahead.
#[derive(Debug, Clone, Copy)]
struct Peeked {
    offset: u64,
    record: u64,
    position: u64,
}

/// The unread rest of a v2 record.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Offset in NEW of the next byte.
    offset: u64,
    /// Data bytes of the record not yet read.
    remaining: u64,
    record: u64,
    /// Byte position of the record header in the delta file.
    position: u64,
}

/// Streaming decoder of a C++ diff-dd v1 or v2 delta into [`Extent`]s.
///
/// ```no_run
/// # use diskdelta::format::diffdd::DiffDdReader;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::io::BufReader::new(std::fs::File::open("diff.img")?);
/// let mut reader = DiffDdReader::v2(file)?;
/// while let Some(extent) = reader.next_extent()? {
///     println!("{} bytes at {}", extent.len(), extent.offset);
/// }
/// let new_size = reader.new_size(1 << 30);
/// # let _ = new_size; Ok(()) }
/// ```
#[derive(Debug)]
pub struct DiffDdReader<R: Read> {
    reader: R,
    state: State,
    /// Bytes consumed from `reader`.
    position: u64,
    /// Records started so far (the index of the next record).
    records: u64,
    /// End offset in NEW of the last record (0 before the first).
    end: u64,
    /// Set once the end of the input was reached cleanly.
    done: bool,
}

impl<R: Read> DiffDdReader<R> {
    /// A reader of a v1 delta made with sector size `sector_size` (the C++
    /// tool's `-s`, default [`V1_DEFAULT_SECTOR_SIZE`]).
    ///
    /// Nothing is read yet. An invalid sector size (0, or above
    /// [`V1_MAX_SECTOR_SIZE`]) is reported by the first
    /// [`next_extent`](Self::next_extent).
    pub fn v1(reader: R, sector_size: u32) -> Self {
        DiffDdReader {
            reader,
            state: State::V1 {
                sector_size,
                peeked: None,
            },
            position: 0,
            records: 0,
            end: 0,
            done: false,
        }
    }

    /// A reader of a v2 delta; reads and checks the 14-byte header.
    ///
    /// # Errors
    ///
    /// [`DiffDdError::TruncatedHeader`], [`DiffDdError::BadSignature`],
    /// [`DiffDdError::UnsupportedVersion`], or [`DiffDdError::Read`].
    pub fn v2(mut reader: R) -> Result<Self, DiffDdError> {
        let mut header = [0u8; V2_HEADER_LEN];
        let n = read_full(&mut reader, &mut header).map_err(|source| DiffDdError::Read {
            version: DiffDdVersion::V2,
            position: 0,
            source,
        })?;
        // Check what is there before complaining about length, so a file
        // of another kind is named as such.
        let sig_len = n.min(V2_SIGNATURE.len());
        if header[..sig_len] != V2_SIGNATURE[..sig_len] {
            return Err(DiffDdError::BadSignature {
                found: String::from_utf8_lossy(&header[..sig_len]).into_owned(),
            });
        }
        if n < V2_HEADER_LEN {
            return Err(DiffDdError::TruncatedHeader {
                expected: V2_HEADER_LEN,
                actual: n,
            });
        }
        let version = header[V2_SIGNATURE.len()];
        if version != V2_VERSION {
            return Err(DiffDdError::UnsupportedVersion {
                expected: V2_VERSION,
                found: version,
            });
        }
        Ok(DiffDdReader {
            reader,
            state: State::V2 { pending: None },
            position: V2_HEADER_LEN as u64,
            records: 0,
            end: 0,
            done: false,
        })
    }

    /// Which format this reader decodes.
    pub fn version(&self) -> DiffDdVersion {
        match self.state {
            State::V1 { .. } => DiffDdVersion::V1,
            State::V2 { .. } => DiffDdVersion::V2,
        }
    }

    /// Records decoded (or started) so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the delta consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// True once [`next_extent`](Self::next_extent) returned `None`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The size of NEW as the C++ tool restores it onto a copy of OLD of
    /// `base_size` bytes: it writes records into that copy in place without
    /// truncating it, so NEW keeps the base size unless a record ends past
    /// it. (The C++ tool only makes deltas of equally sized files, so the
    /// two agree for its own output.)
    ///
    /// Meaningful once [`next_extent`](Self::next_extent) returned `None`;
    /// before that it counts only the records read so far.
    pub fn new_size(&self, base_size: u64) -> u64 {
        base_size.max(self.end)
    }

    /// The next extent of NEW, or `None` at the end of the delta.
    ///
    /// # Errors
    ///
    /// [`DiffDdError::Truncated`] when the file ends inside a record,
    /// [`DiffDdError::OutOfOrder`], [`DiffDdError::OffsetOverflow`],
    /// [`DiffDdError::RecordTooLarge`] (v2),
    /// [`DiffDdError::InvalidSectorSize`] (v1), or [`DiffDdError::Read`].
    /// After an error the reader should not be used further.
    pub fn next_extent(&mut self) -> Result<Option<Extent>, DiffDdError> {
        if self.done {
            return Ok(None);
        }
        match self.state {
            State::V1 {
                sector_size,
                peeked,
            } => self.next_v1(sector_size, peeked),
            State::V2 { pending } => self.next_v2(pending),
        }
    }

    fn read_err(&self, source: io::Error) -> DiffDdError {
        DiffDdError::Read {
            version: self.version(),
            position: self.position,
            source,
        }
    }

    /// Reads into `buf` as far as the input goes, advancing `position`.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DiffDdError> {
        let n = read_full(&mut self.reader, buf).map_err(|e| self.read_err(e))?;
        self.position += n as u64;
        Ok(n)
    }

    /// Checks order and overflow of a record of `size` bytes at `offset`,
    /// then makes it the last record seen.
    fn accept_record(
        &mut self,
        record: u64,
        position: u64,
        offset: u64,
        size: u64,
    ) -> Result<(), DiffDdError> {
        let version = self.version();
        if offset < self.end {
            return Err(DiffDdError::OutOfOrder {
                version,
                record,
                position,
                offset,
                previous_end: self.end,
            });
        }
        let end = offset
            .checked_add(size)
            .ok_or(DiffDdError::OffsetOverflow {
                version,
                record,
                position,
                offset,
                size,
            })?;
        self.end = end;
        Ok(())
    }

    /// Reads the offset field of the next v1 record; `None` at a clean end.
    fn read_v1_offset(&mut self) -> Result<Option<Peeked>, DiffDdError> {
        let position = self.position;
        let mut field = [0u8; V1_OFFSET_LEN];
        let n = self.fill(&mut field)?;
        if n == 0 {
            return Ok(None);
        }
        if n < V1_OFFSET_LEN {
            return Err(DiffDdError::Truncated {
                version: DiffDdVersion::V1,
                record: self.records,
                position,
                expected: V1_OFFSET_LEN as u64,
                actual: n as u64,
            });
        }
        let record = self.records;
        self.records += 1;
        Ok(Some(Peeked {
            offset: u64::from_le_bytes(field),
            record,
            position,
        }))
    }

    /// Appends the sector of record `rec` to `data`.
    fn read_v1_sector(
        &mut self,
        rec: Peeked,
        sector_size: u32,
        data: &mut Vec<u8>,
    ) -> Result<(), DiffDdError> {
        self.accept_record(rec.record, rec.position, rec.offset, u64::from(sector_size))?;
        let start = data.len();
        data.resize(start + sector_size as usize, 0);
        let n = self.fill(&mut data[start..])?;
        if n < sector_size as usize {
            return Err(DiffDdError::Truncated {
                version: DiffDdVersion::V1,
                record: rec.record,
                position: rec.position,
                expected: u64::from(sector_size),
                actual: n as u64,
            });
        }
        Ok(())
    }

    fn next_v1(
        &mut self,
        sector_size: u32,
        peeked: Option<Peeked>,
    ) -> Result<Option<Extent>, DiffDdError> {
        if sector_size == 0 || sector_size > V1_MAX_SECTOR_SIZE {
            return Err(DiffDdError::InvalidSectorSize {
                sector_size,
                max: V1_MAX_SECTOR_SIZE,
            });
        }
        self.state = State::V1 {
            sector_size,
            peeked: None,
        };
        let first = match peeked {
            Some(p) => p,
            None => match self.read_v1_offset()? {
                Some(p) => p,
                None => {
                    self.done = true;
                    return Ok(None);
                }
            },
        };
        let sector = sector_size as usize;
        let mut data = Vec::with_capacity(sector);
        self.read_v1_sector(first, sector_size, &mut data)?;
        // Join directly following sectors, so callers get large extents
        // instead of one per 512 bytes.
        while data.len() + sector <= EXTENT_CHUNK_LEN {
            match self.read_v1_offset()? {
                None => {
                    self.done = true;
                    break;
                }
                Some(next) if next.offset == self.end => {
                    self.read_v1_sector(next, sector_size, &mut data)?;
                }
                Some(next) => {
                    self.state = State::V1 {
                        sector_size,
                        peeked: Some(next),
                    };
                    break;
                }
            }
        }
        Ok(Some(Extent {
            offset: first.offset,
            data: ExtentData::Bytes(data),
        }))
    }

    /// Reads the header of the next v2 record; `None` at a clean end.
    fn read_v2_record_header(&mut self) -> Result<Option<Pending>, DiffDdError> {
        loop {
            let position = self.position;
            let mut header = [0u8; V2_RECORD_HEADER_LEN];
            let n = self.fill(&mut header)?;
            if n == 0 {
                return Ok(None);
            }
            let record = self.records;
            if n < V2_RECORD_HEADER_LEN {
                return Err(DiffDdError::Truncated {
                    version: DiffDdVersion::V2,
                    record,
                    position,
                    expected: V2_RECORD_HEADER_LEN as u64,
                    actual: n as u64,
                });
            }
            self.records += 1;
            let mut offset_field = [0u8; 8];
            offset_field.copy_from_slice(&header[..8]);
            let mut size_field = [0u8; 4];
            size_field.copy_from_slice(&header[8..]);
            let offset = u64::from_be_bytes(offset_field);
            let size = u32::from_be_bytes(size_field);
            if size > V2_MAX_RECORD_LEN {
                return Err(DiffDdError::RecordTooLarge {
                    record,
                    position,
                    size,
                    limit: V2_MAX_RECORD_LEN,
                });
            }
            self.accept_record(record, position, offset, u64::from(size))?;
            // The C++ tool never writes empty records and restores them as
            // nothing; skip them.
            if size > 0 {
                return Ok(Some(Pending {
                    offset,
                    remaining: u64::from(size),
                    record,
                    position,
                }));
            }
        }
    }

    fn next_v2(&mut self, pending: Option<Pending>) -> Result<Option<Extent>, DiffDdError> {
        let rec = match pending {
            Some(p) => p,
            None => match self.read_v2_record_header()? {
                Some(p) => p,
                None => {
                    self.done = true;
                    return Ok(None);
                }
            },
        };
        // `remaining` is at most V2_MAX_RECORD_LEN, so this fits in usize.
        let take = rec.remaining.min(EXTENT_CHUNK_LEN as u64) as usize;
        let mut data = vec![0u8; take];
        let n = self.fill(&mut data)?;
        if n < take {
            return Err(DiffDdError::Truncated {
                version: DiffDdVersion::V2,
                record: rec.record,
                position: rec.position,
                expected: rec.remaining,
                actual: n as u64,
            });
        }
        let rest = rec.remaining - take as u64;
        self.state = State::V2 {
            pending: (rest > 0).then_some(Pending {
                offset: rec.offset + take as u64,
                remaining: rest,
                ..rec
            }),
        };
        Ok(Some(Extent {
            offset: rec.offset,
            data: ExtentData::Bytes(data),
        }))
    }
}

/// Writer of C++ diff-dd v2 deltas, readable by the C++ tool's `restore`.
///
/// Extents must be written in increasing, non-overlapping order. The format
/// has no zero records: [`write_zeros`](Self::write_zeros) writes literal
/// zero bytes. Records are at most [`V2_WRITE_RECORD_LEN`] bytes. Each
/// record is two `write_all` calls, so give it a buffered writer.
#[derive(Debug)]
pub struct DiffDdV2Writer<W: Write> {
    writer: W,
    /// Bytes written so far.
    position: u64,
    /// Records written so far.
    records: u64,
    /// End offset in NEW of the last record.
    end: u64,
}

impl<W: Write> DiffDdV2Writer<W> {
    /// Starts a v2 delta by writing its header.
    ///
    /// # Errors
    ///
    /// [`DiffDdError::Write`] when the header cannot be written.
    pub fn new(writer: W) -> Result<Self, DiffDdError> {
        let mut this = DiffDdV2Writer {
            writer,
            position: 0,
            records: 0,
            end: 0,
        };
        this.put(V2_MAGIC)?;
        Ok(this)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), DiffDdError> {
        self.writer
            .write_all(bytes)
            .map_err(|source| DiffDdError::Write {
                position: self.position,
                source,
            })?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Checks that `len` bytes at `offset` follow the previous extent.
    fn check(&self, offset: u64, len: u64) -> Result<(), DiffDdError> {
        if offset < self.end {
            return Err(DiffDdError::OutOfOrder {
                version: DiffDdVersion::V2,
                record: self.records,
                position: self.position,
                offset,
                previous_end: self.end,
            });
        }
        offset.checked_add(len).ok_or(DiffDdError::OffsetOverflow {
            version: DiffDdVersion::V2,
            record: self.records,
            position: self.position,
            offset,
            size: len,
        })?;
        Ok(())
    }

    fn put_record(&mut self, offset: u64, data: &[u8]) -> Result<(), DiffDdError> {
        debug_assert!(!data.is_empty() && data.len() <= V2_WRITE_RECORD_LEN);
        let mut header = [0u8; V2_RECORD_HEADER_LEN];
        header[..8].copy_from_slice(&offset.to_be_bytes());
        // At most V2_WRITE_RECORD_LEN, so the cast is lossless.
        header[8..].copy_from_slice(&(data.len() as u32).to_be_bytes());
        self.put(&header)?;
        self.put(data)?;
        self.records += 1;
        self.end = offset + data.len() as u64;
        Ok(())
    }

    /// Writes `data` as the bytes of NEW at `offset`, split into records
    /// of at most [`V2_WRITE_RECORD_LEN`] bytes. Empty data writes nothing.
    ///
    /// # Errors
    ///
    /// [`DiffDdError::OutOfOrder`] if `offset` is before the end of the
    /// previous extent, [`DiffDdError::OffsetOverflow`], or
    /// [`DiffDdError::Write`].
    pub fn write_extent(&mut self, offset: u64, data: &[u8]) -> Result<(), DiffDdError> {
        self.check(offset, data.len() as u64)?;
        let mut at = offset;
        for chunk in data.chunks(V2_WRITE_RECORD_LEN) {
            self.put_record(at, chunk)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Writes `len` zero bytes of NEW at `offset` as literal zeros (the
    /// format has no zero records), without holding them all in memory.
    ///
    /// # Errors
    ///
    /// As [`write_extent`](Self::write_extent).
    pub fn write_zeros(&mut self, offset: u64, len: u64) -> Result<(), DiffDdError> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let zeros = vec![0u8; len.min(V2_WRITE_RECORD_LEN as u64) as usize];
        let mut at = offset;
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.put_record(at, &zeros[..n])?;
            at += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Writes one [`Extent`], bytes or zeros.
    ///
    /// # Errors
    ///
    /// As [`write_extent`](Self::write_extent).
    pub fn write(&mut self, extent: &Extent) -> Result<(), DiffDdError> {
        match &extent.data {
            ExtentData::Bytes(bytes) => self.write_extent(extent.offset, bytes),
            ExtentData::Zeros(len) => self.write_zeros(extent.offset, *len),
            ExtentData::Referenced(_) => Err(DiffDdError::Write {
                position: self.position(),
                source: io::Error::other("a reference-compressed record must be decoded first"),
            }),
        }
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes written so far, header included.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Flushes and returns the inner writer. The format has no trailer.
    ///
    /// # Errors
    ///
    /// [`DiffDdError::Write`] when the flush fails.
    pub fn finish(mut self) -> Result<W, DiffDdError> {
        self.writer.flush().map_err(|source| DiffDdError::Write {
            position: self.position,
            source,
        })?;
        Ok(self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic test bytes.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// Reads every extent, or the first error.
    fn collect<R: Read>(mut reader: DiffDdReader<R>) -> Result<Vec<Extent>, DiffDdError> {
        let mut out = Vec::new();
        while let Some(extent) = reader.next_extent()? {
            out.push(extent);
        }
        // After the end it stays at the end.
        assert!(reader.next_extent()?.is_none());
        Ok(out)
    }

    /// Joins directly adjacent byte extents into (offset, bytes) runs, so
    /// results can be compared regardless of how they were split.
    fn runs(extents: &[Extent]) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for e in extents {
            let data = match &e.data {
                ExtentData::Bytes(b) => b.clone(),
                ExtentData::Zeros(n) => vec![0; *n as usize],
                ExtentData::Referenced(_) => panic!("diff-dd formats have no reference records"),
            };
            if data.is_empty() {
                continue;
            }
            match out.last_mut() {
                Some((off, prev)) if *off + prev.len() as u64 == e.offset => {
                    prev.extend_from_slice(&data)
                }
                _ => out.push((e.offset, data)),
            }
        }
        out
    }

    /// Checks the reader's promise: strictly increasing, non-overlapping,
    /// non-empty extents.
    fn assert_ordered(extents: &[Extent]) {
        let mut end = 0;
        for e in extents {
            assert!(!e.is_empty(), "empty extent {e:?}");
            assert!(e.offset >= end, "extent at {} before end {end}", e.offset);
            end = e.end();
        }
    }

    fn v2_file(extents: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut w = DiffDdV2Writer::new(Vec::new()).expect("header");
        for (off, data) in extents {
            w.write_extent(*off, data).expect("write");
        }
        w.finish().expect("finish")
    }

    fn v1_file(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (off, data) in records {
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn v2_header_bytes() {
        let file = v2_file(&[(0x0102, vec![0xAA, 0xBB])]);
        let mut expected = b"diff-dd image\x02".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x01, 0x02]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xAA, 0xBB]);
        assert_eq!(file, expected);
        assert!(detect_v2(&file));
        assert!(!detect_v2(&file[..13]));
        assert!(!detect_v2(b"diff-dd image\x01"));
    }

    /// The C++ project's own test (tests/400-*.sh): four zero sectors with
    /// bytes 0, 1535 and 1792 set to 0xFF give three one-byte records.
    #[test]
    fn v2_matches_cpp_test_case() {
        let file = v2_file(&[(0, vec![0xFF]), (1535, vec![0xFF]), (1792, vec![0xFF])]);
        assert_eq!(file.len(), 14 + 3 * 13);
        let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
        assert_eq!(
            runs(&got),
            vec![(0, vec![0xFF]), (1535, vec![0xFF]), (1792, vec![0xFF])]
        );
    }

    #[test]
    fn v2_round_trip_and_new_size() {
        let input = vec![
            (0, bytes(100, 1)),
            (100, bytes(3, 2)),
            (4096, bytes(4096, 3)),
            (1 << 40, bytes(1, 4)),
        ];
        let file = v2_file(&input);
        let mut reader = DiffDdReader::v2(&file[..]).expect("header");
        let mut got = Vec::new();
        while let Some(e) = reader.next_extent().expect("decode") {
            got.push(e);
        }
        assert_ordered(&got);
        assert_eq!(got.len(), 4, "one extent per record");
        assert_eq!(
            runs(&got),
            vec![
                (0, [bytes(100, 1), bytes(3, 2)].concat()),
                (4096, bytes(4096, 3)),
                (1 << 40, bytes(1, 4)),
            ]
        );
        assert_eq!(reader.records(), 4);
        assert!(reader.is_done());
        assert_eq!(reader.position(), file.len() as u64);
        assert_eq!(reader.new_size(1 << 41), 1 << 41);
        assert_eq!(reader.new_size(10), (1 << 40) + 1);
    }

    #[test]
    fn v2_empty_delta() {
        let file = v2_file(&[]);
        assert_eq!(file, V2_MAGIC.to_vec());
        let mut reader = DiffDdReader::v2(&file[..]).expect("header");
        assert!(reader.next_extent().expect("decode").is_none());
        assert_eq!(reader.new_size(1234), 1234);
    }

    #[test]
    fn v2_writer_splits_and_reader_chunks() {
        let big = bytes(V2_WRITE_RECORD_LEN * 2 + 5, 9);
        let file = v2_file(&[(7, big.clone())]);
        assert_eq!(
            file.len(),
            V2_HEADER_LEN + 3 * V2_RECORD_HEADER_LEN + big.len()
        );
        let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
        assert!(got.iter().all(|e| e.len() <= EXTENT_CHUNK_LEN as u64));
        assert_eq!(runs(&got), vec![(7, big)]);
    }

    #[test]
    fn v2_reader_splits_long_foreign_record() {
        // A 3 MiB + 1 record, as the C++ tool makes with its 4 MiB buffer.
        let data = bytes(3 * EXTENT_CHUNK_LEN + 1, 5);
        let mut file = V2_MAGIC.to_vec();
        file.extend_from_slice(&100u64.to_be_bytes());
        file.extend_from_slice(&(data.len() as u32).to_be_bytes());
        file.extend_from_slice(&data);
        let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
        assert_eq!(got.len(), 4);
        assert_ordered(&got);
        assert_eq!(runs(&got), vec![(100, data)]);
    }

    #[test]
    fn v2_zeros_are_literal() {
        let mut w = DiffDdV2Writer::new(Vec::new()).expect("header");
        w.write(&Extent {
            offset: 10,
            data: ExtentData::Zeros(V2_WRITE_RECORD_LEN as u64 + 3),
        })
        .expect("zeros");
        w.write_zeros(V2_WRITE_RECORD_LEN as u64 + 13, 0)
            .expect("empty");
        let file = w.finish().expect("finish");
        let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
        assert_eq!(runs(&got), vec![(10, vec![0; V2_WRITE_RECORD_LEN + 3])]);
    }

    #[test]
    fn v2_writer_rejects_out_of_order() {
        let mut w = DiffDdV2Writer::new(Vec::new()).expect("header");
        w.write_extent(100, &[1, 2, 3]).expect("first");
        let err = w.write_extent(102, &[4]).expect_err("overlap");
        assert!(matches!(
            err,
            DiffDdError::OutOfOrder {
                offset: 102,
                previous_end: 103,
                ..
            }
        ));
        w.write_extent(103, &[4]).expect("adjacent is fine");
        assert!(matches!(
            w.write_extent(u64::MAX, &[1]),
            Err(DiffDdError::OffsetOverflow { .. })
        ));
    }

    #[test]
    fn v2_bad_headers() {
        assert!(matches!(
            DiffDdReader::v2(&b"diff-dd imag"[..]),
            Err(DiffDdError::TruncatedHeader { actual: 12, .. })
        ));
        assert!(matches!(
            DiffDdReader::v2(&b""[..]),
            Err(DiffDdError::TruncatedHeader { actual: 0, .. })
        ));
        assert!(matches!(
            DiffDdReader::v2(&b"DDELTA\0\0\0\0\0\0\0\0\0\0"[..]),
            Err(DiffDdError::BadSignature { .. })
        ));
        assert!(matches!(
            DiffDdReader::v2(&b"diff-dd image\x03"[..]),
            Err(DiffDdError::UnsupportedVersion { found: 3, .. })
        ));
    }

    #[test]
    fn v2_out_of_order_and_overlap_rejected() {
        let record = |off: u64, data: &[u8]| {
            let mut r = off.to_be_bytes().to_vec();
            r.extend_from_slice(&(data.len() as u32).to_be_bytes());
            r.extend_from_slice(data);
            r
        };
        for (second, name) in [(50u64, "backwards"), (102, "overlapping"), (100, "same")] {
            let file = [
                V2_MAGIC.to_vec(),
                record(100, &[1, 2, 3]),
                record(second, &[4]),
            ]
            .concat();
            let err = collect(DiffDdReader::v2(&file[..]).expect("header")).expect_err(name);
            match err {
                DiffDdError::OutOfOrder {
                    record,
                    position,
                    offset,
                    previous_end,
                    ..
                } => {
                    assert_eq!((record, position), (1, 14 + 15), "{name}");
                    assert_eq!((offset, previous_end), (second, 103), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let overflow = [V2_MAGIC.to_vec(), record(u64::MAX - 1, &[1, 2])].concat();
        assert!(matches!(
            collect(DiffDdReader::v2(&overflow[..]).expect("header")),
            Err(DiffDdError::OffsetOverflow { .. })
        ));
    }

    #[test]
    fn v2_huge_record_rejected_without_allocating() {
        let mut file = V2_MAGIC.to_vec();
        file.extend_from_slice(&0u64.to_be_bytes());
        file.extend_from_slice(&(V2_MAX_RECORD_LEN + 1).to_be_bytes());
        let err = collect(DiffDdReader::v2(&file[..]).expect("header")).expect_err("too large");
        assert!(matches!(
            err,
            DiffDdError::RecordTooLarge {
                record: 0,
                position: 14,
                ..
            }
        ));
    }

    #[test]
    fn v2_empty_records_are_skipped() {
        let mut file = V2_MAGIC.to_vec();
        file.extend_from_slice(&5u64.to_be_bytes());
        file.extend_from_slice(&0u32.to_be_bytes());
        file.extend_from_slice(&5u64.to_be_bytes());
        file.extend_from_slice(&1u32.to_be_bytes());
        file.push(9);
        let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
        assert_eq!(runs(&got), vec![(5, vec![9])]);
    }

    /// Record boundaries (byte positions where a record starts) of a v2
    /// file written by our writer from `input`, all records < 1 MiB.
    fn v2_boundaries(input: &[(u64, Vec<u8>)]) -> Vec<(usize, usize)> {
        let mut pos = V2_HEADER_LEN;
        let mut out = vec![(pos, 0)];
        for (i, (_, data)) in input.iter().enumerate() {
            pos += V2_RECORD_HEADER_LEN + data.len();
            out.push((pos, i + 1));
        }
        out
    }

    #[test]
    fn v2_truncated_at_every_byte() {
        let input = vec![(3, bytes(40, 1)), (100, bytes(1, 2)), (200, bytes(17, 3))];
        let file = v2_file(&input);
        let boundaries = v2_boundaries(&input);
        for cut in 0..file.len() {
            let short = &file[..cut];
            let result = DiffDdReader::v2(short).and_then(collect);
            match boundaries.iter().find(|(pos, _)| *pos == cut) {
                // A cut between records cannot be detected: the format has
                // no count or end marker. It must decode the records before.
                Some((_, n)) => {
                    let got = result.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                    assert_eq!(runs(&got), runs_of(&input[..*n]), "cut {cut}");
                }
                None => {
                    let err = result.expect_err("truncation must be an error");
                    assert!(
                        matches!(
                            err,
                            DiffDdError::Truncated { .. }
                                | DiffDdError::TruncatedHeader { .. }
                                | DiffDdError::BadSignature { .. }
                        ),
                        "cut {cut}: {err:?}"
                    );
                }
            }
        }
    }

    fn runs_of(input: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        let extents: Vec<Extent> = input
            .iter()
            .map(|(o, d)| Extent {
                offset: *o,
                data: ExtentData::Bytes(d.clone()),
            })
            .collect();
        runs(&extents)
    }

    #[test]
    fn v2_truncation_error_names_record_and_position() {
        let file = v2_file(&[(0, bytes(10, 1)), (20, bytes(10, 2))]);
        let cut = &file[..file.len() - 3];
        let err = collect(DiffDdReader::v2(cut).expect("header")).expect_err("truncated");
        match err {
            DiffDdError::Truncated {
                record,
                position,
                expected,
                actual,
                ..
            } => {
                assert_eq!((record, position), (1, 14 + 22));
                assert_eq!((expected, actual), (10, 7));
            }
            other => panic!("{other:?}"),
        }
        let msg = DiffDdError::Truncated {
            version: DiffDdVersion::V2,
            record: 1,
            position: 36,
            expected: 10,
            actual: 7,
        }
        .to_string();
        assert!(msg.contains("record 1") && msg.contains("byte 36"), "{msg}");
    }

    #[test]
    fn v1_round_trip_coalesces_adjacent_sectors() {
        let s = 512usize;
        let recs = vec![
            (0u64, bytes(s, 1)),
            (512, bytes(s, 2)),
            (1024, bytes(s, 3)),
            (4096, bytes(s, 4)),
            (8192, bytes(s, 5)),
            (8704, bytes(s, 6)),
        ];
        let file = v1_file(&recs);
        let mut reader = DiffDdReader::v1(&file[..], 512);
        let mut got = Vec::new();
        while let Some(e) = reader.next_extent().expect("decode") {
            got.push(e);
        }
        assert_ordered(&got);
        assert_eq!(got.len(), 3, "adjacent sectors are joined");
        assert_eq!(runs(&got), runs_of(&recs));
        assert_eq!(reader.records(), 6);
        assert_eq!(reader.new_size(16384), 16384);
        assert_eq!(reader.new_size(0), 9216);
        assert_eq!(reader.version(), DiffDdVersion::V1);
    }

    #[test]
    fn v1_joined_extents_stay_bounded() {
        let s = 4096usize;
        let n = EXTENT_CHUNK_LEN / s * 2 + 3;
        let recs: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|i| ((i * s) as u64, bytes(s, i as u8)))
            .collect();
        let file = v1_file(&recs);
        let got = collect(DiffDdReader::v1(&file[..], s as u32)).expect("decode");
        assert!(got.iter().all(|e| e.len() <= EXTENT_CHUNK_LEN as u64));
        assert_eq!(got.len(), 3);
        assert_eq!(runs(&got), runs_of(&recs));
    }

    #[test]
    fn v1_empty_and_bad_sector_size() {
        assert!(collect(DiffDdReader::v1(&[][..], 512))
            .expect("empty")
            .is_empty());
        for bad in [0, V1_MAX_SECTOR_SIZE + 1] {
            assert!(matches!(
                DiffDdReader::v1(&[0u8; 16][..], bad).next_extent(),
                Err(DiffDdError::InvalidSectorSize { .. })
            ));
        }
    }

    #[test]
    fn v1_out_of_order_rejected() {
        for (second, name) in [(0u64, "same"), (256, "overlap"), (0x100000, "fine")] {
            let file = v1_file(&[(512, bytes(512, 1)), (second, bytes(512, 2))]);
            let result = collect(DiffDdReader::v1(&file[..], 512));
            if name == "fine" {
                result.expect("ordered");
                continue;
            }
            match result.expect_err(name) {
                DiffDdError::OutOfOrder {
                    record,
                    position,
                    offset,
                    previous_end,
                    ..
                } => {
                    assert_eq!((record, position), (1, 520), "{name}");
                    assert_eq!((offset, previous_end), (second, 1024), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let overflow = v1_file(&[(u64::MAX - 10, bytes(512, 1))]);
        assert!(matches!(
            collect(DiffDdReader::v1(&overflow[..], 512)),
            Err(DiffDdError::OffsetOverflow { .. })
        ));
    }

    #[test]
    fn v1_truncated_at_every_byte() {
        let s = 16usize;
        let recs = vec![(0u64, bytes(s, 1)), (16, bytes(s, 2)), (64, bytes(s, 3))];
        let file = v1_file(&recs);
        for cut in 0..file.len() {
            let result = collect(DiffDdReader::v1(&file[..cut], s as u32));
            if cut % (8 + s) == 0 {
                // Between records: undetectable, decodes the records before.
                let got = result.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                assert_eq!(runs(&got), runs_of(&recs[..cut / (8 + s)]));
            } else {
                let err = result.expect_err("truncation must be an error");
                match err {
                    DiffDdError::Truncated {
                        record, position, ..
                    } => {
                        assert_eq!(record, (cut / (8 + s)) as u64, "cut {cut}");
                        assert_eq!(position, (cut / (8 + s) * (8 + s)) as u64, "cut {cut}");
                    }
                    other => panic!("cut {cut}: {other:?}"),
                }
            }
        }
    }

    /// A reader that hands out at most 3 bytes per call, like a pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_are_fine() {
        let input = vec![(5, bytes(1000, 1)), (2000, bytes(10, 2))];
        let file = v2_file(&input);
        let got = collect(DiffDdReader::v2(Trickle(&file)).expect("header")).expect("v2");
        assert_eq!(runs(&got), runs_of(&input));

        let recs = vec![(0u64, bytes(512, 1)), (1024, bytes(512, 2))];
        let file = v1_file(&recs);
        let got = collect(DiffDdReader::v1(Trickle(&file), 512)).expect("v1");
        assert_eq!(runs(&got), runs_of(&recs));
    }

    /// Sorted, non-overlapping extents from (gap, data) pairs.
    fn layout(parts: Vec<(u16, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let mut at = 0u64;
        parts
            .into_iter()
            .map(|(gap, data)| {
                let off = at + u64::from(gap);
                at = off + data.len() as u64;
                (off, data)
            })
            .collect()
    }

    const GOLDEN_OLD: &[u8] = include_bytes!("../../tests/golden/legacy/old.img");
    const GOLDEN_NEW: &[u8] = include_bytes!("../../tests/golden/legacy/new.img");
    const GOLDEN_V2: &[u8] = include_bytes!("../../tests/golden/legacy/new.diffdd-v2");
    const GOLDEN_V1: &[u8] = include_bytes!("../../tests/golden/legacy/new.diffdd-v1-s512");

    /// OLD with the reader's extents written over it, sized as the C++
    /// tool restores it.
    fn restore<R: Read>(mut reader: DiffDdReader<R>, old: &[u8]) -> Vec<u8> {
        let mut out = old.to_vec();
        while let Some(e) = reader.next_extent().expect("decode") {
            let (start, end) = (e.offset as usize, e.end() as usize);
            let ExtentData::Bytes(b) = e.data else {
                panic!("diff-dd has no zero records")
            };
            if out.len() < end {
                out.resize(end, 0);
            }
            out[start..end].copy_from_slice(&b);
        }
        out.resize(reader.new_size(old.len() as u64) as usize, 0);
        out
    }

    #[test]
    fn golden_v2_restores_new() {
        assert!(detect_v2(GOLDEN_V2));
        let reader = DiffDdReader::v2(GOLDEN_V2).expect("header");
        assert_eq!(restore(reader, GOLDEN_OLD), GOLDEN_NEW);
    }

    #[test]
    fn golden_v1_restores_new() {
        assert!(!detect_v2(GOLDEN_V1));
        let reader = DiffDdReader::v1(GOLDEN_V1, 512);
        assert_eq!(restore(reader, GOLDEN_OLD), GOLDEN_NEW);
        // Another sector size cannot decode it.
        assert!(collect(DiffDdReader::v1(GOLDEN_V1, 4096)).is_err());
    }

    /// Given the records the C++ tool would choose (runs of differing
    /// bytes, joined across gaps of at most 12 bytes), our writer makes the
    /// golden file byte for byte.
    #[test]
    fn golden_v2_is_what_the_writer_makes() {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < GOLDEN_NEW.len() {
            if GOLDEN_OLD[i] == GOLDEN_NEW[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < GOLDEN_NEW.len() && GOLDEN_OLD[i] != GOLDEN_NEW[i] {
                i += 1;
            }
            match runs.last_mut() {
                Some((_, end)) if start - *end <= V2_RECORD_HEADER_LEN => *end = i,
                _ => runs.push((start, i)),
            }
        }
        let mut w = DiffDdV2Writer::new(Vec::new()).expect("header");
        for (start, end) in runs {
            w.write_extent(start as u64, &GOLDEN_NEW[start..end])
                .expect("write");
        }
        assert_eq!(w.finish().expect("finish"), GOLDEN_V2);
    }

    proptest! {
        #[test]
        fn prop_v2_round_trip(
            parts in proptest::collection::vec(
                (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..2000)),
                0..20,
            ),
        ) {
            let input = layout(parts);
            let file = v2_file(&input);
            let got = collect(DiffDdReader::v2(&file[..]).expect("header")).expect("decode");
            assert_ordered(&got);
            prop_assert_eq!(runs(&got), runs_of(&input));
        }

        #[test]
        fn prop_v1_round_trip(
            sector_exp in 0u32..10,
            picks in proptest::collection::vec((0u8..4, any::<u8>()), 0..40),
        ) {
            let s = 1usize << sector_exp;
            let mut recs = Vec::new();
            let mut sector = 0u64;
            for (skip, seed) in picks {
                sector += u64::from(skip);
                recs.push((sector * s as u64, bytes(s, seed)));
                sector += 1;
            }
            let file = v1_file(&recs);
            let got = collect(DiffDdReader::v1(&file[..], s as u32)).expect("decode");
            assert_ordered(&got);
            prop_assert_eq!(runs(&got), runs_of(&recs));
        }

        #[test]
        fn prop_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v2 = V2_MAGIC.to_vec();
            v2.extend_from_slice(&data);
            if let Ok(reader) = DiffDdReader::v2(&v2[..]) {
                let _ = collect(reader);
            }
            let _ = collect(DiffDdReader::v1(&data[..], 7));
        }
    }
}
