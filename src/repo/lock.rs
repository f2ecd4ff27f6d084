//! Repository locks (invariants: see the [`crate::repo`] module docs).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::{time, RepoError};

/// How often a holder rewrites its lock.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(1800);

/// Contents of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When it was written (seconds since the epoch).
    pub time: i64,
    /// Exclusive (gc, prune) or shared (backup).
    pub exclusive: bool,
    /// What the holder is doing.
    pub command: String,
}

impl LockInfo {
    /// Why the lock is stale, if it is.
    pub fn stale_reason(&self, now: i64) -> Option<String> {
        if self.host == hostname() && !process_alive(self.pid) {
            return Some(format!("process {} is gone", self.pid));
        }
        let age = now - self.time;
        if age > STALE_AFTER.as_secs() as i64 {
            return Some(format!("not refreshed for {} min", age / 60));
        }
        None
    }

    /// One line describing the lock.
    pub fn describe(&self) -> String {
        format!(
            "{} lock by `{}` (pid {} on {}, since {})",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.command,
            self.pid,
            self.host,
            time::rfc3339(self.time)
        )
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A lock object found in the repository.
#[derive(Debug, Clone)]
pub struct FoundLock {
    /// Its key.
    pub key: String,
    /// Its contents (`None` when unreadable).
    pub info: Option<LockInfo>,
}

/// Every lock in the repository.
///
/// # Errors
/// Storage failures.
pub fn list_locks(backend: &dyn Backend) -> Result<Vec<FoundLock>, RepoError> {
    let mut out = Vec::new();
    for obj in backend.list("locks/")? {
        let info = match backend.get(&obj.key) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(FoundLock { key: obj.key, info });
    }
    Ok(out)
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    backend: Arc<dyn Backend>,
    key: Arc<std::sync::Mutex<String>>,
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    /// The removal registered for an interrupted process (Ctrl-C).
    release: u64,
    /// Stale locks seen (and ignored) while locking, one line each.
    pub stale: Vec<String>,
}

fn write_lock(backend: &dyn Backend, info: &LockInfo) -> Result<String, RepoError> {
    let bytes = serde_json::to_vec(info).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let key = format!(
        "locks/{}",
        &blake3::hash(&[&bytes[..], &time::now_nanos().to_le_bytes()].concat()).to_hex()[..32]
    );
    backend.put_if_absent(&key, &bytes)?;
    Ok(key)
}

impl Lock {
    /// Takes a shared or exclusive lock for `command`.
    ///
    /// # Errors
    /// [`RepoError::Locked`] when a conflicting live lock exists; storage
    /// failures.
    pub fn acquire(
        backend: Arc<dyn Backend>,
        exclusive: bool,
        command: &str,
    ) -> Result<Lock, RepoError> {
        let info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            time: time::now(),
            exclusive,
            command: command.to_string(),
        };
        let key = write_lock(backend.as_ref(), &info)?;
        let mut stale = Vec::new();
        let mut conflict = None;
        let now = time::now();
        let others = match list_locks(backend.as_ref()) {
            Ok(o) => o,
            Err(e) => {
                let _ = backend.delete(&key);
                return Err(e);
            }
        };
        for other in others.into_iter().filter(|o| o.key != key) {
            let Some(other_info) = other.info else {
                // A damaged lock may be a live backup's: only shared
                // holders, which delete nothing, may go past it.
                if exclusive {
                    conflict = Some(format!(
                        "unreadable lock {} (`diskdelta unlock` removes it once no backup runs)",
                        other.key
                    ));
                } else {
                    stale.push(format!("{}: unreadable lock", other.key));
                }
                continue;
            };
            if let Some(reason) = other_info.stale_reason(now) {
                stale.push(format!(
                    "stale {} ({reason}); `diskdelta unlock` removes it",
                    other_info.describe()
                ));
                continue;
            }
            if exclusive || other_info.exclusive {
                conflict = Some(other_info.describe());
            }
        }
        if let Some(c) = conflict {
            let _ = backend.delete(&key);
            return Err(RepoError::Locked(c));
        }
        let key = Arc::new(std::sync::Mutex::new(key));
        let (stop, stopped) = bounded::<()>(0);
        let refresher = {
            let backend = backend.clone();
            let key = key.clone();
            std::thread::Builder::new()
                .name("lock refresh".into())
                .spawn(move || loop {
                    match stopped.recv_timeout(REFRESH_INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {
                            let fresh = LockInfo {
                                time: time::now(),
                                ..info.clone()
                            };
                            // Held throughout, so that a release on
                            // interruption sees either lock, never neither.
                            let Ok(mut k) = key.lock() else { return };
                            if let Ok(new_key) = write_lock(backend.as_ref(), &fresh) {
                                let old = std::mem::replace(&mut *k, new_key);
                                let _ = backend.delete(&old);
                            }
                        }
                        _ => return,
                    }
                })
                .ok()
        };
        // Interrupted, the process exits without dropping the lock: it
        // would stay behind as stale until `unlock`.
        let release = {
            let (backend, key) = (backend.clone(), key.clone());
            crate::io::cleanup::register_release(move || {
                if let Ok(k) = key.lock() {
                    let _ = backend.delete(&k);
                }
            })
        };
        Ok(Lock {
            backend,
            key,
            stop: Some(stop),
            refresher,
            release,
            stale,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        crate::io::cleanup::unregister_release(self.release);
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Ok(k) = self.key.lock() {
            let _ = self.backend.delete(&k);
        }
    }
}

/// Removes stale locks (or all, with `all`); returns the descriptions of
/// those removed.
///
/// # Errors
/// Storage failures.
pub fn unlock(backend: &dyn Backend, all: bool) -> Result<Vec<String>, RepoError> {
    super::refuse_if_append_only(backend, "unlock")?;
    let now = time::now();
    let mut removed = Vec::new();
    for l in list_locks(backend)? {
        let (remove, what) = match &l.info {
            None => (true, format!("{}: unreadable lock", l.key)),
            Some(i) => match i.stale_reason(now) {
                Some(reason) => (true, format!("stale {} ({reason})", i.describe())),
                None => (all, i.describe()),
            },
        };
        if remove {
            backend.delete(&l.key)?;
            removed.push(what);
        }
    }
    Ok(removed)
}
