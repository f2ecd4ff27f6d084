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
//! # Encryption
//! A repository of config version 2 is encrypted ([`crypto`], [`key`]):
//! the master key lives in `keys/<id>` objects, each wrapping it under one
//! password. Pack blobs and tables, index files and snapshots are sealed;
//! pack tables and index files list chunks by keyed ids, snapshots (sealed)
//! by content hash. Every read of an object authenticates it, so storage
//! that changes, swaps or moves objects is caught as tampering (exit 3),
//! never read as data. The invariants above hold unchanged: sealing
//! happens inside the objects, never between them.
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
pub mod claims;
pub mod copy;
pub mod crypto;
pub mod image;
pub mod import;
pub mod index;
pub mod key;
pub mod location;
pub mod lock;
pub mod maintenance;
pub mod overlay;
pub mod overlay_backup;
pub mod remote;
pub mod restore;
pub mod serve;
pub mod time;
pub mod tracked;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::format::pack::{self, PackEntry, PackError, TableSeal};
use crate::format::pack_index::{self, IndexFormatError, PackRecord};
use crate::format::sealed::Kind;
use crate::format::snapshot::{Snapshot, SnapshotFormatError};
use crate::id::{ChunkId, IndexId, PackId, SnapshotId};
use backend::{Backend, BackendError, LocalBackend};
use crypto::{Crypto, CryptoError, MasterKey};
use index::Index;
use key::KdfCost;

/// Value of `format` in the config.
pub const CONFIG_FORMAT: &str = "diskdelta-repository";
/// Repository format version of plain repositories.
pub const REPO_VERSION: u32 = 1;
/// Repository format version of encrypted repositories.
pub const ENCRYPTED_REPO_VERSION: u32 = 2;
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
    Remote(#[from] crate::remote::RemoteError),
    /// A destructive command on a repository served append-only.
    #[error(
        "repository {location} is append-only: {what} is refused (run it on the repository host)"
    )]
    AppendOnly {
        /// The repository.
        location: String,
        /// The command.
        what: &'static str,
    },
    /// A worker thread failed without an error of its own.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A stage stopped because another one failed (that one is the cause).
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// An encrypted repository and no password.
    #[error("repository {0} is encrypted: give its password with DISKDELTA_PASSWORD, --password-file or --password-command")]
    PasswordNeeded(String),
    /// No key file opens with the password.
    #[error(
        "wrong password for {location}: none of its {tried} key files opens with it{}",
        damaged_note(damaged)
    )]
    WrongPassword {
        /// The repository.
        location: String,
        /// Key files tried.
        tried: usize,
        /// Key files that could not be read, with why.
        damaged: Vec<String>,
    },
    /// An encrypted repository without key files.
    #[error("repository {0} is encrypted but has no key files (keys/ is missing or empty)")]
    NoKeys(String),
    /// A sealed object does not open.
    #[error("{key}: {source}")]
    Sealed {
        /// Which object.
        key: String,
        /// Why.
        source: CryptoError,
    },
}

fn damaged_note(damaged: &[String]) -> String {
    if damaged.is_empty() {
        String::new()
    } else {
        format!(" (unreadable key files: {})", damaged.join(", "))
    }
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
                | RepoError::Sealed { .. }
        )
    }
}

/// Refuses `what` on an append-only repository before anything is done.
///
/// # Errors
/// [`RepoError::AppendOnly`].
pub fn refuse_if_append_only(backend: &dyn Backend, what: &'static str) -> Result<(), RepoError> {
    if backend.append_only() {
        return Err(RepoError::AppendOnly {
            location: backend.location(),
            what,
        });
    }
    Ok(())
}

impl crate::remote::WireError for RepoError {
    fn code(&self) -> crate::remote::message::ErrorCode {
        use crate::remote::message::ErrorCode;
        match self {
            RepoError::Io(e) => crate::remote::io_code(e),
            RepoError::Remote(e) => e.code(),
            RepoError::AppendOnly { .. } => ErrorCode::Refused,
            _ => ErrorCode::Other,
        }
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
    /// How the repository is encrypted (version 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// The `encryption` part of an encrypted repository's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// The AEAD: `xchacha20-poly1305`.
    pub cipher: String,
    /// How chunk ids are keyed: `blake3-keyed`.
    pub chunk_ids: String,
    /// Hex of a sealed copy of the config's other fields (kind config):
    /// storage that edits the plain fields is caught when the key opens.
    pub check: String,
}

/// The fields of the config that its sealed check repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ConfigCheck {
    id: String,
    chunk_size: u32,
    compression_level: i32,
    created: String,
}

impl Config {
    fn check(&self) -> ConfigCheck {
        ConfigCheck {
            id: self.id.clone(),
            chunk_size: self.chunk_size,
            compression_level: self.compression_level,
            created: self.created.clone(),
        }
    }

    /// True for an encrypted repository.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }
}

/// A password, kept out of memory once dropped.
pub type Password = Zeroizing<String>;

/// Where a command gets a repository's password: called at most once per
/// open, and only for encrypted repositories; `true` when a new
/// repository or key is being made (a terminal prompt asks twice).
pub type PasswordSource<'a> = &'a dyn Fn(bool) -> Result<Password, RepoError>;

/// A [`PasswordSource`] for callers without one: encrypted repositories
/// fail with [`RepoError::PasswordNeeded`].
pub fn no_password(location: &str) -> impl Fn(bool) -> Result<Password, RepoError> {
    let location = location.to_string();
    move |_| Err(RepoError::PasswordNeeded(location.clone()))
}

/// Settings of a new repository.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Chunk size.
    pub chunk_size: u32,
    /// Encrypt (the default) or not.
    pub encrypt: bool,
    /// Cost of the first key file's password hashing.
    pub kdf: KdfCost,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            encrypt: true,
            kdf: KdfCost::from_env(),
        }
    }
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

/// What decoding stored blobs needs, reused from one blob to the next.
pub struct ChunkDecoder {
    /// The zstd context.
    pub decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder").finish_non_exhaustive()
    }
}

impl ChunkDecoder {
    /// A decoder.
    ///
    /// # Errors
    /// zstd cannot allocate its context.
    pub fn new() -> Result<ChunkDecoder, RepoError> {
        Ok(ChunkDecoder {
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|_| RepoError::Internal("zstd setup failed"))?,
            scratch: Vec::new(),
        })
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    /// Sealing with the master key of an encrypted repository.
    crypto: Option<Arc<Crypto>>,
    /// The master key itself (for new key files).
    master: Option<Arc<MasterKey>>,
    /// The key file this process unlocked it with.
    key_file: Option<String>,
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
    /// Creates a plain repository in `backend`.
    ///
    /// # Errors
    /// [`RepoError::Exists`] when one is there, storage failures.
    pub fn init(backend: Arc<dyn Backend>, chunk_size: u32) -> Result<Repository, RepoError> {
        let options = InitOptions {
            chunk_size,
            encrypt: false,
            ..InitOptions::default()
        };
        Repository::init_with(backend, &options, &no_password(""))
    }

    /// Creates a repository in `backend`; an encrypted one gets a random
    /// master key and its first key file under `password(true)`.
    ///
    /// # Errors
    /// [`RepoError::Exists`] when one is there, no password, storage
    /// failures.
    pub fn init_with(
        backend: Arc<dyn Backend>,
        options: &InitOptions,
        password: PasswordSource<'_>,
    ) -> Result<Repository, RepoError> {
        let chunk_size = check_chunk_size(u64::from(options.chunk_size))?;
        // Stores that ignore conditional writes would overwrite: look first.
        if backend.size("config").is_ok() {
            return Err(RepoError::Exists(backend.location()));
        }
        let now = time::now();
        let mut seed = blake3::Hasher::new();
        seed.update(&now.to_le_bytes());
        seed.update(&std::process::id().to_le_bytes());
        seed.update(backend.location().as_bytes());
        seed.update(&time::now_nanos().to_le_bytes());
        let mut config = Config {
            format: CONFIG_FORMAT.into(),
            version: REPO_VERSION,
            id: seed.finalize().to_hex()[..32].to_string(),
            chunk_size,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            created: time::rfc3339(now),
            encryption: None,
        };
        let bad = |reason: String| RepoError::Config {
            location: backend.location(),
            reason,
        };
        let mut crypto = None;
        let mut key_file = None;
        let mut master_key = None;
        if options.encrypt {
            let password = password(true)?;
            let master = MasterKey::generate();
            let sealer = Crypto::new(&master);
            let check = serde_json::to_vec(&config.check()).map_err(|e| bad(e.to_string()))?;
            config.version = ENCRYPTED_REPO_VERSION;
            config.encryption = Some(EncryptionConfig {
                cipher: crate::format::keyfile::CIPHER.into(),
                chunk_ids: "blake3-keyed".into(),
                check: hex::encode(sealer.seal_object(Kind::Config, &check)),
            });
            // The key file goes first: a config without one would be a
            // repository nobody can open.
            let (bytes, key) = key::new_key_file(&master, &password, &config.id, options.kdf)?;
            backend.put_if_absent(&key, &bytes)?;
            crypto = Some(Arc::new(sealer));
            key_file = Some(key);
            master_key = Some(Arc::new(master));
        }
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| bad(e.to_string()))?;
        if !backend.put_if_absent("config", &bytes)? {
            return Err(RepoError::Exists(backend.location()));
        }
        Ok(Repository {
            backend,
            config,
            crypto,
            master: master_key,
            key_file,
        })
    }

    /// Opens the plain repository in `backend` (an encrypted one fails with
    /// [`RepoError::PasswordNeeded`]).
    ///
    /// # Errors
    /// [`RepoError::Missing`], a bad config, storage failures.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repository, RepoError> {
        let refuse = no_password(&backend.location());
        Repository::open_with(backend, &refuse)
    }

    /// Opens the repository in `backend`, asking `password` when it is
    /// encrypted.
    ///
    /// # Errors
    /// [`RepoError::Missing`], a bad config, a wrong password, a config
    /// that fails its sealed check, storage failures.
    pub fn open_with(
        backend: Arc<dyn Backend>,
        password: PasswordSource<'_>,
    ) -> Result<Repository, RepoError> {
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
        match (config.version, &config.encryption) {
            (REPO_VERSION, None) | (ENCRYPTED_REPO_VERSION, Some(_)) => {}
            (REPO_VERSION | ENCRYPTED_REPO_VERSION, _) => {
                return Err(bad(format!(
                    "format version {} does not match its encryption settings",
                    config.version
                )))
            }
            (v, _) => {
                return Err(bad(format!(
                "format version {v} is not supported (this build reads versions {REPO_VERSION} and {ENCRYPTED_REPO_VERSION})"
            )))
            }
        }
        check_chunk_size(u64::from(config.chunk_size)).map_err(|e| bad(e.to_string()))?;
        let Some(encryption) = &config.encryption else {
            return Ok(Repository {
                backend,
                config,
                crypto: None,
                master: None,
                key_file: None,
            });
        };
        if encryption.cipher != crate::format::keyfile::CIPHER
            || encryption.chunk_ids != "blake3-keyed"
        {
            return Err(bad(format!(
                "unknown encryption {:?} / {:?}",
                encryption.cipher, encryption.chunk_ids
            )));
        }
        let password = password(false)?;
        let (master, key_file) = key::unlock(backend.as_ref(), &config.id, &password)?;
        let crypto = Crypto::new(&master);
        let sealed_check =
            hex::decode(&encryption.check).map_err(|e| bad(format!("check: {e}")))?;
        let check = crypto
            .open_object(Kind::Config, &sealed_check)
            .map_err(|source| RepoError::Sealed {
                key: "config".into(),
                source,
            })?;
        if serde_json::from_slice::<ConfigCheck>(&check).ok() != Some(config.check()) {
            return Err(RepoError::Sealed {
                key: "config".into(),
                source: CryptoError::Authentication(
                    "config (its fields differ from their sealed copy)",
                ),
            });
        }
        Ok(Repository {
            backend,
            config,
            crypto: Some(Arc::new(crypto)),
            master: Some(Arc::new(master)),
            key_file: Some(key_file),
        })
    }

    /// Opens the repository in a local directory; with `create`, makes the
    /// directory and a repository with those settings when there is none.
    ///
    /// # Errors
    /// As [`Repository::open`]; a path that exists but is not a repository
    /// is refused unless it is an empty directory.
    pub fn open_local(
        path: &Path,
        create: Option<&InitOptions>,
        password: PasswordSource<'_>,
    ) -> Result<Repository, RepoError> {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(path));
        match Repository::open_with(backend.clone(), password) {
            Err(RepoError::Missing(_)) if create.is_some() => {
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
                let options = create.copied().unwrap_or_default();
                match Repository::init_with(backend.clone(), &options, password) {
                    Err(RepoError::Exists(_)) => Repository::open_with(backend, password),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The master key's sealing, for an encrypted repository.
    pub fn crypto(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref()
    }

    /// The master key of an encrypted repository.
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.master.as_deref()
    }

    /// The key file this process unlocked the repository with.
    pub fn key_file(&self) -> Option<&str> {
        self.key_file.as_deref()
    }

    /// The id a chunk with content hash `id` is stored under.
    pub fn stored_id(&self, id: &ChunkId) -> ChunkId {
        match &self.crypto {
            Some(c) => c.stored_id(id),
            None => *id,
        }
    }

    /// The pack-table sealing of this repository, if encrypted.
    pub fn table_seal(&self) -> Option<&dyn TableSeal> {
        self.crypto.as_deref().map(|c| c as &dyn TableSeal)
    }

    /// An empty index of this repository.
    pub fn new_index(&self) -> Index {
        Index::new(self.crypto.clone())
    }

    /// The bytes to store for a new chunk: `encoded` as it is, or sealed
    /// to its stored id in an encrypted repository.
    pub fn seal_blob(
        &self,
        stored_id: &ChunkId,
        encoding: pack::Encoding,
        raw_len: u32,
        encoded: Vec<u8>,
    ) -> Vec<u8> {
        match &self.crypto {
            Some(c) => c.seal_blob(stored_id, encoding as u8, raw_len, &encoded),
            None => encoded,
        }
    }

    /// Decodes a stored blob (opened, decompressed) into `target`, which
    /// must be its plaintext length, and checks it against the stored id;
    /// returns the chunk's content hash.
    ///
    /// # Errors
    /// A description of what is wrong (for [`RepoError::CorruptChunk`]).
    pub fn decode_blob(
        &self,
        stored_id: &ChunkId,
        encoding: pack::Encoding,
        blob: &[u8],
        target: &mut [u8],
        decoder: &mut ChunkDecoder,
    ) -> Result<ChunkId, String> {
        let raw_len = target.len();
        let ChunkDecoder {
            decompressor,
            scratch,
        } = decoder;
        let Some(c) = &self.crypto else {
            return self.decode_encoded(stored_id, encoding, blob, target, decompressor);
        };
        if encoding == pack::Encoding::Raw {
            // Opened where it belongs: no copy through the scratch buffer.
            c.open_blob_to(stored_id, encoding as u8, raw_len as u32, blob, target)
                .map_err(|e| e.to_string())?;
            return self.check_content(stored_id, target);
        }
        c.open_blob(stored_id, encoding as u8, raw_len as u32, blob, scratch)
            .map_err(|e| e.to_string())?;
        self.decode_encoded(stored_id, encoding, scratch, target, decompressor)
    }

    /// Decodes an encoded chunk (a raw chunk or a zstd frame, already
    /// opened) into `target` and checks it against the stored id; returns
    /// the chunk's content hash.
    ///
    /// # Errors
    /// A description of what is wrong (for [`RepoError::CorruptChunk`]).
    pub fn decode_encoded(
        &self,
        stored_id: &ChunkId,
        encoding: pack::Encoding,
        encoded: &[u8],
        target: &mut [u8],
        decompressor: &mut zstd::bulk::Decompressor<'static>,
    ) -> Result<ChunkId, String> {
        let raw_len = target.len();
        match encoding {
            pack::Encoding::Raw => {
                if encoded.len() != raw_len {
                    return Err("raw blob has the wrong length".into());
                }
                target.copy_from_slice(encoded);
            }
            pack::Encoding::Zstd => {
                let n = decompressor
                    .decompress_to_buffer(encoded, target)
                    .map_err(|e| format!("zstd: {e}"))?;
                if n != raw_len {
                    return Err("decompressed length differs".into());
                }
            }
        }
        self.check_content(stored_id, target)
    }

    /// The content hash of `plain` when it is the chunk stored as `stored_id`.
    fn check_content(&self, stored_id: &ChunkId, plain: &[u8]) -> Result<ChunkId, String> {
        let content = ChunkId::of(plain);
        if self.stored_id(&content) != *stored_id {
            return Err("content does not match its id".into());
        }
        Ok(content)
    }

    /// The encoded chunk (zstd frame or raw bytes) inside a stored blob.
    ///
    /// # Errors
    /// The blob does not authenticate as that chunk.
    pub fn unseal_blob(
        &self,
        stored_id: &ChunkId,
        encoding: pack::Encoding,
        raw_len: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, String> {
        match &self.crypto {
            Some(c) => {
                let mut out = Vec::new();
                c.open_blob(stored_id, encoding as u8, raw_len, blob, &mut out)
                    .map_err(|e| e.to_string())?;
                Ok(out)
            }
            None => Ok(blob.to_vec()),
        }
    }

    /// The bytes to store for an object of `kind` (sealed when encrypted).
    pub fn seal_object(&self, kind: Kind, inner: Vec<u8>) -> Vec<u8> {
        match &self.crypto {
            Some(c) => c.seal_object(kind, &inner),
            None => inner,
        }
    }

    /// The inner bytes of the stored object `key` of `kind`.
    ///
    /// # Errors
    /// [`RepoError::Sealed`] when it does not open.
    pub fn open_object(&self, kind: Kind, key: &str, bytes: Vec<u8>) -> Result<Vec<u8>, RepoError> {
        match &self.crypto {
            Some(c) => c
                .open_object(kind, &bytes)
                .map_err(|source| RepoError::Sealed {
                    key: key.to_string(),
                    source,
                }),
            None => Ok(bytes),
        }
    }

    /// Decodes the index file `key` from its stored bytes.
    ///
    /// # Errors
    /// [`RepoError::Sealed`], [`RepoError::Index`].
    pub fn decode_index_file(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<PackRecord>, RepoError> {
        let inner = self.open_object(Kind::Index, key, bytes)?;
        pack_index::decode(&inner).map_err(|source| RepoError::Index {
            key: key.to_string(),
            source,
        })
    }

    /// Decodes a snapshot object stored under `key`.
    ///
    /// # Errors
    /// [`RepoError::Sealed`], [`RepoError::Snapshot`].
    pub fn decode_snapshot(&self, key: &str, bytes: Vec<u8>) -> Result<Snapshot, RepoError> {
        let id = SnapshotId::of(&bytes);
        let inner = self.open_object(Kind::Snapshot, key, bytes)?;
        let mut snap = Snapshot::decode(&inner).map_err(|source| RepoError::Snapshot {
            key: key.to_string(),
            source,
        })?;
        snap.id = id;
        Ok(snap)
    }

    /// Stores a snapshot file (sealed when encrypted); returns its id.
    ///
    /// # Errors
    /// Storage failures.
    pub fn put_snapshot(&self, file: Vec<u8>) -> Result<(SnapshotId, u64), RepoError> {
        let bytes = self.seal_object(Kind::Snapshot, file);
        let id = SnapshotId::of(&bytes);
        self.backend.put_if_absent(&snapshot_key(&id), &bytes)?;
        Ok((id, bytes.len() as u64))
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
            Some((_, e)) => Err(e),
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
    fn read_index_files(&self) -> Result<(Index, Vec<(String, RepoError)>), RepoError> {
        let mut index = self.new_index();
        let mut damaged = Vec::new();
        for obj in self.backend.list("index/")? {
            let bytes = match self.backend.get(&obj.key) {
                Ok(b) => b,
                // Deleted by a gc since listing: its content was rewritten.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let records = match self.decode_index_file(&obj.key, bytes) {
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
                Err(RepoError::Sealed { .. }) => continue,
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
        let footer = pack::parse_footer(&footer).map_err(damaged)?;
        let trailer = footer.trailer_len();
        if trailer + pack::HEADER_LEN as u64 > len {
            return Err(damaged(PackError::Truncated));
        }
        let table =
            self.backend
                .get_range(&key, len - trailer, trailer - pack::FOOTER_LEN as u64)?;
        pack::parse_table(&table, &footer, len, self.table_seal()).map_err(damaged)
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
        let (bytes, _) = pack_index::encode(records);
        let bytes = self.seal_object(Kind::Index, bytes);
        let id = IndexId::of(&bytes);
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
        let snap = self.decode_snapshot(&key, bytes)?;
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
                Err(RepoError::Snapshot { .. } | RepoError::Sealed { .. }) if !strict => {}
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
