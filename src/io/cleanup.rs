//! Temporary outputs to remove, commands to run (such as releasing a thin
//! pool's metadata snapshot) and releases to make (such as a repository
//! lock's), when the process is interrupted.
//!
//! [`Output`](super::Output) registers the temporary name of a file it is
//! writing and unregisters it when the file is renamed into place or
//! dropped. A program that wants interrupted runs to leave nothing behind
//! calls [`remove_registered`] from its signal handling (the CLI does so
//! from a thread that waits for SIGINT, SIGTERM and SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static COMMANDS: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());

/// A release registered with [`register_release`].
type Release = Box<dyn Fn() + Send>;
static RELEASES: Mutex<Vec<(u64, Release)>> = Mutex::new(Vec::new());

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
/// The first step of handling an interruption: from here on
/// [`interrupted`] is true.
pub fn remove_registered() -> usize {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let paths = std::mem::take(&mut *registry());
    paths
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

fn commands() -> std::sync::MutexGuard<'static, Vec<(String, Vec<String>)>> {
    COMMANDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers a command that must run if the process is interrupted.
pub fn register_command(program: &str, args: &[String]) {
    commands().push((program.to_string(), args.to_vec()));
}

/// Forgets a command registered with [`register_command`].
pub fn unregister_command(program: &str, args: &[String]) {
    let mut list = commands();
    if let Some(i) = list.iter().position(|(p, a)| p == program && a == args) {
        list.remove(i);
    }
}

/// Runs every registered command once; returns how many succeeded.
pub fn run_registered_commands() -> usize {
    let list = std::mem::take(&mut *commands());
    list.iter()
        .filter(|(program, args)| {
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count()
}

fn releases() -> std::sync::MutexGuard<'static, Vec<(u64, Release)>> {
    RELEASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers something to release if the process is interrupted; returns
/// the handle to forget it with [`unregister_release`].
pub fn register_release(release: impl Fn() + Send + 'static) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    releases().push((id, Box::new(release)));
    id
}

/// Forgets a release (the owner released it itself).
pub fn unregister_release(id: u64) {
    releases().retain(|(i, _)| *i != id);
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once the releases of an interruption have begun: a failure the
/// program sees after that (a child it was waiting for was stopped) is a
/// consequence of the interruption, not an error of its own.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Starts something (a child process) and registers its release in one
/// step, with the registry locked: an interruption cannot fall between the
/// two, and nothing is started once an interruption's releases have run
/// (then `interrupted` gives the error).
///
/// # Errors
/// What `start` returns, or `interrupted()`.
pub fn start_with_release<T, E, R: Fn() + Send + 'static>(
    start: impl FnOnce() -> Result<(T, R), E>,
    interrupted: impl FnOnce() -> E,
) -> Result<(T, u64), E> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1 << 32);
    let mut list = releases();
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    let (value, release) = start()?;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    list.push((id, Box::new(release)));
    Ok((value, id))
}

/// Makes every registered release once; returns how many there were.
pub fn run_registered_releases() -> usize {
    let list = {
        let mut list = releases();
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        std::mem::take(&mut *list)
    };
    for (_, release) in &list {
        release();
    }
    list.len()
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

    #[test]
    fn registered_commands_run_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let args = vec![marker.display().to_string()];
        register_command("touch", &args);
        register_command("touch", &["/nonexistent/dir/x".to_string()]);
        unregister_command("touch", &["/nonexistent/dir/x".to_string()]);
        assert!(run_registered_commands() >= 1);
        assert!(marker.exists());
        std::fs::remove_file(&marker).expect("remove");
        run_registered_commands();
        assert!(!marker.exists());
    }

    #[test]
    fn registered_releases_run_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let count = Arc::new(AtomicUsize::new(0));
        let (a, b) = (count.clone(), count.clone());
        register_release(move || {
            a.fetch_add(1, Ordering::SeqCst);
        });
        let forgotten = register_release(move || {
            b.fetch_add(100, Ordering::SeqCst);
        });
        unregister_release(forgotten);
        run_registered_releases();
        run_registered_releases();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
