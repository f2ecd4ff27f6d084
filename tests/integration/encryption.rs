//! Encrypted repositories through the real binary: what storage sees,
//! passwords and key files, tampering with every object kind, objects
//! moved, plain and encrypted repositories side by side, and the golden
//! encrypted repository (`tests/golden/repo-encrypted/`).
//!
//! Every other repository test runs on encrypted repositories too (the
//! default; `common::diskdelta` gives the password): this module checks
//! what is particular to encryption.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common;

const EXIT_INTEGRITY: i32 = 3;
/// A line that compresses well and is easy to look for in stored bytes.
const MARKER: &[u8] = b"diskdelta-plaintext-marker: the storage must never see this line\n";

/// An image of `chunks` 64 KiB chunks: text with [`MARKER`], random bytes
/// (stored raw), zeros.
fn image(chunks: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks * 65536);
    for i in 0..chunks {
        match i % 3 {
            0 => {
                let mut text = Vec::new();
                while text.len() < 65536 {
                    text.extend_from_slice(MARKER);
                    text.extend_from_slice(format!("chunk {i} seed {seed}\n").as_bytes());
                }
                out.extend_from_slice(&text[..65536]);
            }
            1 => out.extend_from_slice(&common::pseudo_random(65536, seed * 1000 + i as u64)),
            _ => out.extend_from_slice(&[0u8; 65536]),
        }
    }
    out
}

struct Repo {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Repo {
    /// `init --chunk-size 64K` plus `extra`, with the test password.
    fn init(extra: &[&str]) -> Repo {
        let dir = common::tempdir();
        let path = dir.path().join("repo");
        common::run_ok(
            common::diskdelta()
                .args(["init", "-q", "--chunk-size", "64K", "-r"])
                .arg(&path)
                .args(extra),
        );
        Repo { dir, path }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::diskdelta();
        // `key` has subcommands: the options follow them.
        let words = if args[0] == "key" { 2 } else { 1 };
        c.args(&args[..words])
            .arg("-r")
            .arg(&self.path)
            .args(&args[words..]);
        c.stdin(Stdio::null());
        c
    }

    fn backup(&self, data: &[u8], name: &str) -> Value {
        let file = common::write_file(self.dir.path(), &format!("{name}.img"), data);
        let out = common::run_ok(self.cmd(&["backup", "--json", "--name", name]).arg(&file));
        let v: Value = serde_json::from_slice(&out.stdout).expect("backup --json");
        v[0]["summary"].clone()
    }

    fn restore(&self, spec: &str) -> Output {
        let out = self.dir.path().join("restored.img");
        let _ = std::fs::remove_file(&out);
        self.cmd(&["restore", spec, "-q", "-o"])
            .arg(&out)
            .output()
            .expect("run restore")
    }

    fn restored(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("restored.img")).expect("restored image")
    }

    fn assert_restores(&self, spec: &str, expected: &[u8]) {
        let out = self.restore(spec);
        assert!(
            out.status.success(),
            "restore {spec}: {}",
            common::stderr(&out)
        );
        assert!(self.restored() == expected, "{spec} restores byte for byte");
    }

    /// Every object: key relative to the repository, bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        common::files_under(&self.path)
            .into_iter()
            .map(|p| {
                let key = p
                    .strip_prefix(&self.path)
                    .expect("under the repository")
                    .to_string_lossy()
                    .into_owned();
                let bytes = std::fs::read(&p).expect("read object");
                (key, bytes)
            })
            .collect()
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.objects()
            .into_keys()
            .filter(|k| k.starts_with(prefix))
            .collect()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn one_error_line(out: &Output) -> String {
    let err = common::stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("diskdelta: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_string()
}

#[test]
fn storage_sees_no_plaintext_no_chunk_ids_and_no_names() {
    let repo = Repo::init(&[]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(repo.path.join("config")).expect("config"))
            .expect("config is JSON");
    assert_eq!(config["version"], 2);
    assert_eq!(config["encryption"]["cipher"], "xchacha20-poly1305");
    let data = image(12, 1);
    let summary = repo.backup(&data, "secret-vm");
    assert_eq!(summary["new_chunks"], 8, "{summary}");
    let objects = repo.objects();
    assert!(objects.keys().any(|k| k.starts_with("keys/")));
    // The content hashes of the chunks (plain repositories' ids) and the
    // random chunks' own bytes appear nowhere; nor do the snapshot's name,
    // the marker text, or the image file's name.
    let ids: Vec<[u8; 32]> = data
        .chunks(65536)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();
    for (key, bytes) in &objects {
        assert!(!contains(bytes, &MARKER[..24]), "{key} holds plaintext");
        assert!(
            !contains(bytes, b"secret-vm"),
            "{key} holds the snapshot name"
        );
        for id in &ids {
            assert!(!contains(bytes, id), "{key} holds a chunk's content hash");
            assert!(
                !contains(bytes, &hex::encode(id).into_bytes()),
                "{key} names a chunk"
            );
        }
        for raw in data.chunks(65536).skip(1).step_by(3) {
            assert!(!contains(bytes, &raw[..64]), "{key} holds a raw chunk");
        }
    }
    repo.assert_restores("secret-vm", &data);
    let out = common::run_ok(&mut repo.cmd(&["verify", "--read-data", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["chunks_read"], 8);
}

#[test]
fn a_plain_repository_stores_plaintext_and_says_what_it_is() {
    // The control for the test above: the same checks find the data in a
    // plain repository, so their silence there means something.
    let repo = Repo::init(&["--no-encryption"]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(repo.path.join("config")).expect("config"))
            .expect("config is JSON");
    assert_eq!(config["version"], 1);
    assert!(config.get("encryption").is_none());
    let data = image(6, 2);
    repo.backup(&data, "plain-vm");
    let objects = repo.objects();
    let random = &data[65536..65536 + 64];
    assert!(objects.values().any(|b| contains(b, random)));
    assert!(objects.values().any(|b| contains(b, b"plain-vm")));
    assert!(!objects.keys().any(|k| k.starts_with("keys/")));
    // A plain repository needs no password.
    let mut c = repo.cmd(&["snapshots", "-q"]);
    c.env_remove("DISKDELTA_PASSWORD");
    common::run_ok(&mut c);
    let out = common::run_fail(&mut repo.cmd(&["key", "list"]));
    assert!(one_error_line(&out).contains("not encrypted"));
}

#[test]
fn a_wrong_or_missing_password_is_one_line_and_writes_nothing() {
    let repo = Repo::init(&[]);
    let data = image(6, 3);
    repo.backup(&data, "vm");
    let before = repo.objects();
    let file = common::write_file(repo.dir.path(), "new.img", &image(6, 4));
    for (password, code, expect) in [
        (Some("wrong password"), 1, "wrong password for"),
        (None, 1, "is encrypted: give its password"),
    ] {
        for args in [
            vec!["backup", "--name", "vm", file.to_str().expect("UTF-8 path")],
            vec!["snapshots"],
            vec!["forget", "vm"],
            vec!["gc"],
            vec!["verify"],
        ] {
            let mut c = repo.cmd(&args);
            match password {
                Some(p) => c.env("DISKDELTA_PASSWORD", p),
                None => c.env_remove("DISKDELTA_PASSWORD"),
            };
            let out = c.output().expect("run");
            assert_eq!(
                out.status.code(),
                Some(code),
                "{args:?}: {}",
                common::stderr(&out)
            );
            assert!(one_error_line(&out).contains(expect), "{args:?}");
        }
    }
    let out = repo.restore("vm");
    assert!(out.status.success());
    let mut c = repo.cmd(&["restore", "vm", "-o"]);
    c.arg(repo.dir.path().join("wrong.img"))
        .env("DISKDELTA_PASSWORD", "nope");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(!repo.dir.path().join("wrong.img").exists());
    assert_eq!(repo.objects(), before, "nothing was written or removed");
}

#[test]
fn passwords_come_from_a_file_a_command_or_the_environment() {
    let dir = common::tempdir();
    let path = dir.path().join("repo");
    let file = common::write_file(dir.path(), "pw", b"from-a-file\nsecond line ignored\n");
    let mut c = common::diskdelta();
    c.args(["init", "-q", "-r"])
        .arg(&path)
        .arg("--password-file")
        .arg(&file);
    c.env_remove("DISKDELTA_PASSWORD");
    common::run_ok(&mut c);
    let open = |setup: &dyn Fn(&mut Command)| {
        let mut c = common::diskdelta();
        c.args(["snapshots", "-q", "-r"]).arg(&path);
        c.env_remove("DISKDELTA_PASSWORD");
        setup(&mut c);
        c.stdin(Stdio::null()).output().expect("run")
    };
    assert!(open(&|c| {
        c.arg("--password-file").arg(&file);
    })
    .status
    .success());
    assert!(open(&|c| {
        c.args(["--password-command", "echo from-a-file"]);
    })
    .status
    .success());
    assert!(open(&|c| {
        c.env("DISKDELTA_PASSWORD", "from-a-file");
    })
    .status
    .success());
    assert!(open(&|c| {
        c.env("DISKDELTA_PASSWORD_FILE", &file);
    })
    .status
    .success());
    // The options win over the variable, as in restic.
    assert!(open(&|c| {
        c.env("DISKDELTA_PASSWORD", "wrong")
            .arg("--password-file")
            .arg(&file);
    })
    .status
    .success());
    let out = open(&|c| {
        c.args(["--password-command", "exit 4"]);
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("password command"));
    let out = open(&|c| {
        c.arg("--password-file").arg(dir.path().join("missing"));
    });
    assert!(one_error_line(&out).contains("cannot read password file"));
    let empty = common::write_file(dir.path(), "empty", b"\n");
    let out = open(&|c| {
        c.arg("--password-file").arg(&empty);
    });
    assert!(one_error_line(&out).contains("empty password"));
}

#[test]
fn keys_can_be_added_listed_changed_and_removed_but_not_the_last() {
    let repo = Repo::init(&[]);
    let data = image(4, 5);
    repo.backup(&data, "vm");
    let with = |password: &str, args: &[&str]| {
        let mut c = repo.cmd(args);
        c.env("DISKDELTA_PASSWORD", password);
        c.output().expect("run")
    };
    let list = |password: &str| -> Vec<Value> {
        let out = with(password, &["key", "list", "--json"]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("key list --json")
            .as_array()
            .expect("a list")
            .clone()
    };
    let keys = list(common::TEST_PASSWORD);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["current"], true);
    let first = keys[0]["id"].as_str().expect("id").to_string();

    let mut add = repo.cmd(&["key", "add", "--json"]);
    add.env("DISKDELTA_NEW_PASSWORD", "second");
    let out = common::run_ok(&mut add);
    let added: Value = serde_json::from_slice(&out.stdout).expect("key add --json");
    let second = added["added"].as_str().expect("added id").to_string();
    assert_eq!(list("second").len(), 2);
    assert!(with("second", &["snapshots", "-q"]).status.success());
    assert!(with(common::TEST_PASSWORD, &["snapshots", "-q"])
        .status
        .success());

    // The key in use cannot be removed; another one can, but not the last.
    let out = with("second", &["key", "remove", &second[..8]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("unlocked with"));
    let out = with("second", &["key", "remove", &first[..8]]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(with(common::TEST_PASSWORD, &["snapshots", "-q"])
        .status
        .code()
        .is_some_and(|c| c == 1));
    assert_eq!(list("second").len(), 1);

    // passwd replaces the key in use.
    let mut passwd = repo.cmd(&["key", "passwd"]);
    passwd
        .env("DISKDELTA_PASSWORD", "second")
        .env("DISKDELTA_NEW_PASSWORD", "third");
    common::run_ok(&mut passwd);
    assert_eq!(with("second", &["snapshots", "-q"]).status.code(), Some(1));
    let keys = list("third");
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0]["id"].as_str(), Some(second.as_str()));
    // The only key left: it is the one in use, and the last.
    let third = keys[0]["id"].as_str().expect("id").to_string();
    let out = with("third", &["key", "remove", &third]);
    assert_eq!(out.status.code(), Some(1));
    let mut env = repo.cmd(&["restore", "vm", "-q", "-o"]);
    env.arg(repo.dir.path().join("after-keys.img"))
        .env("DISKDELTA_PASSWORD", "third");
    common::run_ok(&mut env);
    assert!(std::fs::read(repo.dir.path().join("after-keys.img")).expect("restored") == data);
}

#[test]
fn missing_or_damaged_key_files_are_named() {
    let repo = Repo::init(&[]);
    repo.backup(&image(4, 6), "vm");
    let key = repo.keys_with_prefix("keys/").remove(0);
    let key_path = repo.path.join(&key);
    let good = std::fs::read(&key_path).expect("key file");
    std::fs::write(&key_path, b"{ not a key").expect("damage key file");
    let out = repo.cmd(&["snapshots"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("wrong password") && line.contains(&key),
        "{line}"
    );
    std::fs::remove_file(&key_path).expect("remove key file");
    let out = repo.cmd(&["snapshots"]).output().expect("run");
    assert!(one_error_line(&out).contains("has no key files"));
    std::fs::write(&key_path, good).expect("restore key file");
    common::run_ok(&mut repo.cmd(&["snapshots", "-q"]));
}

/// Flips bytes of `key` (all of them, or every `step`th plus the last 200)
/// and requires each damaged repository to fail `verify --read-data` with
/// the given exit codes; restores the object afterwards.
fn flips_are_detected(repo: &Repo, key: &str, step: usize, codes: &[i32]) -> usize {
    let path = repo.path.join(key);
    let good = std::fs::read(&path).expect("object");
    let len = good.len();
    let positions: Vec<usize> = (0..len)
        .filter(|i| step == 1 || i % step == 0 || *i + 200 >= len)
        .collect();
    for &i in &positions {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        std::fs::write(&path, &bad).expect("write damaged object");
        let out = repo
            .cmd(&["verify", "--read-data", "-q"])
            .output()
            .expect("run");
        let code = out.status.code();
        assert!(
            code.is_some_and(|c| codes.contains(&c)),
            "{key} byte {i}/{len}: exit {code:?}, {}",
            common::stderr(&out)
        );
    }
    std::fs::write(&path, &good).expect("put object back");
    positions.len()
}

#[test]
fn every_flipped_byte_of_every_object_kind_is_caught() {
    let repo = Repo::init(&[]);
    repo.backup(&image(5, 7), "vm");
    let index = repo.keys_with_prefix("index/").remove(0);
    let snapshot = repo.keys_with_prefix("snapshots/").remove(0);
    let pack = repo.keys_with_prefix("data/").remove(0);
    let key = repo.keys_with_prefix("keys/").remove(0);
    // Sealed objects: authentication fails, exit 3 (verify reports them).
    assert!(flips_are_detected(&repo, &index, 1, &[EXIT_INTEGRITY]) > 100);
    assert!(flips_are_detected(&repo, &snapshot, 1, &[EXIT_INTEGRITY]) > 100);
    assert!(flips_are_detected(&repo, &pack, 97, &[EXIT_INTEGRITY]) > 200);
    // The config's plain fields are checked against their sealed copy (a
    // flip that breaks the JSON is a config error, exit 1); a key file
    // that no longer opens is a wrong password (exit 1).
    assert!(flips_are_detected(&repo, "config", 1, &[1, EXIT_INTEGRITY]) > 100);
    assert!(flips_are_detected(&repo, &key, 1, &[1]) > 100);
    let out = common::run_ok(&mut repo.cmd(&["verify", "--read-data", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "the repository is whole again"
    );
}

#[test]
fn tampering_is_reported_with_the_object_and_no_output_is_left() {
    let repo = Repo::init(&[]);
    let data = image(6, 8);
    repo.backup(&data, "vm");
    let pack = repo.keys_with_prefix("data/").remove(0);
    let path = repo.path.join(&pack);
    let good = std::fs::read(&path).expect("pack");
    let mut bad = good.clone();
    bad[100] ^= 1;
    std::fs::write(&path, &bad).expect("damage pack");
    let out = repo.restore("vm");
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let line = one_error_line(&out);
    assert!(
        line.contains("fails authentication") && line.contains("chunk"),
        "{line}"
    );
    assert!(!repo.dir.path().join("restored.img").exists());
    std::fs::write(&path, &good).expect("repair pack");
    repo.assert_restores("vm", &data);
}

#[test]
fn objects_moved_or_swapped_are_caught() {
    let repo = Repo::init(&[]);
    repo.backup(&image(4, 9), "one");
    repo.backup(&image(4, 10), "two");
    let snaps = repo.keys_with_prefix("snapshots/");
    let (a, b) = (repo.path.join(&snaps[0]), repo.path.join(&snaps[1]));
    let (bytes_a, bytes_b) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
    // Two snapshots swap names.
    std::fs::write(&a, &bytes_b).expect("swap");
    std::fs::write(&b, &bytes_a).expect("swap");
    let out = repo.cmd(&["verify"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(EXIT_INTEGRITY),
        "{}",
        common::stderr(&out)
    );
    std::fs::write(&a, &bytes_a).expect("put back");
    std::fs::write(&b, &bytes_b).expect("put back");
    // An index file where a snapshot should be (correctly named for its
    // bytes, so only the envelope's kind can tell).
    let index = repo.keys_with_prefix("index/").remove(0);
    let index_bytes = std::fs::read(repo.path.join(&index)).expect("index");
    let fake = repo
        .path
        .join("snapshots")
        .join(blake3::hash(&index_bytes).to_hex().as_str());
    std::fs::write(&fake, &index_bytes).expect("plant");
    let out = repo.cmd(&["verify"]).output().expect("run");
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    assert!(
        common::stderr(&out).contains("expected a snapshot") || {
            let v = repo.cmd(&["verify", "--json"]).output().expect("run");
            String::from_utf8_lossy(&v.stdout).contains("expected a snapshot")
        }
    );
    std::fs::remove_file(&fake).expect("remove");
    // A snapshot of another repository (another key), named for its bytes.
    let other = Repo::init(&[]);
    other.backup(&image(4, 11), "foreign");
    let foreign = other.keys_with_prefix("snapshots/").remove(0);
    let foreign_bytes = std::fs::read(other.path.join(&foreign)).expect("foreign");
    std::fs::write(repo.path.join(&foreign), &foreign_bytes).expect("plant foreign");
    let out = repo.cmd(&["verify"]).output().expect("run");
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    std::fs::remove_file(repo.path.join(&foreign)).expect("remove");
    // A plain pack planted in an encrypted repository is never adopted.
    let plain = Repo::init(&["--no-encryption"]);
    plain.backup(&image(4, 12), "plain");
    let plain_pack = plain.keys_with_prefix("data/").remove(0);
    let target = repo.path.join(&plain_pack);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::copy(plain.path.join(&plain_pack), &target).expect("plant pack");
    repo.backup(&image(4, 13), "three");
    let out = common::run_ok(&mut repo.cmd(&["verify", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(v["orphan_packs"], 1, "{v}");
    common::run_ok(&mut repo.cmd(&["gc", "-q"]));
    assert!(!target.exists(), "gc removes the planted pack");
}

#[test]
fn copy_moves_snapshots_between_plain_and_encrypted_repositories() {
    let plain = Repo::init(&["--no-encryption"]);
    let encrypted = Repo::init(&[]);
    let one = image(6, 14);
    let two = image(6, 15);
    plain.backup(&one, "vm");
    plain.backup(&two, "vm");
    let copy = |from: &Repo, to: &Repo, from_password: Option<&str>| -> Value {
        let mut c = to.cmd(&["copy", "--json", "--from"]);
        c.arg(&from.path);
        if let Some(p) = from_password {
            c.env("DISKDELTA_FROM_PASSWORD", p);
        }
        let out = common::run_ok(&mut c);
        serde_json::from_slice(&out.stdout).expect("copy --json")
    };
    let r = copy(&plain, &encrypted, None);
    assert_eq!(r["copied"].as_array().map(Vec::len), Some(2), "{r}");
    // A rerun finds both there, although their ids changed with the key.
    let r = copy(&plain, &encrypted, None);
    assert_eq!(
        r["already_present"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    assert_eq!(r["chunks_copied"], 0);
    encrypted.assert_restores("vm", &two);
    let out = common::run_ok(&mut encrypted.cmd(&["verify", "--read-data", "-q"]));
    assert!(out.status.success());
    // And back into a second plain repository: the snapshot ids of the
    // first plain repository come back (same snapshot files).
    let plain2 = Repo::init(&["--no-encryption"]);
    let out = encrypted
        .cmd(&["copy", "--from"])
        .arg(&plain2.path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "an empty plain source: {}",
        common::stderr(&out)
    );
    let mut c = plain2.cmd(&["copy", "-q", "--from"]);
    c.arg(&encrypted.path)
        .env("DISKDELTA_FROM_PASSWORD", common::TEST_PASSWORD)
        .env_remove("DISKDELTA_PASSWORD");
    common::run_ok(&mut c);
    assert_eq!(
        plain.keys_with_prefix("snapshots/"),
        plain2.keys_with_prefix("snapshots/")
    );
    plain2.assert_restores("vm", &two);
    // Without the source's password: one line naming the variable.
    let plain3 = Repo::init(&["--no-encryption"]);
    let out = plain3
        .cmd(&["copy", "--from"])
        .arg(&encrypted.path)
        .env_remove("DISKDELTA_FROM_PASSWORD")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("DISKDELTA_FROM_PASSWORD"));
}

#[test]
fn an_encrypted_repository_is_created_on_first_use_with_the_password() {
    let dir = common::tempdir();
    let data = image(4, 16);
    let file = common::write_file(dir.path(), "img", &data);
    let mut c = common::diskdelta();
    c.env("XDG_DATA_HOME", dir.path())
        .args(["backup", "-q", "--name", "vm"])
        .arg(&file);
    common::run_ok(&mut c);
    let config: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("diskdelta/repo/config")).expect("config"),
    )
    .expect("JSON");
    assert_eq!(config["version"], 2);
    // Without a password and a terminal, the default repository is not
    // created: one line says how to give one.
    let dir2 = common::tempdir();
    let mut c = common::diskdelta();
    c.env("XDG_DATA_HOME", dir2.path())
        .env_remove("DISKDELTA_PASSWORD")
        .args(["backup", "-q", "--name", "vm"])
        .arg(&file)
        .stdin(Stdio::null());
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("DISKDELTA_PASSWORD"));
    assert!(!dir2.path().join("diskdelta/repo/config").exists());
}

// --- golden encrypted repository (format version 2, kept forever) -----------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_encrypted_repository_opens_verifies_and_restores() {
    use diskdelta::format::keyfile::KeyFile;
    use diskdelta::format::sealed;

    let source = golden_dir().join("repo-encrypted/repo");
    let work = common::tempdir();
    let repo = work.path().join("repo");
    common::copy_tree(&source, &repo);
    let images = [
        std::fs::read(golden_dir().join("repo/one.img")).expect("one.img"),
        std::fs::read(golden_dir().join("repo/two.img")).expect("two.img"),
    ];
    // The objects as they are stored: key file, envelopes, version 2 packs.
    for path in common::files_under(&repo) {
        let rel = path
            .strip_prefix(&repo)
            .expect("inside")
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&path).expect("object");
        if rel.starts_with("keys/") {
            let key = KeyFile::parse(&bytes).expect("golden key file parses");
            assert_eq!(key.kdf.memory_kib, 64);
            assert_eq!(rel, format!("keys/{}", blake3::hash(&bytes).to_hex()));
        } else if rel.starts_with("snapshots/") {
            sealed::parse(&bytes, sealed::Kind::Snapshot).expect("a snapshot envelope");
        } else if rel.starts_with("index/") {
            sealed::parse(&bytes, sealed::Kind::Index).expect("an index envelope");
        } else if rel.starts_with("data/") {
            assert_eq!(&bytes[..8], b"DDLTPACK");
            assert_eq!(&bytes[8..12], &2u32.to_le_bytes(), "pack version 2");
            assert_eq!(
                &bytes[bytes.len() - 12..bytes.len() - 8],
                &2u32.to_le_bytes()
            );
        }
    }
    let run = |args: &[&str], password: &str| {
        let mut c = common::diskdelta();
        c.arg(args[0]).arg("-r").arg(&repo).args(&args[1..]);
        c.env("DISKDELTA_PASSWORD", password);
        c.output().expect("run")
    };
    let out = run(&["verify", "--read-data", "--json"], "golden-password");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(v["snapshots"], 2);
    assert_eq!(v["chunks_read"], 4);
    let out = run(&["snapshots", "--json"], "golden-password");
    let list: Value = serde_json::from_slice(&out.stdout).expect("snapshots --json");
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["time"], "2026-01-02T03:04:05Z");
    assert_eq!(list[0]["tags"], serde_json::json!(["golden", "v1"]));
    for (i, expected) in images.iter().enumerate() {
        let id = list[i]["id"].as_str().expect("id");
        let out_path = work.path().join(format!("restored-{i}"));
        let out = run(
            &["restore", id, "-q", "-o", out_path.to_str().expect("UTF-8")],
            "golden-password",
        );
        assert!(out.status.success(), "{}", common::stderr(&out));
        assert!(
            std::fs::read(&out_path).expect("restored") == *expected,
            "snapshot {i}"
        );
    }
    let out = run(&["snapshots"], "not-the-password");
    assert_eq!(out.status.code(), Some(1));
}
