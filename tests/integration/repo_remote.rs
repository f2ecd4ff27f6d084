//! Backups of remote sources through a real sshd on 127.0.0.1.

use std::path::Path;
use std::process::Command;

use crate::common::{self, sshd::Sshd};

fn repo_cmd(sshd: &Sshd, repo: &Path, remote_path: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.arg("backup")
        .arg("-q")
        .arg("--json")
        .arg("-r")
        .arg(repo)
        .arg("-e")
        .arg(sshd.ssh_command())
        .arg("--remote-path")
        .arg(remote_path);
    cmd
}

fn remote(sshd: &Sshd, path: &Path) -> String {
    format!("{}:{}", sshd.destination(), path.display())
}

fn summaries(out: &std::process::Output) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| e["summary"].clone())
        .collect()
}

fn restore(repo: &Path, snapshot: &str, out: &Path) {
    common::run_ok(
        common::diskdelta()
            .arg("restore")
            .arg("-q")
            .arg("-r")
            .arg(repo)
            .arg(snapshot)
            .arg("-o")
            .arg(out),
    );
}

fn init(repo: &Path) {
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(repo),
    );
}

#[test]
fn remote_incremental_sends_only_changed_chunks() {
    let Some(sshd) = Sshd::start("remote_incremental_sends_only_changed_chunks") else {
        return;
    };
    let dir = common::tempdir();
    let repo = dir.path().join("repo");
    init(&repo);
    let mut data = common::pseudo_random(8 << 20, 5);
    data[(2 << 20)..(4 << 20)].fill(0);
    let img = common::write_file(dir.path(), "disk.img", &data);
    let first = summaries(&common::run_ok(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &img))
            .arg("--name")
            .arg("vm"),
    ));
    assert_eq!(first[0]["zero_chunks"], 32);
    assert!(first[0]["bytes_sent"].as_u64().expect("sent") > 6 << 20);
    // Change 3 chunks' worth of data.
    for at in [100_000usize, 5 << 20, (8 << 20) - 70_000] {
        data[at..at + 1000].copy_from_slice(&common::pseudo_random(1000, at as u64));
    }
    std::fs::write(&img, &data).expect("rewrite");
    let second = summaries(&common::run_ok(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &img))
            .arg("--name")
            .arg("vm"),
    ));
    assert_eq!(second[0]["new_chunks"], 3);
    let sent = second[0]["bytes_sent"].as_u64().expect("sent");
    assert!(sent < 400_000, "incremental sent {sent} bytes");
    assert_eq!(second[0]["parent"], first[0]["snapshot"]);
    let out = dir.path().join("out.img");
    restore(&repo, "vm", &out);
    assert!(
        std::fs::read(&out).expect("restored") == data,
        "restored image differs"
    );
}

#[test]
fn a_clone_backed_up_with_parent_sends_only_what_differs() {
    let Some(sshd) = Sshd::start("a_clone_backed_up_with_parent_sends_only_what_differs") else {
        return;
    };
    let dir = common::tempdir();
    let repo = dir.path().join("repo");
    init(&repo);
    let template = common::pseudo_random(8 << 20, 9);
    let tmpl = common::write_file(dir.path(), "template.img", &template);
    let first = summaries(&common::run_ok(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &tmpl))
            .arg("--name")
            .arg("template"),
    ));
    // A clone of the template with two chunks changed.
    let mut clone = template.clone();
    for at in [1 << 20, 6 << 20] {
        clone[at..at + 4096].copy_from_slice(&common::pseudo_random(4096, at as u64));
    }
    let vm = common::write_file(dir.path(), "vm.img", &clone);
    let prefix = &first[0]["snapshot"].as_str().expect("id")[..10];
    let with_parent = summaries(&common::run_ok(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &vm))
            .args(["--name", "vm", "--parent", prefix]),
    ));
    let s = &with_parent[0];
    assert_eq!(s["parent"], first[0]["snapshot"], "{s}");
    assert_eq!(s["reused_chunks"], 126, "{s}");
    assert_eq!(s["new_chunks"], 2, "{s}");
    let sent = s["bytes_sent"].as_u64().expect("sent");
    assert!(sent < 300_000, "a clone with --parent sent {sent} bytes");
    // Without --parent, a new name is compared with the whole repository:
    // every chunk is known, only ids cross (at most 40 bytes a chunk).
    let plain = summaries(&common::run_ok(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &vm))
            .arg("--name")
            .arg("vm-plain"),
    ));
    assert_eq!(plain[0]["reused_chunks"], 128, "{plain:?}");
    let sent = plain[0]["bytes_sent"].as_u64().expect("sent");
    assert!(sent < 128 * 40 + 1024, "{plain:?}");
    let out = dir.path().join("vm.out");
    restore(&repo, "vm", &out);
    assert!(
        std::fs::read(&out).expect("out") == clone,
        "restored clone differs"
    );
    // A parent that does not exist is one clear error, before any read.
    let out = common::run_fail(
        repo_cmd(&sshd, &repo, &common::bin())
            .arg(remote(&sshd, &vm))
            .args(["--name", "vm2", "--parent", "nosuch"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no snapshot matches \"nosuch\""), "{err}");
}

#[test]
fn two_remote_sources_in_parallel_with_sudo_on_one() {
    let Some(sshd) = Sshd::start("two_remote_sources_in_parallel_with_sudo_on_one") else {
        return;
    };
    if Command::new("sudo")
        .arg("-n")
        .arg("true")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(!common::in_ci(), "sudo -n must work in CI");
        eprintln!("skipping: sudo -n is not available");
        return;
    }
    let dir = common::tempdir();
    let repo = dir.path().join("repo");
    init(&repo);
    let a = common::write_file(dir.path(), "a.img", &common::pseudo_random(3 << 20, 1));
    let b = common::write_file(dir.path(), "b.img", &common::pseudo_random(5 << 20, 2));
    // A wrapper records whether sudo started it, then runs diskdelta.
    let log = dir.path().join("sudo.log");
    let wrapper = dir.path().join("wrapped-diskdelta");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"${{SUDO_COMMAND:+sudo}}${{SUDO_COMMAND:-plain}}\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            common::bin().display()
        ),
    )
    .expect("wrapper");
    common::run_ok(Command::new("chmod").arg("755").arg(&wrapper));
    let out = common::run_ok(
        repo_cmd(&sshd, &repo, &wrapper)
            .arg(remote(&sshd, &a))
            .arg("--sudo")
            .arg("--name")
            .arg("host.a")
            .arg(remote(&sshd, &b))
            .arg("--name")
            .arg("host.b"),
    );
    let s = summaries(&out);
    assert_eq!(s[0]["name"], "host.a");
    assert_eq!(s[1]["name"], "host.b");
    let lines = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("sudo")).count(),
        1,
        "{lines}"
    );
    assert_eq!(
        lines.lines().filter(|l| *l == "plain").count(),
        1,
        "{lines}"
    );
    for (name, src) in [("host.a", &a), ("host.b", &b)] {
        let out = dir.path().join(format!("{name}.out"));
        restore(&repo, name, &out);
        assert_eq!(
            std::fs::read(&out).expect("out"),
            std::fs::read(src).expect("src")
        );
    }
}

#[test]
fn remote_failures_leave_the_repository_valid() {
    let Some(sshd) = Sshd::start("remote_failures_leave_the_repository_valid") else {
        return;
    };
    let dir = common::tempdir();
    let repo = dir.path().join("repo");
    init(&repo);
    let missing = dir.path().join("no such.img");
    let out = common::run_fail(repo_cmd(&sshd, &repo, &common::bin()).arg(remote(&sshd, &missing)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such.img"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one error line, not the remote side's too: {err}"
    );
    assert!(err.starts_with("diskdelta: error: "), "{err}");
    let out = common::run_fail(
        repo_cmd(&sshd, &repo, Path::new("/nonexistent/diskdelta")).arg(remote(&sshd, &missing)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--remote-path"), "{err}");
    common::run_ok(common::diskdelta().args(["verify", "-q", "-r"]).arg(&repo));
    let snaps = common::run_ok(
        common::diskdelta()
            .args(["snapshots", "--json", "-r"])
            .arg(&repo),
    );
    assert_eq!(String::from_utf8_lossy(&snaps.stdout).trim(), "[]");
}
