//! Wire frames of the sync protocol, version 1 (spec: `docs/formats/wire.md`).
//!
//! ```text
//! frame  = header body
//! header (8 bytes)
//!   0  1  message type
//!   1  1  reserved, zero
//!   2  2  reserved, zero
//!   4  4  body length (little-endian, at most MAX_BODY)
//! ```
//! A [`FrameReader`] tells "the stream ended cleanly between frames" (a
//! peer that hung up) from "the stream ended inside a frame" (truncation)
//! and from "this is not a valid frame" (corruption or a foreign program
//! writing to our stdout).

use std::io::{self, Read, Write};

/// Header size in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted; bounds memory on hostile input.
pub const MAX_BODY: u32 = 32 << 20;

/// Errors of reading and writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("connection error")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The header is invalid.
    #[error("invalid frame header (type {kind:#04x}, length {len}): {reason}")]
    BadHeader {
        /// Message type byte.
        kind: u8,
        /// Body length field.
        len: u32,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One frame: a message type and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type.
    pub kind: u8,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Parses a frame header, checking reserved bytes and the length bound.
///
/// # Errors
/// [`FrameError::BadHeader`].
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, u32), FrameError> {
    let kind = h[0];
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if h[1..4] != [0, 0, 0] {
        return Err(FrameError::BadHeader {
            kind,
            len,
            reason: "reserved bytes are not zero",
        });
    }
    if len > MAX_BODY {
        return Err(FrameError::BadHeader {
            kind,
            len,
            reason: "body too large",
        });
    }
    Ok((kind, len))
}

/// Encodes a frame header.
pub fn header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h
}

/// Writes a frame (header and body). Does not flush.
///
/// # Errors
/// [`FrameError::Io`], or [`FrameError::BadHeader`] for an oversized body.
pub fn write_frame<W: Write>(w: &mut W, kind: u8, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_BODY)
        .ok_or(FrameError::BadHeader {
            kind,
            len: u32::MAX,
            reason: "body too large",
        })?;
    w.write_all(&header(kind, len))?;
    w.write_all(body)?;
    Ok(())
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream (buffer it: frames are read in small pieces).
    pub fn new(inner: R) -> Self {
        FrameReader { inner }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        Ok(got)
    }

    /// The next frame, or `None` when the stream ended cleanly between frames.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] inside a frame, [`FrameError::BadHeader`],
    /// [`FrameError::Io`].
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        let got = self.fill(&mut h)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        let (kind, len) = parse_header(&h)?;
        let mut body = vec![0u8; len as usize];
        let got = self.fill(&mut body)?;
        if got < body.len() {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                want: HEADER_LEN + body.len(),
            });
        }
        Ok(Some(Frame { kind, body }))
    }
}

/// Cursor over a message body with bounds-checked little-endian reads.
#[derive(Debug)]
pub struct BodyReader<'a> {
    body: &'a [u8],
    at: usize,
}

/// A body shorter or longer than its message type allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message body at byte {at}")]
pub struct BodyError {
    /// Where parsing failed.
    pub at: usize,
}

impl<'a> BodyReader<'a> {
    /// Starts at the first byte of `body`.
    pub fn new(body: &'a [u8]) -> Self {
        BodyReader { body, at: 0 }
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`BodyError`] when fewer remain.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len());
        match end {
            Some(end) => {
                let out = &self.body[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(BodyError { at: self.at }),
        }
    }

    /// A `u8`.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.bytes(1)?[0])
    }

    /// A little-endian `u16`.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn u16(&mut self) -> Result<u16, BodyError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn u32(&mut self) -> Result<u32, BodyError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn u64(&mut self) -> Result<u64, BodyError> {
        let b = self.bytes(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    /// A 32-byte hash.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn hash(&mut self) -> Result<[u8; 32], BodyError> {
        let mut w = [0u8; 32];
        w.copy_from_slice(self.bytes(32)?);
        Ok(w)
    }

    /// True when every byte was read.
    pub fn rest_is_empty(&self) -> bool {
        self.at == self.body.len()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.body[self.at..];
        self.at = self.body.len();
        out
    }

    /// Fails unless the whole body was consumed.
    ///
    /// # Errors
    /// [`BodyError`] at the first unconsumed byte.
    pub fn finish(self) -> Result<(), BodyError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(BodyError { at: self.at })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, b) in frames {
            write_frame(&mut out, *k, b).expect("write to a Vec");
        }
        out
    }

    #[test]
    fn clean_end_between_frames_is_none() {
        let bytes = encode(&[(1, b"abc".to_vec()), (2, vec![])]);
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.read_frame().expect("frame 1").map(|f| f.kind), Some(1));
        assert_eq!(
            r.read_frame().expect("frame 2").map(|f| f.body),
            Some(vec![])
        );
        assert!(r.read_frame().expect("end").is_none());
    }

    #[test]
    fn every_truncation_inside_a_frame_is_an_error() {
        let bytes = encode(&[(7, vec![9u8; 20])]);
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            assert!(
                matches!(r.read_frame(), Err(FrameError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let mut h = header(3, 4);
        h[2] = 1;
        assert!(matches!(
            parse_header(&h),
            Err(FrameError::BadHeader { .. })
        ));
        let h = header(3, MAX_BODY + 1);
        assert!(matches!(
            parse_header(&h),
            Err(FrameError::BadHeader { .. })
        ));
        // Text on stdout (a login banner, a shell error) is not a frame.
        let mut r = FrameReader::new(&b"bash: diskdelta: command not found\n"[..]);
        assert!(r.read_frame().is_err());
    }

    #[test]
    fn body_reader_bounds() {
        let body = [1u8, 2, 3, 4, 5];
        let mut b = BodyReader::new(&body);
        assert_eq!(b.u32(), Ok(0x0403_0201));
        assert!(b.u32().is_err());
        assert_eq!(b.u8(), Ok(5));
        assert!(b.finish().is_ok());
        let mut b = BodyReader::new(&body);
        assert_eq!(b.u8(), Ok(1));
        assert_eq!(b.finish(), Err(BodyError { at: 1 }));
    }

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..10)) {
            let bytes = encode(&frames);
            let mut r = FrameReader::new(&bytes[..]);
            for (k, b) in &frames {
                let f = r.read_frame().expect("frame").expect("not the end");
                prop_assert_eq!(f.kind, *k);
                prop_assert_eq!(&f.body, b);
            }
            prop_assert!(r.read_frame().expect("end").is_none());
        }
    }
}
