//! The delta format of the Python `diff-dd` 1.0.4 (PyPI package `diff-dd`,
//! by larrabee; `diff_dd/module.py`).
//!
//! Despite the name, the Python tool stores *every* block of NEW, changed or
//! not; only the block numbers make it look like a sparse format. The block
//! size is chosen on its command line (`-b`, default 8192) and is not
//! stored.
//!
//! | offset              | size  | field                                          |
//! |--------------------:|------:|------------------------------------------------|
//! | 0                   | 32768 | header: a NUL-padded UTF-8 string, empty in 1.0.4 |
//! | 32768               | 8     | block number 0, u64 native-endian (`struct '@Q'`) |
//! | 32776               | `b`   | block 0 of NEW                                 |
//! | 32768 + i·(8+b)     | 8     | block number `i`                               |
//! | 32776 + i·(8+b)     | `b`   | block `i` of NEW; the last one may be shorter  |
//! | end − 8             | 8     | terminator: block number `n` (= count of data blocks), no data |
//!
//! Block numbers are read as **little-endian**, the byte order of the hosts
//! the tool runs on (x86-64, aarch64); a file made on a big-endian host is
//! rejected with a wrong block number at block 1.
//!
//! NEW is exactly the bytes of the records: its size is the sum of the
//! block lengths, whatever the size of OLD.
//!
//! A short last block is followed directly by the 8-byte terminator, so the
//! reader looks ahead `b + 17` bytes to tell "a full block and more
//! records" from "the last block, then the terminator". A file cut directly
//! after a block number is indistinguishable from a complete delta of a
//! shorter NEW (the terminator is just a block number with no data); every
//! other cut is an error. The full description is in
//! `docs/formats/diff-dd.md`.

use std::io::{self, Read};

use crate::format::diffdd::EXTENT_CHUNK_LEN;
use crate::format::read_full;
use crate::format::{Extent, ExtentData};

/// Length of the header in bytes (`struct.pack('@32768s', ...)`).
pub const HEADER_LEN: usize = 32768;
/// Length of a block number field (`struct.pack('@Q', ...)`).
pub const BLOCK_NUMBER_LEN: usize = 8;
/// The Python tool's default block size (`-b`).
pub const DEFAULT_BLOCK_SIZE: u32 = 8192;
/// Largest block size we accept (one block plus a little is buffered).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;

/// Errors from reading a Python diff-dd file.
#[derive(Debug, thiserror::Error)]
pub enum PyDiffDdError {
    /// Reading the delta failed.
    #[error("cannot read diff-dd-py delta at byte {position}")]
    Read {
        /// Byte position in the delta file.
        position: u64,
        #[source]
        source: io::Error,
    },
    /// The block size is 0 or above [`MAX_BLOCK_SIZE`].
    #[error("invalid diff-dd-py block size {block_size} (1..={max})")]
    InvalidBlockSize { block_size: u32, max: u32 },
    /// The file is shorter than the 32 KiB header.
    #[error("not a diff-dd-py delta: only {actual} of {expected} header bytes")]
    TruncatedHeader { expected: usize, actual: usize },
    /// The header is not a NUL-padded UTF-8 string.
    #[error("not a diff-dd-py delta: header byte {position} {reason}")]
    BadHeader {
        /// Byte position in the header.
        position: usize,
        reason: &'static str,
    },
    /// A record carries another block number than the next one expected;
    /// also what a wrong `--block-size` looks like.
    #[error(
        "corrupt diff-dd-py delta (or wrong block size): block number {found} \
         at byte {position}, expected {expected}"
    )]
    BadBlockNumber {
        /// Byte position of the block number in the delta file.
        position: u64,
        expected: u64,
        found: u64,
    },
    /// The file ends after a full block, without a terminator record.
    #[error(
        "truncated diff-dd-py delta: no terminator record (block number \
         {block}) at byte {position}"
    )]
    MissingTerminator {
        /// The block number the terminator should carry.
        block: u64,
        /// Byte position where it should start.
        position: u64,
    },
    /// The file ends inside the record of a block, or the bytes where its
    /// terminator should be are not one.
    #[error(
        "truncated diff-dd-py delta: the record of block {block} at byte \
         {position} ends after {actual} bytes, with no terminator"
    )]
    Truncated {
        block: u64,
        /// Byte position of the record in the delta file.
        position: u64,
        /// Bytes of the record present before the end of the file.
        actual: u64,
    },
}

/// What one record turned out to be.
enum Record {
    /// A full block; more records follow.
    Block,
    /// The last records: possibly a (short) block, then the terminator.
    End,
}

/// Streaming decoder of a Python diff-dd 1.0.4 delta into [`Extent`]s.
///
/// Consecutive blocks are handed out joined into extents of up to about
/// [`EXTENT_CHUNK_LEN`] bytes (one block, if blocks are larger). Memory
/// is bounded by that plus one block.
#[derive(Debug)]
pub struct PyDiffDdReader<R: Read> {
    reader: R,
    block_size: u32,
    header: String,
    /// Unconsumed bytes read ahead from `reader`; up to `block_size + 17`.
    window: Vec<u8>,
    /// True once `reader` reported its end: `window` holds the rest.
    eof: bool,
    /// Byte position in the delta file of `window[0]`.
    position: u64,
    /// The block number the next record must carry.
    next_block: u64,
    /// Bytes of NEW decoded so far.
    new_size: u64,
    /// Set once the terminator was read.
    done: bool,
}

impl<R: Read> PyDiffDdReader<R> {
    /// Reads and checks the 32 KiB header of a delta made with block size
    /// `block_size` (the Python tool's `-b`; it is not stored in the file).
    ///
    /// # Errors
    ///
    /// [`PyDiffDdError::InvalidBlockSize`],
    /// [`PyDiffDdError::TruncatedHeader`], [`PyDiffDdError::BadHeader`], or
    /// [`PyDiffDdError::Read`].
    pub fn new(mut reader: R, block_size: u32) -> Result<Self, PyDiffDdError> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(PyDiffDdError::InvalidBlockSize {
                block_size,
                max: MAX_BLOCK_SIZE,
            });
        }
        let mut raw = vec![0u8; HEADER_LEN];
        let n = read_full(&mut reader, &mut raw).map_err(|source| PyDiffDdError::Read {
            position: 0,
            source,
        })?;
        if n < HEADER_LEN {
            return Err(PyDiffDdError::TruncatedHeader {
                expected: HEADER_LEN,
                actual: n,
            });
        }
        let header = parse_header(&raw)?.to_owned();
        Ok(PyDiffDdReader {
            reader,
            block_size,
            header,
            window: Vec::with_capacity(Self::window_len(block_size)),
            eof: false,
            position: HEADER_LEN as u64,
            next_block: 0,
            new_size: 0,
            done: false,
        })
    }

    /// Bytes to look ahead: a block number, a full block, and 9 more, so a
    /// full window proves the block is not the last (the last block is
    /// followed by exactly 8 bytes).
    fn window_len(block_size: u32) -> usize {
        BLOCK_NUMBER_LEN + block_size as usize + BLOCK_NUMBER_LEN + 1
    }

    /// The block size given to [`new`](Self::new).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The header string (empty in files of diff-dd 1.0.4).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Data blocks decoded so far.
    pub fn blocks(&self) -> u64 {
        self.next_block
    }

    /// True once [`next_extent`](Self::next_extent) returned `None`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The size of NEW: exactly the bytes the records cover.
    ///
    /// Meaningful once [`next_extent`](Self::next_extent) returned `None`;
    /// before that it counts the bytes decoded so far.
    pub fn new_size(&self) -> u64 {
        self.new_size
    }

    /// The next extent of NEW, or `None` after the terminator record.
    ///
    /// # Errors
    ///
    /// [`PyDiffDdError::BadBlockNumber`], [`PyDiffDdError::Truncated`],
    /// [`PyDiffDdError::MissingTerminator`], or [`PyDiffDdError::Read`].
    /// After an error the reader should not be used further.
    pub fn next_extent(&mut self) -> Result<Option<Extent>, PyDiffDdError> {
        if self.done {
            return Ok(None);
        }
        let offset = self.new_size;
        let block = self.block_size as usize;
        let mut data = Vec::with_capacity(block.min(EXTENT_CHUNK_LEN));
        loop {
            match self.next_record(&mut data)? {
                Record::End => break,
                Record::Block if data.len() + block > EXTENT_CHUNK_LEN => break,
                Record::Block => {}
            }
        }
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(Extent {
            offset,
            data: ExtentData::Bytes(data),
        }))
    }

    /// Tops the window up to its full length unless the input ends first.
    fn fill_window(&mut self) -> Result<(), PyDiffDdError> {
        let want = Self::window_len(self.block_size);
        let have = self.window.len();
        if self.eof || have >= want {
            return Ok(());
        }
        self.window.resize(want, 0);
        let result = read_full(&mut self.reader, &mut self.window[have..]);
        let n = match result {
            Ok(n) => n,
            Err(source) => {
                self.window.truncate(have);
                return Err(PyDiffDdError::Read {
                    position: self.position + have as u64,
                    source,
                });
            }
        };
        self.window.truncate(have + n);
        if have + n < want {
            self.eof = true;
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.window.drain(..n);
        self.position += n as u64;
    }

    /// Decodes one record, appending its block (if any) to `out`.
    fn next_record(&mut self, out: &mut Vec<u8>) -> Result<Record, PyDiffDdError> {
        self.fill_window()?;
        let position = self.position;
        let expected = self.next_block;
        let avail = self.window.len();
        if avail == 0 {
            return Err(PyDiffDdError::MissingTerminator {
                block: expected,
                position,
            });
        }
        if avail < BLOCK_NUMBER_LEN {
            return Err(PyDiffDdError::Truncated {
                block: expected,
                position,
                actual: avail as u64,
            });
        }
        let found = le_u64(&self.window[..BLOCK_NUMBER_LEN]);
        if found != expected {
            return Err(PyDiffDdError::BadBlockNumber {
                position,
                expected,
                found,
            });
        }
        let block = self.block_size as usize;
        if !self.eof {
            // A full window: more than a block plus a terminator follows,
            // so this is a full block.
            out.extend_from_slice(&self.window[BLOCK_NUMBER_LEN..BLOCK_NUMBER_LEN + block]);
            self.consume(BLOCK_NUMBER_LEN + block);
            self.next_block += 1;
            self.new_size += block as u64;
            return Ok(Record::Block);
        }
        if avail == BLOCK_NUMBER_LEN {
            // A block number with no data: the terminator.
            self.consume(avail);
            self.done = true;
            return Ok(Record::End);
        }
        // The rest of the file must be the last block (1..=block bytes)
        // followed by the terminator carrying the next block number.
        let terminator_ok = avail > 2 * BLOCK_NUMBER_LEN
            && le_u64(&self.window[avail - BLOCK_NUMBER_LEN..]) == expected + 1;
        if !terminator_ok {
            // Name the record the file most likely ends in.
            let full = BLOCK_NUMBER_LEN + block;
            let next_position = position + full as u64;
            return Err(match avail.cmp(&full) {
                std::cmp::Ordering::Less => PyDiffDdError::Truncated {
                    block: expected,
                    position,
                    actual: avail as u64,
                },
                std::cmp::Ordering::Equal => PyDiffDdError::MissingTerminator {
                    block: expected + 1,
                    position: next_position,
                },
                // A full block and a whole block number that is not the
                // next one.
                std::cmp::Ordering::Greater if avail == full + BLOCK_NUMBER_LEN => {
                    PyDiffDdError::BadBlockNumber {
                        position: next_position,
                        expected: expected + 1,
                        found: le_u64(&self.window[full..]),
                    }
                }
                std::cmp::Ordering::Greater => PyDiffDdError::Truncated {
                    block: expected + 1,
                    position: next_position,
                    actual: (avail - full) as u64,
                },
            });
        }
        let len = avail - 2 * BLOCK_NUMBER_LEN;
        debug_assert!(len <= block);
        out.extend_from_slice(&self.window[BLOCK_NUMBER_LEN..BLOCK_NUMBER_LEN + len]);
        self.consume(avail);
        self.next_block += 1;
        self.new_size += len as u64;
        self.done = true;
        Ok(Record::End)
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut field = [0u8; BLOCK_NUMBER_LEN];
    field.copy_from_slice(&bytes[..BLOCK_NUMBER_LEN]);
    u64::from_le_bytes(field)
}

/// Checks that the header is a NUL-padded UTF-8 string; returns the string.
fn parse_header(raw: &[u8]) -> Result<&str, PyDiffDdError> {
    let text_len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..text_len]).map_err(|e| PyDiffDdError::BadHeader {
        position: e.valid_up_to(),
        reason: "is not UTF-8",
    })?;
    if let Some(i) = raw[text_len..].iter().position(|&b| b != 0) {
        return Err(PyDiffDdError::BadHeader {
            position: text_len + i,
            reason: "is not NUL after the NUL padding began",
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic test bytes without runs of zeros (so no stretch of
    /// data can pass for a terminator record).
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8 | 1
            })
            .collect()
    }

    /// A reference writer doing what `CreateDiff.start` does.
    fn py_file(new: &[u8], block_size: usize) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        let mut n = 0u64;
        for block in new.chunks(block_size) {
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(block);
            n += 1;
        }
        out.extend_from_slice(&n.to_le_bytes());
        out
    }

    fn decode<R: Read>(reader: R, block_size: u32) -> Result<Vec<u8>, PyDiffDdError> {
        let mut reader = PyDiffDdReader::new(reader, block_size)?;
        let mut out = Vec::new();
        while let Some(extent) = reader.next_extent()? {
            assert_eq!(extent.offset, out.len() as u64, "extents are consecutive");
            match extent.data {
                ExtentData::Bytes(b) => {
                    assert!(!b.is_empty());
                    out.extend_from_slice(&b);
                }
                ExtentData::Zeros(_) | ExtentData::Referenced(_) => {
                    panic!("the format has only data records")
                }
            }
        }
        assert!(reader.next_extent()?.is_none());
        assert!(reader.is_done());
        assert_eq!(reader.new_size(), out.len() as u64);
        Ok(out)
    }

    #[test]
    fn round_trip_at_boundary_sizes() {
        for bs in [1usize, 7, 8, 9, 16, 17, 512, 8192] {
            let sizes = [
                0,
                1,
                bs.saturating_sub(9),
                bs.saturating_sub(8),
                bs.saturating_sub(7),
                bs - 1,
                bs,
                bs + 1,
                bs + 8,
                (2 * bs).saturating_sub(8),
                2 * bs,
                3 * bs + 5,
            ];
            for size in sizes {
                let new = bytes(size, size as u64 + bs as u64);
                let file = py_file(&new, bs);
                let got = decode(&file[..], bs as u32)
                    .unwrap_or_else(|e| panic!("bs {bs} size {size}: {e}"));
                assert_eq!(got, new, "bs {bs} size {size}");
            }
        }
    }

    #[test]
    fn accessors() {
        let new = bytes(20000, 1);
        let file = py_file(&new, 8192);
        let mut reader = PyDiffDdReader::new(&file[..], 8192).expect("header");
        assert_eq!(reader.header(), "");
        assert_eq!(reader.block_size(), 8192);
        while reader.next_extent().expect("decode").is_some() {}
        assert_eq!(reader.blocks(), 3);
        assert_eq!(reader.new_size(), 20000);
    }

    #[test]
    fn extents_are_joined_but_bounded() {
        let bs = 4096;
        let new = bytes(EXTENT_CHUNK_LEN * 2 + 100, 3);
        let file = py_file(&new, bs);
        let mut reader = PyDiffDdReader::new(&file[..], bs as u32).expect("header");
        let mut lens = Vec::new();
        while let Some(e) = reader.next_extent().expect("decode") {
            lens.push(e.len());
        }
        assert_eq!(
            lens,
            vec![EXTENT_CHUNK_LEN as u64, EXTENT_CHUNK_LEN as u64, 100]
        );

        // Blocks larger than the chunk length come one per extent.
        let bs = EXTENT_CHUNK_LEN + 3;
        let new = bytes(bs * 2 + 1, 4);
        let file = py_file(&new, bs);
        let mut reader = PyDiffDdReader::new(&file[..], bs as u32).expect("header");
        let mut lens = Vec::new();
        while let Some(e) = reader.next_extent().expect("decode") {
            lens.push(e.len());
        }
        assert_eq!(lens, vec![bs as u64, bs as u64, 1]);
    }

    #[test]
    fn truncated_at_every_byte() {
        let bs = 16usize;
        let new = bytes(3 * bs + 5, 9);
        let file = py_file(&new, bs);
        for cut in 0..file.len() {
            let result = decode(&file[..cut], bs as u32);
            if cut < HEADER_LEN {
                assert!(
                    matches!(result, Err(PyDiffDdError::TruncatedHeader { actual, .. }) if actual == cut),
                    "cut {cut}: {result:?}"
                );
                continue;
            }
            let after = cut - HEADER_LEN;
            // A cut right after a block number leaves a well-formed delta
            // of the first k blocks: the format cannot tell.
            if after % (bs + 8) == 8 {
                let k = after / (bs + 8);
                let got = result.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                assert_eq!(got, new[..k * bs], "cut {cut}");
                continue;
            }
            match result {
                Err(PyDiffDdError::Truncated {
                    block, position, ..
                }) => {
                    let k = after / (bs + 8);
                    assert_eq!(block, k as u64, "cut {cut}");
                    assert_eq!(position, (HEADER_LEN + k * (bs + 8)) as u64, "cut {cut}");
                }
                Err(PyDiffDdError::MissingTerminator { block, .. }) => {
                    assert_eq!(after % (bs + 8), 0, "cut {cut}");
                    assert_eq!(block, (after / (bs + 8)) as u64, "cut {cut}");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_block_number_is_named() {
        let bs = 16usize;
        let mut file = py_file(&bytes(40, 2), bs);
        let at = HEADER_LEN + bs + 8;
        file[at..at + 8].copy_from_slice(&7u64.to_le_bytes());
        match decode(&file[..], bs as u32) {
            Err(PyDiffDdError::BadBlockNumber {
                position,
                expected,
                found,
            }) => assert_eq!((position, expected, found), (at as u64, 1, 7)),
            other => panic!("{other:?}"),
        }
        // A bad terminator number.
        let mut file = py_file(&bytes(32, 2), bs);
        let end = file.len();
        file[end - 8..].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(
            decode(&file[..], bs as u32),
            Err(PyDiffDdError::BadBlockNumber {
                expected: 2,
                found: 3,
                ..
            })
        ));
    }

    #[test]
    fn wrong_block_size_is_an_error() {
        let new = bytes(50000, 5);
        let file = py_file(&new, 8192);
        for wrong in [4096u32, 16384, 8191, 8193] {
            assert!(decode(&file[..], wrong).is_err(), "block size {wrong}");
        }
    }

    #[test]
    fn big_endian_numbers_are_rejected() {
        let bs = 16usize;
        let new = bytes(40, 6);
        let mut file = vec![0u8; HEADER_LEN];
        for (i, block) in new.chunks(bs).enumerate() {
            file.extend_from_slice(&(i as u64).to_be_bytes());
            file.extend_from_slice(block);
        }
        file.extend_from_slice(&3u64.to_be_bytes());
        assert!(matches!(
            decode(&file[..], bs as u32),
            Err(PyDiffDdError::BadBlockNumber {
                expected: 1,
                found: 0x0100_0000_0000_0000,
                ..
            })
        ));
    }

    #[test]
    fn headers() {
        let mut file = py_file(&bytes(10, 1), 8192);
        file[..5].copy_from_slice(b"hello");
        let reader = PyDiffDdReader::new(&file[..], 8192).expect("text header");
        assert_eq!(reader.header(), "hello");

        let mut bad = file.clone();
        bad[100] = 1;
        assert!(matches!(
            PyDiffDdReader::new(&bad[..], 8192),
            Err(PyDiffDdError::BadHeader { position: 100, .. })
        ));
        let mut bad = file.clone();
        bad[2] = 0xFF;
        assert!(matches!(
            PyDiffDdReader::new(&bad[..], 8192),
            Err(PyDiffDdError::BadHeader { position: 2, .. })
        ));
        // A C++ diff-dd v2 file given as a Python one.
        let mut v2 = b"diff-dd image\x02".to_vec();
        v2.extend_from_slice(&0u64.to_be_bytes());
        v2.extend_from_slice(&4u32.to_be_bytes());
        v2.resize(HEADER_LEN + 100, 7);
        assert!(matches!(
            PyDiffDdReader::new(&v2[..], 8192),
            Err(PyDiffDdError::BadHeader { position: 25, .. })
        ));
        for bad_size in [0, MAX_BLOCK_SIZE + 1] {
            assert!(matches!(
                PyDiffDdReader::new(&file[..], bad_size),
                Err(PyDiffDdError::InvalidBlockSize { .. })
            ));
        }
    }

    /// A reader that hands out at most 5 bytes per call, like a pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(5).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_are_fine() {
        for size in [0, 100, 8184, 8192, 10000] {
            let new = bytes(size, 8);
            let file = py_file(&new, 8192);
            assert_eq!(decode(Trickle(&file), 8192).expect("decode"), new);
        }
    }

    const GOLDEN_NEW: &[u8] = include_bytes!("../../tests/golden/legacy/new.img");
    /// Real output of Python diff-dd 1.0.4 (see tests/golden/legacy/README.md).
    const GOLDEN_PY: &[u8] = include_bytes!("../../tests/golden/legacy/new.diffdd-py-b8192");

    #[test]
    fn golden_real_python_output_decodes_to_new() {
        assert_eq!(decode(GOLDEN_PY, 8192).expect("decode"), GOLDEN_NEW);
        assert_eq!(GOLDEN_PY, py_file(GOLDEN_NEW, 8192));
        assert!(decode(GOLDEN_PY, 4096).is_err());
    }

    proptest! {
        #[test]
        fn prop_round_trip(size in 0usize..5000, bs in 1usize..600, seed in any::<u64>()) {
            let new = bytes(size, seed);
            let file = py_file(&new, bs);
            prop_assert_eq!(decode(&file[..], bs as u32).expect("decode"), new);
        }

        #[test]
        fn prop_garbage_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            bs in 1u32..40,
        ) {
            let mut file = vec![0u8; HEADER_LEN];
            file.extend_from_slice(&data);
            let _ = decode(&file[..], bs);
        }
    }
}
