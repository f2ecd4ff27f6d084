//! The transport shared by `sync` and the repository: ssh spawning and
//! quoting ([`ssh`]), frames and messages ([`frame`], [`message`], spec:
//! `docs/formats/wire.md`), a connection to a peer ([`connection`]: a
//! thread of this process or `diskdelta serve` on another host) and the
//! `serve` side's handshake and dispatch ([`serve`]).
//!
//! This module knows neither `sync` nor `repo`: `serve` hands the first
//! request of a session to a router its caller supplies
//! (`crate::service` routes to both).

pub mod connection;
pub mod deploy;
pub mod frame;
pub mod location;
pub mod message;
pub mod serve;
pub mod ssh;

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

/// An error that can be sent to the peer as an `Error` message.
pub trait WireError: std::error::Error + Send + Sync + 'static {
    /// The error class sent to the peer.
    fn code(&self) -> ErrorCode;
}

/// Errors of a conversation with a peer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Local I/O of the source a peer serves.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The byte stream to a peer failed.
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    /// A peer sent a malformed message.
    #[error(transparent)]
    Message(#[from] message::MessageError),
    /// Protocol versions differ.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}; install the same diskdelta version on both hosts, or pass --deploy to run this one there")]
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
    #[error("source {path} changed while it was read (at byte {offset}); back up or sync a snapshot or a frozen image")]
    SourceChanged {
        /// The source.
        path: PathBuf,
        /// First changed byte seen.
        offset: u64,
    },
    /// A source that cannot be read twice.
    #[error("source {path} is a pipe; a remote source must be a file or block device")]
    NotSeekable {
        /// The source.
        path: PathBuf,
    },
    /// Copying diskdelta to the remote host failed.
    #[error(transparent)]
    Deploy(#[from] deploy::DeployError),
    /// Starting or talking to ssh failed.
    #[error("{0}")]
    Ssh(String),
    /// A local endpoint (a thread of this process) failed: its own error.
    #[error(transparent)]
    Local(Box<dyn std::error::Error + Send + Sync>),
    /// The peer asked for something this end refuses (an append-only
    /// repository's deletes and overwrites, paths outside the allowed ones).
    #[error("{0}")]
    Refused(String),
}

impl RemoteError {
    /// A message out of place.
    pub fn unexpected(got: &str, expected: &str) -> RemoteError {
        RemoteError::Protocol(format!("unexpected {got} message, expected {expected}"))
    }
}

/// The error class of a local I/O failure.
pub fn io_code(e: &IoError) -> ErrorCode {
    match e {
        IoError::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            ErrorCode::Permission
        }
        IoError::Open { .. } => ErrorCode::Open,
        _ => ErrorCode::Io,
    }
}

impl WireError for RemoteError {
    fn code(&self) -> ErrorCode {
        match self {
            RemoteError::Version { .. } => ErrorCode::Version,
            RemoteError::Io(e) => io_code(e),
            RemoteError::SourceChanged { .. } => ErrorCode::SourceChanged,
            RemoteError::Protocol(_) | RemoteError::Message(_) | RemoteError::Frame(_) => {
                ErrorCode::Protocol
            }
            RemoteError::Refused(_) => ErrorCode::Refused,
            _ => ErrorCode::Other,
        }
    }
}
