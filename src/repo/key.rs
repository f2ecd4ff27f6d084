//! Passwords and key files of encrypted repositories: unlocking, and
//! `key list|add|remove|passwd` (format: [`crate::format::keyfile`]).
//!
//! Every key file wraps the same master key under one password, so
//! adding or removing a password never touches the data. The last key
//! file cannot be removed, nor the one in use (remove it with another
//! password), so a repository cannot be locked out by a key command.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use serde::Serialize;
use zeroize::Zeroizing;

use super::backend::Backend;
use super::crypto::{unwrap_master_key, wrap_master_key, MasterKey};
use super::{time, RepoError};
use crate::format::keyfile::{self, KdfParams, KeyFile};

/// Prefix of key file objects.
pub const KEYS_PREFIX: &str = "keys/";

/// Argon2id cost of new key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfCost {
    /// 128 MiB, 6 passes, 1 lane: about 0.6 s on the 2-core reference
    /// machine (measured: see the repository spec). Memory rather than
    /// passes would cost more to an attacker with GPUs, but it is also the
    /// peak memory of every command that opens the repository, which must
    /// stay below a backup's own.
    fn default() -> Self {
        KdfCost {
            memory_kib: 128 << 10,
            iterations: 6,
            parallelism: 1,
        }
    }
}

impl KdfCost {
    /// The cost of new key files: the default, or the weakest Argon2
    /// allows when `DISKDELTA_TESTONLY_WEAKEN_KDF=1` (test suites open
    /// repositories thousands of times; never for real keys).
    pub fn from_env() -> KdfCost {
        if std::env::var_os("DISKDELTA_TESTONLY_WEAKEN_KDF").is_some_and(|v| v == "1") {
            KdfCost {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            }
        } else {
            KdfCost::default()
        }
    }
}

/// The 32-byte wrapping key of `password` under a key file's parameters.
fn derive(password: &str, kdf: &KdfParams, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, RepoError> {
    let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| RepoError::Invalid(format!("key derivation parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out[..])
        .map_err(|e| RepoError::Invalid(format!("key derivation: {e}")))?;
    Ok(out)
}

fn user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", current_uid()))
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A new key file wrapping `master` under `password`; returns its bytes
/// and object key.
///
/// # Errors
/// Invalid cost parameters.
pub fn new_key_file(
    master: &MasterKey,
    password: &str,
    repository: &str,
    cost: KdfCost,
) -> Result<(Vec<u8>, String), RepoError> {
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    let kdf = KdfParams {
        algorithm: keyfile::KDF_ARGON2ID.into(),
        version: keyfile::ARGON2_VERSION,
        memory_kib: cost.memory_kib,
        iterations: cost.iterations,
        parallelism: cost.parallelism,
        salt: hex::encode(salt),
    };
    let wrapping = derive(password, &kdf, &salt)?;
    let wrapped = wrap_master_key(&wrapping, master, &KeyFile::wrapping_ad(repository));
    let file = KeyFile {
        format: keyfile::FORMAT.into(),
        version: keyfile::VERSION,
        repository: repository.into(),
        created: time::rfc3339(time::now()),
        host: super::lock::hostname(),
        user: user_name(),
        kdf,
        cipher: keyfile::CIPHER.into(),
        master_key: hex::encode(wrapped),
    };
    let bytes = file.to_bytes();
    let key = format!("{KEYS_PREFIX}{}", blake3::hash(&bytes).to_hex());
    Ok((bytes, key))
}

/// The master key of the first key file `password` opens, and that file's
/// object key.
///
/// # Errors
/// [`RepoError::WrongPassword`] when no key file opens (damaged key files
/// are named), [`RepoError::NoKeys`] when there are none, storage failures.
pub fn unlock(
    backend: &dyn Backend,
    repository: &str,
    password: &str,
) -> Result<(MasterKey, String), RepoError> {
    let mut damaged = Vec::new();
    let mut tried = 0usize;
    let objects = backend.list(KEYS_PREFIX)?;
    if objects.is_empty() {
        return Err(RepoError::NoKeys(backend.location()));
    }
    for obj in objects {
        let bytes = match backend.get(&obj.key) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if obj.key != format!("{KEYS_PREFIX}{}", blake3::hash(&bytes).to_hex()) {
            damaged.push(format!("{} (content does not match its name)", obj.key));
            continue;
        }
        let file = match KeyFile::parse(&bytes) {
            Ok(f) if f.repository == repository => f,
            Ok(_) => {
                damaged.push(format!("{} (belongs to another repository)", obj.key));
                continue;
            }
            Err(e) => {
                damaged.push(format!("{} ({e})", obj.key));
                continue;
            }
        };
        tried += 1;
        let (Ok(salt), Ok(wrapped)) = (file.salt(), file.wrapped()) else {
            continue;
        };
        let wrapping = derive(password, &file.kdf, &salt)?;
        if let Some(master) =
            unwrap_master_key(&wrapping, &wrapped, &KeyFile::wrapping_ad(repository))
        {
            return Ok((master, obj.key));
        }
    }
    Err(RepoError::WrongPassword {
        location: backend.location(),
        tried,
        damaged,
    })
}

/// One key file, as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Its id (the object name's last part).
    pub id: String,
    /// Whether this command unlocked the repository with it.
    pub current: bool,
    /// Who made it.
    pub user: String,
    /// Where.
    pub host: String,
    /// When.
    pub created: String,
    /// Argon2 memory (KiB) and passes.
    pub memory_kib: u32,
    /// Argon2 passes.
    pub iterations: u32,
    /// Why it cannot be read, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// The repository's key files.
///
/// # Errors
/// Storage failures.
pub fn list(backend: &dyn Backend, current: Option<&str>) -> Result<Vec<KeyInfo>, RepoError> {
    let mut out = Vec::new();
    for obj in backend.list(KEYS_PREFIX)? {
        let id = obj.key.trim_start_matches(KEYS_PREFIX).to_string();
        let bytes = match backend.get(&obj.key) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let is_current = current == Some(obj.key.as_str());
        out.push(match KeyFile::parse(&bytes) {
            Ok(f) => KeyInfo {
                id,
                current: is_current,
                user: f.user,
                host: f.host,
                created: f.created,
                memory_kib: f.kdf.memory_kib,
                iterations: f.kdf.iterations,
                damaged: None,
            },
            Err(e) => KeyInfo {
                id,
                current: is_current,
                user: String::new(),
                host: String::new(),
                created: String::new(),
                memory_kib: 0,
                iterations: 0,
                damaged: Some(e.to_string()),
            },
        });
    }
    out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    Ok(out)
}

/// Resolves a key id or unique prefix to its object key.
///
/// # Errors
/// No or several matches, storage failures.
pub fn resolve(backend: &dyn Backend, spec: &str) -> Result<String, RepoError> {
    let spec = spec.trim_start_matches(KEYS_PREFIX).to_ascii_lowercase();
    let matches: Vec<String> = backend
        .list(KEYS_PREFIX)?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !spec.is_empty() && k.trim_start_matches(KEYS_PREFIX).starts_with(&spec))
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        0 => Err(RepoError::Invalid(format!(
            "no key matches {spec:?} (see `diskdelta key list`)"
        ))),
        n => Err(RepoError::Invalid(format!(
            "{spec:?} matches {n} keys; give more of the id"
        ))),
    }
}

/// Removes the key file `key`, refusing the one in use and the last one.
///
/// # Errors
/// The refusals, storage failures.
pub fn remove(backend: &dyn Backend, key: &str, current: &str) -> Result<(), RepoError> {
    super::refuse_if_append_only(backend, "removing a key")?;
    if key == current {
        return Err(RepoError::Invalid(format!(
            "{key} is the key this command was unlocked with; remove it with another password (or use `key passwd`)"
        )));
    }
    let count = backend.list(KEYS_PREFIX)?.len();
    if count <= 1 {
        return Err(RepoError::Invalid(
            "the last key of a repository cannot be removed".into(),
        ));
    }
    Ok(backend.delete(key)?)
}
