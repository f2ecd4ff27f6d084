//! The signature format, version 1 (spec: `docs/formats/signature.md`):
//! short hashes of every block of an image, so a delta against it can be
//! made where the image itself is not (`diff --signature`).
//!
//! Written and read in one pass, so it travels through pipes (`ssh host
//! diskdelta signature IMAGE | diskdelta diff --signature - NEW`). All
//! integers are little-endian.
//!
//! ```text
//! file   = header frame* end-frame trailer
//!
//! header (64 bytes)
//!   0   8  magic "DDSIGNAT"
//!   8   2  version (1)
//!  10   2  header length (64)
//!  12   4  flags: 1 image size known
//!  16   4  block size (power of two, 512 to 1 MiB)
//!  20   4  hash length (16)
//!  24   8  image size (0 unless flag 1)
//!  32   8  seed of the block hashes (random per signature)
//!  40  16  reserved, zero
//!  56   8  first 8 bytes of BLAKE3(header bytes 0..56)
//!
//! frame: 4 count (1 to 4096), then count × hash length bytes, one per
//!        block in order: XXH3-128 of the block with the seed, little-endian,
//!        the block zero-padded to the block size (the last block of the
//!        image)
//! end-frame: 4 count 0
//!
//! trailer (120 + 40 × samples bytes)
//!   0   8  image size
//!   8   8  block count
//!  16  32  image digest
//!  48  32  BLAKE3 of the header and every frame, the end-frame included
//!  80   4  sample count (at most 4096)
//!  84   4  reserved, zero
//!  88  40× sample: 8 block index, 32 BLAKE3 of that block (whole blocks only)
//!  ..  32  BLAKE3 of the trailer bytes before it
//! ```

use std::io::{self, Read, Write};

use crate::digest::Digest;
use crate::format::delta::Sample;
use crate::format::read_full;

/// File magic.
pub const MAGIC: [u8; 8] = *b"DDSIGNAT";
/// The version this module reads and writes.
pub const VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 64;
/// Bytes kept of each block's BLAKE3.
pub const HASH_LEN: usize = 16;
/// Most hashes in one frame.
pub const FRAME_HASHES: usize = 4096;
/// Fixed part of the trailer, before the samples.
pub const TRAILER_FIXED_LEN: usize = 88;
/// Most samples a trailer may carry.
pub const MAX_SAMPLES: u32 = 4096;
/// Smallest and largest block size.
pub const BLOCK_SIZES: std::ops::RangeInclusive<u32> = 512..=(1 << 20);

const FLAG_SIZE: u32 = 1;

/// One block's short hash.
pub type BlockHash = [u8; HASH_LEN];

/// Errors of reading or writing a signature.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Reading or writing failed.
    #[error("I/O error at signature byte {offset}")]
    Io {
        /// Byte offset in the signature stream.
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// The magic is wrong.
    #[error("not a diskdelta signature (bad magic)")]
    NotASignature,
    /// A version this build does not read.
    #[error("unsupported signature version {0} (this build reads version 1)")]
    UnsupportedVersion(u16),
    /// The header is damaged or inconsistent.
    #[error("corrupt signature header: {0}")]
    CorruptHeader(&'static str),
    /// The stream ended early.
    #[error("signature is truncated at byte {offset} ({context})")]
    Truncated {
        /// Where it ended.
        offset: u64,
        /// What was being read.
        context: &'static str,
    },
    /// A frame or the trailer is damaged.
    #[error("corrupt signature at byte {offset}: {reason}")]
    Corrupt {
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Bytes follow the trailer.
    #[error("unexpected data after the signature trailer at byte {offset}")]
    TrailingData {
        /// Where they start.
        offset: u64,
    },
}

type Result<T> = std::result::Result<T, SignatureError>;

/// The signature header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Block size the hashes cover.
    pub block_size: u32,
    /// The image's size, when known before it was read.
    pub image_size: Option<u64>,
    /// Seed of the block hashes: random, so whoever writes NEW cannot
    /// choose blocks whose hashes collide with OLD's.
    pub seed: u64,
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
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        let flags = if self.image_size.is_some() {
            FLAG_SIZE
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.block_size.to_le_bytes());
        b[20..24].copy_from_slice(&(HASH_LEN as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.image_size.unwrap_or(0).to_le_bytes());
        b[32..40].copy_from_slice(&self.seed.to_le_bytes());
        let check = blake3::hash(&b[0..56]);
        b[56..64].copy_from_slice(&check.as_bytes()[0..8]);
        b
    }

    /// Parses and checks the 64 header bytes.
    ///
    /// # Errors
    /// [`SignatureError::NotASignature`], [`SignatureError::UnsupportedVersion`]
    /// or [`SignatureError::CorruptHeader`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..8] != MAGIC {
            return Err(SignatureError::NotASignature);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(SignatureError::UnsupportedVersion(version));
        }
        if blake3::hash(&b[0..56]).as_bytes()[0..8] != b[56..64] {
            return Err(SignatureError::CorruptHeader("header checksum mismatch"));
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != HEADER_LEN {
            return Err(SignatureError::CorruptHeader("wrong header length"));
        }
        let flags = le_u32(b, 12);
        if flags & !FLAG_SIZE != 0 {
            return Err(SignatureError::CorruptHeader("unknown flags"));
        }
        let block_size = le_u32(b, 16);
        if !block_size.is_power_of_two() || !BLOCK_SIZES.contains(&block_size) {
            return Err(SignatureError::CorruptHeader(
                "block size is not a power of two from 512 to 1 MiB",
            ));
        }
        if le_u32(b, 20) as usize != HASH_LEN {
            return Err(SignatureError::CorruptHeader("unsupported hash length"));
        }
        if b[40..56].iter().any(|&x| x != 0) {
            return Err(SignatureError::CorruptHeader("reserved bytes are not zero"));
        }
        let size = le_u64(b, 24);
        if flags & FLAG_SIZE == 0 && size != 0 {
            return Err(SignatureError::CorruptHeader("size given without its flag"));
        }
        Ok(Header {
            block_size,
            image_size: (flags & FLAG_SIZE != 0).then_some(size),
            seed: le_u64(b, 32),
        })
    }

    /// Number of blocks of an image of `size` bytes.
    pub fn blocks_of(&self, size: u64) -> u64 {
        size.div_ceil(u64::from(self.block_size))
    }
}

/// The hash of one block as the signature stores it, with the header's
/// seed: `data` is the block, shorter than the block size only at the end
/// of the image (it is hashed zero-padded, as an applier sees it when the
/// image grows).
pub fn block_hash(data: &[u8], block_size: usize, seed: u64) -> BlockHash {
    let hash = if data.len() >= block_size {
        xxhash_rust::xxh3::xxh3_128_with_seed(data, seed)
    } else {
        let mut padded = vec![0u8; block_size];
        padded[..data.len()].copy_from_slice(data);
        xxhash_rust::xxh3::xxh3_128_with_seed(&padded, seed)
    };
    hash.to_le_bytes()
}

/// A fresh random seed for a new signature.
pub fn random_seed() -> u64 {
    use chacha20poly1305::aead::rand_core::RngCore;
    chacha20poly1305::aead::OsRng.next_u64()
}

/// The signature trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// The image's size.
    pub image_size: u64,
    /// Number of block hashes.
    pub block_count: u64,
    /// The image digest (as deltas record it).
    pub image_digest: Digest,
    /// BLAKE3 of the header and frames.
    pub body_digest: Digest,
    /// Sampled whole blocks with their full BLAKE3, for apply's base check.
    pub samples: Vec<Sample>,
}

impl Trailer {
    /// The trailer bytes, its own checksum last.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TRAILER_FIXED_LEN + 40 * self.samples.len() + 32);
        b.extend_from_slice(&self.image_size.to_le_bytes());
        b.extend_from_slice(&self.block_count.to_le_bytes());
        b.extend_from_slice(self.image_digest.as_bytes());
        b.extend_from_slice(self.body_digest.as_bytes());
        b.extend_from_slice(&(self.samples.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for s in &self.samples {
            b.extend_from_slice(&s.block.to_le_bytes());
            b.extend_from_slice(s.digest.as_bytes());
        }
        let check = Digest::of(&b);
        b.extend_from_slice(check.as_bytes());
        b
    }
}

/// Writes a signature in one pass.
#[derive(Debug)]
pub struct SignatureWriter<W: Write> {
    out: W,
    header: Header,
    body: blake3::Hasher,
    frame: Vec<u8>,
    in_frame: usize,
    count: u64,
    written: u64,
}

impl<W: Write> SignatureWriter<W> {
    /// Writes the header.
    ///
    /// # Errors
    /// [`SignatureError::Io`].
    pub fn new(mut out: W, header: Header) -> Result<Self> {
        let bytes = header.encode();
        out.write_all(&bytes)
            .map_err(|source| SignatureError::Io { offset: 0, source })?;
        let mut body = blake3::Hasher::new();
        body.update(&bytes);
        Ok(SignatureWriter {
            out,
            header,
            body,
            frame: Vec::with_capacity(4 + FRAME_HASHES * HASH_LEN),
            in_frame: 0,
            count: 0,
            written: HEADER_LEN as u64,
        })
    }

    /// The header written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Appends the next block's hash.
    ///
    /// # Errors
    /// [`SignatureError::Io`].
    pub fn push(&mut self, hash: &BlockHash) -> Result<()> {
        if self.in_frame == 0 {
            self.frame.clear();
            self.frame.extend_from_slice(&[0; 4]);
        }
        self.frame.extend_from_slice(hash);
        self.in_frame += 1;
        self.count += 1;
        if self.in_frame == FRAME_HASHES {
            self.flush_frame()?;
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.in_frame == 0 {
            return Ok(());
        }
        self.frame[0..4].copy_from_slice(&(self.in_frame as u32).to_le_bytes());
        self.emit_frame()?;
        self.in_frame = 0;
        Ok(())
    }

    fn emit_frame(&mut self) -> Result<()> {
        self.out
            .write_all(&self.frame)
            .map_err(|source| SignatureError::Io {
                offset: self.written,
                source,
            })?;
        self.body.update(&self.frame);
        self.written += self.frame.len() as u64;
        Ok(())
    }

    /// Writes the end frame and the trailer, flushes, returns the stream and
    /// the bytes written.
    ///
    /// # Errors
    /// [`SignatureError::Io`], or [`SignatureError::Corrupt`] when the block
    /// count does not fit the image size.
    pub fn finish(
        mut self,
        image_size: u64,
        image_digest: Digest,
        samples: Vec<Sample>,
    ) -> Result<(W, u64)> {
        if self.header.blocks_of(image_size) != self.count
            || self.header.image_size.is_some_and(|s| s != image_size)
            || samples.len() > MAX_SAMPLES as usize
        {
            return Err(SignatureError::Corrupt {
                offset: self.written,
                reason: "block count, image size or sample count is inconsistent".into(),
            });
        }
        self.flush_frame()?;
        self.frame.clear();
        self.frame.extend_from_slice(&0u32.to_le_bytes());
        self.emit_frame()?;
        let trailer = Trailer {
            image_size,
            block_count: self.count,
            image_digest,
            body_digest: self.body.finalize().into(),
            samples,
        };
        let bytes = trailer.encode();
        let io = |offset| move |source| SignatureError::Io { offset, source };
        self.out.write_all(&bytes).map_err(io(self.written))?;
        self.written += bytes.len() as u64;
        self.out.flush().map_err(io(self.written))?;
        Ok((self.out, self.written))
    }
}

/// Reads a signature in one pass. The hashes come before the trailer that
/// vouches for them: a caller must not trust its result before
/// [`SignatureReader::next_hash`] returned `None` (the trailer checked).
#[derive(Debug)]
pub struct SignatureReader<R: Read> {
    input: R,
    header: Header,
    body: blake3::Hasher,
    frame: Vec<u8>,
    at: usize,
    count: u64,
    pos: u64,
    trailer: Option<Trailer>,
}

impl<R: Read> SignatureReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// Header errors or [`SignatureError::Truncated`].
    pub fn new(mut input: R) -> Result<Self> {
        let mut bytes = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut bytes)
            .map_err(|source| SignatureError::Io { offset: 0, source })?;
        if n >= 8 && bytes[0..8] != MAGIC {
            return Err(SignatureError::NotASignature);
        }
        if n < HEADER_LEN {
            return Err(SignatureError::Truncated {
                offset: n as u64,
                context: "header",
            });
        }
        let header = Header::decode(&bytes)?;
        let mut body = blake3::Hasher::new();
        body.update(&bytes);
        Ok(SignatureReader {
            input,
            header,
            body,
            frame: Vec::new(),
            at: 0,
            count: 0,
            pos: HEADER_LEN as u64,
            trailer: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The trailer, once [`SignatureReader::next_hash`] returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    fn read_exact(&mut self, buf: &mut [u8], context: &'static str) -> Result<()> {
        let n = read_full(&mut self.input, buf).map_err(|source| SignatureError::Io {
            offset: self.pos,
            source,
        })?;
        if n < buf.len() {
            return Err(SignatureError::Truncated {
                offset: self.pos + n as u64,
                context,
            });
        }
        self.pos += n as u64;
        Ok(())
    }

    /// The next block's hash, or `None` after the trailer was read and
    /// checked.
    ///
    /// # Errors
    /// Truncation, a damaged frame or trailer, trailing data.
    pub fn next_hash(&mut self) -> Result<Option<BlockHash>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        if self.at == self.frame.len() {
            let mut count = [0u8; 4];
            let frame_at = self.pos;
            self.read_exact(&mut count, "frame")?;
            self.body.update(&count);
            let n = u32::from_le_bytes(count) as usize;
            if n == 0 {
                self.read_trailer()?;
                return Ok(None);
            }
            if n > FRAME_HASHES {
                return Err(SignatureError::Corrupt {
                    offset: frame_at,
                    reason: format!("frame of {n} hashes (at most {FRAME_HASHES})"),
                });
            }
            let mut frame = std::mem::take(&mut self.frame);
            frame.resize(n * HASH_LEN, 0);
            self.read_exact(&mut frame, "frame")?;
            self.body.update(&frame);
            self.frame = frame;
            self.at = 0;
        }
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&self.frame[self.at..self.at + HASH_LEN]);
        self.at += HASH_LEN;
        self.count += 1;
        Ok(Some(hash))
    }

    fn read_trailer(&mut self) -> Result<()> {
        let at = self.pos;
        let corrupt = |reason: &str| SignatureError::Corrupt {
            offset: at,
            reason: reason.into(),
        };
        let mut fixed = vec![0u8; TRAILER_FIXED_LEN];
        self.read_exact(&mut fixed, "trailer")?;
        let samples = le_u32(&fixed, 80);
        if samples > MAX_SAMPLES {
            return Err(corrupt("too many samples"));
        }
        let mut rest = vec![0u8; samples as usize * 40 + 32];
        self.read_exact(&mut rest, "trailer")?;
        let body_len = TRAILER_FIXED_LEN + samples as usize * 40;
        fixed.extend_from_slice(&rest);
        let b = fixed;
        if Digest::of(&b[..body_len]) != digest_at(&b, body_len) {
            return Err(corrupt("trailer checksum mismatch"));
        }
        if le_u32(&b, 84) != 0 {
            return Err(corrupt("reserved bytes are not zero"));
        }
        let trailer = Trailer {
            image_size: le_u64(&b, 0),
            block_count: le_u64(&b, 8),
            image_digest: digest_at(&b, 16),
            body_digest: digest_at(&b, 48),
            samples: (0..samples as usize)
                .map(|i| Sample {
                    block: le_u64(&b, TRAILER_FIXED_LEN + 40 * i),
                    digest: digest_at(&b, TRAILER_FIXED_LEN + 40 * i + 8),
                })
                .collect(),
        };
        if trailer.body_digest != Digest::from(self.body.finalize()) {
            return Err(corrupt(
                "hashes do not match the trailer (damaged signature)",
            ));
        }
        if trailer.block_count != self.count
            || self.header.blocks_of(trailer.image_size) != self.count
        {
            return Err(corrupt("block count does not match the image size"));
        }
        if self
            .header
            .image_size
            .is_some_and(|s| s != trailer.image_size)
        {
            return Err(corrupt("image size contradicts the header"));
        }
        let bs = u64::from(self.header.block_size);
        if trailer
            .samples
            .iter()
            .any(|s| s.block.saturating_add(1).saturating_mul(bs) > trailer.image_size)
        {
            return Err(corrupt("a sample lies outside the image's whole blocks"));
        }
        let mut probe = [0u8; 1];
        let n = read_full(&mut self.input, &mut probe).map_err(|source| SignatureError::Io {
            offset: self.pos,
            source,
        })?;
        if n != 0 {
            return Err(SignatureError::TrailingData { offset: self.pos });
        }
        self.trailer = Some(trailer);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
