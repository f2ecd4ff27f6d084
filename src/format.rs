//! Byte formats. Each format is its own module with its constants, a
//! byte-offset table in the module docs, and a spec under `docs/formats/`.
//!
//! Every delta format, native or foreign, decodes to the same stream of
//! [`Extent`]s in strictly increasing offset order, so one apply engine
//! serves all of them.

pub mod delta;
pub mod diffdd;
pub mod diffdd_py;
pub mod diskdump;
pub mod keyfile;
pub mod overlay;
pub mod pack;
pub mod pack_index;
pub mod sealed;
pub mod signature;
pub mod snapshot;

/// Bytes of NEW at one position, as carried by a delta record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in NEW.
    pub offset: u64,
    /// What NEW holds at `offset`.
    pub data: ExtentData,
}

/// Payload of an [`Extent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentData {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// This many zero bytes (a hole, discard, or zero-fill).
    Zeros(u64),
    /// A native record compressed against the bytes the image holds at its
    /// range before it is applied; decoded by the applier, which holds them
    /// ([`delta::RawRecord::decode_against`]).
    Referenced(Box<delta::RawRecord>),
}

impl Extent {
    /// Number of NEW bytes this extent covers.
    pub fn len(&self) -> u64 {
        match &self.data {
            ExtentData::Bytes(b) => b.len() as u64,
            ExtentData::Zeros(n) => *n,
            ExtentData::Referenced(r) => r.length,
        }
    }

    /// True when the extent covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset one past the last byte covered.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len())
    }
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes
/// read. Short reads (pipes) and `Interrupted` are retried.
pub(crate) fn read_full<R: std::io::Read + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The little-endian `u32` at the start of `b` (callers check lengths).
pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at the start of `b` (callers check lengths).
pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The 32 bytes at the start of `b` (callers check lengths).
pub(crate) fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}
