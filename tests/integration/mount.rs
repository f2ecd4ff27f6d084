//! `diskdelta mount`: snapshots as a read-only FUSE tree, read with `cmp`
//! and, for an ext4 image, loop-mounted read-only and its files compared.
//! The mount process is started by the test and unmounted, killed and
//! reaped when its guard drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common;
use crate::nbd_export::{backup, image, init_repo};

const MIB: usize = 1024 * 1024;

/// Why FUSE cannot be used here, if it cannot.
fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("fusermount3 is not installed (package fuse3)".into());
    }
    None
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*dir.to_string_lossy()))
}

/// A running `diskdelta mount`, unmounted, killed and reaped on drop.
struct Mounted {
    child: Child,
    dir: PathBuf,
}

impl Mounted {
    fn start(repo: &Path, dir: &Path, args: &[&str]) -> Mounted {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut child = common::diskdelta()
            .arg("mount")
            .arg(dir)
            .args(args)
            .arg("-r")
            .arg(repo)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn diskdelta mount");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mounted = Mounted {
            child,
            dir: dir.to_path_buf(),
        };
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("diskdelta mount did not start: {line:?}"));
        assert!(v["snapshots"].as_u64().is_some_and(|n| n > 0), "{v}");
        mounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn snapshots_read_through_fuse_match_and_ctrl_c_unmounts() {
    if let Some(why) = fuse_missing() {
        assert!(!common::in_ci(), "FUSE needed in CI: {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let v1 = image(3 * MIB + 4096, 11, &[1]);
    let v2 = image(2 * MIB, 12, &[]);
    let other = image(MIB, 13, &[]);
    backup(dir.path(), &repo, "vm1", &v1);
    backup(dir.path(), &repo, "vm1", &v2);
    backup(dir.path(), &repo, "other", &other);
    let mnt = dir.path().join("mnt");
    let mut m = Mounted::start(&repo, &mnt, &["vm1"]);
    assert_eq!(common::entries(&mnt), vec!["vm1".to_string()]);
    let files = common::entries(&mnt.join("vm1"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".img")), "{files:?}");
    let expect = [
        common::write_file(dir.path(), "v1", &v1),
        common::write_file(dir.path(), "v2", &v2),
    ];
    for name in &files {
        let path = mnt.join("vm1").join(name);
        let len = std::fs::metadata(&path).expect("stat").len();
        let want = if len == v1.len() as u64 {
            &expect[0]
        } else {
            &expect[1]
        };
        let out = common::run_within(Command::new("cmp").arg(&path).arg(want), 60);
        assert!(
            out.status.success(),
            "cmp {name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let mut sizes: Vec<u64> = files
        .iter()
        .map(|f| {
            std::fs::metadata(mnt.join("vm1").join(f))
                .expect("stat")
                .len()
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![v2.len() as u64, v1.len() as u64]);
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("vm1").join(&files[0]))
            .is_err(),
        "a snapshot image opened for writing"
    );
    assert!(std::fs::metadata(mnt.join("vm1/nope.img")).is_err());
    common::send_signal(m.child.id(), "-INT");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = m.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "mount did not exit on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // The unmount also ends the serving loop; the exit status is still
    // the interruption's, whichever thread gets there first.
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!is_mounted(&mnt), "still mounted after Ctrl-C");
}

/// Why a loop mount cannot be done here, if it cannot.
fn loop_mount_missing() -> Option<String> {
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is absent".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("loop mounts need root".into());
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return Some("mkfs.ext4 is not installed".into());
    }
    None
}

#[test]
fn an_ext4_snapshot_loop_mounts_from_fuse_with_its_files() {
    if let Some(why) = fuse_missing().or_else(loop_mount_missing) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("source tree");
    let files: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            PathBuf::from("a.bin"),
            common::pseudo_random(3 * MIB + 17, 21),
        ),
        (
            PathBuf::from("sub/b.txt"),
            b"hello from a snapshot\n".repeat(1000),
        ),
        (
            PathBuf::from("sub/deeper/c.bin"),
            common::pseudo_random(200_000, 22),
        ),
        (PathBuf::from("empty"), Vec::new()),
    ];
    for (p, data) in &files {
        std::fs::write(src.join(p), data).expect("write source file");
    }
    let img = dir.path().join("fs.img");
    let f = std::fs::File::create(&img).expect("image");
    f.set_len(32 * MIB as u64).expect("size image");
    drop(f);
    common::run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img),
    );
    let data = std::fs::read(&img).expect("image bytes");
    backup(dir.path(), &repo, "fs", &data);
    let mnt = dir.path().join("mnt");
    let _m = Mounted::start(&repo, &mnt, &["fs"]);
    let names = common::entries(&mnt.join("fs"));
    assert_eq!(names.len(), 1, "{names:?}");
    let snap_img = mnt.join("fs").join(&names[0]);
    let inner = dir.path().join("inner");
    std::fs::create_dir_all(&inner).expect("inner mount point");
    let out = common::run_within(
        Command::new("mount")
            .args(["-o", "ro,loop"])
            .arg(&snap_img)
            .arg(&inner),
        60,
    );
    if !out.status.success() {
        let why = common::stderr(&out);
        assert!(!common::in_ci(), "loop mount failed in CI: {why}");
        eprintln!("skipped: loop mount impossible here: {why}");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(inner.clone());
    for (p, want) in &files {
        let got = std::fs::read(inner.join(p)).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        assert!(
            &got == want,
            "{p:?} differs inside the loop-mounted snapshot"
        );
    }
}
