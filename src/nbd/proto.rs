//! The NBD wire protocol: constants and the messages both sides exchange.
//!
//! Shared by the NBD client (sources served by `qemu-nbd`, `nbdkit` or a
//! hypervisor) and the NBD server (`diskdelta nbd`). Only the fixed newstyle
//! handshake is spoken; oldstyle servers are refused. Every integer on the
//! wire is big-endian, as the protocol says
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>).
//!
//! The message structs here only encode and decode; the state machines
//! (which option may follow which, what a reply means) live in the client
//! and server modules.

use std::io::{self, Read, Write};

/// `NBDMAGIC`: the first 8 bytes a server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation; also the magic of every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454F_5054;
/// Magic of oldstyle servers (refused).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (32 bits).
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits), sent with the export size.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Options (client to server during the handshake).
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types. Errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// `NBD_REP_INFO` item types (also requested in `NBD_OPT_INFO`/`GO`).
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// Error values carried in replies (errno-like, fixed by the protocol).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The `base:allocation` meta context: bit 0 hole, bit 1 reads as zero.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
/// Prefix of qemu's dirty bitmap contexts; bit 0 set means dirty.
pub const CONTEXT_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
pub const STATE_DIRTY: u32 = 1 << 0;

/// The longest string (export name, context name) either side accepts.
pub const MAX_STRING: usize = 4096;
/// The longest option payload either side accepts.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The largest read or write a request may carry (32 MiB, as qemu).
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;

/// Names a command for log lines and errors.
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_CACHE => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown command",
    }
}

/// Names an option for log lines and errors.
pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "EXPORT_NAME",
        OPT_ABORT => "ABORT",
        OPT_LIST => "LIST",
        OPT_STARTTLS => "STARTTLS",
        OPT_INFO => "INFO",
        OPT_GO => "GO",
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        _ => "unknown option",
    }
}

/// A client option header: `IHAVEOPT`, option, length; the payload follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&OPTS_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// `None` when the magic is wrong.
    pub fn decode(b: &[u8; Self::LEN]) -> Option<OptionHeader> {
        if be_u64(&b[0..8]) != OPTS_MAGIC {
            return None;
        }
        Some(OptionHeader {
            option: be_u32(&b[8..12]),
            length: be_u32(&b[12..16]),
        })
    }
}

/// An option reply header: magic, option, reply type, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub const LEN: usize = 20;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        b[16..20].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Option<OptionReplyHeader> {
        if be_u64(&b[0..8]) != REPLY_MAGIC {
            return None;
        }
        Some(OptionReplyHeader {
            option: be_u32(&b[8..12]),
            reply_type: be_u32(&b[12..16]),
            length: be_u32(&b[16..20]),
        })
    }
}

/// A transmission request (28 bytes); a WRITE's payload follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub const LEN: usize = 28;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Option<Request> {
        if be_u32(&b[0..4]) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be_u16(&b[4..6]),
            command: be_u16(&b[6..8]),
            cookie: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            length: be_u32(&b[24..28]),
        })
    }
}

/// A simple reply (16 bytes); a successful READ's data follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

/// The header of one structured reply chunk (20 bytes); `length` bytes of
/// payload follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructuredReplyHeader {
    pub flags: u16,
    pub reply_type: u16,
    pub cookie: u64,
    pub length: u32,
}

impl StructuredReplyHeader {
    pub const LEN: usize = 20;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.reply_type.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..20].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes the 16 bytes that follow the 4-byte structured magic, which
    /// the reader has already consumed to tell simple from structured.
    pub fn decode_after_magic(b: &[u8; 16]) -> StructuredReplyHeader {
        StructuredReplyHeader {
            flags: be_u16(&b[0..2]),
            reply_type: be_u16(&b[2..4]),
            cookie: be_u64(&b[4..12]),
            length: be_u32(&b[12..16]),
        }
    }
}

/// One extent of a block status reply: a length and its state bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusExtent {
    pub length: u32,
    pub flags: u32,
}

/// Encodes a `NBD_REPLY_TYPE_BLOCK_STATUS` payload: the context id, then
/// (length, flags) pairs.
pub fn encode_block_status(context_id: u32, extents: &[BlockStatusExtent]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + 8 * extents.len());
    b.extend_from_slice(&context_id.to_be_bytes());
    for e in extents {
        b.extend_from_slice(&e.length.to_be_bytes());
        b.extend_from_slice(&e.flags.to_be_bytes());
    }
    b
}

/// Decodes a block status payload; `None` when its length is not 4 + 8k.
pub fn decode_block_status(b: &[u8]) -> Option<(u32, Vec<BlockStatusExtent>)> {
    if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
        return None;
    }
    let id = be_u32(&b[0..4]);
    let extents = b[4..]
        .chunks_exact(8)
        .map(|c| BlockStatusExtent {
            length: be_u32(&c[0..4]),
            flags: be_u32(&c[4..8]),
        })
        .collect();
    Some((id, extents))
}

/// Encodes a structured error payload: error, message length, message.
pub fn encode_structured_error(error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(MAX_STRING)];
    let mut b = Vec::with_capacity(6 + msg.len());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

pub fn be_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}

pub fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

pub fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads `len` bytes, refusing more than `max` so that a peer cannot make
/// us allocate what it likes.
pub fn read_bounded(r: &mut impl Read, len: u32, max: u32) -> io::Result<Vec<u8>> {
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NBD peer sent a {len}-byte payload, more than the {max} allowed"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Writes a length-prefixed (u32) string, as in option payloads.
pub fn write_string32(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u32).to_be_bytes())?;
    w.write_all(s.as_bytes())
}

/// Parses a length-prefixed (u32) string from the front of `b`, returning
/// it and the rest; `None` when it overruns `b` or is not UTF-8.
pub fn take_string32(b: &[u8]) -> Option<(String, &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let n = be_u32(&b[0..4]) as usize;
    if n > MAX_STRING || b.len() - 4 < n {
        return None;
    }
    let s = std::str::from_utf8(&b[4..4 + n]).ok()?.to_string();
    Some((s, &b[4 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_round_trips(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) {
            let r = Request { flags, command, cookie, offset, length };
            prop_assert_eq!(Request::decode(&r.encode()), Some(r));
        }

        #[test]
        fn option_headers_round_trip(option: u32, length: u32, reply_type: u32) {
            let o = OptionHeader { option, length };
            prop_assert_eq!(OptionHeader::decode(&o.encode()), Some(o));
            let r = OptionReplyHeader { option, reply_type, length };
            prop_assert_eq!(OptionReplyHeader::decode(&r.encode()), Some(r));
        }

        #[test]
        fn block_status_round_trips(id: u32, ext in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..50)) {
            let extents: Vec<_> = ext.iter().map(|&(length, flags)| BlockStatusExtent { length, flags }).collect();
            let b = encode_block_status(id, &extents);
            prop_assert_eq!(decode_block_status(&b), Some((id, extents)));
        }

        #[test]
        fn string32_round_trips(s in "[a-z0-9:/.-]{0,100}", tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = Vec::new();
            write_string32(&mut b, &s).expect("write to a Vec");
            b.extend_from_slice(&tail);
            let (got, rest) = take_string32(&b).expect("a whole string");
            prop_assert_eq!(got, s);
            prop_assert_eq!(rest, &tail[..]);
        }
    }

    #[test]
    fn wrong_magics_are_refused() {
        let mut r = Request {
            flags: 0,
            command: CMD_READ,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode();
        r[0] ^= 1;
        assert_eq!(Request::decode(&r), None);
        let mut o = OptionHeader {
            option: OPT_GO,
            length: 0,
        }
        .encode();
        o[7] ^= 1;
        assert_eq!(OptionHeader::decode(&o), None);
        assert_eq!(decode_block_status(&[0, 0, 0]), None);
        assert_eq!(decode_block_status(&[0; 9]), None);
        assert_eq!(take_string32(&[0, 0, 0, 5, b'a']), None);
    }

    #[test]
    fn wire_layout_is_pinned() {
        // The request of the protocol document's example layout.
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102030405060708,
            offset: 4096,
            length: 512,
        };
        assert_eq!(
            hex::encode(r.encode()),
            "25609513000100010102030405060708000000000000100000000200"
        );
        assert_eq!(
            hex::encode(
                SimpleReply {
                    error: EIO,
                    cookie: 7
                }
                .encode()
            ),
            "67446698000000050000000000000007"
        );
    }
}
