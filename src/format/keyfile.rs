//! Key files of encrypted repositories, version 1 (spec:
//! `docs/formats/repository.md`, "Key files").
//!
//! A key file (`keys/<id>`, id = BLAKE3 of its bytes) is JSON holding the
//! repository's master key wrapped with a key derived from one password:
//!
//! ```json
//! {
//!   "format": "diskdelta-key", "version": 1,
//!   "repository": "<repository id>",
//!   "created": "2026-12-05T12:00:00Z", "host": "backup1", "user": "root",
//!   "kdf": { "algorithm": "argon2id", "version": 19, "memory_kib": 65536,
//!            "iterations": 3, "parallelism": 1, "salt": "<32 hex bytes>" },
//!   "cipher": "xchacha20-poly1305",
//!   "master_key": "<hex: nonce (24), ciphertext (64), tag (16)>"
//! }
//! ```
//!
//! The wrapped key's associated data is `"DDLTKEY1"` followed by the
//! repository id's UTF-8 bytes, so a key file cannot be moved to another
//! repository. The parser bounds every cost parameter: a key file is read
//! before anything authenticates it, and must not make a reader allocate
//! gigabytes.

use serde::{Deserialize, Serialize};

/// Value of `format`.
pub const FORMAT: &str = "diskdelta-key";
/// Key file version written and read.
pub const VERSION: u32 = 1;
/// The only key derivation function.
pub const KDF_ARGON2ID: &str = "argon2id";
/// Argon2 version 0x13.
pub const ARGON2_VERSION: u32 = 19;
/// The only cipher.
pub const CIPHER: &str = "xchacha20-poly1305";
/// Largest Argon2 memory a key file may ask for (4 GiB).
pub const MAX_MEMORY_KIB: u32 = 4 << 20;
/// Largest Argon2 iteration count a key file may ask for.
pub const MAX_ITERATIONS: u32 = 64;
/// Largest Argon2 parallelism a key file may ask for.
pub const MAX_PARALLELISM: u32 = 64;
/// Bytes of the wrapped master key: nonce, 64-byte key, tag.
pub const WRAPPED_LEN: usize = 24 + 64 + 16;
/// Largest key file read.
pub const MAX_LEN: usize = 64 << 10;

/// What is wrong with a key file's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not JSON of the right shape.
    #[error("not a diskdelta key file: {0}")]
    Json(String),
    /// Another `format`.
    #[error("not a diskdelta key file (format {0:?})")]
    Format(String),
    /// Written by a newer diskdelta.
    #[error("key file version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// A field's value is out of range or malformed.
    #[error("key file field {field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Argon2id parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always [`KDF_ARGON2ID`].
    pub algorithm: String,
    /// Argon2 version, [`ARGON2_VERSION`].
    pub version: u32,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Random salt, hex.
    pub salt: String,
}

/// A key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The id of the repository whose master key this wraps.
    pub repository: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Host it was made on.
    pub host: String,
    /// User who made it.
    pub user: String,
    /// How the wrapping key is derived from the password.
    pub kdf: KdfParams,
    /// Always [`CIPHER`].
    pub cipher: String,
    /// The wrapped master key, hex.
    pub master_key: String,
}

fn field(field: &'static str, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Field {
        field,
        reason: reason.into(),
    }
}

impl KeyFile {
    /// Parses and checks a key file.
    ///
    /// # Errors
    /// Bad JSON, another format or version, parameters out of bounds.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() > MAX_LEN {
            return Err(KeyFileError::Json(format!("longer than {MAX_LEN} bytes")));
        }
        let key: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeyFileError::Json(e.to_string()))?;
        if key.format != FORMAT {
            return Err(KeyFileError::Format(key.format));
        }
        if key.version != VERSION {
            return Err(KeyFileError::Version(key.version));
        }
        let k = &key.kdf;
        if k.algorithm != KDF_ARGON2ID {
            return Err(field(
                "kdf.algorithm",
                format!("{:?} is not argon2id", k.algorithm),
            ));
        }
        if k.version != ARGON2_VERSION {
            return Err(field("kdf.version", format!("{} is not 19", k.version)));
        }
        if !(1..=MAX_PARALLELISM).contains(&k.parallelism) {
            return Err(field(
                "kdf.parallelism",
                format!("{} is out of range", k.parallelism),
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&k.iterations) {
            return Err(field(
                "kdf.iterations",
                format!("{} is out of range", k.iterations),
            ));
        }
        if k.memory_kib < 8 * k.parallelism || k.memory_kib > MAX_MEMORY_KIB {
            return Err(field(
                "kdf.memory_kib",
                format!("{} is out of range", k.memory_kib),
            ));
        }
        let salt = key.salt()?;
        if !(16..=64).contains(&salt.len()) {
            return Err(field("kdf.salt", "must be 16 to 64 bytes"));
        }
        if key.cipher != CIPHER {
            return Err(field("cipher", format!("{:?} is not {CIPHER}", key.cipher)));
        }
        key.wrapped()?;
        Ok(key)
    }

    /// The salt's bytes.
    ///
    /// # Errors
    /// Not hex.
    pub fn salt(&self) -> Result<Vec<u8>, KeyFileError> {
        hex::decode(&self.kdf.salt).map_err(|e| field("kdf.salt", e.to_string()))
    }

    /// The wrapped master key's bytes.
    ///
    /// # Errors
    /// Not hex, or not [`WRAPPED_LEN`] bytes.
    pub fn wrapped(&self) -> Result<Vec<u8>, KeyFileError> {
        let b = hex::decode(&self.master_key).map_err(|e| field("master_key", e.to_string()))?;
        if b.len() != WRAPPED_LEN {
            return Err(field(
                "master_key",
                format!("{} bytes, expected {WRAPPED_LEN}", b.len()),
            ));
        }
        Ok(b)
    }

    /// The bytes written to storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The associated data binding the wrapped key to its repository.
    pub fn wrapping_ad(repository: &str) -> Vec<u8> {
        let mut ad = b"DDLTKEY1".to_vec();
        ad.extend_from_slice(repository.as_bytes());
        ad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyFile {
        KeyFile {
            format: FORMAT.into(),
            version: VERSION,
            repository: "0123".into(),
            created: "2026-12-05T12:00:00Z".into(),
            host: "h".into(),
            user: "u".into(),
            kdf: KdfParams {
                algorithm: KDF_ARGON2ID.into(),
                version: ARGON2_VERSION,
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
                salt: "00".repeat(32),
            },
            cipher: CIPHER.into(),
            master_key: "ab".repeat(WRAPPED_LEN),
        }
    }

    #[test]
    fn round_trips() {
        let k = sample();
        assert_eq!(KeyFile::parse(&k.to_bytes()), Ok(k));
    }

    #[test]
    fn out_of_bounds_parameters_are_refused() {
        type Change = Box<dyn Fn(&mut KeyFile)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "memory",
                Box::new(|k| k.kdf.memory_kib = MAX_MEMORY_KIB + 1),
            ),
            ("memory", Box::new(|k| k.kdf.memory_kib = 4)),
            ("iterations", Box::new(|k| k.kdf.iterations = 0)),
            ("iterations", Box::new(|k| k.kdf.iterations = 1000)),
            ("parallelism", Box::new(|k| k.kdf.parallelism = 0)),
            ("salt", Box::new(|k| k.kdf.salt = "00".into())),
            ("salt", Box::new(|k| k.kdf.salt = "zz".repeat(32))),
            ("algorithm", Box::new(|k| k.kdf.algorithm = "scrypt".into())),
            ("cipher", Box::new(|k| k.cipher = "aes".into())),
            (
                "master",
                Box::new(|k| k.master_key = "ab".repeat(WRAPPED_LEN - 1)),
            ),
            ("format", Box::new(|k| k.format = "x".into())),
            ("version", Box::new(|k| k.version = 2)),
        ];
        for (what, change) in cases {
            let mut k = sample();
            change(&mut k);
            assert!(KeyFile::parse(&k.to_bytes()).is_err(), "{what}");
        }
        assert!(KeyFile::parse(b"{").is_err());
        assert!(KeyFile::parse(&vec![b' '; MAX_LEN + 1]).is_err());
    }
}
