//! The server driven by scripted client bytes (no sockets).

use std::sync::Arc;

use super::export::MemoryExport;
use super::*;

/// Client bytes: flags, STRUCTURED_REPLY, SET_META_CONTEXT, GO `name`.
pub fn client_hello(name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        &(proto::CLIENT_FLAG_FIXED_NEWSTYLE | proto::CLIENT_FLAG_NO_ZEROES).to_be_bytes(),
    );
    let opt = |b: &mut Vec<u8>, option: u32, payload: &[u8]| {
        b.extend_from_slice(
            &OptionHeader {
                option,
                length: payload.len() as u32,
            }
            .encode(),
        );
        b.extend_from_slice(payload);
    };
    opt(&mut b, proto::OPT_STRUCTURED_REPLY, &[]);
    let mut meta = Vec::new();
    proto::write_string32(&mut meta, name).expect("vec");
    meta.extend_from_slice(&1u32.to_be_bytes());
    proto::write_string32(&mut meta, proto::CONTEXT_BASE_ALLOCATION).expect("vec");
    opt(&mut b, proto::OPT_SET_META_CONTEXT, &meta);
    let mut go = Vec::new();
    proto::write_string32(&mut go, name).expect("vec");
    go.extend_from_slice(&0u16.to_be_bytes());
    opt(&mut b, proto::OPT_GO, &go);
    b
}

pub fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    Request {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    }
    .encode()
    .to_vec()
}

fn exports(writable: bool) -> Exports {
    let mut data = vec![0u8; 8192];
    data[..4096].fill(7);
    Exports::new(vec![Arc::new(MemoryExport::new("disk", data, writable))]).expect("one export")
}

/// Finds the structured reply chunk of `cookie` in the server's output.
fn reply_of(out: &[u8], cookie: u64) -> Option<(u16, Vec<u8>)> {
    let magic = proto::STRUCTURED_REPLY_MAGIC.to_be_bytes();
    let mut i = 0;
    while i + 20 <= out.len() {
        if out[i..i + 4] == magic {
            let mut h = [0u8; 16];
            h.copy_from_slice(&out[i + 4..i + 20]);
            let h = StructuredReplyHeader::decode_after_magic(&h);
            if h.cookie == cookie {
                let end = i + 20 + h.length as usize;
                return Some((h.reply_type, out.get(i + 20..end)?.to_vec()));
            }
        }
        i += 1;
    }
    None
}

#[test]
fn reads_block_status_and_errors() {
    let mut input = client_hello("disk");
    input.extend(request(proto::CMD_READ, 1, 4000, 200));
    input.extend(request(proto::CMD_BLOCK_STATUS, 2, 0, 8192));
    input.extend(request(proto::CMD_READ, 3, 8000, 200));
    input.extend(request(proto::CMD_WRITE, 4, 0, 2));
    input.extend([1, 2]);
    input.extend(request(proto::CMD_DISC, 5, 0, 0));
    let mut out = Vec::new();
    serve_bytes(&input, &mut out, &exports(false)).expect("served");
    let (t, p) = reply_of(&out, 1).expect("read reply");
    assert_eq!(t, proto::REPLY_TYPE_OFFSET_DATA);
    assert_eq!(proto::be_u64(&p), 4000);
    assert_eq!(&p[8..104], &[7u8; 96][..]);
    assert_eq!(&p[104..], &[0u8; 104][..]);
    let (t, p) = reply_of(&out, 2).expect("block status reply");
    assert_eq!(t, proto::REPLY_TYPE_BLOCK_STATUS);
    let (id, ext) = proto::decode_block_status(&p).expect("payload");
    assert_eq!(id, BASE_ALLOCATION_ID);
    assert_eq!(ext.len(), 1);
    let (t, p) = reply_of(&out, 3).expect("past-end reply");
    assert_eq!(t, proto::REPLY_TYPE_ERROR);
    assert_eq!(proto::be_u32(&p), proto::EINVAL);
    let (t, p) = reply_of(&out, 4).expect("write reply");
    assert_eq!(t, proto::REPLY_TYPE_ERROR);
    assert_eq!(proto::be_u32(&p), proto::EPERM);
}

#[test]
fn unknown_export_is_refused_in_the_handshake() {
    let input = client_hello("nope");
    let mut out = Vec::new();
    serve_bytes(&input, &mut out, &exports(false)).expect("ends cleanly");
    let err = proto::REP_ERR_UNKNOWN.to_be_bytes();
    assert!(out.windows(4).any(|w| w == err), "GO refused");
}

#[test]
fn writes_reach_a_writable_export() {
    let mut input = client_hello("disk");
    input.extend(request(proto::CMD_WRITE, 1, 10, 3));
    input.extend([9, 9, 9]);
    input.extend(request(proto::CMD_READ, 2, 8, 6));
    let mut out = Vec::new();
    serve_bytes(&input, &mut out, &exports(true)).expect("served");
    let (t, p) = reply_of(&out, 2).expect("read reply");
    assert_eq!(t, proto::REPLY_TYPE_OFFSET_DATA);
    assert_eq!(&p[8..], &[7, 7, 9, 9, 9, 7]);
}

#[test]
fn garbage_ends_the_connection() {
    let mut input = client_hello("disk");
    input.extend([0xff; 40]);
    let mut out = Vec::new();
    assert!(serve_bytes(&input, &mut out, &exports(false)).is_err());
    assert!(serve_bytes(&[0, 0, 0, 0], &mut Vec::new(), &exports(false)).is_err());
}

/// The fuzz seeds in tests/golden/nbd/ are sessions the server completes.
#[test]
fn golden_sessions_are_served() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nbd/");
    let read = std::fs::read(format!("{dir}session-read.bin")).expect("seed");
    let big = Arc::new(MemoryExport::new("disk", vec![3u8; 65536], false));
    let mut out = Vec::new();
    serve_bytes(&read, &mut out, &Exports::new(vec![big]).expect("export")).expect("served");
    assert_eq!(
        reply_of(&out, 1).expect("read").0,
        proto::REPLY_TYPE_OFFSET_DATA
    );
    assert_eq!(
        reply_of(&out, 2).expect("status").0,
        proto::REPLY_TYPE_BLOCK_STATUS
    );
    let (t, p) = reply_of(&out, 5).expect("past the end");
    assert_eq!(
        (t, proto::be_u32(&p)),
        (proto::REPLY_TYPE_ERROR, proto::EINVAL)
    );
    let write = std::fs::read(format!("{dir}session-write.bin")).expect("seed");
    let export = Arc::new(MemoryExport::new("disk", vec![0u8; 16384], true));
    let exports = Exports::new(vec![export.clone()]).expect("export");
    let mut out = Vec::new();
    serve_bytes(&write, &mut out, &exports).expect("served");
    assert_eq!(&export.contents()[100..116], &[0x41; 16]);
    let name = std::fs::read(format!("{dir}session-export-name.bin")).expect("seed");
    serve_bytes(&name, &mut Vec::new(), &exports).expect("served");
}
