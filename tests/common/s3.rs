//! Real S3 servers on 127.0.0.1 for the tests: moto (Python, from PyPI;
//! supports conditional writes) and s3rver (Node.js, from npm; checks
//! signatures, ignores `If-None-Match`). `scripts/test` installs both under
//! `target/tools/` (`scripts/lib/s3servers.sh`). A server that cannot start
//! fails the test: S3 tests are never skipped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// moto's server mode.
    Moto,
    /// s3rver.
    S3rver,
}

/// Every implementation the suite runs against.
pub const ALL: [Kind; 2] = [Kind::Moto, Kind::S3rver];

/// A running server with its own data directory; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn tool(kind: Kind) -> PathBuf {
    let (var, default) = match kind {
        Kind::Moto => (
            "DISKDELTA_TEST_MOTO_SERVER",
            "target/tools/moto/bin/moto_server",
        ),
        Kind::S3rver => (
            "DISKDELTA_TEST_S3RVER",
            "target/tools/s3rver/node_modules/.bin/s3rver",
        ),
    };
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default));
    assert!(
        path.exists(),
        "{} not found (set {var}, or run scripts/test, which installs it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl S3Server {
    /// Starts a server of `kind` and waits until it answers.
    pub fn start(kind: Kind) -> S3Server {
        let dir = super::tempdir();
        let mut server = S3Server {
            kind,
            child: None,
            port: free_port(),
            dir,
        };
        server.restart();
        server
    }

    /// Starts the server again (same port, same data) after [`Self::stop`].
    pub fn restart(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data directory");
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
        let mut cmd = Command::new(tool(self.kind));
        match self.kind {
            Kind::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()]);
            }
            Kind::S3rver => {
                cmd.arg("-d").arg(&data).args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "--silent",
                ]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.kind));
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{:?} exited with {status}: {}", self.kind, self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{:?} did not listen on port {}: {}",
                self.kind,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (its data stays for [`Self::restart`] where the
    /// implementation keeps data on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The implementation.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A repository location in `bucket` under `prefix`.
    pub fn location(&self, bucket: &str, prefix: &str) -> String {
        format!("s3:{}/{bucket}/{prefix}", self.endpoint())
    }

    /// The credentials the server accepts.
    pub fn credentials(&self) -> (&'static str, &'static str) {
        ("S3RVER", "S3RVER")
    }

    /// A diskdelta command with the server's credentials.
    pub fn diskdelta(&self) -> Command {
        diskdelta_with(self.credentials())
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// A diskdelta command with these S3 credentials and a short retry window
/// (a test of a stopped server must not wait minutes).
pub fn diskdelta_with((id, secret): (&str, &str)) -> Command {
    let mut cmd = super::diskdelta();
    cmd.env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("DISKDELTA_S3_RETRY_TIMEOUT", "5");
    cmd
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
