//! `diff`, `apply`, `info` and `hash` through the real binary: round trips
//! over the awkward sizes and shapes of images, every way of passing data
//! (files, stdin/stdout, process substitution, FIFOs), sparse output, the
//! JSON summaries and the diff-dd v2 output format.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares images without printing megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sizes {} and {})",
            got.len(),
            want.len()
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
}

fn json(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} is not an unsigned integer in {v}"))
}

/// `diskdelta diff OLD NEW -o DELTA EXTRA...`
fn diff(old: &Path, new: &Path, delta: &Path, extra: &[&str]) {
    common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(old)
            .arg(new)
            .arg("-o")
            .arg(delta)
            .args(extra),
    );
}

/// `diskdelta apply DELTA --base OLD -o OUT`, returning OUT's bytes.
fn apply(delta: &Path, base: &Path, out: &Path) -> Vec<u8> {
    common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(delta)
            .arg("--base")
            .arg(base)
            .arg("-o")
            .arg(out),
    );
    read(out)
}

/// `diskdelta info --json DELTA`
fn info(delta: &Path) -> Value {
    let out = common::run_ok(common::diskdelta().arg("info").arg("--json").arg(delta));
    json(&out.stdout, "info --json")
}

/// The digest `hash --json` reports for one path.
fn hash_digest(path: &Path) -> String {
    let out = common::run_ok(common::diskdelta().arg("hash").arg("--json").arg(path));
    let v = json(&out.stdout, "hash --json");
    let list = v.as_array().expect("hash --json prints an array");
    assert_eq!(list.len(), 1, "one entry per path: {v}");
    list[0]["digest"]
        .as_str()
        .expect("digest is a string")
        .to_string()
}

/// Diffs and applies through files; checks the result and what `info`
/// says about sizes. Returns `info --json` of the delta.
fn round_trip(old: &[u8], new: &[u8], extra: &[&str]) -> Value {
    let dir = common::tempdir();
    let old_path = common::write_file(dir.path(), "old.img", old);
    let new_path = common::write_file(dir.path(), "new.img", new);
    let delta = dir.path().join("d.delta");
    diff(&old_path, &new_path, &delta, extra);
    let got = apply(&delta, &old_path, &dir.path().join("out.img"));
    assert_same(&got, new, &format!("round trip {extra:?}"));
    let v = info(&delta);
    assert_eq!(u64_field(&v, "old_size"), old.len() as u64, "{v}");
    assert_eq!(u64_field(&v, "new_size"), new.len() as u64, "{v}");
    assert_eq!(
        u64_field(&v, "delta_bytes"),
        std::fs::metadata(&delta).expect("stat delta").len(),
        "{v}"
    );
    v
}

/// NEW = OLD with `len` bytes at `at` replaced by other pseudo-random bytes.
fn patched(old: &[u8], at: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    new[at..at + len].copy_from_slice(&common::pseudo_random(len, seed));
    new
}

#[test]
fn equal_images_give_an_empty_delta() {
    let img = common::pseudo_random(MIB + 3 * KIB, 1);
    let v = round_trip(&img, &img, &[]);
    assert_eq!(u64_field(&v, "extents"), 0, "{v}");
    assert_eq!(u64_field(&v, "changed_bytes"), 0, "{v}");
}

#[test]
fn empty_images() {
    let data = common::pseudo_random(10_000, 2);
    let v = round_trip(&[], &[], &[]);
    assert_eq!(u64_field(&v, "extents"), 0, "{v}");
    // From nothing to something and back.
    let v = round_trip(&[], &data, &[]);
    assert_eq!(u64_field(&v, "changed_bytes"), data.len() as u64, "{v}");
    let v = round_trip(&data, &[], &[]);
    assert_eq!(u64_field(&v, "changed_bytes"), 0, "{v}");
}

#[test]
fn one_byte_images() {
    round_trip(&[7], &[7], &[]);
    let v = round_trip(&[7], &[8], &[]);
    assert_eq!(u64_field(&v, "changed_bytes"), 1, "{v}");
    round_trip(&[], &[8], &[]);
    round_trip(&[7], &[], &[]);
    // A one-byte NEW that is zero, over a non-zero OLD.
    round_trip(&[7], &[0], &[]);
    round_trip(&[0], &[7], &[]);
}

#[test]
fn sizes_not_a_multiple_of_the_block_size() {
    for (len, seed) in [
        (4095usize, 3u64),
        (4097, 4),
        (3 * 4096 + 123, 5),
        (MIB + 1, 6),
    ] {
        let old = common::pseudo_random(len, seed);
        // Only the last (partial) block changes.
        let mut new = old.clone();
        let last = new.len() - 1;
        new[last] ^= 0x5a;
        let v = round_trip(&old, &new, &[]);
        let tail = len % 4096;
        let tail = if tail == 0 { 4096 } else { tail };
        assert_eq!(
            u64_field(&v, "changed_bytes"),
            tail as u64,
            "only the partial last block of a {len}-byte image changed: {v}"
        );
        // The first byte too.
        new[0] ^= 0x5a;
        round_trip(&old, &new, &[]);
    }
}

#[test]
fn new_grown() {
    let old = common::pseudo_random(MIB, 7);
    let mut new = patched(&old, 100_000, 5000, 8);
    new.extend_from_slice(&common::pseudo_random(MIB / 2 + 77, 9));
    round_trip(&old, &new, &[]);
    // Grown by zeros only.
    let mut zero_grown = old.clone();
    zero_grown.resize(old.len() + 300 * KIB + 5, 0);
    let v = round_trip(&old, &zero_grown, &[]);
    assert_eq!(u64_field(&v, "new_size"), zero_grown.len() as u64);
}

#[test]
fn new_shrunk() {
    let old = common::pseudo_random(MIB + 555, 10);
    let new = patched(&old[..MIB / 2 + 13], 4096, 10, 11);
    let v = round_trip(&old, &new, &[]);
    assert_eq!(u64_field(&v, "changed_bytes"), 4096, "{v}");
    // Shrunk without other changes: nothing to carry but the size.
    let v = round_trip(&old, &old[..300_000], &[]);
    assert_eq!(u64_field(&v, "changed_bytes"), 0, "{v}");
}

#[test]
fn zero_regions_become_data_and_data_becomes_zeros() {
    let mut old = common::pseudo_random(2 * MIB, 12);
    old[MIB..MIB + 256 * KIB].fill(0);
    let mut new = old.clone();
    // Zeros become data.
    new[MIB + 64 * KIB..MIB + 128 * KIB].copy_from_slice(&common::pseudo_random(64 * KIB, 13));
    // Data becomes zeros.
    new[128 * KIB..384 * KIB].fill(0);
    let v = round_trip(&old, &new, &[]);
    assert!(u64_field(&v, "zero_extents") >= 1, "zeroed data: {v}");
    assert_eq!(
        u64_field(&v, "changed_bytes"),
        (64 + 256) as u64 * KIB as u64,
        "{v}"
    );
    // Zero records carry no payload: stored is at most the data part.
    assert!(u64_field(&v, "stored_bytes") <= 64 * KIB as u64, "{v}");
}

#[test]
fn block_sizes() {
    let old = common::pseudo_random(MIB + 1000, 14);
    let mut new = old.clone();
    new[300_001] ^= 1;
    for (flag, block) in [("512", 512u64), ("4K", 4096), ("64K", 65536)] {
        let v = round_trip(&old, &new, &["--block-size", flag]);
        assert_eq!(u64_field(&v, "block_size"), block, "{v}");
        assert_eq!(
            u64_field(&v, "changed_bytes"),
            block,
            "one changed byte costs one {flag} block: {v}"
        );
    }
    // Changes spread over several blocks, and in the partial last block.
    let mut spread = patched(&old, 70_000, 200_000, 15);
    let last = spread.len() - 3;
    spread[last] ^= 0xff;
    for flag in ["512", "4K", "64K"] {
        round_trip(&old, &spread, &["--block-size", flag]);
    }
}

#[test]
fn compress_none_stores_raw_records() {
    // Compressible changes: a repeated pattern.
    let old = common::pseudo_random(MIB, 16);
    let mut new = old.clone();
    for (i, b) in new[64 * KIB..320 * KIB].iter_mut().enumerate() {
        *b = (i % 7) as u8 + 1;
    }
    let v = round_trip(&old, &new, &["--compress", "none"]);
    assert_eq!(u64_field(&v, "zstd_extents"), 0, "{v}");
    assert!(u64_field(&v, "raw_extents") >= 1, "{v}");
    assert_eq!(
        u64_field(&v, "stored_bytes"),
        u64_field(&v, "changed_bytes"),
        "{v}"
    );
    // The default compresses the same change.
    let v = round_trip(&old, &new, &[]);
    assert!(
        u64_field(&v, "zstd_extents") + u64_field(&v, "zstd_ref_extents") >= 1,
        "{v}"
    );
    assert!(
        u64_field(&v, "stored_bytes") < u64_field(&v, "changed_bytes") / 10,
        "{v}"
    );
    round_trip(&old, &new, &["--compress", "zstd:19"]);
}

/// Runs `script` with bash; `$0` is the binary, `$1`... are `args`.
fn bash(script: &str, args: &[&Path]) -> std::process::Output {
    common::run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg(common::bin())
            .args(args),
    )
}

#[test]
fn stdin_and_stdout() {
    let dir = common::tempdir();
    let old = common::pseudo_random(2 * MIB + 100, 17);
    let mut new = patched(&old, 500_000, 70_000, 18);
    new.extend_from_slice(&common::pseudo_random(5000, 19));
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    let out = dir.path().join("out.img");

    // NEW through a pipe, the delta to stdout redirected to a file.
    bash(
        r#"set -o pipefail; cat "$2" | "$0" diff -q "$1" - > "$3""#,
        &[&old_path, &new_path, &d],
    );
    assert_eq!(u64_field(&info(&d), "new_size"), new.len() as u64);
    // The delta through stdin, NEW to stdout.
    bash(
        r#"set -o pipefail; cat "$2" | "$0" apply -q - --base "$1" > "$3""#,
        &[&old_path, &d, &out],
    );
    assert_same(&read(&out), &new, "apply from a piped delta to stdout");
    // The delta redirected from a file, NEW to a pipe.
    let piped = bash(r#""$0" apply - --base "$1" < "$2" | cat"#, &[&old_path, &d]);
    assert_same(&piped.stdout, &new, "apply - < D | cat");

    // OLD through stdin, the delta to a pipe.
    let delta = bash(
        r#"cat "$1" | "$0" diff - "$2" | cat"#,
        &[&old_path, &new_path],
    );
    let d2 = common::write_file(dir.path(), "d2", &delta.stdout);
    let out2 = dir.path().join("out2.img");
    assert_same(&apply(&d2, &old_path, &out2), &new, "OLD from stdin");
    // OLD from a pipe in apply.
    let piped = bash(
        r#"cat "$1" | "$0" apply "$2" --base - | cat"#,
        &[&old_path, &d2],
    );
    assert_same(&piped.stdout, &new, "apply with a piped base");
}

#[test]
fn process_substitution() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB + 4321, 20);
    let new = patched(&old, 4000, 300_000, 21);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    bash(
        r#""$0" diff -q <(cat "$1") <(cat "$2") -o "$3""#,
        &[&old_path, &new_path, &d],
    );
    let v = info(&d);
    assert_eq!(u64_field(&v, "old_size"), old.len() as u64, "{v}");
    assert_eq!(u64_field(&v, "new_size"), new.len() as u64, "{v}");
    let out = dir.path().join("out.img");
    assert_same(&apply(&d, &old_path, &out), &new, "process substitution");
    // And in apply: both the delta and the base from process substitutions.
    let piped = bash(
        r#""$0" apply <(cat "$2") --base <(cat "$1") | cat"#,
        &[&old_path, &d],
    );
    assert_same(&piped.stdout, &new, "apply <(...) --base <(...)");
}

/// Writes `data` into the FIFO at `fifo` once `child` opened it for
/// reading; fails instead of hanging when the child exits first.
fn feed_fifo(fifo: &Path, data: &[u8], child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut file = loop {
        // O_NONBLOCK: opening for writing fails (ENXIO) until a reader exists.
        match File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if let Some(status) = child.try_wait().expect("poll child") {
                    panic!("the command exited ({status}) without opening the FIFO");
                }
                assert!(Instant::now() < deadline, "the FIFO was never opened");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("open FIFO {}: {e}", fifo.display()),
        }
    };
    // Back to blocking writes.
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fd is a valid open descriptor owned by `file`.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags >= 0, "F_GETFL failed");
        // SAFETY: as above; only the status flags change.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
        assert!(rc == 0, "F_SETFL failed");
    }
    file.write_all(data).expect("write FIFO");
}

fn mkfifo(path: &Path) {
    common::run_ok(Command::new("mkfifo").arg(path));
}

#[test]
fn fifo_inputs() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB + 999, 22);
    let mut new = patched(&old, 123_456, 10_000, 23);
    new.truncate(MIB - 17);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let fifo = dir.path().join("new.fifo");
    mkfifo(&fifo);
    let d = dir.path().join("d");
    let mut child = common::diskdelta()
        .arg("diff")
        .arg("-q")
        .arg(&old_path)
        .arg(&fifo)
        .arg("-o")
        .arg(&d)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn diff");
    feed_fifo(&fifo, &new, &mut child);
    let out = child.wait_with_output().expect("wait for diff");
    assert!(
        out.status.success(),
        "diff from a FIFO failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(u64_field(&info(&d), "new_size"), new.len() as u64);
    let restored = dir.path().join("out.img");
    assert_same(&apply(&d, &old_path, &restored), &new, "NEW from a FIFO");

    // The delta from a FIFO in apply.
    let dfifo = dir.path().join("d.fifo");
    mkfifo(&dfifo);
    let restored2 = dir.path().join("out2.img");
    let mut child = common::diskdelta()
        .arg("apply")
        .arg(&dfifo)
        .arg("--base")
        .arg(&old_path)
        .arg("-o")
        .arg(&restored2)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply");
    feed_fifo(&dfifo, &read(&d), &mut child);
    let out = child.wait_with_output().expect("wait for apply");
    assert!(
        out.status.success(),
        "apply from a FIFO failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&read(&restored2), &new, "delta from a FIFO");
}

#[test]
fn stream_apply_output_is_sparse() {
    let dir = common::tempdir();
    let size = 4 * MIB;
    let old = common::pseudo_random(size, 24);
    // NEW: data at both ends, zeros in between.
    let mut new = vec![0u8; size];
    new[..64 * KIB].copy_from_slice(&old[..64 * KIB]);
    new[size - 64 * KIB..].copy_from_slice(&common::pseudo_random(64 * KIB, 25));
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    diff(&old_path, &new_path, &d, &[]);
    let out = dir.path().join("out.img");
    assert_same(&apply(&d, &old_path, &out), &new, "sparse NEW");
    let meta = std::fs::metadata(&out).expect("stat output");
    let allocated = meta.blocks() * 512;
    assert_eq!(meta.len(), size as u64);
    assert!(
        allocated < (size / 4) as u64,
        "output should be sparse: {allocated} bytes allocated for {} bytes of which 128 KiB are data",
        meta.len()
    );
    // The base itself sparse with a hole that stays a hole.
    let mut sparse_old = vec![0u8; size];
    sparse_old[MIB..MIB + 4 * KIB].fill(1);
    let sparse_old_path = dir.path().join("sparse-old.img");
    {
        let mut f = File::create(&sparse_old_path).expect("create sparse base");
        f.set_len(size as u64).expect("size sparse base");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&sparse_old[MIB..MIB + 4 * KIB], MIB as u64)
            .expect("write sparse base");
        f.flush().expect("flush");
    }
    let mut sparse_new = sparse_old.clone();
    sparse_new[3 * MIB..3 * MIB + 8 * KIB].fill(2);
    let sparse_new_path = common::write_file(dir.path(), "sparse-new.img", &sparse_new);
    let d2 = dir.path().join("d2");
    diff(&sparse_old_path, &sparse_new_path, &d2, &[]);
    let out2 = dir.path().join("out2.img");
    assert_same(
        &apply(&d2, &sparse_old_path, &out2),
        &sparse_new,
        "sparse base",
    );
    let allocated = std::fs::metadata(&out2).expect("stat").blocks() * 512;
    assert!(
        allocated <= 256 * KIB as u64,
        "output of a sparse base should stay sparse: {allocated} bytes allocated"
    );
}

#[test]
fn info_json_fields() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB, 26);
    let mut new = patched(&old, 8192, 8192, 27);
    new[512 * KIB..576 * KIB].fill(0);
    new.extend_from_slice(&common::pseudo_random(4096, 28));
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    diff(&old_path, &new_path, &d, &[]);
    let v = info(&d);
    assert_eq!(v["format"], "diskdelta", "{v}");
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(u64_field(&v, "copy_extents"), 0, "{v}");
    assert_eq!(v["checksums"], true, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(u64_field(&v, "old_size"), old.len() as u64, "{v}");
    assert_eq!(u64_field(&v, "new_size"), new.len() as u64, "{v}");
    assert_eq!(u64_field(&v, "block_size"), 4096, "{v}");
    // Three runs: 8 KiB of data, 64 KiB zeroed, 4 KiB appended.
    assert_eq!(u64_field(&v, "extents"), 3, "{v}");
    assert_eq!(u64_field(&v, "zero_extents"), 1, "{v}");
    assert_eq!(
        u64_field(&v, "extents"),
        u64_field(&v, "raw_extents")
            + u64_field(&v, "zstd_extents")
            + u64_field(&v, "zstd_ref_extents")
            + u64_field(&v, "zero_extents"),
        "{v}"
    );
    assert_eq!(
        u64_field(&v, "changed_bytes"),
        (8 + 64 + 4) * KIB as u64,
        "{v}"
    );
    assert_eq!(
        u64_field(&v, "delta_bytes"),
        std::fs::metadata(&d).expect("stat").len(),
        "{v}"
    );
    assert_eq!(v["change_tracked"], false, "{v}");
    assert!(u64_field(&v, "base_samples") > 0, "{v}");
    let new_digest = v["new_digest"].as_str().expect("new_digest is a string");
    assert_eq!(new_digest, hash_digest(&new_path), "NEW digest");
    let old_digest = v["old_digest"].as_str().expect("old_digest is a string");
    assert_eq!(old_digest, hash_digest(&old_path), "OLD digest");
    assert_ne!(old_digest, new_digest);

    // The human form says the same.
    let text = common::run_ok(common::diskdelta().arg("info").arg(&d));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("diskdelta"), "{text}");
    assert!(text.contains(new_digest), "{text}");
    // From stdin too.
    let piped = common::run_ok(
        common::diskdelta()
            .args(["info", "--json", "-"])
            .stdin(File::open(&d).expect("open delta")),
    );
    let p = json(&piped.stdout, "info --json -");
    assert_eq!(p["new_digest"], v["new_digest"]);
    assert_eq!(p["delta_bytes"], v["delta_bytes"]);
}

#[test]
fn hash_command() {
    let dir = common::tempdir();
    let a = common::pseudo_random(300_001, 29);
    let mut b = a.clone();
    b[150_000] ^= 1;
    let a_path = common::write_file(dir.path(), "a.img", &a);
    let a2_path = common::write_file(dir.path(), "a2.img", &a);
    let b_path = common::write_file(dir.path(), "b.img", &b);
    let empty = common::write_file(dir.path(), "empty.img", &[]);
    let out = common::run_ok(
        common::diskdelta()
            .args(["hash", "--json"])
            .arg(&a_path)
            .arg(&a2_path)
            .arg(&b_path)
            .arg(&empty),
    );
    let v = json(&out.stdout, "hash --json");
    let list = v.as_array().expect("array");
    assert_eq!(list.len(), 4, "{v}");
    assert_eq!(list[0]["path"], a_path.display().to_string());
    assert_eq!(u64_field(&list[0], "size"), a.len() as u64);
    assert_eq!(u64_field(&list[3], "size"), 0);
    let digest = |i: usize| list[i]["digest"].as_str().expect("digest").to_string();
    assert_eq!(digest(0).len(), 64, "a hex BLAKE3-sized digest: {v}");
    assert_eq!(digest(0), digest(1), "same content, same digest");
    assert_ne!(digest(0), digest(2), "one bit differs");
    assert_ne!(digest(0), digest(3));
    // Stdin, as a pipe, gives the same digest as the file.
    let piped = bash(r#"cat "$1" | "$0" hash -"#, &[&a_path]);
    let line = String::from_utf8_lossy(&piped.stdout);
    assert!(
        line.starts_with(&digest(0)),
        "hash - from a pipe: {line:?}, expected {}",
        digest(0)
    );
    assert!(line.contains(&format!(" {} ", a.len())), "{line:?}");
}

#[test]
fn diff_json_summary() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB + 100, 30);
    let new = patched(&old, MIB / 2, 40_000, 31);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    let out = common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&d)
            .arg("--json"),
    );
    let v = json(&out.stdout, "diff --json");
    assert_eq!(v["format"], "diskdelta", "{v}");
    assert_eq!(u64_field(&v, "old_size"), old.len() as u64, "{v}");
    assert_eq!(u64_field(&v, "new_size"), new.len() as u64, "{v}");
    assert_eq!(
        u64_field(&v, "delta_bytes"),
        std::fs::metadata(&d).expect("stat").len(),
        "{v}"
    );
    let i = info(&d);
    assert_eq!(v["extents"], i["extents"]);
    assert_eq!(v["changed_bytes"], i["changed_bytes"]);
    assert_eq!(
        v["new_digest"].as_str(),
        Some(hash_digest(&new_path).as_str())
    );
    assert_eq!(
        v["old_digest"].as_str(),
        Some(hash_digest(&old_path).as_str())
    );

    // With the delta on stdout, the JSON goes to stderr.
    let out = common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(&old_path)
            .arg(&new_path)
            .arg("--json"),
    );
    let v2 = json(&out.stderr, "diff --json (delta on stdout)");
    assert_eq!(v2["new_size"], v["new_size"]);
    let d2 = common::write_file(dir.path(), "d2", &out.stdout);
    assert_same(
        &apply(&d2, &old_path, &dir.path().join("o2")),
        &new,
        "delta written to stdout with --json",
    );
}

#[test]
fn apply_json_summary() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB, 32);
    let mut new = patched(&old, 10, 20_000, 33);
    new.truncate(MIB - 4096 - 3);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    diff(&old_path, &new_path, &d, &[]);
    let out_path = dir.path().join("out.img");
    let out = common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(&d)
            .arg("--base")
            .arg(&old_path)
            .arg("-o")
            .arg(&out_path)
            .arg("--json"),
    );
    let v = json(&out.stdout, "apply --json");
    assert_eq!(v["mode"], "stream", "{v}");
    assert_eq!(v["format"], "diskdelta", "{v}");
    assert_eq!(u64_field(&v, "new_size"), new.len() as u64, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(
        v["new_digest"].as_str(),
        Some(hash_digest(&new_path).as_str()),
        "{v}"
    );
    let i = info(&d);
    assert_eq!(v["extents"], i["extents"]);
    assert_eq!(v["changed_bytes"], i["changed_bytes"]);
    assert_same(&read(&out_path), &new, "apply --json output");

    // NEW on stdout: the JSON goes to stderr.
    let out = common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(&d)
            .arg("--base")
            .arg(&old_path)
            .arg("--json"),
    );
    assert_same(&out.stdout, &new, "apply to stdout with --json");
    let v2 = json(&out.stderr, "apply --json (NEW on stdout)");
    assert_eq!(v2["new_size"], v["new_size"]);
}

#[test]
fn quiet_prints_nothing_and_default_prints_one_summary_line() {
    let dir = common::tempdir();
    let old = common::pseudo_random(100_000, 34);
    let new = patched(&old, 0, 10, 35);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    let out = common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg("-q")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&d),
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let out = common::run_ok(
        common::diskdelta()
            .arg("apply")
            .arg(&d)
            .arg("--base")
            .arg(&old_path)
            .arg("-o")
            .arg(dir.path().join("o")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(err.lines().count(), 1, "one summary line: {err:?}");
    assert!(err.starts_with("apply (stream)"), "{err:?}");
}

#[test]
fn diff_dd_v2_output_applies_with_detection() {
    let dir = common::tempdir();
    let old = common::pseudo_random(MIB + 512, 36);
    let mut new = patched(&old, 4096 * 3, 70_000, 37);
    new[600_000..700_000].fill(0);
    let grown = {
        let mut g = new.clone();
        g.extend_from_slice(&common::pseudo_random(10_000, 38));
        g
    };
    // C++ diff-dd v2 stores no size: a NEW that grows must still restore
    // to its full size when its tail is zeros.
    let mut zero_grown = new.clone();
    zero_grown.resize(new.len() + 300_000, 0);
    let mut data_then_zeros = grown.clone();
    data_then_zeros.resize(grown.len() + 8192, 0);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    for (name, image) in [
        ("same-size", &new),
        ("grown", &grown),
        ("grown-by-zeros", &zero_grown),
        ("grown-data-then-zeros", &data_then_zeros),
    ] {
        let new_path = common::write_file(dir.path(), &format!("{name}.img"), image);
        let d = dir.path().join(format!("{name}.v2"));
        diff(&old_path, &new_path, &d, &["--format", "diff-dd-v2"]);
        let bytes = read(&d);
        assert!(
            bytes.starts_with(b"diff-dd image\x02"),
            "{name}: diff-dd v2 header"
        );
        let out = dir.path().join(format!("{name}.out"));
        assert_same(&apply(&d, &old_path, &out), image, name);
        let v = info(&d);
        assert_eq!(v["format"], "diff-dd-v2", "{name}: {v}");
        assert_eq!(v["checksums"], false, "{name}: {v}");
    }
}

#[test]
fn version_and_help() {
    let out = common::run_ok(common::diskdelta().arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("diskdelta "));
    let out = common::run_ok(common::diskdelta().arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["diff", "apply", "info", "hash"] {
        assert!(help.contains(cmd), "--help lists {cmd}: {help}");
    }
    // A usage error exits 2.
    let out = common::run_fail(common::diskdelta().args(["diff", "--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn existing_output_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::tempdir();
    let old = common::pseudo_random(50_000, 41);
    let new = patched(&old, 1000, 10, 42);
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let d = dir.path().join("d");
    diff(&old_path, &new_path, &d, &["-q"]);
    let out = common::write_file(dir.path(), "out.img", b"previous content");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_same(&apply(&d, &old_path, &out), &new, "over an existing file");
    let mode = std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of the replaced output");
    // Replacing the base itself with NEW is safe (written beside it first).
    assert_same(&apply(&d, &old_path, &old_path), &new, "-o BASE");
}

/// Apply paths must not need the output directory to be the working one.
#[test]
fn relative_output_path() {
    let dir = common::tempdir();
    let old = common::pseudo_random(50_000, 39);
    let new = patched(&old, 100, 100, 40);
    common::write_file(dir.path(), "old.img", &old);
    common::write_file(dir.path(), "new.img", &new);
    common::run_ok(
        common::diskdelta()
            .current_dir(dir.path())
            .args(["diff", "-q", "old.img", "new.img", "-o", "d"]),
    );
    common::run_ok(
        common::diskdelta()
            .current_dir(dir.path())
            .args(["apply", "-q", "d", "--base", "old.img", "-o", "out.img"]),
    );
    let out: PathBuf = dir.path().join("out.img");
    assert_same(&read(&out), &new, "relative paths");
}
