//! A snapshot image with a copy-on-write overlay file on top
//! (`format::overlay`): reads come from the overlay's written blocks and
//! the snapshot elsewhere; writes go to the overlay only, never to the
//! repository.
//!
//! A write that covers part of a block not yet in the overlay first copies
//! the rest of that block from the snapshot (copy on write). Zeroing and
//! trimming whole blocks punch holes in the overlay's data area. `flush`
//! makes the data durable (fsync), then writes the map to the slot not in
//! use with the next generation and syncs again: a crash at any point
//! leaves the map of the previous flush, whose blocks are all intact.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::image::{Extent, ImageError, Segment, SnapshotImage};
use crate::format::overlay::{self as fmt, Layout, OverlayFormatError, OverlayHeader};
use crate::id::SnapshotId;

/// Errors of overlays.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Format {
        path: PathBuf,
        #[source]
        source: OverlayFormatError,
    },
    #[error("{path} belongs to snapshot {belongs}, not to {given}")]
    WrongSnapshot {
        path: PathBuf,
        belongs: String,
        given: String,
    },
    #[error("{path} covers {overlay} bytes, the snapshot has {snapshot}")]
    WrongSize {
        path: PathBuf,
        overlay: u64,
        snapshot: u64,
    },
    #[error("range {offset}+{len} lies beyond the image's end ({size} bytes)")]
    PastEnd { offset: u64, len: u64, size: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
}

struct State {
    map: Vec<u8>,
    generation: u64,
    /// The slot the last flush wrote.
    slot: usize,
    /// Writes since the last flush.
    dirty: bool,
}

/// A snapshot image with its overlay (shareable between threads).
pub struct OverlayImage {
    base: Arc<SnapshotImage>,
    file: File,
    path: PathBuf,
    block_size: u64,
    layout: Layout,
    state: Mutex<State>,
}

impl std::fmt::Debug for OverlayImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayImage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reads the map of the overlay at `path` (the newest valid slot).
///
/// # Errors
/// Unreadable file, no valid slot.
pub fn read_map(
    file: &File,
    path: &Path,
) -> Result<(OverlayHeader, Layout, usize, Vec<u8>), OverlayError> {
    let io = |source| OverlayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |source| OverlayError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; fmt::HEADER_LEN];
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let (_, layout) = fmt::decode_header(&head).map_err(format)?;
    let read_slot = |n: usize| -> Result<_, OverlayError> {
        let mut b = vec![0u8; layout.slot_len as usize];
        file.read_exact_at(&mut b, layout.slot_offset(n))
            .map_err(io)?;
        Ok(fmt::decode_slot(&b))
    };
    let (slot, h, map) = fmt::choose(read_slot(0)?, read_slot(1)?).map_err(format)?;
    Ok((h, layout, slot, map))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OverlayImage {
    /// Opens the overlay at `path` on `base`, or creates it (under a
    /// temporary name, renamed when complete) when it does not exist.
    ///
    /// # Errors
    /// The overlay belongs to another snapshot or size, is damaged, or
    /// cannot be read or written.
    pub fn open(base: Arc<SnapshotImage>, path: &Path) -> Result<OverlayImage, OverlayError> {
        let io = |source| OverlayError::Io {
            path: path.to_path_buf(),
            source,
        };
        let snapshot = base.snapshot().id;
        if !path.exists() {
            create(path, base.size(), snapshot)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let (h, layout, slot, map) = read_map(&file, path)?;
        if h.snapshot != snapshot {
            return Err(OverlayError::WrongSnapshot {
                path: path.to_path_buf(),
                belongs: h.snapshot.to_hex(),
                given: snapshot.to_hex(),
            });
        }
        if h.size != base.size() {
            return Err(OverlayError::WrongSize {
                path: path.to_path_buf(),
                overlay: h.size,
                snapshot: base.size(),
            });
        }
        Ok(OverlayImage {
            base,
            file,
            path: path.to_path_buf(),
            block_size: u64::from(h.block_size),
            layout,
            state: Mutex::new(State {
                map,
                generation: h.generation,
                slot,
                dirty: false,
            }),
        })
    }

    pub fn base(&self) -> &Arc<SnapshotImage> {
        &self.base
    }

    pub fn size(&self) -> u64 {
        self.base.size()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Runs of written blocks `(offset, len)`, in order, clipped to the image.
    pub fn written_runs(&self) -> Vec<(u64, u64)> {
        let st = lock(&self.state);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..self.layout.blocks {
            if fmt::is_set(&st.map, i) {
                let start = i * self.block_size;
                let len = self.block_size.min(self.size() - start);
                match out.last_mut() {
                    Some((o, l)) if *o + *l == start => *l += len,
                    _ => out.push((start, len)),
                }
            }
        }
        out
    }

    fn io(&self, source: std::io::Error) -> OverlayError {
        OverlayError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(OverlayError::PastEnd {
                offset,
                len,
                size: self.size(),
            }),
        }
    }

    fn block_at(&self, i: u64) -> u64 {
        self.layout.data_offset + i * self.block_size
    }

    /// The bytes of a range: written blocks from the overlay, the rest
    /// from the snapshot.
    ///
    /// # Errors
    /// Past the end, unreadable overlay or snapshot chunks.
    pub fn read_segments(&self, offset: u64, len: usize) -> Result<Vec<Segment>, OverlayError> {
        self.check(offset, len as u64)?;
        let end = offset + len as u64;
        // Pieces of (from overlay?, start, end), decided under the lock.
        let mut pieces: Vec<(bool, u64, u64)> = Vec::new();
        {
            let st = lock(&self.state);
            let mut at = offset;
            while at < end {
                let i = at / self.block_size;
                let upto = ((i + 1) * self.block_size).min(end);
                let written = fmt::is_set(&st.map, i);
                match pieces.last_mut() {
                    Some((w, _, e)) if *w == written && *e == at => *e = upto,
                    _ => pieces.push((written, at, upto)),
                }
                at = upto;
            }
        }
        let mut out = Vec::new();
        for (written, start, stop) in pieces {
            let n = (stop - start) as usize;
            if written {
                let mut buf = vec![0u8; n];
                let at = self.layout.data_offset + start;
                self.file
                    .read_exact_at(&mut buf, at)
                    .map_err(|e| self.io(e))?;
                out.push(Segment::Data {
                    chunk: Arc::new(buf),
                    start: 0,
                    len: n,
                });
            } else {
                out.extend(self.base.read_segments(start, n)?);
            }
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// As [`Self::read_segments`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OverlayError> {
        let mut at = 0;
        for s in self.read_segments(offset, buf.len())? {
            s.copy_to(&mut buf[at..]);
            at += s.len();
        }
        Ok(())
    }

    /// Data and zero runs: written blocks are data, the rest as the snapshot.
    ///
    /// # Errors
    /// Past the end.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, OverlayError> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |e: Extent| match out.last_mut() {
            Some(l) if l.zero == e.zero && l.offset + l.len == e.offset => l.len += e.len,
            _ => out.push(e),
        };
        let st = lock(&self.state);
        let mut at = offset;
        while at < end {
            let i = at / self.block_size;
            let upto = ((i + 1) * self.block_size).min(end);
            if fmt::is_set(&st.map, i) {
                push(Extent {
                    offset: at,
                    len: upto - at,
                    zero: false,
                });
            } else {
                for e in self.base.extents(at, upto - at)? {
                    push(e);
                }
            }
            at = upto;
        }
        Ok(out)
    }

    /// Copies block `i` from the snapshot into the overlay unless it is
    /// there already or `covered` (about to be overwritten whole).
    fn copy_up(&self, st: &mut State, i: u64, covered: bool) -> Result<(), OverlayError> {
        if fmt::is_set(&st.map, i) {
            return Ok(());
        }
        if !covered {
            let start = i * self.block_size;
            let n = self.block_size.min(self.size() - start) as usize;
            let mut buf = vec![0u8; n];
            self.base.read_at(start, &mut buf)?;
            if !buf.iter().all(|&b| b == 0) {
                self.file
                    .write_all_at(&buf, self.block_at(i))
                    .map_err(|e| self.io(e))?;
            }
        }
        fmt::set(&mut st.map, i);
        st.dirty = true;
        Ok(())
    }

    /// The blocks a range touches, and whether each is covered whole.
    fn blocks(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, bool)> + '_ {
        let end = offset + len;
        let first = offset / self.block_size;
        let last = if len == 0 {
            first
        } else {
            (end - 1) / self.block_size + 1
        };
        (first..last).map(move |i| {
            let start = i * self.block_size;
            let stop = (start + self.block_size).min(self.size());
            (i, offset <= start && end >= stop)
        })
    }

    /// Writes `data` at `offset` into the overlay (flushed first when `fua`).
    ///
    /// # Errors
    /// Past the end, I/O errors of the overlay, unreadable snapshot chunks
    /// (copy on write).
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), OverlayError> {
        self.check(offset, data.len() as u64)?;
        {
            let mut st = lock(&self.state);
            for (i, covered) in self.blocks(offset, data.len() as u64) {
                self.copy_up(&mut st, i, covered)?;
            }
            self.file
                .write_all_at(data, self.layout.data_offset + offset)
                .map_err(|e| self.io(e))?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes a range read as zeros: whole blocks become holes.
    ///
    /// # Errors
    /// As [`Self::write`].
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), OverlayError> {
        self.check(offset, len)?;
        {
            let mut st = lock(&self.state);
            for (i, covered) in self.blocks(offset, len) {
                self.copy_up(&mut st, i, covered)?;
                let start = (i * self.block_size).max(offset);
                let stop = ((i + 1) * self.block_size).min(offset + len);
                let at = self.layout.data_offset + start;
                let punched = covered
                    && crate::io::sparse::punch_hole(&self.file, at, stop - start).unwrap_or(false);
                if !punched {
                    let zeros = vec![0u8; (stop - start) as usize];
                    self.file.write_all_at(&zeros, at).map_err(|e| self.io(e))?;
                }
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every completed write durable: data first, then the map in
    /// the other slot.
    ///
    /// # Errors
    /// Syncing or writing the map fails.
    pub fn flush(&self) -> Result<(), OverlayError> {
        let mut st = lock(&self.state);
        if !st.dirty {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| self.io(e))?;
        let next = 1 - st.slot;
        let h = OverlayHeader {
            block_size: self.block_size as u32,
            size: self.size(),
            snapshot: self.base.snapshot().id,
            generation: st.generation + 1,
        };
        let slot = fmt::encode_slot(&h, &st.map).map_err(|source| OverlayError::Format {
            path: self.path.clone(),
            source,
        })?;
        self.file
            .write_all_at(&slot, self.layout.slot_offset(next))
            .map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        st.generation += 1;
        st.slot = next;
        st.dirty = false;
        Ok(())
    }
}

impl Drop for OverlayImage {
    fn drop(&mut self) {
        // Writes a client did not flush are kept when possible.
        let _ = self.flush();
    }
}

/// Creates an empty overlay at `path` for a snapshot: both slots, sparse
/// data area, written under a temporary name and renamed.
fn create(path: &Path, size: u64, snapshot: SnapshotId) -> Result<(), OverlayError> {
    let io = |source| OverlayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |source| OverlayError::Format {
        path: path.to_path_buf(),
        source,
    };
    let block_size = fmt::DEFAULT_BLOCK_SIZE;
    let layout = Layout::new(size, block_size).map_err(format)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".overlay-")
        .tempfile_in(dir)
        .map_err(io)?;
    let map = vec![0u8; layout.map_len];
    for (n, generation) in [(0, 1), (1, 0)] {
        let h = OverlayHeader {
            block_size,
            size,
            snapshot,
            generation,
        };
        let slot = fmt::encode_slot(&h, &map).map_err(format)?;
        tmp.as_file()
            .write_all_at(&slot, layout.slot_offset(n))
            .map_err(io)?;
    }
    tmp.as_file()
        .set_len(layout.file_len(block_size))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist_noclobber(path).map_err(|e| io(e.error))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
