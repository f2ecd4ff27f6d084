//! Any supported delta format, read as one stream of extents in NEW order.

use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use super::DeltaError;
use crate::format::delta::{self, DeltaReader, Header, Trailer};
use crate::format::diffdd::{self, DiffDdReader};
use crate::format::diffdd_py::PyDiffDdReader;
use crate::format::Extent;

/// Boxed byte stream of a delta.
pub type DeltaStream = Box<dyn Read + Send>;

/// Supported delta formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaKind {
    /// diskdelta's own format (`docs/formats/delta.md`).
    Native,
    /// C++ diff-dd, format v1 (no header; one sector per record).
    DiffDdV1,
    /// C++ diff-dd, format v2 ("diff-dd image" header).
    DiffDdV2,
    /// Python diff-dd 1.0.4.
    DiffDdPy,
}

impl DeltaKind {
    /// The name used on the command line and in `info`.
    pub fn name(self) -> &'static str {
        match self {
            DeltaKind::Native => "diskdelta",
            DeltaKind::DiffDdV1 => "diff-dd-v1",
            DeltaKind::DiffDdV2 => "diff-dd-v2",
            DeltaKind::DiffDdPy => "diff-dd-py",
        }
    }

    /// Parses a name given with `--format`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            DeltaKind::Native,
            DeltaKind::DiffDdV1,
            DeltaKind::DiffDdV2,
            DeltaKind::DiffDdPy,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// True when the format carries checksums and image digests.
    pub fn has_checksums(self) -> bool {
        self == DeltaKind::Native
    }

    /// Default record granularity of the foreign formats.
    pub fn default_block_size(self) -> u32 {
        match self {
            DeltaKind::DiffDdV1 => 512,
            DeltaKind::DiffDdPy => 8192,
            _ => 4096,
        }
    }
}

/// One record: its extent and how it was stored.
#[derive(Debug)]
pub struct RecordInfo {
    /// The decoded, verified extent.
    pub extent: Extent,
    /// `raw`, `zstd` or `zero`.
    pub encoding: &'static str,
    /// Payload bytes in the delta.
    pub stored: u64,
}

impl RecordInfo {
    fn literal(extent: Extent) -> Self {
        let stored = extent.len();
        RecordInfo {
            extent,
            encoding: "raw",
            stored,
        }
    }
}

enum Reader {
    Native(
        Box<DeltaReader<DeltaStream>>,
        Box<zstd::bulk::Decompressor<'static>>,
    ),
    V1(DiffDdReader<DeltaStream>),
    V2(DiffDdReader<DeltaStream>),
    Py(PyDiffDdReader<DeltaStream>),
}

/// A delta of any supported format being read.
pub struct DeltaSource {
    kind: DeltaKind,
    path: PathBuf,
    reader: Reader,
    ended: bool,
    last_end: u64,
}

impl std::fmt::Debug for DeltaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaSource")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish()
    }
}

impl DeltaSource {
    /// Opens a delta stream. The format is detected from its first bytes
    /// unless `kind` is given; `block_size` is the record size of formats
    /// that do not store one (default per format).
    ///
    /// # Errors
    /// [`DeltaError::UnknownFormat`], or the format's header errors.
    pub fn open(
        path: &Path,
        stream: DeltaStream,
        kind: Option<DeltaKind>,
        block_size: Option<u32>,
    ) -> Result<DeltaSource, DeltaError> {
        let mut stream: DeltaStream = Box::new(BufReader::with_capacity(1 << 20, stream));
        let mut prefix = vec![0u8; 64];
        let mut filled = 0;
        while filled < prefix.len() {
            match stream.read(&mut prefix[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(DeltaError::Io(crate::io::IoError::Read {
                        path: path.into(),
                        offset: filled as u64,
                        source,
                    }))
                }
            }
        }
        prefix.truncate(filled);
        let kind = match kind {
            Some(k) => k,
            None if prefix.starts_with(&delta::MAGIC) => DeltaKind::Native,
            None if diffdd::detect_v2(&prefix) => DeltaKind::DiffDdV2,
            None => return Err(DeltaError::UnknownFormat { path: path.into() }),
        };
        let stream: DeltaStream = Box::new(Cursor::new(prefix).chain(stream));
        let block = block_size.unwrap_or_else(|| kind.default_block_size());
        let reader = match kind {
            DeltaKind::Native => Reader::Native(
                Box::new(DeltaReader::new(stream)?),
                Box::new(zstd::bulk::Decompressor::new().map_err(DeltaError::Write)?),
            ),
            DeltaKind::DiffDdV1 => Reader::V1(DiffDdReader::v1(stream, block)),
            DeltaKind::DiffDdV2 => Reader::V2(DiffDdReader::v2(stream)?),
            DeltaKind::DiffDdPy => Reader::Py(PyDiffDdReader::new(stream, block)?),
        };
        Ok(DeltaSource {
            kind,
            path: path.into(),
            reader,
            ended: false,
            last_end: 0,
        })
    }

    /// The format.
    pub fn kind(&self) -> DeltaKind {
        self.kind
    }

    /// The native header, for native deltas.
    pub fn header(&self) -> Option<&Header> {
        match &self.reader {
            Reader::Native(r, _) => Some(r.header()),
            _ => None,
        }
    }

    /// The native trailer, after the end was reached.
    pub fn trailer(&self) -> Option<&Trailer> {
        match &self.reader {
            Reader::Native(r, _) => r.trailer(),
            _ => None,
        }
    }

    /// True once [`DeltaSource::next_extent`] returned `None`.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next extent, decoded and (for native deltas) verified.
    ///
    /// # Errors
    /// Any format error: truncation, corruption, checksum mismatch.
    pub fn next_extent(&mut self) -> Result<Option<Extent>, DeltaError> {
        Ok(self.next_record()?.map(|r| r.extent))
    }

    /// The next record with how it was stored.
    ///
    /// # Errors
    /// As [`DeltaSource::next_extent`].
    pub fn next_record(&mut self) -> Result<Option<RecordInfo>, DeltaError> {
        if self.ended {
            return Ok(None);
        }
        let next = match &mut self.reader {
            Reader::Native(r, d) => match r.next_record()? {
                Some(raw) => {
                    let encoding = raw.encoding();
                    let stored = raw.stored_len();
                    let extent = raw.decode(d)?;
                    Some(RecordInfo {
                        extent,
                        encoding,
                        stored,
                    })
                }
                None => None,
            },
            Reader::V1(r) | Reader::V2(r) => r.next_extent()?.map(RecordInfo::literal),
            Reader::Py(r) => r.next_extent()?.map(RecordInfo::literal),
        };
        match &next {
            Some(r) => self.last_end = r.extent.end(),
            None => self.ended = true,
        }
        Ok(next)
    }

    /// True when NEW is at least as large as the base (formats without a
    /// NEW size: the C++ diff-dd formats).
    pub fn base_relative(&self) -> bool {
        matches!(self.reader, Reader::V1(_) | Reader::V2(_))
    }

    /// NEW's size when it is known: from the native header or trailer, or
    /// after the end for the diff-dd formats (those of C++ diff-dd also need
    /// the base size).
    pub fn new_size(&self, base_size: Option<u64>) -> Option<u64> {
        match &self.reader {
            Reader::Native(r, _) => r
                .header()
                .new_size
                .or_else(|| r.trailer().map(|t| t.new_size)),
            Reader::V1(r) | Reader::V2(r) => match (self.ended, base_size) {
                (true, Some(base)) => Some(r.new_size(base)),
                _ => None,
            },
            Reader::Py(r) => self.ended.then(|| r.new_size()),
        }
    }

    /// The OLD size recorded by the delta, when it records one.
    pub fn old_size(&self) -> Option<u64> {
        match &self.reader {
            Reader::Native(r, _) => r
                .header()
                .old_size
                .or_else(|| r.trailer().map(|t| t.old_size)),
            _ => None,
        }
    }

    /// End of the last extent read.
    pub fn last_end(&self) -> u64 {
        self.last_end
    }

    /// The delta's path (`-` for stdin).
    pub fn path(&self) -> &Path {
        &self.path
    }
}
