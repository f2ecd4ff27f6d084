//! The snapshot repository through the real binary: where the repository
//! is, backup and restore round trips (files, streams, in place, loop
//! devices, stdin), incremental and dedup counts, choosing snapshots, crash
//! safety under `kill -9`, concurrency and locks, corruption, forget
//! policies, gc, errors, a full disk, and the golden repository of format
//! version 1 (`tests/golden/repo/`).
//!
//! Images are made here: deterministic pseudo-random 64 KiB regions mixed
//! with zero and compressible ones (see [`image`]). Expected chunk counts
//! are computed independently from the images (BLAKE3 of each chunk).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The chunk size most tests use (`init --chunk-size 64K`).
const CHUNK: usize = 64 * KIB;
/// Exit code of integrity failures.
const EXIT_INTEGRITY: i32 = 3;

// --- images -----------------------------------------------------------------

/// splitmix64: a well-mixed hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic test image of `len` bytes: 64 KiB regions, about five
/// in eight pseudo-random, one in eight zeros, two in eight compressible
/// text (unique per region, so regions never dedup by accident).
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, region) in out.chunks_mut(64 * KIB).enumerate() {
        match mix(seed.wrapping_mul(0x1_0000_0001) ^ i as u64) % 8 {
            0..=4 => region.copy_from_slice(&random(region.len(), seed, i as u64)),
            5 => {}
            _ => {
                let line = format!("diskdelta test image {seed}, region {i}: compressible\n");
                for (dst, src) in region.iter_mut().zip(line.bytes().cycle()) {
                    *dst = src;
                }
            }
        }
    }
    out
}

/// Incompressible bytes, distinct for every (seed, part).
fn random(len: usize, seed: u64, part: u64) -> Vec<u8> {
    common::pseudo_random(len, mix(seed) ^ mix(part.wrapping_add(0xABCD)))
}

/// Replaces chunks `which` (of `chunk` bytes) with fresh random bytes.
fn change_chunks(img: &mut [u8], chunk: usize, which: &[usize], seed: u64) {
    for (k, &i) in which.iter().enumerate() {
        let start = i * chunk;
        let end = (start + chunk).min(img.len());
        img[start..end].copy_from_slice(&random(end - start, seed, k as u64 + 1_000));
    }
}

/// Each chunk's id (BLAKE3), `None` for a chunk of zeros.
fn chunk_ids(img: &[u8], chunk: usize) -> Vec<Option<[u8; 32]>> {
    img.chunks(chunk)
        .map(|c| {
            if c.iter().all(|&b| b == 0) {
                None
            } else {
                Some(*blake3::hash(c).as_bytes())
            }
        })
        .collect()
}

/// What a backup of `img` must report, given the chunks already `stored`
/// (which it then extends): every chunk is new (first time its content is
/// stored), reused (stored already, or earlier in the same image) or zero.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    new: u64,
    reused: u64,
    zero: u64,
}

fn expected_counts(stored: &mut HashSet<[u8; 32]>, img: &[u8], chunk: usize) -> Counts {
    let mut c = Counts {
        new: 0,
        reused: 0,
        zero: 0,
    };
    for id in chunk_ids(img, chunk) {
        match id {
            None => c.zero += 1,
            Some(id) if stored.insert(id) => c.new += 1,
            Some(_) => c.reused += 1,
        }
    }
    c
}

fn counts_of(summary: &Value) -> Counts {
    Counts {
        new: summary["new_chunks"].as_u64().expect("new_chunks"),
        reused: summary["reused_chunks"].as_u64().expect("reused_chunks"),
        zero: summary["zero_chunks"].as_u64().expect("zero_chunks"),
    }
}

// --- running the binary -------------------------------------------------------

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the error report is one line `diskdelta: error: ...`; returns it.
fn one_line_error(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert!(
        err.starts_with("diskdelta: error: ")
            && err.ends_with('\n')
            && err.matches('\n').count() == 1,
        "{what}: stderr must be exactly one line `diskdelta: error: ...`: {err:?}"
    );
    err
}

/// Runs a command that must fail with `code` and a one-line error.
fn fails_with(cmd: &mut Command, code: i32, what: &str) -> String {
    let out = common::run_fail(cmd);
    let err = one_line_error(&out, what);
    assert_eq!(out.status.code(), Some(code), "{what}: exit code ({err:?})");
    err
}

/// This machine's host name, as the repository records it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Every file under `dir` (hidden ones too), relative paths, unread.
/// Files and directories that vanish while walking are skipped.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .expect("under dir")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir` (hidden ones too): relative path -> (size, BLAKE3).
fn tree(dir: &Path) -> BTreeMap<String, (u64, String)> {
    walk(dir)
        .into_iter()
        .filter_map(|rel| {
            let data = std::fs::read(dir.join(&rel)).ok()?;
            let sum = blake3::hash(&data).to_hex().to_string();
            Some((rel, (data.len() as u64, sum)))
        })
        .collect()
}

/// A repository in a temporary directory (which also holds images).
struct Repo {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Repo {
    /// `init` with the given `--chunk-size` (default when `None`): an
    /// encrypted repository, the default.
    fn init(chunk_size: Option<&str>) -> Repo {
        Repo::init_with(chunk_size, &[])
    }

    /// `init` with the given `--chunk-size` and other options.
    fn init_with(chunk_size: Option<&str>, extra: &[&str]) -> Repo {
        let dir = common::tempdir();
        let path = dir.path().join("repo");
        let mut cmd = common::diskdelta();
        cmd.args(["init", "-q", "-r"]).arg(&path).args(extra);
        if let Some(c) = chunk_size {
            cmd.args(["--chunk-size", c]);
        }
        common::run_ok(&mut cmd);
        Repo { dir, path }
    }

    /// The repository opened through the library, with the tests' password.
    fn open(&self) -> diskdelta::repo::Repository {
        let backend = std::sync::Arc::new(diskdelta::repo::backend::LocalBackend::new(&self.path));
        let password = |_| Ok(zeroize::Zeroizing::new(common::TEST_PASSWORD.to_string()));
        diskdelta::repo::Repository::open_with(backend, &password).expect("open the repository")
    }

    /// A 64 KiB-chunk repository.
    fn small_chunks() -> Repo {
        Repo::init(Some("64K"))
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `diskdelta SUBCOMMAND -r REPO ARGS...`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::diskdelta();
        c.arg(args[0]).arg("-r").arg(&self.path).args(&args[1..]);
        c
    }

    /// Writes an image file into the temporary directory.
    fn image(&self, name: &str, data: &[u8]) -> PathBuf {
        common::write_file(self.dir(), name, data)
    }

    /// `backup --json SOURCE --name NAME EXTRA...`; returns the summary.
    fn backup(&self, source: &Path, name: &str, extra: &[&str]) -> Value {
        let out = common::run_ok(
            self.cmd(&["backup", "--json"])
                .arg(source)
                .args(["--name", name])
                .args(extra),
        );
        let v = json(&out.stdout);
        let list = v.as_array().expect("backup --json prints a list");
        assert_eq!(list.len(), 1, "one source, one result: {v}");
        assert_eq!(list[0]["source"], source.display().to_string());
        list[0]["summary"].clone()
    }

    /// The command of a backup, for running it in the background.
    fn backup_cmd(&self, source: &Path, name: &str, extra: &[&str]) -> Command {
        let mut c = self.cmd(&["backup", "-q"]);
        c.arg(source).args(["--name", name]).args(extra);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `restore SPEC -o FILE --json`; returns the restored bytes and the
    /// summary, and removes the file.
    fn restore(&self, spec: &str) -> (Vec<u8>, Value) {
        let out_path = self
            .dir()
            .join(format!("restored-{}", mix(now() as u64 ^ rand_u64())));
        let out = common::run_ok(self.cmd(&["restore", spec, "--json", "-o"]).arg(&out_path));
        let data = std::fs::read(&out_path).expect("read restored image");
        std::fs::remove_file(&out_path).expect("remove restored image");
        (data, json(&out.stdout))
    }

    /// `restore SPEC --json` to stdout; returns the bytes and the summary
    /// (printed on stderr then).
    fn restore_stdout(&self, spec: &str) -> (Vec<u8>, Value) {
        let out = common::run_ok(&mut self.cmd(&["restore", spec, "--json"]));
        let summary = json(&out.stderr);
        (out.stdout, summary)
    }

    /// Restores `spec` and checks it is `expected`.
    fn assert_restores(&self, spec: &str, expected: &[u8]) {
        let (data, summary) = self.restore(spec);
        assert_eq!(data.len(), expected.len(), "restored size of {spec}");
        assert!(data == expected, "restored {spec} differs from the image");
        assert_eq!(summary["size"], expected.len() as u64);
    }

    /// `verify [--read-data] --json`, which must pass; returns the report.
    fn verify_ok(&self, read_data: bool) -> Value {
        let mut cmd = self.cmd(&["verify", "--json"]);
        if read_data {
            cmd.arg("--read-data");
        }
        let out = common::run_ok(&mut cmd);
        let v = json(&out.stdout);
        assert_eq!(v["errors"], serde_json::json!([]), "verify errors: {v}");
        v
    }

    fn status(&self) -> Value {
        json(&common::run_ok(&mut self.cmd(&["status", "--json"])).stdout)
    }

    fn snapshots(&self) -> Vec<Value> {
        let v = json(&common::run_ok(&mut self.cmd(&["snapshots", "--json"])).stdout);
        v.as_array()
            .expect("snapshots --json prints a list")
            .clone()
    }

    /// Keys of the objects under `prefix` (`data/`, `index/`, ...).
    fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        walk(&self.path.join(prefix))
            .into_iter()
            .filter(|k| !k.rsplit('/').next().unwrap_or("").starts_with('.'))
            .map(|k| self.path.join(prefix).join(k))
            .collect()
    }
}

/// A little entropy for unique file names (tests run in parallel).
fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (COUNTER.fetch_add(1, Ordering::Relaxed) << 48) ^ u64::from(std::process::id())
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"))
}

// --- init and where the repository is ----------------------------------------

#[test]
fn init_creates_a_repository_with_the_chosen_chunk_size() {
    let dir = common::tempdir();
    let repo = dir.path().join("r64");
    let out = common::run_ok(
        common::diskdelta()
            .args(["init", "--json", "--chunk-size", "64K", "-r"])
            .arg(&repo),
    );
    let v = json(&out.stdout);
    assert_eq!(v["chunk_size"], 65536);
    assert_eq!(v["repository"], repo.display().to_string());
    let config = json(&std::fs::read(repo.join("config")).expect("config written"));
    assert_eq!(config["format"], "diskdelta-repository");
    // Encrypted, the default (plain repositories are version 1).
    assert_eq!(config["version"], 2);
    assert_eq!(config["chunk_size"], 65536);
    assert_eq!(config["id"], v["id"]);
    assert!(is_rfc3339_utc(str_of(&config, "created")), "{config}");

    let status = json(
        &common::run_ok(
            common::diskdelta()
                .args(["status", "--json", "-r"])
                .arg(&repo),
        )
        .stdout,
    );
    assert_eq!(status["chunk_size"], 65536);
    assert_eq!(status["snapshots"], 0);
    assert_eq!(status["packs"], 0);

    // The default chunk size is 1 MiB.
    let default = dir.path().join("default");
    let out = common::run_ok(
        common::diskdelta()
            .args(["init", "--json", "-r"])
            .arg(&default),
    );
    assert_eq!(json(&out.stdout)["chunk_size"], 1 << 20);

    // A second init is refused and leaves the config alone.
    let before = std::fs::read(repo.join("config")).expect("config");
    let err = fails_with(
        common::diskdelta()
            .args(["init", "--chunk-size", "16K", "-r"])
            .arg(&repo),
        1,
        "init twice",
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(repo.join("config")).expect("config"), before);

    // Chunk sizes that are not a power of two from 16K to 4M, before
    // anything is created.
    for bad in ["8K", "3K", "8M", "100000", "lots"] {
        let path = dir.path().join(format!("bad-{bad}"));
        let err = fails_with(
            common::diskdelta()
                .args(["init", "--chunk-size", bad, "-r"])
                .arg(&path),
            1,
            bad,
        );
        assert!(
            err.contains("chunk size") || err.contains("chunk-size"),
            "{err}"
        );
        assert!(
            !path.exists(),
            "init --chunk-size {bad} created {}",
            path.display()
        );
    }
    for good in ["16K", "4M", "1M", "128K"] {
        let path = dir.path().join(format!("good-{good}"));
        common::run_ok(
            common::diskdelta()
                .args(["init", "-q", "--chunk-size", good, "-r"])
                .arg(&path),
        );
    }
}

#[test]
fn init_refuses_a_non_empty_directory_that_is_not_a_repository() {
    let dir = common::tempdir();
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::write(taken.join("notes.txt"), b"mine").expect("write");
    let err = fails_with(
        common::diskdelta().args(["init", "-r"]).arg(&taken),
        1,
        "init into a non-empty directory",
    );
    assert!(err.contains("not empty"), "{err}");
    assert!(!taken.join("config").exists());
    assert_eq!(
        tree(&taken).into_keys().collect::<Vec<_>>(),
        vec!["notes.txt".to_string()]
    );
    assert_eq!(
        std::fs::read(taken.join("notes.txt")).expect("read"),
        b"mine"
    );

    // Backup does not adopt it either.
    let img = common::write_file(dir.path(), "img", &image(MIB, 1));
    let err = fails_with(
        common::diskdelta()
            .args(["backup", "--name", "x", "-r"])
            .arg(&taken)
            .arg(&img),
        1,
        "backup into a non-repository",
    );
    assert!(err.contains("no repository"), "{err}");

    // An existing empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&empty));
    assert!(empty.join("config").is_file());
}

#[test]
fn repository_from_the_environment() {
    let dir = common::tempdir();
    let repo = dir.path().join("env-repo");
    let img = image(2 * MIB + 5, 2);
    let img_path = common::write_file(dir.path(), "img", &img);
    let env = |args: &[&str]| {
        let mut c = common::diskdelta();
        c.env("DISKDELTA_REPO", &repo).args(args);
        c
    };
    common::run_ok(&mut env(&["init", "-q", "--chunk-size", "64K"]));
    assert!(repo.join("config").is_file());
    common::run_ok(env(&["backup", "-q", "--name", "envy"]).arg(&img_path));
    let v = json(&common::run_ok(&mut env(&["snapshots", "--json"])).stdout);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["name"], "envy");
    let out = common::run_ok(&mut env(&["restore", "envy"]));
    assert!(out.stdout == img, "restore through DISKDELTA_REPO");

    // -r wins over the environment.
    let other = dir.path().join("other");
    let err = fails_with(
        env(&["snapshots", "-r"]).arg(&other),
        1,
        "-r over DISKDELTA_REPO",
    );
    assert!(err.contains("no repository at"), "{err}");
    assert!(err.contains("other"), "{err}");
}

#[test]
fn default_repository_is_created_on_first_backup_only() {
    let dir = common::tempdir();
    let xdg = dir.path().join("xdg");
    let home = dir.path().join("home");
    let img = image(MIB + 100, 3);
    let img_path = common::write_file(dir.path(), "img", &img);
    let with_xdg = |args: &[&str]| {
        let mut c = common::diskdelta();
        c.env("XDG_DATA_HOME", &xdg).env("HOME", &home).args(args);
        c
    };
    // Readers do not create it.
    let err = fails_with(&mut with_xdg(&["snapshots"]), 1, "snapshots, no repository");
    assert!(err.contains("no repository at"), "{err}");
    assert!(!xdg.exists(), "snapshots created {}", xdg.display());
    fails_with(
        &mut with_xdg(&["restore", "x"]),
        1,
        "restore, no repository",
    );
    assert!(!xdg.exists());

    common::run_ok(with_xdg(&["backup", "-q", "--name", "first"]).arg(&img_path));
    let repo = xdg.join("diskdelta/repo");
    let config = json(&std::fs::read(repo.join("config")).expect("default repository created"));
    assert_eq!(config["chunk_size"], 1 << 20);
    assert!(!home.exists(), "HOME is not used when XDG_DATA_HOME is set");
    let out = common::run_ok(&mut with_xdg(&["restore", "first"]));
    assert!(out.stdout == img);

    // Without XDG_DATA_HOME: ~/.local/share/diskdelta/repo.
    let home2 = dir.path().join("home2");
    common::run_ok(
        common::diskdelta()
            .env_remove("XDG_DATA_HOME")
            .env("HOME", &home2)
            .args(["backup", "-q", "--name", "second"])
            .arg(&img_path),
    );
    assert!(home2.join(".local/share/diskdelta/repo/config").is_file());
}

#[test]
fn a_mistyped_repository_path_is_not_created() {
    let dir = common::tempdir();
    let img = common::write_file(dir.path(), "img", &image(MIB, 4));
    let typo = dir.path().join("rpeo");
    let img_arg = img.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["backup", &img_arg, "--name", "x"],
        vec!["restore", "x", "-o", "/dev/null"],
        vec!["snapshots"],
        vec!["status"],
        vec!["verify"],
        vec!["gc"],
        vec!["forget", "x"],
        vec!["unlock"],
    ];
    for args in &cases {
        let mut cmd = common::diskdelta();
        cmd.args(args).arg("-r").arg(&typo);
        let err = fails_with(&mut cmd, 1, &args.join(" "));
        assert!(
            err.contains("no repository at") && err.contains("rpeo") && err.contains("init"),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // The same through DISKDELTA_REPO.
    let err = fails_with(
        common::diskdelta()
            .env("DISKDELTA_REPO", &typo)
            .args(["backup", "--name", "x"])
            .arg(&img),
        1,
        "backup with a mistyped DISKDELTA_REPO",
    );
    assert!(err.contains("no repository at"), "{err}");
    assert!(!typo.exists());
}

// --- backup and restore round trips ------------------------------------------

#[test]
fn restore_to_a_file_is_byte_identical_and_sparse() {
    let repo = Repo::small_chunks();
    // 64 MiB, mostly zeros: three 1 MiB data regions, the last at the end.
    let size = 64 * MIB;
    let mut img = vec![0u8; size];
    for (k, at) in [0, 20 * MIB + 4 * KIB, size - MIB].into_iter().enumerate() {
        img[at..at + MIB].copy_from_slice(&image(MIB, 10 + k as u64));
    }
    let path = repo.image("sparse.img", &img);
    let summary = repo.backup(&path, "sparse", &[]);
    let mut stored = HashSet::new();
    assert_eq!(
        counts_of(&summary),
        expected_counts(&mut stored, &img, CHUNK)
    );
    assert_eq!(summary["size"], size as u64);

    let out_path = repo.dir().join("out.img");
    let out = common::run_ok(
        repo.cmd(&["restore", "sparse", "--json", "-o"])
            .arg(&out_path),
    );
    let r = json(&out.stdout);
    assert_eq!(r["digest"], summary["digest"]);
    assert_eq!(r["snapshot"], summary["snapshot"]);
    let restored = std::fs::read(&out_path).expect("read restored");
    assert!(restored == img, "restored sparse image differs");
    let allocated = std::fs::metadata(&out_path).expect("stat").blocks() * 512;
    assert!(
        allocated < 6 * MIB as u64,
        "restored file is not sparse: {allocated} bytes allocated for 3 MiB of data"
    );
    assert!(r["bytes_written"].as_u64().expect("bytes_written") < (size / 4) as u64);
}

#[test]
fn restore_to_stdout() {
    let repo = Repo::small_chunks();
    let img = image(8 * MIB + 4321, 5);
    let path = repo.image("img", &img);
    repo.backup(&path, "streamed", &[]);
    let nonzero = chunk_ids(&img, CHUNK)
        .iter()
        .filter(|c| c.is_some())
        .count();

    let out = common::run_ok(&mut repo.cmd(&["restore", "streamed", "-o", "-", "--json"]));
    assert!(out.stdout == img, "restore -o - differs");
    // With data on stdout, the JSON summary goes to stderr.
    let summary = json(&out.stderr);
    assert_eq!(summary["chunks_fetched"], nonzero as u64);
    assert_eq!(summary["size"], img.len() as u64);

    let out = common::run_ok(&mut repo.cmd(&["restore", "streamed"]));
    assert!(out.stdout == img, "restore without -o differs");
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
}

/// What an in-place restore of `new` onto `old` must fetch and keep.
fn in_place_expectation(old: &[u8], new: &[u8], chunk: usize) -> (u64, u64) {
    let (mut fetched, mut unchanged) = (0, 0);
    for (i, piece) in new.chunks(chunk).enumerate() {
        let start = i * chunk;
        let before = old.get(start..start + piece.len());
        if before == Some(piece) {
            unchanged += 1;
        } else if piece.iter().any(|&b| b != 0) {
            fetched += 1;
        }
    }
    (fetched, unchanged)
}

#[test]
fn restore_in_place_fetches_only_changed_chunks() {
    let repo = Repo::small_chunks();
    let v1 = image(16 * MIB, 6);
    let mut v2 = v1.clone();
    change_chunks(&mut v2, CHUNK, &[3, 50, 100, 200, 255], 60);
    // One data chunk zeroed, one zero chunk filled.
    let ids = chunk_ids(&v1, CHUNK);
    let first_zero = ids
        .iter()
        .position(Option::is_none)
        .expect("image has zero chunks");
    let first_data = ids
        .iter()
        .position(Option::is_some)
        .expect("image has data");
    v2[first_data * CHUNK..(first_data + 1) * CHUNK].fill(0);
    change_chunks(&mut v2, CHUNK, &[first_zero], 61);
    let p1 = repo.image("v1", &v1);
    let p2 = repo.image("v2", &v2);
    let s1 = repo.backup(&p1, "disk", &[]);
    let s2 = repo.backup(&p2, "disk", &[]);
    let id2 = str_of(&s2, "snapshot");

    let target = repo.image("target", &v1);
    let out = common::run_ok(
        repo.cmd(&["restore", id2, "--json", "--in-place"])
            .arg(&target),
    );
    let r = json(&out.stdout);
    let total = v2.len().div_ceil(CHUNK) as u64;
    let (fetched, unchanged) = in_place_expectation(&v1, &v2, CHUNK);
    assert_eq!(fetched, 6, "test setup");
    assert_eq!(r["chunks_fetched"], fetched, "{r}");
    assert_eq!(r["chunks_unchanged"], unchanged, "{r}");
    assert!(fetched < total);
    assert!(std::fs::read(&target).expect("read target") == v2);

    // Again: nothing to fetch.
    let out = common::run_ok(
        repo.cmd(&["restore", id2, "--json", "--in-place"])
            .arg(&target),
    );
    let r = json(&out.stdout);
    assert_eq!(r["chunks_fetched"], 0);
    assert_eq!(r["chunks_unchanged"], total);
    assert_eq!(r["bytes_written"], 0);

    // And back to the first snapshot, by id.
    common::run_ok(
        repo.cmd(&["restore", str_of(&s1, "snapshot"), "-q", "--in-place"])
            .arg(&target),
    );
    assert!(std::fs::read(&target).expect("read target") == v1);
}

#[test]
fn restore_in_place_onto_smaller_larger_and_missing_targets() {
    let repo = Repo::small_chunks();
    let img = image(8 * MIB + 1000, 7);
    let path = repo.image("img", &img);
    repo.backup(&path, "resize", &[]);
    let cases: [(&str, Option<Vec<u8>>); 3] = [
        ("smaller", Some(img[..3 * MIB].to_vec())),
        (
            "larger",
            Some([img.clone(), random(2 * MIB + 7, 70, 0)].concat()),
        ),
        ("missing", None),
    ];
    for (what, content) in cases {
        let target = repo.dir().join(format!("target-{what}"));
        if let Some(c) = &content {
            std::fs::write(&target, c).expect("write target");
        }
        common::run_ok(
            repo.cmd(&["restore", "resize", "-q", "--in-place"])
                .arg(&target),
        );
        let got = std::fs::read(&target).expect("read target");
        assert_eq!(got.len(), img.len(), "{what}: size");
        assert!(got == img, "{what}: content");
    }
}

#[test]
fn restore_onto_a_loop_device() {
    let repo = Repo::small_chunks();
    let v1 = image(8 * MIB, 8);
    let mut v2 = v1.clone();
    change_chunks(&mut v2, CHUNK, &[1, 64, 127], 80);
    let p1 = repo.image("v1", &v1);
    let p2 = repo.image("v2", &v2);
    let s1 = repo.backup(&p1, "dev", &[]);
    let s2 = repo.backup(&p2, "dev", &[]);
    let id2 = str_of(&s2, "snapshot");

    let garbage = random(12 * MIB, 81, 0);
    let Some(dev) = LoopDevice::attach(
        "repo::restore_onto_a_loop_device",
        &garbage,
        12 * MIB as u64,
    ) else {
        return;
    };
    common::run_ok(
        repo.cmd(&["restore", str_of(&s1, "snapshot"), "-q", "-o"])
            .arg(dev.path()),
    );
    let data = dev.read_all();
    assert!(data[..v1.len()] == v1[..], "device holds v1");
    assert!(
        data[v1.len()..] == garbage[v1.len()..],
        "bytes past the image are untouched"
    );

    let out = common::run_ok(
        repo.cmd(&["restore", id2, "--json", "--in-place"])
            .arg(dev.path()),
    );
    let r = json(&out.stdout);
    let (fetched, unchanged) = in_place_expectation(&v1, &v2, CHUNK);
    assert_eq!(fetched, 3, "test setup");
    assert_eq!(r["chunks_fetched"], fetched, "{r}");
    assert_eq!(r["chunks_unchanged"], unchanged, "{r}");
    let data = dev.read_all();
    assert!(data[..v2.len()] == v2[..], "device holds v2");
    assert!(data[v2.len()..] == garbage[v2.len()..]);

    // The device as a backup source: all 12 MiB of it.
    let s3 = repo.backup(dev.path(), "loop", &[]);
    assert_eq!(s3["size"], data.len() as u64);
    assert_eq!(
        repo.snapshots()
            .iter()
            .find(|s| s["id"] == s3["snapshot"])
            .expect("listed")["source"],
        dev.path().display().to_string()
    );
    repo.assert_restores(str_of(&s3, "snapshot"), &data);

    // A device too small for the image is refused before writing.
    let small_garbage = random(4 * MIB, 82, 0);
    let Some(small) = LoopDevice::attach(
        "repo::restore_onto_a_loop_device",
        &small_garbage,
        4 * MIB as u64,
    ) else {
        return;
    };
    let out = common::run_fail(repo.cmd(&["restore", id2, "-o"]).arg(small.path()));
    one_line_error(&out, "restore onto a small device");
    assert!(
        small.read_all() == small_garbage,
        "small device was written"
    );
}

#[test]
fn backup_from_stdin() {
    let repo = Repo::small_chunks();
    let img = image(5 * MIB + 17, 9);
    let path = repo.image("img", &img);
    let out = common::run_ok(
        repo.cmd(&["backup", "--json", "-", "--name", "piped"])
            .stdin(std::fs::File::open(&path).expect("open image")),
    );
    let v = json(&out.stdout);
    let summary = &v[0]["summary"];
    assert_eq!(summary["size"], img.len() as u64);
    let mut stored = HashSet::new();
    assert_eq!(
        counts_of(summary),
        expected_counts(&mut stored, &img, CHUNK)
    );
    repo.assert_restores("piped", &img);

    // Without --name: HOST-stdin.
    common::run_ok(
        repo.cmd(&["backup", "-q", "-"])
            .stdin(std::fs::File::open(&path).expect("open image")),
    );
    let snaps = repo.snapshots();
    let names: Vec<&str> = snaps.iter().map(|s| str_of(s, "name")).collect();
    assert!(
        names.contains(&format!("{}-stdin", hostname()).as_str()),
        "{names:?}"
    );
    assert!(snaps.iter().all(|s| s["source"] == "-"));
}

#[test]
fn grown_shrunk_empty_and_odd_sized_images() {
    let repo = Repo::small_chunks();
    let base = image(10 * MIB, 11);
    let sizes = [
        3 * MIB + 12345,
        9 * MIB + 1,
        MIB + 3,
        0,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * MIB,
    ];
    let mut stored = HashSet::new();
    let mut made = Vec::new();
    for (k, size) in sizes.into_iter().enumerate() {
        let mut img = base[..size].to_vec();
        if size > CHUNK {
            change_chunks(&mut img, CHUNK, &[0], 110 + k as u64);
        }
        let path = repo.image(&format!("img-{k}"), &img);
        let summary = repo.backup(&path, "sizes", &[]);
        assert_eq!(summary["size"], size as u64);
        assert_eq!(
            counts_of(&summary),
            expected_counts(&mut stored, &img, CHUNK),
            "size {size}"
        );
        made.push((str_of(&summary, "snapshot").to_string(), img));
    }
    for (id, img) in &made {
        repo.assert_restores(id, img);
    }
    let sizes_listed: Vec<u64> = repo
        .snapshots()
        .iter()
        .map(|s| s["size"].as_u64().expect("size"))
        .collect();
    assert_eq!(sizes_listed.len(), sizes.len());
    repo.verify_ok(true);

    // The empty image restores to an empty file, and in place.
    let empty_id = &made[3].0;
    let target = repo.image("non-empty", b"something");
    common::run_ok(
        repo.cmd(&["restore", empty_id, "-q", "--in-place"])
            .arg(&target),
    );
    assert_eq!(std::fs::metadata(&target).expect("stat").len(), 0);
}

#[test]
fn round_trips_at_the_smallest_default_and_largest_chunk_sizes() {
    // 1M is the digest's segment size (chunk ids double as segment
    // hashes); 16K and 4M take the other paths.
    for (text, chunk) in [("16K", 16 * KIB), ("1M", MIB), ("4M", 4 * MIB)] {
        let repo = Repo::init(Some(text));
        let v1 = image(9 * MIB + 123, 12);
        let mut v2 = v1.clone();
        let last = v1.len().div_ceil(chunk) - 1;
        change_chunks(&mut v2, chunk, &[0, last], 13);
        v2[chunk..2 * chunk].fill(0);
        let p1 = repo.image("v1", &v1);
        let p2 = repo.image("v2", &v2);
        let mut stored = HashSet::new();
        let s1 = repo.backup(&p1, "c", &[]);
        assert_eq!(
            counts_of(&s1),
            expected_counts(&mut stored, &v1, chunk),
            "{text}"
        );
        let s2 = repo.backup(&p2, "c", &[]);
        assert_eq!(
            counts_of(&s2),
            expected_counts(&mut stored, &v2, chunk),
            "{text}"
        );
        repo.assert_restores(str_of(&s1, "snapshot"), &v1);
        let (data, _) = repo.restore_stdout(str_of(&s2, "snapshot"));
        assert!(data == v2, "{text}: restore to stdout");
        let target = repo.image("target", &v1);
        let out = common::run_ok(
            repo.cmd(&["restore", str_of(&s2, "snapshot"), "--json", "--in-place"])
                .arg(&target),
        );
        let r = json(&out.stdout);
        let (fetched, unchanged) = in_place_expectation(&v1, &v2, chunk);
        assert_eq!(r["chunks_fetched"], fetched, "{text}: {r}");
        assert_eq!(r["chunks_unchanged"], unchanged, "{text}: {r}");
        assert!(
            std::fs::read(&target).expect("read") == v2,
            "{text}: in place"
        );
        repo.verify_ok(true);
    }
}

// --- incremental backups and dedup -------------------------------------------

#[test]
fn incremental_backups_store_only_what_changed() {
    let repo = Repo::small_chunks();
    let mut stored = HashSet::new();
    let v1 = image(32 * MIB, 21);
    let p1 = repo.image("v1", &v1);
    let s1 = repo.backup(&p1, "inc", &[]);
    assert_eq!(counts_of(&s1), expected_counts(&mut stored, &v1, CHUNK));
    assert_eq!(s1["parent"], Value::Null);
    assert_eq!(s1["adopted_packs"], 0);

    let mut v2 = v1.clone();
    let changed = [0, 7, 99, 100, 101, 250, 300, 511];
    change_chunks(&mut v2, CHUNK, &changed, 22);
    let p2 = repo.image("v2", &v2);
    let s2 = repo.backup(&p2, "inc", &[]);
    let c2 = counts_of(&s2);
    assert_eq!(c2, expected_counts(&mut stored, &v2, CHUNK));
    assert_eq!(c2.new, changed.len() as u64);
    assert!(c2.reused > 0);
    assert_eq!(s2["parent"], s1["snapshot"]);
    let added = s2["bytes_added"].as_u64().expect("bytes_added");
    let changed_bytes = (changed.len() * CHUNK) as u64;
    assert!(
        // Pack trailer, index file and snapshot, and in an encrypted
        // repository 40 bytes per chunk and 56 per object of sealing.
        added >= changed_bytes && added < changed_bytes + 17 * KIB as u64,
        "{added} bytes added for {changed_bytes} bytes of random changes"
    );

    // The same image again adds only a snapshot.
    let packs_before = repo.status()["packs"].clone();
    let s3 = repo.backup(&p2, "inc", &[]);
    let c3 = counts_of(&s3);
    assert_eq!(c3.new, 0);
    assert_eq!(c3.reused + c3.zero, v2.len().div_ceil(CHUNK) as u64);
    // The snapshot file: 32 bytes per chunk id; random ids do not compress.
    let list = (v2.len() / CHUNK * 32) as u64;
    assert!(
        s3["bytes_added"].as_u64().expect("bytes_added") < list + 2 * KIB as u64,
        "{s3}"
    );
    assert_eq!(s3["digest"], s2["digest"]);
    assert_eq!(repo.status()["packs"], packs_before);

    // Another name: dedup across names.
    let s4 = repo.backup(&p2, "other-name", &[]);
    assert_eq!(s4["new_chunks"], 0);
    assert_eq!(s4["parent"], Value::Null);
    let mut v5 = v2[..16 * MIB].to_vec();
    v5.extend_from_slice(&image(16 * MIB, 23));
    let p5 = repo.image("v5", &v5);
    let s5 = repo.backup(&p5, "third", &[]);
    let c5 = counts_of(&s5);
    assert_eq!(c5, expected_counts(&mut stored, &v5, CHUNK));
    assert!(c5.reused >= 100 && c5.new >= 100, "{c5:?}");

    for (spec, img) in [
        (str_of(&s1, "snapshot"), &v1),
        (str_of(&s2, "snapshot"), &v2),
        (str_of(&s3, "snapshot"), &v2),
        ("third", &v5),
    ] {
        repo.assert_restores(spec, img);
    }
    let status = repo.status();
    assert_eq!(status["chunks"], stored.len() as u64);
    assert_eq!(status["snapshots"], 5);
}

// --- listing and choosing snapshots ------------------------------------------

#[test]
fn snapshot_listing_and_selection() {
    let repo = Repo::small_chunks();
    let a = image(256 * KIB, 31);
    let b = image(256 * KIB + 3, 32);
    let c = image(200 * KIB, 33);
    let pa = repo.image("a.img", &a);
    let pb = repo.image("b.img", &b);
    let pc = repo.image("c.img", &c);
    let sa = repo.backup(
        &pa,
        "web",
        &[
            "--tag",
            "nightly",
            "--tag",
            "db",
            "--time",
            "2026-03-01T10:00:00+02:00",
        ],
    );
    let sb = repo.backup(&pb, "web", &["--time", "2026-03-05"]);
    // Made last, but dated between the two.
    let sc = repo.backup(&pc, "web", &["--time", "2026-03-03T12:30:00Z"]);

    let snaps = repo.snapshots();
    assert_eq!(snaps.len(), 3);
    let times: Vec<&str> = snaps.iter().map(|s| str_of(s, "time")).collect();
    assert_eq!(
        times,
        [
            "2026-03-01T08:00:00Z",
            "2026-03-03T12:30:00Z",
            "2026-03-05T00:00:00Z"
        ],
        "oldest first, in UTC"
    );
    let first = &snaps[0];
    assert_eq!(first["id"], sa["snapshot"]);
    assert_eq!(first["name"], "web");
    assert_eq!(first["size"], a.len() as u64);
    assert_eq!(first["source"], pa.display().to_string());
    assert_eq!(first["host"], hostname());
    assert_eq!(first["tags"], serde_json::json!(["nightly", "db"]));
    assert_eq!(first["chunk_size"], 65536);
    assert_eq!(snaps[1]["tags"], serde_json::json!([]));
    for s in &snaps {
        let id = str_of(s, "id");
        assert!(
            id.len() == 64
                && id
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{id}"
        );
        assert!(is_rfc3339_utc(str_of(s, "time")));
    }
    // Snapshots made without --time are dated now.
    let sd = repo.backup(&pa, "now", &[]);
    let snaps = repo.snapshots();
    let now_snap = snaps
        .iter()
        .find(|s| s["id"] == sd["snapshot"])
        .expect("listed");
    let t = str_of(now_snap, "time");
    assert!(is_rfc3339_utc(t));
    let when = diskdelta::repo::time::parse_rfc3339(t).expect("parses");
    assert!((when - now()).abs() < 300, "{t} is not now");

    // Filter by name.
    let out = common::run_ok(&mut repo.cmd(&["snapshots", "web", "--json"]));
    assert_eq!(json(&out.stdout).as_array().map(Vec::len), Some(3));
    let out = common::run_ok(&mut repo.cmd(&["snapshots", "nobody", "--json"]));
    assert_eq!(json(&out.stdout), serde_json::json!([]));

    // A name means its latest snapshot by time, not the one made last.
    repo.assert_restores("web", &b);
    // Full ids, unique prefixes.
    for (s, img) in [(&sa, &a), (&sb, &b), (&sc, &c)] {
        let id = str_of(s, "snapshot");
        repo.assert_restores(id, img);
        repo.assert_restores(&id.to_uppercase(), img);
        let others: Vec<String> = repo
            .snapshots()
            .iter()
            .map(|x| str_of(x, "id").to_string())
            .filter(|x| x != id)
            .collect();
        let unique = (1..=64)
            .map(|n| &id[..n])
            .find(|p| others.iter().all(|o| !o.starts_with(p)))
            .expect("some prefix is unique");
        repo.assert_restores(unique, img);
    }

    // Enough snapshots that two share a first hex digit: ambiguous.
    for day in 1..=14 {
        repo.backup(&pc, "many", &["--time", &format!("2026-04-{day:02}")]);
    }
    let ids: Vec<String> = repo
        .snapshots()
        .iter()
        .map(|x| str_of(x, "id").to_string())
        .collect();
    assert_eq!(ids.len(), 18);
    let digit = (b'0'..=b'f')
        .map(char::from)
        .find(|d| ids.iter().filter(|i| i.starts_with(*d)).count() >= 2)
        .expect("18 ids over 16 digits share one");
    let count = ids.iter().filter(|i| i.starts_with(digit)).count();
    let err = fails_with(
        &mut repo.cmd(&["restore", &digit.to_string(), "-o", "/dev/null"]),
        1,
        "ambiguous prefix",
    );
    assert!(err.contains(&format!("matches {count} snapshots")), "{err}");
    assert!(!repo.dir().join("out").exists());

    let err = fails_with(
        &mut repo.cmd(&["restore", "no-such-snapshot", "-o", "/dev/null"]),
        1,
        "unknown snapshot",
    );
    assert!(
        err.contains("no snapshot matches \"no-such-snapshot\""),
        "{err}"
    );

    let err = fails_with(
        repo.cmd(&["backup", "--time", "last tuesday", "--name", "t"])
            .arg(&pa),
        1,
        "bad --time",
    );
    assert!(err.contains("--time"), "{err}");
}

/// Two backups of one name within one second: the second is the latest.
#[test]
fn the_later_of_two_backups_in_one_second_is_the_latest() {
    let repo = Repo::small_chunks();
    let v1 = image(64 * KIB, 35);
    let v2 = image(64 * KIB, 36);
    let p1 = repo.image("v1", &v1);
    let p2 = repo.image("v2", &v2);
    let mut same_second = 0;
    for k in 0..8 {
        let name = format!("quick{k}");
        let s1 = repo.backup(&p1, &name, &[]);
        let s2 = repo.backup(&p2, &name, &[]);
        let times: Vec<String> = repo
            .snapshots()
            .iter()
            .filter(|s| s["name"] == name.as_str())
            .map(|s| str_of(s, "time").to_string())
            .collect();
        if times[0] != times[1] {
            continue;
        }
        same_second += 1;
        assert_eq!(s2["parent"], s1["snapshot"]);
        repo.assert_restores(&name, &v2);
        let s3 = repo.backup(&p2, &name, &[]);
        assert_eq!(
            s3["parent"], s2["snapshot"],
            "{name}: parent of the third backup"
        );
    }
    assert!(same_second > 0, "no two backups fell into one second");
}

// --- crash safety --------------------------------------------------------------

/// Kills `child` with SIGKILL unless it has finished; true when killed.
fn kill_9(child: &mut Child) -> bool {
    let running = child.try_wait().expect("try_wait").is_none();
    if running {
        child.kill().expect("kill -9");
    }
    child.wait().expect("wait");
    running
}

/// Ctrl-C (or SIGTERM) in the middle of a backup exits 130 and takes the
/// backup's lock with it: the next gc finds no stale lock to complain of.
/// The source is a pipe fed halfway and held open, so the backup is
/// certainly mid-stream when the signal comes.
#[test]
fn an_interrupted_backup_releases_its_lock() {
    use std::io::Write;
    let repo = Repo::small_chunks();
    let img = random(8 * MIB, 77, 0);
    for signal in ["-INT", "-TERM"] {
        let mut child = repo
            .cmd(&["backup", "-q", "-", "--name", "piped"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backup");
        let mut feed = child.stdin.take().expect("stdin");
        feed.write_all(&img[..4 * MIB]).expect("feed half");
        common::wait_until("a lock", || !repo.objects("locks").is_empty());
        common::send_signal(child.id(), signal);
        let out = child.wait_with_output().expect("wait");
        drop(feed);
        assert_eq!(out.status.code(), Some(130), "{signal}");
        assert!(
            repo.objects("locks").is_empty(),
            "{signal}: lock left behind"
        );
        let gc = common::run_ok(&mut repo.cmd(&["gc"]));
        let err = String::from_utf8_lossy(&gc.stderr);
        assert!(!err.contains("stale"), "{signal}: {err}");
        assert!(repo.snapshots().is_empty());
        repo.verify_ok(true);
    }
}

#[test]
fn backups_killed_at_random_points_leave_a_valid_repository() {
    let repo = Repo::small_chunks();
    let delays_ms = [5u64, 40, 150, 400, 1000];
    let mut killed = 0;
    let mut adopted_seen = false;
    let mut last = (String::new(), Vec::new());
    // Rounds 0..5 kill after a delay; round 5 kills as soon as a pack was
    // written (so that orphan packs certainly exist once).
    for round in 0..=delays_ms.len() {
        let mut img = random(64 * MIB, 900 + round as u64, 0);
        // Some zeros and compressible text too.
        img[10 * MIB..12 * MIB].fill(0);
        img[40 * MIB..41 * MIB].copy_from_slice(&image(MIB, 901)[..]);
        let path = repo.image("crash.img", &img);
        let packs_before = repo.objects("data").len();
        let mut child = repo
            .backup_cmd(&path, "crash", &["--threads", "1"])
            .spawn()
            .expect("spawn backup");
        if let Some(&delay) = delays_ms.get(round) {
            let jitter = mix(round as u64) % (delay / 2 + 1);
            std::thread::sleep(Duration::from_millis(delay + jitter));
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            while repo.objects("data").len() == packs_before
                && child.try_wait().expect("try_wait").is_none()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if kill_9(&mut child) {
            killed += 1;
        }
        let report = repo.verify_ok(false);
        let orphans = report["orphan_packs"].as_u64().expect("orphan_packs");
        let summary = repo.backup(&path, "crash", &["--threads", "1"]);
        let id = str_of(&summary, "snapshot");
        assert_eq!(
            summary["adopted_packs"], orphans,
            "round {round}: the next backup adopts the {orphans} orphan packs"
        );
        if orphans > 0 {
            adopted_seen = true;
        }
        repo.assert_restores(id, &img);
        assert_eq!(repo.verify_ok(false)["orphan_packs"], 0);
        last = (id.to_string(), img);
    }
    assert!(killed >= 1, "no backup was killed while running");
    assert!(adopted_seen, "no kill left orphan packs to adopt");
    repo.verify_ok(true);
    // Writers killed in a put leave temporary files; gc removes them once
    // they are old enough not to belong to anyone alive.
    let temps = temporaries(&repo.path);
    for t in &temps {
        backdate(&repo.path.join(t));
    }
    let gc = json(&common::run_ok(&mut repo.cmd(&["gc", "--json"])).stdout);
    assert_eq!(gc["temporaries_removed"], temps.len() as u64, "{gc}");
    assert_eq!(temporaries(&repo.path), Vec::<String>::new());
    repo.verify_ok(true);
    repo.assert_restores(&last.0, &last.1);
}

/// Temporary files (`.tmp-*`) under `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|k| k.rsplit('/').next().unwrap_or("").starts_with(".tmp-"))
        .collect()
}

/// Sets a file's modification time an hour back.
fn backdate(path: &Path) {
    common::run_ok(Command::new("touch").args(["-d", "1 hour ago"]).arg(path));
}

#[test]
fn gc_removes_old_temporary_files_of_killed_writers() {
    let repo = Repo::small_chunks();
    let img = image(MIB, 105);
    let path = repo.image("img", &img);
    repo.backup(&path, "t", &[]);
    let old_pack = repo.path.join("data/ab/.tmp-1-dead-0");
    let old_lock = repo.path.join("locks/.tmp-1-dead-1");
    let fresh = repo.path.join("data/cd/.tmp-2-busy-0");
    for p in [&old_pack, &old_lock, &fresh] {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, random(100 * KIB, 106, 0)).expect("write");
    }
    backdate(&old_pack);
    backdate(&old_lock);
    let before = tree(&repo.path);
    let dry = json(&common::run_ok(&mut repo.cmd(&["gc", "--dry-run", "--json"])).stdout);
    assert_eq!(dry["temporaries_removed"], 0);
    assert_eq!(tree(&repo.path), before, "gc --dry-run removed something");
    let gc = json(&common::run_ok(&mut repo.cmd(&["gc", "--json"])).stdout);
    assert_eq!(gc["temporaries_removed"], 2, "{gc}");
    assert!(!old_pack.exists() && !old_lock.exists());
    assert!(
        fresh.exists(),
        "a recent temporary file may belong to a live writer"
    );
    repo.assert_restores("t", &img);
}

// --- concurrency and locks -------------------------------------------------------

#[test]
fn concurrent_backups_into_one_repository() {
    let repo = Repo::small_chunks();
    for round in 0..2u64 {
        // Half of the two images is the same: both backups store it at once.
        let shared = image(12 * MIB, 40 + round);
        let a = [shared.clone(), image(12 * MIB, 50 + round)].concat();
        let b = [image(4 * MIB, 60 + round), shared].concat();
        let pa = repo.image(&format!("a{round}"), &a);
        let pb = repo.image(&format!("b{round}"), &b);
        // One date per round: a name means its latest snapshot.
        let time = format!("2026-0{}-01", round + 1);
        let ca = repo
            .backup_cmd(&pa, "left", &["--time", &time])
            .spawn()
            .expect("spawn");
        let cb = repo
            .backup_cmd(&pb, "right", &["--time", &time])
            .spawn()
            .expect("spawn");
        for (what, child) in [("left", ca), ("right", cb)] {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "{what}: {}", stderr(&out));
        }
        repo.assert_restores("left", &a);
        repo.assert_restores("right", &b);
    }
    repo.verify_ok(true);
    let gc = json(&common::run_ok(&mut repo.cmd(&["gc", "--json"])).stdout);
    assert_eq!(gc["orphan_packs_deleted"], 0);
    repo.verify_ok(true);
    assert_eq!(repo.snapshots().len(), 4);
    for s in repo.snapshots() {
        common::run_ok(&mut repo.cmd(&["restore", str_of(&s, "id"), "-o", "/dev/null"]));
    }
}

#[test]
fn gc_racing_a_backup() {
    let repo = Repo::small_chunks();
    // Garbage for gc to remove.
    let old = repo.image("old", &image(8 * MIB, 70));
    let s_old = repo.backup(&old, "old", &[]);
    common::run_ok(&mut repo.cmd(&["forget", "-q", str_of(&s_old, "snapshot")]));

    let mut saw_locked = false;
    for (round, delay) in [0u64, 30, 120, 400, 5].into_iter().enumerate() {
        let img = random(32 * MIB, 71 + round as u64, 0);
        // One date per round: a name means its latest snapshot.
        let time = format!("2026-01-0{}", round + 1);
        let path = repo.image("new", &img);
        let mut child = repo
            .backup_cmd(&path, "new", &["--threads", "1", "--time", &time])
            .spawn()
            .expect("spawn backup");
        if round == 4 {
            // Wait until the backup holds its lock: gc must refuse now.
            let deadline = Instant::now() + Duration::from_secs(30);
            while repo.objects("locks").is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let gc = repo.cmd(&["gc", "-q"]).output().expect("run gc");
        let backup_done = child.try_wait().expect("try_wait").is_some();
        if gc.status.success() {
            assert!(
                round != 4 || backup_done,
                "gc ran while a backup held its lock"
            );
        } else {
            let err = one_line_error(&gc, "gc during a backup");
            assert!(err.contains("locked"), "{err}");
            assert_eq!(gc.status.code(), Some(1));
            saw_locked = true;
        }
        let out = child.wait_with_output().expect("wait");
        if !out.status.success() {
            // gc held its lock when the backup started.
            let err = stderr(&out);
            assert!(err.contains("locked"), "backup failed: {err}");
            repo.backup(&path, "new", &["--time", &time]);
        }
        repo.verify_ok(false);
        repo.assert_restores("new", &img);
    }
    assert!(saw_locked, "gc never met the backup's lock");
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    repo.verify_ok(true);
    assert!(repo.objects("locks").is_empty(), "locks left behind");
}

/// Writes a lock object as `src/repo/lock.rs` does; returns its path.
fn write_lock(
    repo: &Repo,
    host: &str,
    pid: u32,
    time: i64,
    exclusive: bool,
    command: &str,
) -> PathBuf {
    let dir = repo.path.join("locks");
    std::fs::create_dir_all(&dir).expect("mkdir locks");
    let body = serde_json::json!({
        "host": host,
        "pid": pid,
        "time": time,
        "exclusive": exclusive,
        "command": command,
    });
    let bytes = serde_json::to_vec(&body).expect("encode lock");
    let name = &blake3::hash(&[&bytes[..], &rand_u64().to_le_bytes()].concat()).to_hex()[..32];
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write lock");
    path
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

#[test]
fn stale_locks_are_reported_and_unlock_removes_them() {
    let repo = Repo::small_chunks();
    let img = image(2 * MIB, 80);
    let path = repo.image("img", &img);
    repo.backup(&path, "s", &[]);

    let dead = write_lock(&repo, &hostname(), dead_pid(), now(), true, "gc");
    let old = write_lock(
        &repo,
        "elsewhere.example",
        1,
        now() - 7200,
        true,
        "forget --prune",
    );
    // gc warns and runs.
    let out = common::run_ok(&mut repo.cmd(&["gc", "--json"]));
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("stale") && err.contains("is gone"),
        "{err}"
    );
    assert!(err.contains("not refreshed"), "{err}");
    let report = json(&out.stdout);
    assert_eq!(
        report["stale_locks"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    // So does a backup.
    let out = common::run_ok(repo.cmd(&["backup", "--name", "s"]).arg(&path));
    assert!(stderr(&out).contains("stale"), "{}", stderr(&out));
    assert!(
        dead.exists() && old.exists(),
        "only unlock removes stale locks"
    );

    // A live lock stays unless --all.
    let live = write_lock(
        &repo,
        &hostname(),
        std::process::id(),
        now(),
        false,
        "backup x",
    );
    let out = common::run_ok(&mut repo.cmd(&["unlock", "--json"]));
    let removed = json(&out.stdout);
    assert_eq!(
        removed["removed"].as_array().map(Vec::len),
        Some(2),
        "{removed}"
    );
    assert!(!dead.exists() && !old.exists());
    assert!(live.exists());
    common::run_ok(&mut repo.cmd(&["unlock", "-q", "--all"]));
    assert!(!live.exists());
    assert!(repo.objects("locks").is_empty());

    // An unreadable lock may be a live backup's, damaged: a backup goes
    // past it, gc (which deletes) refuses until `unlock` removes it.
    let junk = repo
        .path
        .join("locks")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::write(&junk, b"not json").expect("write junk lock");
    common::run_ok(repo.cmd(&["backup", "--name", "s", "-q"]).arg(&path));
    let refused = repo.cmd(&["gc", "-q"]).output().expect("run gc");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = stderr(&refused);
    assert!(
        err.contains("unreadable lock")
            && err.contains("diskdelta unlock")
            && err.lines().count() == 1,
        "{err}"
    );
    common::run_ok(&mut repo.cmd(&["unlock", "-q"]));
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    assert!(!junk.exists());
    repo.assert_restores("s", &img);
}

#[test]
fn live_locks_block_what_conflicts_with_them() {
    let repo = Repo::small_chunks();
    let img = image(2 * MIB, 81);
    let path = repo.image("img", &img);
    repo.backup(&path, "s", &[]);
    let me = std::process::id();

    let excl = write_lock(&repo, &hostname(), me, now(), true, "gc");
    for (what, mut cmd) in [
        ("backup", {
            let mut c = repo.cmd(&["backup", "--name", "s"]);
            c.arg(&path);
            c
        }),
        ("gc", repo.cmd(&["gc"])),
        ("forget", repo.cmd(&["forget", "s"])),
    ] {
        let err = fails_with(&mut cmd, 1, what);
        assert!(
            err.contains("locked")
                && err.contains("exclusive lock by `gc`")
                && err.contains(&format!("pid {me}")),
            "{what}: {err}"
        );
    }
    // The failed lockers removed their own locks.
    assert_eq!(repo.objects("locks"), vec![excl.clone()]);
    assert_eq!(repo.snapshots().len(), 1);
    // Readers need no lock.
    repo.assert_restores("s", &img);
    repo.verify_ok(true);
    common::run_ok(&mut repo.cmd(&["status", "-q"]));
    std::fs::remove_file(&excl).expect("remove lock");

    // A live shared lock: backups and forget go on, gc and prune do not.
    let shared = write_lock(&repo, &hostname(), me, now(), false, "backup other");
    repo.backup(&path, "s2", &[]);
    let err = fails_with(&mut repo.cmd(&["gc"]), 1, "gc with a shared lock");
    assert!(
        err.contains("locked") && err.contains("shared lock"),
        "{err}"
    );
    let err = fails_with(
        &mut repo.cmd(&["forget", "--prune", "s2"]),
        1,
        "forget --prune with a shared lock",
    );
    assert!(err.contains("locked"), "{err}");
    assert_eq!(
        repo.snapshots().len(),
        2,
        "forget --prune removed a snapshot while locked"
    );
    common::run_ok(&mut repo.cmd(&["forget", "-q", "s2"]));
    assert_eq!(repo.snapshots().len(), 1);
    std::fs::remove_file(&shared).expect("remove lock");
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    repo.assert_restores("s", &img);
}

// --- corruption ------------------------------------------------------------------

/// The pack holding the chunk of content hash `id`, and its entry (read
/// with the repository's key: pack tables list stored ids).
fn find_blob(repo: &Repo, id: &[u8; 32]) -> (PathBuf, diskdelta::format::pack::PackEntry) {
    let opened = repo.open();
    let stored = opened.stored_id(&diskdelta::id::ChunkId::from_bytes(*id));
    for pack in repo.objects("data") {
        let len = std::fs::metadata(&pack).expect("stat pack").len();
        let name = pack
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let pack_id = diskdelta::id::PackId::from_hex(&name).expect("pack name");
        let entries = opened.read_pack_table(&pack_id, len).expect("intact pack");
        if let Some(e) = entries.iter().find(|e| e.id == stored) {
            return (pack, *e);
        }
    }
    panic!("no pack holds chunk {}", hex::encode(id));
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x55;
    std::fs::write(path, bytes).expect("write");
}

/// Names in `dir` (hidden ones too), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_by_read_data_and_stops_restore() {
    let repo = Repo::small_chunks();
    let victim = image(8 * MIB, 90);
    let bystander = image(4 * MIB, 91);
    let pv = repo.image("victim.img", &victim);
    let pb = repo.image("bystander.img", &bystander);
    let sv = repo.backup(&pv, "victim", &[]);
    repo.backup(&pb, "bystander", &[]);
    let victim_id = str_of(&sv, "snapshot").to_string();

    // A chunk in the middle of the image.
    let ids = chunk_ids(&victim, CHUNK);
    let chunk = ids
        .iter()
        .skip(ids.len() / 2)
        .find_map(|c| *c)
        .expect("a data chunk");
    // Pack tables list chunks by their stored (keyed) ids.
    let chunk_hex = repo
        .open()
        .stored_id(&diskdelta::id::ChunkId::from_bytes(chunk))
        .to_hex();
    let (pack, entry) = find_blob(&repo, &chunk);
    flip_byte(
        &pack,
        u64::from(entry.offset) + u64::from(entry.stored_len) / 2,
    );

    // The structure is intact.
    repo.verify_ok(false);
    let out = common::run_fail(&mut repo.cmd(&["verify", "--read-data"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&chunk_hex), "verify names the chunk: {err}");
    assert!(
        err.contains(&format!("damaged snapshot: {} victim", &victim_id[..8])),
        "verify names the snapshot: {err}"
    );
    assert!(!err.contains("bystander"), "{err}");
    let out = common::run_fail(&mut repo.cmd(&["verify", "--read-data", "--json"]));
    let report = json(&out.stdout);
    let damaged = report["damaged_snapshots"].as_array().expect("list");
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["id"], victim_id.as_str());
    assert_eq!(damaged[0]["name"], "victim");

    // Restore refuses, exit 3, and leaves nothing behind.
    let before = names(repo.dir());
    let out_path = repo.dir().join("out.img");
    let err = fails_with(
        repo.cmd(&["restore", "victim", "-o"]).arg(&out_path),
        EXIT_INTEGRITY,
        "restore of a corrupt chunk",
    );
    assert!(err.contains(&chunk_hex) && err.contains("corrupt"), "{err}");
    assert!(!out_path.exists());
    assert_eq!(names(repo.dir()), before, "restore left files behind");
    // An existing output file stays as it was.
    std::fs::write(&out_path, b"precious").expect("write");
    let out = common::run_fail(repo.cmd(&["restore", "victim", "-o"]).arg(&out_path));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    assert_eq!(std::fs::read(&out_path).expect("read"), b"precious");
    std::fs::remove_file(&out_path).expect("remove");
    // In place, the target keeps everything before the bad chunk's unit at
    // most; the command still fails with 3.
    let target = repo.image("target", &bystander);
    let out = common::run_fail(repo.cmd(&["restore", "victim", "--in-place"]).arg(&target));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{}", stderr(&out));
    // Other snapshots are fine.
    repo.assert_restores("bystander", &bystander);
}

#[test]
fn damaged_index_and_snapshot_files_are_reported() {
    let repo = Repo::small_chunks();
    let img = image(4 * MIB, 92);
    let path = repo.image("img", &img);
    repo.backup(&path, "one", &[]);
    let index = repo.objects("index");
    assert_eq!(index.len(), 1);
    let len = std::fs::metadata(&index[0]).expect("stat").len();
    flip_byte(&index[0], len / 2);
    let key = format!(
        "index/{}",
        index[0].file_name().expect("name").to_string_lossy()
    );
    let out = common::run_fail(&mut repo.cmd(&["verify"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let err = stderr(&out);
    assert!(
        err.contains(&key) && (err.contains("checksum") || err.contains("fails authentication")),
        "{err}"
    );
    assert!(
        err.contains("damaged snapshot:") && err.contains("one"),
        "{err}"
    );
    // Restore gets by: the packs describe themselves; it says so.
    let out_path = repo.dir().join("out");
    let out = common::run_ok(repo.cmd(&["restore", "one", "-o"]).arg(&out_path));
    assert!(
        stderr(&out).contains(&key) && stderr(&out).contains("damaged"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&out_path).expect("restored"), img);
    // gc replaces the damaged file with an index built from the packs'
    // own tables, deleting nothing that is referenced.
    let out = common::run_ok(&mut repo.cmd(&["gc", "--json"]));
    let report = json(&out.stdout);
    assert_eq!(
        report["damaged_index_files"][0].as_str(),
        Some(key.as_str()),
        "{report}"
    );
    assert_eq!(report["packs_deleted"], 0, "{report}");
    repo.verify_ok(true);
    repo.assert_restores("one", &img);

    let repo = Repo::small_chunks();
    let path = repo.image("img", &img);
    let s = repo.backup(&path, "one", &[]);
    let snap = repo.objects("snapshots");
    assert_eq!(snap.len(), 1);
    flip_byte(&snap[0], 40);
    let out = common::run_fail(&mut repo.cmd(&["verify"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("snapshots/{}", str_of(&s, "snapshot"))),
        "verify names the snapshot: {err}"
    );
    assert!(err.contains(&str_of(&s, "snapshot")[..8]), "{err}");
    let out = common::run_fail(&mut repo.cmd(&["restore", "one", "-o", "/dev/null"]));
    one_line_error(&out, "restore of a damaged snapshot");
}

/// Packs describe themselves: an index file lost (say, deleted after it
/// was found damaged) is rebuilt from the packs' trailers by the next
/// backup, and every snapshot restores again.
#[test]
fn a_lost_index_file_is_rebuilt_by_the_next_backup() {
    let repo = Repo::small_chunks();
    let one = image(6 * MIB, 96);
    let two = image(MIB, 97);
    let p1 = repo.image("one", &one);
    let p2 = repo.image("two", &two);
    let s1 = repo.backup(&p1, "one", &[]);
    let index = repo.objects("index");
    assert_eq!(index.len(), 1);
    std::fs::remove_file(&index[0]).expect("delete index file");

    let out = common::run_fail(&mut repo.cmd(&["verify", "--json"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let report = json(&out.stdout);
    assert_eq!(report["orphan_packs"], 1, "{report}");
    assert_eq!(report["damaged_snapshots"][0]["id"], s1["snapshot"]);
    let out = common::run_fail(&mut repo.cmd(&["restore", "one", "-o", "/dev/null"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{}", stderr(&out));

    let s2 = repo.backup(&p2, "two", &[]);
    assert_eq!(s2["adopted_packs"], 1);
    let report = repo.verify_ok(true);
    assert_eq!(report["orphan_packs"], 0);
    repo.assert_restores("one", &one);
    repo.assert_restores("two", &two);
    // And the next backup of the first image finds all of its chunks.
    let again = repo.backup(&p1, "one", &[]);
    assert_eq!(again["new_chunks"], 0);
}

/// One damaged index file should not stop backups: its packs can be
/// adopted from their own trailers, as after a crash.
#[test]
fn a_damaged_index_file_does_not_stop_backups() {
    let repo = Repo::small_chunks();
    let one = image(4 * MIB, 98);
    let two = image(MIB, 99);
    let p1 = repo.image("one", &one);
    let p2 = repo.image("two", &two);
    repo.backup(&p1, "one", &[]);
    let index = repo.objects("index");
    let len = std::fs::metadata(&index[0]).expect("stat").len();
    flip_byte(&index[0], len / 2);
    let s2 = repo.backup(&p2, "two", &[]);
    assert_eq!(s2["adopted_packs"], 1);
    repo.assert_restores("one", &one);
    repo.assert_restores("two", &two);
}

/// A damaged snapshot file does not stop the others from being used, and
/// it can be forgotten by its id (else gc, which must read every snapshot,
/// stays blocked until someone deletes the file by hand).
#[test]
fn a_damaged_snapshot_does_not_block_the_others() {
    let repo = Repo::small_chunks();
    let a = image(2 * MIB, 93);
    let b = image(2 * MIB, 94);
    let pa = repo.image("a", &a);
    let pb = repo.image("b", &b);
    let sa = repo.backup(&pa, "a", &[]);
    let sb = repo.backup(&pb, "b", &[]);
    let damaged = repo.path.join("snapshots").join(str_of(&sb, "snapshot"));
    flip_byte(&damaged, 40);
    // The intact snapshot restores, by id and by name.
    repo.assert_restores(str_of(&sa, "snapshot"), &a);
    repo.assert_restores("a", &a);
    // Backups go on.
    repo.backup(&pa, "a", &[]);
    // gc refuses while a snapshot cannot be read.
    let out = common::run_fail(&mut repo.cmd(&["gc"]));
    one_line_error(&out, "gc with a damaged snapshot");
    // The damaged one can be forgotten by its full id; then gc runs.
    common::run_ok(&mut repo.cmd(&["forget", "-q", str_of(&sb, "snapshot")]));
    assert!(!damaged.exists());
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    repo.verify_ok(true);
}

#[test]
fn a_missing_pack_is_reported_and_restore_writes_nothing() {
    let repo = Repo::small_chunks();
    // 48 MiB of random data: two packs (32 MiB and 16 MiB).
    let img = random(48 * MIB, 95, 0);
    let path = repo.image("img", &img);
    let s = repo.backup(&path, "gone", &[]);
    let id = str_of(&s, "snapshot");
    let packs = repo.objects("data");
    assert_eq!(packs.len(), 2);
    let last = chunk_ids(&img, CHUNK)
        .last()
        .copied()
        .flatten()
        .expect("last chunk has data");
    let (pack, _) = find_blob(&repo, &last);
    std::fs::remove_file(&pack).expect("delete pack");
    let pack_hex = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    let out = common::run_fail(&mut repo.cmd(&["verify"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let err = stderr(&out);
    assert!(err.contains(&pack_hex) && err.contains("missing"), "{err}");
    assert!(
        err.contains(&format!("damaged snapshot: {} gone", &id[..8])),
        "{err}"
    );

    let before = names(repo.dir());
    let out_path = repo.dir().join("out.img");
    let err = fails_with(
        repo.cmd(&["restore", "gone", "-o"]).arg(&out_path),
        EXIT_INTEGRITY,
        "restore with a missing pack",
    );
    assert!(err.contains(&pack_hex) && err.contains("missing"), "{err}");
    assert!(!out_path.exists());
    assert_eq!(names(repo.dir()), before);
    // To a stream, nothing may be written either: the check comes first.
    let out = common::run_fail(&mut repo.cmd(&["restore", "gone"]));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 0, "restore wrote data before failing");
    // In place: the target is not touched.
    let target_content = random(48 * MIB, 96, 0);
    let target = repo.image("target", &target_content);
    let out = common::run_fail(repo.cmd(&["restore", "gone", "--in-place"]).arg(&target));
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{}", stderr(&out));
    assert!(
        std::fs::read(&target).expect("read") == target_content,
        "target was written"
    );
}

// --- forget and gc -----------------------------------------------------------------

/// `forget ARGS --dry-run --json`: snapshot id -> (keep, reasons).
fn forget_plan(repo: &Repo, args: &[&str]) -> BTreeMap<String, (bool, Vec<String>)> {
    let mut cmd = repo.cmd(&["forget", "--dry-run", "--json"]);
    cmd.args(args);
    let report = json(&common::run_ok(&mut cmd).stdout);
    assert_eq!(report["dry_run"], true);
    let decisions = report["decisions"].as_array().expect("decisions");
    let plan: BTreeMap<String, (bool, Vec<String>)> = decisions
        .iter()
        .map(|d| {
            let reasons = d["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .map(|r| r.as_str().expect("reason").to_string())
                .collect();
            (
                str_of(d, "id").to_string(),
                (d["keep"].as_bool().expect("keep"), reasons),
            )
        })
        .collect();
    let removed = plan.values().filter(|(keep, _)| !keep).count();
    assert_eq!(report["removed"], removed as u64);
    plan
}

#[test]
fn forget_keep_policies_match_a_hand_worked_plan() {
    let repo = Repo::small_chunks();
    let img = image(64 * KIB, 100);
    let path = repo.image("img", &img);
    // Name "s", oldest first. 2026-01-05 and 2026-03-02 are Mondays.
    let s_times = [
        "2026-01-05T10:00:00Z", // s1
        "2026-01-20T10:00:00Z", // s2
        "2026-02-10T10:00:00Z", // s3
        "2026-02-25T10:00:00Z", // s4
        "2026-03-02T08:00:00Z", // s5  Monday, week 10
        "2026-03-02T20:00:00Z", // s6  same day
        "2026-03-04T09:00:00Z", // s7  Wednesday, week 10
        "2026-03-09T09:00:00Z", // s8  Monday, week 11
        "2026-03-10T09:00:00Z", // s9  Tuesday, week 11
    ];
    // Name "t": 2025-12-31 (a Wednesday, ISO week 1 of 2026) and 2026-03-10.
    let t_times = ["2025-12-31T23:00:00Z", "2026-03-10T12:00:00Z"];
    let mut s = Vec::new();
    for t in s_times {
        s.push(str_of(&repo.backup(&path, "s", &["--time", t]), "snapshot").to_string());
    }
    let mut t = Vec::new();
    for time in t_times {
        t.push(str_of(&repo.backup(&path, "t", &["--time", time]), "snapshot").to_string());
    }
    let all: BTreeSet<String> = s.iter().chain(&t).cloned().collect();
    assert_eq!(all.len(), 11);

    // Expected: which s (1-based) and t are kept, with which reasons.
    let expect = |s_keep: &[(usize, &[&str])], t_keep: &[(usize, &[&str])]| {
        let mut m: BTreeMap<String, (bool, Vec<String>)> = s
            .iter()
            .chain(&t)
            .map(|id| (id.clone(), (false, vec![])))
            .collect();
        for (ids, keep) in [(&s, s_keep), (&t, t_keep)] {
            for (n, reasons) in keep {
                m.insert(
                    ids[n - 1].clone(),
                    (true, reasons.iter().map(|r| r.to_string()).collect()),
                );
            }
        }
        m
    };
    assert_eq!(
        forget_plan(&repo, &["--keep-last", "2"]),
        expect(
            &[(9, &["last"]), (8, &["last"])],
            &[(2, &["last"]), (1, &["last"])]
        )
    );
    assert_eq!(
        forget_plan(&repo, &["--keep-daily", "3"]),
        expect(
            &[(9, &["daily"]), (8, &["daily"]), (7, &["daily"])],
            &[(2, &["daily"]), (1, &["daily"])]
        )
    );
    // s5 shares its day with the newer s6.
    assert_eq!(
        forget_plan(&repo, &["--keep-daily", "5"]),
        expect(
            &[
                (9, &["daily"]),
                (8, &["daily"]),
                (7, &["daily"]),
                (6, &["daily"]),
                (4, &["daily"])
            ],
            &[(2, &["daily"]), (1, &["daily"])]
        )
    );
    assert_eq!(
        forget_plan(&repo, &["--keep-weekly", "2", "--keep-monthly", "2"]),
        expect(
            &[
                (9, &["weekly", "monthly"]),
                (7, &["weekly"]),
                (4, &["monthly"])
            ],
            &[(2, &["weekly", "monthly"]), (1, &["weekly", "monthly"])]
        )
    );
    assert_eq!(
        forget_plan(&repo, &["--keep-last", "1", "--keep-monthly", "3"]),
        expect(
            &[
                (9, &["last", "monthly"]),
                (4, &["monthly"]),
                (2, &["monthly"])
            ],
            &[(2, &["last", "monthly"]), (1, &["monthly"])]
        )
    );
    // --name limits the policy to one name.
    let only_s = forget_plan(&repo, &["--keep-last", "1", "--name", "s"]);
    assert_eq!(only_s.len(), 9);
    assert!(only_s.keys().all(|id| s.contains(id)));
    // Nothing was removed by the dry runs.
    assert_eq!(repo.snapshots().len(), 11);

    // For real.
    let out = common::run_ok(&mut repo.cmd(&[
        "forget",
        "--json",
        "--keep-weekly",
        "2",
        "--keep-monthly",
        "2",
    ]));
    let report = json(&out.stdout);
    assert_eq!(report["removed"], 6);
    assert_eq!(report["dry_run"], false);
    let left: BTreeSet<String> = repo
        .snapshots()
        .iter()
        .map(|x| str_of(x, "id").to_string())
        .collect();
    let kept: BTreeSet<String> = [&s[8], &s[6], &s[3], &t[0], &t[1]]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(left, kept);

    // Errors: both forms, neither, an unknown name.
    fails_with(
        &mut repo.cmd(&["forget", &s[8], "--keep-last", "1"]),
        1,
        "ids and a policy",
    );
    fails_with(&mut repo.cmd(&["forget"]), 1, "nothing to forget");
    let err = fails_with(
        &mut repo.cmd(&["forget", "--keep-last", "1", "--name", "nobody"]),
        1,
        "policy for an unknown name",
    );
    assert!(err.contains("nobody"), "{err}");
}

#[test]
fn forget_by_id_and_prune_free_space() {
    let repo = Repo::small_chunks();
    let a1 = image(8 * MIB, 101);
    let b = image(8 * MIB, 102);
    let mut a2 = a1.clone();
    change_chunks(&mut a2, CHUNK, &[5, 6, 7], 103);
    let pa1 = repo.image("a1", &a1);
    let pb = repo.image("b", &b);
    let pa2 = repo.image("a2", &a2);
    let sa1 = repo.backup(&pa1, "a", &["--time", "2026-01-01"]);
    let sb = repo.backup(&pb, "b", &[]);
    let sa2 = repo.backup(&pa2, "a", &["--time", "2026-01-02"]);
    let status0 = repo.status();

    // forget ID: the snapshot goes, the data stays.
    let out = common::run_ok(&mut repo.cmd(&["forget", "--json", str_of(&sb, "snapshot")]));
    let report = json(&out.stdout);
    assert_eq!(report["removed"], 1);
    assert_eq!(report["decisions"][0]["id"], sb["snapshot"]);
    assert_eq!(report["prune"], Value::Null);
    assert_eq!(repo.snapshots().len(), 2);
    let status1 = repo.status();
    assert_eq!(status1["pack_bytes"], status0["pack_bytes"]);
    assert_eq!(status1["chunks"], status0["chunks"]);
    let err = fails_with(
        &mut repo.cmd(&["restore", str_of(&sb, "snapshot"), "-o", "/dev/null"]),
        1,
        "restore of a forgotten snapshot",
    );
    assert!(err.contains("no snapshot matches"), "{err}");

    // gc --dry-run reports and changes nothing.
    let before = tree(&repo.path);
    let out = common::run_ok(&mut repo.cmd(&["gc", "--dry-run", "--json"]));
    let dry = json(&out.stdout);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["packs_deleted"], 1, "{dry}");
    let b_first = chunk_ids(&b, CHUNK)
        .into_iter()
        .flatten()
        .next()
        .expect("b has data");
    let (b_pack, _) = find_blob(&repo, &b_first);
    let b_pack_len = std::fs::metadata(&b_pack).expect("stat").len();
    assert_eq!(dry["bytes_freed"], b_pack_len, "{dry}");
    assert_eq!(
        tree(&repo.path),
        before,
        "gc --dry-run changed the repository"
    );
    let out = common::run_ok(&mut repo.cmd(&["forget", "--dry-run", "--prune", "--json", "a"]));
    assert_eq!(json(&out.stdout)["prune"]["dry_run"], true);
    assert_eq!(
        tree(&repo.path),
        before,
        "forget --dry-run --prune changed the repository"
    );

    // forget --prune of a unique prefix of the older "a".
    let prefix = &str_of(&sa1, "snapshot")[..12];
    let out = common::run_ok(&mut repo.cmd(&["forget", "--prune", "--json", prefix]));
    let report = json(&out.stdout);
    assert_eq!(report["removed"], 1);
    let prune = &report["prune"];
    assert_eq!(prune["dry_run"], false);
    assert_eq!(prune["packs_deleted"], 1, "b's pack: {prune}");
    // b's chunks, and those only a1 had (garbage in a pack that stays).
    let ids =
        |img: &[u8]| -> HashSet<[u8; 32]> { chunk_ids(img, CHUNK).into_iter().flatten().collect() };
    let live = ids(&a2);
    let garbage = ids(&a1)
        .union(&ids(&b))
        .filter(|c| !live.contains(*c))
        .count();
    // b's chunks go with b's pack; a1's own chunks stay in a pack that
    // is mostly live.
    let count = |key: &str| prune[key].as_u64().expect("count");
    assert_eq!(
        count("chunks_removed") + count("chunks_left"),
        garbage as u64,
        "{prune}"
    );
    assert!(
        count("chunks_left") > 0 && count("bytes_left") > 0,
        "{prune}"
    );
    let status2 = repo.status();
    let bytes = |s: &Value| s["repository_bytes"].as_u64().expect("bytes");
    assert!(
        bytes(&status2) + b_pack_len <= bytes(&status0),
        "prune freed too little: {} -> {}",
        bytes(&status0),
        bytes(&status2)
    );
    assert!(!b_pack.exists());
    assert_eq!(status2["snapshots"], 1);
    repo.assert_restores("a", &a2);
    repo.assert_restores(str_of(&sa2, "snapshot"), &a2);
    repo.verify_ok(true);
}

#[test]
fn gc_repacks_packs_that_are_mostly_garbage() {
    let repo = Repo::small_chunks();
    // One backup, one pack: 4 MiB that another snapshot keeps, 12 MiB not.
    let keep = random(4 * MIB, 110, 0);
    let big = [keep.clone(), random(12 * MIB, 111, 0)].concat();
    // Another pack where most data stays live: 10 MiB kept, 6 MiB not.
    let keep2 = random(10 * MIB, 112, 0);
    let big2 = [keep2.clone(), random(6 * MIB, 113, 0)].concat();
    let sbig = repo.backup(&repo.image("big", &big), "big", &[]);
    let sbig2 = repo.backup(&repo.image("big2", &big2), "big2", &[]);
    let sk = repo.backup(&repo.image("keep", &keep), "keep", &[]);
    let sk2 = repo.backup(&repo.image("keep2", &keep2), "keep2", &[]);
    assert_eq!(sk["new_chunks"], 0);
    assert_eq!(sk2["new_chunks"], 0);
    assert_eq!(repo.objects("data").len(), 2);
    let status0 = repo.status();

    common::run_ok(&mut repo.cmd(&[
        "forget",
        "-q",
        str_of(&sbig, "snapshot"),
        str_of(&sbig2, "snapshot"),
    ]));
    let out = common::run_ok(&mut repo.cmd(&["gc", "--json"]));
    let gc = json(&out.stdout);
    assert_eq!(gc["packs_repacked"], 1, "{gc}");
    assert_eq!(gc["packs_written"], 1, "{gc}");
    assert_eq!(gc["packs_deleted"], 0, "{gc}");
    assert_eq!(gc["orphan_packs_deleted"], 0, "{gc}");
    // 192 chunks of the first pack go; the second pack's 96 stay (kept whole).
    assert_eq!(gc["chunks_removed"], 192, "{gc}");
    assert_eq!(gc["chunks_left"], 96, "{gc}");
    let freed = gc["bytes_freed"].as_u64().expect("bytes_freed");
    assert!(freed > 11 * MIB as u64 && freed < 13 * MIB as u64, "{gc}");
    let status1 = repo.status();
    let pack_bytes = |s: &Value| s["pack_bytes"].as_u64().expect("pack_bytes");
    assert_eq!(pack_bytes(&status0) - pack_bytes(&status1), freed);
    assert_eq!(status1["packs"], 2);
    assert_eq!(status1["index_files"], 1);
    repo.assert_restores("keep", &keep);
    repo.assert_restores("keep2", &keep2);
    repo.verify_ok(true);

    // A second gc has nothing to do and changes nothing.
    let before = tree(&repo.path);
    let gc = json(&common::run_ok(&mut repo.cmd(&["gc", "--json"])).stdout);
    assert_eq!(gc["packs_repacked"], 0, "{gc}");
    assert_eq!(gc["packs_deleted"], 0, "{gc}");
    assert_eq!(gc["bytes_freed"], 0, "{gc}");
    assert_eq!(
        tree(&repo.path),
        before,
        "an idle gc changed the repository"
    );

    // Forgetting the rest empties the repository.
    common::run_ok(&mut repo.cmd(&["forget", "-q", "--prune", "keep", "keep2"]));
    let status2 = repo.status();
    assert_eq!(status2["packs"], 0);
    assert_eq!(status2["chunks"], 0);
    assert_eq!(status2["snapshots"], 0);
    repo.verify_ok(true);
}

/// A gc killed after writing a repacked pack but before its index leaves
/// that pack as an orphan; the next gc makes the very same pack again
/// (same live blobs, same bytes, same id) and must not then delete it as
/// an orphan. Here the killed gc is played by a gc on a copy of the
/// repository whose new pack is copied back.
#[test]
fn a_gc_after_a_gc_killed_between_pack_and_index_keeps_the_data() {
    for adopted in [false, true] {
        // Plain: only there can a repack come out byte for byte equal to a
        // pack already stored (sealing draws new nonces every time).
        let repo = Repo::init_with(Some("64K"), &["--no-encryption"]);
        let keep = random(4 * MIB, 116, 0);
        let mixed = [keep.clone(), random(12 * MIB, 117, 0)].concat();
        let sm = repo.backup(&repo.image("mixed", &mixed), "mixed", &[]);
        let sk = repo.backup(&repo.image("keep", &keep), "keep", &[]);
        common::run_ok(&mut repo.cmd(&["forget", "-q", str_of(&sm, "snapshot")]));
        let before: BTreeSet<String> = walk(&repo.path.join("data")).into_iter().collect();
        let copy = repo.dir().join("copy");
        common::copy_tree(&repo.path, &copy);
        common::run_ok(common::diskdelta().args(["gc", "-q", "-r"]).arg(&copy));
        let new: Vec<String> = walk(&copy.join("data"))
            .into_iter()
            .filter(|k| !before.contains(k))
            .collect();
        assert_eq!(new.len(), 1, "the copy's gc wrote one pack");
        for k in &new {
            let dst = repo.path.join("data").join(k);
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
            std::fs::copy(copy.join("data").join(k), &dst).expect("copy pack");
        }
        assert_eq!(repo.verify_ok(false)["orphan_packs"], 1);
        if adopted {
            // A backup in between lists the orphan in an index file.
            let other = repo.image("other", &image(MIB, 118));
            let s = repo.backup(&other, "other", &[]);
            assert_eq!(s["adopted_packs"], 1);
        }
        common::run_ok(&mut repo.cmd(&["gc", "-q"]));
        repo.verify_ok(true);
        repo.assert_restores(str_of(&sk, "snapshot"), &keep);
        // The repacked pack (and the other backup's, if any) is left.
        let left: Vec<String> = walk(&repo.path.join("data"));
        assert!(new.iter().all(|k| left.contains(k)), "{left:?}");
        assert_eq!(left.len(), 1 + usize::from(adopted), "{left:?}");
    }
}

#[test]
fn gc_killed_at_random_points_leaves_a_valid_repository() {
    let repo = Repo::small_chunks();
    let keep = random(6 * MIB, 114, 0);
    for round in 0..6u64 {
        // Each round: a pack three quarters garbage to repack, another all
        // garbage to delete.
        let mixed = [keep.clone(), random(18 * MIB, 115 + round, 0)].concat();
        let junk = random(8 * MIB, 130 + round, 0);
        let sm = repo.backup(&repo.image("mixed", &mixed), "mixed", &[]);
        let sj = repo.backup(&repo.image("junk", &junk), "junk", &[]);
        let sk = repo.backup(&repo.image("keep", &keep), "keep", &[]);
        common::run_ok(&mut repo.cmd(&[
            "forget",
            "-q",
            str_of(&sm, "snapshot"),
            str_of(&sj, "snapshot"),
        ]));
        let mut child = repo.cmd(&["gc", "-q"]);
        child.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = child.spawn().expect("spawn gc");
        std::thread::sleep(Duration::from_millis(
            [0, 5, 15, 40, 80, 150][round as usize] + mix(round) % 5,
        ));
        kill_9(&mut child);
        repo.verify_ok(false);
        repo.assert_restores(str_of(&sk, "snapshot"), &keep);
    }
    // A gc that runs to the end cleans up after all of them.
    let gc = json(&common::run_ok(&mut repo.cmd(&["gc", "--json"])).stdout);
    let report = repo.verify_ok(true);
    assert_eq!(report["orphan_packs"], 0, "{gc}");
    let status = repo.status();
    assert_eq!(
        status["chunks"],
        chunk_ids(&keep, CHUNK).into_iter().flatten().count() as u64
    );
    repo.assert_restores("keep", &keep);
}

// --- errors ---------------------------------------------------------------------------

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let repo = Repo::small_chunks();
    let img = image(MIB, 120);
    let path = repo.image("img", &img);
    repo.backup(&path, "ok", &[]);
    let before = tree(&repo.path);

    let missing_repo = repo.dir().join("nothing-here");
    let err = fails_with(
        common::diskdelta()
            .args(["restore", "ok", "-o"])
            .arg(repo.dir().join("x"))
            .arg("-r")
            .arg(&missing_repo),
        1,
        "restore from a missing repository",
    );
    assert!(err.contains("no repository at"), "{err}");
    assert!(!repo.dir().join("x").exists());

    // Sources that cannot be read: a directory, a missing path.
    let err = fails_with(
        repo.cmd(&["backup", "--name", "dir"]).arg(repo.dir()),
        1,
        "backup of a directory",
    );
    assert!(err.contains("directory"), "{err}");
    let err = fails_with(
        repo.cmd(&["backup", "--name", "nothing"])
            .arg(repo.dir().join("no-such-image")),
        1,
        "backup of a missing file",
    );
    assert!(err.contains("no-such-image"), "{err}");
    assert_eq!(
        tree(&repo.path),
        before,
        "failed backups changed the repository"
    );

    let err = fails_with(
        &mut repo.cmd(&["restore", "no-such", "-o", "/dev/null"]),
        1,
        "unknown snapshot",
    );
    assert!(err.contains("no-such"), "{err}");
    let err = fails_with(
        repo.cmd(&["restore", "ok", "-o"])
            .arg(repo.dir().join("no/such/dir/out")),
        1,
        "restore into a missing directory",
    );
    assert!(err.contains("no/such/dir"), "{err}");
    let err = fails_with(
        repo.cmd(&["restore", "ok", "-o"]).arg(repo.dir()),
        1,
        "restore onto a directory",
    );
    assert!(err.contains("directory"), "{err}");
    // Usage errors: exit 2.
    let out = common::run_fail(&mut repo.cmd(&["restore"]));
    assert_eq!(out.status.code(), Some(2));
    let out = common::run_fail(&mut repo.cmd(&["backup", "--no-such-flag", "x"]));
    assert_eq!(out.status.code(), Some(2));
    repo.verify_ok(true);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..20 {
            match Command::new("umount").arg(&self.path).output() {
                Ok(o) if o.status.success() => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("warning: could not unmount {}", self.path.display());
    }
}

#[test]
fn a_full_disk_fails_the_backup_and_leaves_the_repository_valid() {
    let dir = common::tempdir();
    let mnt = dir.path().join("small-fs");
    let fs = match Tmpfs::mount(&mnt, "8M") {
        Ok(fs) => fs,
        Err(reason) => {
            if common::in_ci() {
                panic!("tmpfs required under CI: {reason}");
            }
            eprintln!("SKIPPED repo::a_full_disk_fails_the_backup: {reason}");
            return;
        }
    };
    let repo = fs.path.join("repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(&repo),
    );
    let cmd = |args: &[&str]| {
        let mut c = common::diskdelta();
        c.args(args).arg("-r").arg(&repo);
        c
    };
    let verify = || {
        let out = common::run_ok(&mut cmd(&["verify", "--read-data", "--json"]));
        let v = json(&out.stdout);
        assert_eq!(v["errors"], serde_json::json!([]));
    };
    let first = random(2 * MIB, 130, 0);
    let p = common::write_file(dir.path(), "first", &first);
    common::run_ok(cmd(&["backup", "-q", "--name", "first"]).arg(&p));

    // Far too big: the pack cannot be written.
    let big = random(16 * MIB, 131, 0);
    let p = common::write_file(dir.path(), "big", &big);
    let out = common::run_fail(cmd(&["backup", "--name", "big"]).arg(&p));
    let err = one_line_error(&out, "backup onto a full disk");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the OS error once: {err}"
    );
    verify();
    let leftovers: Vec<String> = tree(&repo)
        .into_keys()
        .filter(|k| k.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Fill it up in small steps, so that the failure comes at every stage
    // (pack, index, snapshot, lock); the repository stays valid throughout.
    let mut ok = vec![("first".to_string(), first)];
    let mut failed = 0;
    for k in 0..40u64 {
        let img = random(
            300 * KIB + (k as usize * 37 * KIB) % (200 * KIB),
            140 + k,
            0,
        );
        let p = common::write_file(dir.path(), "step", &img);
        let name = format!("step{k}");
        let out = cmd(&["backup", "-q", "--name", &name])
            .arg(&p)
            .output()
            .expect("run backup");
        if out.status.success() {
            ok.push((name, img));
        } else {
            one_line_error(&out, "backup onto a full disk");
            failed += 1;
        }
        verify();
        if failed >= 4 {
            break;
        }
    }
    assert!(failed > 0, "the disk never filled up");
    for (name, img) in &ok {
        let out = common::run_ok(&mut cmd(&["restore", name]));
        assert!(&out.stdout == img, "{name} restores");
    }
}

// --- golden repository (format version 1, kept forever) --------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/repo")
}

#[test]
fn golden_repository_decodes_and_reencodes_byte_for_byte() {
    use diskdelta::format::pack::{self, PackBuilder};
    use diskdelta::format::pack_index;
    use diskdelta::format::snapshot::Snapshot;
    use diskdelta::id::{ChunkId, IndexId, PackId, SnapshotId};

    let root = golden_dir().join("repo");
    let chunk = 16 * KIB;
    let images = [
        std::fs::read(golden_dir().join("one.img")).expect("one.img"),
        std::fs::read(golden_dir().join("two.img")).expect("two.img"),
    ];
    let config = json(&std::fs::read(root.join("config")).expect("config"));
    assert_eq!(config["format"], "diskdelta-repository");
    assert_eq!(config["version"], 1);
    assert_eq!(config["chunk_size"], chunk as u64);

    // Packs: parse, rebuild from the blobs with PackBuilder, same bytes.
    let mut pack_entries = BTreeMap::new();
    let mut encodings = BTreeSet::new();
    let packs = tree(&root.join("data"));
    assert_eq!(packs.len(), 2, "{packs:?}");
    for key in packs.keys() {
        let bytes = std::fs::read(root.join("data").join(key)).expect("read pack");
        let name = key.rsplit('/').next().expect("name");
        assert_eq!(PackId::of(&bytes).to_hex(), name);
        assert_eq!(&key[..2], &name[..2], "data/XX/ fan-out");
        let entries = pack::parse(&bytes).expect("golden pack parses");
        let mut builder = PackBuilder::new();
        for e in &entries {
            encodings.insert(e.encoding as u8);
            let blob = &bytes[e.offset as usize..e.end() as usize];
            let again = builder.add(e.id, blob, e.raw_len, e.encoding);
            assert_eq!(again, *e);
        }
        let (rebuilt, id, rebuilt_entries) = builder.finish();
        assert!(rebuilt == bytes, "pack {name} re-encodes differently");
        assert_eq!(id.to_hex(), name);
        assert_eq!(rebuilt_entries, entries);
        pack_entries.insert(PackId::of(&bytes), entries);
    }
    assert_eq!(encodings, BTreeSet::from([0, 1]), "raw and zstd blobs");

    // Index files: decode, encode, same bytes; they list exactly the packs.
    let mut listed = BTreeMap::new();
    let index = tree(&root.join("index"));
    assert_eq!(index.len(), 2);
    for name in index.keys() {
        let bytes = std::fs::read(root.join("index").join(name)).expect("read index");
        let records = pack_index::decode(&bytes).expect("golden index decodes");
        let (again, id) = pack_index::encode(&records);
        assert!(again == bytes, "index {name} re-encodes differently");
        assert_eq!(&id.to_hex(), name);
        assert_eq!(IndexId::of(&bytes), id);
        for r in records {
            listed.insert(r.pack, r.entries);
        }
    }
    assert_eq!(listed, pack_entries, "index files agree with pack trailers");

    // Snapshots: decode; the chunk lists are the images' chunk ids.
    let stored: HashSet<ChunkId> = listed.values().flatten().map(|e| e.id).collect();
    let snaps = tree(&root.join("snapshots"));
    assert_eq!(snaps.len(), 2);
    let mut by_time = BTreeMap::new();
    for name in snaps.keys() {
        let bytes = std::fs::read(root.join("snapshots").join(name)).expect("read snapshot");
        let snap = Snapshot::decode(&bytes).expect("golden snapshot decodes");
        assert_eq!(snap.id.to_hex(), *name);
        assert_eq!(SnapshotId::of(&bytes), snap.id);
        by_time.insert(snap.meta.unix_time, snap);
    }
    let one = &by_time[&1_767_323_045];
    let two = &by_time[&1_767_398_400];
    for snap in [one, two] {
        assert_eq!(snap.meta.name, "golden");
        assert_eq!(snap.meta.host, "golden");
        assert_eq!(snap.meta.program, "diskdelta 0.1.0");
    }
    assert_eq!(one.meta.time, "2026-01-02T03:04:05Z");
    assert_eq!(one.meta.source, "one.img");
    assert_eq!(one.meta.tags, vec!["golden".to_string(), "v1".to_string()]);
    assert_eq!(one.meta.parent, None);
    assert_eq!(two.meta.time, "2026-01-03T00:00:00Z");
    assert_eq!(two.meta.source, "two.img");
    assert!(two.meta.tags.is_empty());
    assert_eq!(two.meta.parent.as_deref(), Some(one.id.to_hex().as_str()));
    for (snap, img) in [(one, &images[0]), (two, &images[1])] {
        assert_eq!(snap.meta.size, img.len() as u64);
        assert_eq!(snap.meta.chunk_size, chunk as u32);
        let ids: Vec<ChunkId> = snap
            .chunk_ids()
            .expect("list")
            .collect::<Result<_, _>>()
            .expect("chunk ids");
        let expected: Vec<ChunkId> = chunk_ids(img, chunk)
            .into_iter()
            .map(|c| c.map_or(ChunkId::ZERO, ChunkId::from_bytes))
            .collect();
        assert_eq!(ids, expected, "{}", snap.meta.name);
        assert!(ids.iter().any(ChunkId::is_zero_marker));
        for id in ids.iter().filter(|i| !i.is_zero_marker()) {
            assert!(
                stored.contains(id),
                "chunk {id} of {} is stored",
                snap.meta.name
            );
        }
        assert_eq!(
            snap.meta.digest,
            hash_image(img),
            "{}: digest as `diskdelta hash` computes it",
            snap.meta.name
        );
    }

    // The binary of today reads and restores them.
    let copy = common::tempdir();
    let repo = copy.path().join("repo");
    common::copy_tree(&root, &repo);
    let out = common::run_ok(
        common::diskdelta()
            .args(["verify", "--read-data", "--json", "-r"])
            .arg(&repo),
    );
    let v = json(&out.stdout);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["snapshots"], 2);
    for (snap, img) in [(one, &images[0]), (two, &images[1])] {
        let out = common::run_ok(
            common::diskdelta()
                .args(["restore", &snap.id.to_hex(), "-r"])
                .arg(&repo),
        );
        assert!(
            &out.stdout == img,
            "{} restores from the golden repository",
            snap.meta.time
        );
    }
    let out = common::run_ok(
        common::diskdelta()
            .args(["restore", "golden", "-r"])
            .arg(&repo),
    );
    assert!(out.stdout == images[1], "the name means the latest");
}

/// The image digest, through `diskdelta hash` on a temporary file.
fn hash_image(img: &[u8]) -> String {
    let dir = common::tempdir();
    let path = common::write_file(dir.path(), "img", img);
    let out = common::run_ok(common::diskdelta().args(["hash", "--json"]).arg(&path));
    let v = json(&out.stdout);
    let entry = if v.is_array() { v[0].clone() } else { v };
    str_of(&entry, "digest").to_string()
}
