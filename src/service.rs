//! What `diskdelta serve` offers a peer: the first request of a session
//! picks the service (a sync endpoint, a backup source or a repository).
//! A server started for a repository (`--repo`, `--append-only`) serves
//! nothing else: a forced command must not also read the host's disks.

use crossbeam_channel::{Receiver, Sender};

use crate::remote::message::{ErrorCode, Message};
use crate::remote::{RemoteError, WireError};
use crate::repo::serve::ServeOptions;
use crate::repo::RepoError;
use crate::sync::SyncError;

/// Why a served session ended.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The handshake or the transport.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A sync endpoint.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A backup source or the repository.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl WireError for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Remote(e) => e.code(),
            ServiceError::Sync(e) => e.code(),
            ServiceError::Repo(e) => e.code(),
        }
    }
}

/// Runs the service `first` asks for.
///
/// # Errors
/// Whatever ended the session.
pub fn route(
    options: &ServeOptions,
    first: Message,
    requests: &Receiver<Message>,
    replies: &Sender<Message>,
) -> Result<(), ServiceError> {
    let repository_only = options.repo.is_some() || options.append_only;
    if repository_only && !matches!(first, Message::OpenRepo { .. }) {
        return Err(RemoteError::Refused(format!(
            "{} refused: this server serves only a repository (started with --repo or --append-only)",
            first.name()
        ))
        .into());
    }
    if crate::sync::endpoint::opens_session(&first) {
        return Ok(crate::sync::endpoint::run(first, requests, replies)?);
    }
    match first {
        Message::OpenBackup { chunk_size, path } => {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
            Ok(crate::repo::remote::serve_backup_source(
                chunk_size, path, requests, replies,
            )?)
        }
        Message::OpenRepo { path, .. } => {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
            Ok(crate::repo::serve::serve_repository(
                options, path, requests, replies,
            )?)
        }
        other => Err(RemoteError::unexpected(
            other.name(),
            "OpenSource, OpenTarget, OpenBackup or OpenRepo",
        )
        .into()),
    }
}

/// `diskdelta serve`: one session over stdin and stdout.
///
/// # Errors
/// Whatever ended the session.
pub fn serve_stdio(options: &ServeOptions) -> Result<(), ServiceError> {
    crate::remote::connection::serve_stdio(|requests, replies| {
        crate::remote::serve::serve(requests, replies, |first, requests, replies| {
            route(options, first, requests, replies)
        })
    })
}
