//! `--deploy` through a real sshd on 127.0.0.1: a remote host whose
//! `--remote-path` names no diskdelta gets the binary under test copied
//! into its cache directory (`DISKDELTA_DEPLOY_DIR`, a temporary directory
//! here instead of `~/.cache/diskdelta`), which later runs reuse; a
//! tampered cached binary is replaced, never run.
//!
//! The binary under test is dynamically linked, so the tests name it in
//! `DISKDELTA_DEPLOY_BINARY` (the remote host is this machine, where it
//! runs), as a copy without debug information ([`deploy_binary`]): the
//! test build's debug info is ten times the code.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::common::{self, sshd::Sshd};

/// A `--remote-path` that no remote PATH holds.
const MISSING: &str = "diskdelta-not-installed-here";

/// `DISKDELTA_TEST_DEPLOY_BINARY` (`scripts/test` sets it to the static
/// build), else the binary under test without its debug sections
/// (`strip`), made once per run in cargo's per-target temporary
/// directory; the binary itself where `strip` fails.
fn deploy_binary() -> PathBuf {
    static STRIPPED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STRIPPED
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("DISKDELTA_TEST_DEPLOY_BINARY") {
                return PathBuf::from(p);
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let out = dir.join("deploy-diskdelta");
            let tmp = dir.join(format!("deploy-diskdelta.{}", std::process::id()));
            let stripped = Command::new("strip")
                .arg("-o")
                .arg(&tmp)
                .arg(common::bin())
                .status()
                .is_ok_and(|s| s.success());
            if stripped && std::fs::rename(&tmp, &out).is_ok() {
                out
            } else {
                let _ = std::fs::remove_file(&tmp);
                common::bin()
            }
        })
        .clone()
}

/// `diskdelta` with the deploy settings of these tests.
fn cmd(cache: &Path, binary: &Path) -> Command {
    let mut cmd = common::diskdelta();
    cmd.env_remove("DISKDELTA_DEPLOY")
        .env("DISKDELTA_DEPLOY_DIR", cache)
        .env("DISKDELTA_DEPLOY_BINARY", binary);
    cmd
}

fn sync(sshd: &Sshd, cache: &Path, src: &Path, dst: &Path, deploy: bool) -> Output {
    let mut c = cmd(cache, &deploy_binary());
    c.args(["sync", "-q", "-e"])
        .arg(sshd.ssh_command())
        .args(["--remote-path", MISSING])
        .arg(src)
        .arg(format!("{}:{}", sshd.destination(), dst.display()));
    if deploy {
        c.arg("--deploy");
    }
    c.output().expect("run sync")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}", stderr(out));
}

/// The one cache directory below `cache`, and the binary in it.
fn cached_binary(cache: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache directory exists")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let name = dirs[0]
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name")
        .to_string();
    let hash = blake3::hash(&std::fs::read(deploy_binary()).expect("read bin"));
    assert_eq!(
        name,
        format!(
            "{}-{}",
            env!("CARGO_PKG_VERSION"),
            &hash.to_hex().as_str()[..16]
        )
    );
    let mode = std::fs::metadata(&dirs[0])
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "cache directory mode {mode:o}");
    let entries: Vec<_> = std::fs::read_dir(&dirs[0])
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["diskdelta"], "no temporary files left");
    dirs[0].join("diskdelta")
}

#[test]
fn sync_deploys_then_reuses_and_replaces_a_tampered_binary() {
    let Some(sshd) = Sshd::start("sync_deploys_then_reuses_and_replaces_a_tampered_binary") else {
        return;
    };
    let dir = common::tempdir();
    let cache = dir.path().join("cache");
    let mut data = common::pseudo_random(4 << 20, 7);
    let src = common::write_file(dir.path(), "src.img", &data);
    let dst = dir.path().join("dst.img");

    // Without --deploy: one error line that says to use it, nothing made.
    let out = sync(&sshd, &cache, &src, &dst, false);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("diskdelta is not installed on") && err.contains("--deploy"),
        "{err}"
    );
    assert!(!cache.exists() && !dst.exists());

    // First run: uploads, runs, says so.
    let started = Instant::now();
    let out = sync(&sshd, &cache, &src, &dst, true);
    let first = started.elapsed();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("deployed"), "{err}");
    assert_eq!(std::fs::read(&dst).expect("dst"), data);
    let binary = cached_binary(&cache);
    assert_eq!(
        std::fs::read(&binary).expect("cached"),
        std::fs::read(deploy_binary()).expect("bin")
    );
    let before = std::fs::metadata(&binary).expect("meta");

    // Second run: the cached binary as it was, no upload.
    data[12345] ^= 0xff;
    std::fs::write(&src, &data).expect("change src");
    let started = Instant::now();
    let out = sync(&sshd, &cache, &src, &dst, true);
    let second = started.elapsed();
    assert_ok(&out);
    assert_eq!(stderr(&out), "", "no upload, no message");
    assert_eq!(std::fs::read(&dst).expect("dst"), data);
    let after = std::fs::metadata(cached_binary(&cache)).expect("meta");
    assert_eq!(
        (before.ino(), before.mtime(), before.mtime_nsec()),
        (after.ino(), after.mtime(), after.mtime_nsec())
    );
    // For comparison: the same sync with diskdelta installed there.
    let started = Instant::now();
    assert_ok(
        &cmd(&cache, &deploy_binary())
            .args(["sync", "-q", "-e"])
            .arg(sshd.ssh_command())
            .arg("--remote-path")
            .arg(common::bin())
            .arg(&src)
            .arg(format!("{}:{}", sshd.destination(), dst.display()))
            .output()
            .expect("sync"),
    );
    let installed = started.elapsed();
    eprintln!(
        "deploy timing ({} bytes): first run (upload) {:.3} s, second run (cached) {:.3} s, installed {:.3} s",
        std::fs::metadata(deploy_binary()).expect("meta").len(),
        first.as_secs_f64(),
        second.as_secs_f64(),
        installed.as_secs_f64()
    );

    // A tampered cached binary is never run: it is replaced.
    let marker = dir.path().join("tampered-binary-ran");
    std::fs::write(
        &binary,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .expect("tamper");
    data[4 << 19] ^= 0xff;
    std::fs::write(&src, &data).expect("change src");
    let out = sync(&sshd, &cache, &src, &dst, true);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("had another SHA-256") && err.contains("replaced"),
        "{err}"
    );
    assert!(!marker.exists(), "the tampered binary ran");
    assert_eq!(std::fs::read(&dst).expect("dst"), data);
    assert_eq!(
        std::fs::read(cached_binary(&cache)).expect("cached"),
        std::fs::read(deploy_binary()).expect("bin")
    );
}

#[test]
fn an_installed_binary_of_another_protocol_is_replaced_by_the_deployed_one() {
    let Some(sshd) =
        Sshd::start("an_installed_binary_of_another_protocol_is_replaced_by_the_deployed_one")
    else {
        return;
    };
    let dir = common::tempdir();
    let cache = dir.path().join("cache");
    // An "old diskdelta": its --version names no protocol we speak, and
    // serving would fail loudly.
    let old = dir.path().join("old-diskdelta");
    std::fs::write(
        &old,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'diskdelta 0.0.1'; echo 'wire protocol: 1'; exit 0; fi\necho old >&2; exit 9\n",
    )
    .expect("write old");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let repo = dir.path().join("repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(&repo),
    );
    let data = common::pseudo_random(3 << 20, 11);
    let src = common::write_file(dir.path(), "disk.img", &data);
    let out = cmd(&cache, &deploy_binary())
        .args(["backup", "-q", "-r"])
        .arg(&repo)
        .arg("-e")
        .arg(sshd.ssh_command())
        .arg("--remote-path")
        .arg(&old)
        .arg("--deploy")
        .arg(format!("{}:{}", sshd.destination(), src.display()))
        .args(["--name", "disk"])
        .output()
        .expect("backup");
    assert_ok(&out);
    assert!(stderr(&out).contains("deployed"), "{}", stderr(&out));
    cached_binary(&cache);
    let restored = dir.path().join("restored.img");
    common::run_ok(
        common::diskdelta()
            .args(["restore", "-q", "-r"])
            .arg(&repo)
            .arg("disk")
            .arg("-o")
            .arg(&restored),
    );
    assert_eq!(std::fs::read(&restored).expect("restored"), data);

    // A compatible installed binary is used as it is: nothing deployed.
    let cache2 = dir.path().join("cache2");
    let out = cmd(&cache2, &deploy_binary())
        .args(["backup", "-q", "-r"])
        .arg(&repo)
        .arg("-e")
        .arg(sshd.ssh_command())
        .arg("--remote-path")
        .arg(common::bin())
        .arg("--deploy")
        .arg(format!("{}:{}", sshd.destination(), src.display()))
        .args(["--name", "disk"])
        .output()
        .expect("backup");
    assert_ok(&out);
    assert_eq!(stderr(&out), "");
    assert!(!cache2.exists());
}

#[test]
fn remote_backup_with_sudo_deploys() {
    let Some(sshd) = Sshd::start("remote_backup_with_sudo_deploys") else {
        return;
    };
    if Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(!common::in_ci(), "sudo -n must work in CI");
        eprintln!("skipping: sudo -n is not available");
        return;
    }
    let dir = common::tempdir();
    let cache = dir.path().join("cache");
    let repo = dir.path().join("repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(&repo),
    );
    let data = common::pseudo_random(2 << 20, 5);
    let src = common::write_file(dir.path(), "disk.img", &data);
    // A source only root may read: sudo is what makes it readable when
    // the tests run unprivileged; as root it still must work.
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = cmd(&cache, &deploy_binary())
        .env("DISKDELTA_DEPLOY", "1")
        .args(["backup", "-q", "-r"])
        .arg(&repo)
        .arg("-e")
        .arg(sshd.ssh_command())
        .args(["--remote-path", MISSING])
        .arg(format!("{}:{}", sshd.destination(), src.display()))
        .arg("--sudo")
        .args(["--name", "disk"])
        .output()
        .expect("backup");
    assert_ok(&out);
    assert!(stderr(&out).contains("deployed"), "{}", stderr(&out));
    cached_binary(&cache);
}

#[test]
fn ssh_repository_deploys_and_reuses() {
    let Some(sshd) = Sshd::start("ssh_repository_deploys_and_reuses") else {
        return;
    };
    let dir = common::tempdir();
    let cache = dir.path().join("cache");
    let location = format!(
        "ssh://{}:{}{}",
        sshd.destination(),
        sshd.port(),
        dir.path().join("repo").display()
    );
    // The harness's ssh command carries -p already; the location's port
    // adds the same one again, which ssh accepts.
    let repo_cmd = |args: &[&str]| {
        let mut c = cmd(&cache, &deploy_binary());
        c.env("DISKDELTA_RSH", sshd.ssh_command())
            .env("DISKDELTA_REMOTE_PATH", MISSING)
            .env("DISKDELTA_DEPLOY", "1")
            .args(args)
            .args(["-r", &location]);
        c.output().expect("run")
    };
    let out = repo_cmd(&["init", "-q", "--chunk-size", "64K"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("deployed"), "{}", stderr(&out));
    let binary = cached_binary(&cache);
    let ino = std::fs::metadata(&binary).expect("meta").ino();
    let out = repo_cmd(&["snapshots", "--json"]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert_eq!(std::fs::metadata(&binary).expect("meta").ino(), ino);
}

#[test]
fn a_host_of_another_architecture_is_named() {
    let Some(sshd) = Sshd::start("a_host_of_another_architecture_is_named") else {
        return;
    };
    let dir = common::tempdir();
    let cache = dir.path().join("cache");
    // The binary under test with another e_machine: an ELF file for a
    // machine this host is not.
    let mut elf = std::fs::read(deploy_binary()).expect("read bin");
    let (machine, name) = if std::env::consts::ARCH == "aarch64" {
        (62u16, "x86_64")
    } else {
        (183u16, "aarch64")
    };
    elf[18..20].copy_from_slice(&machine.to_le_bytes());
    let foreign = common::write_file(dir.path(), "foreign-diskdelta", &elf);
    let src = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let out = cmd(&cache, &foreign)
        .args(["sync", "-q", "--deploy", "-e"])
        .arg(sshd.ssh_command())
        .args(["--remote-path", MISSING])
        .arg(&src)
        .arg(format!(
            "{}:{}",
            sshd.destination(),
            dir.path().join("dst.img").display()
        ))
        .output()
        .expect("sync");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("is {}", std::env::consts::ARCH))
            && err.contains(&format!("is for {name}")),
        "{err}"
    );
    assert!(!cache.exists(), "nothing uploaded");
}

#[test]
fn without_a_static_binary_deploy_says_what_to_do() {
    let dir = common::tempdir();
    let out = common::diskdelta()
        .env_remove("DISKDELTA_DEPLOY_BINARY")
        .args(["sync", "-q", "--deploy", "-e", "false"])
        .arg(dir.path().join("a"))
        .arg("somehost:/x")
        .output()
        .expect("sync");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no static diskdelta binary to deploy")
            && err.contains("DISKDELTA_DEPLOY_BINARY"),
        "{err}"
    );
}

#[test]
fn a_host_that_hangs_during_deploy_is_given_up_after_the_timeout() {
    let dir = common::tempdir();
    // An "ssh" that connects and then says nothing.
    let rsh = common::write_file(dir.path(), "hanging-ssh", b"#!/bin/sh\nexec sleep 60\n");
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let src = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let started = Instant::now();
    let out = cmd(&dir.path().join("cache"), &deploy_binary())
        .env("DISKDELTA_TIMEOUT", "1")
        .args(["sync", "-q", "--deploy", "-e"])
        .arg(&rsh)
        .arg(&src)
        .arg("somehost:/x.img")
        .output()
        .expect("sync");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no data from somehost for 1 s"), "{err}");
}

#[test]
fn an_unusable_cache_directory_is_one_error_line() {
    let Some(sshd) = Sshd::start("an_unusable_cache_directory_is_one_error_line") else {
        return;
    };
    let dir = common::tempdir();
    // A file where the cache directory would be.
    let blocker = common::write_file(dir.path(), "not-a-dir", b"x");
    let src = common::write_file(dir.path(), "src.img", &[1u8; 4096]);
    let dst = dir.path().join("dst.img");
    let out = sync(&sshd, &blocker.join("cache"), &src, &dst, true);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot create or write") && err.contains("DISKDELTA_DEPLOY_DIR"),
        "{err}"
    );
    assert!(!dst.exists());
}
