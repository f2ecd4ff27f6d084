//! The read-ahead loop for an NBD export: `base:allocation` block status
//! says which ranges read as zeros; those are not read (a chunk wholly in
//! them arrives as a hole), the rest is read with several requests in
//! flight.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{digest_segments, stopped, AlignedBuf, Chunk, ReadSummary, ReaderOptions};
use crate::digest::ImageHasher;
use crate::io::IoError;
use crate::nbd::client::Extent;
use crate::nbd::proto::STATE_ZERO;
use crate::nbd::source::{NbdSource, SourceError};
use crate::pipeline::{Cancel, Stopped};

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
    let start = options.start.min(end);
    let mut hasher = options.digest.then(ImageHasher::new);
    // Fetching runs ahead on a thread of its own, so the next chunk's
    // requests are in flight while this one is hashed and handed on.
    let fetch_cancel = cancel.child();
    let (tx, rx) = bounded::<Result<Chunk, IoError>>(1);
    std::thread::scope(|s| {
        // The fetcher owns the sender: its end closes the channel.
        let fetcher = s.spawn({
            let cancel = fetch_cancel.clone();
            move || fetch(source, start, end, &tx, &free, &cancel)
        });
        let mut offset = start;
        let result = loop {
            let mut chunk = match cancel.recv(&rx) {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    let _ = cancel.send(&chunks, Err(e));
                    break Ok(());
                }
                // The fetcher finished (or stopped, having said why).
                Err(Stopped::Closed) => break Ok(()),
                Err(Stopped::Cancelled) => break Err(stopped(path)),
            };
            if let Some(h) = hasher.as_mut() {
                let data = (!chunk.hole).then(|| &chunk.buf.as_slice()[..chunk.len]);
                let mut segments = Vec::new();
                digest_segments(h, data, chunk.len, chunk.offset, &mut segments);
                chunk.segments = segments;
            }
            if let Some(p) = &options.progress {
                p.fetch_add(chunk.len as u64, Ordering::Relaxed);
            }
            offset += chunk.len as u64;
            if cancel.send(&chunks, Ok(chunk)).is_err() {
                break Err(stopped(path));
            }
        };
        fetch_cancel.cancel();
        drop(rx);
        if fetcher.join().is_err() {
            return Err(IoError::Op {
                op: "NBD fetch thread",
                path: path.to_path_buf(),
                source: std::io::Error::other("panicked"),
            });
        }
        result?;
        Ok(ReadSummary {
            bytes: offset - start,
            digest: hasher.map(ImageHasher::finalize),
        })
    })
}

/// Fills buffers with `start..end` in order: ranges that read as zeros are
/// not read, a chunk wholly inside them is a hole.
fn fetch(
    source: &NbdSource,
    start: u64,
    end: u64,
    out: &Sender<Result<Chunk, IoError>>,
    free: &Receiver<AlignedBuf>,
    cancel: &Cancel,
) {
    let size = source.size();
    let mut offset = start;
    let mut extents: VecDeque<Extent> = VecDeque::new();
    let mut known_to = offset;
    let fail = |e: crate::nbd::client::NbdError| IoError::Nbd(SourceError::from(e));
    while offset < end {
        let Ok(mut buf) = cancel.recv(free) else {
            return;
        };
        let want = (end - offset).min(buf.capacity() as u64) as usize;
        let chunk_end = offset + want as u64;
        while known_to < chunk_end {
            let window_end = (known_to + STATUS_WINDOW).min(size);
            match source.allocation(known_to, window_end) {
                Ok(got) => {
                    known_to = got.last().map_or(window_end, Extent::end);
                    extents.extend(got);
                }
                Err(e) => {
                    let _ = cancel.send(out, Err(fail(e)));
                    return;
                }
            }
        }
        while extents.front().is_some_and(|e| e.end() <= offset) {
            extents.pop_front();
        }
        let ranges = data_ranges(&extents, offset, chunk_end);
        let hole = ranges.is_empty();
        if !hole {
            let data = &mut buf.as_mut_slice()[..want];
            let mut at = offset;
            for &(s, t) in &ranges {
                data[(at - offset) as usize..(s - offset) as usize].fill(0);
                let piece = &mut data[(s - offset) as usize..(t - offset) as usize];
                if let Err(e) = source.read_at(piece, s) {
                    let _ = cancel.send(out, Err(fail(e)));
                    return;
                }
                at = t;
            }
            data[(at - offset) as usize..].fill(0);
        }
        let chunk = Chunk {
            offset,
            len: want,
            hole,
            buf,
            segments: Vec::new(),
        };
        if cancel.send(out, Ok(chunk)).is_err() {
            return;
        }
        offset = chunk_end;
    }
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
