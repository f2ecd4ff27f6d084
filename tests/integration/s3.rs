//! The repository on real S3 servers on loopback (moto and s3rver, started
//! by `tests/common/s3.rs`): backend conformance, every command, bad
//! credentials and buckets, a server stopped mid-backup, and concurrent
//! writers racing gc.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::loopdev::LoopDevice;
use crate::common::s3::{Kind, S3Server, ALL};

const MIB: usize = 1 << 20;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one-line error of a failed command.
fn one_line_error(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("diskdelta: error: "), "{err}");
    lines[0].to_string()
}

/// An image: incompressible data with runs of zeros (holes).
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut img = common::pseudo_random(len, seed);
    for (i, chunk) in img.chunks_mut(MIB).enumerate() {
        if i % 5 == 3 {
            chunk.fill(0);
        }
    }
    img
}

/// A repository on a server.
struct S3Repo {
    location: String,
    credentials: (&'static str, &'static str),
    dir: tempfile::TempDir,
    /// Settings for every command (`DISKDELTA_S3_PART_SIZE`, ...).
    settings: Vec<(&'static str, &'static str)>,
}

impl S3Repo {
    fn init(server: &S3Server, bucket: &str, prefix: &str) -> S3Repo {
        S3Repo::init_with(server, bucket, prefix, &[])
    }

    fn init_with(
        server: &S3Server,
        bucket: &str,
        prefix: &str,
        settings: &[(&'static str, &'static str)],
    ) -> S3Repo {
        let repo = S3Repo {
            location: server.location(bucket, prefix),
            credentials: server.credentials(),
            dir: common::tempdir(),
            settings: settings.to_vec(),
        };
        common::run_ok(&mut repo.cmd(&["init", "-q"]));
        repo
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = crate::common::s3::diskdelta_with(self.credentials);
        c.envs(self.settings.iter().copied());
        c.arg(args[0])
            .arg("-r")
            .arg(&self.location)
            .args(&args[1..]);
        c
    }

    fn file(&self, name: &str, data: &[u8]) -> std::path::PathBuf {
        common::write_file(self.dir.path(), name, data)
    }

    fn backup(&self, source: &Path, name: &str) -> Value {
        let out = common::run_ok(
            self.cmd(&["backup", "--json"])
                .arg(source)
                .args(["--name", name]),
        );
        json(&out.stdout)[0]["summary"].clone()
    }

    fn assert_restores(&self, spec: &str, expected: &[u8]) {
        let out_path = self.dir.path().join(format!("restored-{spec}"));
        common::run_ok(self.cmd(&["restore", spec, "-q", "-o"]).arg(&out_path));
        let data = std::fs::read(&out_path).expect("read restored image");
        std::fs::remove_file(&out_path).expect("remove restored image");
        assert!(data == expected, "restored {spec} differs from the image");
    }

    fn verify_ok(&self) -> Value {
        let out = common::run_ok(&mut self.cmd(&["verify", "--json", "--read-data"]));
        let v = json(&out.stdout);
        assert_eq!(v["errors"], serde_json::json!([]), "verify errors: {v}");
        v
    }

    fn snapshots(&self) -> Vec<Value> {
        let v = json(&common::run_ok(&mut self.cmd(&["snapshots", "--json"])).stdout);
        v.as_array().expect("a list").clone()
    }

    /// The backend itself, for looking at objects.
    fn backend(&self) -> std::sync::Arc<dyn diskdelta::repo::backend::Backend> {
        let loc = diskdelta::repo::location::parse(std::ffi::OsStr::new(&self.location))
            .expect("location");
        let diskdelta::repo::location::RepoLocation::S3(loc) = loc else {
            panic!("not S3")
        };
        let (id, secret) = self.credentials;
        std::sync::Arc::new(
            diskdelta::repo::backend::s3::S3Backend::new(options(&loc, id, secret))
                .expect("backend"),
        )
    }
}

fn options(
    loc: &diskdelta::repo::location::S3Location,
    id: &str,
    secret: &str,
) -> diskdelta::repo::backend::s3::S3Options {
    use diskdelta::repo::backend::s3::{S3Credentials, S3Options};
    S3Options {
        endpoint: loc.endpoint.clone(),
        bucket: loc.bucket.clone(),
        prefix: loc.prefix.clone(),
        region: "us-east-1".into(),
        virtual_host: false,
        credentials: S3Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: None,
        },
        // Small parts: the conformance suite's 17 MiB object goes up in parts.
        part_size: 16 << 20,
        connections: 4,
        retry_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    }
}

#[test]
fn backend_conformance_on_every_server() {
    use diskdelta::repo::backend::s3::S3Backend;
    for kind in ALL {
        let server = S3Server::start(kind);
        for prefix in ["", "some/prefix"] {
            let loc = match diskdelta::repo::location::parse(std::ffi::OsStr::new(
                &server.location("conform", prefix),
            ))
            .expect("location")
            {
                diskdelta::repo::location::RepoLocation::S3(l) => l,
                other => panic!("{other:?}"),
            };
            let (id, secret) = server.credentials();
            let backend = S3Backend::new(options(&loc, id, secret)).expect("backend");
            if !backend.bucket_exists().expect("bucket check") {
                backend.create_bucket().expect("create bucket");
            }
            assert!(backend.bucket_exists().expect("bucket check"));
            diskdelta::repo::backend::conformance(&backend);
            // No multipart upload left announced.
            assert!(
                diskdelta::repo::backend::Backend::list(&backend, "multipart/")
                    .expect("list")
                    .is_empty()
            );
        }
    }
}

#[test]
fn every_command_works_on_s3() {
    for kind in ALL {
        let server = S3Server::start(kind);
        // 8 MiB parts: packs (16 MiB) go up as multipart uploads.
        let repo = S3Repo::init_with(
            &server,
            "backups",
            "host1",
            &[("DISKDELTA_S3_PART_SIZE", "8M")],
        );
        // A second init is refused, whatever the server does with
        // conditional writes.
        let out = common::run_fail(&mut repo.cmd(&["init"]));
        assert!(one_line_error(&out).contains("already exists"), "{kind:?}");

        // 40 MiB: two full packs and a third, each a multipart upload.
        let v1 = image(40 * MIB, 1);
        let mut v2 = v1.clone();
        for at in [0, 7 * MIB + 5, 33 * MIB] {
            v2[at..at + 4096].copy_from_slice(&common::pseudo_random(4096, at as u64));
        }
        let p1 = repo.file("v1", &v1);
        let p2 = repo.file("v2", &v2);
        let s1 = repo.backup(&p1, "vm");
        let s2 = repo.backup(&p2, "vm");
        assert_eq!(
            s2["new_chunks"], 3,
            "{kind:?}: incremental stores 3 chunks: {s2}"
        );
        let id1 = s1["snapshot"].as_str().expect("id").to_string();
        let id2 = s2["snapshot"].as_str().expect("id").to_string();
        assert_eq!(repo.snapshots().len(), 2);

        // restore: file, stdout, in place, device.
        repo.assert_restores(&id1, &v1);
        repo.assert_restores("vm", &v2);
        let out = common::run_ok(&mut repo.cmd(&["restore", "vm", "-q"]));
        assert!(out.stdout == v2, "{kind:?}: restore to stdout");
        let target = repo.file("target", &v1);
        let out = common::run_ok(
            repo.cmd(&["restore", &id2, "--json", "--in-place"])
                .arg(&target),
        );
        let summary = json(&out.stdout);
        assert_eq!(summary["chunks_fetched"], 3, "{summary}");
        assert!(std::fs::read(&target).expect("read") == v2);
        if let Some(dev) = LoopDevice::attach("s3::every_command", &image(41 * MIB, 9), 41 << 20) {
            common::run_ok(repo.cmd(&["restore", &id1, "-q", "-o"]).arg(dev.path()));
            assert!(
                dev.read_all()[..v1.len()] == v1[..],
                "{kind:?}: device restore"
            );
        }

        // diff against a snapshot, applied locally.
        let delta = repo.dir.path().join("d.ddelta");
        common::run_ok(
            repo.cmd(&["diff", "-q", "--from-snapshot", &id1])
                .arg(&p2)
                .arg("-o")
                .arg(&delta),
        );
        let rebuilt = repo.dir.path().join("rebuilt");
        common::run_ok(
            common::diskdelta()
                .args(["apply", "-q"])
                .arg(&delta)
                .arg("--base")
                .arg(&p1)
                .arg("-o")
                .arg(&rebuilt),
        );
        assert!(std::fs::read(&rebuilt).expect("read") == v2);

        let status = json(&common::run_ok(&mut repo.cmd(&["status", "--json"])).stdout);
        assert_eq!(status["snapshots"], 2);
        assert!(status["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("s3:http://127.0.0.1:")));
        repo.verify_ok();

        // forget --prune drops v1; v2 still restores.
        let out = common::run_ok(&mut repo.cmd(&["forget", "--json", "--prune", &id1]));
        let report = json(&out.stdout);
        assert_eq!(report["removed"], 1, "{report}");
        assert!(report["prune"].is_object(), "{report}");
        assert_eq!(repo.snapshots().len(), 1);
        common::run_ok(&mut repo.cmd(&["gc", "-q"]));
        common::run_ok(&mut repo.cmd(&["unlock", "-q"]));
        repo.verify_ok();
        repo.assert_restores("vm", &v2);
        let backend = repo.backend();
        assert!(
            backend.list("locks/").expect("list").is_empty(),
            "locks left"
        );
        assert!(
            backend.list("multipart/").expect("list").is_empty(),
            "uploads left"
        );
    }
}

#[test]
fn bad_credentials_buckets_and_locations_are_one_line_errors() {
    let server = S3Server::start(Kind::S3rver);
    let repo = S3Repo::init(&server, "good", "x");
    let img = repo.file("img", &image(2 * MIB, 3));

    // An access key the server does not know.
    let out = common::run_fail(
        repo.cmd(&["backup", "--name", "x"])
            .arg(&img)
            .env("AWS_ACCESS_KEY_ID", "WRONG"),
    );
    let err = one_line_error(&out);
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
    assert_eq!(out.status.code(), Some(1));

    // No credentials at all.
    let home = common::tempdir();
    let out = common::run_fail(
        repo.cmd(&["snapshots"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("HOME", home.path()),
    );
    assert!(one_line_error(&out).contains("no S3 credentials"));

    // A profile from ~/.aws/credentials.
    std::fs::create_dir_all(home.path().join(".aws")).expect("mkdir");
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[backup]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n",
    )
    .expect("write credentials");
    let profile = |name: &str| {
        let mut c = repo.cmd(&["snapshots", "--json"]);
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("HOME", home.path())
            .env("AWS_PROFILE", name);
        c
    };
    let out = common::run_ok(&mut profile("backup"));
    assert_eq!(json(&out.stdout), serde_json::json!([]));
    let out = common::run_fail(&mut profile("missing"));
    assert!(one_line_error(&out).contains("no such profile"));

    // A missing bucket is named, and only init creates it.
    let missing = server.location("nobucket", "");
    let out = common::run_fail(server.diskdelta().args(["snapshots", "-r", &missing]));
    let err = one_line_error(&out);
    assert!(err.contains("bucket nobucket does not exist"), "{err}");
    // A bucket without a repository.
    let out = common::run_fail(server.diskdelta().args([
        "snapshots",
        "-r",
        &server.location("good", "other"),
    ]));
    assert!(one_line_error(&out).contains("init"), "{}", stderr(&out));

    // Locations with a scheme we do not know are refused, not created.
    let cwd = common::tempdir();
    for bad in ["sftp:host:/x", "rest:http://h/x", "s3:http://127.0.0.1:1"] {
        let out = common::run_fail(
            server
                .diskdelta()
                .current_dir(cwd.path())
                .args(["backup", "--name", "x", "-r", bad])
                .arg(&img),
        );
        let err = one_line_error(&out);
        assert!(err.contains("s3:"), "{bad}: {err}");
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
    assert!(
        common::entries(cwd.path()).is_empty(),
        "nothing created locally"
    );

    // An unreachable server fails after the retry window, on one line.
    let out = common::run_within(
        server
            .diskdelta()
            .env("DISKDELTA_S3_RETRY_TIMEOUT", "2")
            .args(["snapshots", "-r", "s3:http://127.0.0.1:1/bucket"]),
        60,
    );
    assert!(!out.status.success());
    one_line_error(&out);
}

#[test]
fn a_server_stopped_mid_backup_fails_the_backup_and_a_rerun_completes() {
    let mut server = S3Server::start(Kind::S3rver);
    let repo = S3Repo::init(&server, "stop", "");
    let small = image(3 * MIB, 11);
    let ps = repo.file("small", &small);
    repo.backup(&ps, "small");
    // Big enough that the backup is still uploading when the server goes.
    let img = image(160 * MIB, 12);
    let path = repo.file("big", &img);
    let mut child = repo
        .cmd(&["backup", "-q", "--name", "big"])
        .arg(&path)
        .env("DISKDELTA_S3_RETRY_TIMEOUT", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup");
    std::thread::sleep(Duration::from_millis(600));
    server.stop();
    let started = Instant::now();
    let out = loop {
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "backup hangs without its server"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!out.status.success(), "backup succeeded without its server");
    one_line_error(&out);
    server.restart();
    repo.backup(&path, "big");
    repo.verify_ok();
    repo.assert_restores("big", &img);
    repo.assert_restores("small", &small);
    // The failed backup released its lock; gc may run and removes
    // nothing anything needs.
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    repo.verify_ok();
}

#[test]
fn four_writers_and_gc_racing_them_lose_nothing() {
    let server = S3Server::start(Kind::Moto);
    let repo = S3Repo::init(&server, "fleet", "shared");
    // Garbage for gc.
    let old = repo.file("old", &image(6 * MIB, 20));
    let s = repo.backup(&old, "old");
    common::run_ok(&mut repo.cmd(&["forget", "-q", s["snapshot"].as_str().expect("id")]));

    let template = image(8 * MIB, 21);
    let mut images = Vec::new();
    for round in 0..2u64 {
        let mut children = Vec::new();
        for host in 0..4u64 {
            // Hosts cloned from one template: shared chunks stored once.
            let img = [template.clone(), image(4 * MIB, 100 + host * 10 + round)].concat();
            let path = repo.file(&format!("h{host}-{round}"), &img);
            let name = format!("host{host}");
            let mut c = repo.cmd(&["backup", "-q", "--name", &name, "--time"]);
            c.arg(format!("2026-0{}-01", round + 1)).arg(&path);
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            children.push((name, img, path, c.spawn().expect("spawn")));
        }
        let mut gc_ran = 0;
        for _ in 0..4 {
            let gc = repo.cmd(&["gc", "-q"]).output().expect("gc");
            if gc.status.success() {
                gc_ran += 1;
            } else {
                assert!(stderr(&gc).contains("locked"), "gc: {}", stderr(&gc));
            }
        }
        let _ = gc_ran;
        for (name, img, path, child) in children {
            let out = child.wait_with_output().expect("wait");
            if !out.status.success() {
                // gc held its lock when this backup started: it says so
                // and a rerun succeeds.
                assert!(stderr(&out).contains("locked"), "{name}: {}", stderr(&out));
                common::run_ok(
                    repo.cmd(&["backup", "-q", "--name", &name, "--time"])
                        .arg(format!("2026-0{}-01", round + 1))
                        .arg(&path),
                );
            }
            images.push((name, round, img));
        }
    }
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    repo.verify_ok();
    let snaps = repo.snapshots();
    assert_eq!(snaps.len(), 8, "every backup left its snapshot");
    for (name, round, img) in &images {
        if *round == 1 {
            repo.assert_restores(name, img);
        }
    }
    for s in &snaps {
        common::run_ok(&mut repo.cmd(&[
            "restore",
            s["id"].as_str().expect("id"),
            "-o",
            "/dev/null",
        ]));
    }
}

#[test]
fn copy_replicates_between_local_and_s3_sending_only_missing_chunks() {
    let server = S3Server::start(Kind::S3rver);
    let offsite = S3Repo::init(&server, "offsite", "copy");
    let local_dir = common::tempdir();
    let local = local_dir.path().join("repo");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&local));
    let local_cmd = |args: &[&str]| {
        let mut c = crate::common::s3::diskdelta_with(server.credentials());
        c.arg(args[0]).arg("-r").arg(&local).args(&args[1..]);
        c
    };
    let v1 = image(20 * MIB, 30);
    let mut v2 = v1.clone();
    v2[5 * MIB..5 * MIB + 100].fill(7);
    let p1 = common::write_file(local_dir.path(), "v1", &v1);
    let p2 = common::write_file(local_dir.path(), "v2", &v2);
    common::run_ok(local_cmd(&["backup", "-q", "--name", "vm", "--time", "2026-01-01"]).arg(&p1));
    common::run_ok(local_cmd(&["backup", "-q", "--name", "vm", "--time", "2026-01-02"]).arg(&p2));
    common::run_ok(local_cmd(&["backup", "-q", "--name", "other"]).arg(&p1));

    // Local to S3: one name; every chunk once.
    let out = common::run_ok(offsite.cmd(&["copy", "--json", "vm", "--from"]).arg(&local));
    let r = json(&out.stdout);
    assert_eq!(r["copied"].as_array().map(Vec::len), Some(2), "{r}");
    let nonzero = v1.chunks(MIB).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
    assert_eq!(r["chunks_copied"], nonzero + 1, "{r}");
    offsite.verify_ok();
    assert_eq!(offsite.snapshots().len(), 2);
    offsite.assert_restores("vm", &v2);

    // Again, with everything: only the new snapshot's file, no chunk.
    let out = common::run_ok(offsite.cmd(&["copy", "--json", "--from"]).arg(&local));
    let r = json(&out.stdout);
    assert_eq!(r["copied"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(
        r["already_present"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    assert_eq!(r["chunks_copied"], 0, "{r}");
    // The same snapshots on both sides (their ids differ: each encrypted
    // repository seals with its own key).
    let ids = |v: Vec<Value>| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|s| format!("{} {} {}", s["name"], s["time"], s["digest"]))
            .collect();
        ids.sort();
        ids
    };
    let local_snaps = json(&common::run_ok(&mut local_cmd(&["snapshots", "--json"])).stdout);
    assert_eq!(
        ids(offsite.snapshots()),
        ids(local_snaps.as_array().expect("list").clone())
    );

    // S3 back to a new local repository.
    let back = local_dir.path().join("back");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&back));
    let mut c = crate::common::s3::diskdelta_with(server.credentials());
    c.args(["copy", "-q", "--from", &offsite.location, "-r"])
        .arg(&back);
    common::run_ok(&mut c);
    let restored = local_dir.path().join("restored");
    common::run_ok(
        common::diskdelta()
            .args(["restore", "-q", "vm", "-r"])
            .arg(&back)
            .arg("-o")
            .arg(&restored),
    );
    assert!(std::fs::read(&restored).expect("read") == v2);

    // Different chunk sizes are refused; a copy into itself too.
    let small = local_dir.path().join("small");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "--chunk-size", "64K", "-r"])
            .arg(&small),
    );
    let out = common::run_fail(
        common::diskdelta()
            .args(["copy", "--from"])
            .arg(&local)
            .arg("-r")
            .arg(&small),
    );
    assert!(one_line_error(&out).contains("chunk sizes differ"));
    let out = common::run_fail(
        common::diskdelta()
            .args(["copy", "--from"])
            .arg(&local)
            .arg("-r")
            .arg(&local),
    );
    assert!(one_line_error(&out).contains("same repository"));
}

#[test]
fn copy_refuses_a_damaged_source_chunk_and_writes_no_snapshot() {
    let server = S3Server::start(Kind::Moto);
    let dest = S3Repo::init(&server, "dest", "");
    let dir = common::tempdir();
    let local = dir.path().join("repo");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&local));
    let img = common::pseudo_random(3 * MIB, 40);
    let p = common::write_file(dir.path(), "img", &img);
    common::run_ok(
        common::diskdelta()
            .args(["backup", "-q", "--name", "x", "-r"])
            .arg(&local)
            .arg(&p),
    );
    // Flip a byte inside the first blob of the (only) pack.
    let pack = common::files_under(&local.join("data"))
        .into_iter()
        .next()
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    bytes[100] ^= 0x55;
    std::fs::write(&pack, &bytes).expect("write pack");
    let out = common::run_fail(dest.cmd(&["copy", "--from"]).arg(&local));
    let err = one_line_error(&out);
    assert!(
        err.contains("does not match") || err.contains("zstd") || err.contains("corrupt"),
        "{err}"
    );
    assert!(
        dest.snapshots().is_empty(),
        "a snapshot with a damaged chunk was copied"
    );
}

#[test]
fn gc_aborts_multipart_uploads_of_killed_writers() {
    use object_store::multipart::MultipartStore;
    use object_store::path::Path as StorePath;
    let server = S3Server::start(Kind::Moto);
    let repo = S3Repo::init(&server, "uploads", "r");
    // Our backend first: it installs the TLS crypto provider the client needs.
    let backend = repo.backend();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_bucket_name("uploads")
        .with_region("us-east-1")
        .with_access_key_id("S3RVER")
        .with_secret_access_key("S3RVER")
        .with_allow_http(true)
        .build()
        .expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = "data/ab/ab00000000000000000000000000000000000000000000000000000000000000";
    let path = StorePath::from(format!("r/{key}"));
    // What a writer killed after its first part leaves: an upload with a
    // part, and its marker (backdated, as gc only takes old ones).
    let upload = runtime
        .block_on(async {
            let id = store.create_multipart(&path).await?;
            store
                .put_part(&path, &id, 0, vec![7u8; 5 << 20].into())
                .await?;
            Ok::<_, object_store::Error>(id)
        })
        .expect("start an upload");
    let marker = serde_json::json!({"key": key, "upload_id": upload, "started": 0});
    assert!(backend
        .put_if_absent(
            "multipart/0123456789abcdef0123456789abcdef",
            marker.to_string().as_bytes()
        )
        .expect("marker"));
    let out = common::run_ok(&mut repo.cmd(&["gc", "--json"]));
    let report = json(&out.stdout);
    assert_eq!(report["temporaries_removed"], 1, "{report}");
    assert!(backend.list("multipart/").expect("list").is_empty());
    // The upload is gone: completing it fails.
    let completed = runtime.block_on(async {
        let part = store
            .put_part(&path, &upload, 1, vec![1u8; 10].into())
            .await?;
        store.complete_multipart(&path, &upload, vec![part]).await
    });
    assert!(
        completed.is_err(),
        "the aborted upload could still be completed"
    );
    assert!(backend.get(key).expect_err("no object").is_not_found());
    repo.verify_ok();
}

#[test]
fn remote_and_change_tracked_backups_go_to_s3() {
    let server = S3Server::start(Kind::Moto);
    let repo = S3Repo::init(&server, "fleet", "r");
    let one = image(6 * MIB, 41);
    let two = image(5 * MIB, 42);
    let p1 = repo.file("one.img", &one);
    let p2 = repo.file("two.img", &two);

    // Two remote sources at once, read over ssh by `diskdelta serve`.
    if let Some(sshd) =
        crate::common::sshd::Sshd::start("remote_and_change_tracked_backups_go_to_s3")
    {
        let remote = |p: &Path| format!("{}:{}", sshd.destination(), p.display());
        let out = common::run_ok(
            repo.cmd(&[
                "backup",
                "--json",
                "-e",
                &sshd.ssh_command(),
                "--remote-path",
            ])
            .arg(common::bin())
            .arg(remote(&p1))
            .args(["--name", "one"])
            .arg(remote(&p2))
            .args(["--name", "two"]),
        );
        let v = json(&out.stdout);
        let list = v.as_array().expect("one result per source");
        assert_eq!(list.len(), 2, "{v}");
        for r in list {
            assert!(
                r["summary"]["bytes_sent"].as_u64().expect("sent") > 0,
                "{r}"
            );
        }
        repo.assert_restores("one", &one);
        repo.assert_restores("two", &two);
    }

    // A change-tracked backup: only the listed ranges are read, the rest of
    // the chunks keep their ids from the previous snapshot.
    let s1 = repo.backup(&p1, "tracked");
    assert_eq!(s1["size"], one.len() as u64, "{s1}");
    let mut changed = one.clone();
    changed[3 * MIB + 100..3 * MIB + 5000].copy_from_slice(&common::pseudo_random(4900, 43));
    std::fs::write(&p1, &changed).expect("rewrite image");
    let ranges = repo.file("ranges", format!("{} 4900\n", 3 * MIB + 100).as_bytes());
    let out = common::run_ok(
        repo.cmd(&["backup", "--json", "--name", "tracked", "--changed-ranges"])
            .arg(&ranges)
            .arg(&p1),
    );
    let s2 = json(&out.stdout)[0]["summary"].clone();
    assert_eq!(s2["change_tracking"]["used"], true, "{s2}");
    assert_eq!(s2["bytes_read"], MIB as u64, "one chunk read: {s2}");
    assert_eq!(s2["new_chunks"], 1, "{s2}");
    repo.assert_restores("tracked", &changed);
    repo.verify_ok();
}
