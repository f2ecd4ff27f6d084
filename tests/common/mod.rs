//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod loopdev;
pub mod nbd;
pub mod s3;
pub mod sshd;
pub mod thinpool;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `diskdelta` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diskdelta"))
}

/// The password of the encrypted repositories tests create.
pub const TEST_PASSWORD: &str = "diskdelta-tests";

/// A `Command` for the binary under test, with a quiet environment: new
/// repositories are encrypted (the default) under [`TEST_PASSWORD`], with
/// the cheapest key derivation so that every command does not spend half
/// a second on it.
pub fn diskdelta() -> Command {
    let mut cmd = Command::new(bin());
    for var in [
        "DISKDELTA_REPO",
        "DISKDELTA_PASSWORD_FILE",
        "DISKDELTA_PASSWORD_COMMAND",
        "DISKDELTA_FROM_PASSWORD_FILE",
        "DISKDELTA_FROM_PASSWORD_COMMAND",
        "DISKDELTA_NEW_PASSWORD",
        "DISKDELTA_NEW_PASSWORD_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("DISKDELTA_PASSWORD", TEST_PASSWORD);
    cmd.env("DISKDELTA_FROM_PASSWORD", TEST_PASSWORD);
    cmd.env("DISKDELTA_TESTONLY_WEAKEN_KDF", "1");
    cmd
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("diskdelta-it-")
        .tempdir()
        .expect("create temporary directory")
}

/// Deterministic pseudo-random bytes (xorshift), for reproducible images.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write test file");
    path
}

/// Runs a command and panics with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn command");
    assert!(
        out.status.success(),
        "command {:?} failed with {}: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; returns its output.
pub fn run_fail(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn command");
    assert!(
        !out.status.success(),
        "command {:?} unexpectedly succeeded: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// True when running under CI, where a skipped prerequisite is a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1")
}

/// Names of the entries of `dir`, hidden ones included, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Sends `signal` (`-INT`, `-TERM`, ...) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// Polls `ready` every 5 ms until it holds; fails after 20 s.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed().as_secs() < 20, "{what} did not happen");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs a command with its output captured; kills it and fails the test
/// when it has not exited within `seconds`, so that a hang is a failure
/// rather than a stuck test run.
pub fn run_within(cmd: &mut Command, seconds: u64) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let started = std::time::Instant::now();
    loop {
        match child.try_wait().expect("wait for command") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if started.elapsed().as_secs() >= seconds => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("command {cmd:?} hung: no exit within {seconds} s");
            }
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// A command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for name in entries(&d) {
            let p = d.join(name);
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Copies the files under `from` to the same places under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(file.strip_prefix(from).expect("under the source"));
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("create directory");
        std::fs::copy(&file, &target).expect("copy file");
    }
}

/// Panics at the first byte where `got` differs from `want`, or when their
/// lengths differ (images are too large for `assert_eq!`'s message).
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sizes {} and {})",
            got.len(),
            want.len()
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
}

/// The command's stdout as JSON.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Asserts a one-line `diskdelta: error:` report and the exit code;
/// returns the line.
pub fn assert_error_line(out: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("diskdelta: error: ") && err.matches('\n').count() == 1,
        "{what}: expected one line `diskdelta: error: ...`, got {err:?}"
    );
    assert_eq!(out.status.code(), Some(code), "{what}: exit code ({err:?})");
    err
}
