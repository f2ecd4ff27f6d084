//! Real NBD servers for the tests: `qemu-nbd` and `nbdkit`, each on a Unix
//! socket (or a loopback port) of its own, killed and reaped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running NBD server.
pub struct NbdServer {
    child: Child,
    uri: String,
    _dir: tempfile::TempDir,
}

impl NbdServer {
    /// `qemu-nbd` serving `image` (of `format`) read-only as export `exp`.
    pub fn qemu_nbd(image: &Path, format: &str, extra: &[&str]) -> NbdServer {
        let dir = super::tempdir();
        let socket = dir.path().join("qemu-nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--read-only", "--persistent", "--shared=8", "-x", "exp"])
            .arg(format!("--format={format}"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .arg(image);
        Self::start(
            cmd,
            &socket,
            format!("nbd+unix:///exp?socket={}", socket.display()),
            dir,
        )
    }

    /// `nbdkit` with `plugin` and its arguments, on a Unix socket.
    pub fn nbdkit(plugin_args: &[&str]) -> NbdServer {
        let dir = super::tempdir();
        let socket = dir.path().join("nbdkit.sock");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["--foreground", "--exit-with-parent", "-U"])
            .arg(&socket)
            .args(plugin_args);
        Self::start(
            cmd,
            &socket,
            format!("nbd+unix:///?socket={}", socket.display()),
            dir,
        )
    }

    /// `nbdkit` with `plugin` and its arguments, on a loopback TCP port.
    pub fn nbdkit_tcp(plugin_args: &[&str]) -> NbdServer {
        let dir = super::tempdir();
        let port = free_port();
        let mut cmd = Command::new("nbdkit");
        cmd.args([
            "--foreground",
            "--exit-with-parent",
            "-i",
            "127.0.0.1",
            "-p",
        ])
        .arg(port.to_string())
        .args(plugin_args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdkit (install nbdkit)");
        let ready = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let started = std::time::Instant::now();
        while !ready() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("nbdkit exited: {s}");
            }
            assert!(started.elapsed().as_secs() < 20, "nbdkit did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        NbdServer {
            child,
            uri: format!("nbd://127.0.0.1:{port}/"),
            _dir: dir,
        }
    }

    fn start(mut cmd: Command, socket: &Path, uri: String, dir: tempfile::TempDir) -> NbdServer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let started = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("{cmd:?} exited: {s}");
            }
            assert!(started.elapsed().as_secs() < 20, "{cmd:?} did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        NbdServer {
            child,
            uri,
            _dir: dir,
        }
    }

    /// The export's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server now (a dropped connection).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// Runs qemu-img (or another tool) and panics with its stderr on failure.
pub fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `path` as a &str (test paths are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// A path joined under a temporary directory.
pub fn under(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
