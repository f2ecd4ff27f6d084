//! A real OpenSSH `sshd` on 127.0.0.1 for the ssh tests (no mocks).
//!
//! [`Sshd::start`] makes a temporary directory with its own ed25519 host
//! key, client key, `authorized_keys` (for the current user; the tests run
//! as root), `known_hosts` and `sshd_config`, then runs `sshd -D -e` on a
//! free port as a child of the test process. It returns once a real
//! `ssh ... true` has succeeded, typically well under a second. Every test
//! gets its own daemon on its own port, so tests may run in parallel.
//! Dropping the [`Sshd`] kills the daemon and every process it started,
//! then removes the directory.
//!
//! When `sshd` cannot be started (binary missing, no privilege-separation
//! directory, cannot bind, login refused, ...), `start` prints
//! `SKIPPED <test>: <reason>` and returns `None`, so the test returns early
//! as skipped. Under CI (`CI=true` or `CI=1`) that is a failure instead: a
//! CI machine must be able to run these tests.
//!
//! # Connecting
//! - [`Sshd::ssh_command`] is one string for `-e`/`--rsh`, e.g.
//!   `ssh -F /dev/null -p 40123 -i /tmp/diskdelta-sshd-x/client_ed25519 -o
//!   IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o
//!   UserKnownHostsFile=/tmp/.../known_hosts -o LogLevel=ERROR -o
//!   ConnectTimeout=10`; the destination is [`Sshd::destination`]
//!   (`root@127.0.0.1`). It never contains quotes, and its paths contain no
//!   whitespace, so splitting it on whitespace gives the argument vector.
//! - [`Sshd::ssh_args`] is the same without the leading `ssh`, for
//!   `Command::new("ssh").args(...)`.
//! - [`Sshd::run`] runs one command on the "remote" and returns its output.
//!
//! # Quoting remote commands
//! ssh joins its command arguments with single spaces and the remote
//! user's login shell (`/bin/bash -c` for root) parses the result again.
//! So a remote command is *shell source*, not an argument vector: an
//! argument with spaces, quotes, `$`, `;`, `*` and the like must be quoted
//! for the remote shell. Wrap each such argument in single quotes and write
//! every `'` inside it as `'\''`; [`shell_quote`] does exactly that:
//!
//! ```ignore
//! let out = sshd.run(&format!("cat {}", shell_quote("/tmp/a b; $x")));
//! ```
//!
//! The same applies to any program that passes a remote command through
//! ssh (e.g. a `--remote-path` with a space in it).
//!
//! # Remote environment
//! Remote commands run under the user's login shell (bash for root) with
//! `PATH` = the directory of the `diskdelta` binary under test followed by
//! the usual system directories, so `diskdelta` is found on the remote
//! side; tests may still pass an absolute `--remote-path`. `SHLVL=1` is set
//! too: bash then does not source `~/.bashrc` for ssh commands, which keeps
//! the machine's dotfiles (slow `pyenv init`, output that would corrupt a
//! binary protocol on stdout) out of the tests. No client environment is
//! accepted (`AcceptEnv` unset). The daemon offers only curve25519 key
//! exchange, which is ~0.1 s per connection cheaper than the default.
//!
//! # Failure injection
//! - [`Sshd::kill_connections`] kills every per-connection process (the
//!   sshd session processes and the remote commands below them, not the
//!   listener) to simulate a connection dropped mid-transfer.
//! - [`Sshd::ssh_command_with_wrong_key`] authenticates with a key that is
//!   not in `authorized_keys` ("Permission denied").
//! - [`unreachable_ssh_command`] points at a port on 127.0.0.1 that
//!   nothing listens on ("Connection refused").
//!
//! Set `DISKDELTA_TEST_SSHD_LOGLEVEL=DEBUG3` (any sshd `LogLevel`) to get a
//! more verbose [`Sshd::log`] when debugging a test. (Session processes
//! then also log into the remote command's stderr: sshd runs with `-e`.)

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::in_ci;

/// The loopback address every daemon listens on.
const HOST: &str = "127.0.0.1";
/// sshd's privilege-separation directory (Debian's build).
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long `start` waits for one daemon to accept a login.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at picking a free port (another process may grab it between
/// our probe and sshd's bind).
const PORT_ATTEMPTS: usize = 5;
/// The system part of the remote `PATH` (Debian's default for root).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running `sshd` on 127.0.0.1 with its own keys, killed on drop.
#[derive(Debug)]
pub struct Sshd {
    // Declared first: the daemon dies before its directory is removed.
    listener: Listener,
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    log: PathBuf,
    wrong_key: OnceLock<PathBuf>,
    dir: tempfile::TempDir,
}

/// Quotes `arg` as one word for a POSIX shell: `'...'` with every `'`
/// written as `'\''`. Use it for each argument of a remote command that
/// may contain anything but `[A-Za-z0-9_./=:,+-]`.
pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// An ssh command (for `-e`/`--rsh`, with any destination) whose port on
/// 127.0.0.1 refuses connections: the port is bound, never listened on,
/// and held by this process until it exits, so nobody else can take it.
/// Connecting fails at once with "Connection refused".
pub fn unreachable_ssh_command() -> String {
    format!(
        "ssh -F /dev/null -p {} -o BatchMode=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5",
        closed_port()
    )
}

impl Sshd {
    /// Starts a fresh daemon. `test` names the caller in skip messages.
    /// `None` means "skip this test" (never under CI, where it panics).
    ///
    /// # Panics
    /// Under CI when the daemon cannot be started, and anywhere when the
    /// temporary directory cannot be written.
    pub fn start(test: &str) -> Option<Sshd> {
        let sshd_bin = match find_sshd() {
            Some(path) => path,
            None => return unavailable(test, "no sshd on PATH nor at /usr/sbin/sshd"),
        };
        for tool in ["ssh", "ssh-keygen"] {
            if find_in_path(tool).is_none() {
                return unavailable(test, &format!("no {tool} on PATH"));
            }
        }
        if let Err(e) = ensure_privsep_dir() {
            return unavailable(test, &format!("cannot create {PRIVSEP_DIR}: {e}"));
        }

        let mut dir = make_tempdir();
        let host_key = dir.path().join("host_ed25519");
        let key = dir.path().join("client_ed25519");
        for path in [&host_key, &key] {
            if let Err(e) = keygen(path) {
                return unavailable(test, &e);
            }
        }
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized_keys).expect("write authorized_keys");
        let host_pub = read_to_string(&host_key.with_extension("pub"));
        let host_pub = host_pub.trim();
        let user = current_user();
        let config = dir.path().join("sshd_config");
        let known_hosts = dir.path().join("known_hosts");
        let log = dir.path().join("sshd.log");

        let mut last_error = String::new();
        for _attempt in 0..PORT_ATTEMPTS {
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => return unavailable(test, &format!("cannot bind {HOST}:0: {e}")),
            };
            write_file(&config, &sshd_config(dir.path(), port, &host_key));
            write_file(&known_hosts, &format!("[{HOST}]:{port} {host_pub}\n"));
            let log_file = File::create(&log).expect("create sshd log");
            let spawned = Command::new(&sshd_bin)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    return unavailable(test, &format!("cannot run {}: {e}", sshd_bin.display()))
                }
            };
            let mut sshd = Sshd {
                listener: Listener { child },
                port,
                user: user.clone(),
                key: key.clone(),
                known_hosts: known_hosts.clone(),
                log: log.clone(),
                wrong_key: OnceLock::new(),
                dir,
            };
            match sshd.wait_ready() {
                Ready::Yes => return Some(sshd),
                Ready::PortTaken(why) => {
                    last_error = why;
                    dir = sshd.into_dir();
                }
                Ready::No(why) => return unavailable(test, &why),
            }
        }
        unavailable(
            test,
            &format!("no free port after {PORT_ATTEMPTS} attempts: {last_error}"),
        )
    }

    /// The port the daemon listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the daemon listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The user the client key logs in as (the current user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `user@127.0.0.1`, the destination for [`Sshd::ssh_command`].
    pub fn destination(&self) -> String {
        format!("{}@{HOST}", self.user)
    }

    /// The client's private key (in `authorized_keys`).
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// A known_hosts file holding this daemon's host key for
    /// `[127.0.0.1]:PORT`, so `StrictHostKeyChecking=yes` works.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// The temporary directory holding keys, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of the listening daemon.
    pub fn listener_pid(&self) -> u32 {
        self.listener.child.id()
    }

    /// The live processes below the listener: per-connection sshd
    /// processes and the remote commands they run.
    pub fn connection_pids(&self) -> Vec<u32> {
        descendants(self.listener_pid())
    }

    /// The full ssh command for `-e`/`--rsh` (see the module docs).
    pub fn ssh_command(&self) -> String {
        command_line(&self.ssh_args())
    }

    /// [`Sshd::ssh_command`] without the leading `ssh`.
    pub fn ssh_args(&self) -> Vec<String> {
        self.args_with_key(&self.key)
    }

    /// Like [`Sshd::ssh_command`] but with a freshly generated key that is
    /// not in `authorized_keys`: the host is trusted, the login is refused
    /// with "Permission denied".
    ///
    /// # Panics
    /// When the key cannot be generated.
    pub fn ssh_command_with_wrong_key(&self) -> String {
        let key = self.wrong_key.get_or_init(|| {
            let path = self.dir.path().join("wrong_ed25519");
            keygen(&path).unwrap_or_else(|e| panic!("{e}"));
            path
        });
        command_line(&self.args_with_key(key))
    }

    /// Runs `remote_command` (shell source, see "Quoting remote commands"
    /// in the module docs) on the daemon with stdin from /dev/null.
    ///
    /// # Panics
    /// When `ssh` cannot be spawned.
    pub fn run(&self, remote_command: &str) -> Output {
        Command::new("ssh")
            .args(self.ssh_args())
            .arg(self.destination())
            .arg(remote_command)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ssh")
    }

    /// sshd's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// Kills the per-connection processes (sshd session processes and the
    /// remote commands under them) with SIGKILL, keeping the listener, so
    /// every open ssh connection drops as if the network failed; clients
    /// see the connection closed and exit with 255. New connections work
    /// afterwards. Returns once the killed processes are gone (bounded).
    pub fn kill_connections(&self) {
        let root = self.listener_pid();
        // Stop the listener so that it accepts and forks nothing while the
        // tree is taken down; it reaps the dead children once continued.
        signal(root, libc::SIGSTOP);
        let tree = stop_tree(root);
        for &pid in &tree {
            signal(pid, libc::SIGKILL);
        }
        signal(root, libc::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(2);
        while tree.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn args_with_key(&self, key: &Path) -> Vec<String> {
        vec![
            // Ignore ~/.ssh/config and /etc/ssh/ssh_config: hermetic.
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            path_arg(key),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", path_arg(&self.known_hosts)),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ]
    }

    /// Waits until the port accepts TCP connections and a real login
    /// works, or the daemon exits, or [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut listening = false;
        let mut last_error = String::from("port never accepted a connection");
        let mut logins = 0;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.listener.child.try_wait() {
                let log = self.log();
                let why = format!("sshd exited with {status}: {}", log.trim());
                return if log.contains("Address already in use")
                    || log.contains("Cannot bind any address")
                {
                    Ready::PortTaken(why)
                } else {
                    Ready::No(why)
                };
            }
            if !listening {
                listening = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
                if !listening {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            let out = self.run("true");
            if out.status.success() {
                return Ready::Yes;
            }
            logins += 1;
            last_error = format!(
                "`ssh ... true` failed with {}: {}; sshd log: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log().trim()
            );
            if logins >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ready::No(format!(
            "sshd not ready on port {}: {last_error}",
            self.port
        ))
    }

    /// Kills the daemon and hands back the directory for another attempt.
    fn into_dir(self) -> tempfile::TempDir {
        let Sshd { listener, dir, .. } = self;
        drop(listener);
        dir
    }
}

/// The outcome of waiting for a daemon.
enum Ready {
    Yes,
    /// sshd could not bind its port: try another one.
    PortTaken(String),
    No(String),
}

/// The `sshd -D` child; on drop it and every process below it are killed.
#[derive(Debug)]
struct Listener {
    child: Child,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Not reaped yet, so the pid stays ours even if it exits meanwhile.
        let root = self.child.id();
        signal(root, libc::SIGSTOP);
        let tree = stop_tree(root);
        signal(root, libc::SIGKILL);
        for &pid in &tree {
            signal(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Reports that sshd is unavailable: a skip, or a failure in CI.
fn unavailable(test: &str, reason: &str) -> Option<Sshd> {
    if in_ci() {
        panic!("{test}: sshd required under CI but unavailable: {reason}");
    }
    eprintln!("SKIPPED {test}: sshd unavailable: {reason}");
    None
}

/// The sshd_config for one daemon.
fn sshd_config(dir: &Path, port: u16, host_key: &Path) -> String {
    let level = std::env::var("DISKDELTA_TEST_SSHD_LOGLEVEL").unwrap_or_else(|_| "ERROR".into());
    let mut path = String::new();
    if let Some(bin_dir) = super::bin().parent() {
        let bin_dir = bin_dir.to_string_lossy();
        if !bin_dir.contains(char::is_whitespace) {
            path = format!("{bin_dir}:");
        }
    }
    path.push_str(SYSTEM_PATH);
    format!(
        "# Written by tests/common/sshd.rs for one test.\n\
         ListenAddress {HOST}:{port}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile {dir}/sshd.pid\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\n\
         StrictModes no\n\
         UsePAM no\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         MaxStartups 100\n\
         MaxSessions 100\n\
         LogLevel {level}\n\
         # Post-quantum key exchange costs ~0.1 s of CPU per connection.\n\
         KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n\
         # SHLVL=1: bash skips ~/.bashrc for ssh commands (slow, and it may\n\
         # print). Only the first SetEnv line counts.\n\
         SetEnv PATH={path} SHLVL=1\n",
        host_key = path_arg(host_key),
        dir = path_arg(dir),
    )
}

/// A path as one unquoted word; panics if it would split.
fn path_arg(path: &Path) -> String {
    let s = path
        .to_str()
        .expect("temporary paths are UTF-8")
        .to_string();
    assert!(
        !s.contains(char::is_whitespace) && !s.contains(['"', '\'', '\\']),
        "path {s:?} cannot go into an unquoted ssh command line"
    );
    s
}

fn command_line(args: &[String]) -> String {
    let mut line = String::from("ssh");
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// A temporary directory whose path has no whitespace (it goes into
/// unquoted command lines): under `$TMPDIR` when possible, else /tmp.
fn make_tempdir() -> tempfile::TempDir {
    let base = std::env::temp_dir();
    let base = if base.to_string_lossy().contains(char::is_whitespace) {
        PathBuf::from("/tmp")
    } else {
        base
    };
    tempfile::Builder::new()
        .prefix("diskdelta-sshd-")
        .tempdir_in(base)
        .expect("create temporary directory")
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_to_string(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Generates an ed25519 key pair without passphrase at `path`(.pub).
fn keygen(path: &Path) -> Result<(), String> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "diskdelta-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ssh-keygen -f {} failed with {}: {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// sshd must be run by absolute path (it re-executes itself).
fn find_sshd() -> Option<PathBuf> {
    find_in_path("sshd").or_else(|| {
        let path = PathBuf::from("/usr/sbin/sshd");
        is_executable(&path).then_some(path)
    })
}

/// Like `command -v NAME`, but only absolute results.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Creates sshd's privilege-separation directory if it is missing
/// (containers often lack it; the daemon refuses to start without it).
fn ensure_privsep_dir() -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o755).create(PRIVSEP_DIR) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The current user's name, once per process.
fn current_user() -> String {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        let from_id = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|name| !name.is_empty());
        from_id
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into())
    })
    .clone()
}

/// A port that was free a moment ago. sshd may still lose it to another
/// process before binding; `start` retries then.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A port on 127.0.0.1 held by a bound, never listening socket for the
/// life of the process: connections to it are refused.
fn closed_port() -> u16 {
    static CLOSED: OnceLock<(OwnedFd, u16)> = OnceLock::new();
    CLOSED
        .get_or_init(|| bind_without_listen().expect("bind a socket on 127.0.0.1:0"))
        .1
}

fn bind_without_listen() -> std::io::Result<(OwnedFd, u16)> {
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_in and `len` is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut bound = addr;
    let mut bound_len = len;
    // SAFETY: `bound` is a writable sockaddr_in and `bound_len` its size.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            std::ptr::addr_of_mut!(bound).cast::<libc::sockaddr>(),
            &mut bound_len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fd, u16::from_be(bound.sin_port)))
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill() has no memory preconditions; errors (ESRCH) ignored.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The state letter and parent pid of a process from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Live (non-zombie) processes below `root`, parents before children.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((state, ppid)) = proc_stat(pid) {
                if state != 'Z' && state != 'X' {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            out.push(child);
            queue.push(child);
        }
    }
    out
}

/// SIGSTOPs every process below `root` until a scan finds no new one and
/// all are stopped, so none can fork while they are being killed (a
/// killed parent's children would be re-parented and escape the scan).
/// Returns the stopped pids.
fn stop_tree(root: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stopped: HashSet<u32> = HashSet::new();
    loop {
        let new: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|pid| !stopped.contains(pid))
            .collect();
        if new.is_empty() {
            // A signalled process may still finish a fork before it stops:
            // wait for every one to be stopped (or gone), then scan again.
            let settled = stopped.iter().all(|&pid| {
                proc_stat(pid).is_none_or(|(state, _)| matches!(state, 'T' | 't' | 'Z' | 'X'))
            });
            if settled || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for pid in new {
            signal(pid, libc::SIGSTOP);
            stopped.insert(pid);
        }
    }
    stopped.into_iter().collect()
}
