//! Series of deltas (`apply D1..Dn`, `merge`, `info D1..Dn`) and signatures
//! (`signature`, `diff --signature`), through the real executable, with
//! images large enough to fill every pipeline, under timeouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;

const MIB: usize = 1024 * 1024;
const EXIT_INTEGRITY: i32 = 3;
/// Seconds any single command may take before the test calls it stuck.
const LIMIT: u64 = 120;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Asserts a one-line `diskdelta: error:` report and the exit code.
fn assert_error(out: &Output, code: i32, what: &str) -> String {
    let err = common::stderr(out);
    assert!(
        err.starts_with("diskdelta: error: ") && err.matches('\n').count() == 1,
        "{what}: expected one line `diskdelta: error: ...`, got {err:?}"
    );
    assert_eq!(out.status.code(), Some(code), "{what}: exit code ({err:?})");
    err
}

/// Runs `cmd` (stdin from `input`, else nothing) under [`LIMIT`], reading
/// its output as it comes so a large stdout cannot stall it.
fn within(cmd: &mut Command, input: Option<&Path>) -> Output {
    let stdin = match input {
        Some(path) => Stdio::from(std::fs::File::open(path).expect("open stdin")),
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed().as_secs() >= LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {cmd:?} hung: no exit within {LIMIT} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().expect("join").expect("read stdout"),
        stderr: err_reader.join().expect("join").expect("read stderr"),
    }
}

fn ok_with(cmd: &mut Command, input: Option<&Path>) -> Output {
    let out = within(cmd, input);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        common::stderr(&out)
    );
    out
}

fn ok(cmd: &mut Command) -> Output {
    ok_with(cmd, None)
}

fn fails(cmd: &mut Command) -> Output {
    let out = within(cmd, None);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    out
}

/// A week of images: each night rewrites a few regions a little (so
/// records compress against OLD), overwrites some with new data, and the
/// size changes on two nights. Returns the images and the nightly deltas.
struct Week {
    dir: tempfile::TempDir,
    images: Vec<PathBuf>,
    deltas: Vec<PathBuf>,
}

fn week(nights: usize, size: usize, seed: u64) -> Week {
    let dir = common::tempdir();
    let mut bytes = common::pseudo_random(size, seed);
    // Half of it compressible text-like data, as file systems hold.
    for (i, b) in bytes[size / 2..].iter_mut().enumerate() {
        *b = b"log line: all is well\n"[i % 22];
    }
    let mut images = vec![common::write_file(dir.path(), "night-0.img", &bytes)];
    let mut deltas = Vec::new();
    for night in 1..=nights {
        let noise = common::pseudo_random(64 * 1024, seed + night as u64);
        for k in 0..24 {
            let at = (night * 7_919_993 + k * 1_234_567) % bytes.len().max(1);
            let end = (at + 9000).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b = b.wrapping_add(1);
            }
            let at = (night * 3_333_331 + k * 777_777) % bytes.len().max(1);
            let end = (at + noise.len() / 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&noise[..end - at]);
        }
        match night {
            2 => bytes.truncate(bytes.len() - 5 * MIB - 77),
            3 => bytes.resize(bytes.len() + 9 * MIB, 0),
            _ => {}
        }
        let image = common::write_file(dir.path(), &format!("night-{night}.img"), &bytes);
        let delta = dir.path().join(format!("night-{night}.ddelta"));
        ok(common::diskdelta()
            .args(["diff", "-q"])
            .arg(&images[night - 1])
            .arg(&image)
            .arg("-o")
            .arg(&delta));
        images.push(image);
        deltas.push(delta);
    }
    Week {
        dir,
        images,
        deltas,
    }
}

#[test]
fn a_series_applies_in_one_pass_and_merges_to_the_same_image() {
    let w = week(5, 24 * MIB, 1);
    let dir = w.dir.path();
    let last = read(w.images.last().expect("last"));

    let out = dir.join("chained.img");
    let v = json(&ok(common::diskdelta()
        .arg("apply")
        .args(&w.deltas)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&out)
        .arg("--json")));
    assert_eq!(v["verified"], true, "{v}");
    assert!(
        read(&out) == last,
        "chain apply differs from the last image"
    );

    // The same series with one delta through a pipe (spooled).
    let mut piped = common::diskdelta();
    piped
        .arg("apply")
        .args(&w.deltas[..2])
        .arg("-")
        .args(&w.deltas[3..])
        .arg("--base")
        .arg(&w.images[0])
        .arg("-q");
    let stream = ok_with(&mut piped, Some(&w.deltas[2]));
    assert!(stream.stdout == last, "chain apply to stdout differs");

    // Merged with the base: applies like the series.
    let merged = dir.join("week.ddelta");
    ok(common::diskdelta()
        .args(["merge", "-q"])
        .args(&w.deltas)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&merged));
    let from_merged = dir.join("from-merged.img");
    ok(common::diskdelta()
        .args(["apply", "-q"])
        .arg(&merged)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&from_merged));
    assert!(read(&from_merged) == last, "merged delta differs");
    let merged_size = std::fs::metadata(&merged).expect("stat").len();
    let series_size: u64 = w
        .deltas
        .iter()
        .map(|d| std::fs::metadata(d).expect("stat").len())
        .sum();
    assert!(
        merged_size < series_size,
        "merged {merged_size} >= series {series_size}"
    );

    // info of the series: connects, with the totals.
    let v = json(&ok(common::diskdelta()
        .arg("info")
        .args(&w.deltas)
        .arg("--json")));
    assert_eq!(v["connects"], true, "{v}");
    assert_eq!(v["deltas"].as_array().map(Vec::len), Some(5), "{v}");
    assert_eq!(v["new_size"], last.len() as u64, "{v}");
}

#[test]
fn merge_without_the_base_says_when_it_needs_it() {
    // Nights that rewrite the same bytes a little: the later records are
    // compressed against bytes the earlier ones changed.
    let w = week(3, 8 * MIB, 2);
    let dir = w.dir.path();
    let merged = dir.join("merged.ddelta");
    let out = within(
        common::diskdelta()
            .args(["merge", "-q"])
            .args(&w.deltas)
            .arg("-o")
            .arg(&merged),
        None,
    );
    if out.status.success() {
        let result = dir.join("result.img");
        ok(common::diskdelta()
            .args(["apply", "-q"])
            .arg(&merged)
            .arg("--base")
            .arg(&w.images[0])
            .arg("-o")
            .arg(&result));
        assert!(read(&result) == read(&w.images[3]));
    } else {
        let err = assert_error(&out, 1, "merge without base");
        assert!(err.contains("--base OLD"), "{err}");
        assert!(!merged.exists(), "a refused merge left its output");
    }
    // Version 1 deltas always merge without the base.
    let v1: Vec<PathBuf> = (1..=3)
        .map(|n| {
            let path = dir.join(format!("v1-{n}.ddelta"));
            ok(common::diskdelta()
                .args(["diff", "-q", "--format", "diskdelta-v1"])
                .arg(&w.images[n - 1])
                .arg(&w.images[n])
                .arg("-o")
                .arg(&path));
            path
        })
        .collect();
    ok(common::diskdelta()
        .args(["merge", "-q"])
        .args(&v1)
        .arg("-o")
        .arg(&merged));
    let result = dir.join("result-v1.img");
    ok(common::diskdelta()
        .args(["apply", "-q"])
        .arg(&merged)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&result));
    assert!(read(&result) == read(&w.images[3]));
}

#[test]
fn broken_series_are_refused_before_anything_is_written() {
    let w = week(3, 8 * MIB, 3);
    let dir = w.dir.path();
    let out_path = dir.join("out.img");
    let d = &w.deltas;
    for (series, what, needle) in [
        (vec![&d[1], &d[0], &d[2]], "wrong order", "does not follow"),
        (vec![&d[0], &d[2]], "gap", "does not follow"),
        (vec![&d[0], &d[0], &d[1]], "applied twice", "twice"),
    ] {
        let out = fails(
            common::diskdelta()
                .arg("apply")
                .args(&series)
                .arg("--base")
                .arg(&w.images[0])
                .arg("-o")
                .arg(&out_path),
        );
        let err = assert_error(&out, 1, what);
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!out_path.exists(), "{what}: output written");
        // In place: the target is untouched.
        let target = common::write_file(dir, "target.img", &read(&w.images[0]));
        let out = fails(
            common::diskdelta()
                .arg("apply")
                .args(&series)
                .arg("--in-place")
                .arg(&target),
        );
        assert_error(&out, 1, what);
        assert!(
            read(&target) == read(&w.images[0]),
            "{what}: target changed"
        );
        // info names the break and exits 1.
        let out = within(
            common::diskdelta().arg("info").args(&series).arg("--json"),
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert_eq!(json(&out)["connects"], false, "{what}");
    }
    // The first delta's OLD is not the base: nothing is published.
    let out = fails(
        common::diskdelta()
            .arg("apply")
            .args(d)
            .arg("--base")
            .arg(&w.images[1])
            .arg("-o")
            .arg(&out_path),
    );
    assert_error(&out, EXIT_INTEGRITY, "wrong base");
    assert!(!out_path.exists());
}

#[test]
fn a_damaged_delta_in_a_series_fails_cleanly() {
    let w = week(3, 24 * MIB, 4);
    let dir = w.dir.path();
    let mut bytes = read(&w.deltas[1]);
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&w.deltas[1], &bytes).expect("write");
    let out_path = dir.join("out.img");
    let out = fails(
        common::diskdelta()
            .arg("apply")
            .args(&w.deltas)
            .arg("--base")
            .arg(&w.images[0])
            .arg("-o")
            .arg(&out_path),
    );
    assert_error(&out, EXIT_INTEGRITY, "damaged delta");
    assert!(!out_path.exists());
    let target = common::write_file(dir, "target.img", &read(&w.images[0]));
    let out = fails(
        common::diskdelta()
            .arg("apply")
            .args(&w.deltas)
            .arg("--in-place")
            .arg(&target),
    );
    assert_error(&out, EXIT_INTEGRITY, "damaged delta in place");
    assert!(read(&target) == read(&w.images[0]), "target changed");
}

#[test]
fn a_series_applies_in_place_onto_a_loop_device() {
    let w = week(4, 16 * MIB, 5);
    let base = read(&w.images[0]);
    let last = read(w.images.last().expect("last"));
    // The device is as large as the largest night.
    let capacity = w
        .images
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .max()
        .unwrap_or(0)
        .next_multiple_of(512);
    let Some(dev) = LoopDevice::attach(
        "a_series_applies_in_place_onto_a_loop_device",
        &base,
        capacity,
    ) else {
        return;
    };
    let v = json(&ok(common::diskdelta()
        .arg("apply")
        .args(&w.deltas)
        .arg("--in-place")
        .arg(dev.path())
        .args(["--verify", "--json"])));
    assert_eq!(v["verified"], true, "{v}");
    let on_device = dev.read_all();
    assert!(
        on_device[..last.len()] == last[..],
        "device does not hold the last image"
    );
}

#[test]
fn signature_stands_in_for_the_base() {
    let w = week(1, 32 * MIB, 6);
    let dir = w.dir.path();
    let sig = dir.join("base.sig");
    ok(common::diskdelta()
        .args(["signature", "-q"])
        .arg(&w.images[0])
        .arg("-o")
        .arg(&sig));
    let image_size = std::fs::metadata(&w.images[0]).expect("stat").len();
    let sig_size = std::fs::metadata(&sig).expect("stat").len();
    assert!(
        sig_size * 100 <= image_size,
        "signature {sig_size} > 1% of {image_size}"
    );

    // The signature through a pipe, as from `ssh host diskdelta signature`.
    let delta = dir.join("from-sig.ddelta");
    ok_with(
        common::diskdelta()
            .args(["diff", "-q", "--signature", "-"])
            .arg(&w.images[1])
            .arg("-o")
            .arg(&delta),
        Some(&sig),
    );
    let result = dir.join("result.img");
    ok(common::diskdelta()
        .args(["apply", "-q"])
        .arg(&delta)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&result));
    assert!(read(&result) == read(&w.images[1]));
    // In place, with the sample check the signature's samples allow.
    let target = common::write_file(dir, "target.img", &read(&w.images[0]));
    let v = json(&ok(common::diskdelta()
        .arg("apply")
        .arg(&delta)
        .arg("--in-place")
        .arg(&target)
        .arg("--json")));
    assert_eq!(v["check_base"], "sample", "{v}");
    assert!(read(&target) == read(&w.images[1]));
    // A delta from the signature applies only to its image.
    let out = fails(
        common::diskdelta()
            .arg("apply")
            .arg(&delta)
            .arg("--base")
            .arg(&w.images[1])
            .arg("-o")
            .arg(dir.join("wrong.img")),
    );
    assert_error(&out, EXIT_INTEGRITY, "delta from signature on another base");
}

#[test]
fn damaged_or_mismatched_signatures_are_refused() {
    let w = week(1, 8 * MIB, 7);
    let dir = w.dir.path();
    let sig = dir.join("base.sig");
    ok(common::diskdelta()
        .args(["signature", "-q", "-b", "8K"])
        .arg(&w.images[0])
        .arg("-o")
        .arg(&sig));
    let good = read(&sig);
    let delta = dir.join("d.ddelta");
    let diff_with = |sig: &Path, extra: &[&str]| {
        within(
            common::diskdelta()
                .args(["diff", "-q", "--signature"])
                .arg(sig)
                .args(extra)
                .arg(&w.images[1])
                .arg("-o")
                .arg(&delta),
            None,
        )
    };
    let out = diff_with(&sig, &["-b", "4K"]);
    let err = assert_error(&out, 1, "other block size");
    assert!(err.contains("8192-byte blocks"), "{err}");
    assert!(!delta.exists());
    let bad = dir.join("bad.sig");
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated trailer", good[..good.len() - 1].to_vec()),
        ("flipped hash", {
            let mut b = good.clone();
            b[200] ^= 1;
            b
        }),
        ("flipped header", {
            let mut b = good.clone();
            b[17] ^= 1;
            b
        }),
    ] {
        std::fs::write(&bad, &bytes).expect("write");
        let out = diff_with(&bad, &[]);
        assert_error(&out, EXIT_INTEGRITY, what);
        assert!(!delta.exists(), "{what}: delta published");
    }
    // Not a signature at all.
    let out = diff_with(&w.images[0], &[]);
    assert_error(&out, EXIT_INTEGRITY, "an image as signature");
}

#[test]
fn signature_of_a_repository_snapshot() {
    let w = week(1, 12 * MIB, 8);
    let dir = w.dir.path();
    let repo = dir.join("repo");
    ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&repo));
    ok(common::diskdelta()
        .args(["backup", "-q", "-r"])
        .arg(&repo)
        .arg(&w.images[0])
        .args(["--name", "vm1"]));
    let from_snapshot = ok(common::diskdelta()
        .args(["signature", "-q", "--seed", "5", "-r"])
        .arg(&repo)
        .args(["--from-snapshot", "vm1"]));
    // The same seed (a hidden option; random otherwise) gives the same bytes.
    let from_image = ok(common::diskdelta()
        .args(["signature", "-q", "--seed", "5"])
        .arg(&w.images[0]));
    assert!(
        from_snapshot.stdout == from_image.stdout,
        "the snapshot's signature differs from its image's"
    );
    let sig = common::write_file(dir, "snapshot.sig", &from_snapshot.stdout);
    let delta_out = ok_with(
        common::diskdelta()
            .args(["diff", "-q", "--signature", "-"])
            .arg(&w.images[1]),
        Some(&sig),
    );
    let delta = common::write_file(dir, "d.ddelta", &delta_out.stdout);
    let result = dir.join("result.img");
    ok(common::diskdelta()
        .args(["apply", "-q"])
        .arg(&delta)
        .arg("--base")
        .arg(&w.images[0])
        .arg("-o")
        .arg(&result));
    assert!(read(&result) == read(&w.images[1]));
}
