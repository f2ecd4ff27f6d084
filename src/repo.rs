//! The snapshot repository: deduplicated, compressed, crash-safe storage of
//! device images (spec: `docs/formats/repository.md`).
//!
//! ```text
//!   source ──> reader ──> hash/compare/compress workers ──> packer ──> uploader ──> backend
//!   (file, device,        (chunk ids, zero chunks,          (packs of    (put, then     data/..
//!    pipe, remote)         previous snapshot, index)         ~32 MiB)     index file)    index/..
//!                                                                                        snapshots/..
//! ```
//!
//! # Objects
//! - `config`: JSON, written once by `init`.
//! - `data/XX/<pack id>`: packs of compressed chunks with their own table
//!   ([`crate::format::pack`]).
//! - `index/<id>`: which chunks each pack holds ([`crate::format::pack_index`]).
//! - `snapshots/<id>`: one image's description and chunk list
//!   ([`crate::format::snapshot`]).
//! - `locks/<id>`: who is using the repository ([`lock`]).
//!
//! All of them are immutable and named by content or by a random id, so a
//! repository is only ever changed by adding or deleting whole objects.
//!
//! # Crash-safety invariants
//! 1. A backup writes packs, then an index file covering every pack its
//!    snapshot uses, then the snapshot. Each put is atomic and durable
//!    ([`backend::Backend`]), so at any moment every snapshot refers only
//!    to chunks listed in durable index files pointing at durable packs.
//! 2. A backup killed at any point leaves only extra objects: packs that no
//!    index lists ("orphans") and, possibly, an index file no snapshot
//!    needs. Neither is ever read as part of a snapshot. The next backup
//!    reads the orphans' trailers, writes an index file for them, and
//!    reuses their chunks; `gc` deletes what stays unreferenced.
//! 3. Duplicate index entries (the same chunk in two packs) are harmless:
//!    either copy is valid, and `gc` keeps one.
//!
//! # Locking invariants
//! - Backups, imports and `forget` without `--prune` take a **shared** lock;
//!   `gc` and `forget --prune` take an **exclusive** lock. Readers
//!   (`restore`, `snapshots`, `status`, `verify`) take none: they only read
//!   immutable objects, and a restore that races a gc fails loudly on a
//!   missing pack, never silently.
//! - Taking a lock is: write our lock object, then list `locks/`; if a
//!   conflicting live lock exists, delete ours and fail. Two racing lockers
//!   may both fail, but never both succeed.
//! - A lock is refreshed every [`lock::REFRESH_INTERVAL`] by a thread of the
//!   holder. It is **stale** when its process is gone (same host, no such
//!   pid) or it has not been refreshed for [`lock::STALE_AFTER`]. Stale
//!   locks are reported and ignored; `unlock` deletes them.
//! - A lock is deleted when its holder is done, and also when the process
//!   is interrupted (SIGINT, SIGTERM, SIGHUP): only a killed or crashed
//!   process leaves a stale lock behind.
//!
//! # Garbage-collection invariants
//! - gc runs only under the exclusive lock, so no backup is writing: every
//!   pack either is listed by an index file or is an orphan of a dead
//!   backup, and every chunk a snapshot needs is listed.
//! - gc computes the set of chunks referenced by all snapshots, writes the
//!   still-needed chunks of mostly-garbage packs into new packs, writes one
//!   new index file for everything that remains, and only then deletes the
//!   old index files, and last the packs nothing refers to any more. A gc
//!   killed at any point leaves a valid repository (with extra objects).
//!
//! # Damaged index files
//! Packs describe themselves (their trailing tables), so an index file
//! that fails its checksum loses nothing. Backups and restores skip it,
//! say so, and read the tables of the packs no intact index lists (a
//! backup also writes an index file for them, as for a dead backup's
//! orphans). gc, under its exclusive lock, indexes those packs from their
//! tables instead of deleting them as orphans, writes its new index file,
//! and then deletes the damaged one. `verify` stays strict and reports it.

pub mod backend;
pub mod backup;
pub mod copy;
pub mod import;
pub mod index;
pub mod location;
pub mod lock;
pub mod maintenance;
pub mod remote;
pub mod restore;
pub mod time;
pub mod tracked;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::format::pack::{self, PackEntry, PackError};
use crate::format::pack_index::{self, IndexFormatError, PackRecord};
use crate::format::snapshot::{Snapshot, SnapshotFormatError};
use crate::id::{ChunkId, IndexId, PackId, SnapshotId};
use backend::{Backend, BackendError, LocalBackend};
use index::Index;

/// Value of `format` in the config.
pub const CONFIG_FORMAT: &str = "diskdelta-repository";
/// Repository format version written and read.
pub const REPO_VERSION: u32 = 1;
/// Default chunk size (see `docs/formats/repository.md` for the measurement).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest and largest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 16 << 10;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
/// Default zstd level: on `bench/run repo` data level 1 stores 0.7% more
/// than level 3 and compresses 1.45x faster.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Errors of repository operations.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The change tracker failed or reported nonsense.
    #[error(transparent)]
    Tracking(#[from] crate::change::tracked::TrackError),
    /// `--verify-sample` found a chunk the tracker called unchanged that
    /// differs from the previous snapshot.
    #[error("{path}: bytes {offset}..{end} changed but the change tracker reported them unchanged; back up without change tracking (a full hash scan) and check the tracker", end = offset + len)]
    TrackerMissedChange {
        /// The source.
        path: String,
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
    },
    /// No repository at the location.
    #[error("no repository at {0} (create one with `diskdelta init -r {0}`)")]
    Missing(String),
    /// `init` where one exists.
    #[error("a repository already exists at {0}")]
    Exists(String),
    /// The config cannot be used.
    #[error("repository config at {location}: {reason}")]
    Config {
        /// Where.
        location: String,
        /// Why.
        reason: String,
    },
    /// Storage failure.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A pack object is damaged.
    #[error("pack {pack}: {source}")]
    Pack {
        /// Which pack.
        pack: String,
        /// What is wrong.
        source: PackError,
    },
    /// An index object is damaged.
    #[error("index file {key}: {source}")]
    Index {
        /// Which object.
        key: String,
        /// What is wrong.
        source: IndexFormatError,
    },
    /// A snapshot object is damaged.
    #[error("snapshot {key}: {source}")]
    Snapshot {
        /// Which object.
        key: String,
        /// What is wrong.
        source: SnapshotFormatError,
    },
    /// No snapshot matches.
    #[error("no snapshot matches {0:?} (see `diskdelta snapshots`)")]
    NoSnapshot(String),
    /// More than one snapshot matches an id prefix.
    #[error("{spec:?} matches {count} snapshots; give more of the id")]
    Ambiguous {
        /// What was asked.
        spec: String,
        /// How many match.
        count: usize,
    },
    /// A chunk a snapshot needs is not in any index.
    #[error("chunk {chunk} is missing from the repository")]
    MissingChunk {
        /// Which chunk.
        chunk: ChunkId,
    },
    /// A chunk's stored bytes do not decode to its id.
    #[error("chunk {chunk} in pack {pack} is corrupt: {reason}")]
    CorruptChunk {
        /// Which chunk.
        chunk: ChunkId,
        /// In which pack.
        pack: PackId,
        /// How it failed.
        reason: String,
    },
    /// Someone else holds a conflicting lock.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// Failure of the source or target image.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// The image digest after restore or backup does not match.
    #[error("{what}: image digest {actual} does not match the snapshot's {expected}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Expected hex digest.
        expected: String,
        /// Actual hex digest.
        actual: String,
    },
    /// `verify` found problems.
    #[error("{0}")]
    Damaged(String),
    /// An option does not fit the repository or image.
    #[error("{0}")]
    Invalid(String),
    /// A remote source failed.
    #[error(transparent)]
    Remote(#[from] crate::sync::SyncError),
    /// A worker thread failed without an error of its own.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A stage stopped because another one failed (that one is the cause).
    #[error("{0} stopped")]
    Stopped(&'static str),
}

impl RepoError {
    /// True when the failure means data in the repository or on a target
    /// is not what it should be (exit code 3).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            RepoError::CorruptChunk { .. }
                | RepoError::Damaged(_)
                | RepoError::DigestMismatch { .. }
                | RepoError::MissingChunk { .. }
                | RepoError::Pack { .. }
                | RepoError::Index { .. }
                | RepoError::Snapshot { .. }
        )
    }
}

impl crate::pipeline::Consequence for RepoError {
    fn is_consequence(&self) -> bool {
        match self {
            RepoError::Stopped(_) => true,
            RepoError::Io(e) => crate::pipeline::Consequence::is_consequence(e),
            _ => false,
        }
    }
}

/// The `config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Always [`CONFIG_FORMAT`].
    pub format: String,
    /// Repository format version.
    pub version: u32,
    /// Random id of this repository.
    pub id: String,
    /// Chunk size in bytes (a power of two).
    pub chunk_size: u32,
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// When `init` ran (RFC 3339).
    pub created: String,
}

/// Where the repository is when neither `-r` nor `DISKDELTA_REPO` is given:
/// `$XDG_DATA_HOME/diskdelta/repo`, else `~/.local/share/diskdelta/repo`.
pub fn default_location() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("diskdelta/repo"))
}

/// Validates a chunk size for `init`.
///
/// # Errors
/// Not a power of two, or outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(size: u64) -> Result<u32, RepoError> {
    match u32::try_from(size) {
        Ok(s) if s.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&s) => Ok(s),
        _ => Err(RepoError::Invalid(format!(
            "chunk size {size} must be a power of two from 16K to 4M"
        ))),
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
}

/// Key of a pack object.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

/// Key of an index object.
pub fn index_key(id: &IndexId) -> String {
    format!("index/{}", id.to_hex())
}

/// Key of a snapshot object.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("snapshots/{}", id.to_hex())
}

fn id_from_key<T>(key: &str, parse: fn(&str) -> Option<T>) -> Option<T> {
    key.rsplit('/').next().and_then(parse)
}

impl Repository {
    /// Creates a repository in `backend`.
    ///
    /// # Errors
    /// [`RepoError::Exists`] when one is there, storage failures.
    pub fn init(backend: Arc<dyn Backend>, chunk_size: u32) -> Result<Repository, RepoError> {
        let chunk_size = check_chunk_size(u64::from(chunk_size))?;
        let now = time::now();
        let mut seed = blake3::Hasher::new();
        seed.update(&now.to_le_bytes());
        seed.update(&std::process::id().to_le_bytes());
        seed.update(backend.location().as_bytes());
        seed.update(&time::now_nanos().to_le_bytes());
        let config = Config {
            format: CONFIG_FORMAT.into(),
            version: REPO_VERSION,
            id: seed.finalize().to_hex()[..32].to_string(),
            chunk_size,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            created: time::rfc3339(now),
        };
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| RepoError::Config {
            location: backend.location(),
            reason: e.to_string(),
        })?;
        // Stores that ignore conditional writes would overwrite: look first.
        if backend.size("config").is_ok() || !backend.put_if_absent("config", &bytes)? {
            return Err(RepoError::Exists(backend.location()));
        }
        Ok(Repository { backend, config })
    }

    /// Opens the repository in `backend`.
    ///
    /// # Errors
    /// [`RepoError::Missing`], a bad config, storage failures.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repository, RepoError> {
        let bytes = match backend.get("config") {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::Missing(backend.location())),
            Err(e) => return Err(e.into()),
        };
        let bad = |reason: String| RepoError::Config {
            location: backend.location(),
            reason,
        };
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if config.format != CONFIG_FORMAT {
            return Err(bad(format!(
                "not a diskdelta repository ({:?})",
                config.format
            )));
        }
        if config.version != REPO_VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this build reads version {REPO_VERSION})",
                config.version
            )));
        }
        check_chunk_size(u64::from(config.chunk_size)).map_err(|e| bad(e.to_string()))?;
        Ok(Repository { backend, config })
    }

    /// Opens the repository in a local directory; with `create`, makes the
    /// directory and a repository with default settings when there is none.
    ///
    /// # Errors
    /// As [`Repository::open`]; a path that exists but is not a repository
    /// is refused unless it is an empty directory.
    pub fn open_local(path: &Path, create: bool) -> Result<Repository, RepoError> {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(path));
        match Repository::open(backend.clone()) {
            Err(RepoError::Missing(_)) if create => {
                let empty = match std::fs::read_dir(path) {
                    Ok(mut entries) => entries.next().is_none(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => {
                        return Err(BackendError::Io {
                            op: "open",
                            key: path.display().to_string(),
                            source: e,
                        }
                        .into())
                    }
                };
                if !empty {
                    return Err(RepoError::Missing(path.display().to_string()));
                }
                std::fs::create_dir_all(path).map_err(|e| BackendError::Io {
                    op: "create",
                    key: path.display().to_string(),
                    source: e,
                })?;
                match Repository::init(backend.clone(), DEFAULT_CHUNK_SIZE) {
                    Err(RepoError::Exists(_)) => Repository::open(backend),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The storage.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// Reads every index file (index files that fail to decode are errors).
    ///
    /// # Errors
    /// Storage failures, damaged index files.
    pub fn load_index(&self) -> Result<Index, RepoError> {
        let (index, damaged) = self.read_index_files()?;
        match damaged.into_iter().next() {
            Some((key, source)) => Err(RepoError::Index { key, source }),
            None => Ok(index),
        }
    }

    /// Like [`Self::load_index`], but a damaged index file is skipped and
    /// its key returned instead of failing: its packs describe themselves
    /// (their trailers), so [`Self::index_unlisted_packs`] or
    /// [`Self::adopt_orphan_packs`] bring their chunks back. For backup,
    /// restore and gc; `verify` stays strict and reports the file.
    ///
    /// # Errors
    /// Storage failures.
    pub fn load_index_lenient(&self) -> Result<(Index, Vec<String>), RepoError> {
        let (index, damaged) = self.read_index_files()?;
        Ok((index, damaged.into_iter().map(|(key, _)| key).collect()))
    }

    /// The index of every intact index file, and the damaged ones with why.
    fn read_index_files(
        &self,
    ) -> Result<(Index, Vec<(String, pack_index::IndexFormatError)>), RepoError> {
        let mut index = Index::default();
        let mut damaged = Vec::new();
        for obj in self.backend.list("index/")? {
            let bytes = match self.backend.get(&obj.key) {
                Ok(b) => b,
                // Deleted by a gc since listing: its content was rewritten.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let records = match pack_index::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    damaged.push((obj.key.clone(), e));
                    continue;
                }
            };
            if let Some(id) = id_from_key(&obj.key, IndexId::from_hex) {
                index.add_file(id);
            }
            for r in records {
                index.add_pack(r.pack, &r.entries);
            }
        }
        Ok((index, damaged))
    }

    /// Adds to `index`, in memory only, the packs no index file lists,
    /// from their own tables (for readers, which must not write); returns
    /// how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn index_unlisted_packs(&self, index: &mut Index) -> Result<usize, RepoError> {
        let records = self.unlisted_pack_records(index)?;
        for r in &records {
            index.add_pack(r.pack, &r.entries);
        }
        Ok(records.len())
    }

    /// The tables of the packs `index` does not list (unreadable ones are
    /// skipped: `verify` reports them).
    fn unlisted_pack_records(&self, index: &Index) -> Result<Vec<PackRecord>, RepoError> {
        let mut records = Vec::new();
        for (id, len) in self.list_packs()? {
            if index.has_pack(&id) {
                continue;
            }
            match self.read_pack_table(&id, len) {
                Ok(entries) => records.push(PackRecord { pack: id, entries }),
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(RepoError::Pack { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }

    /// Every pack in storage with its size.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list_packs(&self) -> Result<Vec<(PackId, u64)>, RepoError> {
        Ok(self
            .backend
            .list("data/")?
            .into_iter()
            .filter_map(|o| id_from_key(&o.key, PackId::from_hex).map(|id| (id, o.size)))
            .collect())
    }

    /// Reads a pack's table from its trailer (two range reads).
    ///
    /// # Errors
    /// Storage failures, a damaged trailer.
    pub fn read_pack_table(&self, id: &PackId, len: u64) -> Result<Vec<PackEntry>, RepoError> {
        let key = pack_key(id);
        let damaged = |source| RepoError::Pack {
            pack: id.to_hex(),
            source,
        };
        if len < (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 {
            return Err(damaged(PackError::Truncated));
        }
        let footer =
            self.backend
                .get_range(&key, len - pack::FOOTER_LEN as u64, pack::FOOTER_LEN as u64)?;
        let (count, checksum) = pack::parse_footer(&footer).map_err(damaged)?;
        let trailer = pack::trailer_len(count);
        if trailer + pack::HEADER_LEN as u64 > len {
            return Err(damaged(PackError::Truncated));
        }
        let table =
            self.backend
                .get_range(&key, len - trailer, trailer - pack::FOOTER_LEN as u64)?;
        pack::parse_table(&table, &checksum, len).map_err(damaged)
    }

    /// Finds packs that no index file lists (left by killed backups, or by
    /// backups still running), reads their trailers and writes an index
    /// file for them, so that their chunks can be used. Returns how many.
    ///
    /// # Errors
    /// Storage failures. A pack with a damaged trailer is skipped (and
    /// reported by `verify`), not fatal.
    pub fn adopt_orphan_packs(&self, index: &mut Index) -> Result<usize, RepoError> {
        let records = self.unlisted_pack_records(index)?;
        if records.is_empty() {
            return Ok(0);
        }
        self.write_index(&records)?;
        for r in &records {
            index.add_pack(r.pack, &r.entries);
        }
        Ok(records.len())
    }

    /// Writes one index file for `records`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn write_index(&self, records: &[PackRecord]) -> Result<IndexId, RepoError> {
        let (bytes, id) = pack_index::encode(records);
        self.backend.put_if_absent(&index_key(&id), &bytes)?;
        Ok(id)
    }

    /// Loads one snapshot by id.
    ///
    /// # Errors
    /// Storage failures, a damaged snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        let key = snapshot_key(id);
        let bytes = self.backend.get(&key)?;
        let snap = Snapshot::decode(&bytes).map_err(|source| RepoError::Snapshot {
            key: key.clone(),
            source,
        })?;
        if snap.id != *id {
            return Err(RepoError::Snapshot {
                key,
                source: SnapshotFormatError::Checksum,
            });
        }
        Ok(snap)
    }

    /// Ids of all snapshots.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, RepoError> {
        Ok(self
            .backend
            .list("snapshots/")?
            .into_iter()
            .filter_map(|o| id_from_key(&o.key, SnapshotId::from_hex))
            .collect())
    }

    /// All readable snapshots, oldest first; damaged snapshot files are
    /// skipped (`verify` reports them), so one bad file does not block
    /// restores, backups and forgets of the others.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, RepoError> {
        self.load_snapshots(false)
    }

    /// All snapshots, oldest first, failing on the first damaged one (for
    /// gc, which must know every reference).
    ///
    /// # Errors
    /// Storage failures, damaged snapshots.
    pub fn snapshots_strict(&self) -> Result<Vec<Snapshot>, RepoError> {
        self.load_snapshots(true)
    }

    fn load_snapshots(&self, strict: bool) -> Result<Vec<Snapshot>, RepoError> {
        let mut out = Vec::new();
        for id in self.snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(s) => out.push(s),
                // Forgotten since listing.
                Err(RepoError::Backend(e)) if e.is_not_found() => {}
                Err(RepoError::Snapshot { .. }) if !strict => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            (a.meta.unix_time, a.meta.nanos, &a.meta.name, a.id).cmp(&(
                b.meta.unix_time,
                b.meta.nanos,
                &b.meta.name,
                b.id,
            ))
        });
        Ok(out)
    }

    /// The latest snapshot named `name`, if any.
    ///
    /// # Errors
    /// As [`Repository::snapshots`].
    pub fn latest(&self, name: &str) -> Result<Option<Snapshot>, RepoError> {
        Ok(self.snapshots()?.into_iter().rfind(|s| s.meta.name == name))
    }

    /// Resolves a full id, a name (its latest snapshot), or a unique id
    /// prefix, in that order: a name wins over an id prefix it happens to
    /// look like.
    ///
    /// # Errors
    /// [`RepoError::NoSnapshot`], [`RepoError::Ambiguous`], storage failures.
    pub fn resolve(&self, spec: &str) -> Result<Snapshot, RepoError> {
        let all = self.snapshots()?;
        let lower = spec.to_ascii_lowercase();
        if let Some(s) = all.iter().find(|s| s.id.to_hex() == lower) {
            return Ok(s.clone());
        }
        if let Some(s) = all.iter().rfind(|s| s.meta.name == spec) {
            return Ok(s.clone());
        }
        if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<&Snapshot> = all
                .iter()
                .filter(|s| s.id.to_hex().starts_with(&lower))
                .collect();
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                0 => {}
                count => {
                    return Err(RepoError::Ambiguous {
                        spec: spec.into(),
                        count,
                    })
                }
            }
        }
        Err(RepoError::NoSnapshot(spec.into()))
    }

    /// Deletes one snapshot object.
    ///
    /// # Errors
    /// Storage failures.
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), RepoError> {
        Ok(self.backend.delete(&snapshot_key(id))?)
    }
}
