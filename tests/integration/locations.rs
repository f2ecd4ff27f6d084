//! Strict locations: `-r`/`DISKDELTA_REPO` and the sync and backup
//! locations take exactly the documented forms; anything else is one error
//! line listing them, exit 1, and nothing is created.

use std::process::Output;

use crate::common;

fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("diskdelta: error: "), "{err}");
    err
}

#[test]
fn repository_locations_of_unknown_forms_are_refused_and_nothing_is_created() {
    let dir = common::tempdir();
    let cwd = dir.path().join("cwd");
    let data = dir.path().join("data");
    std::fs::create_dir(&cwd).expect("mkdir");
    let img = common::write_file(dir.path(), "disk.img", &[7u8; 8192]);
    for bad in [
        "sftp:host:/x",
        "rest:http://h/x",
        "file:///srv/repo",
        "backup.example.net:/srv/repo",
        "b2:bucket/x",
    ] {
        for args in [
            vec!["init", "-q", "-r", bad],
            vec!["snapshots", "-r", bad],
            vec!["backup", "-q", "--name", "x", "-r", bad],
        ] {
            let mut cmd = common::diskdelta();
            cmd.current_dir(&cwd)
                .env("XDG_DATA_HOME", &data)
                .args(&args);
            if args[0] == "backup" {
                cmd.arg(&img);
            }
            let err = one_error_line(&cmd.output().expect("run"));
            assert!(
                err.contains("unknown scheme") && err.contains("ssh://[USER@]HOST[:PORT]/PATH"),
                "{bad}: {err}"
            );
        }
        // The same through the environment.
        let out = common::diskdelta()
            .current_dir(&cwd)
            .env("XDG_DATA_HOME", &data)
            .env("DISKDELTA_REPO", bad)
            .args(["init", "-q"])
            .output()
            .expect("run");
        one_error_line(&out);
    }
    // The sync/backup form names the ssh:// URL a repository needs.
    let out = common::diskdelta()
        .current_dir(&cwd)
        .args(["init", "-q", "-r", "backup@vault:srv/repo"])
        .output()
        .expect("run");
    let err = one_error_line(&out);
    assert!(err.contains("ssh://backup@vault/./srv/repo"), "{err}");
    assert!(
        common::entries(&cwd).is_empty(),
        "{:?}",
        common::entries(&cwd)
    );
    assert!(!data.exists(), "the default repository was created");

    // A directory with a colon is written ./a:b.
    common::run_ok(common::diskdelta().current_dir(&cwd).args([
        "init",
        "-q",
        "--chunk-size",
        "64K",
        "-r",
        "./a:b",
    ]));
    assert!(cwd.join("a:b").join("config").exists());
}

#[test]
fn sync_and_backup_locations_of_unknown_forms_are_refused() {
    let dir = common::tempdir();
    let cwd = dir.path().join("cwd");
    let data = dir.path().join("data");
    std::fs::create_dir(&cwd).expect("mkdir");
    common::write_file(&cwd, "disk.img", &[1u8; 8192]);
    for bad in [
        "sftp:host:/x",
        "ssh://host/srv/disk.img",
        "s3:http://127.0.0.1:9000/bucket/x",
        "file:///srv/disk.img",
    ] {
        for (src, dst) in [("disk.img", bad), (bad, "copy.img")] {
            let out = common::diskdelta()
                .current_dir(&cwd)
                // Never reached: the location is refused first.
                .args(["sync", "-q", "-e", "false", src, dst])
                .output()
                .expect("run");
            let err = one_error_line(&out);
            assert!(
                err.contains("unknown scheme") && err.contains("[USER@]HOST:PATH"),
                "{bad}: {err}"
            );
        }
        let out = common::diskdelta()
            .current_dir(&cwd)
            .env("XDG_DATA_HOME", &data)
            .args(["backup", "-q", "-e", "false", bad])
            .output()
            .expect("run");
        let err = one_error_line(&out);
        assert!(err.contains("unknown scheme"), "{bad}: {err}");
    }
    assert_eq!(common::entries(&cwd), ["disk.img"]);
    assert!(!data.exists(), "the default repository was created");
}
