//! `apply --in-place` on regular files and on real loop devices, stream
//! apply onto a device, and `diff` reading block devices. A refused apply
//! must leave the target byte for byte as it was.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const EXIT_INTEGRITY: i32 = 3;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes OLD and NEW into `dir` and diffs them; returns the delta path.
fn make_delta(dir: &Path, old: &[u8], new: &[u8], extra: &[&str]) -> PathBuf {
    let old_path = common::write_file(dir, "delta-old.img", old);
    let new_path = common::write_file(dir, "delta-new.img", new);
    let delta = dir.join("d.delta");
    common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg("-q")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta)
            .args(extra),
    );
    delta
}

/// `diskdelta apply DELTA --in-place TARGET --json EXTRA...`
fn in_place(delta: &Path, target: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("apply")
        .arg(delta)
        .arg("--in-place")
        .arg(target)
        .arg("--json")
        .args(extra);
    cmd
}

/// Runs an in-place apply that must succeed; returns its JSON summary.
fn in_place_ok(delta: &Path, target: &Path, extra: &[&str]) -> Value {
    let out = common::run_ok(&mut in_place(delta, target, extra));
    let v = common::stdout_json(&out);
    assert_eq!(v["mode"], "in-place", "{v}");
    v
}

/// Runs an in-place apply that must be refused with `code`, and checks the
/// target was not touched.
fn in_place_refused(delta: &Path, target: &Path, extra: &[&str], code: i32, what: &str) -> String {
    let before = read(target);
    let out = common::run_fail(&mut in_place(delta, target, extra));
    let err = common::assert_error_line(&out, code, what);
    common::assert_same(&read(target), &before, &format!("{what}: target changed"));
    err
}

/// OLD blocks the delta samples, and its block size, read from the trailer
/// (`docs/formats/delta.md`).
fn sampled_blocks(delta: &[u8]) -> (u64, Vec<u64>) {
    let le32 = |at: usize| u32::from_le_bytes(delta[at..at + 4].try_into().expect("4 bytes"));
    let le64 = |at: usize| u64::from_le_bytes(delta[at..at + 8].try_into().expect("8 bytes"));
    assert_eq!(&delta[..8], b"DSKDELTA");
    let block_size = u64::from(le32(16));
    let mut at = 64;
    loop {
        let kind = delta[at];
        let stored = le32(at + 4) as usize;
        if kind == 255 {
            let trailer = at + 56;
            let count = le32(trailer + 168) as usize;
            let samples = (0..count).map(|i| le64(trailer + 176 + 40 * i)).collect();
            return (block_size, samples);
        }
        at += 56 + stored;
    }
}

/// Allocated bytes of a file.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// A 2 MiB OLD and a NEW with data changes and a zeroed run.
fn old_and_new(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let old = common::pseudo_random(2 * MIB, seed);
    let mut new = old.clone();
    new[100 * KIB..180 * KIB].copy_from_slice(&common::pseudo_random(80 * KIB, seed + 1));
    new[MIB..MIB + 256 * KIB].fill(0);
    new[2 * MIB - 5000..].copy_from_slice(&common::pseudo_random(5000, seed + 2));
    (old, new)
}

#[test]
fn in_place_file_same_size_grow_and_shrink() {
    let (old, new) = old_and_new(1);
    let mut grown = new.clone();
    grown.extend_from_slice(&common::pseudo_random(MIB / 2 + 7, 4));
    grown.extend_from_slice(&[0u8; 64 * KIB]);
    let shrunk = new[..MIB + 12_345].to_vec();
    for (name, image) in [("same size", &new), ("grown", &grown), ("shrunk", &shrunk)] {
        let dir = common::tempdir();
        let delta = make_delta(dir.path(), &old, image, &[]);
        let target = common::write_file(dir.path(), "target.img", &old);
        let v = in_place_ok(&delta, &target, &[]);
        common::assert_same(&read(&target), image, name);
        assert_eq!(v["new_size"].as_u64(), Some(image.len() as u64), "{v}");
        assert_eq!(v["check_base"], "sample", "{name}: the default check: {v}");
        assert_eq!(v["verified"], false, "{name}: no --verify: {v}");
    }
}

#[test]
fn in_place_zero_extents_become_holes() {
    let dir = common::tempdir();
    let old = common::pseudo_random(4 * MIB, 5);
    let mut new = old.clone();
    new[MIB..3 * MIB].fill(0);
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let target = common::write_file(dir.path(), "target.img", &old);
    let before = allocated(&target);
    assert!(
        before >= 4 * MIB as u64,
        "the target starts fully allocated"
    );
    in_place_ok(&delta, &target, &[]);
    common::assert_same(&read(&target), &new, "zeroed");
    let after = allocated(&target);
    assert!(
        after + (3 * MIB / 2) as u64 <= before,
        "2 MiB zeroed should free space: {before} bytes allocated before, {after} after"
    );
}

#[test]
fn in_place_verify() {
    let (old, new) = old_and_new(6);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let target = common::write_file(dir.path(), "target.img", &old);
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "--verify");
    let digest = v["new_digest"].as_str().expect("new_digest");
    let hashed = common::run_ok(common::diskdelta().arg("hash").arg(&target));
    assert!(
        String::from_utf8_lossy(&hashed.stdout).starts_with(digest),
        "the reported digest is the target's"
    );
    // Applying again is idempotent (samples come from blocks the delta
    // leaves unchanged, so an interrupted apply can be rerun)...
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "second apply");
    // ...but the full check knows the target is NEW, not OLD.
    in_place_refused(
        &delta,
        &target,
        &["--check-base", "full"],
        EXIT_INTEGRITY,
        "second apply, full check",
    );
}

#[test]
fn check_base_sample_refuses_a_wrong_base() {
    let (old, new) = old_and_new(7);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let (block, samples) = sampled_blocks(&read(&delta));
    assert!(!samples.is_empty(), "the delta carries samples");

    // One byte changed in a sampled block.
    let mut wrong = old.clone();
    let at = (samples[samples.len() / 2] * block + 17) as usize;
    wrong[at] ^= 0x20;
    let target = common::write_file(dir.path(), "wrong.img", &wrong);
    let err = in_place_refused(&delta, &target, &[], EXIT_INTEGRITY, "sampled byte");
    assert!(err.contains("does not match"), "{err:?}");
    in_place_refused(
        &delta,
        &target,
        &["--check-base", "sample"],
        EXIT_INTEGRITY,
        "sampled byte, explicit",
    );

    // Another image altogether.
    let other = common::write_file(dir.path(), "other.img", &common::pseudo_random(2 * MIB, 99));
    in_place_refused(&delta, &other, &[], EXIT_INTEGRITY, "other image");
    // A target of another size.
    let short = common::write_file(dir.path(), "short.img", &old[..MIB]);
    in_place_refused(&delta, &short, &[], EXIT_INTEGRITY, "shorter target");

    // The right base passes the same check.
    let right = common::write_file(dir.path(), "right.img", &old);
    let v = in_place_ok(&delta, &right, &["--check-base", "sample"]);
    assert_eq!(v["check_base"], "sample");
    common::assert_same(&read(&right), &new, "right base");
}

#[test]
fn check_base_full_finds_an_unsampled_difference() {
    let (old, new) = old_and_new(8);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let (block, samples) = sampled_blocks(&read(&delta));
    // A block NEW leaves unchanged (so a wrong byte there survives into the
    // result) and that is not sampled.
    let unchanged = |b: u64| {
        let r = (b * block) as usize..((b + 1) * block) as usize;
        old[r.clone()] == new[r]
    };
    let blocks = old.len() as u64 / block;
    let victim = (1..blocks)
        .rev()
        .find(|b| unchanged(*b) && !samples.contains(b))
        .expect("an unchanged, unsampled block");
    let mut wrong = old.clone();
    let at = (victim * block + 3) as usize;
    wrong[at] ^= 0x01;

    let target = common::write_file(dir.path(), "target.img", &wrong);
    let err = in_place_refused(
        &delta,
        &target,
        &["--check-base", "full"],
        EXIT_INTEGRITY,
        "full check, one unsampled byte",
    );
    assert!(err.contains("does not match"), "{err:?}");

    // The sample check cannot see that byte (which is why `full` exists);
    // `--verify` then reports that the result is not NEW.
    let out = common::run_fail(&mut in_place(
        &delta,
        &target,
        &["--check-base", "sample", "--verify"],
    ));
    let err = common::assert_error_line(&out, EXIT_INTEGRITY, "sample check then --verify");
    assert!(err.contains("NEW digest"), "{err:?}");
    let mut expected = new.clone();
    expected[at] ^= 0x01;
    common::assert_same(&read(&target), &expected, "sample check missed one byte");

    // `full` on the right base passes.
    let right = common::write_file(dir.path(), "right.img", &old);
    let v = in_place_ok(&delta, &right, &["--check-base", "full", "--verify"]);
    assert_eq!(v["check_base"], "full");
    assert_eq!(v["verified"], true);
    common::assert_same(&read(&right), &new, "full check, right base");
}

#[test]
fn corrupt_delta_leaves_the_target_unchanged() {
    let (old, new) = old_and_new(9);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &["--compress", "none"]);
    let good = read(&delta);
    let target = common::write_file(dir.path(), "target.img", &old);

    // A flipped byte late in the delta: inside the last data record (the
    // tail of NEW, 5000 bytes at the end), so earlier records were already
    // read when it is found.
    let (_, samples) = sampled_blocks(&good);
    let trailer_len = 56 + 176 + 40 * samples.len();
    let mut bad = good.clone();
    let pos = good.len() - trailer_len - 100;
    bad[pos] ^= 0x40;
    let bad_path = common::write_file(dir.path(), "bad.delta", &bad);
    let err = in_place_refused(&bad_path, &target, &[], EXIT_INTEGRITY, "flipped byte");
    assert!(err.contains("checksum"), "{err:?}");

    // Truncated: every record verified, but no trailer.
    let cut = common::write_file(dir.path(), "cut.delta", &good[..good.len() - trailer_len]);
    let err = in_place_refused(&cut, &target, &[], EXIT_INTEGRITY, "truncated");
    assert!(err.contains("truncated"), "{err:?}");
    // Even with no base check asked for.
    in_place_refused(
        &cut,
        &target,
        &["--check-base", "none"],
        EXIT_INTEGRITY,
        "truncated, --check-base none",
    );
    // Trailing garbage.
    let mut long = good.clone();
    long.extend_from_slice(b"tail");
    let long = common::write_file(dir.path(), "long.delta", &long);
    in_place_refused(&long, &target, &[], EXIT_INTEGRITY, "trailing data");

    // The same target still takes the good delta.
    in_place_ok(&delta, &target, &["--verify"]);
    common::assert_same(&read(&target), &new, "after the refusals");
}

#[test]
fn bad_check_base_arguments() {
    let (old, new) = old_and_new(10);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let target = common::write_file(dir.path(), "target.img", &old);
    let err = in_place_refused(&delta, &target, &["--check-base", "most"], 1, "bad mode");
    assert!(err.contains("--check-base"), "{err:?}");
    // --check-base belongs to in-place mode.
    let out_path = dir.path().join("out.img");
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&target)
            .arg("-o")
            .arg(&out_path)
            .args(["--check-base", "full"]),
    );
    common::assert_error_line(&out, 1, "--check-base in stream mode");
    assert!(!out_path.exists());
    // A directory is no target.
    let out = common::run_fail(&mut in_place(&delta, dir.path(), &[]));
    common::assert_error_line(&out, 1, "directory target");
}

#[test]
fn delta_from_stdin() {
    let (old, new) = old_and_new(11);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let bytes = read(&delta);

    // Redirected from the file: `apply - --in-place T < D`.
    let target = common::write_file(dir.path(), "t1.img", &old);
    let out = common::run_ok(
        common::diskdelta()
            .args(["apply", "-q", "-", "--in-place"])
            .arg(&target)
            .stdin(std::fs::File::open(&delta).expect("open delta")),
    );
    assert!(out.stdout.is_empty());
    common::assert_same(&read(&target), &new, "delta redirected from a file");

    // Through a pipe: the delta is spooled before anything is written.
    let target = common::write_file(dir.path(), "t2.img", &old);
    let mut child = common::diskdelta()
        .args(["apply", "-", "--verify", "--json", "--in-place"])
        .arg(&target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&bytes).expect("write delta to the pipe");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::stdout_json(&out)["verified"], true);
    common::assert_same(&read(&target), &new, "delta through a pipe");

    // A corrupt delta through a pipe leaves the target alone.
    let target = common::write_file(dir.path(), "t3.img", &old);
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut child = common::diskdelta()
        .args(["apply", "-", "--in-place"])
        .arg(&target)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&bad).expect("write delta to the pipe");
    }
    let out = child.wait_with_output().expect("wait");
    common::assert_error_line(&out, EXIT_INTEGRITY, "corrupt delta through a pipe");
    common::assert_same(&read(&target), &old, "corrupt piped delta: target changed");
}

#[test]
fn interrupted_apply_can_be_rerun() {
    let (old, new) = old_and_new(12);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    // As if an earlier run died after writing the first changed extent.
    let mut partial = old.clone();
    partial[100 * KIB..180 * KIB].copy_from_slice(&new[100 * KIB..180 * KIB]);
    let target = common::write_file(dir.path(), "target.img", &partial);
    // The sample check only looks at blocks the delta leaves unchanged.
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "rerun after an interruption");
}

#[test]
fn delta_made_from_pipes_applies_in_place() {
    let (old, mut new) = old_and_new(13);
    new.truncate(MIB + 777);
    let dir = common::tempdir();
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let delta = dir.path().join("d");
    // Neither size is known when the header is written.
    common::run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(r#"cat "$1" | "$0" diff -q - <(cat "$2") -o "$3""#)
            .arg(common::bin())
            .arg(&old_path)
            .arg(&new_path)
            .arg(&delta),
    );
    let target = common::write_file(dir.path(), "target.img", &old);
    let v = in_place_ok(&delta, &target, &["--check-base", "full", "--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "delta made from pipes");
}

#[test]
fn foreign_delta_in_place() {
    let (old, new) = old_and_new(14);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &["--format", "diff-dd-v2"]);
    let target = common::write_file(dir.path(), "target.img", &old);
    // No base hashes in diff-dd v2: a base check is impossible.
    for mode in ["sample", "full"] {
        let err = in_place_refused(&delta, &target, &["--check-base", mode], 1, mode);
        assert!(err.contains("--check-base"), "{err:?}");
    }
    // Without a check it applies, unverified.
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["format"], "diff-dd-v2", "{v}");
    assert_eq!(v["check_base"], "none", "{v}");
    assert_eq!(v["verified"], false, "nothing to verify against: {v}");
    common::assert_same(&read(&target), &new, "diff-dd v2 in place");
}

// ---------------------------------------------------------------------------
// Real loop devices.

#[test]
fn loop_device_in_place() {
    let (old, new) = old_and_new(20);
    let Some(dev) = LoopDevice::attach("loop_device_in_place", &old, old.len() as u64) else {
        return;
    };
    common::assert_same(&dev.read_all(), &old, "device holds OLD");
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let v = in_place_ok(&delta, dev.path(), &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["check_base"], "sample", "{v}");
    common::assert_same(&dev.read_all(), &new, "device holds NEW");
    // The device is NEW now: the full check refuses it, nothing written.
    let out = common::run_fail(&mut in_place(&delta, dev.path(), &["--check-base", "full"]));
    common::assert_error_line(&out, EXIT_INTEGRITY, "second apply on the device");
    common::assert_same(&dev.read_all(), &new, "device after a refused apply");
}

#[test]
fn loop_device_wrong_base_is_untouched() {
    let (old, new) = old_and_new(21);
    let other = common::pseudo_random(old.len(), 77);
    let Some(dev) = LoopDevice::attach(
        "loop_device_wrong_base_is_untouched",
        &other,
        old.len() as u64,
    ) else {
        return;
    };
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    for mode in ["sample", "full"] {
        let out = common::run_fail(&mut in_place(&delta, dev.path(), &["--check-base", mode]));
        common::assert_error_line(&out, EXIT_INTEGRITY, mode);
        common::assert_same(&dev.read_all(), &other, &format!("{mode}: device changed"));
    }
}

#[test]
fn loop_device_too_small_for_new() {
    let old = common::pseudo_random(MIB, 22);
    let mut new = old.clone();
    new[1000..2000].fill(9);
    new.extend_from_slice(&common::pseudo_random(MIB / 2, 23));
    let Some(dev) = LoopDevice::attach("loop_device_too_small_for_new", &old, old.len() as u64)
    else {
        return;
    };
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let out = common::run_fail(&mut in_place(&delta, dev.path(), &["--check-base", "full"]));
    let err = common::assert_error_line(&out, 1, "NEW larger than the device");
    assert!(err.contains(&dev.path().display().to_string()), "{err:?}");
    common::assert_same(&dev.read_all(), &old, "in place: device changed");

    // Stream mode onto the device: refused before writing too.
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&old_path)
            .arg("-o")
            .arg(dev.path()),
    );
    common::assert_error_line(&out, 1, "stream apply onto a small device");
    common::assert_same(&dev.read_all(), &old, "stream: device changed");
}

#[test]
fn loop_device_larger_than_the_image() {
    let (old, new) = old_and_new(24);
    let shrunk = new[..MIB + 4096 + 100].to_vec();
    let mut grown = new.clone();
    grown.extend_from_slice(&common::pseudo_random(MIB / 2, 25));
    grown.extend_from_slice(&[0u8; 100 * KIB]);
    // The device: OLD, then unrelated bytes.
    let mut content = old.clone();
    content.extend_from_slice(&common::pseudo_random(2 * MIB, 26));
    for (name, image, extra) in [
        ("shrunk", &shrunk, &["--verify"][..]),
        (
            "shrunk, full check",
            &shrunk,
            &["--check-base", "full", "--verify"][..],
        ),
        ("grown", &grown, &["--verify"][..]),
        ("same size", &new, &["--check-base", "full"][..]),
    ] {
        let Some(dev) = LoopDevice::attach(
            "loop_device_larger_than_the_image",
            &content,
            4 * MIB as u64,
        ) else {
            return;
        };
        let dir = common::tempdir();
        let delta = make_delta(dir.path(), &old, image, &[]);
        let v = in_place_ok(&delta, dev.path(), extra);
        assert_eq!(
            v["new_size"].as_u64(),
            Some(image.len() as u64),
            "{name}: {v}"
        );
        let got = dev.read_all();
        common::assert_same(&got[..image.len()], image, name);
    }
}

#[test]
fn loop_device_stream_apply_output() {
    let (old, mut new) = old_and_new(27);
    new.extend_from_slice(&[0u8; 300 * KIB]);
    new.extend_from_slice(&common::pseudo_random(1000, 28));
    // The device starts with garbage everywhere, so zeros must be written.
    let garbage = common::pseudo_random(3 * MIB, 29);
    let Some(dev) = LoopDevice::attach(
        "loop_device_stream_apply_output",
        &garbage,
        garbage.len() as u64,
    ) else {
        return;
    };
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let out = common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&old_path)
            .arg("-o")
            .arg(dev.path())
            .arg("--json"),
    );
    let v = common::stdout_json(&out);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["new_size"].as_u64(), Some(new.len() as u64));
    let got = dev.read_all();
    common::assert_same(&got[..new.len()], &new, "NEW written onto the device");
    assert!(dev.path().exists(), "the device node is still there");
}

#[test]
fn diff_reads_block_devices() {
    let (old, new) = old_and_new(30);
    let Some(old_dev) = LoopDevice::attach("diff_reads_block_devices", &old, old.len() as u64)
    else {
        return;
    };
    let Some(new_dev) = LoopDevice::attach("diff_reads_block_devices", &new, new.len() as u64)
    else {
        return;
    };
    let dir = common::tempdir();
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);

    // The device digest is the file digest.
    let hashed = common::run_ok(
        common::diskdelta()
            .args(["hash", "--json"])
            .arg(old_dev.path())
            .arg(&old_path),
    );
    let v = common::stdout_json(&hashed);
    assert_eq!(v[0]["digest"], v[1]["digest"], "{v}");
    assert_eq!(v[0]["size"].as_u64(), Some(old.len() as u64), "{v}");

    for (name, a, b) in [
        ("device -> device", old_dev.path(), new_dev.path()),
        ("device -> file", old_dev.path(), new_path.as_path()),
        ("file -> device", old_path.as_path(), new_dev.path()),
    ] {
        let delta = dir.path().join("d");
        common::run_ok(
            common::diskdelta()
                .arg("diff")
                .arg("-q")
                .arg(a)
                .arg(b)
                .arg("-o")
                .arg(&delta),
        );
        let out = dir.path().join("out.img");
        common::run_ok(
            common::diskdelta()
                .arg("apply")
                .arg("-q")
                .arg(&delta)
                .arg("--base")
                .arg(&old_path)
                .arg("-o")
                .arg(&out),
        );
        common::assert_same(&read(&out), &new, name);
        // With --direct as well (O_DIRECT on the devices).
        common::run_ok(
            common::diskdelta()
                .args(["diff", "-q", "--direct"])
                .arg(a)
                .arg(b)
                .arg("-o")
                .arg(&delta),
        );
        common::run_ok(
            common::diskdelta()
                .arg("apply")
                .arg("-q")
                .arg(&delta)
                .arg("--base")
                .arg(old_dev.path())
                .arg("-o")
                .arg(&out),
        );
        common::assert_same(&read(&out), &new, &format!("{name}, --direct, device base"));
    }
    // The inputs were only read.
    common::assert_same(&old_dev.read_all(), &old, "OLD device");
    common::assert_same(&new_dev.read_all(), &new, "NEW device");
}

/// Every even-numbered 512-byte block changed: the sampler must still find
/// samples among the odd ones, and the default check must refuse a wrong base.
#[test]
fn alternating_changes_still_leave_base_samples() {
    let dir = common::tempdir();
    let old = common::pseudo_random(128 * 1024, 21);
    let mut new = old.clone();
    for block in (0..256).step_by(2) {
        new[block * 512] ^= 0xFF;
    }
    let old_path = common::write_file(dir.path(), "old", &old);
    let new_path = common::write_file(dir.path(), "new", &new);
    let delta = dir.path().join("d");
    common::run_ok(
        common::diskdelta()
            .args(["diff", "-q", "-b", "512"])
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta),
    );
    let info = common::run_ok(common::diskdelta().args(["info", "--json"]).arg(&delta));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["base_samples"], 64);
    let wrong = common::pseudo_random(128 * 1024, 22);
    let target = common::write_file(dir.path(), "target", &wrong);
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--in-place")
            .arg(&target),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(std::fs::read(&target).expect("target"), wrong);
}

// ---------------------------------------------------------------------------
// Version 2: records compressed against OLD.

/// OLD random; in NEW every third 4 KiB block is OLD's rotated by one byte:
/// only OLD makes the changes compressible, so the delta is zstd-ref
/// records, and they copy from other positions of OLD (a half-written
/// record then no longer decodes: one byte changed in place would).
fn old_and_sparse_new(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let old = common::pseudo_random(4 * MIB + 5 * KIB, seed);
    let mut new = old.clone();
    for block in (0..3 * MIB / (4 * KIB)).step_by(3) {
        new[block * 4 * KIB..(block + 1) * 4 * KIB].rotate_left(1);
    }
    (old, new)
}

fn reference_records(delta: &Path) -> u64 {
    let out = common::run_ok(common::diskdelta().arg("info").arg(delta).arg("--json"));
    common::stdout_json(&out)["zstd_ref_extents"]
        .as_u64()
        .expect("zstd_ref_extents")
}

#[test]
fn a_write_cut_short_inside_a_reference_record_resumes_from_the_journal() {
    let (old, new) = old_and_sparse_new(30);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    assert!(
        reference_records(&delta) >= 2,
        "the delta has zstd-ref records"
    );
    assert!(std::fs::metadata(&delta).expect("stat").len() < 64 * KIB as u64);
    let target = common::write_file(dir.path(), "target.img", &old);
    let journal = dir.path().join(".target.img.diskdelta-apply");

    // A crash inside the first write of a batch: half of it reached the
    // target, the journal holds the batch.
    let out = in_place(&delta, &target, &[])
        .env("DISKDELTA_TESTONLY_CUT_IN_PLACE", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(99), "{out:?}");
    let cut = read(&target);
    assert!(cut != old && cut != new, "the target holds a cut write");
    assert!(journal.exists(), "the journal was written first");

    // Without the journal the cut record cannot be decoded: refused, named,
    // nothing written.
    let saved = read(&journal);
    std::fs::remove_file(&journal).expect("remove journal");
    let err = in_place_refused(&delta, &target, &[], EXIT_INTEGRITY, "cut, no journal");
    assert!(err.contains("delta record"), "{err}");
    common::assert_same(&read(&target), &cut, "refused rerun changed the target");

    // With it, the rerun completes, verified, and removes the journal.
    std::fs::write(&journal, saved).expect("restore journal");
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "rerun from the journal");
    assert!(!journal.exists(), "journal removed after the apply");

    // Applied again: the sampled blocks are unchanged ones, and every
    // zstd-ref record already holds its result.
    let v = in_place_ok(&delta, &target, &["--verify"]);
    assert_eq!(v["verified"], true, "{v}");
    common::assert_same(&read(&target), &new, "second apply of the same delta");
}

#[test]
fn a_reference_record_refuses_another_base_before_writing() {
    let (old, new) = old_and_sparse_new(31);
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    // The sampled blocks are right, a changed block's OLD is not.
    let mut other = old.clone();
    other[3 * 4 * KIB + 100] ^= 1;
    let target = common::write_file(dir.path(), "target.img", &other);
    let err = in_place_refused(&delta, &target, &[], EXIT_INTEGRITY, "other base");
    assert!(err.contains("hold neither OLD"), "{err}");
    common::assert_same(&read(&target), &other, "refused apply changed the target");
    // Stream apply names the record too and publishes nothing.
    let out_path = dir.path().join("out.img");
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&target)
            .arg("-o")
            .arg(&out_path),
    );
    let err = common::assert_error_line(&out, EXIT_INTEGRITY, "stream apply on another base");
    assert!(err.contains("does not decode against the base"), "{err}");
    assert!(!out_path.exists());
}

#[test]
fn loop_device_resumes_a_cut_reference_record_from_the_state_directory() {
    let (old, new) = old_and_sparse_new(32);
    let Some(dev) = LoopDevice::attach("loop_device_journal", &old, old.len() as u64) else {
        return;
    };
    let dir = common::tempdir();
    let delta = make_delta(dir.path(), &old, &new, &[]);
    let state = dir.path().join("state");
    let out = in_place(&delta, dev.path(), &[])
        .env("XDG_STATE_HOME", &state)
        .env("DISKDELTA_TESTONLY_CUT_IN_PLACE", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(99), "{out:?}");
    let journals = common::entries(&state.join("diskdelta"));
    assert_eq!(journals.len(), 1, "{journals:?}");
    let out =
        common::run_ok(in_place(&delta, dev.path(), &["--verify"]).env("XDG_STATE_HOME", &state));
    assert_eq!(common::stdout_json(&out)["verified"], true);
    common::assert_same(&dev.read_all(), &new, "device after the resumed apply");
    assert!(common::entries(&state.join("diskdelta")).is_empty());
}
