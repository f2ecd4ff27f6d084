//! A connection to one endpoint: a thread of this process for a local
//! path, or `diskdelta serve` on a remote host started through ssh. Both
//! look the same to the driver: a sender of requests and a receiver of
//! replies.
//!
//! For a remote endpoint two threads bridge the channels to the ssh
//! child's stdin and stdout as frames; a third forwards its stderr (the
//! remote side's messages) to ours, prefixed with the host, once the
//! handshake is done. Before that, stderr is kept so a failure to connect
//! becomes one clear error line.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::deploy::{DeployError, Deployed, Deployment};
use super::frame::{write_frame, FrameReader};
use super::message::Message;
use super::ssh::Remote;
use super::{RemoteError, WireError};

/// Why a local endpoint's thread ended: its own error, kept whole.
type LocalFailure = Box<dyn std::error::Error + Send + Sync>;

enum Kind {
    Local(Option<JoinHandle<Result<(), LocalFailure>>>),
    Remote {
        child: Child,
        stderr: Arc<Mutex<Vec<String>>>,
        /// Disconnects when ssh's stderr reaches its end, so the last
        /// line is in `stderr` before a failure is explained.
        stderr_closed: Receiver<()>,
        live: Arc<AtomicBool>,
        remote: Remote,
    },
}

/// A connection to an endpoint.
pub struct Connection {
    name: String,
    requests: Option<Sender<Message>>,
    replies: Receiver<Message>,
    kind: Kind,
    /// Payload bytes received on the wire (remote connections).
    wire_in: Arc<AtomicU64>,
    /// Bytes sent on the wire (remote connections).
    wire_out: Arc<AtomicU64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .finish()
    }
}

/// Requests queued to one endpoint before the driver blocks.
const REQUEST_QUEUE: usize = 256;

/// How long a peer may stay silent before the connection counts as
/// stalled, unless `DISKDELTA_TIMEOUT` (seconds, 0 = never) says otherwise.
/// Every message of a healthy peer comes within a region's hashing or a
/// window's worth of chunks, seconds even on slow disks.
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// The idle timeout of connections, `None` for none.
pub fn idle_timeout() -> Option<std::time::Duration> {
    let secs = std::env::var("DISKDELTA_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// How long a failure waits for ssh's last stderr lines after it exited.
const STDERR_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Connection {
    /// An endpoint served by a thread of this process.
    pub fn local<E: WireError + From<RemoteError>>(
        name: &str,
        serve: impl FnOnce(Receiver<Message>, Sender<Message>) -> Result<(), E> + Send + 'static,
    ) -> Connection {
        let (req_tx, req_rx) = bounded(REQUEST_QUEUE);
        let (rep_tx, rep_rx) = unbounded();
        let handle = std::thread::Builder::new()
            .name(format!("serve {name}"))
            .spawn(move || serve(req_rx, rep_tx).map_err(|e| -> LocalFailure { Box::new(e) }))
            .ok();
        Connection {
            name: name.to_string(),
            requests: Some(req_tx),
            replies: rep_rx,
            kind: Kind::Local(handle),
            wire_in: Arc::default(),
            wire_out: Arc::default(),
        }
    }

    /// An endpoint on a remote host: `RSH HOST REMOTE_PATH serve`.
    ///
    /// # Errors
    /// [`RemoteError::Ssh`] when the ssh command cannot be started.
    pub fn remote(remote: &Remote) -> Result<Connection, RemoteError> {
        Connection::remote_serve(remote, &[])
    }

    /// `RSH HOST REMOTE_PATH serve ARGS...`.
    ///
    /// # Errors
    /// [`RemoteError::Ssh`] when the ssh command cannot be started.
    pub fn remote_serve(remote: &Remote, args: &[&str]) -> Result<Connection, RemoteError> {
        let mut child = remote.spawn_serve(args)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RemoteError::Ssh("ssh child has no pipes".into()));
        };
        let (req_tx, req_rx) = bounded(REQUEST_QUEUE);
        let (rep_tx, rep_rx) = unbounded();
        let wire_in = Arc::new(AtomicU64::new(0));
        let wire_out = Arc::new(AtomicU64::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(AtomicBool::new(false));
        let stderr_closed = spawn_stderr(stderr, remote.host.clone(), lines.clone(), live.clone());
        let mut conn = Connection {
            name: remote.host.clone(),
            requests: Some(req_tx),
            replies: rep_rx,
            kind: Kind::Remote {
                child,
                stderr: lines,
                stderr_closed,
                live,
                remote: remote.clone(),
            },
            wire_in: wire_in.clone(),
            wire_out: wire_out.clone(),
        };
        let mut stdin = stdin;
        let mut stdout = BufReader::with_capacity(1 << 20, stdout);
        if let Some(deployment) = &remote.deploy {
            let watchdog = Watchdog::start(&conn);
            let result = deployment.bootstrap(&remote.host, &mut stdout, &mut stdin);
            let fired = watchdog.stop();
            match result {
                Ok(Some(deployed)) if !fired => {
                    report_deployed(&remote.host, deployment, &deployed)
                }
                _ if fired => {
                    drop(stdin);
                    return Err(conn.stalled());
                }
                // ssh or the remote shell failed before the script spoke,
                // or the connection broke during the upload: the exit
                // status and stderr tell why.
                Ok(_) | Err(DeployError::Upload { .. }) => {
                    drop(stdin);
                    return Err(conn.failure());
                }
                Err(e) => {
                    drop(stdin);
                    return Err(e.into());
                }
            }
        }
        spawn_writer(stdin, req_rx, wire_out);
        spawn_reader(stdout, rep_tx, wire_in);
        Ok(conn)
    }

    /// True for an endpoint reached over ssh.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote { .. })
    }

    /// Who this is, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The receiver of replies (for `select!`).
    pub fn replies(&self) -> &Receiver<Message> {
        &self.replies
    }

    /// Bytes received and sent on the wire so far (0 for local endpoints).
    pub fn wire_bytes(&self) -> (u64, u64) {
        (
            self.wire_in.load(Ordering::Relaxed),
            self.wire_out.load(Ordering::Relaxed),
        )
    }

    /// Sends `Hello` and checks the peer's, then marks the handshake done.
    ///
    /// # Errors
    /// [`RemoteError::Version`] when the peer speaks another version.
    pub fn handshake(&mut self) -> Result<(), RemoteError> {
        self.send_hello()?;
        self.expect_hello()
    }

    /// Sends `Hello`. A client may send its first request right after it
    /// and call [`Self::expect_hello`] then: one round trip fewer.
    ///
    /// # Errors
    /// The connection is gone.
    pub fn send_hello(&mut self) -> Result<(), RemoteError> {
        self.send(Message::Hello {
            version: super::message::VERSION,
        })
    }

    /// Waits for the peer's `Hello`, checks its version and marks the
    /// handshake done.
    ///
    /// # Errors
    /// [`RemoteError::Version`] when the peer speaks another version.
    pub fn expect_hello(&mut self) -> Result<(), RemoteError> {
        match self.recv()? {
            Message::Hello { version } if version == super::message::VERSION => {}
            Message::Hello { version } => {
                return Err(RemoteError::Version {
                    ours: super::message::VERSION,
                    theirs: version,
                })
            }
            other => return Err(RemoteError::unexpected(other.name(), "Hello")),
        }
        self.handshake_done();
        Ok(())
    }

    /// Marks the handshake as done: from now on the remote side's stderr
    /// is forwarded to ours as it arrives.
    pub fn handshake_done(&self) {
        if let Kind::Remote {
            stderr,
            live,
            remote,
            ..
        } = &self.kind
        {
            live.store(true, Ordering::Relaxed);
            let held = std::mem::take(
                &mut *stderr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for line in held.iter().filter(|l| !is_error_line(l)) {
                eprintln!("{}: {line}", remote.host);
            }
        }
    }

    /// Sends a request.
    ///
    /// # Errors
    /// [`RemoteError::Disconnected`] (or the reason the peer went away).
    pub fn send(&mut self, m: Message) -> Result<(), RemoteError> {
        let ok = self.requests.as_ref().is_some_and(|r| r.send(m).is_ok());
        if ok {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Waits for the next reply; an `Error` reply becomes [`RemoteError::Remote`].
    ///
    /// # Errors
    /// The peer's error, or why it went away.
    pub fn recv(&mut self) -> Result<Message, RemoteError> {
        let received = match idle_timeout() {
            Some(limit) => self.replies.recv_timeout(limit).map_err(|e| e.is_timeout()),
            None => self.replies.recv().map_err(|_| false),
        };
        match received {
            Ok(m) => self.check(m),
            Err(true) => Err(self.stalled()),
            Err(false) => Err(self.failure()),
        }
    }

    /// The peer said nothing for the idle timeout: stops it (so that its
    /// pipes close and no thread stays blocked on them) and says so.
    pub fn stalled(&mut self) -> RemoteError {
        self.requests = None;
        if let Kind::Remote { child, .. } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
        }
        RemoteError::Stalled {
            peer: self.name.clone(),
            seconds: idle_timeout().map_or(0, |d| d.as_secs()),
        }
    }

    /// Turns an `Error` reply into an error.
    ///
    /// # Errors
    /// [`RemoteError::Remote`] for `Error` messages.
    pub fn check(&self, m: Message) -> Result<Message, RemoteError> {
        match m {
            Message::Error { code, message } => Err(RemoteError::Remote {
                peer: self.name.clone(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }

    /// Why the peer is gone: its exit status and last stderr line, with
    /// advice for the common cases.
    pub fn failure(&mut self) -> RemoteError {
        self.requests = None;
        match &mut self.kind {
            Kind::Local(handle) => match handle.take().map(JoinHandle::join) {
                Some(Ok(Err(e))) => RemoteError::Local(e),
                _ => RemoteError::Disconnected {
                    peer: self.name.clone(),
                },
            },
            Kind::Remote {
                child,
                stderr,
                stderr_closed,
                live,
                remote,
            } => {
                let status = child.wait().ok().and_then(|s| s.code());
                // ssh has exited, but its last words may still be in the
                // pipe; a helper it left behind may hold the pipe open, so
                // the wait is bounded.
                let _ = stderr_closed.recv_timeout(STDERR_DRAIN);
                let last = stderr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .cloned();
                let host = &remote.host;
                let detail = last.map(|l| format!(": {l}")).unwrap_or_default();
                match status {
                    Some(127) => RemoteError::Ssh(format!(
                        "diskdelta is not installed on {host} ({} not found): pass --deploy to copy this one there, install it there, or pass --remote-path PATH{detail}",
                        remote.remote_path
                    )),
                    Some(126) => RemoteError::Ssh(format!(
                        "cannot execute {} on {host}: check --remote-path{detail}",
                        remote.remote_path
                    )),
                    Some(255) if !live.load(Ordering::Relaxed) => {
                        RemoteError::Ssh(format!("cannot connect to {host} with ssh{detail}"))
                    }
                    Some(code) => RemoteError::Ssh(format!(
                        "connection to {host} lost (remote exit status {code}){detail}"
                    )),
                    None => RemoteError::Ssh(format!("connection to {host} lost (ssh was killed){detail}")),
                }
            }
        }
    }

    /// Closes the request stream and waits for the endpoint to end.
    ///
    /// # Errors
    /// The endpoint's failure, if it failed.
    pub fn close(mut self) -> Result<(), RemoteError> {
        self.requests = None;
        match &mut self.kind {
            Kind::Local(handle) => match handle.take().map(JoinHandle::join) {
                Some(Ok(r)) => r.map_err(RemoteError::Local),
                Some(Err(_)) => Err(RemoteError::Protocol("endpoint thread panicked".into())),
                None => Ok(()),
            },
            Kind::Remote { child, .. } => {
                let _ = child.wait();
                Ok(())
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.requests = None;
        if let Kind::Remote { child, .. } = &mut self.kind {
            if matches!(child.try_wait(), Ok(None)) {
                // Give the remote side a moment to finish after stdin closed.
                for _ in 0..50 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Bounds the deploy exchange, which runs before the reader and writer
/// threads (and so before the idle timeout applies): when it takes longer
/// than the idle timeout, ssh is killed, which ends every blocked read and
/// write. At the default 300 s that leaves room for a 12 MB upload at
/// 40 KB/s.
struct Watchdog {
    /// `Some(fired)`; `None` once stopped. The kill happens under this lock
    /// and only while the child is unreaped (it is reaped after `stop`), so
    /// its pid cannot have been reused.
    state: Arc<Mutex<Option<bool>>>,
    stop: Option<Sender<()>>,
}

impl Watchdog {
    fn start(conn: &Connection) -> Watchdog {
        let state = Arc::new(Mutex::new(Some(false)));
        let (stop_tx, stop_rx) = bounded::<()>(0);
        if let (Some(limit), Kind::Remote { child, .. }) = (idle_timeout(), &conn.kind) {
            let pid = child.id() as libc::pid_t;
            let state = state.clone();
            let _ = std::thread::Builder::new()
                .name("deploy watchdog".into())
                .spawn(move || {
                    if let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(limit) {
                        let mut s = state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if s.is_some() {
                            // SAFETY: kill(2) with a pid and a signal number
                            // touches no memory; the pid is our unreaped child.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            *s = Some(true);
                        }
                    }
                });
        }
        Watchdog {
            state,
            stop: Some(stop_tx),
        }
    }

    /// Stops the watchdog; true when it had fired.
    fn stop(mut self) -> bool {
        self.stop = None;
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.take().unwrap_or(false)
    }
}

/// Says on stderr that a binary was copied to a host (even with `-q`:
/// a file appeared in someone's home directory).
fn report_deployed(host: &str, deployment: &Deployment, deployed: &Deployed) {
    if let Deployed::Uploaded { replaced } = deployed {
        if *replaced {
            eprintln!(
                "diskdelta: warning: {host}: {} had another SHA-256 than {}; replaced it",
                deployment.remote_file(),
                deployment.path().display()
            );
        }
        eprintln!(
            "diskdelta: {host}: deployed {} ({}) as {}",
            deployment.path().display(),
            crate::units::human_bytes(deployment.size()),
            deployment.remote_file()
        );
    }
}

fn spawn_writer(stdin: ChildStdin, requests: Receiver<Message>, counter: Arc<AtomicU64>) {
    let _ = std::thread::Builder::new()
        .name("ssh write".into())
        .spawn(move || {
            let mut out = BufWriter::with_capacity(1 << 20, stdin);
            for m in &requests {
                let f = m.encode();
                if write_frame(&mut out, f.kind, &f.body).is_err() {
                    return;
                }
                counter.fetch_add(8 + f.body.len() as u64, Ordering::Relaxed);
                if requests.is_empty() && out.flush().is_err() {
                    return;
                }
            }
            let _ = out.flush();
        });
}

fn spawn_reader(
    stdout: impl BufRead + Send + 'static,
    replies: Sender<Message>,
    counter: Arc<AtomicU64>,
) {
    let _ = std::thread::Builder::new()
        .name("ssh read".into())
        .spawn(move || {
            let mut frames = FrameReader::new(stdout);
            loop {
                match frames.read_frame() {
                    Ok(Some(f)) => {
                        counter.fetch_add(8 + f.body.len() as u64, Ordering::Relaxed);
                        let m = match Message::decode(&f) {
                            Ok(m) => m,
                            Err(e) => Message::Error {
                                code: super::message::ErrorCode::Protocol as u32,
                                message: e.to_string(),
                            },
                        };
                        if replies.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = replies.send(Message::Error {
                            code: super::message::ErrorCode::Protocol as u32,
                            message: format!("{e}"),
                        });
                        return;
                    }
                }
            }
        });
}

/// The remote side's own error line: the error also reaches us as a
/// message (or, when the remote side dies, as the last stderr line kept
/// to explain the failure), so forwarding it would say it twice.
fn is_error_line(line: &str) -> bool {
    line.starts_with("diskdelta: error:")
}

fn spawn_stderr(
    stderr: std::process::ChildStderr,
    host: String,
    held: Arc<Mutex<Vec<String>>>,
    live: Arc<AtomicBool>,
) -> Receiver<()> {
    let (closed_tx, closed_rx) = bounded::<()>(0);
    let _ = std::thread::Builder::new()
        .name("ssh stderr".into())
        .spawn(move || {
            let _closed = closed_tx;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if live.load(Ordering::Relaxed) && !is_error_line(&line) {
                    eprintln!("{host}: {line}");
                }
                let mut h = held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                h.push(line);
                if h.len() > 20 {
                    h.remove(0);
                }
            }
        });
    closed_rx
}

/// Runs `diskdelta serve` over stdin and stdout: `serve` gets the
/// decoded requests and sends the replies.
///
/// # Errors
/// Whatever ended the session.
pub fn serve_stdio<E: From<RemoteError>>(
    serve: impl FnOnce(Receiver<Message>, Sender<Message>) -> Result<(), E>,
) -> Result<(), E> {
    let (req_tx, req_rx) = bounded(REQUEST_QUEUE);
    let (rep_tx, rep_rx) = unbounded::<Message>();
    let stdin = std::io::stdin();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut frames = FrameReader::new(BufReader::with_capacity(1 << 20, stdin.lock()));
            while let Ok(Some(f)) = frames.read_frame() {
                match Message::decode(&f) {
                    Ok(m) => {
                        if req_tx.send(m).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    let writer = std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || -> std::io::Result<()> {
            let stdout = std::io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            for m in &rep_rx {
                let f = m.encode();
                write_frame(&mut out, f.kind, &f.body).map_err(std::io::Error::other)?;
                if rep_rx.is_empty() {
                    out.flush()?;
                }
            }
            out.flush()
        })
        .map_err(|e| RemoteError::Protocol(format!("cannot start writer: {e}")))?;
    let result = serve(req_rx, rep_tx);
    let _ = writer.join();
    result
}
