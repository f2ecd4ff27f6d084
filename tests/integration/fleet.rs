//! Fleets of hosts through a real sshd on 127.0.0.1: wire dedup against
//! the whole repository, parallel sources sharing chunks, a slow link,
//! repositories reached over `ssh://` (push) and append-only servers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, sshd::Sshd};

const MIB: usize = 1 << 20;

/// `diskdelta ARGS` with the ssh command and remote binary for `ssh://`
/// repositories and remote sources.
fn dd(sshd: &Sshd) -> Command {
    let mut cmd = common::diskdelta();
    cmd.env("DISKDELTA_RSH", sshd.ssh_command())
        .env("DISKDELTA_REMOTE_PATH", common::bin());
    cmd
}

fn url(sshd: &Sshd, repo: &Path) -> String {
    format!("ssh://{}{}", sshd.destination(), repo.display())
}

fn remote_source(sshd: &Sshd, path: &Path) -> String {
    format!("{}:{}", sshd.destination(), path.display())
}

/// `backup --json` summaries, one per SOURCE.
fn backup(sshd: &Sshd, repo: &str, sources: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut cmd = dd(sshd);
    cmd.args(["backup", "-q", "--json", "-r", repo])
        .arg("-e")
        .arg(sshd.ssh_command())
        .arg("--remote-path")
        .arg(common::bin());
    for (source, name) in sources {
        cmd.args([source, "--name", name]);
    }
    let out = common::run_ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| e["summary"].clone())
        .collect()
}

fn restore_matches(sshd: &Sshd, repo: &str, snapshot: &str, expected: &[u8], dir: &Path) {
    let out = dir.join(format!("{snapshot}.restored"));
    common::run_ok(
        dd(sshd)
            .args(["restore", "-q", "-r", repo, snapshot, "-o"])
            .arg(&out),
    );
    assert!(
        std::fs::read(&out).expect("restored") == expected,
        "snapshot {snapshot} does not restore to its image"
    );
    std::fs::remove_file(&out).expect("remove");
}

/// `image` with `count` chunks (1 MiB) replaced by fresh data.
fn clone_of(image: &[u8], chunks: &[usize], seed: u64) -> Vec<u8> {
    let mut clone = image.to_vec();
    for (k, &c) in chunks.iter().enumerate() {
        clone[c * MIB..(c + 1) * MIB].copy_from_slice(&common::pseudo_random(MIB, seed + k as u64));
    }
    clone
}

/// A temporary directory with an encrypted repository `repo` in it.
fn new_repo() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = common::tempdir();
    let repo = dir.path().join("repo");
    common::run_ok(common::diskdelta().args(["init", "-q", "-r"]).arg(&repo));
    (dir, repo)
}

fn sent(s: &serde_json::Value) -> u64 {
    s["bytes_sent"].as_u64().expect("bytes_sent")
}

#[test]
fn a_clone_under_a_new_name_sends_only_its_differing_chunks() {
    let Some(sshd) = Sshd::start("a_clone_under_a_new_name_sends_only_its_differing_chunks") else {
        return;
    };
    let (dir, repo) = new_repo();
    let repo = repo.display().to_string();
    // 48 chunks of random data: incompressible, so "compressed differing
    // chunks" is their size.
    let template = common::pseudo_random(48 * MIB, 1);
    let tmpl = common::write_file(dir.path(), "template.img", &template);
    backup(&sshd, &repo, &[(&remote_source(&sshd, &tmpl), "template")]);
    let clone = clone_of(&template, &[3, 17, 40], 100);
    let vm = common::write_file(dir.path(), "vm.img", &clone);
    let s = &backup(&sshd, &repo, &[(&remote_source(&sshd, &vm), "vm-0001")])[0];
    assert_eq!(s["parent"], serde_json::Value::Null, "{s}");
    assert_eq!(s["new_chunks"], 3, "{s}");
    assert_eq!(s["reused_chunks"], 45, "{s}");
    let bound = (1.2 * (3 * MIB) as f64) as u64 + 40 * 48 + MIB as u64;
    assert!(
        sent(s) <= bound,
        "sent {} bytes, bound {bound}: {s}",
        sent(s)
    );
    assert!(
        sent(s) >= (3 * MIB) as u64,
        "the new chunks must cross: {s}"
    );
    restore_matches(&sshd, &repo, "vm-0001", &clone, dir.path());
}

#[test]
fn parallel_clones_send_a_shared_new_chunk_once() {
    let Some(sshd) = Sshd::start("parallel_clones_send_a_shared_new_chunk_once") else {
        return;
    };
    let (dir, repo) = new_repo();
    let repo = repo.display().to_string();
    // A template the repository has never seen, and two clones of it.
    let template = common::pseudo_random(24 * MIB, 7);
    let a = clone_of(&template, &[2], 200);
    let b = clone_of(&template, &[20], 300);
    let a_path = common::write_file(dir.path(), "a.img", &a);
    let b_path = common::write_file(dir.path(), "b.img", &b);
    let summaries = backup(
        &sshd,
        &repo,
        &[
            (&remote_source(&sshd, &a_path), "a"),
            (&remote_source(&sshd, &b_path), "b"),
        ],
    );
    let total: u64 = summaries.iter().map(sent).sum();
    // 23 shared chunks once, one own chunk each: 25 MiB, not 48.
    assert!(
        total < 28 * MIB as u64,
        "two parallel clones sent {total} bytes: {summaries:?}"
    );
    restore_matches(&sshd, &repo, "a", &a, dir.path());
    restore_matches(&sshd, &repo, "b", &b, dir.path());
    common::run_ok(common::diskdelta().args(["verify", "-q", "-r", &repo]));
}

/// An ssh command whose connection goes through `scripts/delay-proxy`
/// (by a wrapper script: `-e` is split at spaces).
fn delayed_ssh(sshd: &Sshd, dir: &Path, delay_ms: u32) -> String {
    let proxy = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/delay-proxy");
    let wrapper = dir.join(format!("proxy-{delay_ms}ms"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} 127.0.0.1 {} {delay_ms}\n",
            proxy.display(),
            sshd.port()
        ),
    )
    .expect("write proxy wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    format!(
        "{} -o ProxyCommand={}",
        sshd.ssh_command(),
        wrapper.display()
    )
}

#[test]
fn a_slow_link_costs_latency_not_a_round_trip_per_unit() {
    let Some(sshd) = Sshd::start("a_slow_link_costs_latency_not_a_round_trip_per_unit") else {
        return;
    };
    let (dir, repo) = new_repo();
    // 256 MiB: 64 units of 4 MiB. One round trip per unit over a link
    // with 50 ms each way would take at least 64 x 100 ms = 6.4 s.
    let template = common::pseudo_random(256 * MIB, 3);
    let tmpl = common::write_file(dir.path(), "template.img", &template);
    common::run_ok(
        common::diskdelta()
            .args(["backup", "-q", "-r"])
            .arg(&repo)
            .arg(&tmpl)
            .args(["--name", "template"]),
    );
    let clone = clone_of(&template, &[5, 100, 200], 9);
    let vm = common::write_file(dir.path(), "vm.img", &clone);
    let started = Instant::now();
    let out = common::run_within(
        common::diskdelta()
            .args(["backup", "-q", "--json", "-r"])
            .arg(&repo)
            .arg("-e")
            .arg(delayed_ssh(&sshd, dir.path(), 50))
            .arg("--remote-path")
            .arg(common::bin())
            .arg(remote_source(&sshd, &vm))
            .args(["--name", "vm"]),
        120,
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        took < Duration::from_millis(6400),
        "the clone took {took:?} over a 100 ms round trip: the protocol waits per unit"
    );
    let repo = repo.display().to_string();
    restore_matches(&sshd, &repo, "vm", &clone, dir.path());
}

#[test]
fn push_backup_restore_and_forget_over_ssh() {
    let Some(sshd) = Sshd::start("push_backup_restore_and_forget_over_ssh") else {
        return;
    };
    let dir = common::tempdir();
    let repo_dir = dir.path().join("server/repo");
    let repo = url(&sshd, &repo_dir);
    common::run_ok(dd(&sshd).args(["init", "-q", "-r", &repo]));
    assert!(
        repo_dir.join("config").exists(),
        "init made the repository on the server"
    );
    let image = common::pseudo_random(20 * MIB, 4);
    let img = common::write_file(dir.path(), "disk.img", &image);
    common::run_ok(
        dd(&sshd)
            .args(["backup", "-q", "-r", &repo])
            .arg(&img)
            .args(["--name", "disk"]),
    );
    // From stdin too.
    let mut child = dd(&sshd)
        .args(["backup", "-q", "-r", &repo, "-", "--name", "piped"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&image[..8 * MIB]).expect("write");
    }
    assert!(child.wait().expect("wait").success());
    // An incremental after a change sends only the changed chunk's data.
    let changed = clone_of(&image, &[11], 50);
    std::fs::write(&img, &changed).expect("change");
    let out = common::run_ok(
        dd(&sshd)
            .args(["backup", "-q", "--json", "-r", &repo])
            .arg(&img)
            .args(["--name", "disk"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["summary"]["new_chunks"], 1, "{v}");
    let out = common::run_ok(dd(&sshd).args(["snapshots", "--json", "-r", &repo]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    restore_matches(&sshd, &repo, "disk", &changed, dir.path());
    restore_matches(&sshd, &repo, "piped", &image[..8 * MIB], dir.path());
    common::run_ok(dd(&sshd).args(["verify", "-q", "-r", &repo]));
    // diff against a snapshot held on the server.
    let delta = dir.path().join("d.delta");
    common::run_ok(
        dd(&sshd)
            .args(["diff", "-q", "-r", &repo, "--from-snapshot", "piped"])
            .arg(&img)
            .arg("-o")
            .arg(&delta),
    );
    let rebuilt = dir.path().join("rebuilt.img");
    std::fs::write(&rebuilt, &image[..8 * MIB]).expect("old");
    common::run_ok(
        common::diskdelta()
            .args(["apply", "-q", "--in-place"])
            .arg(&rebuilt)
            .arg(&delta),
    );
    assert!(
        std::fs::read(&rebuilt).expect("rebuilt") == changed,
        "delta from a served snapshot"
    );
    common::run_ok(dd(&sshd).args(["forget", "-q", "-r", &repo, "piped", "--prune"]));
    let out = common::run_ok(dd(&sshd).args(["snapshots", "--json", "-r", &repo]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    common::run_ok(dd(&sshd).args(["gc", "-q", "-r", &repo]));
    restore_matches(&sshd, &repo, "disk", &changed, dir.path());
    // A repository that does not exist is one clear line.
    let out = common::run_fail(dd(&sshd).args([
        "snapshots",
        "-r",
        &url(&sshd, &dir.path().join("nothing")),
    ]));
    let err = common::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Puts `command="BIN serve --repo REPO --append-only",restrict` on the
/// harness's key: every ssh login runs the append-only server.
fn force_append_only(sshd: &Sshd, repo: &Path) {
    let keys = sshd.dir().join("authorized_keys");
    let key = std::fs::read_to_string(&keys).expect("authorized_keys");
    let key = key.lines().last().expect("a key").to_string();
    let line = format!(
        "command=\"{} serve --repo {} --append-only\",restrict {key}\n",
        common::bin().display(),
        repo.display()
    );
    std::fs::write(&keys, line).expect("write authorized_keys");
}

#[test]
fn an_append_only_client_adds_and_reads_but_destroys_nothing() {
    let Some(sshd) = Sshd::start("an_append_only_client_adds_and_reads_but_destroys_nothing")
    else {
        return;
    };
    let dir = common::tempdir();
    let repo_dir = dir.path().join("repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "-r"])
            .arg(&repo_dir),
    );
    let image = common::pseudo_random(12 * MIB, 5);
    let img = common::write_file(dir.path(), "disk.img", &image);
    common::run_ok(
        common::diskdelta()
            .args(["backup", "-q", "-r"])
            .arg(&repo_dir)
            .arg(&img)
            .args(["--name", "first"]),
    );
    force_append_only(&sshd, &repo_dir);
    let repo = url(&sshd, &repo_dir);
    // Allowed: backups, listing, restoring, verifying, adding a key.
    let more = clone_of(&image, &[1], 60);
    std::fs::write(&img, &more).expect("change");
    common::run_ok(
        dd(&sshd)
            .args(["backup", "-q", "-r", &repo])
            .arg(&img)
            .args(["--name", "second"]),
    );
    restore_matches(&sshd, &repo, "first", &image, dir.path());
    restore_matches(&sshd, &repo, "second", &more, dir.path());
    common::run_ok(dd(&sshd).args(["verify", "-q", "-r", &repo]));
    let keys_before = common::entries(&repo_dir.join("keys"));
    let new_password = common::write_file(dir.path(), "new-password", b"another one\n");
    common::run_ok(
        dd(&sshd)
            .args(["key", "add", "-q", "-r", &repo, "--new-password-file"])
            .arg(&new_password),
    );
    // Refused, each with one line, before anything changes.
    let objects_before = common::files_under(&repo_dir);
    let key_id = &keys_before[0];
    for args in [
        vec!["forget", "first"],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["gc"],
        vec!["unlock", "--all"],
        vec!["key", "remove", key_id.as_str()],
        vec![
            "key",
            "passwd",
            "--new-password-file",
            new_password.to_str().expect("utf-8"),
        ],
    ] {
        let out = common::run_fail(dd(&sshd).args(&args).args(["-r", &repo]));
        let err = common::stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("append-only"), "{args:?}: {err}");
    }
    let objects_after = common::files_under(&repo_dir);
    for object in &objects_before {
        assert!(
            objects_after.contains(object),
            "{} was removed",
            object.display()
        );
    }
    // The forced command serves nothing but this repository.
    let other = url(&sshd, &dir.path().join("elsewhere"));
    let out = common::run_fail(dd(&sshd).args(["init", "-q", "-r", &other]));
    assert!(
        common::stderr(&out).contains("serves only the repository"),
        "{}",
        common::stderr(&out)
    );
    let local_repo = dir.path().join("local-repo");
    common::run_ok(
        common::diskdelta()
            .args(["init", "-q", "-r"])
            .arg(&local_repo),
    );
    let out = common::run_fail(
        dd(&sshd)
            .args(["backup", "-q", "-r"])
            .arg(&local_repo)
            .arg("-e")
            .arg(sshd.ssh_command())
            .arg("--remote-path")
            .arg(common::bin())
            .arg(remote_source(&sshd, &img)),
    );
    assert!(
        common::stderr(&out).contains("refused"),
        "{}",
        common::stderr(&out)
    );
    restore_matches(&sshd, &repo, "first", &image, dir.path());
}

/// Crafted requests from an append-only client, through the library's
/// own connection to the forced-command server.
mod crafted {
    use super::*;
    use diskdelta::remote::connection::Connection;
    use diskdelta::remote::message::{Message, ObjOp, ObjStatus};
    use diskdelta::remote::ssh::Remote;

    fn connect(sshd: &Sshd, repo: &Path) -> Connection {
        let mut rsh = vec!["ssh".to_string()];
        rsh.extend(sshd.ssh_args());
        let remote = Remote {
            host: sshd.destination(),
            rsh,
            remote_path: common::bin().display().to_string(),
            sudo: false,
            deploy: None,
        };
        let path = repo.display().to_string();
        let mut conn = Connection::remote_serve(&remote, &["--repo", &path]).expect("ssh");
        conn.handshake().expect("handshake");
        conn.send(Message::OpenRepo {
            flags: 0,
            path: path.into_bytes(),
        })
        .expect("send");
        match conn.recv().expect("reply") {
            Message::RepoOpened { flags } => assert_eq!(flags, 1, "served append-only"),
            other => panic!("expected RepoOpened, got {other:?}"),
        }
        conn
    }

    fn call(conn: &mut Connection, tag: u32, op: ObjOp) -> (u8, Vec<u8>) {
        conn.send(Message::Obj { tag, op }).expect("send");
        match conn.recv().expect("reply") {
            Message::ObjReply {
                tag: t,
                status,
                more: false,
                data,
            } if t == tag => (status, data),
            other => panic!("expected one ObjReply, got {other:?}"),
        }
    }

    fn put(key: &str, data: &[u8]) -> ObjOp {
        ObjOp::Put {
            key: key.into(),
            last: true,
            data: data.to_vec(),
        }
    }

    #[test]
    fn no_allowed_request_makes_a_snapshot_unrestorable() {
        let Some(sshd) = Sshd::start("no_allowed_request_makes_a_snapshot_unrestorable") else {
            return;
        };
        let dir = common::tempdir();
        let repo_dir = dir.path().join("repo");
        common::run_ok(
            common::diskdelta()
                .args(["init", "-q", "--no-encryption", "-r"])
                .arg(&repo_dir),
        );
        let image = common::pseudo_random(6 * MIB, 8);
        let img = common::write_file(dir.path(), "disk.img", &image);
        common::run_ok(
            common::diskdelta()
                .args(["backup", "-q", "-r"])
                .arg(&repo_dir)
                .arg(&img)
                .args(["--name", "kept"]),
        );
        let packs: Vec<String> = common::files_under(&repo_dir.join("data"))
            .iter()
            .map(|p| {
                p.strip_prefix(&repo_dir)
                    .expect("under repo")
                    .display()
                    .to_string()
            })
            .collect();
        let snapshots = common::entries(&repo_dir.join("snapshots"));
        force_append_only(&sshd, &repo_dir);
        let mut conn = connect(&sshd, &repo_dir);
        let refused = ObjStatus::Refused as u8;
        let mut tag = 0;
        let mut next = || {
            tag += 1;
            tag
        };
        for pack in &packs {
            // Overwrite a pack: other bytes under its name do not hash to it.
            let (status, _) = call(&mut conn, next(), put(pack, b"garbage"));
            assert_eq!(status, refused, "overwrite of {pack}");
            // Delete it.
            let (status, _) = call(&mut conn, next(), ObjOp::Delete { key: pack.clone() });
            assert_eq!(status, refused, "delete of {pack}");
        }
        for key in ["config".to_string(), format!("snapshots/{}", snapshots[0])] {
            let (status, _) = call(&mut conn, next(), ObjOp::Delete { key: key.clone() });
            assert_eq!(status, refused, "delete of {key}");
        }
        // The config cannot be replaced: put-if-absent keeps the old one.
        let (status, data) = call(&mut conn, next(), put("config", b"{}"));
        assert_eq!((status, data), (ObjStatus::Ok as u8, vec![0]));
        // Keys outside the repository's alphabet.
        for key in ["../outside", "/etc/passwd", "data/../../x"] {
            let (status, _) = call(&mut conn, next(), put(key, b"x"));
            assert_eq!(status, refused, "put of {key}");
            let (status, _) = call(&mut conn, next(), ObjOp::Delete { key: key.into() });
            assert_eq!(status, refused, "delete of {key}");
        }
        // Stale temporaries are the server's business.
        let (status, _) = call(&mut conn, next(), ObjOp::Sweep { age_secs: 0 });
        assert_eq!(status, refused);
        // Allowed: a snapshot that refers to chunks nobody stored, and an
        // index file that claims the kept snapshot's chunks live in a pack
        // of garbage. Neither may hide the good copies.
        let bogus_snapshot = br#"{"not": "a snapshot"}"#.to_vec();
        let key = format!("snapshots/{}", blake3::hash(&bogus_snapshot).to_hex());
        assert_eq!(
            call(&mut conn, next(), put(&key, &bogus_snapshot)).0,
            ObjStatus::Ok as u8
        );
        let garbage = common::pseudo_random(2 * MIB, 99);
        let garbage_key = {
            let hex = blake3::hash(&garbage).to_hex().to_string();
            format!("data/{}/{hex}", &hex[..2])
        };
        assert_eq!(
            call(&mut conn, next(), put(&garbage_key, &garbage)).0,
            ObjStatus::Ok as u8
        );
        let forged = forged_index(&repo_dir, &garbage);
        let key = format!("index/{}", blake3::hash(&forged).to_hex());
        assert_eq!(
            call(&mut conn, next(), put(&key, &forged)).0,
            ObjStatus::Ok as u8
        );
        drop(conn);
        // Every original object is still there, byte for byte.
        for pack in &packs {
            assert!(repo_dir.join(pack).exists(), "{pack}");
        }
        let out = dir.path().join("kept.out");
        common::run_ok(
            common::diskdelta()
                .args(["restore", "-q", "-r"])
                .arg(&repo_dir)
                .args(["kept", "-o"])
                .arg(&out),
        );
        assert!(std::fs::read(&out).expect("out") == image, "kept restores");
    }

    /// An index file (format in docs/formats/repository.md) listing every
    /// chunk of the repository's real index files at offset 0 of the pack
    /// `garbage`.
    fn forged_index(repo: &Path, garbage: &[u8]) -> Vec<u8> {
        use diskdelta::format::pack::{Encoding, PackEntry};
        use diskdelta::format::pack_index::{self, PackRecord};
        let mut entries = Vec::new();
        for file in common::files_under(&repo.join("index")) {
            let bytes = std::fs::read(&file).expect("index");
            for record in pack_index::decode(&bytes).expect("decode") {
                for e in record.entries {
                    entries.push(PackEntry {
                        id: e.id,
                        offset: 0,
                        stored_len: e.stored_len.min(garbage.len() as u32),
                        raw_len: e.raw_len,
                        encoding: Encoding::Raw,
                    });
                }
            }
        }
        let (bytes, _) = pack_index::encode(&[PackRecord {
            pack: diskdelta::id::PackId::of(garbage),
            entries,
        }]);
        bytes
    }
}
