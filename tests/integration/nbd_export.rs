//! `diskdelta nbd`: snapshots served as NBD exports, read by real clients
//! only (nbdinfo, nbdcopy, qemu-img, qemu-io, python3 -m nbd / libnbd).
//! Every server is started by the test and killed and reaped when its
//! guard drops; every client runs under a timeout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::common;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Seconds any one client may take.
const LIMIT: u64 = 60;

/// A test image: pseudo-random 64 KiB regions with all-zero chunks (1 MiB
/// aligned, `zero_chunks` of them) in between.
pub fn image(len: usize, seed: u64, zero_chunks: &[usize]) -> Vec<u8> {
    let mut out = common::pseudo_random(len, seed);
    for &c in zero_chunks {
        let end = ((c + 1) * MIB).min(len);
        out[c * MIB..end].fill(0);
    }
    out
}

/// A repository in `dir/repo` with 1 MiB chunks (the default).
pub fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    common::run_ok(common::diskdelta().arg("init").arg("-r").arg(&repo));
    repo
}

/// Backs `data` up as `name`; returns the snapshot id.
pub fn backup(dir: &Path, repo: &Path, name: &str, data: &[u8]) -> String {
    let path = common::write_file(dir, &format!("{name}.img"), data);
    let out = common::run_ok(
        common::diskdelta()
            .args(["backup", "--json", "-q", "--name", name])
            .arg("-r")
            .arg(repo)
            .arg(&path),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    v[0]["summary"]["snapshot"]
        .as_str()
        .expect("snapshot id")
        .to_string()
}

/// A running `diskdelta nbd`, killed and reaped on drop.
pub struct NbdServer {
    child: Child,
    pub info: Value,
    stderr: PathBuf,
}

impl NbdServer {
    /// Starts `diskdelta nbd -r REPO ARGS... --json` and waits for its line.
    pub fn start(repo: &Path, dir: &Path, args: &[&str]) -> NbdServer {
        let stderr = dir.join(format!("nbd-{}.log", args.join("_").replace('/', "_")));
        let mut child = common::diskdelta()
            .arg("nbd")
            .arg("-r")
            .arg(repo)
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("server log"))
            .spawn()
            .expect("spawn diskdelta nbd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(std::time::Duration::from_secs(LIMIT));
        let mut server = NbdServer {
            child,
            info: Value::Null,
            stderr,
        };
        let line = match line {
            Ok(l) if !l.is_empty() => l,
            _ => panic!("diskdelta nbd did not start: {}", server.log()),
        };
        server.info = serde_json::from_str(&line).expect("nbd JSON line");
        server
    }

    /// The URI of export `n` (in the order given).
    pub fn uri(&self, n: usize) -> String {
        self.info["exports"][n]["uri"]
            .as_str()
            .expect("uri")
            .to_string()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the server to exit by itself (after a signal).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed().as_secs() < LIMIT,
                "diskdelta nbd did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client under the time limit.
pub fn client(cmd: &mut Command) -> Output {
    common::run_within(cmd, LIMIT)
}

pub fn client_ok(cmd: &mut Command) -> Output {
    let out = client(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    out
}

/// Runs a python3 libnbd script with `uri` as its argument.
pub fn python_nbd(script: &str, uri: &str) -> Output {
    client(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(uri),
    )
}

#[test]
fn clients_read_the_snapshot_and_its_map() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    // Size: not a multiple of the chunk size, a multiple of 512 (qemu
    // rounds raw outputs up to sectors).
    let len = 9 * MIB + 64 * KIB;
    let data = image(len, 1, &[3, 4, 5, 7]);
    backup(dir.path(), &repo, "vm1", &data);
    let server = NbdServer::start(&repo, dir.path(), &["vm1"]);
    let uri = server.uri(0);
    assert!(uri.starts_with("nbd+unix:///vm1?socket="), "{uri}");
    assert_eq!(server.info["exports"][0]["size"], len as u64);

    let info = client_ok(Command::new("nbdinfo").arg("--json").arg(&uri));
    let v: Value = serde_json::from_slice(&info.stdout).expect("nbdinfo JSON");
    assert_eq!(v["exports"][0]["export-size"], len as u64);
    assert_eq!(v["exports"][0]["is_read_only"], true);

    let map = client_ok(Command::new("nbdinfo").arg("--map").arg(&uri));
    let map = String::from_utf8_lossy(&map.stdout);
    let rows: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let expect = [
        (0, 3 * MIB, "0"),
        (3 * MIB, 3 * MIB, "3"),
        (6 * MIB, MIB, "0"),
        (7 * MIB, MIB, "3"),
        (8 * MIB, MIB + 64 * KIB, "0"),
    ];
    assert_eq!(rows.len(), expect.len(), "map:\n{map}");
    for (row, (off, n, flags)) in rows.iter().zip(expect) {
        assert_eq!(row[0], off.to_string(), "map:\n{map}");
        assert_eq!(row[1], n.to_string(), "map:\n{map}");
        assert_eq!(row[2], flags, "map:\n{map}");
    }

    let restored = dir.path().join("restored.img");
    common::run_ok(
        common::diskdelta()
            .args(["restore", "vm1", "-q", "-r"])
            .arg(&repo)
            .arg("-o")
            .arg(&restored),
    );
    let copied = dir.path().join("nbdcopy.img");
    client_ok(Command::new("nbdcopy").arg(&uri).arg(&copied));
    assert!(
        std::fs::read(&copied).expect("copy") == data,
        "nbdcopy differs"
    );
    assert!(
        std::fs::read(&restored).expect("restore") == data,
        "restore differs"
    );

    let converted = dir.path().join("convert.img");
    client_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&converted),
    );
    assert!(
        std::fs::read(&converted).expect("convert") == data,
        "qemu-img convert differs"
    );
    client_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&restored)
            .arg(&uri),
    );
    // Changed by one byte, compare must notice.
    let mut other = data.clone();
    other[5 * MIB + 3] = 1;
    let other = common::write_file(dir.path(), "other.img", &other);
    let out = client(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&other)
            .arg(&uri),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "compare must see the difference"
    );
}

#[test]
fn two_clients_read_at_once_and_tcp_works() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let a = image(6 * MIB, 2, &[1]);
    let b = image(5 * MIB, 3, &[]);
    backup(dir.path(), &repo, "a", &a);
    backup(dir.path(), &repo, "b", &b);
    let server = NbdServer::start(&repo, dir.path(), &["a", "b", "--listen", "127.0.0.1:0"]);
    let (ua, ub) = (server.uri(0), server.uri(1));
    assert!(ua.starts_with("nbd://127.0.0.1:"), "{ua}");
    let (pa, pb) = (dir.path().join("a.out"), dir.path().join("b.out"));
    std::thread::scope(|s| {
        let t1 = s.spawn(|| client_ok(Command::new("nbdcopy").arg(&ua).arg(&pa)));
        let t2 = s.spawn(|| {
            client_ok(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "raw"])
                    .arg(&ub)
                    .arg(&pb),
            )
        });
        t1.join().expect("client a");
        t2.join().expect("client b");
    });
    assert!(std::fs::read(&pa).expect("a") == a);
    assert!(std::fs::read(&pb).expect("b") == b);
}

#[test]
fn unknown_exports_and_reads_past_the_end_are_refused() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let data = image(2 * MIB, 4, &[]);
    backup(dir.path(), &repo, "vm1", &data);
    let server = NbdServer::start(&repo, dir.path(), &["vm1"]);
    let uri = server.uri(0);
    let bad = uri.replacen("/vm1?", "/nope?", 1);
    let out = client(Command::new("nbdinfo").arg(&bad));
    assert!(!out.status.success(), "unknown export accepted");
    assert!(
        common::stderr(&out).contains("nope"),
        "{}",
        common::stderr(&out)
    );
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
assert h.pread(4, size - 4) is not None
for (n, off) in [(512, size), (512, size - 100), (1, 1 << 60)]:
    try:
        h.pread(n, off)
        print("read past the end succeeded", n, off)
        sys.exit(1)
    except nbd.Error as e:
        assert e.errno in (22, None) or e.errnum == 22, e
try:
    h.pwrite(b"x" * 512, 0)
    print("write to a read-only export succeeded")
    sys.exit(1)
except nbd.Error:
    pass
print("ok")
"#;
    let out = python_nbd(script, &uri);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    // The server still serves after all that.
    let copied = dir.path().join("copy.img");
    client_ok(Command::new("nbdcopy").arg(&uri).arg(&copied));
    assert!(std::fs::read(&copied).expect("copy") == data);
}

/// Flips bytes in the middle of every pack under `repo` written for the
/// snapshot `name` (the packs present after its backup minus before).
fn corrupt(packs: &[PathBuf]) {
    use std::os::unix::fs::FileExt;
    for p in packs {
        let mut perm = std::fs::metadata(p).expect("pack").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(p, perm).expect("chmod pack");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open pack");
        let len = f.metadata().expect("len").len();
        for at in [len / 4, len / 2, 3 * len / 4] {
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, at).expect("read pack");
            for x in &mut b {
                *x ^= 0x5a;
            }
            f.write_all_at(&b, at).expect("write pack");
        }
    }
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    common::files_under(&repo.join("data"))
}

#[test]
fn a_corrupt_pack_is_an_error_not_data_and_others_keep_reading() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let bad = image(4 * MIB, 5, &[]);
    let good = image(4 * MIB, 6, &[]);
    backup(dir.path(), &repo, "bad", &bad);
    let bad_packs = packs(&repo);
    backup(dir.path(), &repo, "good", &good);
    corrupt(&bad_packs);
    let server = NbdServer::start(&repo, dir.path(), &["bad", "good"]);
    let out = client(
        Command::new("nbdcopy")
            .arg(server.uri(0))
            .arg(dir.path().join("bad.out")),
    );
    assert!(!out.status.success(), "a corrupt snapshot copied cleanly");
    // Every chunk read alone: the corrupt ones fail, the others give the
    // snapshot's bytes, never anything else.
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
expect = open(sys.argv[2], "rb").read()
failed = good = 0
for c in range(4):
    try:
        got = h.pread(1 << 20, c << 20)
    except nbd.Error as e:
        failed += 1
        continue
    assert got == expect[c << 20:(c + 1) << 20], "wrong bytes in chunk %d" % c
    good += 1
print(failed, good)
assert failed > 0
"#;
    let bad_img = common::write_file(dir.path(), "bad.expect", &bad);
    let out = client(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(server.uri(0))
            .arg(&bad_img),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    let log = server.log();
    assert!(
        log.contains("export bad") && log.contains("chunk"),
        "the log names the chunk: {log}"
    );
    let copied = dir.path().join("good.out");
    client_ok(Command::new("nbdcopy").arg(server.uri(1)).arg(&copied));
    assert!(std::fs::read(&copied).expect("good") == good);
}

#[test]
fn interrupt_stops_the_server_and_removes_its_socket() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    backup(dir.path(), &repo, "vm1", &image(MIB, 7, &[]));
    let sock = dir.path().join("s.sock");
    let mut server = NbdServer::start(
        &repo,
        dir.path(),
        &["vm1", "--socket", sock.to_str().expect("utf-8")],
    );
    assert!(sock.exists());
    common::send_signal(server.pid(), "-INT");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(130));
    assert!(!sock.exists(), "socket left behind");
}

/// Runs qemu-io commands against `uri` (writable unless `read_only`).
fn qemu_io(uri: &str, read_only: bool, commands: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    if read_only {
        cmd.arg("-r");
    }
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(uri);
    client(&mut cmd)
}

fn qemu_io_ok(uri: &str, read_only: bool, commands: &[&str]) {
    let out = qemu_io(uri, read_only, commands);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    // qemu-io exits 0 even when a command fails; its messages say so.
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {commands:?}: {text}"
    );
}

#[test]
fn writes_through_an_overlay_become_a_new_snapshot() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let len = 8 * MIB;
    let data = image(len, 8, &[6]);
    let base_id = backup(dir.path(), &repo, "vm1", &data);
    let overlay = dir.path().join("vm1.ovl");
    let ovl = overlay.to_str().expect("utf-8");
    let mut expect = data.clone();
    {
        let mut server =
            NbdServer::start(&repo, dir.path(), &["vm1", "--writable", "--overlay", ovl]);
        assert_eq!(server.info["writable"], true);
        let uri = server.uri(0);
        qemu_io_ok(
            &uri,
            false,
            &[
                "write -P 0x41 1000 5000",
                "write -z 2M 1M",
                "discard 6M 64k",
                "write -P 0x42 6M 4096",
                "flush",
            ],
        );
        expect[1000..6000].fill(0x41);
        expect[2 * MIB..3 * MIB].fill(0);
        expect[6 * MIB..6 * MIB + 64 * KIB].fill(0);
        expect[6 * MIB..6 * MIB + 4096].fill(0x42);
        // Written but not flushed: kept when the server is interrupted.
        qemu_io_ok(&uri, false, &["write -P 0x43 7M 512"]);
        expect[7 * MIB..7 * MIB + 512].fill(0x43);
        let copied = dir.path().join("live.img");
        client_ok(Command::new("nbdcopy").arg(&uri).arg(&copied));
        assert!(
            std::fs::read(&copied).expect("copy") == expect,
            "live view differs"
        );
        common::send_signal(server.pid(), "-INT");
        server.wait_exit();
    }
    // The repository is untouched: the snapshot still restores as it was.
    let restored = dir.path().join("base.img");
    common::run_ok(
        common::diskdelta()
            .args(["restore", "-q", &base_id, "-r"])
            .arg(&repo)
            .arg("-o")
            .arg(&restored),
    );
    assert!(std::fs::read(&restored).expect("base") == data);

    // Reopened on the same snapshot: the writes are there.
    {
        let server = NbdServer::start(&repo, dir.path(), &["vm1", "--writable", "--overlay", ovl]);
        qemu_io_ok(
            &server.uri(0),
            true,
            &[
                "read -P 0x41 1000 5000",
                "read -P 0x43 7M 512",
                "read -P 0 2M 1M",
            ],
        );
    }

    let out = common::run_ok(
        common::diskdelta()
            .args([
                "backup",
                "--json",
                "-q",
                "--from-overlay",
                ovl,
                "vm1",
                "--name",
                "vm1-fixed",
                "-r",
            ])
            .arg(&repo),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let s = &v[0]["summary"];
    // Chunks 0, 2, 6 and 7 were written; the other four keep their ids unread.
    assert_eq!(s["change_tracking"]["chunks_reused"], 4, "{s}");
    assert_eq!(s["change_tracking"]["chunks_read"], 4, "{s}");
    let new = dir.path().join("new.img");
    common::run_ok(
        common::diskdelta()
            .args(["restore", "-q", "vm1-fixed", "-r"])
            .arg(&repo)
            .arg("-o")
            .arg(&new),
    );
    assert!(
        std::fs::read(&new).expect("new") == expect,
        "new snapshot differs"
    );
}

#[test]
fn an_overlay_is_refused_on_another_snapshot_and_when_damaged() {
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    backup(dir.path(), &repo, "a", &image(2 * MIB, 9, &[]));
    backup(dir.path(), &repo, "b", &image(2 * MIB, 10, &[]));
    let overlay = dir.path().join("a.ovl");
    let ovl = overlay.to_str().expect("utf-8");
    {
        let server = NbdServer::start(&repo, dir.path(), &["a", "--writable", "--overlay", ovl]);
        qemu_io_ok(&server.uri(0), false, &["write -P 0x11 0 4096", "flush"]);
    }
    let before = std::fs::read(&overlay).expect("overlay");
    let out = client(
        common::diskdelta()
            .args(["nbd", "b", "--writable", "--overlay", ovl, "-r"])
            .arg(&repo),
    );
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("belongs to snapshot"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        std::fs::read(&overlay).expect("overlay") == before,
        "overlay changed"
    );
    let out = client(
        common::diskdelta()
            .args(["backup", "--from-overlay", ovl, "b", "--name", "x", "-r"])
            .arg(&repo),
    );
    assert!(
        !out.status.success(),
        "backup of another snapshot's overlay"
    );
    // Both map slots damaged: refused with a clear line.
    let mut bytes = before.clone();
    bytes[100] ^= 1;
    bytes[4096 + 130] ^= 1;
    std::fs::write(&overlay, &bytes).expect("damage overlay");
    let out = client(
        common::diskdelta()
            .args(["nbd", "a", "--writable", "--overlay", ovl, "-r"])
            .arg(&repo),
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("map slot"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn the_kernel_nbd_client_reads_the_snapshot_where_it_exists() {
    if !Path::new("/sys/module/nbd").exists() || !Path::new("/dev/nbd0").exists() {
        eprintln!("skipped: the kernel nbd module is not loaded (no /sys/module/nbd or /dev/nbd0; modprobe is absent here)");
        return;
    }
    if Command::new("nbd-client").arg("--help").output().is_err() {
        eprintln!("skipped: nbd-client is not installed");
        return;
    }
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    let data = image(4 * MIB, 14, &[2]);
    backup(dir.path(), &repo, "vm1", &data);
    let sock = dir.path().join("k.sock");
    let _server = NbdServer::start(
        &repo,
        dir.path(),
        &["vm1", "--socket", sock.to_str().expect("utf-8")],
    );
    struct Disconnect;
    impl Drop for Disconnect {
        fn drop(&mut self) {
            let _ = Command::new("nbd-client")
                .args(["-d", "/dev/nbd0"])
                .status();
        }
    }
    client_ok(Command::new("nbd-client").args(["-unix"]).arg(&sock).args([
        "/dev/nbd0",
        "-N",
        "vm1",
        "-readonly",
    ]));
    let _d = Disconnect;
    let out = client_ok(
        Command::new("dd")
            .args(["if=/dev/nbd0", "bs=1M", "iflag=direct", "status=none"])
            .arg(format!("count={}", 4)),
    );
    assert!(out.stdout == data, "the kernel client read other bytes");
}

#[test]
fn clients_past_max_clients_are_turned_away_until_one_leaves() {
    use std::io::Write;
    let dir = common::tempdir();
    let repo = init_repo(dir.path());
    backup(dir.path(), &repo, "vm1", &image(MIB, 15, &[]));
    let server = NbdServer::start(&repo, dir.path(), &["vm1", "--max-clients", "1"]);
    let uri = server.uri(0);
    // A client that stays connected until its stdin closes.
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
h.shutdown()
"#;
    let mut holder = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder output");
    assert_eq!(line.trim(), "ready");
    let out = client(Command::new("nbdinfo").arg(&uri));
    assert!(!out.status.success(), "a second client was served");
    let mut stdin = holder.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"bye");
    drop(stdin);
    let _ = holder.wait();
    // The slot is free again.
    let mut ok = false;
    for _ in 0..100 {
        if client(Command::new("nbdinfo").arg(&uri)).status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ok, "the freed slot was not given to a new client");
    assert!(server.log().contains("refused"), "{}", server.log());
}
