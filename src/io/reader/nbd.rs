//! The read-ahead loop for an NBD export: `base:allocation` block status
//! says which ranges read as zeros; those are not read (a chunk wholly in
//! them arrives as a hole), the rest is read with several requests in
//! flight.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};

use super::{digest_segments, stopped, AlignedBuf, Chunk, ReadSummary, ReaderOptions};
use crate::digest::ImageHasher;
use crate::io::IoError;
use crate::nbd::client::Extent;
use crate::nbd::proto::STATE_ZERO;
use crate::nbd::source::{NbdSource, SourceError};
use crate::pipeline::Cancel;

/// Allocation is asked for this much ahead at a time.
const STATUS_WINDOW: u64 = 1 << 30;
/// Zero gaps shorter than this between data ranges are read through: one
/// request costs more than this many bytes.
const MERGE_GAP: u64 = 256 << 10;

/// The data ranges (not reading as zeros) of `start..end`, with short gaps
/// merged, from allocation extents that cover it.
fn data_ranges(extents: &VecDeque<Extent>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents {
        if e.end() <= start {
            continue;
        }
        if e.offset >= end {
            break;
        }
        if e.flags & STATE_ZERO != 0 {
            continue;
        }
        let (s, t) = (e.offset.max(start), e.end().min(end));
        match out.last_mut() {
            Some(last) if s - last.1 < MERGE_GAP => last.1 = t,
            _ => out.push((s, t)),
        }
    }
    out
}

pub(super) fn read_loop(
    source: &NbdSource,
    path: &Path,
    options: ReaderOptions,
    chunks: Sender<Result<Chunk, IoError>>,
    free: Receiver<AlignedBuf>,
    cancel: &Cancel,
) -> Result<ReadSummary, IoError> {
    let size = source.size();
    let end = options.limit.map_or(size, |l| l.min(size));
    let mut hasher = options.digest.then(ImageHasher::new);
    let mut offset = options.start.min(end);
    let mut extents: VecDeque<Extent> = VecDeque::new();
    let mut known_to = offset;
    let fail = |e: crate::nbd::client::NbdError| IoError::Nbd(SourceError::from(e));
    let result = loop {
        let mut buf = match cancel.recv(&free) {
            Ok(buf) => buf,
            Err(_) => break Err(stopped(path)),
        };
        let want = (end - offset).min(buf.capacity() as u64) as usize;
        if want == 0 {
            break Ok(());
        }
        let chunk_end = offset + want as u64;
        while known_to < chunk_end {
            let window_end = (known_to + STATUS_WINDOW).min(size);
            match source.allocation(known_to, window_end) {
                Ok(got) => {
                    known_to = got.last().map_or(window_end, Extent::end);
                    extents.extend(got);
                }
                Err(e) => {
                    let _ = cancel.send(&chunks, Err(fail(e)));
                    break;
                }
            }
        }
        if known_to < chunk_end {
            break Ok(());
        }
        while extents.front().is_some_and(|e| e.end() <= offset) {
            extents.pop_front();
        }
        let ranges = data_ranges(&extents, offset, chunk_end);
        let mut segments = Vec::new();
        let hole = ranges.is_empty();
        if hole {
            if let Some(h) = hasher.as_mut() {
                super::digest_segments(h, None, want, offset, &mut segments);
            }
        } else {
            let data = &mut buf.as_mut_slice()[..want];
            let mut at = offset;
            let mut failed = None;
            for &(s, t) in &ranges {
                data[(at - offset) as usize..(s - offset) as usize].fill(0);
                if let Err(e) =
                    source.read_at(&mut data[(s - offset) as usize..(t - offset) as usize], s)
                {
                    failed = Some(e);
                    break;
                }
                at = t;
            }
            if let Some(e) = failed {
                let _ = cancel.send(&chunks, Err(fail(e)));
                break Ok(());
            }
            data[(at - offset) as usize..].fill(0);
            if let Some(h) = hasher.as_mut() {
                digest_segments(h, Some(data), want, offset, &mut segments);
            }
        }
        let chunk = Chunk {
            offset,
            len: want,
            hole,
            buf,
            segments,
        };
        if let Some(p) = &options.progress {
            p.fetch_add(want as u64, Ordering::Relaxed);
        }
        offset += want as u64;
        if cancel.send(&chunks, Ok(chunk)).is_err() {
            break Err(stopped(path));
        }
    };
    result?;
    Ok(ReadSummary {
        bytes: offset - options.start.min(end),
        digest: hasher.map(ImageHasher::finalize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, length: u64, zero: bool) -> Extent {
        Extent {
            offset,
            length,
            flags: if zero { STATE_ZERO | 1 } else { 0 },
        }
    }

    #[test]
    fn data_ranges_skip_zeros_and_merge_short_gaps() {
        let ext: VecDeque<_> = [
            e(0, 4096, false),
            e(4096, 4096, true),
            e(8192, 4096, false),
            e(12288, 1 << 20, true),
            e(12288 + (1 << 20), 8192, false),
        ]
        .into();
        assert_eq!(
            data_ranges(&ext, 0, 4 << 20),
            vec![(0, 12288), (12288 + (1 << 20), 20480 + (1 << 20))]
        );
        assert_eq!(data_ranges(&ext, 4096, 8192), vec![]);
        assert_eq!(data_ranges(&ext, 5000, 9000), vec![(8192, 9000)]);
    }
}
