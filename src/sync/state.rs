//! The resume state of an interrupted sync into a regular file: a small
//! JSON file beside the target, `.NAME.diskdelta-sync`, recording how far
//! the target is known to match the source (spec: `docs/formats/wire.md`).
//!
//! It is written only after the target's data up to that offset was
//! fsynced, atomically (temporary name, fsync, rename), at most every few
//! seconds. A rerun against the same source (same identity, size and block
//! size) starts there; anything else starts from the beginning.
//!
//! A damaged state file would be worse than none: a larger `offset` skips
//! blocks that were never written, and both ends would still agree. So the
//! file carries `check`, a keyed hash of all other fields, and a state whose
//! check does not match is ignored like a missing one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::SyncError;
use crate::digest::Digest;
use crate::io::{IoError, Output};

/// How often progress is made durable, unless the environment variable
/// `DISKDELTA_SYNC_CHECKPOINT_MS` says otherwise (each checkpoint costs an
/// fsync of the target).
fn save_every() -> Duration {
    std::env::var("DISKDELTA_SYNC_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis)
}

/// The version written; files of other versions are not resumed from.
const STATE_VERSION: u32 = 2;

/// Key context of [`StateFile::check`].
const CHECK_CONTEXT: &str = "diskdelta sync resume state v2";

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    source_id: String,
    source_size: u64,
    block: u32,
    offset: u64,
    chain: String,
    /// The target file the offset is about: a target deleted, replaced or
    /// truncated below the offset since is not resumed into.
    #[serde(default)]
    target_dev: u64,
    #[serde(default)]
    target_ino: u64,
    /// Hex of [`StateFile::expected_check`].
    #[serde(default)]
    check: String,
}

impl StateFile {
    /// BLAKE3 `derive_key` over every other field, fixed-width and in
    /// declaration order (the hex fields as their text).
    fn expected_check(&self) -> String {
        let mut hasher = blake3::Hasher::new_derive_key(CHECK_CONTEXT);
        hasher.update(&self.version.to_le_bytes());
        for text in [&self.source_id, &self.chain] {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(&self.source_size.to_le_bytes());
        hasher.update(&self.block.to_le_bytes());
        hasher.update(&self.offset.to_le_bytes());
        hasher.update(&self.target_dev.to_le_bytes());
        hasher.update(&self.target_ino.to_le_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// Resume bookkeeping of one target.
#[derive(Debug)]
pub struct ResumeState {
    path: PathBuf,
    source_id: [u8; 32],
    source_size: u64,
    block: u32,
    offset: u64,
    chain: [u8; 32],
    saved: Instant,
    target_dev: u64,
    target_ino: u64,
}

/// What a state file records, as [`state_text`] encodes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct StateFields {
    pub source_id: [u8; 32],
    pub source_size: u64,
    pub block: u32,
    pub offset: u64,
    pub chain: [u8; 32],
    pub target_dev: u64,
    pub target_ino: u64,
}

/// The JSON text of a state file, with its check.
pub(super) fn state_text(fields: &StateFields) -> Result<String, SyncError> {
    let mut file = StateFile {
        version: STATE_VERSION,
        source_id: Digest::from_bytes(fields.source_id).to_hex(),
        source_size: fields.source_size,
        block: fields.block,
        offset: fields.offset,
        chain: Digest::from_bytes(fields.chain).to_hex(),
        target_dev: fields.target_dev,
        target_ino: fields.target_ino,
        check: String::new(),
    };
    file.check = file.expected_check();
    serde_json::to_string(&file).map_err(|e| SyncError::protocol(e.to_string()))
}

/// Where the state of `target` is kept.
pub fn state_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".into());
    target.with_file_name(format!(".{name}.diskdelta-sync"))
}

impl ResumeState {
    /// Loads the state of `target` if it belongs to this source, else starts
    /// from offset 0.
    ///
    /// # Errors
    /// Never for a missing or foreign state file; I/O errors are ignored
    /// too (a sync then starts from the beginning, which is always safe).
    pub fn load_or_new(
        target: &Path,
        target_file: &std::fs::File,
        source_id: [u8; 32],
        source_size: u64,
        block: u32,
    ) -> Result<Self, SyncError> {
        use std::os::unix::fs::MetadataExt;
        let path = state_path(target);
        let meta = target_file.metadata().ok();
        let (target_dev, target_ino, target_size) =
            meta.map_or((0, 0, 0), |m| (m.dev(), m.ino(), m.len()));
        let mut state = ResumeState {
            target_dev,
            target_ino,
            path,
            source_id,
            source_size,
            block,
            offset: 0,
            chain: super::endpoint::CHAIN_START,
            saved: Instant::now(),
        };
        let Ok(text) = std::fs::read_to_string(&state.path) else {
            return Ok(state);
        };
        let Ok(file) = serde_json::from_str::<StateFile>(&text) else {
            return Ok(state);
        };
        let id = Digest::from_hex(&file.source_id);
        let chain = Digest::from_hex(&file.chain);
        if file.version == STATE_VERSION
            && file.check == file.expected_check()
            && id.map(|d| *d.as_bytes()) == Some(source_id)
            && file.source_size == source_size
            && file.block == block
            && file.offset <= source_size
            && file.target_dev == target_dev
            && file.target_ino == target_ino
            && file.offset <= target_size
        {
            if let Some(c) = chain {
                state.offset = file.offset;
                state.chain = *c.as_bytes();
            }
        }
        Ok(state)
    }

    /// Offset up to which the target matches the source.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Chain value at [`ResumeState::offset`].
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }

    /// Records progress; every few seconds syncs the target and saves.
    ///
    /// # Errors
    /// I/O errors of the fsync or of writing the state file.
    pub fn advance(
        &mut self,
        offset: u64,
        chain: [u8; 32],
        target: &Output,
    ) -> Result<(), SyncError> {
        self.offset = offset;
        self.chain = chain;
        if self.saved.elapsed() >= save_every() {
            target.sync()?;
            self.save()?;
            self.saved = Instant::now();
        }
        Ok(())
    }

    fn save(&self) -> Result<(), SyncError> {
        let text = state_text(&StateFields {
            source_id: self.source_id,
            source_size: self.source_size,
            block: self.block,
            offset: self.offset,
            chain: self.chain,
            target_dev: self.target_dev,
            target_ino: self.target_ino,
        })?;
        let tmp = self.path.with_extension("diskdelta-sync.tmp");
        let io = |op: &'static str| {
            let path = self.path.clone();
            move |source| IoError::Op { op, path, source }
        };
        std::fs::write(&tmp, text).map_err(io("write resume state"))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync resume state"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename resume state"))?;
        Ok(())
    }

    /// Removes the state file after a completed sync.
    ///
    /// # Errors
    /// I/O errors other than "not found".
    pub fn remove(self) -> Result<(), SyncError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SyncError::Io(IoError::Op {
                op: "remove resume state",
                path: self.path,
                source,
            })),
        }
    }
}
