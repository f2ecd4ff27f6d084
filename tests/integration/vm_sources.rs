//! VM disks as sources, with the real tools only: exports served by
//! `qemu-nbd` and `nbdkit`, qcow2 images made by `qemu-img` and written by
//! `qemu-io`, persistent dirty bitmaps added with `qemu-img bitmap`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common;
use crate::common::nbd::{s, tool, NbdServer};

const MIB: usize = 1 << 20;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// A 24 MiB raw image: random data, a hole, a zero-filled (allocated)
/// stretch, more data, a tail hole.
fn raw_image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut data = vec![0u8; 24 * MIB];
    data[..5 * MIB + 4096].copy_from_slice(&common::pseudo_random(5 * MIB + 4096, seed));
    data[12 * MIB..15 * MIB].copy_from_slice(&common::pseudo_random(3 * MIB, seed + 1));
    std::fs::write(&path, &data).expect("write image");
    // Punch the holes back: the file is sparse where the data is zero,
    // except 9..10 MiB, written as zeros.
    tool("fallocate", &["--dig-holes", s(&path)]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0u8; MIB], 9 * MIB as u64)
        .expect("write zeros");
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = common::run_within(cmd, 120);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        common::stderr(&out)
    );
    out
}

fn run_failing(cmd: &mut Command) -> String {
    let out = common::run_within(cmd, 60);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    let err = common::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

fn hash(path: &str) -> String {
    let out = run(common::diskdelta().args(["hash", "--json", path]));
    json(&out.stdout)[0]["digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    run(common::diskdelta().args(["init", "-q", "-r", s(&repo)]));
    repo
}

fn backup(repo: &Path, source: &str, name: &str, extra: &[&str]) -> (Value, String) {
    let out = run(common::diskdelta()
        .args(["backup", "--json", "-r", s(repo), source, "--name", name])
        .args(extra));
    (
        json(&out.stdout)[0]["summary"].clone(),
        common::stderr(&out),
    )
}

fn restore(repo: &Path, name: &str, out: &Path, extra: &[&str]) -> Value {
    let o = run(common::diskdelta()
        .args(["restore", "--json", "-r", s(repo), name, "-o", s(out)])
        .args(extra));
    json(&o.stdout)
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

#[test]
fn nbd_exports_hash_like_the_raw_file() {
    let dir = common::tempdir();
    let img = raw_image(dir.path(), "a.raw", 1);
    let want = hash(s(&img));
    let q = NbdServer::qemu_nbd(&img, "raw", &[]);
    assert_eq!(hash(q.uri()), want, "qemu-nbd");
    let k = NbdServer::nbdkit(&["file", s(&img)]);
    assert_eq!(hash(k.uri()), want, "nbdkit file");
    // nbdkit memory over TCP: all zeros, as a zero file of the same size.
    let m = NbdServer::nbdkit_tcp(&["memory", "24M"]);
    let zeros = dir.path().join("zeros");
    std::fs::File::create(&zeros)
        .and_then(|f| f.set_len(24 * MIB as u64))
        .expect("zero file");
    assert_eq!(hash(m.uri()), hash(s(&zeros)), "nbdkit memory");
}

#[test]
fn backup_of_an_nbd_export_restores_byte_identical() {
    let dir = common::tempdir();
    let img = raw_image(dir.path(), "a.raw", 2);
    let repo = init_repo(dir.path());
    let k = NbdServer::nbdkit(&["file", s(&img)]);
    let (summary, _) = backup(&repo, k.uri(), "vm", &[]);
    assert_eq!(summary["size"].as_u64(), Some(24 * MIB as u64), "{summary}");
    let out = dir.path().join("restored.raw");
    restore(&repo, "vm", &out, &[]);
    assert_same(&out, &img);
    // The default name comes from the export (here: the socket's name).
    let q = NbdServer::qemu_nbd(&img, "raw", &[]);
    let out = run(common::diskdelta().args(["backup", "-q", "--json", "-r", s(&repo), q.uri()]));
    let name = json(&out.stdout)[0]["summary"]["name"]
        .as_str()
        .map(str::to_string);
    assert!(
        name.is_some_and(|n| n.ends_with("-exp")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn diff_reads_old_or_new_over_nbd() {
    let dir = common::tempdir();
    let old = raw_image(dir.path(), "old.raw", 3);
    let new = dir.path().join("new.raw");
    std::fs::copy(&old, &new).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&new)
            .expect("open");
        f.write_all_at(&common::pseudo_random(200_000, 9), 7 * MIB as u64)
            .expect("write");
    }
    let q_old = NbdServer::qemu_nbd(&old, "raw", &[]);
    let q_new = NbdServer::nbdkit(&["file", s(&new)]);
    for (o, n) in [(q_old.uri(), s(&new)), (s(&old), q_new.uri())] {
        let delta = dir.path().join("d.delta");
        run(common::diskdelta().args(["diff", o, n, "-o", s(&delta)]));
        let out = dir.path().join("applied.raw");
        run(common::diskdelta().args(["apply", s(&delta), "--base", s(&old), "-o", s(&out)]));
        assert_same(&out, &new);
        std::fs::remove_file(&out).expect("remove");
    }
}

#[test]
fn bad_nbd_sources_fail_in_one_line() {
    let dir = common::tempdir();
    let img = raw_image(dir.path(), "a.raw", 4);
    let missing = format!("nbd+unix:///x?socket={}", s(&dir.path().join("none.sock")));
    let err = run_failing(common::diskdelta().args(["hash", &missing]));
    assert!(err.contains("cannot connect"), "{err}");
    let err = run_failing(common::diskdelta().args(["hash", "nbds://127.0.0.1/x"]));
    assert!(err.contains("TLS"), "{err}");
    let err = run_failing(common::diskdelta().args(["hash", "nbd+unix:///x"]));
    assert!(err.contains("socket=PATH"), "{err}");
    let q = NbdServer::qemu_nbd(&img, "raw", &[]);
    let wrong = q.uri().replace("/exp?", "/nope?");
    let err = run_failing(common::diskdelta().args(["hash", &wrong]));
    assert!(err.contains("no export named \"nope\""), "{err}");
    let repo = init_repo(dir.path());
    run_failing(common::diskdelta().args(["backup", "-q", "-r", s(&repo), &wrong]));
    let out = run(common::diskdelta().args(["snapshots", "--json", "-r", s(&repo)]));
    assert_eq!(json(&out.stdout).as_array().map(Vec::len), Some(0));
}

/// A 32 MiB qcow2 written by qemu-io, and its raw conversion.
fn qcow2_image(dir: &Path, name: &str, writes: &[(u8, &str, &str)]) -> PathBuf {
    let img = dir.join(name);
    tool("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "32M"]);
    qemu_io(&img, writes);
    img
}

fn qemu_io(img: &Path, writes: &[(u8, &str, &str)]) {
    for (pattern, off, len) in writes {
        tool(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern:#x} {off} {len}"),
                s(img),
            ],
        );
    }
}

fn to_raw(img: &Path, raw: &Path) {
    tool("qemu-img", &["convert", "-O", "raw", s(img), s(raw)]);
}

#[test]
fn qcow2_files_are_read_through_a_private_qemu_nbd() {
    let dir = common::tempdir();
    let img = qcow2_image(
        dir.path(),
        "vm.qcow2",
        &[(0xab, "0", "1M"), (0x11, "5M", "64k"), (0x22, "31M", "1M")],
    );
    let raw = dir.path().join("vm.raw");
    to_raw(&img, &raw);
    assert_eq!(hash(s(&img)), hash(s(&raw)));
    // Any format qemu-img names: a vmdk of the same disk.
    let vmdk = dir.path().join("vm.vmdk");
    tool("qemu-img", &["convert", "-O", "vmdk", s(&img), s(&vmdk)]);
    assert_eq!(hash(s(&vmdk)), hash(s(&raw)));
    // diff reads a qcow2 NEW as its disk: the delta applies to the raw OLD.
    let old = raw_image(dir.path(), "old.raw", 7);
    let old = {
        let o = dir.path().join("old32.raw");
        let mut bytes = std::fs::read(&old).expect("read");
        bytes.resize(32 * MIB, 0);
        std::fs::write(&o, &bytes).expect("write");
        o
    };
    let delta = dir.path().join("d.delta");
    run(common::diskdelta().args(["diff", s(&old), s(&img), "-o", s(&delta)]));
    let applied = dir.path().join("applied.raw");
    run(common::diskdelta().args(["apply", s(&delta), "--base", s(&old), "-o", s(&applied)]));
    assert_same(&applied, &raw);
    // --source-format raw reads the qcow2 file's own bytes.
    let out = run(common::diskdelta().args(["hash", "--json", "--source-format", "raw", s(&img)]));
    assert_eq!(
        json(&out.stdout)[0]["size"].as_u64(),
        std::fs::metadata(&img).ok().map(|m| m.len())
    );
    let repo = init_repo(dir.path());
    let (summary, _) = backup(&repo, s(&img), "vm", &[]);
    assert_eq!(summary["size"].as_u64(), Some(32 * MIB as u64));
    let out = dir.path().join("restored.raw");
    restore(&repo, "vm", &out, &[]);
    assert_same(&out, &raw);
    // No server or socket directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("list tmp")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("diskdelta-nbd-")
        })
        .filter(|e| {
            // Only ours: another test may be running one right now.
            std::fs::read_dir(e.path()).map_or(0, |d| d.count()) == 0
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn qcow2_backing_chains_are_followed() {
    let dir = common::tempdir();
    let base = qcow2_image(
        dir.path(),
        "base.qcow2",
        &[(0x5a, "0", "4M"), (0x5b, "20M", "2M")],
    );
    let top = dir.path().join("top.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    qemu_io(&top, &[(0x77, "1M", "512k"), (0x78, "21M", "4k")]);
    let raw = dir.path().join("top.raw");
    to_raw(&top, &raw);
    let repo = init_repo(dir.path());
    backup(&repo, s(&top), "vm", &[]);
    let out = dir.path().join("restored.raw");
    restore(&repo, "vm", &out, &[]);
    assert_same(&out, &raw);
    let data = std::fs::read(&out).expect("read");
    assert_eq!(data[MIB], 0x77);
    assert_eq!(data[3 * MIB], 0x5a, "the backing file's data shows through");
}

#[test]
fn sync_copies_from_an_nbd_source() {
    let dir = common::tempdir();
    let img = raw_image(dir.path(), "a.raw", 5);
    let k = NbdServer::nbdkit(&["file", s(&img)]);
    let target = dir.path().join("copy.raw");
    run(common::diskdelta().args(["sync", "-q", k.uri(), s(&target)]));
    assert_same(&target, &img);
    let out = run(common::diskdelta().args(["sync", "--json", k.uri(), s(&target)]));
    let v = json(&out.stdout);
    assert_eq!(v["changed_bytes"].as_u64(), Some(0), "{v}");
}

/// The qemu-nbd children of process `pid`.
fn qemu_nbd_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if comm.trim() == "qemu-nbd" {
                out.push(c);
            }
        }
    }
    out
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn interrupting_stops_the_private_qemu_nbd() {
    let dir = common::tempdir();
    // The backing file is a FIFO: qemu-nbd blocks opening it, so the
    // backup is caught waiting for its server.
    let fifo = dir.path().join("base.raw");
    tool("mkfifo", &[s(&fifo)]);
    let top = dir.path().join("top.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-b",
            s(&fifo),
            "-F",
            "raw",
            s(&top),
            "32M",
        ],
    );
    let repo = init_repo(dir.path());
    let mut child = common::diskdelta()
        .args(["backup", "-q", "-r", s(&repo), s(&top)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn backup");
    let mut servers = Vec::new();
    common::wait_until("qemu-nbd to start", || {
        servers = qemu_nbd_children(child.id());
        !servers.is_empty()
    });
    common::send_signal(child.id(), "-INT");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed().as_secs() > 30 {
            let _ = child.kill();
            panic!("backup did not stop on SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(130), "{err}");
    common::wait_until("qemu-nbd to be stopped", || {
        servers.iter().all(|&p| gone(p))
    });
}

fn bitmap_backup(repo: &Path, source: &str, bitmap: &str) -> (Value, String) {
    backup(repo, source, "vm", &["--dirty-bitmap", bitmap])
}

#[test]
fn dirty_bitmap_backups_read_only_the_dirty_chunks() {
    let dir = common::tempdir();
    let img = qcow2_image(
        dir.path(),
        "vm.qcow2",
        &[(0xab, "0", "8M"), (0x5c, "16M", "4M")],
    );
    tool("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    let repo = init_repo(dir.path());
    // The chain starts with a full read, said loudly.
    let (first, err) = bitmap_backup(&repo, s(&img), "b0");
    assert!(
        err.contains("WARNING: change tracking NOT used") && err.contains("no previous snapshot"),
        "{err}"
    );
    assert_eq!(first["change_tracking"]["used"], false);
    // The guest writes: 4 repository chunks (1 MiB) are touched.
    qemu_io(
        &img,
        &[
            (0xcd, "2M", "64k"),
            (0x11, "20484k", "4k"),
            (0x22, "30M", "1536k"),
        ],
    );
    let (s2, err) = bitmap_backup(&repo, s(&img), "b0");
    assert!(!err.contains("WARNING"), "{err}");
    assert_eq!(s2["change_tracking"]["used"], true, "{s2}");
    assert_eq!(
        s2["change_tracking"]["chunks_read"].as_u64(),
        Some(4),
        "{s2}"
    );
    assert_eq!(s2["bytes_read"].as_u64(), Some(4 * MIB as u64), "{s2}");
    let raw = dir.path().join("vm.raw");
    to_raw(&img, &raw);
    let out = dir.path().join("restored.raw");
    restore(&repo, "vm", &out, &[]);
    assert_same(&out, &raw);
    assert_eq!(s2["digest"].as_str(), Some(hash(s(&raw)).as_str()));

    // The same bitmap over an NBD export served by qemu-nbd --bitmap.
    let q = NbdServer::qemu_nbd(&img, "qcow2", &["--bitmap=b0"]);
    // With --verify-sample: 2 reused chunks re-read and checked.
    let (s3, err) = backup(
        &repo,
        q.uri(),
        "vm",
        &["--dirty-bitmap", "b0", "--verify-sample", "2"],
    );
    assert!(!err.contains("WARNING"), "{err}");
    assert_eq!(s3["change_tracking"]["used"], true, "{s3}");
    assert_eq!(
        s3["change_tracking"]["chunks_verified"].as_u64(),
        Some(2),
        "{s3}"
    );
    assert_eq!(s3["bytes_read"].as_u64(), Some(6 * MIB as u64), "{s3}");
    // A bitmap the server does not offer: full read, loudly.
    let (s4, err) = bitmap_backup(&repo, q.uri(), "other");
    assert!(
        err.contains("does not offer the dirty bitmap \"other\""),
        "{err}"
    );
    assert_eq!(s4["change_tracking"]["used"], false);
    // Every allocated byte is read (holes are not).
    assert!(s4["bytes_read"].as_u64() >= Some(12 * MIB as u64), "{s4}");
}

#[test]
fn unusable_dirty_bitmaps_mean_a_loud_full_read() {
    let dir = common::tempdir();
    let img = qcow2_image(dir.path(), "vm.qcow2", &[(0xab, "0", "4M")]);
    tool("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    let repo = init_repo(dir.path());
    bitmap_backup(&repo, s(&img), "b0");
    qemu_io(&img, &[(0xcd, "1M", "4k")]);

    // Missing.
    let (v, err) = bitmap_backup(&repo, s(&img), "nope");
    assert!(
        err.contains("has no dirty bitmap \"nope\" (it has: b0)"),
        "{err}"
    );
    assert_eq!(v["change_tracking"]["used"], false);

    // In use: a writer that held the image was killed.
    {
        let socket = dir.path().join("rw.sock");
        let mut writer = Command::new("qemu-nbd")
            .args(["--format=qcow2", "--socket", s(&socket), s(&img)])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start qemu-nbd");
        common::wait_until("qemu-nbd to mark the bitmap in use", || {
            Command::new("qemu-img")
                .args(["info", "-U", "--output=json", s(&img)])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("in-use"))
        });
        writer.kill().expect("kill");
        writer.wait().expect("reap");
    }
    let (v, err) = bitmap_backup(&repo, s(&img), "b0");
    assert!(err.contains("is in-use"), "{err}");
    assert_eq!(v["change_tracking"]["used"], false);
    let raw = dir.path().join("vm.raw");
    to_raw(&img, &raw);
    let out = dir.path().join("restored.raw");
    restore(&repo, "vm", &out, &[]);
    assert_same(&out, &raw);

    // The size changed since the previous snapshot.
    tool("qemu-img", &["bitmap", "--remove", s(&img), "b0"]);
    tool("qemu-img", &["bitmap", "--add", s(&img), "b1"]);
    tool("qemu-img", &["resize", "-q", s(&img), "40M"]);
    let (v, err) = bitmap_backup(&repo, s(&img), "b1");
    assert!(
        err.contains("size changed from 33554432 to 41943040"),
        "{err}"
    );
    assert_eq!(v["change_tracking"]["used"], false);

    // A raw file has no bitmaps: an error, not a fallback.
    let err = run_failing(common::diskdelta().args([
        "backup",
        "-q",
        "-r",
        s(&repo),
        s(&raw),
        "--dirty-bitmap",
        "b0",
    ]));
    assert!(err.contains("no dirty bitmaps"), "{err}");
}

#[test]
fn restore_to_qcow2_is_verified_and_atomic() {
    let dir = common::tempdir();
    let img = qcow2_image(
        dir.path(),
        "vm.qcow2",
        &[(0xab, "0", "3M"), (0x12, "17M", "100k")],
    );
    let raw = dir.path().join("vm.raw");
    to_raw(&img, &raw);
    let repo = init_repo(dir.path());
    backup(&repo, s(&img), "vm", &[]);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("restored.qcow2");
    let v = restore(&repo, "vm", &out, &["--format", "qcow2"]);
    assert_eq!(v["digest_checked"], true, "{v}");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", s(&out)])
        .output()
        .expect("qemu-img info");
    assert_eq!(json(&info.stdout)["format"], "qcow2");
    let back = dir.path().join("back.raw");
    to_raw(&out, &back);
    assert_same(&back, &raw);
    assert_eq!(common::entries(&outdir), vec!["restored.qcow2".to_string()]);

    // Without qemu-img: one line, and nothing at (or next to) the output.
    let bin = tools_without(dir.path(), &["qemu-nbd"]);
    let out2 = outdir.join("second.qcow2");
    let err = run_failing(common::diskdelta().env("PATH", &bin).args([
        "restore",
        "-q",
        "-r",
        s(&repo),
        "vm",
        "-o",
        s(&out2),
        "--format",
        "qcow2",
    ]));
    assert!(
        err.contains("qemu-img not found: install qemu-utils"),
        "{err}"
    );
    assert_eq!(common::entries(&outdir), vec!["restored.qcow2".to_string()]);
}

/// A directory for PATH holding the qemu tools except `missing`.
fn tools_without(dir: &Path, keep: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for tool in keep {
        let real = which(tool);
        let _ = std::os::unix::fs::symlink(real, bin.join(tool));
    }
    bin
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not installed"))
}

#[test]
fn a_missing_qemu_nbd_is_one_clear_line() {
    let dir = common::tempdir();
    let img = qcow2_image(dir.path(), "vm.qcow2", &[(0xab, "0", "1M")]);
    let repo = init_repo(dir.path());
    let bin = tools_without(dir.path(), &["qemu-img"]);
    for args in [
        vec!["hash", s(&img)],
        vec!["backup", "-q", "-r", s(&repo), s(&img)],
    ] {
        let err = run_failing(common::diskdelta().env("PATH", &bin).args(&args));
        assert!(
            err.contains("qemu-nbd not found: install qemu-utils"),
            "{err}"
        );
    }
    let out = run(common::diskdelta().args(["snapshots", "--json", "-r", s(&repo)]));
    assert_eq!(json(&out.stdout).as_array().map(Vec::len), Some(0));
}

#[test]
fn a_dropped_connection_fails_the_backup_and_stores_no_snapshot() {
    let dir = common::tempdir();
    let img = raw_image(dir.path(), "a.raw", 6);
    let repo = init_repo(dir.path());
    // Every read takes 100 ms: the backup is still reading when the
    // server goes away.
    let mut k = NbdServer::nbdkit(&["--filter=delay", "file", s(&img), "rdelay=100ms"]);
    let mut child = common::diskdelta()
        .args(["backup", "-q", "-r", s(&repo), k.uri(), "--name", "vm"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn backup");
    std::thread::sleep(std::time::Duration::from_millis(400));
    k.kill();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("backup hung after its server went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("NBD connection") && err.contains("lost"),
        "{err}"
    );
    let out = run(common::diskdelta().args(["snapshots", "--json", "-r", s(&repo)]));
    assert_eq!(json(&out.stdout).as_array().map(Vec::len), Some(0));
    run(common::diskdelta().args(["verify", "-q", "-r", s(&repo)]));
}
