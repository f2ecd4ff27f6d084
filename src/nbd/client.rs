//! The NBD client: fixed newstyle handshake, structured replies, meta
//! contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`), and the READ,
//! BLOCK_STATUS and DISC commands.
//!
//! Every reply is checked against the request it answers (cookie, offsets,
//! lengths, coverage): a broken or malicious server gives an error, never
//! wrong bytes, and a socket timeout turns a silent server into an error
//! instead of a hang. After any error the connection is not used again.
//!
//! One connection serves every thread: a call holds it for its requests
//! and replies. A read is split into pieces that are all in flight at
//! once (pipelining), which is what makes a single connection fast.

pub mod reply;
pub mod uri;

#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use super::proto::{self, OptionHeader, OptionReplyHeader, Request};
use reply::{ReadState, StatusCollector};
pub use uri::{Endpoint, NbdUri};

/// Errors of the NBD client. Each names the export it concerns.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// Not an NBD URI we can use.
    #[error("invalid NBD URI {uri}: {detail}")]
    Uri { uri: String, detail: String },
    /// Connecting failed.
    #[error("cannot connect to {target}")]
    Connect { target: String, source: io::Error },
    /// The connection failed or timed out.
    #[error("NBD connection to {target} lost while {doing}")]
    Io {
        target: String,
        doing: &'static str,
        source: io::Error,
    },
    /// The server broke the protocol.
    #[error("NBD server {target} broke the protocol: {detail}")]
    Protocol { target: String, detail: String },
    /// The server refused an option we need.
    #[error("NBD server {target} refused {option}: {detail}")]
    Refused {
        target: String,
        option: &'static str,
        detail: String,
    },
    /// A command failed on the server.
    #[error("NBD server {target} failed {command} at byte {offset}: {message}")]
    Command {
        target: String,
        command: &'static str,
        offset: u64,
        message: String,
    },
    /// A meta context we need was not granted.
    #[error("NBD server {target} does not offer the meta context {context}")]
    NoContext { target: String, context: String },
    /// A request outside the export.
    #[error("{target}: bytes {offset}..{end} are outside the {size}-byte export")]
    OutOfRange {
        target: String,
        offset: u64,
        end: u64,
        size: u64,
    },
    /// A previous error left the connection unusable.
    #[error("NBD connection to {target} is unusable after an earlier error")]
    Broken { target: String },
}

impl NbdError {
    /// True when the connection itself went away (as opposed to a server
    /// that answered wrongly).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, NbdError::Io { .. } | NbdError::Broken { .. })
    }
}

/// A byte stream to a server: TCP, a Unix socket, or memory (tests, fuzzing).
pub trait Transport: Read + Write + Send {}
impl<T: Read + Write + Send> Transport for T {}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Meta contexts to ask for (`base:allocation`, `qemu:dirty-bitmap:x`).
    pub contexts: Vec<String>,
    /// A server silent this long is an error.
    pub timeout: Duration,
    /// Largest read request (capped by the server's maximum block size).
    pub max_request: u32,
    /// Reads in flight at once.
    pub in_flight: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            contexts: vec![proto::CONTEXT_BASE_ALLOCATION.to_string()],
            timeout: Duration::from_secs(120),
            max_request: 2 << 20,
            in_flight: 8,
        }
    }
}

/// One extent of a block status answer, at an absolute offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

struct Conn {
    stream: Box<dyn Transport>,
    cookie: u64,
    broken: bool,
}

/// An open export.
pub struct NbdClient {
    target: String,
    conn: Mutex<Conn>,
    size: u64,
    transmission_flags: u16,
    structured: bool,
    contexts: Vec<(String, u32)>,
    max_request: u32,
    in_flight: usize,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("target", &self.target)
            .field("size", &self.size)
            .field("contexts", &self.contexts)
            .finish_non_exhaustive()
    }
}

impl NbdClient {
    /// Connects to `uri` and negotiates the export.
    ///
    /// # Errors
    /// Connection failures, refusals, protocol violations.
    pub fn connect(uri: &NbdUri, options: &ConnectOptions) -> Result<NbdClient, NbdError> {
        let target = uri.to_string();
        let connect_err = |source| NbdError::Connect {
            target: target.clone(),
            source,
        };
        let stream: Box<dyn Transport> = match &uri.endpoint {
            Endpoint::Tcp { host, port } => {
                use std::net::ToSocketAddrs;
                // Each address in turn, none waiting longer than the timeout.
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
                let mut found = None;
                for addr in (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?
                {
                    match TcpStream::connect_timeout(&addr, options.timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last).map_err(connect_err)?;
                s.set_nodelay(true).map_err(connect_err)?;
                s.set_read_timeout(Some(options.timeout))
                    .map_err(connect_err)?;
                s.set_write_timeout(Some(options.timeout))
                    .map_err(connect_err)?;
                Box::new(s)
            }
            Endpoint::Unix { socket } => {
                let s = UnixStream::connect(socket).map_err(connect_err)?;
                s.set_read_timeout(Some(options.timeout))
                    .map_err(connect_err)?;
                s.set_write_timeout(Some(options.timeout))
                    .map_err(connect_err)?;
                Box::new(s)
            }
        };
        Self::handshake(stream, target, &uri.export, options)
    }

    /// Negotiates `export` over an open stream.
    ///
    /// # Errors
    /// Refusals, protocol violations, a stream that fails.
    pub fn handshake(
        stream: Box<dyn Transport>,
        target: String,
        export: &str,
        options: &ConnectOptions,
    ) -> Result<NbdClient, NbdError> {
        let mut h = Handshake {
            stream,
            target: target.clone(),
        };
        let (size, transmission_flags, structured, contexts, max_block) =
            h.negotiate(export, &options.contexts)?;
        let max_request = options
            .max_request
            .min(max_block.unwrap_or(proto::MAX_REQUEST_LEN))
            .clamp(4096, proto::MAX_REQUEST_LEN);
        Ok(NbdClient {
            target,
            conn: Mutex::new(Conn {
                stream: h.stream,
                cookie: 1,
                broken: false,
            }),
            size,
            transmission_flags,
            structured,
            contexts,
            max_request,
            in_flight: options.in_flight.max(1),
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export as a URI, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// True when the server said the export is read-only.
    pub fn is_read_only(&self) -> bool {
        self.transmission_flags & proto::TFLAG_READ_ONLY != 0
    }

    /// True when structured replies were negotiated.
    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// The id of a granted meta context.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(NbdError::OutOfRange {
                target: self.target.clone(),
                offset,
                end: offset.saturating_add(len),
                size: self.size,
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Conn>, NbdError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conn.broken {
            return Err(NbdError::Broken {
                target: self.target.clone(),
            });
        }
        Ok(conn)
    }

    /// Fills `buf` with the export's bytes at `offset`; holes the server
    /// reports arrive as zeros.
    ///
    /// # Errors
    /// A range outside the export, a server error, a lost connection, a
    /// reply that does not fit its request.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut conn = self.lock()?;
        let result = self.read_locked(&mut conn, buf, offset);
        if result.is_err() {
            conn.broken = true;
        }
        result
    }

    fn read_locked(&self, conn: &mut Conn, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        let piece = self.max_request as usize;
        let mut pieces = buf.chunks_mut(piece).enumerate();
        let mut pending: Vec<ReadState<'_>> = Vec::with_capacity(self.in_flight);
        loop {
            // Keep `in_flight` requests outstanding.
            let mut sent = Vec::new();
            while pending.len() < self.in_flight {
                let Some((i, slice)) = pieces.next() else {
                    break;
                };
                let at = offset + (i * piece) as u64;
                let cookie = conn.cookie;
                conn.cookie += 1;
                sent.extend_from_slice(
                    &Request {
                        flags: 0,
                        command: proto::CMD_READ,
                        cookie,
                        offset: at,
                        length: slice.len() as u32,
                    }
                    .encode(),
                );
                pending.push(ReadState::new(cookie, at, slice));
            }
            if !sent.is_empty() {
                conn.stream
                    .write_all(&sent)
                    .and_then(|()| conn.stream.flush())
                    .map_err(|source| self.io("sending READ", source))?;
            }
            if pending.is_empty() {
                return Ok(());
            }
            let done = reply::read_one(
                &mut *conn.stream,
                &self.target,
                self.structured,
                &mut pending,
            )?;
            pending.swap_remove(done);
        }
    }

    /// The extents of meta context `context` covering `offset..offset+len`
    /// (the server may answer for less than asked: call again from the end
    /// of the last extent). Extents are clipped to the request.
    ///
    /// # Errors
    /// A context not granted, a server error, a lost connection, extents
    /// that do not fit the request.
    pub fn block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, NbdError> {
        self.check_range(offset, u64::from(len))?;
        let id = self
            .context_id(context)
            .ok_or_else(|| NbdError::NoContext {
                target: self.target.clone(),
                context: context.to_string(),
            })?;
        let mut conn = self.lock()?;
        let result = (|| {
            let cookie = conn.cookie;
            conn.cookie += 1;
            let req = Request {
                flags: 0,
                command: proto::CMD_BLOCK_STATUS,
                cookie,
                offset,
                length: len,
            };
            conn.stream
                .write_all(&req.encode())
                .and_then(|()| conn.stream.flush())
                .map_err(|source| self.io("sending BLOCK_STATUS", source))?;
            let mut collector = StatusCollector::new(cookie, offset, len, id);
            reply::read_status(&mut *conn.stream, &self.target, &mut collector)?;
            collector.finish(&self.target)
        })();
        if result.is_err() {
            conn.broken = true;
        }
        result
    }

    /// All extents of `context` over `offset..end`, asking as often as the
    /// server needs.
    ///
    /// # Errors
    /// As [`Self::block_status`].
    pub fn extents(&self, context: &str, offset: u64, end: u64) -> Result<Vec<Extent>, NbdError> {
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let len = (end - at).min(1 << 30) as u32;
            let got = self.block_status(context, at, len)?;
            for e in got {
                match out.last_mut() {
                    Some(last) if last.flags == e.flags && last.end() == e.offset => {
                        last.length += e.length
                    }
                    _ => out.push(e),
                }
                at = e.end();
            }
        }
        Ok(out)
    }

    fn io(&self, doing: &'static str, source: io::Error) -> NbdError {
        NbdError::Io {
            target: self.target.clone(),
            doing,
            source,
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A polite goodbye; the server closes its side on DISC.
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !conn.broken {
            let req = Request {
                flags: 0,
                command: proto::CMD_DISC,
                cookie: conn.cookie,
                offset: 0,
                length: 0,
            };
            let _ = conn.stream.write_all(&req.encode());
            let _ = conn.stream.flush();
        }
    }
}

struct Handshake {
    stream: Box<dyn Transport>,
    target: String,
}

type Negotiated = (u64, u16, bool, Vec<(String, u32)>, Option<u32>);

impl Handshake {
    fn io(&self, doing: &'static str) -> impl Fn(io::Error) -> NbdError + '_ {
        move |source| NbdError::Io {
            target: self.target.clone(),
            doing,
            source,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> NbdError {
        NbdError::Protocol {
            target: self.target.clone(),
            detail: detail.into(),
        }
    }

    fn negotiate(&mut self, export: &str, contexts: &[String]) -> Result<Negotiated, NbdError> {
        let magic = proto::read_u64(&mut self.stream).map_err(self.io("reading the greeting"))?;
        if magic != proto::INIT_MAGIC {
            return Err(self.protocol("not an NBD server (bad greeting magic)"));
        }
        let style = proto::read_u64(&mut self.stream).map_err(self.io("reading the greeting"))?;
        if style == proto::OLDSTYLE_MAGIC {
            return Err(self.protocol("an oldstyle server (only fixed newstyle is spoken)"));
        }
        if style != proto::OPTS_MAGIC {
            return Err(self.protocol("bad newstyle magic"));
        }
        let flags = proto::read_u16(&mut self.stream).map_err(self.io("reading the greeting"))?;
        if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.protocol("not a fixed newstyle server"));
        }
        let no_zeroes = flags & proto::FLAG_NO_ZEROES != 0;
        let mut client_flags = proto::CLIENT_FLAG_FIXED_NEWSTYLE;
        if no_zeroes {
            client_flags |= proto::CLIENT_FLAG_NO_ZEROES;
        }
        self.stream
            .write_all(&client_flags.to_be_bytes())
            .map_err(self.io("sending client flags"))?;

        // Structured replies: needed for holes in reads and block status.
        self.send_option(proto::OPT_STRUCTURED_REPLY, &[])?;
        let (reply, _) = self.read_reply(proto::OPT_STRUCTURED_REPLY)?;
        let structured = match reply {
            proto::REP_ACK => true,
            t if t & proto::REP_FLAG_ERROR != 0 => false,
            t => return Err(self.protocol(format!("unexpected reply {t:#x} to STRUCTURED_REPLY"))),
        };

        let mut granted = Vec::new();
        if structured && !contexts.is_empty() {
            let mut p = Vec::new();
            proto::write_string32(&mut p, export).map_err(self.io("encoding"))?;
            p.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for c in contexts {
                proto::write_string32(&mut p, c).map_err(self.io("encoding"))?;
            }
            self.send_option(proto::OPT_SET_META_CONTEXT, &p)?;
            loop {
                let (reply, payload) = self.read_reply(proto::OPT_SET_META_CONTEXT)?;
                match reply {
                    proto::REP_META_CONTEXT => {
                        if payload.len() < 4 {
                            return Err(self.protocol("a short META_CONTEXT reply"));
                        }
                        let id = proto::be_u32(&payload[..4]);
                        let name = std::str::from_utf8(&payload[4..])
                            .map_err(|_| self.protocol("a context name that is not UTF-8"))?;
                        if !contexts.iter().any(|c| c == name) {
                            return Err(
                                self.protocol(format!("granted a context not asked for: {name:?}"))
                            );
                        }
                        if granted.iter().any(|(n, i)| n == name || *i == id) {
                            return Err(self.protocol("granted a context twice"));
                        }
                        granted.push((name.to_string(), id));
                    }
                    proto::REP_ACK => break,
                    // Not supported: no contexts, and reads of every byte.
                    t if t & proto::REP_FLAG_ERROR != 0 => {
                        granted.clear();
                        break;
                    }
                    t => {
                        return Err(
                            self.protocol(format!("unexpected reply {t:#x} to SET_META_CONTEXT"))
                        )
                    }
                }
            }
        }

        // GO: the export, with its size and flags (and block sizes).
        let mut p = Vec::new();
        proto::write_string32(&mut p, export).map_err(self.io("encoding"))?;
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(proto::OPT_GO, &p)?;
        let mut export_info = None;
        let mut max_block = None;
        loop {
            let (reply, payload) = self.read_reply(proto::OPT_GO)?;
            match reply {
                proto::REP_INFO => {
                    if payload.len() < 2 {
                        return Err(self.protocol("a short INFO reply"));
                    }
                    match proto::be_u16(&payload[..2]) {
                        proto::INFO_EXPORT => {
                            if payload.len() != 12 {
                                return Err(
                                    self.protocol("an INFO_EXPORT reply of the wrong length")
                                );
                            }
                            export_info = Some((
                                proto::be_u64(&payload[2..10]),
                                proto::be_u16(&payload[10..12]),
                            ));
                        }
                        proto::INFO_BLOCK_SIZE => {
                            if payload.len() != 14 {
                                return Err(
                                    self.protocol("an INFO_BLOCK_SIZE reply of the wrong length")
                                );
                            }
                            let max = proto::be_u32(&payload[10..14]);
                            if max >= 512 {
                                max_block = Some(max);
                            }
                        }
                        _ => {}
                    }
                }
                proto::REP_ACK => break,
                t if t & proto::REP_FLAG_ERROR != 0 => {
                    let message = String::from_utf8_lossy(&payload).into_owned();
                    let detail = match t {
                        proto::REP_ERR_UNKNOWN => format!("no export named {export:?}"),
                        proto::REP_ERR_TLS_REQD => "the server requires TLS".to_string(),
                        proto::REP_ERR_POLICY => "not allowed by the server's policy".to_string(),
                        _ => format!("error {:#x}", t & !proto::REP_FLAG_ERROR),
                    };
                    let detail = if message.is_empty() {
                        detail
                    } else {
                        format!("{detail} ({message})")
                    };
                    return Err(NbdError::Refused {
                        target: self.target.clone(),
                        option: "GO",
                        detail,
                    });
                }
                t => return Err(self.protocol(format!("unexpected reply {t:#x} to GO"))),
            }
        }
        let (size, tflags) =
            export_info.ok_or_else(|| self.protocol("GO succeeded without the export's size"))?;
        if size > i64::MAX as u64 {
            return Err(self.protocol(format!("an export size of {size} bytes")));
        }
        Ok((size, tflags, structured, granted, max_block))
    }

    fn send_option(&mut self, option: u32, payload: &[u8]) -> Result<(), NbdError> {
        let h = OptionHeader {
            option,
            length: payload.len() as u32,
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.stream
            .write_all(&b)
            .and_then(|()| self.stream.flush())
            .map_err(self.io("sending an option"))
    }

    fn read_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let mut b = [0u8; OptionReplyHeader::LEN];
        self.stream
            .read_exact(&mut b)
            .map_err(self.io("reading an option reply"))?;
        let h =
            OptionReplyHeader::decode(&b).ok_or_else(|| self.protocol("bad option reply magic"))?;
        if h.option != option {
            return Err(self.protocol(format!(
                "a reply to option {} when {} was asked",
                h.option,
                proto::option_name(option)
            )));
        }
        let payload = proto::read_bounded(&mut self.stream, h.length, proto::MAX_OPTION_LEN)
            .map_err(self.io("reading an option reply"))?;
        Ok((h.reply_type, payload))
    }
}
