//! Keeping a copy of an image up to date over SSH (`diskdelta sync`).
//!
//! Three parties: a **driver** (the local `diskdelta sync` process) and two
//! **endpoints**, the source and the target, each either a thread of the
//! driver (a local path) or `diskdelta serve` on a remote host reached by
//! ssh. All speak the same messages; data always flows through the driver.
//!
//! The protocol and connections are `crate::remote`'s.
//! - [`endpoint`]: the serve loop of one end: scanning into hash trees,
//!   answering node queries, reading and writing blocks.
//! - [`state`]: the resume file beside a regular-file target.

pub mod driver;
pub mod endpoint;
pub mod state;

use std::path::PathBuf;

use crate::io::IoError;
use crate::remote::message::ErrorCode;
use crate::remote::{RemoteError, WireError};

/// Errors of a sync session.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The conversation with a peer failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A block-device target is smaller than the source.
    #[error("target {path} is too small: {size} bytes, the source has {needed}")]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The source's size.
        needed: u64,
    },
    /// The final digests differ.
    #[error("verification failed: target digest differs from the source's after the sync")]
    Verify,
}

impl SyncError {
    /// A message out of place.
    pub(crate) fn protocol(text: String) -> SyncError {
        RemoteError::Protocol(text).into()
    }

    pub(crate) fn unexpected(got: &str, expected: &str) -> SyncError {
        RemoteError::unexpected(got, expected).into()
    }
}

impl WireError for SyncError {
    fn code(&self) -> ErrorCode {
        match self {
            SyncError::Io(e) => crate::remote::io_code(e),
            SyncError::Remote(e) => e.code(),
            SyncError::TooSmall { .. } => ErrorCode::TooSmall,
            SyncError::Verify => ErrorCode::Other,
        }
    }
}

#[cfg(test)]
mod tests;
