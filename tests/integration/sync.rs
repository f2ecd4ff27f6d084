//! `diskdelta sync` through the real binary: local paths, a real sshd on
//! loopback (`tests/common/sshd.rs`) and real loop devices
//! (`tests/common/loopdev.rs`).
//!
//! Every changed-block count is checked against [`expected_changes`], a
//! naive block-by-block comparison, so the reports are pinned exactly.

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;
use crate::common::sshd::{unreachable_ssh_command, Sshd};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The block size of the tests that count changed blocks (passed
/// explicitly: the default is a tuning choice that may change).
const BLOCK: usize = 64 * KIB;
const BLOCK_ARG: &str = "64K";

fn sync_cmd(sshd: Option<&Sshd>) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("sync").arg("-q");
    if let Some(s) = sshd {
        cmd.arg("-e")
            .arg(s.ssh_command())
            .arg("--remote-path")
            .arg(common::bin());
    }
    cmd
}

/// Like [`sync_cmd`] with a chosen `--remote-path`.
fn sync_cmd_with_remote_path(sshd: &Sshd, remote_path: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("sync")
        .arg("-q")
        .arg("-e")
        .arg(sshd.ssh_command())
        .arg("--remote-path")
        .arg(remote_path);
    cmd
}

fn remote(sshd: &Sshd, path: &Path) -> String {
    format!("{}:{}", sshd.destination(), path.display())
}

/// A base image with data, zero runs and a changed copy.
fn images(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let mut old = common::pseudo_random(6 << 20, 11);
    old[(1 << 20)..(3 << 20)].fill(0);
    let mut new = old.clone();
    for (i, at) in [5000usize, 1 << 20, 2_500_000, 4_000_000, (6 << 20) - 10]
        .iter()
        .enumerate()
    {
        let end = (*at + 70_000).min(new.len());
        let patch = common::pseudo_random(end - at, 100 + i as u64);
        new[*at..end].copy_from_slice(&patch);
    }
    let old_path = common::write_file(dir, "old.img", &old);
    let new_path = common::write_file(dir, "new.img", &new);
    (old_path, new_path, new)
}

#[test]
fn local_to_local_creates_and_updates() {
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let target = dir.path().join("copy.img");
    common::run_ok(sync_cmd(None).arg(&new).arg(&target));
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
    std::fs::copy(&old, &target).expect("reset target");
    common::run_ok(sync_cmd(None).arg(&new).arg(&target));
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
}

#[test]
fn local_to_remote_moves_only_changed_blocks() {
    let Some(sshd) = Sshd::start("local_to_remote_moves_only_changed_blocks") else {
        return;
    };
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let target = dir.path().join("remote-copy.img");
    std::fs::copy(&old, &target).expect("old copy");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg("--block-size")
            .arg("4K")
            .arg(&new)
            .arg(remote(&sshd, &target)),
    );
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["verified"], true);
    let changed = report["changed_bytes"].as_u64().expect("changed_bytes");
    assert!(changed > 0 && changed < 600_000, "changed {changed}");
    let wire = report["wire_bytes_sent"].as_u64().expect("sent")
        + report["wire_bytes_received"].as_u64().expect("received");
    assert!(wire < 1_000_000, "wire {wire}");
}

#[test]
fn remote_to_local_and_remote_to_remote() {
    let Some(sshd) = Sshd::start("remote_to_local_and_remote_to_remote") else {
        return;
    };
    let dir = common::tempdir();
    let (_, new, new_bytes) = images(dir.path());
    let local = dir.path().join("pulled.img");
    common::run_ok(sync_cmd(Some(&sshd)).arg(remote(&sshd, &new)).arg(&local));
    assert_eq!(std::fs::read(&local).expect("pulled"), new_bytes);
    let far = dir.path().join("far.img");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &new))
            .arg(remote(&sshd, &far)),
    );
    assert_eq!(std::fs::read(&far).expect("far"), new_bytes);
}

// ---------------------------------------------------------------------------
// Helpers

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares without printing megabytes: lengths and the first difference.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: contents differ: {} bytes, expected {}; first difference at byte {first}",
        got.len(),
        want.len()
    );
}

fn assert_file(path: &Path, want: &[u8], what: &str) {
    assert_same(&read(path), want, what);
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn num(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an unsigned number in {report}"))
}

/// Asserts a failed run: exit status 1 and stderr's last line
/// `diskdelta: error: ...` containing every needle (lines before it may only
/// be the remote side's own messages, prefixed with its host). Returns the
/// error line.
fn error_line(out: &Output, needles: &[&str], what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: exit status ({err:?})");
    assert!(
        err.ends_with('\n'),
        "{what}: stderr must end a line: {err:?}"
    );
    let lines: Vec<&str> = err.lines().collect();
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.starts_with("diskdelta: error: "),
        "{what}: stderr's last line must be `diskdelta: error: ...`: {err:?}"
    );
    for line in &lines[..lines.len() - 1] {
        let host = line.split_once(": ").map_or("", |(host, _)| host);
        assert!(
            host.ends_with("@127.0.0.1"),
            "{what}: only the remote side's lines, prefixed with its host, may come before the error: {err:?}"
        );
        assert!(
            !line.contains("diskdelta: error:"),
            "{what}: the remote side's error must be said once, in the error line: {err:?}"
        );
    }
    for needle in needles {
        assert!(
            last.contains(needle),
            "{what}: error line does not mention {needle:?}: {last:?}"
        );
    }
    last.to_string()
}

/// A failure because the connection dropped: one error line naming the
/// host and saying the connection was lost or closed.
fn assert_disconnect(out: &Output) {
    let line = error_line(out, &["127.0.0.1"], "connection killed");
    assert!(
        line.contains("lost") || line.contains("connection closed"),
        "the error does not say the connection dropped: {line:?}"
    );
}

/// Bytes allocated on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .blocks()
        * 512
}

/// The naive reference: `(blocks, bytes)` of the `block`-sized pieces of
/// `src` that differ from `dst`, where `dst` counts as zeros past its end.
fn expected_changes(src: &[u8], dst: &[u8], block: usize) -> (u64, u64) {
    let (mut blocks, mut bytes) = (0, 0);
    for (i, piece) in src.chunks(block).enumerate() {
        let at = i * block;
        let mut other = vec![0u8; piece.len()];
        if at < dst.len() {
            let end = (at + piece.len()).min(dst.len());
            other[..end - at].copy_from_slice(&dst[at..end]);
        }
        if piece != other.as_slice() {
            blocks += 1;
            bytes += piece.len() as u64;
        }
    }
    (blocks, bytes)
}

/// `.NAME.diskdelta-sync` beside `target`.
fn state_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .expect("target has a file name")
        .to_string_lossy();
    target.with_file_name(format!(".{name}.diskdelta-sync"))
}

/// The offset recorded in `target`'s resume state, if there is one.
fn state_offset(target: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state_path(target)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["offset"].as_u64()
}

/// A spawned command whose output is collected by threads (so a chatty
/// child cannot block on a full pipe).
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn diskdelta");
        let mut out = child.stdout.take().expect("stdout pipe");
        let mut err = child.stderr.take().expect("stderr pipe");
        let stdout = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let stderr = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits at most `limit`; a child still running then is killed and the
    /// test fails (a hang is a bug).
    fn finish(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for diskdelta") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("diskdelta sync still running after {limit:?}: it hangs");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }
}

/// Waits until `target`'s resume state records progress (offset > 0)
/// while the sync runs; panics when the sync ends first (the source is then
/// too small to interrupt).
fn wait_for_checkpoint(run: &mut Running, target: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(offset) = state_offset(target).filter(|&o| o > 0) {
            return offset;
        }
        assert!(
            !run.exited(),
            "the sync ended before its first checkpoint; it cannot be interrupted"
        );
        assert!(Instant::now() < deadline, "no checkpoint after 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `diskdelta` wrapper for `--remote-path` that sets the checkpoint
/// interval on the remote side (sshd accepts no client environment).
fn checkpointing_remote_path(dir: &Path) -> PathBuf {
    let script = dir.join("diskdelta-checkpointing");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nDISKDELTA_SYNC_CHECKPOINT_MS=50 exec '{}' \"$@\"\n",
            common::bin().display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// `setpriv`, to run as `nobody` (the tests run as root, for whom file
/// permissions do not apply).
fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// A `diskdelta` wrapper for `--remote-path` that runs the remote side as
/// `nobody`. `None` when `setpriv` is missing.
fn unprivileged_remote_path(dir: &Path) -> Option<PathBuf> {
    let setpriv = setpriv()?;
    let script = dir.join("diskdelta-as-nobody");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} {} '{}' \"$@\"\n",
            setpriv.display(),
            AS_NOBODY.join(" "),
            common::bin().display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(script)
}

/// Makes a temporary directory (0700) readable and traversable by others.
fn open_up(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

fn set_old_mtime(path: &Path) -> SystemTime {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
    std::fs::metadata(path)
        .expect("stat")
        .modified()
        .expect("mtime")
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .expect("stat")
        .modified()
        .expect("mtime")
}

/// Checks the report of a completed, verified, non-resumed sync against the
/// reference comparison of `src` and the target's old content.
fn assert_report(report: &Value, src: &[u8], old_target: &[u8], block: usize) {
    let (blocks, bytes) = expected_changes(src, old_target, block);
    assert_eq!(num(report, "source_size"), src.len() as u64, "{report}");
    assert_eq!(
        num(report, "target_size_before"),
        old_target.len() as u64,
        "{report}"
    );
    assert_eq!(num(report, "bytes_compared"), src.len() as u64, "{report}");
    assert_eq!(num(report, "resumed_from"), 0, "{report}");
    assert_eq!(num(report, "changed_blocks"), blocks, "{report}");
    assert_eq!(num(report, "changed_bytes"), bytes, "{report}");
    assert!(
        num(report, "payload_bytes") <= bytes,
        "payload larger than the changed blocks: {report}"
    );
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["dry_run"], false, "{report}");
}

// ---------------------------------------------------------------------------
// 1. Directions, with exact reports

#[test]
fn json_report_has_every_field_and_exact_counts() {
    let Some(sshd) = Sshd::start("json_report_has_every_field_and_exact_counts") else {
        return;
    };
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let old_bytes = read(&old);
    let target = dir.path().join("target.img");
    std::fs::copy(&old, &target).expect("old copy");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg("--block-size")
            .arg(BLOCK_ARG)
            .arg(&new)
            .arg(remote(&sshd, &target)),
    );
    assert_file(&target, &new_bytes, "target");
    let report = json(&out);
    for field in [
        "source",
        "target",
        "source_size",
        "bytes_compared",
        "changed_blocks",
        "changed_bytes",
        "payload_bytes",
        "wire_bytes_sent",
        "wire_bytes_received",
        "seconds",
        "verified",
    ] {
        assert!(report.get(field).is_some(), "no {field} in {report}");
    }
    assert_eq!(report["source"], new.display().to_string());
    assert_eq!(report["target"], remote(&sshd, &target));
    assert_report(&report, &new_bytes, &old_bytes, BLOCK);
    let payload = num(&report, "payload_bytes");
    assert!(payload > 0, "{report}");
    // The target's side of the wire carries the payload one way and the
    // region roots the other.
    assert!(num(&report, "wire_bytes_sent") >= payload, "{report}");
    assert!(num(&report, "wire_bytes_received") > 0, "{report}");
    let seconds = report["seconds"].as_f64().expect("seconds is a number");
    assert!(seconds > 0.0 && seconds < 60.0, "{report}");
    assert!(
        !state_path(&target).exists(),
        "resume state left after success"
    );
}

#[test]
fn local_to_local_reports_exact_changes_at_every_block_size() {
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let old_bytes = read(&old);
    for block in [512, 4 * KIB, 64 * KIB, MIB] {
        let target = dir.path().join(format!("copy-{block}.img"));
        std::fs::copy(&old, &target).expect("old copy");
        let out = common::run_ok(
            sync_cmd(None)
                .arg("--json")
                .arg("--block-size")
                .arg(block.to_string())
                .arg(&new)
                .arg(&target),
        );
        assert_file(&target, &new_bytes, &format!("block {block}"));
        let report = json(&out);
        assert_report(&report, &new_bytes, &old_bytes, block);
        // Local ends use no wire.
        assert_eq!(num(&report, "wire_bytes_sent"), 0, "{report}");
        assert_eq!(num(&report, "wire_bytes_received"), 0, "{report}");
        // Nothing left to do: a second run changes nothing.
        let again = json(&common::run_ok(
            sync_cmd(None)
                .arg("--json")
                .arg("--block-size")
                .arg(block.to_string())
                .arg(&new)
                .arg(&target),
        ));
        assert_eq!(num(&again, "changed_blocks"), 0, "{again}");
        assert_eq!(num(&again, "payload_bytes"), 0, "{again}");
    }
    let mut names = common::entries(dir.path());
    names.retain(|n| n.starts_with('.'));
    assert!(names.is_empty(), "hidden files left behind: {names:?}");
}

/// Block sizes above 1 MiB are accepted by the command line (up to 16M),
/// but every block is read in pieces of at most 1 MiB.
#[test]
fn block_sizes_above_one_mib_are_refused() {
    let dir = common::tempdir();
    let (old, new, _) = images(dir.path());
    for block in [2 * MIB, 16 * MIB] {
        let target = dir.path().join(format!("copy-{block}.img"));
        std::fs::copy(&old, &target).expect("old copy");
        let before = read(&target);
        let out = sync_cmd(None)
            .arg("--block-size")
            .arg(block.to_string())
            .arg(&new)
            .arg(&target)
            .output()
            .expect("spawn");
        assert!(!out.status.success(), "--block-size {block} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("block size"), "{stderr}");
        assert_eq!(
            read(&target),
            before,
            "target changed with --block-size {block}"
        );
    }
}

#[test]
fn remote_to_remote_updates_an_existing_target() {
    let Some(sshd) = Sshd::start("remote_to_remote_updates_an_existing_target") else {
        return;
    };
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let old_bytes = read(&old);
    let target = dir.path().join("far.img");
    std::fs::copy(&old, &target).expect("old copy");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg("--block-size")
            .arg("16K")
            .arg(remote(&sshd, &new))
            .arg(remote(&sshd, &target)),
    );
    assert_file(&target, &new_bytes, "target");
    let report = json(&out);
    assert_report(&report, &new_bytes, &old_bytes, 16 * KIB);
    // Both ends are remote: the payload crosses the wire twice.
    let payload = num(&report, "payload_bytes");
    assert!(num(&report, "wire_bytes_received") >= payload, "{report}");
    assert!(num(&report, "wire_bytes_sent") >= payload, "{report}");
    assert!(!state_path(&target).exists());
}

// ---------------------------------------------------------------------------
// 2. Sparse results

#[test]
fn new_remote_target_is_sparse_and_zeroed_blocks_are_punched() {
    let Some(sshd) = Sshd::start("new_remote_target_is_sparse_and_zeroed_blocks_are_punched")
    else {
        return;
    };
    let dir = common::tempdir();
    // 64 MiB, written densely: 4 MiB of data at both ends, zeros between.
    let mut src = vec![0u8; 64 * MIB];
    src[..4 * MIB].copy_from_slice(&common::pseudo_random(4 * MIB, 21));
    src[60 * MIB..].copy_from_slice(&common::pseudo_random(4 * MIB, 22));
    let source = common::write_file(dir.path(), "sparse-src.img", &src);
    assert!(
        allocated(&source) >= 60 * MIB as u64,
        "source must be dense"
    );
    let target = dir.path().join("sparse-dst.img");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    assert_file(&target, &src, "new target");
    let size = std::fs::metadata(&target).expect("stat").len();
    let before = allocated(&target);
    assert_eq!(size, 64 * MIB as u64);
    assert!(
        before <= 9 * MIB as u64,
        "new target allocates {before} bytes for 8 MiB of data in {size}"
    );

    // The first 3 MiB become zeros: the target's blocks are punched.
    src[..3 * MIB].fill(0);
    std::fs::write(&source, &src).expect("rewrite source");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    assert_file(&target, &src, "updated target");
    let report = json(&out);
    assert_eq!(num(&report, "changed_bytes"), 3 * MIB as u64, "{report}");
    // Zero blocks need no payload.
    assert_eq!(num(&report, "payload_bytes"), 0, "{report}");
    let after = allocated(&target);
    assert!(
        after + 3 * MIB as u64 <= before + 64 * KIB as u64,
        "allocation went from {before} to {after}: zeroed blocks were not punched"
    );
}

#[test]
fn dense_existing_target_gets_holes_where_the_source_became_zero() {
    let dir = common::tempdir();
    let mut src = common::pseudo_random(16 * MIB, 23);
    let target = common::write_file(dir.path(), "dense.img", &src);
    let before = allocated(&target);
    assert!(before >= 16 * MIB as u64);
    // Zero 5 MiB in two pieces, one not on the block grid (the partly zero
    // blocks at its ends stay data).
    src[MIB..4 * MIB].fill(0);
    src[10 * MIB + 100..12 * MIB + 100].fill(0);
    let source = common::write_file(dir.path(), "src.img", &src);
    common::run_ok(sync_cmd(None).arg(&source).arg(&target));
    assert_file(&target, &src, "target");
    let after = allocated(&target);
    assert!(
        after + 4 * MIB as u64 <= before,
        "allocation went from {before} to {after}: zeroed blocks were not punched"
    );
}

// ---------------------------------------------------------------------------
// 3. Grow and shrink

#[test]
fn target_larger_or_smaller_than_the_source_ends_with_its_size() {
    let Some(sshd) = Sshd::start("target_larger_or_smaller_than_the_source_ends_with_its_size")
    else {
        return;
    };
    let dir = common::tempdir();
    // Odd sizes: the last block is partial.
    let small = common::pseudo_random(3 * MIB + 1000, 31);
    let mut large = common::pseudo_random(9 * MIB + 4321, 32);
    // The large image ends in zeros: extending a small target must still
    // produce them.
    large[7 * MIB..].fill(0);
    let small_src = common::write_file(dir.path(), "small.img", &small);
    let large_src = common::write_file(dir.path(), "large.img", &large);

    // Shrink: a larger target is truncated.
    let target = common::write_file(dir.path(), "t1.img", &common::pseudo_random(10 * MIB, 33));
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg(&small_src)
            .arg(remote(&sshd, &target)),
    );
    assert_eq!(
        std::fs::metadata(&target).expect("stat").len(),
        small.len() as u64
    );
    assert_file(&target, &small, "shrunk target");
    assert_eq!(num(&json(&out), "target_size_before"), 10 * MIB as u64);

    // Grow: a smaller target is extended (local source, remote target).
    let target = common::write_file(dir.path(), "t2.img", &small[..MIB + 5]);
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(&large_src)
            .arg(remote(&sshd, &target)),
    );
    assert_eq!(
        std::fs::metadata(&target).expect("stat").len(),
        large.len() as u64
    );
    assert_file(&target, &large, "grown target");

    // Same both ways with a remote source and a local target.
    let target = common::write_file(dir.path(), "t3.img", &large);
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &small_src))
            .arg(&target),
    );
    assert_file(&target, &small, "shrunk local target");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &large_src))
            .arg(&target),
    );
    assert_file(&target, &large, "grown local target");
}

#[test]
fn empty_source_empties_the_target() {
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "empty.img", &[]);
    let target = common::write_file(dir.path(), "full.img", &common::pseudo_random(MIB, 34));
    let out = common::run_ok(sync_cmd(None).arg("--json").arg(&source).arg(&target));
    assert_eq!(std::fs::metadata(&target).expect("stat").len(), 0);
    let report = json(&out);
    assert_eq!(num(&report, "source_size"), 0, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    // And into a missing target: created empty.
    let created = dir.path().join("new.img");
    common::run_ok(sync_cmd(None).arg(&source).arg(&created));
    assert_eq!(std::fs::metadata(&created).expect("created").len(), 0);
}

// ---------------------------------------------------------------------------
// 4. Block devices

#[test]
fn loop_device_target_keeps_its_size() {
    let test = "sync::loop_device_target_keeps_its_size";
    let device_size = 8 * MIB;
    let before = common::pseudo_random(device_size, 41);
    let Some(dev) = LoopDevice::attach(test, &before, device_size as u64) else {
        return;
    };
    let dir = common::tempdir();
    // Odd size; zero runs where the device holds data (one at the very end,
    // partial block included).
    let mut src = common::pseudo_random(5 * MIB + 3000, 42);
    src[MIB..2 * MIB].fill(0);
    src[5 * MIB + 1000..].fill(0);
    let source = common::write_file(dir.path(), "src.img", &src);
    let out = common::run_ok(
        sync_cmd(None)
            .arg("--json")
            .arg("--block-size")
            .arg("4K")
            .arg(&source)
            .arg(dev.path()),
    );
    let report = json(&out);
    assert_report(&report, &src, &before, 4 * KIB);
    assert_eq!(num(&report, "target_size_before"), device_size as u64);
    assert_eq!(dev.device_size(), device_size as u64, "device size changed");
    let now = dev.read_all();
    assert_same(&now[..src.len()], &src, "device over the source's size");
    assert_same(
        &now[src.len()..],
        &before[src.len()..],
        "device past the source's size (must be untouched)",
    );

    // A second run finds nothing to do.
    let again = json(&common::run_ok(
        sync_cmd(None)
            .arg("--json")
            .arg("--block-size")
            .arg("4K")
            .arg(&source)
            .arg(dev.path()),
    ));
    assert_eq!(num(&again, "changed_blocks"), 0, "{again}");
}

#[test]
fn loop_device_smaller_than_the_source_is_refused_before_writing() {
    let test = "sync::loop_device_smaller_than_the_source_is_refused_before_writing";
    let before = common::pseudo_random(4 * MIB, 43);
    let Some(dev) = LoopDevice::attach(test, &before, 4 * MIB as u64) else {
        return;
    };
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &common::pseudo_random(5 * MIB, 44));
    let out = common::run_fail(sync_cmd(None).arg(&source).arg(dev.path()));
    let dev_name = dev.path().display().to_string();
    error_line(&out, &["too small", &dev_name], "device too small");
    assert_same(&dev.read_all(), &before, "device after the refused sync");
    // Same for a dry run: it reports the problem too.
    let out = common::run_fail(sync_cmd(None).arg("-n").arg(&source).arg(dev.path()));
    error_line(&out, &["too small"], "device too small, dry run");
}

#[test]
fn remote_loop_device_as_target_and_as_source() {
    let test = "sync::remote_loop_device_as_target_and_as_source";
    let device_size = 6 * MIB;
    let before = common::pseudo_random(device_size, 45);
    let Some(dev) = LoopDevice::attach(test, &before, device_size as u64) else {
        return;
    };
    let Some(sshd) = Sshd::start(test) else {
        return;
    };
    let dir = common::tempdir();
    let mut src = common::pseudo_random(4 * MIB + 512, 46);
    src[2 * MIB..3 * MIB].fill(0);
    let source = common::write_file(dir.path(), "src.img", &src);
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(&source)
            .arg(remote(&sshd, dev.path())),
    );
    let now = dev.read_all();
    assert_eq!(dev.device_size(), device_size as u64);
    assert_same(&now[..src.len()], &src, "remote device");
    assert_same(
        &now[src.len()..],
        &before[src.len()..],
        "remote device tail",
    );

    // The device as a source: the whole device is copied.
    let copy = dir.path().join("device-copy.img");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg(remote(&sshd, dev.path()))
            .arg(&copy),
    );
    assert_file(&copy, &now, "copy of the device");
    assert_eq!(num(&json(&out), "source_size"), device_size as u64);
}

// ---------------------------------------------------------------------------
// 5. Special characters in paths

/// `/tmp/INJECTED-...` paths that a shell injection would create.
fn sentinels(tag: &str) -> Vec<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    ["a", "b", "c", "d"]
        .iter()
        .map(|s| {
            PathBuf::from(format!(
                "/tmp/INJECTED-diskdelta-{tag}-{}-{stamp}-{s}",
                std::process::id()
            ))
        })
        .collect()
}

#[test]
fn remote_paths_with_special_characters_work_and_inject_nothing() {
    let Some(sshd) = Sshd::start("remote_paths_with_special_characters_work_and_inject_nothing")
    else {
        return;
    };
    let dir = common::tempdir();
    let probes = sentinels("paths");
    let mut names: Vec<String> = [
        "with space.img",
        "single'quote.img",
        "double\"quote.img",
        "dollar$HOME${x}.img",
        "semi;colon&amp|pipe>redir.img",
        "star*?[ab].img",
        "-x",
        "back\\slash.img",
        "colon:in:name.img",
        "tab\there.img",
        "new\nline.img",
        "ünïcödé.img",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Paths that would run a command if a shell saw them.
    names.push(format!("q; touch {}", probes[0].display()));
    names.push(format!("$(touch {})", probes[1].display()));
    names.push(format!("`touch {}`", probes[2].display()));
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    for (i, name) in names.iter().enumerate() {
        let src_path = input.join(name);
        let dst_path = output.join(name);
        for p in [&src_path, &dst_path] {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        }
        let data = common::pseudo_random(300 * KIB + i, 50 + i as u64);
        std::fs::write(&src_path, &data).expect("write source");
        let out = sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &src_path))
            .arg(remote(&sshd, &dst_path))
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "sync of {name:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_file(&dst_path, &data, &format!("copy of {name:?}"));
    }
    // A --remote-path with spaces, quotes and `$` is quoted too.
    let odd_bin_dir = dir.path().join("bin dir $HOME 'q'");
    std::fs::create_dir_all(&odd_bin_dir).expect("mkdir");
    let odd_bin = odd_bin_dir.join("diskdelta");
    std::os::unix::fs::symlink(common::bin(), &odd_bin).expect("symlink");
    let data = common::pseudo_random(100 * KIB, 70);
    let source = common::write_file(dir.path(), "rp.img", &data);
    let target = dir.path().join("rp copy.img");
    common::run_ok(
        sync_cmd_with_remote_path(&sshd, &odd_bin)
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    assert_file(&target, &data, "copy through an odd --remote-path");
    // ... and a --remote-path that is an injection runs nothing.
    let evil = PathBuf::from(format!(
        "{}; touch {}",
        common::bin().display(),
        probes[3].display()
    ));
    let out = common::run_fail(
        sync_cmd_with_remote_path(&sshd, &evil)
            .arg(&source)
            .arg(remote(&sshd, &dir.path().join("never.img"))),
    );
    error_line(&out, &["--remote-path"], "injected --remote-path");
    for p in &probes {
        assert!(!p.exists(), "injected command ran: {} exists", p.display());
    }
    assert!(!dir.path().join("never.img").exists());
}

#[test]
fn local_paths_with_a_colon_or_a_leading_dash() {
    let Some(sshd) = Sshd::start("local_paths_with_a_colon_or_a_leading_dash") else {
        return;
    };
    let dir = common::tempdir();
    let data = common::pseudo_random(200 * KIB, 71);
    common::write_file(dir.path(), "-x", &data);
    common::run_ok(
        sync_cmd(None)
            .current_dir(dir.path())
            .arg("./-x")
            .arg("./a:b"),
    );
    assert_file(&dir.path().join("a:b"), &data, "./a:b");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .current_dir(dir.path())
            .arg("./a:b")
            .arg(remote(&sshd, &dir.path().join("c:d"))),
    );
    assert_file(&dir.path().join("c:d"), &data, "remote c:d");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .current_dir(dir.path())
            .arg(remote(&sshd, &dir.path().join("c:d")))
            .arg("./-y"),
    );
    assert_file(&dir.path().join("-y"), &data, "./-y");
    // Without `./`, `e:f` names the path `f` on host `e`, like rsync.
    let out = common::run_fail(
        common::diskdelta()
            .current_dir(dir.path())
            .arg("sync")
            .arg("-q")
            .arg("-e")
            .arg(unreachable_ssh_command())
            .arg("./-x")
            .arg("e:f"),
    );
    error_line(&out, &["cannot connect to e "], "e:f is remote");
    assert!(!dir.path().join("e:f").exists() && !dir.path().join("f").exists());
}

// ---------------------------------------------------------------------------
// 6. A directory as DST

#[test]
fn directory_target_gets_the_source_name() {
    let Some(sshd) = Sshd::start("directory_target_gets_the_source_name") else {
        return;
    };
    let dir = common::tempdir();
    let data = common::pseudo_random(MIB + 7, 72);
    let source = common::write_file(dir.path(), "disk.img", &data);
    let local = dir.path().join("local-dir");
    let far = dir.path().join("remote-dir");
    let pulled = dir.path().join("pulled-dir");
    for d in [&local, &far, &pulled] {
        std::fs::create_dir(d).expect("mkdir");
    }
    common::run_ok(sync_cmd(None).arg(&source).arg(&local));
    assert_file(&local.join("disk.img"), &data, "local dir");
    common::run_ok(sync_cmd(Some(&sshd)).arg(&source).arg(remote(&sshd, &far)));
    assert_file(&far.join("disk.img"), &data, "remote dir");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &source))
            .arg(&pulled),
    );
    assert_file(&pulled.join("disk.img"), &data, "local dir, remote source");
    // With a trailing slash too, and only the one file appears.
    let slash = format!("{}/", far.display());
    let changed = common::pseudo_random(MIB + 7, 73);
    std::fs::write(&source, &changed).expect("change source");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(&source)
            .arg(format!("{}:{slash}", sshd.destination())),
    );
    assert_file(&far.join("disk.img"), &changed, "remote dir/");
    assert_eq!(common::entries(&far), vec!["disk.img".to_string()]);
    assert_eq!(common::entries(&local), vec!["disk.img".to_string()]);
}

// ---------------------------------------------------------------------------
// 7. Resume

/// A 256 MiB random image (too big to sync before the first checkpoint).
fn big_image(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = common::pseudo_random(256 * MIB, seed);
    let path = common::write_file(dir, "big.img", &data);
    (path, data)
}

/// Starts `command`, kills the ssh connections after the first checkpoint,
/// checks the one-line failure and the saved offset, then reruns the same
/// command and checks that it resumed there and finished verified, with the
/// target identical and the state file gone. Returns the rerun's report and
/// the offset it resumed from.
fn kill_then_resume(
    sshd: &Sshd,
    command: &dyn Fn() -> Command,
    target: &Path,
    data: &[u8],
) -> (Value, u64) {
    let mut run = Running::spawn(&mut command());
    wait_for_checkpoint(&mut run, target);
    sshd.kill_connections();
    let out = run.finish(Duration::from_secs(30));
    assert_disconnect(&out);
    let offset = state_offset(target).expect("resume state after the failure");
    assert!(
        offset > 0 && offset < data.len() as u64,
        "state offset {offset}"
    );

    let out = command().output().expect("spawn");
    assert!(
        out.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(num(&report, "resumed_from"), offset, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    assert_file(target, data, "resumed target");
    assert!(
        !state_path(target).exists(),
        "resume state left after success"
    );
    (report, offset)
}

#[test]
fn killed_connection_fails_then_the_rerun_resumes_local_target() {
    let Some(sshd) = Sshd::start("killed_connection_fails_then_the_rerun_resumes_local_target")
    else {
        return;
    };
    let dir = common::tempdir();
    let (source, data) = big_image(dir.path(), 81);
    let target = dir.path().join("copy.img");
    let command = || {
        let mut c = sync_cmd(Some(&sshd));
        c.env("DISKDELTA_SYNC_CHECKPOINT_MS", "50")
            .arg("--json")
            .arg(remote(&sshd, &source))
            .arg(&target);
        c
    };
    let (report, offset) = kill_then_resume(&sshd, &command, &target, &data);
    assert_eq!(
        num(&report, "bytes_compared"),
        data.len() as u64 - offset,
        "{report}"
    );
}

#[test]
fn killed_connection_fails_then_the_rerun_resumes_remote_target() {
    let Some(sshd) = Sshd::start("killed_connection_fails_then_the_rerun_resumes_remote_target")
    else {
        return;
    };
    let dir = common::tempdir();
    let (source, data) = big_image(dir.path(), 82);
    let target = dir.path().join("copy.img");
    let wrapper = checkpointing_remote_path(dir.path());
    let command = || {
        let mut c = sync_cmd_with_remote_path(&sshd, &wrapper);
        c.arg("--json").arg(&source).arg(remote(&sshd, &target));
        c
    };
    kill_then_resume(&sshd, &command, &target, &data);
}

#[test]
fn killed_sync_resumes_only_while_the_source_is_unchanged() {
    let dir = common::tempdir();
    let (source, mut data) = big_image(dir.path(), 83);
    let target = dir.path().join("copy.img");
    let command = || {
        let mut c = sync_cmd(None);
        c.env("DISKDELTA_SYNC_CHECKPOINT_MS", "50")
            .arg("--json")
            .arg(&source)
            .arg(&target);
        c
    };
    let interrupt = || {
        let mut run = Running::spawn(&mut command());
        wait_for_checkpoint(&mut run, &target);
        run.child.kill().expect("kill diskdelta");
        let out = run.finish(Duration::from_secs(10));
        assert!(!out.status.success());
        state_offset(&target).expect("resume state after the kill")
    };

    // The source changes below the checkpoint between the runs: resuming
    // would keep the old bytes there, so the rerun must start over.
    let offset = interrupt();
    assert!(offset > 0);
    let patch = common::pseudo_random(8192, 84);
    data[4096..4096 + 8192].copy_from_slice(&patch);
    std::fs::File::options()
        .write(true)
        .open(&source)
        .and_then(|f| f.write_all_at(&patch, 4096))
        .expect("modify source");
    let report = json(&common::run_ok(&mut command()));
    assert_eq!(num(&report, "resumed_from"), 0, "{report}");
    assert_eq!(
        num(&report, "bytes_compared"),
        data.len() as u64,
        "{report}"
    );
    assert_file(&target, &data, "target after a changed source");
    assert!(!state_path(&target).exists());

    // A fresh target, interrupted, the source only touched (same bytes,
    // new mtime): no resume either.
    std::fs::remove_file(&target).expect("remove target");
    let offset = interrupt();
    assert!(offset > 0);
    std::fs::File::options()
        .write(true)
        .open(&source)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(5)))
        .expect("touch source");
    let report = json(&common::run_ok(&mut command()));
    assert_eq!(num(&report, "resumed_from"), 0, "{report}");
    assert_file(&target, &data, "target after a touched source");

    // Interrupted again with the source left alone: the rerun resumes.
    std::fs::remove_file(&target).expect("remove target");
    let offset = interrupt();
    let report = json(&common::run_ok(&mut command()));
    assert_eq!(num(&report, "resumed_from"), offset, "{report}");
    assert_file(&target, &data, "resumed target");
    assert!(!state_path(&target).exists());
}

/// The resume state vouches for the target's first bytes only while they
/// are still there: a target deleted (or truncated) after an interrupted
/// run must not be resumed into, or its start stays zeros.
#[test]
fn a_deleted_or_truncated_target_is_not_resumed_into() {
    let dir = common::tempdir();
    let (source, data) = big_image(dir.path(), 86);
    let target = dir.path().join("copy.img");
    let command = || {
        let mut c = sync_cmd(None);
        c.env("DISKDELTA_SYNC_CHECKPOINT_MS", "50")
            .arg("--json")
            .arg(&source)
            .arg(&target);
        c
    };
    for damage in ["deleted", "truncated"] {
        let mut run = Running::spawn(&mut command());
        wait_for_checkpoint(&mut run, &target);
        run.child.kill().expect("kill diskdelta");
        run.finish(Duration::from_secs(10));
        let offset = state_offset(&target).expect("resume state after the kill");
        assert!(offset > 0);
        if damage == "deleted" {
            std::fs::remove_file(&target).expect("delete target");
        } else {
            std::fs::File::options()
                .write(true)
                .open(&target)
                .and_then(|f| f.set_len(0))
                .expect("truncate target");
        }
        let out = command().output().expect("spawn");
        assert!(
            out.status.success(),
            "{damage}: rerun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&out);
        assert_file(
            &target,
            &data,
            &format!("{damage} target after the rerun ({report})"),
        );
        assert_eq!(num(&report, "resumed_from"), 0, "{damage}: {report}");
        std::fs::remove_file(&target).expect("remove target");
    }
}

#[test]
fn a_different_block_size_does_not_resume() {
    let dir = common::tempdir();
    let (source, data) = big_image(dir.path(), 85);
    let target = dir.path().join("copy.img");
    let mut run = Running::spawn(
        sync_cmd(None)
            .env("DISKDELTA_SYNC_CHECKPOINT_MS", "50")
            .arg("--block-size")
            .arg("64K")
            .arg(&source)
            .arg(&target),
    );
    wait_for_checkpoint(&mut run, &target);
    run.child.kill().expect("kill diskdelta");
    run.finish(Duration::from_secs(10));
    let report = json(&common::run_ok(
        sync_cmd(None)
            .arg("--json")
            .arg("--block-size")
            .arg("16K")
            .arg(&source)
            .arg(&target),
    ));
    assert_eq!(num(&report, "resumed_from"), 0, "{report}");
    assert_file(&target, &data, "target");
    assert!(!state_path(&target).exists());
}

// ---------------------------------------------------------------------------
// 9. Dry run

/// `path` as a sync end: local, or on the harness's host.
fn local_or_remote(sshd: &Sshd, remote_end: bool, path: &Path) -> String {
    if remote_end {
        remote(sshd, path)
    } else {
        path.display().to_string()
    }
}

/// Runs a dry-run sync (`flag` is `--dry-run` or `-n`) and returns its report.
fn dry_run(sshd: &Sshd, flag: &str, src: &Path, dst: &str) -> Value {
    let out = common::run_ok(
        sync_cmd(Some(sshd))
            .arg(flag)
            .arg("--json")
            .arg("-b")
            .arg(BLOCK_ARG)
            .arg(src)
            .arg(dst),
    );
    json(&out)
}

#[test]
fn dry_run_writes_nothing() {
    let Some(sshd) = Sshd::start("dry_run_writes_nothing") else {
        return;
    };
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let old_bytes = read(&old);
    for remote_target in [false, true] {
        let what = if remote_target { "remote" } else { "local" };
        let target = dir.path().join(format!("{what}-existing.img"));
        std::fs::copy(&old, &target).expect("old copy");
        let stamp = set_old_mtime(&target);
        let report = dry_run(
            &sshd,
            "--dry-run",
            &new,
            &local_or_remote(&sshd, remote_target, &target),
        );
        let (blocks, bytes) = expected_changes(&new_bytes, &old_bytes, BLOCK);
        assert!(bytes > 0);
        assert_eq!(num(&report, "changed_blocks"), blocks, "{what}: {report}");
        assert_eq!(num(&report, "changed_bytes"), bytes, "{what}: {report}");
        assert_eq!(report["dry_run"], true, "{report}");
        assert_file(
            &target,
            &old_bytes,
            &format!("{what} target after a dry run"),
        );
        assert_eq!(mtime(&target), stamp, "{what}: dry run changed the mtime");
        assert!(
            !state_path(&target).exists(),
            "{what}: dry run left a state file"
        );

        // A missing target is not created; every non-zero block counts.
        let missing = dir.path().join(format!("{what}-missing.img"));
        let report = dry_run(
            &sshd,
            "-n",
            &new,
            &local_or_remote(&sshd, remote_target, &missing),
        );
        let (blocks, bytes) = expected_changes(&new_bytes, &[], BLOCK);
        assert_eq!(num(&report, "changed_blocks"), blocks, "{what}: {report}");
        assert_eq!(num(&report, "changed_bytes"), bytes, "{what}: {report}");
        assert!(!missing.exists(), "{what}: dry run created the target");
        assert!(!state_path(&missing).exists());
    }
    // Identical: nothing would change.
    let out = common::run_ok(sync_cmd(None).arg("-n").arg("--json").arg(&new).arg(&new));
    assert_eq!(num(&json(&out), "changed_bytes"), 0);
}

// ---------------------------------------------------------------------------
// 10. Errors

#[test]
fn unreachable_host_is_one_error_line() {
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let out = common::run_fail(
        common::diskdelta()
            .arg("sync")
            .arg("-q")
            .arg("-e")
            .arg(unreachable_ssh_command())
            .arg(&source)
            .arg(format!("root@127.0.0.1:{}/x.img", dir.path().display())),
    );
    error_line(
        &out,
        &["cannot connect", "127.0.0.1", "Connection refused"],
        "unreachable",
    );
    assert!(!dir.path().join("x.img").exists());
}

#[test]
fn authentication_failure_is_one_error_line() {
    let Some(sshd) = Sshd::start("authentication_failure_is_one_error_line") else {
        return;
    };
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let target = dir.path().join("x.img");
    let out = common::run_fail(
        common::diskdelta()
            .arg("sync")
            .arg("-q")
            .arg("-e")
            .arg(sshd.ssh_command_with_wrong_key())
            .arg("--remote-path")
            .arg(common::bin())
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    error_line(&out, &["cannot connect", "Permission denied"], "wrong key");
    assert!(!target.exists());
}

#[test]
fn diskdelta_missing_on_the_remote_side() {
    let Some(sshd) = Sshd::start("diskdelta_missing_on_the_remote_side") else {
        return;
    };
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let target = dir.path().join("x.img");
    let out = common::run_fail(
        sync_cmd_with_remote_path(&sshd, Path::new("/nonexistent/diskdelta"))
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    error_line(
        &out,
        &["/nonexistent/diskdelta", "install", "--remote-path"],
        "missing remote binary",
    );
    assert!(!target.exists());
    // A remote program that is not diskdelta (text on stdout): an error,
    // not a hang.
    let run = Running::spawn(
        sync_cmd_with_remote_path(&sshd, Path::new("/bin/echo"))
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    let out = run.finish(Duration::from_secs(20));
    error_line(&out, &[], "remote program is not diskdelta");
    assert!(!target.exists());
}

#[test]
fn missing_source_is_an_error_naming_it() {
    let Some(sshd) = Sshd::start("missing_source_is_an_error_naming_it") else {
        return;
    };
    let dir = common::tempdir();
    let missing = dir.path().join("no-such.img");
    let name = missing.display().to_string();
    for remote_source in [false, true] {
        let target = dir.path().join(format!("t-{remote_source}.img"));
        let src = if remote_source {
            remote(&sshd, &missing)
        } else {
            name.clone()
        };
        let out = common::run_fail(sync_cmd(Some(&sshd)).arg(&src).arg(remote(&sshd, &target)));
        error_line(&out, &[&name], "missing source");
        assert!(!target.exists(), "target created for a missing source");
    }
    // A directory is no source either.
    let out = common::run_fail(sync_cmd(None).arg(dir.path()).arg(dir.path().join("t.img")));
    error_line(
        &out,
        &[&dir.path().display().to_string()],
        "directory source",
    );
}

#[test]
fn target_in_a_missing_directory_is_an_error_naming_it() {
    let Some(sshd) = Sshd::start("target_in_a_missing_directory_is_an_error_naming_it") else {
        return;
    };
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let target = dir.path().join("no-such-dir").join("x.img");
    let name = target.display().to_string();
    let out = common::run_fail(sync_cmd(None).arg(&source).arg(&target));
    error_line(&out, &[&name], "local target in a missing directory");
    let out = common::run_fail(
        sync_cmd(Some(&sshd))
            .arg(&source)
            .arg(remote(&sshd, &target)),
    );
    error_line(&out, &[&name], "remote target in a missing directory");
    assert!(!dir.path().join("no-such-dir").exists());
}

#[test]
fn unwritable_target_is_an_error_naming_it() {
    let Some(sshd) = Sshd::start("unwritable_target_is_an_error_naming_it") else {
        return;
    };
    let dir = common::tempdir();
    open_up(dir.path());
    let Some(as_nobody) = unprivileged_remote_path(dir.path()) else {
        eprintln!("SKIPPED unwritable_target_is_an_error_naming_it: no setpriv");
        return;
    };
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let existing = common::write_file(&locked, "existing.img", &[2u8; 4096]);
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    for target in [locked.join("new.img"), existing.clone()] {
        let name = target.display().to_string();
        let out = common::run_fail(
            sync_cmd_with_remote_path(&sshd, &as_nobody)
                .arg(&source)
                .arg(remote(&sshd, &target)),
        );
        error_line(&out, &[&name], "unwritable remote target");
    }
    // The same with the whole sync running as nobody (a local target).
    for target in [locked.join("new.img"), existing.clone()] {
        let name = target.display().to_string();
        let out = common::run_fail(
            Command::new(setpriv().expect("setpriv"))
                .args(AS_NOBODY)
                .arg(common::bin())
                .arg("sync")
                .arg("-q")
                .arg(&source)
                .arg(&target),
        );
        error_line(&out, &[&name], "unwritable local target");
    }
    assert!(!locked.join("new.img").exists());
    assert_eq!(read(&existing), vec![2u8; 4096]);
}

/// Errors say why, like the other subcommands do ("cannot open X: No such
/// file or directory (os error 2)").
#[test]
fn open_errors_include_the_os_reason() {
    let Some(sshd) = Sshd::start("open_errors_include_the_os_reason") else {
        return;
    };
    let dir = common::tempdir();
    open_up(dir.path());
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let missing = dir.path().join("no-such.img");
    let out = common::run_fail(sync_cmd(None).arg(&missing).arg(dir.path().join("t.img")));
    error_line(&out, &["No such file or directory"], "local missing source");
    let out = common::run_fail(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &missing))
            .arg(dir.path().join("t.img")),
    );
    error_line(
        &out,
        &["No such file or directory"],
        "remote missing source",
    );
    let Some(as_nobody) = unprivileged_remote_path(dir.path()) else {
        return;
    };
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let out = common::run_fail(
        sync_cmd_with_remote_path(&sshd, &as_nobody)
            .arg(&source)
            .arg(remote(&sshd, &locked.join("x.img"))),
    );
    error_line(&out, &["Permission denied"], "remote unwritable target");
    let out = common::run_fail(
        Command::new(setpriv().expect("setpriv"))
            .args(AS_NOBODY)
            .arg(common::bin())
            .arg("sync")
            .arg("-q")
            .arg(&source)
            .arg(locked.join("x.img")),
    );
    error_line(&out, &["Permission denied"], "local unwritable target");
}

#[test]
fn bad_block_sizes_are_refused() {
    let dir = common::tempdir();
    let source = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    for bad in ["1000", "256", "32M", "x"] {
        let target = dir.path().join("t.img");
        let out = common::run_fail(
            sync_cmd(None)
                .arg("--block-size")
                .arg(bad)
                .arg(&source)
                .arg(&target),
        );
        error_line(&out, &["block"], &format!("--block-size {bad}"));
        assert!(!target.exists(), "--block-size {bad} created the target");
    }
}

// ---------------------------------------------------------------------------
// 12. Bytes on the wire

#[test]
fn wire_bytes_are_small_for_unchanged_and_few_changed_clusters() {
    let Some(sshd) = Sshd::start("wire_bytes_are_small_for_unchanged_and_few_changed_clusters")
    else {
        return;
    };
    let dir = common::tempdir();
    let (source, mut data) = big_image(dir.path(), 91);
    let target = common::write_file(dir.path(), "copy.img", &data);
    let sync = || {
        json(&common::run_ok(
            sync_cmd(Some(&sshd))
                .arg("--json")
                .arg(&source)
                .arg(remote(&sshd, &target)),
        ))
    };
    let report = sync();
    let wire = num(&report, "wire_bytes_sent") + num(&report, "wire_bytes_received");
    assert_eq!(num(&report, "changed_bytes"), 0, "{report}");
    assert_eq!(num(&report, "bytes_compared"), 256 * MIB as u64, "{report}");
    assert!(
        wire < MIB as u64,
        "unchanged 256 MiB image: {wire} bytes on the wire"
    );

    // Four 64K clusters in three regions get compressible new content.
    let mut estimate = 0u64;
    for (i, at) in [3 * MIB, 3 * MIB + 64 * KIB, 100 * MIB, 255 * MIB]
        .into_iter()
        .enumerate()
    {
        let mut cluster = Vec::with_capacity(64 * KIB);
        let mut n = 0u64;
        while cluster.len() < 64 * KIB {
            cluster.extend_from_slice(format!("cluster {i} line {n} of new data\n").as_bytes());
            n += 1;
        }
        cluster.truncate(64 * KIB);
        estimate += zstd::bulk::compress(&cluster, 1).expect("zstd").len() as u64;
        data[at..at + 64 * KIB].copy_from_slice(&cluster);
    }
    std::fs::write(&source, &data).expect("rewrite source");
    let report = sync();
    assert_file(&target, &data, "target");
    // Exactly the clusters, whatever the default block size (up to 64K).
    assert_eq!(
        num(&report, "changed_bytes"),
        4 * 64 * KIB as u64,
        "{report}"
    );
    let payload = num(&report, "payload_bytes");
    assert!(
        payload <= estimate * 3 / 2 && payload * 2 >= estimate,
        "payload {payload} is not about the compressed size {estimate}: {report}"
    );
    let wire = num(&report, "wire_bytes_sent") + num(&report, "wire_bytes_received");
    assert!(
        wire >= payload && wire <= payload + 32 * KIB as u64,
        "{wire} bytes on the wire for {payload} bytes of payload: {report}"
    );
}
