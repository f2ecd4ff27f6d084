//! Copy records (delta format version 3): NEW blocks that OLD holds at
//! another offset, as a file system leaves them when it rewrites a file
//! elsewhere. Made by `diff`, applied in stream and in place (where an
//! earlier record may overwrite a copy's source), resumed after a cut,
//! applied as a series, refused by `merge`, and checked against damage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const EXIT_INTEGRITY: i32 = 3;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// An 8 MiB OLD of incompressible bytes, and a NEW where a file system
/// moved data: OLD's 1 MiB..1.25 MiB now sits at 6 MiB (its old place
/// freed and trimmed, so the copy reads bytes an earlier record zeroes),
/// OLD's 7 MiB..7 MiB+64 KiB sits at 512 KiB (a forward source), and
/// 7 MiB..7 MiB+64 KiB got new bytes.
fn moved(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let old = common::pseudo_random(8 * MIB, seed);
    let mut new = old.clone();
    new[6 * MIB..6 * MIB + 256 * KIB].copy_from_slice(&old[MIB..MIB + 256 * KIB]);
    new[MIB..MIB + 256 * KIB].fill(0);
    new[512 * KIB..576 * KIB].copy_from_slice(&old[7 * MIB..7 * MIB + 64 * KIB]);
    new[7 * MIB..7 * MIB + 64 * KIB].copy_from_slice(&common::pseudo_random(64 * KIB, seed + 1));
    (old, new)
}

fn diff(old: &Path, new: &Path, delta: &Path, extra: &[&str]) -> Value {
    common::stdout_json(&common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(old)
            .arg(new)
            .arg("-o")
            .arg(delta)
            .arg("--json")
            .args(extra),
    ))
}

fn info(delta: &Path) -> Value {
    common::stdout_json(&common::run_ok(
        common::diskdelta().arg("info").arg(delta).arg("--json"),
    ))
}

fn apply_stream(base: &Path, deltas: &[&Path], out: &Path) -> Output {
    common::diskdelta()
        .arg("apply")
        .args(deltas)
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run apply")
}

fn apply_in_place(target: &Path, deltas: &[&Path]) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("apply").args(deltas).arg("--in-place").arg(target);
    cmd
}

struct Case {
    dir: tempfile::TempDir,
    old: Vec<u8>,
    new: Vec<u8>,
    old_path: PathBuf,
    delta: PathBuf,
}

fn case(seed: u64) -> Case {
    let (old, new) = moved(seed);
    let dir = common::tempdir();
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let delta = dir.path().join("d.delta");
    let made = diff(&old_path, &new_path, &delta, &[]);
    assert_eq!(made["copied_bytes"], (320 * KIB) as u64, "{made}");
    Case {
        dir,
        old,
        new,
        old_path,
        delta,
    }
}

#[test]
fn moved_blocks_become_copy_records_and_apply_in_both_modes() {
    let c = case(40);
    let described = info(&c.delta);
    assert_eq!(described["version"], 3, "{described}");
    assert!(described["copy_extents"].as_u64() >= Some(2), "{described}");
    assert_eq!(described["copied_bytes"], (320 * KIB) as u64);
    // The moved 320 KiB of incompressible bytes cost a few records; the
    // 64 KiB of new bytes are the bulk of the delta.
    let size = std::fs::metadata(&c.delta).expect("stat").len();
    assert!(
        size < (64 + 16) as u64 * KIB as u64,
        "delta of {size} bytes"
    );

    let out = c.dir.path().join("out.img");
    let done = apply_stream(&c.old_path, &[&c.delta], &out);
    assert!(done.status.success(), "{done:?}");
    common::assert_same(&read(&out), &c.new, "stream apply");

    // In place, the copy to 6 MiB reads bytes the zero record at 1 MiB
    // overwrites first: its source is read before any write.
    let target = common::write_file(c.dir.path(), "target.img", &c.old);
    common::run_ok(apply_in_place(&target, &[&c.delta]).arg("--verify"));
    common::assert_same(&read(&target), &c.new, "in-place apply");
    let leftovers: Vec<_> = std::fs::read_dir(c.dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("diskdelta-apply"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    // Version 2 on request: no copies, a larger delta, same result.
    let v2 = c.dir.path().join("d2.delta");
    let made = diff(
        &c.old_path,
        &c.dir.path().join("new.img"),
        &v2,
        &["--format", "diskdelta-v2"],
    );
    assert_eq!(made["format"], "diskdelta-v2");
    assert_eq!(made["copy_records"], 0);
    assert_eq!(info(&v2)["version"], 2);
    assert!(std::fs::metadata(&v2).expect("stat").len() > size + 256 * KIB as u64);
    let out2 = c.dir.path().join("out2.img");
    assert!(apply_stream(&c.old_path, &[&v2], &out2).status.success());
    common::assert_same(&read(&out2), &c.new, "version 2 apply");
}

#[test]
fn a_cut_in_place_apply_resumes_from_the_copy_spill() {
    let c = case(41);
    let target = common::write_file(c.dir.path(), "target.img", &c.old);
    let journal = c.dir.path().join(".target.img.diskdelta-apply");
    let spill = c.dir.path().join(".target.img.diskdelta-apply.copies");
    let out = apply_in_place(&target, &[&c.delta])
        .env("DISKDELTA_TESTONLY_CUT_IN_PLACE", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(99), "{out:?}");
    assert!(
        spill.exists(),
        "the copy sources were spilled before writing"
    );
    let cut = read(&target);
    assert_eq!(&cut[MIB..MIB + 256 * KIB], &c.new[MIB..MIB + 256 * KIB]);

    // Without the spill and the journal the moved bytes are gone from the
    // target: refused before any write, naming the record.
    let saved = (read(&journal), read(&spill));
    std::fs::remove_file(&journal).expect("remove journal");
    std::fs::remove_file(&spill).expect("remove spill");
    let out = common::run_fail(&mut apply_in_place(&target, &[&c.delta]));
    let err = common::assert_error_line(&out, EXIT_INTEGRITY, "cut, no spill");
    assert!(err.contains("copies"), "{err}");
    common::assert_same(&read(&target), &cut, "refused rerun changed the target");

    // With them, the rerun completes and cleans up.
    std::fs::write(&journal, saved.0).expect("restore journal");
    std::fs::write(&spill, saved.1).expect("restore spill");
    common::run_ok(apply_in_place(&target, &[&c.delta]).arg("--verify"));
    common::assert_same(&read(&target), &c.new, "rerun from the spill");
    assert!(
        !spill.exists() && !journal.exists(),
        "spill and journal removed"
    );

    // A damaged spill is not trusted: a fresh copy of OLD applies from the
    // target's own bytes, as if there were none.
    let target2 = common::write_file(c.dir.path(), "target2.img", &c.old);
    let spill2 = c.dir.path().join(".target2.img.diskdelta-apply.copies");
    let mut junk = read(&c.delta);
    junk.truncate(1000);
    std::fs::write(&spill2, junk).expect("junk spill");
    common::run_ok(&mut apply_in_place(&target2, &[&c.delta]));
    common::assert_same(&read(&target2), &c.new, "apply past a junk spill");
}

#[test]
fn a_series_with_copies_applies_one_by_one_and_merge_refuses() {
    let c = case(42);
    // A second night: more bytes moved, from NEW to elsewhere.
    let mut newer = c.new.clone();
    newer[3 * MIB..3 * MIB + 128 * KIB].copy_from_slice(&c.new[5 * MIB..5 * MIB + 128 * KIB]);
    newer[5 * MIB..5 * MIB + 128 * KIB].fill(0);
    let new_path = c.dir.path().join("new.img");
    let newer_path = common::write_file(c.dir.path(), "newer.img", &newer);
    let d2 = c.dir.path().join("d2.delta");
    let made = diff(&new_path, &newer_path, &d2, &[]);
    assert_eq!(made["copied_bytes"], (128 * KIB) as u64, "{made}");

    let out = c.dir.path().join("series.img");
    let done = apply_stream(&c.old_path, &[&c.delta, &d2], &out);
    assert!(done.status.success(), "{done:?}");
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("one after another"),
        "{done:?}"
    );
    common::assert_same(&read(&out), &newer, "series, stream");
    let scratch: Vec<_> = std::fs::read_dir(c.dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("diskdelta-series"))
        .collect();
    assert!(scratch.is_empty(), "intermediate images left behind");

    let target = common::write_file(c.dir.path(), "target.img", &c.old);
    common::run_ok(&mut apply_in_place(&target, &[&c.delta, &d2]));
    common::assert_same(&read(&target), &newer, "series, in place");

    let merged = c.dir.path().join("merged.delta");
    let out = common::run_fail(
        common::diskdelta()
            .arg("merge")
            .arg(&c.delta)
            .arg(&d2)
            .arg("-o")
            .arg(&merged),
    );
    let err = common::assert_error_line(&out, 1, "merge of deltas with copies");
    assert!(err.contains("copy records"), "{err}");
    assert!(!merged.exists());
}

#[test]
fn copies_need_old_as_a_file_and_a_damaged_copy_is_caught() {
    let c = case(43);
    // OLD from a pipe: refused with the reason, nothing published.
    let out_path = c.dir.path().join("out.img");
    let mut child = common::diskdelta()
        .arg("apply")
        .arg(&c.delta)
        .arg("--base")
        .arg("-")
        .arg("-o")
        .arg(&out_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        // The apply may refuse before reading all of OLD.
        let _ = stdin.write_all(&c.old);
    }
    let out = child.wait_with_output().expect("wait");
    let err = common::assert_error_line(&out, 1, "OLD from a pipe");
    assert!(err.contains("not a pipe"), "{err}");
    assert!(!out_path.exists());

    // A copy record pointed at other OLD bytes: its checksum fails.
    let mut bytes = read(&c.delta);
    let at = first_copy_record(&bytes);
    let source = u64::from_le_bytes(bytes[at + 56..at + 64].try_into().expect("8 bytes"));
    bytes[at + 56..at + 64].copy_from_slice(&(source + 4096).to_le_bytes());
    let bad = common::write_file(c.dir.path(), "bad.delta", &bytes);
    let out = apply_stream(&c.old_path, &[&bad], &out_path);
    let err = common::assert_error_line(&out, EXIT_INTEGRITY, "damaged copy, stream");
    assert!(err.contains("does not decode against the base"), "{err}");
    assert!(!out_path.exists());
    let target = common::write_file(c.dir.path(), "target.img", &c.old);
    let out = common::run_fail(&mut apply_in_place(&target, &[&bad]));
    common::assert_error_line(&out, EXIT_INTEGRITY, "damaged copy, in place");
    common::assert_same(&read(&target), &c.old, "refused apply changed the target");
}

/// Offset of the first copy record (kind 5) in a native delta.
fn first_copy_record(delta: &[u8]) -> usize {
    let mut at = 64;
    loop {
        let kind = delta[at];
        assert_ne!(kind, 255, "no copy record");
        if kind == 5 {
            return at;
        }
        let stored = u32::from_le_bytes(delta[at + 4..at + 8].try_into().expect("4 bytes"));
        at += 56 + stored as usize;
    }
}
