//! `backup --from-overlay`: a snapshot with the writes of its overlay
//! stored as a new snapshot.
//!
//! The overlay's map is the change tracker: its written blocks become
//! changed runs, and the change-tracked backup (`repo::tracked`) reads only
//! the chunks they touch, through the merged image (overlay bytes over the
//! snapshot's); every other chunk keeps the snapshot's id unread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backup::{BackupOptions, BackupSession, BackupSummary};
use super::image::{ImageError, ImageOptions, SnapshotImage};
use super::overlay::{OverlayError, OverlayImage};
use super::tracked::{TrackedSource, TrackedStats};
use super::{RepoError, Repository};
use crate::change::tracked::{TrackedKind, TrackedRun};
use crate::change::Run;
use crate::io::IoError;

/// Errors of overlay backups.
#[derive(Debug, thiserror::Error)]
pub enum OverlayBackupError {
    #[error("{0}: no such overlay")]
    NoOverlay(PathBuf),
    #[error("snapshot {snapshot} has {snapshot_chunks}-byte chunks, the repository {repo_chunks}")]
    ChunkSize {
        snapshot: String,
        snapshot_chunks: u32,
        repo_chunks: u32,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Overlay(#[from] Box<OverlayError>),
    #[error(transparent)]
    Image(#[from] Box<ImageError>),
}

impl From<OverlayError> for OverlayBackupError {
    fn from(e: OverlayError) -> Self {
        OverlayBackupError::Overlay(Box::new(e))
    }
}

impl From<ImageError> for OverlayBackupError {
    fn from(e: ImageError) -> Self {
        OverlayBackupError::Image(Box::new(e))
    }
}

impl OverlayBackupError {
    /// True when the repository's data failed verification.
    pub fn is_integrity(&self) -> bool {
        match self {
            OverlayBackupError::Repo(e) => e.is_integrity(),
            _ => false,
        }
    }
}

impl TrackedSource for OverlayImage {
    fn describe(&self) -> String {
        format!("{} (overlay)", self.path().display())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.read_at(offset, buf).map_err(|e| IoError::Read {
            path: self.path().to_path_buf(),
            offset,
            source: std::io::Error::other(crate::nbd::server::export::error_chain(&e)),
        })
    }
}

/// Stores snapshot `snapshot` (id, prefix or name) with the writes of the
/// overlay at `overlay` as a new snapshot described by `options` (its
/// parent is set to the snapshot).
///
/// # Errors
/// No overlay, an overlay of another snapshot, unreadable chunks,
/// storage failures.
pub fn backup_from_overlay(
    repo: &Repository,
    overlay: &Path,
    snapshot: &str,
    mut options: BackupOptions,
) -> Result<(BackupSummary, TrackedStats), OverlayBackupError> {
    if !overlay.exists() {
        return Err(OverlayBackupError::NoOverlay(overlay.to_path_buf()));
    }
    let snap = repo.resolve(snapshot)?;
    if snap.meta.chunk_size != repo.chunk_size() {
        return Err(OverlayBackupError::ChunkSize {
            snapshot: snap.id.short(),
            snapshot_chunks: snap.meta.chunk_size,
            repo_chunks: repo.chunk_size(),
        });
    }
    options.parent = Some(snap.id.to_hex());
    let image_options = ImageOptions {
        cache_size: 16 << 20,
        read_ahead: 0,
        threads: 1,
    };
    let base = Arc::new(SnapshotImage::open(repo, snap, &image_options)?);
    let image = OverlayImage::open(base, overlay)?;
    let size = image.size();
    let runs = image
        .written_runs()
        .into_iter()
        .map(|(offset, len)| {
            Ok(TrackedRun {
                run: Run { offset, len },
                kind: TrackedKind::Changed,
            })
        })
        .collect::<Vec<_>>();
    let session = BackupSession::start(repo, options)?;
    Ok(session.run_tracked_from(&image, size, Box::new(runs.into_iter()), 0)?)
}
