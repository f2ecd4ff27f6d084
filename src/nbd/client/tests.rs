//! The client against scripted server bytes: what a correct server says is
//! understood, and every kind of wrong answer is an error, not wrong data.

use std::io::{Cursor, Read, Write};

use super::*;
use crate::nbd::proto::{self, BlockStatusExtent, OptionReplyHeader, StructuredReplyHeader};

/// Reads from a script, swallows writes.
pub(crate) struct Scripted(pub Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn opt_reply(b: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    b.extend_from_slice(
        &OptionReplyHeader {
            option,
            reply_type,
            length: payload.len() as u32,
        }
        .encode(),
    );
    b.extend_from_slice(payload);
}

fn chunk(b: &mut Vec<u8>, flags: u16, reply_type: u16, cookie: u64, payload: &[u8]) {
    b.extend_from_slice(
        &StructuredReplyHeader {
            flags,
            reply_type,
            cookie,
            length: payload.len() as u32,
        }
        .encode(),
    );
    b.extend_from_slice(payload);
}

/// A handshake granting structured replies and `base:allocation` (id 7)
/// for a 1 MiB export.
fn greeting() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&proto::INIT_MAGIC.to_be_bytes());
    b.extend_from_slice(&proto::OPTS_MAGIC.to_be_bytes());
    b.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    opt_reply(&mut b, proto::OPT_STRUCTURED_REPLY, proto::REP_ACK, &[]);
    let mut ctx = 7u32.to_be_bytes().to_vec();
    ctx.extend_from_slice(proto::CONTEXT_BASE_ALLOCATION.as_bytes());
    opt_reply(
        &mut b,
        proto::OPT_SET_META_CONTEXT,
        proto::REP_META_CONTEXT,
        &ctx,
    );
    opt_reply(&mut b, proto::OPT_SET_META_CONTEXT, proto::REP_ACK, &[]);
    let mut info = proto::INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&(1u64 << 20).to_be_bytes());
    info.extend_from_slice(&(proto::TFLAG_HAS_FLAGS | proto::TFLAG_READ_ONLY).to_be_bytes());
    opt_reply(&mut b, proto::OPT_GO, proto::REP_INFO, &info);
    opt_reply(&mut b, proto::OPT_GO, proto::REP_ACK, &[]);
    b
}

fn client(script: Vec<u8>) -> Result<NbdClient, NbdError> {
    let options = ConnectOptions {
        max_request: 4096,
        ..ConnectOptions::default()
    };
    NbdClient::handshake(
        Box::new(Scripted(Cursor::new(script))),
        "test".into(),
        "",
        &options,
    )
}

fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(bytes);
    p
}

/// A good session: the handshake, a READ answered in two chunks and
/// holes, a BLOCK_STATUS. Also the fuzz target's seed.
fn good_session() -> Vec<u8> {
    let mut b = greeting();
    // READ of 8 KiB at 4096: two 4 KiB requests (cookies 1, 2), answered
    // out of order, the second as data + hole.
    chunk(
        &mut b,
        0,
        proto::REPLY_TYPE_OFFSET_DATA,
        2,
        &data(8192, &[7u8; 100]),
    );
    let mut hole = (8192u64 + 100).to_be_bytes().to_vec();
    hole.extend_from_slice(&(4096u32 - 100).to_be_bytes());
    chunk(
        &mut b,
        proto::REPLY_FLAG_DONE,
        proto::REPLY_TYPE_OFFSET_HOLE,
        2,
        &hole,
    );
    chunk(
        &mut b,
        proto::REPLY_FLAG_DONE,
        proto::REPLY_TYPE_OFFSET_DATA,
        1,
        &data(4096, &[5u8; 4096]),
    );
    // BLOCK_STATUS (cookie 3): two extents.
    let ext = proto::encode_block_status(
        7,
        &[
            BlockStatusExtent {
                length: 4096,
                flags: 0,
            },
            BlockStatusExtent {
                length: 1 << 20,
                flags: 3,
            },
        ],
    );
    chunk(
        &mut b,
        proto::REPLY_FLAG_DONE,
        proto::REPLY_TYPE_BLOCK_STATUS,
        3,
        &ext,
    );
    b
}

/// `tests/golden/nbd/session.bin` is [`good_session`]; rewritten when
/// `DISKDELTA_WRITE_GOLDEN=1`.
#[test]
fn the_fuzz_seed_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nbd/session.bin");
    if std::env::var_os("DISKDELTA_WRITE_GOLDEN").is_some() {
        let dir = std::path::Path::new(path).parent().expect("a directory");
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(path, good_session()).expect("write golden");
    }
    assert_eq!(std::fs::read(path).expect("read golden"), good_session());
}

#[test]
fn a_good_server_is_understood() {
    let c = client(good_session()).expect("handshake");
    assert_eq!(c.size(), 1 << 20);
    assert!(c.is_read_only() && c.structured_replies());
    let mut buf = vec![1u8; 8192];
    c.read_at(&mut buf, 4096).expect("read");
    assert!(buf[..4096].iter().all(|&x| x == 5));
    assert!(buf[4096..4196].iter().all(|&x| x == 7));
    assert!(buf[4196..].iter().all(|&x| x == 0));
    let e = c
        .block_status(proto::CONTEXT_BASE_ALLOCATION, 0, 8192)
        .expect("status");
    assert_eq!(
        e,
        vec![
            Extent {
                offset: 0,
                length: 4096,
                flags: 0
            },
            Extent {
                offset: 4096,
                length: 4096,
                flags: 3
            }
        ]
    );
}

fn read_fails(reply: impl FnOnce(&mut Vec<u8>)) -> NbdError {
    let mut b = greeting();
    reply(&mut b);
    let c = client(b).expect("handshake");
    let mut buf = vec![0u8; 4096];
    let err = c.read_at(&mut buf, 0).expect_err("a bad reply must fail");
    // And the connection is not used again.
    assert!(matches!(
        c.read_at(&mut buf, 0),
        Err(NbdError::Broken { .. })
    ));
    err
}

#[test]
fn bad_replies_are_errors() {
    // Data outside the request.
    read_fails(|b| {
        chunk(
            b,
            1,
            proto::REPLY_TYPE_OFFSET_DATA,
            1,
            &data(4000, &[0; 200]),
        )
    });
    // DONE before the request is covered.
    read_fails(|b| chunk(b, 1, proto::REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[0; 100])));
    // Overlapping chunks that add up to the length.
    read_fails(|b| {
        chunk(b, 0, proto::REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[0; 2048]));
        chunk(
            b,
            1,
            proto::REPLY_TYPE_OFFSET_DATA,
            1,
            &data(1024, &[0; 2048]),
        );
    });
    // An unknown cookie.
    read_fails(|b| chunk(b, 1, proto::REPLY_TYPE_OFFSET_DATA, 9, &data(0, &[0; 4096])));
    // A server error.
    let e = read_fails(|b| {
        chunk(
            b,
            1,
            proto::REPLY_TYPE_ERROR,
            1,
            &proto::encode_structured_error(proto::EIO, "disk on fire"),
        )
    });
    assert!(e.to_string().contains("disk on fire"), "{e}");
    // The connection ends mid-reply.
    let e = read_fails(|b| b.extend_from_slice(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes()));
    assert!(e.is_disconnect(), "{e}");
    // A bad magic.
    read_fails(|b| b.extend_from_slice(&[0u8; 32]));
}

#[test]
fn bad_handshakes_are_errors() {
    let good = greeting();
    for cut in [0, 8, 17, 30, good.len() - 1] {
        assert!(client(good[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    let mut old = good.clone();
    old[8..16].copy_from_slice(&proto::OLDSTYLE_MAGIC.to_be_bytes());
    let e = client(old).expect_err("oldstyle");
    assert!(e.to_string().contains("oldstyle"), "{e}");
    // GO refused: unknown export.
    let mut b = good[..good.len() - 2 * OptionReplyHeader::LEN - 12].to_vec();
    opt_reply(
        &mut b,
        proto::OPT_GO,
        proto::REP_ERR_UNKNOWN,
        b"no such export",
    );
    let e = client(b).expect_err("refused");
    assert!(e.to_string().contains("no export named"), "{e}");
}

#[test]
fn requests_outside_the_export_are_refused_before_sending() {
    let c = client(greeting()).expect("handshake");
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        c.read_at(&mut buf, (1 << 20) - 100),
        Err(NbdError::OutOfRange { .. })
    ));
    assert!(c.block_status("qemu:dirty-bitmap:x", 0, 512).is_err());
}

#[test]
fn uris() {
    let u = NbdUri::parse("nbd://example.com:1234/disk%201").expect("tcp");
    assert_eq!(
        u.endpoint,
        Endpoint::Tcp {
            host: "example.com".into(),
            port: 1234
        }
    );
    assert_eq!(u.export, "disk 1");
    let u = NbdUri::parse("nbd://[::1]/").expect("ipv6");
    assert_eq!(
        u.endpoint,
        Endpoint::Tcp {
            host: "::1".into(),
            port: 10809
        }
    );
    assert_eq!(u.export, "");
    let u = NbdUri::parse("nbd+unix:///e?socket=/run/x.sock").expect("unix");
    assert_eq!(
        u.endpoint,
        Endpoint::Unix {
            socket: "/run/x.sock".into()
        }
    );
    assert_eq!(u.export, "e");
    for bad in [
        "nbd://",
        "nbd://h:0/",
        "nbd://h:99999/",
        "nbd+unix:///e",
        "nbd+unix://host/e?socket=/x",
        "nbds://h/e",
        "nbd://h/e?tls=on",
        "nbd://u@h/e",
        "nbd://h/%zz",
        "http://h/e",
    ] {
        assert!(NbdUri::parse(bad).is_err(), "{bad}");
    }
    assert!(uri::is_nbd_uri("NBD://h/x") && !uri::is_nbd_uri("/dev/nbd0"));
}

proptest::proptest! {
    /// A READ answered by any split of its range into data and hole
    /// chunks, sent in any order, reads back exactly.
    #[test]
    fn any_split_of_a_read_reads_back(
        cuts in proptest::collection::btree_set(1usize..4096, 0..12),
        holes in proptest::collection::vec(proptest::bool::ANY, 13),
        order in proptest::collection::vec(0usize..1000, 13),
    ) {
        let want: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(4096)).collect();
        bounds.dedup();
        let mut pieces: Vec<(usize, usize, bool)> = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| (w[0], w[1], holes[i]))
            .collect();
        let mut keyed: Vec<(usize, (usize, usize, bool))> =
            pieces.drain(..).enumerate().map(|(i, p)| (order[i], p)).collect();
        keyed.sort_by_key(|k| k.0);
        let n = keyed.len();
        let mut b = greeting();
        let mut expect = want.clone();
        for (i, (_, (s, t, hole))) in keyed.into_iter().enumerate() {
            let flags = if i + 1 == n { proto::REPLY_FLAG_DONE } else { 0 };
            if hole {
                expect[s..t].fill(0);
                let mut p = (s as u64).to_be_bytes().to_vec();
                p.extend_from_slice(&((t - s) as u32).to_be_bytes());
                chunk(&mut b, flags, proto::REPLY_TYPE_OFFSET_HOLE, 1, &p);
            } else {
                chunk(&mut b, flags, proto::REPLY_TYPE_OFFSET_DATA, 1, &data(s as u64, &want[s..t]));
            }
        }
        let c = client(b).expect("handshake");
        let mut buf = vec![0xeeu8; 4096];
        c.read_at(&mut buf, 0).expect("read");
        proptest::prop_assert_eq!(buf, expect);
    }

    /// URIs print and parse back.
    #[test]
    fn uris_round_trip(
        export in "[a-z0-9/._-]{0,20}",
        host in "[a-z][a-z0-9.-]{0,15}",
        port in 1u16..,
        socket in "/[a-z0-9/._-]{1,30}",
    ) {
        for uri in [
            NbdUri { endpoint: Endpoint::Tcp { host: host.clone(), port }, export: export.clone() },
            NbdUri { endpoint: Endpoint::Unix { socket: socket.clone().into() }, export: export.clone() },
        ] {
            let text = uri.to_string();
            proptest::prop_assert_eq!(NbdUri::parse(&text).expect("parses"), uri);
        }
    }
}
