//! `import-diskdump`: a store made by the real diskdump 0.1.5 (from PyPI,
//! in a venv made by `scripts/diskdump-venv`) becomes snapshots that
//! restore byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

fn real_diskdump() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DISKDELTA_TEST_DISKDUMP") {
        return Some(PathBuf::from(path));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/diskdump-venv"))
        .arg(root.join("target/diskdump-venv"))
        .output();
    let problem = match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().last().map(str::trim) {
                Some(l) if !l.is_empty() => return Some(PathBuf::from(l)),
                _ => "scripts/diskdump-venv printed no path".to_string(),
            }
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    assert!(!common::in_ci(), "diskdump unavailable in CI: {problem}");
    eprintln!("skipping: real diskdump unavailable: {problem}");
    None
}

fn diskdump_import(tool: &Path, store: &Path, image: &Path) {
    let out = Command::new(tool)
        .env("DISKDUMP_BASE", store)
        .args(["--block-size", "65536", "import"])
        .arg(image)
        .args(["--as", "server01:/dev/sda"])
        .output()
        .expect("run diskdump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn diskdump_store_migrates_and_restores_identically() {
    let Some(tool) = real_diskdump() else {
        return;
    };
    let dir = common::tempdir();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("store dir");
    let mut v1 = common::pseudo_random(3 << 20, 7);
    v1[(1 << 20)..(2 << 20)].fill(0);
    v1.extend_from_slice(&common::pseudo_random(1234, 8));
    let img = common::write_file(dir.path(), "disk.img", &v1);
    diskdump_import(&tool, &store, &img);
    let mut v2 = v1.clone();
    v2[70_000..71_000].fill(0x5a);
    std::fs::write(&img, &v2).expect("v2");
    diskdump_import(&tool, &store, &img);

    let repo = dir.path().join("repo");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&repo));
    let out = common::run_ok(
        common::diskdelta()
            .args(["import-diskdump", "-q", "--json", "-r"])
            .arg(&repo)
            .arg(&store),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report.as_array().map(Vec::len), Some(2));
    let snaps = common::run_ok(
        common::diskdelta()
            .args(["snapshots", "--json", "-r"])
            .arg(&repo),
    );
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).expect("json");
    let ids: Vec<String> = snaps
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            assert_eq!(s["name"], "server01.sda");
            assert_eq!(s["source"], "server01:/dev/sda");
            s["id"].as_str().expect("id").to_string()
        })
        .collect();
    for (id, want) in ids.iter().zip([&v1, &v2]) {
        let out = dir.path().join(format!("{id}.img"));
        common::run_ok(
            common::diskdelta()
                .args(["restore", "-q", "-r"])
                .arg(&repo)
                .arg(id)
                .arg("-o")
                .arg(&out),
        );
        assert!(
            std::fs::read(&out).expect("restored") == *want,
            "snapshot {id}"
        );
    }

    // A corrupt block (the zero block, which both manifests use) is
    // reported for each manifest and nothing is imported.
    let zero = diskdelta::format::diskdump::zero_block_hash(65536).to_hex();
    let block = store
        .join(".blockstore")
        .join(&zero[0..2])
        .join(&zero[2..4])
        .join(format!("{zero}.lz4"));
    let mut bytes = std::fs::read(&block).expect("block");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&block, bytes).expect("corrupt");
    let repo2 = dir.path().join("repo2");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&repo2));
    let out = common::run_fail(
        common::diskdelta()
            .args(["import-diskdump", "-q", "-r"])
            .arg(&repo2)
            .arg(&store),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.manifest") && err.contains("1.manifest"),
        "{err}"
    );
    assert!(err.contains(&zero), "{err}");
    let snaps = common::run_ok(
        common::diskdelta()
            .args(["snapshots", "--json", "-r"])
            .arg(&repo2),
    );
    assert_eq!(String::from_utf8_lossy(&snaps.stdout).trim(), "[]");
    common::run_ok(common::diskdelta().args(["verify", "-q", "-r"]).arg(&repo2));
}
