//! Shared by the fuzz targets (included with `#[path]`).

use std::io::{self, Read};

use diskdelta::format::Extent;

/// A reader that hands out at most `step` bytes per call, so the parsers'
/// handling of short reads (as from a pipe) is exercised too.
pub struct Chunky<'a> {
    pub data: &'a [u8],
    pub step: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Splits off a control byte: (step for [`Chunky`], mode bits, rest).
pub fn control(data: &[u8]) -> Option<(usize, u8, &[u8])> {
    let (&c, rest) = data.split_first()?;
    let step = match c & 0x0F {
        0 => usize::MAX,
        n => usize::from(n),
    };
    Some((step, c >> 4, rest))
}

/// What every reader promises: extents non-empty, in strictly increasing
/// order, not overlapping.
pub struct OrderCheck {
    end: u64,
    first: bool,
}

impl OrderCheck {
    pub fn new() -> Self {
        OrderCheck {
            end: 0,
            first: true,
        }
    }

    pub fn check(&mut self, e: &Extent) {
        assert!(!e.is_empty(), "empty extent at {}", e.offset);
        assert!(
            self.first || e.offset >= self.end,
            "extent at {} overlaps the previous one ending at {}",
            e.offset,
            self.end
        );
        self.first = false;
        self.end = e.offset.checked_add(e.len()).expect("extent end overflows");
    }

    pub fn end(&self) -> u64 {
        self.end
    }
}
