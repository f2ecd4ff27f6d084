//! What the NBD server serves: an [`Export`] answers reads, block status
//! and (when writable) writes at byte offsets. Snapshots are served by
//! [`SnapshotExport`] (read-only) and `OverlayExport` (writes to a
//! copy-on-write overlay); [`MemoryExport`] serves a byte vector (tests and
//! the fuzz target).

use std::sync::{Arc, Mutex};

use super::super::proto;
use crate::repo::image::{Extent, ImageError, Segment, SnapshotImage};
use crate::repo::overlay::{OverlayError, OverlayImage};

/// A failed request: the protocol's error value and a message for the log
/// (and for clients that negotiated structured replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub errno: u32,
    pub message: String,
}

impl ExportError {
    pub fn new(errno: u32, message: impl Into<String>) -> Self {
        ExportError {
            errno,
            message: message.into(),
        }
    }
}

impl From<ImageError> for ExportError {
    fn from(e: ImageError) -> Self {
        let errno = match e {
            ImageError::PastEnd { .. } => proto::EINVAL,
            _ => proto::EIO,
        };
        ExportError::new(errno, error_chain(&e))
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// One export of the server.
pub trait Export: Send + Sync {
    /// The name clients ask for.
    fn name(&self) -> &str;
    /// A line for `NBD_OPT_LIST` and `nbdinfo`.
    fn description(&self) -> String;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are accepted.
    fn writable(&self) -> bool {
        false
    }
    /// The bytes of a range inside the export.
    ///
    /// # Errors
    /// `EIO` for unreadable data.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<Segment>, ExportError>;
    /// Data and zero runs of a range inside the export.
    ///
    /// # Errors
    /// `EIO` when the map cannot be read.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError>;
    /// Writes `data` at `offset` (durable before returning when `fua`).
    ///
    /// # Errors
    /// `EPERM` on read-only exports, `EIO`/`ENOSPC` from the overlay.
    fn write(&self, _offset: u64, _data: &[u8], _fua: bool) -> Result<(), ExportError> {
        Err(read_only())
    }
    /// Makes a range read as zeros.
    ///
    /// # Errors
    /// As [`Export::write`].
    fn write_zeroes(&self, _offset: u64, _len: u64, _fua: bool) -> Result<(), ExportError> {
        Err(read_only())
    }
    /// Discards a range (reads as zeros afterwards here).
    ///
    /// # Errors
    /// As [`Export::write`].
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        self.write_zeroes(offset, len, fua)
    }
    /// Makes every completed write durable.
    ///
    /// # Errors
    /// `EIO` when syncing fails.
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    /// A hint that a range will be read soon.
    fn cache(&self, _offset: u64, _len: u64) {}
}

fn read_only() -> ExportError {
    ExportError::new(proto::EPERM, "the export is read-only")
}

/// A snapshot served read-only.
#[derive(Debug)]
pub struct SnapshotExport {
    name: String,
    image: Arc<SnapshotImage>,
}

impl SnapshotExport {
    pub fn new(name: impl Into<String>, image: Arc<SnapshotImage>) -> Self {
        SnapshotExport {
            name: name.into(),
            image,
        }
    }

    pub fn image(&self) -> &Arc<SnapshotImage> {
        &self.image
    }
}

/// The description of a snapshot for listings.
pub fn describe(image: &SnapshotImage) -> String {
    let meta = &image.snapshot().meta;
    format!(
        "snapshot {} of {} taken {}",
        image.snapshot().id.short(),
        meta.name,
        meta.time
    )
}

impl Export for SnapshotExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> String {
        describe(&self.image)
    }

    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<Segment>, ExportError> {
        Ok(self.image.read_segments(offset, len)?)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        Ok(self.image.extents(offset, len)?)
    }

    fn cache(&self, offset: u64, len: u64) {
        self.image.prefetch(offset, len);
    }
}

/// A byte vector served as an export (writable when asked): for tests and
/// the fuzz target. Ranges of `bad` read as I/O errors.
#[derive(Debug)]
pub struct MemoryExport {
    name: String,
    data: Mutex<Vec<u8>>,
    writable: bool,
    bad: Option<(u64, u64)>,
}

impl MemoryExport {
    pub fn new(name: impl Into<String>, data: Vec<u8>, writable: bool) -> Self {
        MemoryExport {
            name: name.into(),
            data: Mutex::new(data),
            writable,
            bad: None,
        }
    }

    /// Makes `offset..offset + len` unreadable.
    pub fn with_bad_range(mut self, offset: u64, len: u64) -> Self {
        self.bad = Some((offset, len));
        self
    }

    /// A copy of the bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, ExportError> {
        let size = self.lock().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(ExportError::new(proto::EINVAL, "beyond the end")),
        }
    }
}

impl Export for MemoryExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> String {
        "bytes in memory".into()
    }

    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<Segment>, ExportError> {
        let r = self.range(offset, len as u64)?;
        if let Some((b, n)) = self.bad {
            if offset < b + n && b < offset + len as u64 {
                return Err(ExportError::new(proto::EIO, "unreadable range"));
            }
        }
        let data = self.lock()[r].to_vec();
        Ok(vec![Segment::Data {
            chunk: Arc::new(data),
            start: 0,
            len,
        }])
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        let r = self.range(offset, len)?;
        let zero = self.lock()[r].iter().all(|&b| b == 0);
        Ok(vec![Extent { offset, len, zero }])
    }

    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), ExportError> {
        if !self.writable {
            return Err(read_only());
        }
        let r = self.range(offset, data.len() as u64)?;
        self.lock()[r].copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        if !self.writable {
            return Err(read_only());
        }
        let r = self.range(offset, len)?;
        self.lock()[r].fill(0);
        Ok(())
    }
}

impl From<OverlayError> for ExportError {
    fn from(e: OverlayError) -> Self {
        let errno = match &e {
            OverlayError::PastEnd { .. } => proto::EINVAL,
            OverlayError::Image(ImageError::PastEnd { .. }) => proto::EINVAL,
            OverlayError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                proto::ENOSPC
            }
            _ => proto::EIO,
        };
        ExportError::new(errno, error_chain(&e))
    }
}

/// A snapshot served writable: writes go to its copy-on-write overlay.
#[derive(Debug)]
pub struct OverlayExport {
    name: String,
    image: Arc<OverlayImage>,
}

impl OverlayExport {
    pub fn new(name: impl Into<String>, image: Arc<OverlayImage>) -> Self {
        OverlayExport {
            name: name.into(),
            image,
        }
    }
}

impl Export for OverlayExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> String {
        format!(
            "{}, writable through {}",
            describe(self.image.base()),
            self.image.path().display()
        )
    }

    fn size(&self) -> u64 {
        self.image.size()
    }

    fn writable(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<Segment>, ExportError> {
        Ok(self.image.read_segments(offset, len)?)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        Ok(self.image.extents(offset, len)?)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        Ok(self.image.write(offset, data, fua)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        Ok(self.image.write_zeroes(offset, len, fua)?)
    }

    fn flush(&self) -> Result<(), ExportError> {
        Ok(self.image.flush()?)
    }

    fn cache(&self, offset: u64, len: u64) {
        self.image.base().prefetch(offset, len);
    }
}
