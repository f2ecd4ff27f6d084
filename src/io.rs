//! Sources and targets: regular files, block devices, pipes and
//! stdin/stdout behind one reader and one writer abstraction.
//!
//! - [`input`]: opening a source, its kind and size (if known).
//! - [`reader`]: a read-ahead thread that fills large recycled buffers and
//!   skips holes of sparse files without reading them.
//! - [`output`]: targets, with atomic publication of regular files (a
//!   temporary name renamed only after verification) and sparse writing.
//! - [`device`], [`sparse`]: the Linux calls underneath (block-device
//!   ioctls, `SEEK_DATA`/`SEEK_HOLE`, hole punching, `posix_fadvise`).

pub mod cleanup;
pub mod device;
pub mod input;
pub mod output;
pub mod reader;
pub mod sparse;

use std::path::PathBuf;

pub use input::{Input, InputKind, InputOptions, SourceFormat};
pub use output::{Output, OutputKind};
pub use reader::{Chunk, ChunkReader};

/// Errors of the I/O layer. Each carries the path (or `-`) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Opening failed.
    #[error("cannot open {path}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading failed at an offset.
    #[error("read error on {path} at byte {offset}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing failed at an offset.
    #[error("write error on {path} at byte {offset}")]
    Write {
        /// What was written.
        path: PathBuf,
        /// Byte offset of the failed write.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another operation (stat, ioctl, sync, rename) failed.
    #[error("{op} failed on {path}")]
    Op {
        /// The operation, e.g. "fsync".
        op: &'static str,
        /// The object.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path that is neither a file, block device nor stream.
    #[error("{path} is a {kind}, not a file, block device or pipe")]
    Unsupported {
        /// The object.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Reading stopped before the end because the pipeline was cancelled
    /// (some other stage failed: that failure is the cause).
    #[error("reading {path} was stopped")]
    Stopped {
        /// What was being read.
        path: PathBuf,
    },
    /// An NBD export (or the qemu-nbd serving an image) failed.
    #[error(transparent)]
    Nbd(#[from] crate::nbd::source::SourceError),
    /// The target is smaller than what must be written to it.
    #[error("{path} is too small: {size} bytes, needs {needed}")]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Required size.
        needed: u64,
    },
}

impl IoError {
    /// The underlying OS error, if any.
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            IoError::Open { source, .. }
            | IoError::Read { source, .. }
            | IoError::Write { source, .. }
            | IoError::Op { source, .. } => Some(source),
            IoError::Unsupported { .. }
            | IoError::TooSmall { .. }
            | IoError::Stopped { .. }
            | IoError::Nbd(_) => None,
        }
    }
}

impl crate::pipeline::Consequence for IoError {
    fn is_consequence(&self) -> bool {
        matches!(self, IoError::Stopped { .. })
    }
}
