//! Migration from diskdump 0.1.5 stores: each manifest becomes a snapshot.
//!
//! The manifest's blocks are decompressed and checked against their
//! SHA-256 by a feeder thread and streamed through a pipe into an ordinary
//! backup, so the repository side is the same code as `backup -`: chunked
//! at the repository's chunk size, deduplicated, compressed. A missing or
//! corrupt block stops that manifest's import before its snapshot is
//! written.

use std::io::Write;
use std::path::Path;

use super::backup::{BackupOptions, BackupSession, BackupSummary};
use super::{time, RepoError, Repository};
use crate::format::diskdump::{DiskdumpError, DiskdumpStore};
use crate::io::{Input, InputOptions};

/// Imports one manifest as a snapshot.
///
/// # Errors
/// The first missing or corrupt block ([`RepoError::Invalid`] naming it),
/// storage failures.
pub fn import_manifest(
    repo: &Repository,
    store: &DiskdumpStore,
    manifest_path: &Path,
    mut options: BackupOptions,
) -> Result<BackupSummary, RepoError> {
    let manifest = store
        .read_manifest(manifest_path)
        .map_err(|e| RepoError::Invalid(e.to_string()))?;
    if options.name.is_empty() {
        options.name = manifest.name.clone().unwrap_or_else(|| "diskdump".into());
    }
    if let Some(source) = &manifest.source {
        options.source = source.clone();
        if let Some((host, _)) = source.split_once(':') {
            options.host = host.to_string();
        }
    }
    if options.time.is_none() {
        if let Some((secs, nanos)) = manifest.date.as_deref().and_then(time::parse_rfc3339_nanos) {
            options.time = Some(secs);
            options.time_nanos = nanos;
        }
    }
    options.expected_size = Some(manifest.image_size);
    let (reader, mut writer) =
        std::io::pipe().map_err(|e| RepoError::Invalid(format!("pipe: {e}")))?;
    let session = BackupSession::start(repo, options)?;
    std::thread::scope(|s| {
        let feeder = s.spawn(move || -> Result<(), DiskdumpError> {
            for i in 0..manifest.blocks.len() {
                let block = store.read_manifest_block(&manifest, i)?;
                if writer.write_all(&block).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let input = {
            use std::os::fd::AsRawFd;
            let path = format!("/dev/fd/{}", reader.as_raw_fd());
            Input::open(Path::new(&path), &InputOptions::default())
        };
        // The feeder blocks on the pipe until its last read end closes:
        // ours goes now, the input's when the backup ends, on every path.
        drop(reader);
        let result = match input {
            Ok(input) => session.run_local(input),
            Err(e) => Err(e.into()),
        };
        let fed = feeder.join().unwrap_or(Ok(()));
        match (fed, result) {
            (Err(e), _) => Err(RepoError::Invalid(e.to_string())),
            (Ok(()), r) => r,
        }
    })
}
