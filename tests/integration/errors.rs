//! Bad input through the real binary: every failure is one line
//! `diskdelta: error: ...` on stderr, a non-zero exit code, and nothing
//! left behind (no output file, no temporary file).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Exit code of integrity failures.
const EXIT_INTEGRITY: i32 = 3;

/// Asserts the error report: exactly one line, `diskdelta: error: ...`.
fn assert_one_line_error(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("diskdelta: error: "),
        "{what}: stderr must start with `diskdelta: error: `: {err:?}"
    );
    assert!(
        err.ends_with('\n') && err.matches('\n').count() == 1,
        "{what}: stderr must be exactly one line: {err:?}"
    );
    err
}

/// Runs a command that must fail with `code` and a one-line error.
fn fails_with(cmd: &mut Command, code: i32, what: &str) -> String {
    let out = common::run_fail(cmd);
    let err = assert_one_line_error(&out, what);
    assert_eq!(out.status.code(), Some(code), "{what}: exit code ({err:?})");
    err
}

fn assert_empty_dir(dir: &Path, what: &str) {
    let left = common::entries(dir);
    assert!(left.is_empty(), "{what}: files left behind: {left:?}");
}

fn diff_cmd(old: &Path, new: &Path, delta: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("diff").arg(old).arg(new).arg("-o").arg(delta);
    cmd
}

fn apply_cmd(delta: &Path, base: &Path, out: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("apply")
        .arg(delta)
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(out);
    cmd
}

fn info_cmd(delta: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("info").arg(delta);
    cmd
}

/// A small OLD/NEW pair and their delta, in `dir`.
struct Fixture {
    old: PathBuf,
    new: Vec<u8>,
    delta: Vec<u8>,
}

fn fixture(dir: &Path, size: usize, extra: &[&str]) -> Fixture {
    let old = common::pseudo_random(size, 101);
    let mut new = old.clone();
    // A data record, a zero record and a record at the tail.
    new[size / 8..size / 8 + 512].copy_from_slice(&common::pseudo_random(512, 102));
    new[size / 4..size / 4 + size / 8].fill(0);
    let tail = size - 100;
    new[tail..].copy_from_slice(&[0x42; 100]);
    let old_path = common::write_file(dir, "old.img", &old);
    let new_path = common::write_file(dir, "new.img", &new);
    let delta_path = dir.join("good.delta");
    common::run_ok(
        diff_cmd(&old_path, &new_path, &delta_path)
            .arg("-q")
            .args(extra),
    );
    let delta = std::fs::read(&delta_path).expect("read delta");
    std::fs::remove_file(&new_path).expect("remove NEW");
    std::fs::remove_file(&delta_path).expect("remove delta");
    Fixture {
        old: old_path,
        new,
        delta,
    }
}

/// Applies `delta` (bytes) and checks it is refused: non-zero exit,
/// one-line error, no output and no temporary file. Also `info`.
/// Returns the two exit codes.
fn refused(work: &Path, old: &Path, delta: &[u8], what: &str) -> (i32, i32) {
    let dir = tempfile::Builder::new()
        .prefix("case-")
        .tempdir_in(work)
        .expect("case directory");
    let delta_path = common::write_file(dir.path(), "bad.delta", delta);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("create output directory");
    let out = out_dir.join("new.img");
    let applied = common::run_fail(&mut apply_cmd(&delta_path, old, &out));
    assert_one_line_error(&applied, &format!("apply {what}"));
    assert!(!out.exists(), "apply {what}: output exists");
    assert_empty_dir(&out_dir, &format!("apply {what}"));
    let inspected = info_cmd(&delta_path)
        .arg("--json")
        .output()
        .expect("run info");
    if inspected.status.success() {
        // Records compressed against OLD can be checked only against OLD:
        // info, which does not read it, must then say it did not verify.
        let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).expect("info JSON");
        assert_eq!(v["verified"], false, "info {what}: {v}");
        assert!(v["zstd_ref_extents"].as_u64() > Some(0), "info {what}: {v}");
        return (applied.status.code().unwrap_or(-1), 0);
    }
    assert_one_line_error(&inspected, &format!("info {what}"));
    (
        applied.status.code().unwrap_or(-1),
        inspected.status.code().unwrap_or(-1),
    )
}

#[test]
fn missing_inputs_are_named() {
    let dir = common::tempdir();
    let img = common::write_file(dir.path(), "img", &common::pseudo_random(10_000, 1));
    let missing = dir.path().join("no-such-image");
    let delta = dir.path().join("d");
    let shown = missing.display().to_string();

    let err = fails_with(&mut diff_cmd(&missing, &img, &delta), 1, "missing OLD");
    assert!(err.contains(&shown), "{err:?}");
    let err = fails_with(&mut diff_cmd(&img, &missing, &delta), 1, "missing NEW");
    assert!(err.contains(&shown), "{err:?}");
    assert!(!delta.exists());

    common::run_ok(diff_cmd(&img, &img, &delta).arg("-q"));
    let out = dir.path().join("out");
    let err = fails_with(&mut apply_cmd(&missing, &img, &out), 1, "missing DELTA");
    assert!(err.contains(&shown), "{err:?}");
    let err = fails_with(&mut apply_cmd(&delta, &missing, &out), 1, "missing base");
    assert!(err.contains(&shown), "{err:?}");
    assert!(!out.exists());
    let err = fails_with(&mut info_cmd(&missing), 1, "info of a missing delta");
    assert!(err.contains(&shown), "{err:?}");
    let err = fails_with(
        common::diskdelta().arg("hash").arg(&missing),
        1,
        "hash of a missing file",
    );
    assert!(err.contains(&shown), "{err:?}");
    let err = fails_with(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--in-place")
            .arg(&missing),
        1,
        "missing in-place target",
    );
    assert!(err.contains(&shown), "{err:?}");
    assert!(!missing.exists(), "the in-place target must not be created");

    let nowhere = dir.path().join("no-such-dir").join("out.img");
    let err = fails_with(
        &mut apply_cmd(&delta, &img, &nowhere),
        1,
        "output directory missing",
    );
    assert!(err.contains(&nowhere.display().to_string()), "{err:?}");
    let err = fails_with(
        &mut diff_cmd(&img, &img, &nowhere),
        1,
        "delta directory missing",
    );
    assert!(err.contains(&nowhere.display().to_string()), "{err:?}");

    let names = common::entries(dir.path());
    assert_eq!(names, ["d", "img"], "nothing else was created");
}

#[test]
fn two_stdins_are_refused() {
    let dir = common::tempdir();
    let img = common::write_file(dir.path(), "img", &common::pseudo_random(1000, 2));
    let d = dir.path().join("d");
    let err = fails_with(
        common::diskdelta().args(["diff", "-", "-", "-o"]).arg(&d),
        1,
        "diff - -",
    );
    assert!(err.contains("stdin"), "{err:?}");
    assert!(!d.exists());
    common::run_ok(diff_cmd(&img, &img, &d).arg("-q"));
    let out = dir.path().join("out");
    let err = fails_with(
        common::diskdelta()
            .args(["apply", "-", "--base", "-", "-o"])
            .arg(&out),
        1,
        "apply - --base -",
    );
    assert!(err.contains("stdin"), "{err:?}");
    assert!(!out.exists());
}

#[test]
fn wrong_base_in_stream_mode() {
    let dir = common::tempdir();
    let f = fixture(dir.path(), 256 * KIB, &[]);
    let delta = common::write_file(dir.path(), "d", &f.delta);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("new.img");

    // Same size, one byte different (in a block the delta does not touch).
    let mut wrong = std::fs::read(&f.old).expect("read OLD");
    wrong[200 * KIB] ^= 1;
    let wrong_path = common::write_file(dir.path(), "wrong.img", &wrong);
    let err = fails_with(
        &mut apply_cmd(&delta, &wrong_path, &out),
        EXIT_INTEGRITY,
        "wrong base",
    );
    assert!(err.contains("does not match"), "{err:?}");
    assert!(err.contains(&wrong_path.display().to_string()), "{err:?}");
    assert!(!out.exists(), "no output from a wrong base");
    assert_empty_dir(&out_dir, "wrong base");

    // A base of another size.
    wrong.truncate(100 * KIB);
    let short = common::write_file(dir.path(), "short.img", &wrong);
    fails_with(
        &mut apply_cmd(&delta, &short, &out),
        EXIT_INTEGRITY,
        "short base",
    );
    assert_empty_dir(&out_dir, "short base");

    // A wrong base must not clobber an existing output either.
    std::fs::write(&out, b"precious").expect("write existing output");
    fails_with(
        &mut apply_cmd(&delta, &wrong_path, &out),
        EXIT_INTEGRITY,
        "wrong base over an existing output",
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"precious");
    assert_eq!(common::entries(&out_dir), ["new.img"]);

    // The right base works (the fixture is sound).
    std::fs::remove_file(&out).expect("rm");
    common::run_ok(apply_cmd(&delta, &f.old, &out).arg("-q"));
    assert!(std::fs::read(&out).expect("read") == f.new, "right base");
}

#[test]
fn truncated_deltas_are_refused() {
    let dir = common::tempdir();
    let f = fixture(dir.path(), 64 * KIB, &["--compress", "none"]);
    let len = f.delta.len();
    // Header, first record header and payload, later records, end record,
    // trailer, and its last byte.
    let mut cuts: Vec<usize> = vec![0, 1, 7, 8, 9, 10, 32, 56, 63, 64, 65, 100, 119, 120, 121];
    cuts.extend((121..len).step_by(97));
    cuts.extend([
        len - 300,
        len - 177,
        len - 176,
        len - 175,
        len - 40,
        len - 2,
        len - 1,
    ]);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        refused(
            dir.path(),
            &f.old,
            &f.delta[..cut],
            &format!("cut at {cut}/{len}"),
        );
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = common::tempdir();
    let f = fixture(dir.path(), 8 * KIB, &["--block-size", "512"]);
    let len = f.delta.len();
    // Every byte of a small delta (header, record headers, payloads,
    // trailer, samples), with a few different bit patterns.
    assert!(len < 4000, "the fixture delta should be small: {len} bytes");
    let positions: Vec<usize> = (0..len).collect();
    let workers = 4;
    std::thread::scope(|scope| {
        for w in 0..workers {
            let positions = &positions;
            let f = &f;
            let work = dir.path();
            scope.spawn(move || {
                for &pos in positions.iter().skip(w).step_by(workers) {
                    let mask = [0x01u8, 0x80, 0xff, 0x10][pos % 4];
                    let mut bad = f.delta.clone();
                    bad[pos] ^= mask;
                    let (apply_code, info_code) =
                        refused(work, &f.old, &bad, &format!("byte {pos} ^ {mask:#04x}"));
                    // Outside the magic, a flip is an integrity failure.
                    if pos >= 8 {
                        assert_eq!(apply_code, EXIT_INTEGRITY, "apply, byte {pos}");
                        // 0: info could not check a record compressed
                        // against OLD, and said so (see `refused`).
                        assert!(
                            info_code == EXIT_INTEGRITY || info_code == 0,
                            "info, byte {pos}: exit {info_code}"
                        );
                    }
                }
            });
        }
    });
}

#[test]
fn flips_spread_over_a_larger_delta() {
    let dir = common::tempdir();
    let size = 2 * MIB;
    let old = common::pseudo_random(size, 103);
    let mut new = old.clone();
    new[MIB / 4..MIB / 4 + 300 * KIB].copy_from_slice(&common::pseudo_random(300 * KIB, 104));
    for (i, b) in new[MIB..MIB + 200 * KIB].iter_mut().enumerate() {
        *b = (i / 3) as u8;
    }
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    common::run_ok(diff_cmd(&old_path, &new_path, &d).arg("-q"));
    let delta = std::fs::read(&d).expect("read");
    let len = delta.len();
    let positions: Vec<usize> = (0..200).map(|i| i * (len - 1) / 199).collect();
    std::thread::scope(|scope| {
        for w in 0..4 {
            let (positions, delta, old_path) = (&positions, &delta, &old_path);
            let work = dir.path();
            scope.spawn(move || {
                for &pos in positions.iter().skip(w).step_by(4) {
                    let mut bad = delta.clone();
                    bad[pos] ^= 0x04;
                    refused(work, old_path, &bad, &format!("byte {pos}/{len}"));
                }
            });
        }
    });
}

/// A 64 MiB pair with 2% of it changed in 64 KiB clusters, so that the
/// delta has many records and apply's pipeline is full when a bad record
/// is found.
fn large_pair(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let size = 64 * MIB;
    let old = common::pseudo_random(size, 105);
    let mut new = old.clone();
    for (i, at) in (0..size).step_by(3 * MIB + 4 * KIB).enumerate() {
        let end = (at + 64 * KIB).min(size);
        if i % 3 == 0 {
            new[at..end].fill(0);
        } else {
            new[at..end].copy_from_slice(&common::pseudo_random(end - at, 200 + i as u64));
        }
    }
    let old_path = common::write_file(dir, "old.img", &old);
    let new_path = common::write_file(dir, "new.img", &new);
    let d = dir.join("d");
    common::run_ok(diff_cmd(&old_path, &new_path, &d).arg("-q"));
    let delta = std::fs::read(&d).expect("read");
    std::fs::remove_file(&d).expect("remove delta");
    (old_path, new_path, delta)
}

/// A flipped byte anywhere in the delta of a large pair is refused at once
/// by stream and in-place apply: the pipeline releases the reader's
/// buffers before it joins the reader (a flip deep in the delta used to
/// leave the OLD reader waiting for a buffer forever).
#[test]
fn flips_in_a_large_delta_never_hang() {
    let dir = common::tempdir();
    let (old_path, _new, delta) = large_pair(dir.path());
    let old = std::fs::read(&old_path).expect("read OLD");
    let len = delta.len();
    let positions: Vec<usize> = (0..60).map(|i| 8 + i * (len - 9) / 59).collect();
    let target = dir.path().join("target.img");
    for &pos in &positions {
        let mut bad = delta.clone();
        bad[pos] ^= 0x20;
        let what = format!("byte {pos}/{len}");
        let bad_path = common::write_file(dir.path(), "bad.delta", &bad);
        let out = dir.path().join("out.img");
        let applied = common::run_within(&mut apply_cmd(&bad_path, &old_path, &out), 60);
        assert_eq!(applied.status.code(), Some(EXIT_INTEGRITY), "apply {what}");
        assert_one_line_error(&applied, &format!("apply {what}"));
        assert!(!out.exists(), "apply {what}: output exists");
        std::fs::copy(&old_path, &target).expect("copy target");
        let mut in_place = common::diskdelta();
        in_place
            .arg("apply")
            .arg(&bad_path)
            .arg("--in-place")
            .arg(&target);
        let applied = common::run_within(&mut in_place, 60);
        assert_eq!(
            applied.status.code(),
            Some(EXIT_INTEGRITY),
            "in place {what}"
        );
        assert_one_line_error(&applied, &format!("in place {what}"));
        assert!(
            std::fs::read(&target).expect("read target") == old,
            "in place {what}: the target changed"
        );
    }
}

/// A delta cut short anywhere is refused without a hang, and the stream
/// output never appears.
#[test]
fn truncations_of_a_large_delta_never_hang() {
    let dir = common::tempdir();
    let (old_path, _new, delta) = large_pair(dir.path());
    let len = delta.len();
    for i in 0..40 {
        let cut = 1 + i * (len - 2) / 39;
        let what = format!("cut at {cut}/{len}");
        let bad_path = common::write_file(dir.path(), "cut.delta", &delta[..cut]);
        let out = dir.path().join("out.img");
        let applied = common::run_within(&mut apply_cmd(&bad_path, &old_path, &out), 60);
        assert!(!applied.status.success(), "apply {what} succeeded");
        assert_one_line_error(&applied, &format!("apply {what}"));
        assert!(!out.exists(), "apply {what}: output exists");
    }
}

#[test]
fn unknown_version_is_named() {
    let dir = common::tempdir();
    let f = fixture(dir.path(), 64 * KIB, &[]);
    let mut bad = f.delta.clone();
    bad[8..10].copy_from_slice(&4u16.to_le_bytes());
    let d = common::write_file(dir.path(), "v4.delta", &bad);
    let out = dir.path().join("out.img");
    let err = common::run_fail(&mut apply_cmd(&d, &f.old, &out));
    let err = assert_one_line_error(&err, "apply, version 4");
    assert!(err.contains("version 4"), "{err:?}");
    assert!(!out.exists());
    let err = common::run_fail(&mut info_cmd(&d));
    let err = assert_one_line_error(&err, "info, version 4");
    assert!(err.contains("version 4"), "{err:?}");

    bad[8..10].copy_from_slice(&0x0100u16.to_le_bytes());
    let d = common::write_file(dir.path(), "v256.delta", &bad);
    let err = common::run_fail(&mut info_cmd(&d));
    let err = assert_one_line_error(&err, "info, version 256");
    assert!(err.contains("version 256"), "{err:?}");
}

#[test]
fn trailing_garbage_is_refused() {
    let dir = common::tempdir();
    let f = fixture(dir.path(), 64 * KIB, &[]);
    for extra in [&b"\0"[..], b"garbage", &f.delta[..]] {
        let mut bad = f.delta.clone();
        bad.extend_from_slice(extra);
        let (apply_code, info_code) = refused(
            dir.path(),
            &f.old,
            &bad,
            &format!("{} extra bytes", extra.len()),
        );
        assert_eq!(apply_code, EXIT_INTEGRITY);
        assert_eq!(info_code, EXIT_INTEGRITY);
    }
    let mut bad = f.delta.clone();
    bad.push(b'x');
    let d = common::write_file(dir.path(), "trailing.delta", &bad);
    let err = common::run_fail(&mut info_cmd(&d));
    let err = assert_one_line_error(&err, "trailing data");
    assert!(err.contains("after the delta trailer"), "{err:?}");
}

#[test]
fn garbage_is_not_a_delta() {
    let dir = common::tempdir();
    let old = common::write_file(dir.path(), "old.img", &common::pseudo_random(10_000, 3));
    for (name, data) in [
        ("text", b"not a delta\n".to_vec()),
        ("empty", Vec::new()),
        ("random", common::pseudo_random(5000, 4)),
        ("short-magic", b"DSKDEL".to_vec()),
    ] {
        let d = common::write_file(dir.path(), &format!("{name}.delta"), &data);
        let out = dir.path().join(format!("{name}.out"));
        let err = fails_with(&mut apply_cmd(&d, &old, &out), 1, name);
        assert!(
            err.contains("unknown delta format") || err.contains("not a diskdelta"),
            "{name}: {err:?}"
        );
        assert!(
            err.contains(&d.display().to_string()),
            "{name}: names the path: {err:?}"
        );
        assert!(!out.exists());
        let err = fails_with(&mut info_cmd(&d), 1, name);
        assert!(err.contains("unknown delta format"), "{name}: {err:?}");
    }
    // The magic then garbage: a corrupt header, not a foreign file.
    let mut data = b"DSKDELTA".to_vec();
    data.extend_from_slice(&common::pseudo_random(500, 5));
    let d = common::write_file(dir.path(), "magic.delta", &data);
    let err = fails_with(&mut info_cmd(&d), EXIT_INTEGRITY, "magic then garbage");
    assert!(err.contains("header") || err.contains("version"), "{err:?}");
}

#[test]
fn bad_block_size_and_compression() {
    let dir = common::tempdir();
    let img = common::write_file(dir.path(), "img", &common::pseudo_random(10_000, 6));
    let d = dir.path().join("d");
    for bad in ["3000", "256", "128M", "0", "4X", ""] {
        let err = fails_with(
            diff_cmd(&img, &img, &d).args(["--block-size", bad]),
            1,
            &format!("--block-size {bad}"),
        );
        assert!(
            err.contains("block-size") || err.contains("block size"),
            "{err:?}"
        );
        assert!(!d.exists());
    }
    for bad in ["zstd:0", "zstd:20", "lz4", "zstd:x"] {
        fails_with(
            diff_cmd(&img, &img, &d).args(["--compress", bad]),
            1,
            &format!("--compress {bad}"),
        );
        assert!(!d.exists());
    }
    fails_with(
        diff_cmd(&img, &img, &d).args(["--format", "xdelta"]),
        1,
        "--format xdelta",
    );
    assert_eq!(common::entries(dir.path()), ["img"]);
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
struct SmallTmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SmallTmpfs {
    /// `None` (after printing why) when mounting is impossible here.
    fn mount(size: &str) -> Option<SmallTmpfs> {
        let dir = common::tempdir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallTmpfs { dir, mounted: true }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED full-disk test: mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED full-disk test: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Busy: detach lazily so the directory can still go.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
        }
    }
}

#[test]
fn full_output_disk() {
    let Some(fs) = SmallTmpfs::mount("2M") else {
        return;
    };
    let dir = common::tempdir();
    // Incompressible data, larger than the file system.
    let old = common::pseudo_random(4 * MIB, 7);
    let new = common::pseudo_random(4 * MIB, 8);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let good = dir.path().join("good.delta");
    common::run_ok(diff_cmd(&old_path, &new_path, &good).arg("-q"));

    let err = fails_with(
        &mut diff_cmd(&old_path, &new_path, &fs.path().join("d.delta")),
        1,
        "diff into a full disk",
    );
    assert!(err.contains("No space left on device"), "{err:?}");
    assert_empty_dir(fs.path(), "diff into a full disk");

    let err = fails_with(
        &mut apply_cmd(&good, &old_path, &fs.path().join("new.img")),
        1,
        "apply into a full disk",
    );
    assert!(err.contains("No space left on device"), "{err:?}");
    assert!(err.contains("writ"), "names the failed write: {err:?}");
    assert_empty_dir(fs.path(), "apply into a full disk");

    // The file system is usable again: nothing leaked space.
    let small = common::pseudo_random(MIB, 9);
    let small_old = common::write_file(dir.path(), "small-old.img", &small[..MIB / 2]);
    let small_new = common::write_file(dir.path(), "small-new.img", &small);
    let d = fs.path().join("small.delta");
    common::run_ok(diff_cmd(&small_old, &small_new, &d).args(["-q", "--compress", "none"]));
    assert_eq!(common::entries(fs.path()), ["small.delta"]);
}

#[test]
fn diff_refuses_to_overwrite_its_input() {
    let dir = common::tempdir();
    let old = common::write_file(dir.path(), "old", &common::pseudo_random(50_000, 1));
    let new = common::write_file(dir.path(), "new", &common::pseudo_random(50_000, 2));
    for target in [&old, &new] {
        let out = common::run_fail(
            common::diskdelta()
                .arg("diff")
                .arg(&old)
                .arg(&new)
                .arg("-o")
                .arg(target),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(&old).expect("old"),
        common::pseudo_random(50_000, 1)
    );
    assert_eq!(
        std::fs::read(&new).expect("new"),
        common::pseudo_random(50_000, 2)
    );
}

/// SIGINT or SIGTERM in the middle of writing leaves neither the output nor
/// its temporary file behind, and exits 130. OLD comes from a FIFO that is
/// fed halfway and then held open, so the apply is certainly mid-stream.
#[test]
fn interrupted_apply_leaves_nothing_behind() {
    use std::io::Write;
    for signal in ["-INT", "-TERM"] {
        let dir = common::tempdir();
        let old = common::pseudo_random(8 << 20, 5);
        let mut new = old.clone();
        new[100..5000].fill(7);
        let old_path = common::write_file(dir.path(), "old", &old);
        let new_path = common::write_file(dir.path(), "new", &new);
        let delta = dir.path().join("d");
        common::run_ok(
            common::diskdelta()
                .args(["diff", "-q"])
                .arg(&old_path)
                .arg(&new_path)
                .arg("-o")
                .arg(&delta),
        );
        let fifo = dir.path().join("base.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).expect("mkdir");
        let child = common::diskdelta()
            .args(["apply", "-q"])
            .arg(&delta)
            .arg("--base")
            .arg(&fifo)
            .arg("-o")
            .arg(out_dir.join("new"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn apply");
        let mut feed = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open fifo");
        feed.write_all(&old[..4 << 20]).expect("feed half of OLD");
        common::wait_until("a temporary output", || {
            std::fs::read_dir(&out_dir).expect("list").next().is_some()
        });
        common::send_signal(child.id(), signal);
        let out = child.wait_with_output().expect("wait");
        drop(feed);
        assert_eq!(out.status.code(), Some(130), "{signal}");
        let left: Vec<_> = std::fs::read_dir(&out_dir).expect("list").collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
    }
}

/// NEW much shorter than OLD: apply stops producing early, and must still
/// hand the writer's buffers back to OLD's reader so that it can read (and
/// verify) the rest of OLD; it used to wait for them forever.
#[test]
fn a_new_much_shorter_than_old_applies_without_hanging() {
    let dir = common::tempdir();
    let (old_path, new_path, _) = large_pair(dir.path());
    let new = std::fs::read(&new_path).expect("read NEW");
    let short = common::write_file(dir.path(), "short.img", &new[..22 * MIB + 12345]);
    let d = dir.path().join("d");
    common::run_ok(diff_cmd(&old_path, &short, &d).arg("-q"));
    let out = dir.path().join("out.img");
    let result = common::run_within(apply_cmd(&d, &old_path, &out).arg("-q"), 60);
    assert!(result.status.success(), "{result:?}");
    assert!(std::fs::read(&out).expect("read") == new[..22 * MIB + 12345]);
}
