//! The NBD server (`diskdelta nbd`): serves [`Export`]s to NBD clients
//! (`qemu-img`, `nbdcopy`, `nbdinfo`, `nbd-client`, `qemu-io`, fio).
//!
//! ```text
//!  listener (unix socket or TCP) ──> one thread per client (at most max_clients)
//!                                      handshake: fixed newstyle; GO, INFO, LIST,
//!                                      STRUCTURED_REPLY, SET/LIST_META_CONTEXT, ABORT
//!                                      │
//!                                      └─ transmission: this thread reads requests,
//!                                         workers answer them concurrently (replies
//!                                         may come out of order, as the protocol allows),
//!                                         each reply written whole under the socket's lock
//! ```
//!
//! Errors are the protocol's: `EINVAL` for a range past the end or a bad
//! request, `EIO` for data that cannot be read or verified (the log says
//! which chunk), `EPERM` for writes to a read-only export. An unknown
//! export name is refused during the handshake (`NBD_REP_ERR_UNKNOWN`). A
//! client that breaks the protocol is disconnected; others are not
//! affected.

pub mod export;

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::bounded;

use self::export::{Export, ExportError};
use super::proto::{self, OptionHeader, OptionReplyHeader, Request, SimpleReply};
use super::proto::{BlockStatusExtent, StructuredReplyHeader};
use crate::repo::image::Segment;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum NbdServerError {
    /// The socket could not be set up.
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Two exports with one name.
    #[error("two exports are named {0:?}")]
    DuplicateExport(String),
    /// Nothing to serve.
    #[error("no export to serve")]
    NoExports,
    /// Socket I/O with a client failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A client broke the protocol.
    #[error("client broke the protocol: {0}")]
    Protocol(String),
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (created; removed when the server ends).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// A line for the log (the binary prints it on stderr).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// How to serve.
#[derive(Clone)]
pub struct ServerOptions {
    /// Clients served at once; more are disconnected at once.
    pub max_clients: usize,
    /// Requests of one client answered at once (0: in its own thread, in order).
    pub workers_per_client: usize,
    /// Where log lines go.
    pub log: Log,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("max_clients", &self.max_clients)
            .field("workers_per_client", &self.workers_per_client)
            .finish_non_exhaustive()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_clients: 16,
            workers_per_client: 4,
            log: Arc::new(|_| {}),
        }
    }
}

/// The exports of one server, by name; the first is the default export
/// (an empty name).
#[derive(Clone)]
pub struct Exports {
    list: Vec<Arc<dyn Export>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|e| e.name().to_string()))
            .finish()
    }
}

impl Exports {
    /// # Errors
    /// No export, or two with one name.
    pub fn new(list: Vec<Arc<dyn Export>>) -> Result<Exports, NbdServerError> {
        if list.is_empty() {
            return Err(NbdServerError::NoExports);
        }
        for (i, e) in list.iter().enumerate() {
            if list[..i].iter().any(|o| o.name() == e.name()) {
                return Err(NbdServerError::DuplicateExport(e.name().to_string()));
            }
        }
        Ok(Exports { list })
    }

    /// The export called `name` (the first for an empty name).
    pub fn find(&self, name: &str) -> Option<&Arc<dyn Export>> {
        if name.is_empty() {
            return self.list.first();
        }
        self.list.iter().find(|e| e.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Export>> {
        self.list.iter()
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A bound server; [`Server::run`] serves until [`Server::stopper`]'s
/// handle is used (or the process ends).
pub struct Server {
    listener: Listener,
    exports: Exports,
    options: ServerOptions,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exports", &self.exports)
            .finish_non_exhaustive()
    }
}

/// Stops a running server: its accept loop ends and it waits for the
/// clients being served.
#[derive(Debug, Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wake: Listen,
}

impl Stopper {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept call.
        let _ = match &self.wake {
            Listen::Unix(p) => UnixStream::connect(p).map(drop),
            Listen::Tcp(a) => TcpStream::connect(a).map(drop),
        };
    }
}

impl Server {
    /// Binds the socket. A Unix socket path that exists is refused unless
    /// it is a stale socket (nobody accepting on it).
    ///
    /// # Errors
    /// [`NbdServerError::Listen`].
    pub fn bind(
        listen: &Listen,
        exports: Exports,
        options: ServerOptions,
    ) -> Result<Server, NbdServerError> {
        let listener =
            match listen {
                Listen::Unix(path) => {
                    let err = |source| NbdServerError::Listen {
                        what: path.display().to_string(),
                        source,
                    };
                    if path.exists() {
                        if UnixStream::connect(path).is_ok() {
                            return Err(err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                "another server is listening there",
                            )));
                        }
                        std::fs::remove_file(path).map_err(err)?;
                    }
                    Listener::Unix(UnixListener::bind(path).map_err(err)?, path.clone())
                }
                Listen::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).map_err(|source| {
                    NbdServerError::Listen {
                        what: addr.to_string(),
                        source,
                    }
                })?),
            };
        Ok(Server {
            listener,
            exports,
            options,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Where the server listens (the TCP port resolved).
    pub fn listen(&self) -> Listen {
        match &self.listener {
            Listener::Unix(_, p) => Listen::Unix(p.clone()),
            Listener::Tcp(l) => Listen::Tcp(
                l.local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
            ),
        }
    }

    /// The URI a client connects to `export` with.
    pub fn uri(&self, export: &str) -> String {
        uri(&self.listen(), export)
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// A handle that stops [`Server::run`].
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            wake: self.listen(),
        }
    }

    /// Accepts clients until stopped, one thread each; waits for the
    /// clients being served before returning.
    ///
    /// # Errors
    /// Accepting fails for another reason than a client that went away.
    pub fn run(&self) -> Result<(), NbdServerError> {
        let active = Arc::new(AtomicUsize::new(0));
        let mut next_id = 0u64;
        std::thread::scope(|s| -> Result<(), NbdServerError> {
            loop {
                let accepted = match &self.listener {
                    Listener::Unix(l, _) => l.accept().map(|(c, _)| Stream::Unix(c)),
                    Listener::Tcp(l) => l.accept().map(|(c, _)| {
                        let _ = c.set_nodelay(true);
                        Stream::Tcp(c)
                    }),
                };
                if self.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let stream = match accepted {
                    Ok(c) => c,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::Interrupted
                                | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(NbdServerError::Io(e)),
                };
                next_id += 1;
                let id = next_id;
                if active.load(Ordering::SeqCst) >= self.options.max_clients {
                    (self.options.log)(&format!(
                        "client {id} refused: {} clients are being served already",
                        self.options.max_clients
                    ));
                    drop(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let active = &*active;
                let exports = &self.exports;
                let options = &self.options;
                let spawned = std::thread::Builder::new()
                    .name(format!("nbd-client-{id}"))
                    .spawn_scoped(s, move || {
                        // Released even if serving the client panics.
                        let _slot = Released(active);
                        let result = match stream.split() {
                            Ok((r, w)) => serve_connection(r, w, exports, options),
                            Err(e) => Err(NbdServerError::Io(e)),
                        };
                        if let Err(e) = result {
                            (options.log)(&format!("client {id}: {}", export::error_chain(&e)));
                        }
                    });
                if let Err(e) = spawned {
                    (self.options.log)(&format!("client {id} refused: no thread: {e}"));
                }
            }
        })
    }
}

/// A client slot of the server, given back when dropped.
struct Released<'a>(&'a AtomicUsize);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The URI of `export` at `listen`.
pub fn uri(listen: &Listen, export: &str) -> String {
    let name = percent_encode(export);
    match listen {
        Listen::Unix(p) => format!(
            "nbd+unix:///{name}?socket={}",
            percent_encode(&p.display().to_string())
        ),
        Listen::Tcp(a) => format!("nbd://{a}/{name}"),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn split(self) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Stream::Unix(s) => (Box::new(s.try_clone()?), Box::new(s)),
            Stream::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s)),
        })
    }
}

/// What the handshake settled.
struct Session {
    export: Arc<dyn Export>,
    structured: bool,
    /// The context id of `base:allocation` when the client selected it.
    base_allocation: Option<u32>,
}

/// The id of the one metadata context served.
const BASE_ALLOCATION_ID: u32 = 1;

/// Serves one client on a reader and a writer of its connection: the
/// handshake, then requests until it disconnects.
///
/// # Errors
/// Socket failures, protocol violations (the connection is then dropped).
pub fn serve_connection<R: Read, W: Write + Send>(
    mut reader: R,
    writer: W,
    exports: &Exports,
    options: &ServerOptions,
) -> Result<(), NbdServerError> {
    let mut writer = io::BufWriter::with_capacity(64 * 1024, writer);
    let Some(session) = handshake(&mut reader, &mut writer, exports)? else {
        return Ok(());
    };
    let writer = Mutex::new(writer.into_inner().map_err(|e| e.into_error())?);
    transmission(&mut reader, &writer, &session, options)
}

fn protocol(msg: impl Into<String>) -> NbdServerError {
    NbdServerError::Protocol(msg.into())
}

/// Reads an option's payload (bounded) or fails the connection.
fn read_payload(r: &mut impl Read, len: u32) -> Result<Vec<u8>, NbdServerError> {
    if len > proto::MAX_OPTION_LEN {
        return Err(protocol(format!("option payload of {len} bytes")));
    }
    Ok(proto::read_bounded(r, len, proto::MAX_OPTION_LEN)?)
}

fn reply(
    w: &mut impl Write,
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> Result<(), NbdServerError> {
    let h = OptionReplyHeader {
        option,
        reply_type,
        length: payload.len() as u32,
    };
    w.write_all(&h.encode())?;
    w.write_all(payload)?;
    Ok(())
}

fn transmission_flags(export: &dyn Export) -> u16 {
    let mut f = proto::TFLAG_HAS_FLAGS
        | proto::TFLAG_SEND_FLUSH
        | proto::TFLAG_CAN_MULTI_CONN
        | proto::TFLAG_SEND_CACHE;
    if export.writable() {
        f |= proto::TFLAG_SEND_FUA | proto::TFLAG_SEND_TRIM | proto::TFLAG_SEND_WRITE_ZEROES;
    } else {
        f |= proto::TFLAG_READ_ONLY;
    }
    f
}

/// The fixed newstyle handshake; `None` when the client ended it (ABORT,
/// or a disconnect).
fn handshake(
    r: &mut impl Read,
    w: &mut (impl Write + Send),
    exports: &Exports,
) -> Result<Option<Session>, NbdServerError> {
    w.write_all(&proto::INIT_MAGIC.to_be_bytes())?;
    w.write_all(&proto::OPTS_MAGIC.to_be_bytes())?;
    w.write_all(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client_flags = match proto::read_u32(r) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if client_flags & proto::CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the client does not speak fixed newstyle"));
    }
    if client_flags & !(proto::CLIENT_FLAG_FIXED_NEWSTYLE | proto::CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(protocol(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & proto::CLIENT_FLAG_NO_ZEROES != 0;
    let mut structured = false;
    let mut base_allocation = None;
    loop {
        w.flush()?;
        let mut hb = [0u8; OptionHeader::LEN];
        match r.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let h = OptionHeader::decode(&hb).ok_or_else(|| protocol("bad option magic"))?;
        let payload = read_payload(r, h.length)?;
        let opt = h.option;
        match opt {
            proto::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&payload);
                // No way to refuse here but to hang up.
                let export = exports
                    .find(&name)
                    .ok_or_else(|| protocol(format!("unknown export {name:?}")))?
                    .clone();
                w.write_all(&export.size().to_be_bytes())?;
                w.write_all(&transmission_flags(&*export).to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(Some(Session {
                    export,
                    structured,
                    base_allocation,
                }));
            }
            proto::OPT_ABORT => {
                let _ = reply(w, opt, proto::REP_ACK, &[]);
                let _ = w.flush();
                return Ok(None);
            }
            proto::OPT_LIST => {
                if !payload.is_empty() {
                    reply(w, opt, proto::REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                for e in exports.iter() {
                    let mut b = Vec::new();
                    proto::write_string32(&mut b, e.name())?;
                    b.extend_from_slice(e.description().as_bytes());
                    reply(w, opt, proto::REP_SERVER, &b)?;
                }
                reply(w, opt, proto::REP_ACK, &[])?;
            }
            proto::OPT_STRUCTURED_REPLY => {
                if !payload.is_empty() {
                    reply(w, opt, proto::REP_ERR_INVALID, b"no data expected")?;
                } else {
                    structured = true;
                    reply(w, opt, proto::REP_ACK, &[])?;
                }
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let Some((name, requests)) = parse_info(&payload) else {
                    reply(w, opt, proto::REP_ERR_INVALID, b"malformed INFO/GO request")?;
                    continue;
                };
                let Some(export) = exports.find(&name) else {
                    let msg = format!("no export named {name:?}");
                    reply(w, opt, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                };
                let export = export.clone();
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&proto::INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&*export).to_be_bytes());
                reply(w, opt, proto::REP_INFO, &info)?;
                let mut bs = Vec::with_capacity(14);
                bs.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&4096u32.to_be_bytes());
                bs.extend_from_slice(&proto::MAX_REQUEST_LEN.to_be_bytes());
                reply(w, opt, proto::REP_INFO, &bs)?;
                for req in requests {
                    let mut b = req.to_be_bytes().to_vec();
                    match req {
                        proto::INFO_NAME => b.extend_from_slice(export.name().as_bytes()),
                        proto::INFO_DESCRIPTION => {
                            b.extend_from_slice(export.description().as_bytes())
                        }
                        _ => continue,
                    }
                    reply(w, opt, proto::REP_INFO, &b)?;
                }
                reply(w, opt, proto::REP_ACK, &[])?;
                if opt == proto::OPT_GO {
                    w.flush()?;
                    return Ok(Some(Session {
                        export,
                        structured,
                        base_allocation,
                    }));
                }
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                let set = opt == proto::OPT_SET_META_CONTEXT;
                if set && !structured {
                    reply(
                        w,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"structured replies must be negotiated first",
                    )?;
                    continue;
                }
                let Some((name, queries)) = parse_meta(&payload) else {
                    reply(w, opt, proto::REP_ERR_INVALID, b"malformed context request")?;
                    continue;
                };
                if exports.find(&name).is_none() {
                    let msg = format!("no export named {name:?}");
                    reply(w, opt, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                let matched = if set {
                    queries.iter().any(|q| q == proto::CONTEXT_BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries
                            .iter()
                            .any(|q| q == proto::CONTEXT_BASE_ALLOCATION || q == "base:")
                };
                if set {
                    base_allocation = matched.then_some(BASE_ALLOCATION_ID);
                }
                if matched {
                    let mut b = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    b.extend_from_slice(proto::CONTEXT_BASE_ALLOCATION.as_bytes());
                    reply(w, opt, proto::REP_META_CONTEXT, &b)?;
                }
                reply(w, opt, proto::REP_ACK, &[])?;
            }
            proto::OPT_STARTTLS => {
                reply(w, opt, proto::REP_ERR_POLICY, b"TLS is not offered")?;
            }
            _ => {
                let msg = format!("option {opt} is not supported");
                reply(w, opt, proto::REP_ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
}

/// An INFO/GO payload: export name and the info types asked for.
fn parse_info(b: &[u8]) -> Option<(String, Vec<u16>)> {
    let (name, rest) = proto::take_string32(b)?;
    if rest.len() < 2 {
        return None;
    }
    let n = proto::be_u16(rest) as usize;
    let rest = &rest[2..];
    if rest.len() != 2 * n {
        return None;
    }
    Some((name, rest.chunks_exact(2).map(proto::be_u16).collect()))
}

/// A LIST/SET_META_CONTEXT payload: export name and queries.
fn parse_meta(b: &[u8]) -> Option<(String, Vec<String>)> {
    let (name, mut rest) = proto::take_string32(b)?;
    if rest.len() < 4 {
        return None;
    }
    let n = proto::be_u32(rest);
    rest = &rest[4..];
    let mut queries = Vec::new();
    for _ in 0..n {
        let (q, r) = proto::take_string32(rest)?;
        queries.push(q);
        rest = r;
    }
    rest.is_empty().then_some((name, queries))
}

/// The longest run of zeros a reply borrows from.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Writes every slice, in order, with as few system calls as it can.
fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if parts[idx].len() == off {
            idx += 1;
            off = 0;
            continue;
        }
        let mut slices = Vec::with_capacity((parts.len() - idx).min(512));
        slices.push(IoSlice::new(&parts[idx][off..]));
        for p in parts[idx + 1..].iter().take(511) {
            slices.push(IoSlice::new(p));
        }
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Replies of one connection, written whole under one lock.
struct Replier<'a, W: Write> {
    w: &'a Mutex<W>,
    structured: bool,
}

impl<W: Write> Replier<'_, W> {
    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut w = self
            .w
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write_all_vectored(&mut *w, parts)?;
        w.flush()
    }

    fn ok(&self, cookie: u64) -> io::Result<()> {
        if self.structured {
            let h = StructuredReplyHeader {
                flags: proto::REPLY_FLAG_DONE,
                reply_type: proto::REPLY_TYPE_NONE,
                cookie,
                length: 0,
            };
            self.send(&[&h.encode()])
        } else {
            self.send(&[&SimpleReply { error: 0, cookie }.encode()])
        }
    }

    fn error(&self, cookie: u64, e: &ExportError) -> io::Result<()> {
        if self.structured {
            let payload = proto::encode_structured_error(e.errno, &e.message);
            let h = StructuredReplyHeader {
                flags: proto::REPLY_FLAG_DONE,
                reply_type: proto::REPLY_TYPE_ERROR,
                cookie,
                length: payload.len() as u32,
            };
            self.send(&[&h.encode(), &payload])
        } else {
            self.send(&[&SimpleReply {
                error: e.errno,
                cookie,
            }
            .encode()])
        }
    }

    fn data(&self, cookie: u64, offset: u64, segments: &[Segment]) -> io::Result<()> {
        let len: usize = segments.iter().map(Segment::len).sum();
        let header;
        let offset_bytes = offset.to_be_bytes();
        let simple;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(segments.len() + 2);
        if self.structured {
            header = StructuredReplyHeader {
                flags: proto::REPLY_FLAG_DONE,
                reply_type: proto::REPLY_TYPE_OFFSET_DATA,
                cookie,
                length: (len + 8) as u32,
            }
            .encode();
            parts.push(&header);
            parts.push(&offset_bytes);
        } else {
            simple = SimpleReply { error: 0, cookie }.encode();
            parts.push(&simple);
        }
        for s in segments {
            match s.data() {
                Some(d) => parts.push(d),
                None => {
                    let mut left = s.len();
                    while left > 0 {
                        let n = left.min(ZEROS.len());
                        parts.push(&ZEROS[..n]);
                        left -= n;
                    }
                }
            }
        }
        self.send(&parts)
    }

    fn block_status(&self, cookie: u64, id: u32, extents: &[BlockStatusExtent]) -> io::Result<()> {
        let payload = proto::encode_block_status(id, extents);
        let h = StructuredReplyHeader {
            flags: proto::REPLY_FLAG_DONE,
            reply_type: proto::REPLY_TYPE_BLOCK_STATUS,
            cookie,
            length: payload.len() as u32,
        };
        self.send(&[&h.encode(), &payload])
    }
}

/// The most extents one block status reply carries.
const MAX_EXTENTS: usize = 64 * 1024;

fn check_range(export: &dyn Export, offset: u64, len: u64) -> Result<(), ExportError> {
    match offset.checked_add(len) {
        Some(end) if end <= export.size() => Ok(()),
        _ => Err(ExportError::new(
            proto::EINVAL,
            format!(
                "range {offset}+{len} is beyond the end of the export ({} bytes)",
                export.size()
            ),
        )),
    }
}

/// Answers one request; the reply is sent here. Returns an error only
/// when the reply cannot be written.
fn answer<W: Write>(
    session: &Session,
    out: &Replier<'_, W>,
    req: Request,
    payload: Option<Vec<u8>>,
    log: &Log,
) -> io::Result<()> {
    let export = &*session.export;
    let fua = req.flags & proto::CMD_FLAG_FUA != 0;
    let len = u64::from(req.length);
    let result: Result<(), ExportError> = (|| match req.command {
        proto::CMD_READ => {
            if req.length == 0 || req.length > proto::MAX_REQUEST_LEN {
                return Err(ExportError::new(proto::EINVAL, "bad read length"));
            }
            check_range(export, req.offset, len)?;
            let segments = export.read(req.offset, req.length as usize)?;
            out.data(req.cookie, req.offset, &segments)
                .map_err(|e| ExportError::new(0, e.to_string()))?;
            Ok(())
        }
        proto::CMD_WRITE => {
            if !export.writable() {
                return Err(ExportError::new(proto::EPERM, "the export is read-only"));
            }
            check_range(export, req.offset, len)?;
            export.write(req.offset, payload.as_deref().unwrap_or(&[]), fua)?;
            Ok(())
        }
        proto::CMD_WRITE_ZEROES | proto::CMD_TRIM => {
            if !export.writable() {
                return Err(ExportError::new(proto::EPERM, "the export is read-only"));
            }
            check_range(export, req.offset, len)?;
            if req.command == proto::CMD_TRIM {
                export.trim(req.offset, len, fua)
            } else {
                export.write_zeroes(req.offset, len, fua)
            }
        }
        proto::CMD_FLUSH => export.flush(),
        proto::CMD_CACHE => {
            check_range(export, req.offset, len)?;
            export.cache(req.offset, len);
            Ok(())
        }
        proto::CMD_BLOCK_STATUS => {
            let Some(id) = session.base_allocation else {
                return Err(ExportError::new(
                    proto::EINVAL,
                    "no metadata context was negotiated",
                ));
            };
            if req.length == 0 {
                return Err(ExportError::new(proto::EINVAL, "empty block status range"));
            }
            check_range(export, req.offset, len)?;
            let extents = export.extents(req.offset, len)?;
            let mut wire = Vec::new();
            'outer: for e in extents {
                let flags = if e.zero {
                    proto::STATE_HOLE | proto::STATE_ZERO
                } else {
                    0
                };
                let mut left = e.len;
                while left > 0 {
                    // Whole 4 KiB blocks per extent when split.
                    let n = left.min(u64::from(u32::MAX) & !4095) as u32;
                    wire.push(BlockStatusExtent { length: n, flags });
                    left -= u64::from(n);
                    if req.flags & proto::CMD_FLAG_REQ_ONE != 0 || wire.len() >= MAX_EXTENTS {
                        break 'outer;
                    }
                }
            }
            out.block_status(req.cookie, id, &wire)
                .map_err(|e| ExportError::new(0, e.to_string()))?;
            Ok(())
        }
        other => Err(ExportError::new(
            proto::EINVAL,
            format!("command {other} is not supported"),
        )),
    })();
    match result {
        Ok(()) => match req.command {
            proto::CMD_READ | proto::CMD_BLOCK_STATUS => Ok(()),
            _ => out.ok(req.cookie),
        },
        // The reply itself could not be written.
        Err(e) if e.errno == 0 => Err(io::Error::other(e.message)),
        Err(e) => {
            if e.errno == proto::EIO {
                log(&format!(
                    "export {}: {} of {}+{} failed: {}",
                    export.name(),
                    proto::command_name(req.command),
                    req.offset,
                    req.length,
                    e.message
                ));
            }
            out.error(req.cookie, &e)
        }
    }
}

/// Requests until the client disconnects. One thread reads, workers answer.
fn transmission<R: Read, W: Write + Send>(
    r: &mut R,
    w: &Mutex<W>,
    session: &Session,
    options: &ServerOptions,
) -> Result<(), NbdServerError> {
    let out = Replier {
        w,
        structured: session.structured,
    };
    let workers = options.workers_per_client;
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(), NbdServerError> {
        let (tx, rx) = bounded::<(Request, Option<Vec<u8>>)>(workers.max(1) * 2);
        for _ in 0..workers {
            let rx = rx.clone();
            let out = &out;
            let failed = &failed;
            s.spawn(move || {
                for (req, payload) in rx {
                    if answer(session, out, req, payload, &options.log).is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
        drop(rx);
        loop {
            if failed.load(Ordering::SeqCst) {
                return Err(NbdServerError::Io(io::Error::other(
                    "a reply could not be sent",
                )));
            }
            let mut b = [0u8; Request::LEN];
            match r.read_exact(&mut b) {
                Ok(()) => {}
                // A client that hangs up without DISC is common.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e.into()),
            }
            let req = Request::decode(&b).ok_or_else(|| protocol("bad request magic"))?;
            let payload = if req.command == proto::CMD_WRITE {
                if req.length > proto::MAX_REQUEST_LEN {
                    return Err(protocol(format!("write of {} bytes", req.length)));
                }
                let mut p = vec![0u8; req.length as usize];
                r.read_exact(&mut p)?;
                Some(p)
            } else {
                None
            };
            if req.command == proto::CMD_DISC {
                return Ok(());
            }
            if workers == 0 {
                answer(session, &out, req, payload, &options.log)?;
            } else if tx.send((req, payload)).is_err() {
                return Ok(());
            }
        }
    })
}

/// Serves a client on an in-memory byte stream (the fuzz target's entry):
/// the bytes are the client's, the server's replies go to `out`.
///
/// # Errors
/// As [`serve_connection`].
pub fn serve_bytes(
    input: &[u8],
    out: &mut Vec<u8>,
    exports: &Exports,
) -> Result<(), NbdServerError> {
    let options = ServerOptions {
        workers_per_client: 0,
        ..ServerOptions::default()
    };
    serve_connection(input, out, exports, &options)
}

/// A default Unix socket path: in `$XDG_RUNTIME_DIR`, else `/run/diskdelta`
/// (root), else the temporary directory.
pub fn default_socket(pid: u32) -> PathBuf {
    let name = format!("diskdelta-nbd-{pid}.sock");
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join(name);
    }
    let run = Path::new("/run/diskdelta");
    if std::fs::create_dir_all(run).is_ok() && is_writable(run) {
        return run.join(name);
    }
    std::env::temp_dir().join(name)
}

fn is_writable(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

#[cfg(test)]
mod tests;
