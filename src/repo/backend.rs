//! Storage behind the repository: a small synchronous trait, and the local
//! directory implementation.
//!
//! # Semantics every backend provides
//! - Keys are `/`-separated relative names of ASCII letters, digits, `-`,
//!   `_` and `.` (`data/ab/abcdef…`, `snapshots/…`, `config`).
//! - [`Backend::put_if_absent`] is atomic: a reader sees either no object or
//!   the whole object, never a prefix, and a crash leaves no partial object
//!   under the key. When the key exists, it returns `Ok(false)` and leaves
//!   the object as it is. A successful return means the object is durable.
//! - Objects are immutable once written; there is no overwrite, append or
//!   rename above this trait (object stores have none).
//! - [`Backend::list`] returns every complete object under a prefix.
//! - [`Backend::delete`] of a missing key succeeds (deletes are idempotent).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub mod s3;
pub mod ssh;

/// Failures of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No object under the key.
    #[error("{key}: not found in the repository")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The operation failed. (The OS error is the source, not part of the
    /// message: `{:#}` chains would print it twice.)
    #[error("{op} {key}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The key or path.
        key: String,
        /// Why.
        source: io::Error,
    },
    /// A request to a remote store failed (after its retries).
    #[error("{op} {key}: {message}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// The key or bucket.
        key: String,
        /// The store's answer, on one line.
        message: String,
    },
    /// A key outside the allowed alphabet.
    #[error("invalid repository key {0:?}")]
    BadKey(String),
}

impl BackendError {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    /// The OS error, if any.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            BackendError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An object's key and size, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Object storage: what the repository needs and nothing more.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the repository is, for messages.
    fn location(&self) -> String;
    /// The whole object.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] or an I/O failure.
    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError>;
    /// `len` bytes of the object from `offset`; fewer only at its end.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] or an I/O failure.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// The object's size.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] or an I/O failure.
    fn size(&self, key: &str) -> Result<u64, BackendError>;
    /// Stores `data` under `key` unless the key exists; `Ok(true)` when stored.
    ///
    /// # Errors
    /// An I/O failure (nothing is left under the key then).
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, BackendError>;
    /// Every object whose key starts with `prefix`.
    ///
    /// # Errors
    /// An I/O failure.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    /// Removes the object; a missing key is not an error.
    ///
    /// # Errors
    /// An I/O failure.
    fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// [`Backend::put_if_absent`] of an owned buffer, which stores that can
    /// send it without a copy do; gives the buffer back for reuse when it
    /// is free again.
    ///
    /// # Errors
    /// As [`Backend::put_if_absent`].
    fn put_if_absent_vec(
        &self,
        key: &str,
        data: Vec<u8>,
    ) -> Result<(bool, Option<Vec<u8>>), BackendError> {
        let stored = self.put_if_absent(key, &data)?;
        Ok((stored, Some(data)))
    }
    /// True when the store refuses deletes (a repository served with
    /// `--append-only`).
    fn append_only(&self) -> bool {
        false
    }
    /// How many puts the repository should keep in flight at once (remote
    /// stores hide their latency behind several).
    fn upload_concurrency(&self) -> usize {
        1
    }
    /// Bytes of the image a restore handles as one unit (a multiple of
    /// 4 MiB): each unit's blobs that lie back to back in a pack are read
    /// with one request.
    fn restore_unit(&self) -> usize {
        crate::repo::backup::UNIT_SIZE
    }
    /// Bytes between two blobs of a pack that a restore reads through
    /// rather than making a second request.
    fn read_gap(&self) -> u64 {
        0
    }
    /// Removes what writers killed in the middle of a put left behind, if
    /// older than `age`; returns how many. Only called under the exclusive
    /// lock (by gc). The default, for stores where a put leaves nothing
    /// behind, does nothing.
    ///
    /// # Errors
    /// An I/O failure.
    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<usize, BackendError> {
        let _ = age;
        Ok(0)
    }
}

fn check_key(key: &str) -> Result<(), BackendError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(BackendError::BadKey(key.to_string()))
    }
}

/// `O_DIRECT` alignment of offsets, lengths and memory.
const DIRECT_ALIGN: usize = 4096;

/// Range reads of this size and up bypass the page cache when their data
/// is not cached: restores and verification read packs once, so filling
/// the cache would only cost a copy and evict the machine's other data.
/// Cached data (a restore right after a backup) is read from the cache.
const DIRECT_READ_MIN: u64 = 256 << 10;
/// Larger range reads go through the page cache (no buffer that big).
const DIRECT_READ_MAX: u64 = 64 << 20;

/// Runs `f` on a `DIRECT_ALIGN`-aligned buffer of `len` bytes, kept per
/// thread and reused: fresh memory for every pack costs page faults.
fn with_aligned_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    use crate::io::reader::AlignedBuf;
    thread_local! {
        static BUFFER: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new(0));
    }
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.capacity() < len {
            *buf = AlignedBuf::new(len);
        }
        f(&mut buf.as_mut_slice()[..len])
    })
}

/// Reads `len` bytes at `offset` of `path` (fewer at the end of the file)
/// with `O_DIRECT`, through a reused aligned buffer; `None` where the file
/// system refuses it, so the caller reads normally.
fn read_direct(path: &Path, offset: u64, len: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let align = DIRECT_ALIGN as u64;
    let start = offset / align * align;
    let end = (offset + len).div_ceil(align) * align;
    let span = (end - start) as usize;
    with_aligned_buffer(span, |window| {
        let mut got = 0;
        while got < span {
            match file.read_at(&mut window[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        // A short read that ends off the alignment is the end of file.
        let skip = (offset - start) as usize;
        let until = got.min(skip + len as usize);
        Some(
            window
                .get(skip..until)
                .map_or_else(Vec::new, <[u8]>::to_vec),
        )
    })
}

/// Objects of this size and up (packs) are written with `O_DIRECT`: they
/// are read back rarely (restore, verify, gc), so filling the page cache
/// with them would cost fresh pages and evict the machine's working set
/// (the image being backed up among it) for nothing.
const DIRECT_WRITE_MIN: usize = 1 << 20;
/// Data goes to `O_DIRECT` writes through an aligned buffer of this size.
const DIRECT_WRITE_PIECE: usize = 4 << 20;

/// Writes `data` at the start of the freshly created `file` (open at
/// `path`): its aligned part with `O_DIRECT` through a reused aligned
/// buffer, the unaligned tail through `file`. `false` when nothing was
/// written because the file system refuses `O_DIRECT`; `false` too on a
/// failed write, and the caller then writes everything again buffered,
/// which reports the error if it persists.
fn write_direct(path: &Path, file: &File, data: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(direct) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return false;
    };
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let written = with_aligned_buffer(DIRECT_WRITE_PIECE, |window| {
        let mut at = 0;
        while at < aligned {
            let n = (aligned - at).min(DIRECT_WRITE_PIECE);
            window[..n].copy_from_slice(&data[at..at + n]);
            if direct.write_all_at(&window[..n], at as u64).is_err() {
                return false;
            }
            at += n;
        }
        true
    });
    written && file.write_all_at(&data[aligned..], aligned as u64).is_ok()
}

/// Prefix of temporary files of the local backend; never listed.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A repository in a local directory.
///
/// `put_if_absent` writes a temporary file beside the key, fsyncs it, links
/// it to the key with `link(2)` (which fails if the key exists, so two
/// writers cannot replace each other's object), fsyncs the directory and
/// removes the temporary name.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        LocalBackend {
            root: root.to_path_buf(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn io(op: &'static str, key: &str, source: io::Error) -> BackendError {
        if source.kind() == io::ErrorKind::NotFound && (op == "read" || op == "open") {
            BackendError::NotFound {
                key: key.to_string(),
            }
        } else {
            BackendError::Io {
                op,
                key: key.to_string(),
                source,
            }
        }
    }

    /// Removes temporary files older than `age` left by killed writers;
    /// returns how many.
    ///
    /// # Errors
    /// An I/O failure while walking the directory.
    pub fn remove_stale_temporaries(
        &self,
        age: std::time::Duration,
    ) -> Result<usize, BackendError> {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("list", &dir.display().to_string(), e)),
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if name.starts_with(TEMP_PREFIX) {
                    let old = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|elapsed| elapsed >= age);
                    if old && fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError> {
        let path = self.path(key)?;
        fs::read(&path).map_err(|e| Self::io("read", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let path = self.path(key)?;
        let mut file = File::open(&path).map_err(|e| Self::io("open", key, e))?;
        if (DIRECT_READ_MIN..=DIRECT_READ_MAX).contains(&len)
            && !crate::io::device::page_cached(&file, offset)
        {
            if let Some(data) = read_direct(&path, offset, len) {
                return Ok(data);
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Self::io("seek", key, e))?;
        let mut out = Vec::with_capacity(len.min(1 << 30) as usize);
        file.take(len)
            .read_to_end(&mut out)
            .map_err(|e| Self::io("read", key, e))?;
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<u64, BackendError> {
        let path = self.path(key)?;
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| Self::io("open", key, e))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, BackendError> {
        let path = self.path(key)?;
        if path.exists() {
            return Ok(false);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Self::io("create directory for", key, e))?;
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temp)
                .map_err(|e| Self::io("create", key, e))?;
            if data.len() < DIRECT_WRITE_MIN || !write_direct(&temp, &file, data) {
                file.write_all(data)
                    .map_err(|e| Self::io("write", key, e))?;
            }
            file.sync_all().map_err(|e| Self::io("fsync", key, e))?;
            drop(file);
            let stored = match fs::hard_link(&temp, &path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(Self::io("link", key, e)),
            };
            sync_dir(&dir).map_err(|e| Self::io("fsync directory of", key, e))?;
            Ok(stored)
        })();
        let _ = fs::remove_file(&temp);
        result
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        // Walk the directory part of the prefix, filter by the rest.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = self.root.join(dir_part);
        let mut out = Vec::new();
        let mut dirs = vec![(start, dir_part.to_string())];
        while let Some((dir, key_dir)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("list", &key_dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Self::io("list", &key_dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if key_dir.is_empty() {
                    name
                } else {
                    format!("{key_dir}/{name}")
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Deleted while listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Self::io("stat", &key, e)),
                };
                if meta.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        dirs.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<usize, BackendError> {
        LocalBackend::remove_stale_temporaries(self, age)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("delete", key, e)),
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The conformance suite every backend must pass (run by the unit tests
/// on a local directory and by the integration tests on S3 servers).
/// Needs an empty store; panics on the first difference.
#[doc(hidden)]
#[allow(clippy::missing_panics_doc)]
pub fn conformance(b: &dyn Backend) {
    assert!(b.get("data/aa/x").expect_err("missing").is_not_found());
    assert!(b.put_if_absent("data/aa/x", b"hello").expect("put"));
    assert!(!b.put_if_absent("data/aa/x", b"other").expect("second put"));
    assert_eq!(b.get("data/aa/x").expect("get"), b"hello");
    assert_eq!(b.get_range("data/aa/x", 1, 3).expect("range"), b"ell");
    assert_eq!(b.get_range("data/aa/x", 3, 10).expect("range"), b"lo");
    assert_eq!(b.size("data/aa/x").expect("size"), 5);
    assert!(b.put_if_absent("data/bb/y", b"").expect("put empty"));
    assert!(b.put_if_absent("snapshots/s", b"s").expect("put"));
    let keys: Vec<String> = b
        .list("data/")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["data/aa/x", "data/bb/y"]);
    assert_eq!(b.list("snap").expect("list").len(), 1);
    assert!(b.list("locks/").expect("list empty").is_empty());
    b.delete("data/aa/x").expect("delete");
    b.delete("data/aa/x").expect("delete again");
    assert!(b.get("data/aa/x").expect_err("deleted").is_not_found());
    assert!(b.put_if_absent("../escape", b"x").is_err());
    assert!(b.put_if_absent("data/.hidden", b"x").is_err());
    assert!(b
        .get_range("snapshots/s", 1, 4)
        .expect("range at the end")
        .is_empty());
    assert!(b
        .get_range("snapshots/s", 9, 4)
        .expect("range past the end")
        .is_empty());
    assert!(b
        .get_range("data/zz/none", 0, 4)
        .expect_err("missing")
        .is_not_found());
    assert!(b.size("data/zz/none").expect_err("missing").is_not_found());
    // Objects big enough to be uploaded in parts by remote stores.
    let big: Vec<u8> = (0..(17u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (stored, _) = b
        .put_if_absent_vec("data/cc/big", big.clone())
        .expect("put big");
    assert!(stored);
    let (again, _) = b
        .put_if_absent_vec("data/cc/big", big.clone())
        .expect("put big again");
    assert!(!again);
    assert_eq!(b.size("data/cc/big").expect("size"), big.len() as u64);
    assert!(b.get("data/cc/big").expect("get big") == big);
    let at = (16 << 20) - 7;
    assert!(
        b.get_range("data/cc/big", at, 100)
            .expect("range across parts")
            == big[at as usize..at as usize + 100]
    );
    b.delete("data/cc/big").expect("delete big");
    b.delete("data/bb/y").expect("delete");
    b.delete("snapshots/s").expect("delete");
    assert!(
        b.list("").expect("list all").is_empty(),
        "objects left behind"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_backend_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(dir.path());
        conformance(&b);
        let stray: Vec<_> = fs::read_dir(dir.path().join("data/aa"))
            .expect("dir")
            .collect();
        assert!(stray.is_empty(), "temporary files left behind");
    }

    /// Large objects take the `O_DIRECT` path (pieces of the aligned
    /// buffer, then the unaligned tail); what is read back must be exact,
    /// cached or not.
    #[test]
    fn large_objects_round_trip_at_every_tail_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(dir.path());
        let sizes = [
            DIRECT_WRITE_MIN,
            DIRECT_WRITE_MIN + 1,
            DIRECT_WRITE_PIECE + DIRECT_ALIGN - 1,
            2 * DIRECT_WRITE_PIECE + 4095 * 3,
        ];
        for (n, size) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 + n) as u8).collect();
            let key = format!("data/cc/large{n}");
            assert!(b.put_if_absent(&key, &data).expect("put"));
            assert_eq!(b.size(&key).expect("size"), size as u64);
            assert!(b.get(&key).expect("get") == data, "object {n} differs");
            let (at, len) = (size as u64 / 3, (size / 2) as u64);
            let range = b.get_range(&key, at, len).expect("range");
            assert!(range[..] == data[at as usize..(at + len) as usize]);
        }
    }
}
