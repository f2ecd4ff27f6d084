//! Temporary outputs to remove when the process is interrupted.
//!
//! [`Output`](super::Output) registers the temporary name of a file it is
//! writing and unregisters it when the file is renamed into place or
//! dropped. A program that wants interrupted runs to leave nothing behind
//! calls [`remove_registered`] from its signal handling (the CLI does so
//! from a thread that waits for SIGINT, SIGTERM and SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers a temporary file to remove on interruption.
pub fn register(path: &Path) {
    registry().push(path.to_path_buf());
}

/// Forgets a temporary file (renamed into place, or removed).
pub fn unregister(path: &Path) {
    registry().retain(|p| p != path);
}

/// Removes every registered temporary file; returns how many were removed.
pub fn remove_registered() -> usize {
    let paths = std::mem::take(&mut *registry());
    paths
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_files_are_removed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.partial");
        let b = dir.path().join("b.partial");
        std::fs::write(&a, b"x").expect("write");
        std::fs::write(&b, b"x").expect("write");
        register(&a);
        register(&b);
        unregister(&b);
        assert!(remove_registered() >= 1);
        assert!(!a.exists());
        assert!(b.exists());
    }
}
