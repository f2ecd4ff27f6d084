//! The foreign diff-dd formats through the real binary: the golden files in
//! `tests/golden/legacy/` (see its README), deltas made by the real Python
//! diff-dd 1.0.4, C++ diff-dd v2 output of `diskdelta diff`, and truncated
//! files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common;

/// Block size of the Python golden file and of the real-tool tests.
const PY_BLOCK: usize = 8192;
/// Header length of Python diff-dd files.
const PY_HEADER: usize = 32768;
/// The C++ diff-dd v2 header.
const V2_MAGIC: &[u8] = b"diff-dd image\x02";

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/legacy")
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `diskdelta apply DELTA --base BASE -o OUT EXTRA...`
fn apply_cmd(delta: &Path, base: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("apply")
        .arg(delta)
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(out)
        .args(extra);
    cmd
}

/// Applies `delta` onto `base` and returns the result.
fn apply_ok(delta: &Path, base: &Path, extra: &[&str]) -> Vec<u8> {
    let dir = common::tempdir();
    let out = dir.path().join("restored.img");
    common::run_ok(&mut apply_cmd(delta, base, &out, extra));
    read(&out)
}

/// Applies a delta that must be refused: non-zero exit, nothing left at the
/// output path nor beside it (no temporary files). Returns the output.
fn apply_refused(delta: &Path, base: &Path, extra: &[&str]) -> Output {
    let dir = common::tempdir();
    let out = dir.path().join("restored.img");
    let output = common::run_fail(&mut apply_cmd(delta, base, &out, extra));
    assert!(
        !out.exists(),
        "a failed apply left {} behind",
        out.display()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list output directory")
        .map(|e| e.expect("directory entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a failed apply left files behind: {left:?}"
    );
    assert!(
        !output.stderr.is_empty(),
        "a failed apply must say why on stderr"
    );
    output
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// Writes `data` truncated to `len` bytes into `dir` and returns the path.
fn truncated_copy(dir: &Path, name: &str, data: &[u8], len: usize) -> PathBuf {
    common::write_file(dir, name, &data[..len])
}

#[test]
fn golden_python_delta_applies() {
    let got = apply_ok(
        &golden("new.diffdd-py-b8192"),
        &golden("old.img"),
        &["--format", "diff-dd-py", "--block-size", "8192"],
    );
    assert_same(&got, &read(&golden("new.img")), "diff-dd-py golden");
}

#[test]
fn golden_python_delta_with_wrong_block_size_is_refused() {
    apply_refused(
        &golden("new.diffdd-py-b8192"),
        &golden("old.img"),
        &["--format", "diff-dd-py", "--block-size", "4096"],
    );
}

#[test]
fn golden_v2_delta_is_detected_and_applies() {
    let new = read(&golden("new.img"));
    let got = apply_ok(&golden("new.diffdd-v2"), &golden("old.img"), &[]);
    assert_same(&got, &new, "diff-dd-v2 golden, detected");
    let got = apply_ok(
        &golden("new.diffdd-v2"),
        &golden("old.img"),
        &["--format", "diff-dd-v2"],
    );
    assert_same(&got, &new, "diff-dd-v2 golden, --format");
}

#[test]
fn golden_v1_delta_applies() {
    let got = apply_ok(
        &golden("new.diffdd-v1-s512"),
        &golden("old.img"),
        &["--format", "diff-dd-v1", "--block-size", "512"],
    );
    assert_same(&got, &read(&golden("new.img")), "diff-dd-v1 golden");
}

/// `info --json` on each foreign format names it and admits there are no
/// checksums.
#[test]
fn info_json_names_legacy_formats() {
    let cases: [(&str, &[&str], &str); 3] = [
        ("new.diffdd-v2", &[], "diff-dd-v2"),
        (
            "new.diffdd-v1-s512",
            &["--format", "diff-dd-v1", "--block-size", "512"],
            "diff-dd-v1",
        ),
        (
            "new.diffdd-py-b8192",
            &["--format", "diff-dd-py", "--block-size", "8192"],
            "diff-dd-py",
        ),
    ];
    for (file, extra, format) in cases {
        let out = common::run_ok(
            common::diskdelta()
                .arg("info")
                .arg(golden(file))
                .arg("--json")
                .args(extra),
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "info --json on {file} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(json["format"], format, "{file}: {json}");
        assert_eq!(json["checksums"], false, "{file}: {json}");
    }
}

/// Decodes a C++ diff-dd v2 file with a parser written here from the
/// format description, independent of the library, and applies it to
/// `old` the way the C++ tool restores (in place, growing if needed).
fn restore_v2_independently(delta: &[u8], old: &[u8]) -> Vec<u8> {
    assert!(delta.starts_with(V2_MAGIC), "no diff-dd v2 header");
    let mut out = old.to_vec();
    let mut rest = &delta[V2_MAGIC.len()..];
    let mut previous_end = 0u64;
    while !rest.is_empty() {
        assert!(rest.len() >= 12, "truncated record header");
        let offset = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let size = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        assert!(size > 0, "empty record at {offset}");
        assert!(size <= 4 << 20, "record of {size} bytes");
        assert!(offset >= previous_end, "records out of order");
        let data = &rest[12..12 + size];
        let (start, end) = (offset as usize, offset as usize + size);
        if out.len() < end {
            out.resize(end, 0);
        }
        out[start..end].copy_from_slice(data);
        previous_end = end as u64;
        rest = &rest[12 + size..];
    }
    out
}

#[test]
fn diff_writes_cpp_v2() {
    let dir = common::tempdir();
    let size = 3 * 1024 * 1024 + 1000;
    let old = common::pseudo_random(size, 11);
    let mut new = old.clone();
    new[0] ^= 1;
    new[5000..9000].fill(0); // zeros must be written as literal bytes
    new[100_000..2_700_000].copy_from_slice(&common::pseudo_random(2_600_000, 12));
    new[size - 1] ^= 0x80;
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let delta = dir.path().join("delta.diffdd");
    common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta)
            .args(["--format", "diff-dd-v2"]),
    );
    let bytes = read(&delta);
    assert!(bytes.starts_with(V2_MAGIC));
    assert!(
        bytes.len() < size,
        "only the changes are stored ({} bytes)",
        bytes.len()
    );
    assert_same(
        &restore_v2_independently(&bytes, &old),
        &new,
        "v2 by the format description",
    );
    assert_same(&apply_ok(&delta, &old_path, &[]), &new, "v2 applied back");
}

#[test]
fn diff_v2_of_a_larger_new() {
    let dir = common::tempdir();
    let old = common::pseudo_random(20_000, 21);
    let mut new = old.clone();
    new[300] ^= 0xFF;
    new.extend_from_slice(&common::pseudo_random(7_777, 22));
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let delta = dir.path().join("delta.diffdd");
    common::run_ok(
        common::diskdelta()
            .arg("diff")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta)
            .args(["--format", "diff-dd-v2"]),
    );
    let bytes = read(&delta);
    assert_same(
        &restore_v2_independently(&bytes, &old),
        &new,
        "larger NEW by the format description",
    );
    assert_same(
        &apply_ok(&delta, &old_path, &[]),
        &new,
        "larger NEW applied",
    );
}

/// C++ diff-dd restores in place without truncating, so v2 cannot express
/// a NEW smaller than OLD: `diff` must refuse rather than write a delta that
/// restores to the wrong size.
#[test]
fn diff_v2_refuses_a_smaller_new() {
    let dir = common::tempdir();
    let old = common::pseudo_random(20_000, 31);
    let new = old[..12_345].to_vec();
    let old_path = common::write_file(dir.path(), "old.img", &old);
    let new_path = common::write_file(dir.path(), "new.img", &new);
    let delta = dir.path().join("delta.diffdd");
    common::run_fail(
        common::diskdelta()
            .arg("diff")
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta)
            .args(["--format", "diff-dd-v2"]),
    );
    assert!(!delta.exists(), "a refused diff left {}", delta.display());
}

#[test]
fn truncated_legacy_deltas_are_refused() {
    let dir = common::tempdir();
    let old = golden("old.img");

    let v2 = read(&golden("new.diffdd-v2"));
    for (i, cut) in [v2.len() - 5, 20, V2_MAGIC.len() - 1]
        .into_iter()
        .enumerate()
    {
        let path = truncated_copy(dir.path(), &format!("v2-{i}"), &v2, cut);
        apply_refused(&path, &old, &["--format", "diff-dd-v2"]);
    }
    // Detection must not mistake a cut header for another format.
    let path = truncated_copy(dir.path(), "v2-detect", &v2, v2.len() - 5);
    apply_refused(&path, &old, &[]);

    let v1 = read(&golden("new.diffdd-v1-s512"));
    for (i, cut) in [v1.len() - 100, 4, 520 + 8 + 1].into_iter().enumerate() {
        let path = truncated_copy(dir.path(), &format!("v1-{i}"), &v1, cut);
        apply_refused(
            &path,
            &old,
            &["--format", "diff-dd-v1", "--block-size", "512"],
        );
    }

    let py = read(&golden("new.diffdd-py-b8192"));
    let py_args = ["--format", "diff-dd-py", "--block-size", "8192"];
    let cuts = [
        py.len() - 3,                     // inside the terminator
        py.len() - 8,                     // terminator missing
        py.len() - 8 - 1000,              // inside the short last block
        PY_HEADER + 8 + PY_BLOCK,         // after a full block, nothing more
        PY_HEADER + 8 + PY_BLOCK + 8 + 1, // one byte into the last block
        PY_HEADER,                        // header only
        PY_HEADER - 1,                    // header cut
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        let path = truncated_copy(dir.path(), &format!("py-{i}"), &py, cut);
        apply_refused(&path, &old, &py_args);
    }
}

/// The `diff-dd` executable of the real Python diff-dd 1.0.4: from
/// `DISKDELTA_TEST_PYDIFFDD`, else made by `scripts/pydiffdd-venv`. `None`
/// (test skipped) when it cannot be had outside CI.
fn python_diffdd() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("DISKDELTA_TEST_PYDIFFDD") {
            return Some(PathBuf::from(path));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let result = Command::new("bash")
            .arg(root.join("scripts/pydiffdd-venv"))
            .arg(root.join("target/pydiffdd-venv"))
            .output();
        let problem = match result {
            Ok(out) if out.status.success() => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                match stdout.lines().last() {
                    Some(line) if !line.trim().is_empty() => {
                        return Some(PathBuf::from(line.trim()));
                    }
                    _ => "scripts/pydiffdd-venv printed no path".to_owned(),
                }
            }
            Ok(out) => format!(
                "scripts/pydiffdd-venv failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("cannot run scripts/pydiffdd-venv: {e}"),
        };
        assert!(!common::in_ci(), "{problem}");
        eprintln!("skipping the real Python diff-dd tests: {problem}");
        None
    })
    .clone()
}

/// What the Python tool's file for a NEW of `new_len` bytes must hold.
fn python_delta_len(new_len: usize) -> usize {
    PY_HEADER + new_len.div_ceil(PY_BLOCK) * 8 + new_len + 8
}

/// Runs the real Python diff-dd on OLD/NEW and returns the delta's path.
fn run_python_diffdd(tool: &Path, dir: &Path, old: &[u8], new: &[u8]) -> (PathBuf, PathBuf) {
    let old_path = common::write_file(dir, "old.img", old);
    let new_path = common::write_file(dir, "new.img", new);
    let delta = dir.join("delta.ddd");
    common::run_ok(
        Command::new(tool)
            .arg("--if")
            .arg(&old_path)
            .arg("--df")
            .arg(&new_path)
            .arg("--of")
            .arg(&delta)
            .args(["-b", "8192"]),
    );
    (old_path, delta)
}

/// NEW made from OLD: some bytes changed, then cut or extended to `len`.
fn derived_new(old: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    for (i, b) in new.iter_mut().enumerate().step_by(4099) {
        *b ^= (i as u8) | 1;
    }
    new.resize(len.min(new.len()), 0);
    if len > new.len() {
        new.extend_from_slice(&common::pseudo_random(len - new.len(), seed));
    }
    new
}

/// Sizes for which the Python tool writes a complete file: NEW has at
/// least as many blocks as OLD (sizes not multiples of the block size).
#[test]
fn real_python_diffdd_deltas_apply() {
    let Some(tool) = python_diffdd() else { return };
    let cases = [
        // (OLD size, NEW size, what)
        (30_000, 45_123, "NEW larger than OLD"),
        (30_000, 30_000, "same size"),
        (30_000, 25_000, "NEW smaller, same block count"),
        (20_000, 20_481, "NEW larger by a sliver"),
        (0, 10_000, "empty OLD"),
        (8_200, 24_576, "NEW a multiple of the block size"),
        (0, 0, "both empty"),
    ];
    for (old_len, new_len, what) in cases {
        let dir = common::tempdir();
        let old = common::pseudo_random(old_len, old_len as u64);
        let new = derived_new(&old, new_len, new_len as u64);
        let (old_path, delta) = run_python_diffdd(&tool, dir.path(), &old, &new);
        assert_eq!(
            read(&delta).len(),
            python_delta_len(new_len),
            "{what}: layout of the real tool's file"
        );
        let got = apply_ok(
            &delta,
            &old_path,
            &["--format", "diff-dd-py", "--block-size", "8192"],
        );
        assert_same(&got, &new, what);
    }
}

/// When OLD has more blocks than NEW, Python diff-dd 1.0.4 (on Python 3)
/// exits without flushing the end of its output: the terminator record,
/// and the short last block with it, are lost. Such a file is
/// indistinguishable from a truncated one and must be refused, never
/// restored to a shorter NEW. Should a Python version flush it after all,
/// the file is complete and must apply.
#[test]
fn real_python_diffdd_with_fewer_blocks_than_old() {
    let Some(tool) = python_diffdd() else { return };
    for (old_len, new_len) in [
        (50_000, 10_000),
        (50_000, 16_384),
        (40_000, 8_191),
        (30_000, 0),
    ] {
        let what = format!("OLD {old_len}, NEW {new_len}");
        let dir = common::tempdir();
        let old = common::pseudo_random(old_len, 7);
        let new = derived_new(&old, new_len, 8);
        let (old_path, delta) = run_python_diffdd(&tool, dir.path(), &old, &new);
        let args = ["--format", "diff-dd-py", "--block-size", "8192"];
        if read(&delta).len() == python_delta_len(new_len) {
            let got = apply_ok(&delta, &old_path, &args);
            assert_same(&got, &new, &what);
        } else {
            let out = apply_refused(&delta, &old_path, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("truncated") || stderr.contains("terminator"),
                "{what}: {stderr}"
            );
        }
    }
}

#[test]
fn diff_v2_keeps_a_zero_filled_growth_tail() {
    let dir = common::tempdir();
    let old = common::pseudo_random(10_000, 77);
    let mut new = old.clone();
    new.resize(15_000, 0);
    let old_path = common::write_file(dir.path(), "old", &old);
    let new_path = common::write_file(dir.path(), "new", &new);
    let delta = dir.path().join("grow.diffdd-v2");
    let out = dir.path().join("out");
    common::run_ok(
        common::diskdelta()
            .args(["diff", "-q", "--format", "diff-dd-v2"])
            .arg(&old_path)
            .arg(&new_path)
            .arg("-o")
            .arg(&delta),
    );
    common::run_ok(
        common::diskdelta()
            .args(["apply", "-q"])
            .arg(&delta)
            .arg("--base")
            .arg(&old_path)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(std::fs::read(&out).expect("read output"), new);
}
