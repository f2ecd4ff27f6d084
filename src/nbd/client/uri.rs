//! The standard NBD URI (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md>):
//! `nbd://host[:port][/export]` and `nbd+unix:///[export]?socket=PATH`.
//! TLS (`nbds`, `nbds+unix`) is not spoken and is refused by name.

use std::path::PathBuf;

use super::NbdError;

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: a host name or address (IPv6 without brackets) and a port.
    Tcp { host: String, port: u16 },
    /// A Unix socket.
    Unix { socket: PathBuf },
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The export name (may be empty: the server's default export).
    pub export: String,
}

/// True when `text` is meant as an NBD URI (also the refused TLS forms,
/// so that they get a clear error instead of "no such file").
pub fn is_nbd_uri(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn invalid(uri: &str, detail: impl Into<String>) -> NbdError {
    NbdError::Uri {
        uri: uri.to_string(),
        detail: detail.into(),
    }
}

/// Decodes `%XX` escapes.
fn percent_decode(uri: &str, s: &str) -> Result<String, NbdError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(uri, "a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(uri, "not UTF-8 after %-decoding"))
}

impl NbdUri {
    /// Parses an NBD URI.
    ///
    /// # Errors
    /// [`NbdError::Uri`] for anything but the two forms above.
    pub fn parse(text: &str) -> Result<NbdUri, NbdError> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            invalid(
                text,
                "expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH",
            )
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (rest, fragment_free) = match rest.split_once('#') {
            Some((r, _)) => (r, false),
            None => (rest, true),
        };
        if !fragment_free {
            return Err(invalid(text, "a fragment (#...) has no meaning here"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(text, path)?;
        let mut socket = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "socket" => socket = Some(PathBuf::from(percent_decode(text, v)?)),
                "tls" | "tls-certificates" | "tls-psk-file" | "tls-verify-peer" => {
                    return Err(invalid(text, "TLS is not supported"))
                }
                _ => return Err(invalid(text, format!("unknown query parameter {k:?}"))),
            }
        }
        let endpoint = match scheme.as_str() {
            "nbd" => {
                if socket.is_some() {
                    return Err(invalid(text, "socket= goes with nbd+unix://"));
                }
                let (host, port) = split_host_port(text, authority)?;
                Endpoint::Tcp { host, port }
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(invalid(
                        text,
                        "nbd+unix:// takes no host (write nbd+unix:///EXPORT?socket=PATH)",
                    ));
                }
                let socket =
                    socket.ok_or_else(|| invalid(text, "nbd+unix:// needs ?socket=PATH"))?;
                Endpoint::Unix { socket }
            }
            "nbds" | "nbds+unix" => return Err(invalid(text, "TLS (nbds) is not supported")),
            other => return Err(invalid(text, format!("unknown scheme {other}://"))),
        };
        Ok(NbdUri { endpoint, export })
    }
}

fn split_host_port(uri: &str, authority: &str) -> Result<(String, u16), NbdError> {
    if authority.contains('@') {
        return Err(invalid(uri, "user names are not supported"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(uri, "an unclosed [ in the host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid(uri, "junk after ]"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid(uri, "no host"));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(uri, format!("bad port {p:?}")))?,
    };
    Ok((host.to_string(), port))
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            Endpoint::Unix { socket } => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, socket.display())
            }
        }
    }
}
