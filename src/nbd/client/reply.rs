//! Reading transmission replies (simple and structured) and checking them
//! against the requests they answer.
//!
//! A READ's data chunks must lie inside the request, must not overlap, and
//! must cover it exactly by the time the server says DONE; a BLOCK_STATUS
//! answer must start at the requested offset with non-empty extents.
//! Anything else is a protocol error, so no byte reaches the caller that
//! the server did not put at that offset.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::{Extent, NbdError};
use crate::nbd::proto::{self, StructuredReplyHeader};

/// The largest block status payload accepted (a million extents).
const MAX_STATUS_PAYLOAD: u32 = 4 + 8 * (1 << 20);

/// One READ in flight: where its bytes go and which of them have arrived.
#[derive(Debug)]
pub struct ReadState<'a> {
    cookie: u64,
    offset: u64,
    buf: &'a mut [u8],
    /// Arrived ranges, relative to `offset`: start -> end.
    covered: BTreeMap<usize, usize>,
    filled: usize,
}

impl<'a> ReadState<'a> {
    pub fn new(cookie: u64, offset: u64, buf: &'a mut [u8]) -> Self {
        ReadState {
            cookie,
            offset,
            buf,
            covered: BTreeMap::new(),
            filled: 0,
        }
    }

    /// Claims `start..end` (relative), refusing overlaps.
    fn claim(&mut self, start: usize, end: usize) -> bool {
        if start >= end || end > self.buf.len() {
            return false;
        }
        if let Some((_, &prev_end)) = self.covered.range(..=start).next_back() {
            if prev_end > start {
                return false;
            }
        }
        if let Some((&next_start, _)) = self.covered.range(start..).next() {
            if next_start < end {
                return false;
            }
        }
        self.covered.insert(start, end);
        self.filled += end - start;
        true
    }
}

fn protocol(target: &str, detail: impl Into<String>) -> NbdError {
    NbdError::Protocol {
        target: target.to_string(),
        detail: detail.into(),
    }
}

fn lost(target: &str, source: io::Error) -> NbdError {
    NbdError::Io {
        target: target.to_string(),
        doing: "reading a reply",
        source,
    }
}

/// The error a structured ERROR chunk carries.
fn structured_error(
    mut stream: &mut dyn Read,
    target: &str,
    h: &StructuredReplyHeader,
    command: &'static str,
    offset: u64,
) -> Result<NbdError, NbdError> {
    let payload = proto::read_bounded(&mut stream, h.length, proto::MAX_STRING as u32 + 14)
        .map_err(|e| lost(target, e))?;
    if payload.len() < 6 {
        return Err(protocol(target, "a short error chunk"));
    }
    let error = proto::be_u32(&payload[0..4]);
    let n = proto::be_u16(&payload[4..6]) as usize;
    let message = payload
        .get(6..6 + n)
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .ok_or_else(|| protocol(target, "an error message longer than its chunk"))?;
    if error == 0 {
        return Err(protocol(target, "an error chunk with error 0"));
    }
    Ok(NbdError::Command {
        target: target.to_string(),
        command,
        offset,
        message: describe(error, &message),
    })
}

fn describe(error: u32, message: &str) -> String {
    let name = match error {
        proto::EPERM => "EPERM",
        proto::EIO => "EIO",
        proto::ENOMEM => "ENOMEM",
        proto::EINVAL => "EINVAL",
        proto::ENOSPC => "ENOSPC",
        proto::EOVERFLOW => "EOVERFLOW",
        proto::ENOTSUP => "ENOTSUP",
        proto::ESHUTDOWN => "ESHUTDOWN",
        _ => "error",
    };
    if message.is_empty() {
        format!("{name} ({error})")
    } else {
        format!("{name} ({error}): {message}")
    }
}

/// Reads reply chunks until one of `pending` completes; returns its index.
///
/// # Errors
/// A lost connection, a server error, any protocol violation.
pub fn read_one(
    mut stream: &mut dyn Read,
    target: &str,
    structured: bool,
    pending: &mut [ReadState<'_>],
) -> Result<usize, NbdError> {
    loop {
        let magic = proto::read_u32(&mut stream).map_err(|e| lost(target, e))?;
        match magic {
            proto::SIMPLE_REPLY_MAGIC => {
                let error = proto::read_u32(&mut stream).map_err(|e| lost(target, e))?;
                let cookie = proto::read_u64(&mut stream).map_err(|e| lost(target, e))?;
                let i = find(pending, cookie, target)?;
                let st = &mut pending[i];
                if error != 0 {
                    return Err(NbdError::Command {
                        target: target.to_string(),
                        command: "READ",
                        offset: st.offset,
                        message: describe(error, ""),
                    });
                }
                if structured {
                    return Err(protocol(
                        target,
                        "a simple reply with data to a READ after structured replies were agreed",
                    ));
                }
                stream.read_exact(st.buf).map_err(|e| lost(target, e))?;
                return Ok(i);
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                if !structured {
                    return Err(protocol(target, "a structured reply that was not agreed"));
                }
                let mut b = [0u8; 16];
                stream.read_exact(&mut b).map_err(|e| lost(target, e))?;
                let h = StructuredReplyHeader::decode_after_magic(&b);
                let i = find(pending, h.cookie, target)?;
                let st = &mut pending[i];
                match h.reply_type {
                    proto::REPLY_TYPE_OFFSET_DATA => {
                        if h.length <= 8 {
                            return Err(protocol(target, "a data chunk without data"));
                        }
                        let at = proto::read_u64(&mut stream).map_err(|e| lost(target, e))?;
                        let len = (h.length - 8) as usize;
                        let start = at
                            .checked_sub(st.offset)
                            .filter(|&s| s <= st.buf.len() as u64)
                            .ok_or_else(|| {
                                protocol(target, format!("data at byte {at} outside the READ"))
                            })? as usize;
                        let end = start
                            .checked_add(len)
                            .filter(|_| st.claim(start, start + len))
                            .ok_or_else(|| {
                                protocol(target, format!("{len} bytes of data at byte {at} outside the READ or overlapping"))
                            })?;
                        stream
                            .read_exact(&mut st.buf[start..end])
                            .map_err(|e| lost(target, e))?;
                    }
                    proto::REPLY_TYPE_OFFSET_HOLE => {
                        if h.length != 12 {
                            return Err(protocol(target, "a hole chunk of the wrong length"));
                        }
                        let at = proto::read_u64(&mut stream).map_err(|e| lost(target, e))?;
                        let len =
                            proto::read_u32(&mut stream).map_err(|e| lost(target, e))? as usize;
                        let start = at
                            .checked_sub(st.offset)
                            .filter(|&s| s <= st.buf.len() as u64)
                            .ok_or_else(|| {
                                protocol(target, format!("a hole at byte {at} outside the READ"))
                            })? as usize;
                        if len == 0 || !st.claim(start, start.saturating_add(len)) {
                            return Err(protocol(target, format!("a {len}-byte hole at byte {at} outside the READ or overlapping")));
                        }
                        st.buf[start..start + len].fill(0);
                    }
                    proto::REPLY_TYPE_NONE => check_none(target, &h)?,
                    proto::REPLY_TYPE_ERROR | proto::REPLY_TYPE_ERROR_OFFSET => {
                        return Err(structured_error(stream, target, &h, "READ", st.offset)?);
                    }
                    t => {
                        return Err(protocol(
                            target,
                            format!("a chunk of type {t} in reply to READ"),
                        ));
                    }
                }
                if h.flags & proto::REPLY_FLAG_DONE != 0 {
                    if st.filled != st.buf.len() {
                        return Err(protocol(
                            target,
                            format!(
                                "READ at byte {} ended with {} of {} bytes sent",
                                st.offset,
                                st.filled,
                                st.buf.len()
                            ),
                        ));
                    }
                    return Ok(i);
                }
            }
            m => return Err(protocol(target, format!("bad reply magic {m:#010x}"))),
        }
    }
}

fn find(pending: &[ReadState<'_>], cookie: u64, target: &str) -> Result<usize, NbdError> {
    pending
        .iter()
        .position(|p| p.cookie == cookie)
        .ok_or_else(|| protocol(target, format!("a reply to unknown request {cookie}")))
}

/// One BLOCK_STATUS in flight.
#[derive(Debug)]
pub struct StatusCollector {
    cookie: u64,
    offset: u64,
    len: u32,
    context: u32,
    extents: Option<Vec<Extent>>,
}

impl StatusCollector {
    pub fn new(cookie: u64, offset: u64, len: u32, context: u32) -> Self {
        StatusCollector {
            cookie,
            offset,
            len,
            context,
            extents: None,
        }
    }

    /// The extents, clipped to the request.
    ///
    /// # Errors
    /// No extents for the context.
    pub fn finish(self, target: &str) -> Result<Vec<Extent>, NbdError> {
        match self.extents {
            Some(e) if !e.is_empty() => Ok(e),
            _ => Err(protocol(
                target,
                "BLOCK_STATUS ended without extents for the context",
            )),
        }
    }

    fn take(&mut self, target: &str, payload: &[u8]) -> Result<(), NbdError> {
        let (id, raw) = proto::decode_block_status(payload)
            .ok_or_else(|| protocol(target, "a block status chunk of a bad length"))?;
        if id != self.context {
            // Another context's answer (both are sent when both were agreed).
            return Ok(());
        }
        if self.extents.is_some() {
            return Err(protocol(target, "two block status chunks for one context"));
        }
        if raw.is_empty() {
            return Err(protocol(target, "a block status chunk without extents"));
        }
        let end = self.offset + u64::from(self.len);
        let mut at = self.offset;
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            if at >= end {
                // Servers may describe past the request; not used.
                break;
            }
            if e.length == 0 {
                return Err(protocol(target, "a zero-length extent"));
            }
            let length = u64::from(e.length).min(end - at);
            out.push(Extent {
                offset: at,
                length,
                flags: e.flags,
            });
            at += length;
        }
        self.extents = Some(out);
        Ok(())
    }
}

/// Reads the reply chunks of one BLOCK_STATUS.
///
/// # Errors
/// A lost connection, a server error, any protocol violation.
pub fn read_status(
    mut stream: &mut dyn Read,
    target: &str,
    st: &mut StatusCollector,
) -> Result<(), NbdError> {
    loop {
        let magic = proto::read_u32(&mut stream).map_err(|e| lost(target, e))?;
        match magic {
            proto::SIMPLE_REPLY_MAGIC => {
                let error = proto::read_u32(&mut stream).map_err(|e| lost(target, e))?;
                let cookie = proto::read_u64(&mut stream).map_err(|e| lost(target, e))?;
                if cookie != st.cookie {
                    return Err(protocol(
                        target,
                        format!("a reply to unknown request {cookie}"),
                    ));
                }
                if error == 0 {
                    return Err(protocol(target, "a simple success reply to BLOCK_STATUS"));
                }
                return Err(NbdError::Command {
                    target: target.to_string(),
                    command: "BLOCK_STATUS",
                    offset: st.offset,
                    message: describe(error, ""),
                });
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let mut b = [0u8; 16];
                stream.read_exact(&mut b).map_err(|e| lost(target, e))?;
                let h = StructuredReplyHeader::decode_after_magic(&b);
                if h.cookie != st.cookie {
                    return Err(protocol(
                        target,
                        format!("a reply to unknown request {}", h.cookie),
                    ));
                }
                match h.reply_type {
                    proto::REPLY_TYPE_BLOCK_STATUS => {
                        let payload =
                            proto::read_bounded(&mut stream, h.length, MAX_STATUS_PAYLOAD)
                                .map_err(|e| lost(target, e))?;
                        st.take(target, &payload)?;
                    }
                    proto::REPLY_TYPE_NONE => check_none(target, &h)?,
                    proto::REPLY_TYPE_ERROR | proto::REPLY_TYPE_ERROR_OFFSET => {
                        return Err(structured_error(
                            stream,
                            target,
                            &h,
                            "BLOCK_STATUS",
                            st.offset,
                        )?);
                    }
                    t => {
                        return Err(protocol(
                            target,
                            format!("a chunk of type {t} in reply to BLOCK_STATUS"),
                        ));
                    }
                }
                if h.flags & proto::REPLY_FLAG_DONE != 0 {
                    return Ok(());
                }
            }
            m => return Err(protocol(target, format!("bad reply magic {m:#010x}"))),
        }
    }
}

/// A NONE chunk carries nothing and ends its reply.
fn check_none(target: &str, h: &StructuredReplyHeader) -> Result<(), NbdError> {
    if h.length != 0 || h.flags & proto::REPLY_FLAG_DONE == 0 {
        return Err(protocol(target, "a NONE chunk with a payload or not final"));
    }
    Ok(())
}
