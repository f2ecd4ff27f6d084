//! `diskdelta sync` through the real binary: local paths and a real sshd.

use std::path::Path;
use std::process::Command;

use crate::common::{self, sshd::Sshd};

fn sync_cmd(sshd: Option<&Sshd>) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("sync").arg("-q");
    if let Some(s) = sshd {
        cmd.arg("-e")
            .arg(s.ssh_command())
            .arg("--remote-path")
            .arg(common::bin());
    }
    cmd
}

fn remote(sshd: &Sshd, path: &Path) -> String {
    format!("{}:{}", sshd.destination(), path.display())
}

/// A base image with data, zero runs and a changed copy.
fn images(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let mut old = common::pseudo_random(6 << 20, 11);
    old[(1 << 20)..(3 << 20)].fill(0);
    let mut new = old.clone();
    for (i, at) in [5000usize, 1 << 20, 2_500_000, 4_000_000, (6 << 20) - 10]
        .iter()
        .enumerate()
    {
        let end = (*at + 70_000).min(new.len());
        let patch = common::pseudo_random(end - at, 100 + i as u64);
        new[*at..end].copy_from_slice(&patch);
    }
    let old_path = common::write_file(dir, "old.img", &old);
    let new_path = common::write_file(dir, "new.img", &new);
    (old_path, new_path, new)
}

#[test]
fn local_to_local_creates_and_updates() {
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let target = dir.path().join("copy.img");
    common::run_ok(sync_cmd(None).arg(&new).arg(&target));
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
    std::fs::copy(&old, &target).expect("reset target");
    common::run_ok(sync_cmd(None).arg(&new).arg(&target));
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
}

#[test]
fn local_to_remote_moves_only_changed_blocks() {
    let Some(sshd) = Sshd::start("local_to_remote_moves_only_changed_blocks") else {
        return;
    };
    let dir = common::tempdir();
    let (old, new, new_bytes) = images(dir.path());
    let target = dir.path().join("remote-copy.img");
    std::fs::copy(&old, &target).expect("old copy");
    let out = common::run_ok(
        sync_cmd(Some(&sshd))
            .arg("--json")
            .arg("--block-size")
            .arg("4K")
            .arg(&new)
            .arg(remote(&sshd, &target)),
    );
    assert_eq!(std::fs::read(&target).expect("target"), new_bytes);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["verified"], true);
    let changed = report["changed_bytes"].as_u64().expect("changed_bytes");
    assert!(changed > 0 && changed < 600_000, "changed {changed}");
    let wire = report["wire_bytes_sent"].as_u64().expect("sent")
        + report["wire_bytes_received"].as_u64().expect("received");
    assert!(wire < 1_000_000, "wire {wire}");
}

#[test]
fn remote_to_local_and_remote_to_remote() {
    let Some(sshd) = Sshd::start("remote_to_local_and_remote_to_remote") else {
        return;
    };
    let dir = common::tempdir();
    let (_, new, new_bytes) = images(dir.path());
    let local = dir.path().join("pulled.img");
    common::run_ok(sync_cmd(Some(&sshd)).arg(remote(&sshd, &new)).arg(&local));
    assert_eq!(std::fs::read(&local).expect("pulled"), new_bytes);
    let far = dir.path().join("far.img");
    common::run_ok(
        sync_cmd(Some(&sshd))
            .arg(remote(&sshd, &new))
            .arg(remote(&sshd, &far)),
    );
    assert_eq!(std::fs::read(&far).expect("far"), new_bytes);
}
