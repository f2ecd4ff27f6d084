//! Change tracking through the real binary and the real `thin_delta`:
//! thin-pool metadata built by `thin_restore` from mappings the test
//! chooses (`common::thinpool`), volume images consistent with them, and
//! `diff`/`backup` that must read only what changed, fall back loudly when
//! the chain is broken, and reproduce NEW byte for byte.
//!
//! LVM mode (`--lvm`) needs device-mapper, which the test machines lack:
//! its `lvs`/`dmsetup` argument building and output parsing are unit-tested
//! on captured outputs in `src/change/thin/tests.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;
use crate::common::thinpool::ThinPool;

const MIB: u64 = 1 << 20;

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// OLD is thin device 1, NEW (device 2) is its snapshot with about 1% of
/// the chunks rewritten, a few written where OLD had nothing, and a few
/// discarded.
fn pool(sectors: u64, blocks: u64) -> ThinPool {
    let mut p = ThinPool::new(sectors, blocks);
    for b in 0..blocks {
        if b % 10 < 7 {
            p.write(1, b);
        }
    }
    p.snapshot(1, 2);
    let step = (blocks / 12).max(1);
    for b in (3..blocks).step_by(step as usize) {
        p.write(2, b);
    }
    for b in (blocks / 3..blocks).step_by((blocks / 3) as usize) {
        let unmapped_in_old = (b + 8) - (b + 8) % 10 + 9;
        if unmapped_in_old < blocks {
            p.write(2, unmapped_in_old);
        }
    }
    for b in [0, blocks / 2, blocks - 10] {
        p.discard(2, b);
    }
    p
}

struct Fixture {
    dir: tempfile::TempDir,
    pool: ThinPool,
    old: PathBuf,
    new: PathBuf,
    meta: PathBuf,
}

fn fixture(sectors: u64, blocks: u64) -> Fixture {
    let dir = common::tempdir();
    let pool = pool(sectors, blocks);
    let old = common::write_file(dir.path(), "old.img", &pool.image(1));
    let new = common::write_file(dir.path(), "new.img", &pool.image(2));
    let meta = pool.write_metadata(dir.path());
    Fixture {
        dir,
        pool,
        old,
        new,
        meta,
    }
}

impl Fixture {
    /// A loop device holding the image at `image` (`None`: skip the test).
    fn loop_device(&self, test: &str, image: &Path) -> Option<LoopDevice> {
        let bytes = std::fs::read(image).expect("read image");
        LoopDevice::attach(test, &bytes, self.pool.size())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Bytes of thin chunks NEW holds data in that differ from OLD.
    fn changed_mapped_bytes(&self) -> u64 {
        let new_image = self.pool.image(2);
        let chunk = self.pool.chunk();
        self.pool
            .differing_blocks(1, 2)
            .iter()
            .filter(|&&b| {
                let at = (b * chunk) as usize;
                new_image[at..at + chunk as usize].iter().any(|&x| x != 0)
            })
            .count() as u64
            * chunk
    }

    /// Repository chunks of `size` bytes that some differing thin chunk
    /// touches.
    fn touched_repo_chunks(&self, size: u64) -> u64 {
        let chunk = self.pool.chunk();
        let mut touched: Vec<u64> = self
            .pool
            .differing_blocks(1, 2)
            .iter()
            .flat_map(|&b| (b * chunk / size)..((b + 1) * chunk).div_ceil(size))
            .collect();
        touched.dedup();
        touched.sort_unstable();
        touched.dedup();
        touched.len() as u64
    }

    fn thin_args(&self, ids: &str) -> Vec<String> {
        vec![
            "--thin-metadata".into(),
            self.meta.display().to_string(),
            "--thin-ids".into(),
            ids.into(),
        ]
    }
}

/// `diskdelta diff TRACKER... NEW -o OUT`.
fn tracked_diff(
    tracker: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
    new: &Path,
    out: &Path,
) -> std::process::Command {
    let mut cmd = common::diskdelta();
    cmd.arg("diff").args(tracker).arg(new).arg("-o").arg(out);
    cmd
}

/// `--changed-ranges LIST`.
fn ranges_args(list: &Path) -> Vec<String> {
    vec!["--changed-ranges".into(), list.display().to_string()]
}

fn init(repo: &Path) {
    common::run_ok(
        common::diskdelta()
            .arg("init")
            .arg("-r")
            .arg(repo)
            .arg("-q"),
    );
}

fn restore(repo: &Path, out: &Path) {
    common::run_ok(
        common::diskdelta()
            .args(["restore", "vol", "-q", "-r"])
            .arg(repo)
            .arg("-o")
            .arg(out),
    );
}

/// Restores the latest snapshot of `vol` to `name` in the fixture's
/// directory and checks it is NEW.
fn assert_restores_new(f: &Fixture, repo: &Path, name: &str) {
    let restored = f.path(name);
    restore(repo, &restored);
    assert_same_file(&restored, &f.new);
}

fn apply_in_place(delta: &Path, target: &Path) -> Output {
    common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(delta)
            .arg("--in-place")
            .arg(target),
    )
}

/// Applies `delta` in place onto pseudo-random bytes, which are not OLD:
/// the apply must fail before writing. Returns the untouched target.
fn refuses_a_wrong_base(f: &Fixture, delta: &Path, seed: u64) -> PathBuf {
    let wrong = common::write_file(
        f.dir.path(),
        "wrong.img",
        &common::pseudo_random(f.pool.size() as usize, seed),
    );
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(delta)
            .arg("--in-place")
            .arg(&wrong),
    );
    assert!(
        stderr(&out).contains("does not match the delta"),
        "{}",
        stderr(&out)
    );
    wrong
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

fn image_digest(path: &Path) -> String {
    let out = common::run_ok(common::diskdelta().arg("hash").arg(path).arg("--json"));
    json(&out)[0]["digest"]
        .as_str()
        .expect("hash --json has a digest")
        .to_string()
}

#[test]
fn diff_from_thin_metadata_reads_only_changed_chunks_and_applies() {
    let f = fixture(128, 1024);
    let delta = f.path("d.delta");
    let out = common::run_ok(tracked_diff(f.thin_args("1,2"), &f.new, &delta).arg("--json"));
    let v = json(&out);
    assert_eq!(v["change_tracked"], true);
    assert_eq!(v["old_digest"], Value::Null);
    let read = v["bytes_read"].as_u64().expect("bytes_read");
    let changed = f.changed_mapped_bytes();
    assert!(changed > 0);
    // Exactly the chunks NEW maps to new data; unmapped ones are not read.
    assert_eq!(read, changed, "bytes read vs changed mapped chunks");

    let target = f.path("target.img");
    std::fs::copy(&f.old, &target).expect("copy");
    let out = apply_in_place(&delta, &target);
    assert!(
        stderr(&out).contains("the base was not checked"),
        "{}",
        stderr(&out)
    );
    assert_same_file(&target, &f.new);

    let streamed = f.path("streamed.img");
    common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&f.old)
            .arg("-o")
            .arg(&streamed),
    );
    assert_same_file(&streamed, &f.new);

    // No base information: an explicit sample check cannot be honoured.
    std::fs::copy(&f.old, &target).expect("copy");
    let out = common::run_fail(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--in-place")
            .arg(&target)
            .arg("--check-base")
            .arg("sample"),
    );
    assert!(
        stderr(&out).contains("--check-base sample is impossible"),
        "{}",
        stderr(&out)
    );
    assert_same_file(&target, &f.old);
}

#[test]
fn base_sample_lets_an_in_place_apply_check_its_base() {
    let f = fixture(128, 512);
    let delta = f.path("d.delta");
    common::run_ok(
        common::diskdelta()
            .arg("diff")
            .args(f.thin_args("1,2"))
            .arg("--base-sample")
            .arg(&f.old)
            .arg(&f.new)
            .arg("-o")
            .arg(&delta),
    );
    let info = json(&common::run_ok(
        common::diskdelta().arg("info").arg(&delta).arg("--json"),
    ));
    assert_eq!(info["base_samples"], 64, "{info}");
    let target = f.path("target.img");
    std::fs::copy(&f.old, &target).expect("copy");
    apply_in_place(&delta, &target);
    assert_same_file(&target, &f.new);

    // A base that is not OLD is refused before anything is written.
    let wrong = refuses_a_wrong_base(&f, &delta, 99);
    assert_eq!(
        std::fs::read(&wrong).expect("read"),
        common::pseudo_random(f.pool.size() as usize, 99)
    );
}

#[test]
fn plain_and_verbose_thin_delta_xml_and_range_lists_all_work() {
    let f = fixture(128, 512);
    let run_delta = |args: &[String]| -> Vec<u8> {
        let d = f.path("x.delta");
        common::run_ok(&mut tracked_diff(args, &f.new, &d));
        std::fs::read(&d).expect("read delta")
    };
    let from_metadata = run_delta(&f.thin_args("1,2"));
    for verbose in [false, true] {
        let mut cmd = std::process::Command::new("thin_delta");
        if verbose {
            cmd.arg("--verbose");
        }
        let out = cmd
            .args(["--snap1", "1", "--snap2", "2"])
            .arg(&f.meta)
            .output()
            .expect("thin_delta");
        assert!(out.status.success());
        let xml = common::write_file(f.dir.path(), "delta.xml", &out.stdout);
        let via_file = run_delta(&["--changed-ranges".into(), xml.display().to_string()]);
        assert!(
            via_file == from_metadata,
            "thin_delta XML (verbose: {verbose}) gives another delta"
        );
    }
    // A plain list says nothing about unmapping: those chunks are read
    // and found zero; the result is the same NEW.
    let chunk = f.pool.chunk();
    let list: String = f
        .pool
        .differing_blocks(1, 2)
        .iter()
        .map(|b| format!("{} {}\n", b * chunk, chunk))
        .collect();
    let list = common::write_file(f.dir.path(), "ranges.txt", list.as_bytes());
    let d = f.path("list.delta");
    common::run_ok(&mut tracked_diff(ranges_args(&list), &f.new, &d));
    let target = f.path("t.img");
    std::fs::copy(&f.old, &target).expect("copy");
    apply_in_place(&d, &target);
    assert_same_file(&target, &f.new);
}

fn backup(repo: &Path, image: &Path, extra: &[String]) -> Output {
    common::run_ok(
        common::diskdelta()
            .arg("backup")
            .arg("-r")
            .arg(repo)
            .arg(image)
            .arg("--name")
            .arg("vol")
            .args(extra)
            .arg("--json"),
    )
}

fn summary(out: &Output) -> Value {
    json(out)[0]["summary"].clone()
}

fn thin_aware_backup_round_trip(sectors: u64, blocks: u64, repo_chunk: u64) {
    let f = fixture(sectors, blocks);
    let repo = f.path("repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size"])
            .arg(repo_chunk.to_string())
            .arg("-r")
            .arg(&repo),
    );
    // The first backup starts the chain: nothing to compare with, so a
    // full read, said loudly, that records thin id 1.
    let out = backup(&repo, &f.old, &f.thin_args("1,1"));
    assert!(
        stderr(&out).contains("WARNING: change tracking NOT used"),
        "{}",
        stderr(&out)
    );
    let first = summary(&out);
    assert_eq!(first["change_tracking"]["used"], false);
    assert!(first["change_tracking"]["fallback_reason"]
        .as_str()
        .is_some_and(|r| r.contains("no previous snapshot")));

    let out = backup(&repo, &f.new, &f.thin_args("1,2"));
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["change_tracking"]["used"], true, "{s}");
    let read = s["bytes_read"].as_u64().expect("bytes_read");
    let bound = f.touched_repo_chunks(repo_chunk) * repo_chunk;
    assert!(
        read > 0 && read <= bound,
        "read {read}, changed chunks hold {bound}"
    );
    assert!(
        bound < f.pool.size(),
        "the scenario must leave chunks unchanged"
    );
    if repo_chunk == MIB {
        // The digest assembled from reused ids is NEW's image digest.
        assert_eq!(s["digest"].as_str(), Some(image_digest(&f.new).as_str()));
    } else {
        // Other chunks are not digest segments: no digest is recorded.
        assert_eq!(s["digest"].as_str(), Some(""));
    }

    let restored = f.path("restored.img");
    let out = common::run_ok(
        common::diskdelta()
            .args(["restore", "vol", "--json", "-r"])
            .arg(&repo)
            .arg("-o")
            .arg(&restored),
    );
    // Whole-image check only where the snapshot could record a digest.
    assert_eq!(json(&out)["digest_checked"], repo_chunk == MIB);
    assert_same_file(&restored, &f.new);
    common::run_ok(
        common::diskdelta()
            .arg("verify")
            .arg("-r")
            .arg(&repo)
            .arg("--read-data")
            .arg("-q"),
    );
}

#[test]
fn thin_aware_backup_with_thin_chunks_smaller_than_repository_chunks() {
    // 64 KiB thin chunks, 1 MiB repository chunks; 64 MiB volume.
    thin_aware_backup_round_trip(128, 1024, MIB);
    // 64 KiB thin chunks, 256 KiB repository chunks.
    thin_aware_backup_round_trip(128, 512, 256 << 10);
}

#[test]
fn thin_aware_backup_with_thin_chunks_larger_than_repository_chunks() {
    // 4 MiB thin chunks, 1 MiB repository chunks; 96 MiB volume.
    thin_aware_backup_round_trip(8192, 24, MIB);
    // 1 MiB thin chunks, 64 KiB repository chunks.
    thin_aware_backup_round_trip(2048, 48, 64 << 10);
}

#[test]
fn a_broken_chain_falls_back_to_a_full_scan_loudly() {
    let f = fixture(128, 256);
    let repo = f.path("repo");
    init(&repo);
    backup(&repo, &f.old, &f.thin_args("1,1"));
    // The tracker compares from thin device 3; the previous snapshot was
    // read from device 1.
    let out = backup(&repo, &f.new, &f.thin_args("3,2"));
    let err = stderr(&out);
    assert!(
        err.contains("WARNING: change tracking NOT used for vol"),
        "{err}"
    );
    assert!(err.contains("thin device 1"), "{err}");
    let s = summary(&out);
    assert_eq!(s["change_tracking"]["used"], false);
    assert!(s["change_tracking"]["fallback_reason"]
        .as_str()
        .is_some_and(|r| r.contains("thin device 3")));
    // A full read: every mapped byte of NEW.
    assert!(
        s["bytes_read"].as_u64().expect("bytes_read") >= f.pool.size() / 2,
        "{s}"
    );
    let restored = f.path("r.img");
    restore(&repo, &restored);
    assert_same_file(&restored, &f.new);
    // A tracker that fails (thin device 99 does not exist) cannot be
    // trusted either: a full scan, said loudly, and a good snapshot.
    let out = backup(&repo, &f.new, &f.thin_args("2,99"));
    let err = stderr(&out);
    assert!(
        err.contains("WARNING: change tracking NOT used") && err.contains("change tracker failed"),
        "{err}"
    );
    assert_eq!(summary(&out)["change_tracking"]["used"], false);
    restore(&repo, &restored);
    assert_same_file(&restored, &f.new);
    // A backup with no previous thin id and plain files works too.
    let out = backup(
        &repo,
        &f.new,
        &["--changed-ranges".into(), "/dev/null".into()],
    );
    assert_eq!(summary(&out)["change_tracking"]["used"], true);
}

#[test]
fn verify_sample_catches_a_tracker_that_missed_a_change() {
    let f = fixture(128, 256);
    let repo = f.path("repo");
    init(&repo);
    backup(&repo, &f.old, &[]);
    // A list that names only the first changed chunk.
    let chunk = f.pool.chunk();
    let first = f.pool.differing_blocks(1, 2)[0];
    let list = common::write_file(
        f.dir.path(),
        "partial.txt",
        format!("{} {}\n", first * chunk, chunk).as_bytes(),
    );
    let out = common::run_fail(
        common::diskdelta()
            .arg("backup")
            .arg("-r")
            .arg(&repo)
            .arg(&f.new)
            .arg("--name")
            .arg("vol")
            .arg("--changed-ranges")
            .arg(&list)
            .arg("--verify-sample")
            .arg("1000"),
    );
    let err = stderr(&out);
    assert!(
        err.contains("change tracker reported them unchanged"),
        "{err}"
    );
    let snaps = json(&common::run_ok(
        common::diskdelta()
            .arg("snapshots")
            .arg("-r")
            .arg(&repo)
            .arg("--json"),
    ));
    assert_eq!(
        snaps.as_array().map(Vec::len),
        Some(1),
        "no snapshot may be added: {snaps}"
    );
}

#[test]
fn a_complete_range_list_backs_up_incrementally() {
    let f = fixture(128, 512);
    let repo = f.path("repo");
    init(&repo);
    backup(&repo, &f.old, &[]);
    let chunk = f.pool.chunk();
    let list: String = f
        .pool
        .differing_blocks(1, 2)
        .iter()
        .map(|b| format!("{} {}\n", b * chunk, chunk))
        .collect();
    let list = common::write_file(f.dir.path(), "ranges.txt", list.as_bytes());
    let out = backup(
        &repo,
        &f.new,
        &[
            "--changed-ranges".into(),
            list.display().to_string(),
            "--verify-sample".into(),
            "8".into(),
        ],
    );
    let s = summary(&out);
    assert_eq!(s["change_tracking"]["used"], true, "{s}");
    assert_eq!(s["change_tracking"]["chunks_verified"], 8, "{s}");
    assert!(
        s["bytes_read"].as_u64().expect("bytes_read") <= f.touched_repo_chunks(MIB) * MIB + 8 * MIB
    );
    assert_restores_new(&f, &repo, "r.img");
}

/// The kernel's own count of bytes read from NEW, through a loop device
/// with readahead off: nothing of ours does the counting.
#[test]
fn the_kernel_sees_only_changed_chunks_read() {
    let f = fixture(128, 1024);
    let Some(dev) = f.loop_device("the_kernel_sees_only_changed_chunks_read", &f.new) else {
        return;
    };
    let name = dev
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let sys = PathBuf::from("/sys/block").join(&name);
    std::fs::write(sys.join("queue/read_ahead_kb"), "0").expect("readahead off");
    // udev may probe a new device; let it finish before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sectors_read = || -> u64 {
        let stat = std::fs::read_to_string(sys.join("stat")).expect("stat");
        stat.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .expect("sectors read")
    };
    let before = sectors_read();
    let delta = f.path("d.delta");
    common::run_ok(&mut tracked_diff(f.thin_args("1,2"), dev.path(), &delta));
    let read = (sectors_read() - before) * 512;
    let changed = f.changed_mapped_bytes();
    assert!(
        read <= changed + f.pool.size() / 100,
        "the kernel read {read} bytes of NEW; changed chunks hold {changed}"
    );
    let target = f.path("t.img");
    std::fs::copy(&f.old, &target).expect("copy");
    apply_in_place(&delta, &target);
    assert_same_file(&target, &f.new);

    // The same for a thin-aware backup from the device: only the 1 MiB
    // repository chunks that changes touch are read.
    let repo = f.path("repo");
    init(&repo);
    backup(&repo, &f.old, &f.thin_args("1,1"));
    let before = sectors_read();
    let out = backup(&repo, dev.path(), &f.thin_args("1,2"));
    let read = (sectors_read() - before) * 512;
    assert_eq!(summary(&out)["change_tracking"]["used"], true);
    let bound = f.touched_repo_chunks(MIB) * MIB;
    assert!(
        read <= bound + f.pool.size() / 100,
        "the kernel read {read} bytes of NEW; the chunks changes touch hold {bound}"
    );
    assert_restores_new(&f, &repo, "restored.img");
}

/// lvpatch's job: zero records become discards on a device, so a thin
/// volume (here a loop device, which punches holes in its backing file)
/// frees the space instead of storing zeros.
#[test]
fn in_place_apply_onto_a_device_discards_unmapped_ranges() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture(128, 256);
    let Some(dev) = f.loop_device(
        "in_place_apply_onto_a_device_discards_unmapped_ranges",
        &f.old,
    ) else {
        return;
    };
    let delta = f.path("d.delta");
    common::run_ok(&mut tracked_diff(f.thin_args("1,2"), &f.new, &delta));
    let allocated_before = std::fs::metadata(dev.backing()).expect("stat").blocks();
    apply_in_place(&delta, dev.path());
    assert!(
        dev.read_all() == std::fs::read(&f.new).expect("read"),
        "device differs from NEW"
    );
    let allocated_after = std::fs::metadata(dev.backing()).expect("stat").blocks();
    // Three 64 KiB chunks were discarded; new data filled others that were
    // holes. Discards must have freed space: without them, every write
    // would only add.
    let written_new = (f.changed_mapped_bytes() / 512) as i64;
    let growth = allocated_after as i64 - allocated_before as i64;
    assert!(
        growth < written_new,
        "allocation grew by {growth} sectors for {written_new} sectors of new data"
    );
}

#[test]
fn tracker_failures_and_bad_lists_are_one_error_line() {
    let f = fixture(128, 64);
    let out_path = f.path("d.delta");
    let out = common::run_fail(&mut tracked_diff(f.thin_args("1,99"), &f.new, &out_path));
    let err = stderr(&out);
    assert!(
        err.trim().lines().count() == 1 && err.contains("thin_delta"),
        "{err}"
    );
    assert!(!out_path.exists());

    let bad = common::write_file(f.dir.path(), "bad.txt", b"0 65536\nsixty 4\n");
    let out = common::run_fail(&mut tracked_diff(ranges_args(&bad), &f.new, &out_path));
    let err = stderr(&out);
    assert!(
        err.contains("line 2") && err.contains("bad offset"),
        "{err}"
    );
    assert!(!out_path.exists());

    let out = common::run_fail(
        common::diskdelta()
            .arg("diff")
            .arg("--changed-ranges")
            .arg(&bad)
            .arg(&f.old)
            .arg(&f.new)
            .arg("-o")
            .arg(&out_path),
    );
    assert!(stderr(&out).contains("give only NEW"), "{}", stderr(&out));
    let out = common::run_fail(&mut tracked_diff(f.thin_args("x"), &f.new, &out_path));
    assert!(stderr(&out).contains("OLD_ID,NEW_ID"), "{}", stderr(&out));
}

/// The fourth change source for `diff`: a repository snapshot as OLD. NEW
/// is compared chunk by chunk with the snapshot's ids; the snapshot gives
/// the OLD digest and base samples, so every base check works.
#[test]
fn diff_from_a_snapshot_needs_no_old_image() {
    let f = fixture(128, 1024);
    let repo = f.path("repo");
    init(&repo);
    backup(&repo, &f.old, &[]);
    let delta = f.path("s.delta");
    let out = common::run_ok(
        common::diskdelta()
            .args(["diff", "--json", "--from-snapshot", "vol", "-r"])
            .arg(&repo)
            .arg(&f.new)
            .arg("-o")
            .arg(&delta),
    );
    let v = json(&out);
    assert_eq!(v["change_tracked"], false);
    assert_eq!(
        v["old_digest"].as_str(),
        Some(image_digest(&f.old).as_str())
    );
    assert_eq!(
        v["new_digest"].as_str(),
        Some(image_digest(&f.new).as_str())
    );
    // Only the chunks that differ are carried.
    assert!(v["changed_bytes"].as_u64().expect("changed") <= f.touched_repo_chunks(MIB) * MIB);
    let info = json(&common::run_ok(
        common::diskdelta().arg("info").arg(&delta).arg("--json"),
    ));
    assert!(
        info["base_samples"].as_u64().expect("samples") > 0,
        "{info}"
    );
    for check in ["sample", "full"] {
        let target = f.path("t.img");
        std::fs::copy(&f.old, &target).expect("copy");
        common::run_ok(
            common::diskdelta()
                .arg("apply")
                .arg(&delta)
                .arg("--in-place")
                .arg(&target)
                .args(["--check-base", check]),
        );
        assert_same_file(&target, &f.new);
    }
    refuses_a_wrong_base(&f, &delta, 7);

    // A snapshot without an image digest cannot be OLD.
    let small = f.path("small");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(&small),
    );
    backup(&small, &f.old, &f.thin_args("1,1"));
    backup(&small, &f.new, &f.thin_args("1,2"));
    let out = common::run_fail(
        common::diskdelta()
            .args(["diff", "--from-snapshot", "vol", "-r"])
            .arg(&small)
            .arg(&f.new)
            .arg("-o")
            .arg(f.path("x.delta")),
    );
    assert!(
        stderr(&out).contains("records no image digest"),
        "{}",
        stderr(&out)
    );
    assert!(!f.path("x.delta").exists());
}
