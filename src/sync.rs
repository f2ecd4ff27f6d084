//! Keeping a copy of an image up to date over SSH (`diskdelta sync`).
//!
//! Three parties: a **driver** (the local `diskdelta sync` process) and two
//! **endpoints**, the source and the target, each either a thread of the
//! driver (a local path) or `diskdelta serve` on a remote host reached by
//! ssh. All speak the same messages; data always flows through the driver.
//!
//! - [`frame`], [`message`]: the protocol (spec: `docs/formats/wire.md`).
//! - [`endpoint`]: the serve loop of one end: scanning into hash trees,
//!   answering node queries, reading and writing blocks.
//! - [`state`]: the resume file beside a regular-file target.

pub mod connection;
pub mod driver;
pub mod endpoint;
pub mod frame;
pub mod location;
pub mod message;
pub mod state;

use std::path::PathBuf;

use crate::io::IoError;
use message::ErrorCode;

/// Largest `Read`/`Write` in bytes.
pub const MAX_DATA: usize = 1 << 20;

/// An error and its sources on one line, `a: b: c`, as sent to the peer.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Errors of a sync session.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The byte stream to a peer failed.
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    /// A peer sent a malformed message.
    #[error(transparent)]
    Message(#[from] message::MessageError),
    /// Protocol versions differ.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}; install the same diskdelta version on both hosts")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// A message out of place.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A peer sent nothing for longer than the idle timeout.
    #[error("no data from {peer} for {seconds} s: the connection is stalled (timeout set by DISKDELTA_TIMEOUT)")]
    Stalled {
        /// Who.
        peer: String,
        /// The timeout.
        seconds: u64,
    },
    /// A peer went away.
    #[error("connection to {peer} lost")]
    Disconnected {
        /// Who.
        peer: String,
    },
    /// A peer reported an error.
    #[error("{peer}: {message}")]
    Remote {
        /// Who.
        peer: String,
        /// Its error class.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The source changed after it was hashed.
    #[error("source {path} changed during the sync (at byte {offset}); sync from a snapshot or a frozen image")]
    SourceChanged {
        /// The source.
        path: PathBuf,
        /// First changed byte seen.
        offset: u64,
    },
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
    /// A source that cannot be read twice.
    #[error("source {path} is a pipe; sync needs a file or block device")]
    NotSeekable {
        /// The source.
        path: PathBuf,
    },
    /// Starting or talking to ssh failed.
    #[error("{0}")]
    Ssh(String),
    /// The final digests differ.
    #[error("verification failed: target digest differs from the source's after the sync")]
    Verify,
}

impl SyncError {
    /// The error class sent to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            SyncError::Version { .. } => ErrorCode::Version,
            SyncError::Io(IoError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ErrorCode::Permission
            }
            SyncError::Io(IoError::Open { .. }) => ErrorCode::Open,
            SyncError::Io(_) => ErrorCode::Io,
            SyncError::SourceChanged { .. } => ErrorCode::SourceChanged,
            SyncError::TooSmall { .. } => ErrorCode::TooSmall,
            SyncError::Protocol(_) | SyncError::Message(_) | SyncError::Frame(_) => {
                ErrorCode::Protocol
            }
            _ => ErrorCode::Other,
        }
    }

    pub(crate) fn unexpected(got: &str, expected: &str) -> SyncError {
        SyncError::Protocol(format!("unexpected {got} message, expected {expected}"))
    }
}

#[cfg(test)]
mod tests;
