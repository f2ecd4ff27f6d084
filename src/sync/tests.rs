//! Endpoint tests: [`endpoint::serve`] driven over channels the way the
//! driver drives it, to reach states that cannot be timed through the
//! binary (a source changing between scan and read) and to check every
//! refusal of a request out of place.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::endpoint::{self, decode_payload, CHAIN_START};
use super::state::{state_path, state_text, StateFields};
use super::SyncError;
use crate::change::merkle::{zero_leaf, REGION_SIZE};
use crate::remote::message::{
    wire_hash, Encoding, ErrorCode, Message, ObjectKind, WireHash, OPEN_CREATE, OPEN_DRY_RUN,
    VERSION,
};
use crate::remote::RemoteError;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// One endpoint served by a thread, as `Connection::local` does.
struct Endpoint {
    requests: Option<Sender<Message>>,
    replies: Receiver<Message>,
    handle: Option<JoinHandle<Result<(), SyncError>>>,
    /// `Region` messages that arrived while waiting for another reply.
    regions: RefCell<VecDeque<Message>>,
}

impl Endpoint {
    fn start() -> Endpoint {
        let (req_tx, req_rx) = bounded(256);
        let (rep_tx, rep_rx) = unbounded();
        let handle = std::thread::spawn(move || endpoint::serve(req_rx, rep_tx));
        Endpoint {
            requests: Some(req_tx),
            replies: rep_rx,
            handle: Some(handle),
            regions: RefCell::default(),
        }
    }

    fn send(&self, m: Message) {
        self.requests
            .as_ref()
            .expect("requests open")
            .send(m)
            .expect("endpoint alive");
    }

    fn recv(&self) -> Message {
        self.replies
            .recv_timeout(Duration::from_secs(20))
            .expect("a reply within 20 s")
    }

    /// The next reply that is not a streamed `Region` (those are kept for
    /// [`Endpoint::next_region`]).
    fn recv_skipping_regions(&self) -> Message {
        loop {
            match self.recv() {
                r @ Message::Region { .. } => self.regions.borrow_mut().push_back(r),
                m => return m,
            }
        }
    }

    /// The next streamed `Region` reply.
    fn next_region(&self) -> Message {
        let kept = self.regions.borrow_mut().pop_front();
        kept.unwrap_or_else(|| self.recv())
    }

    fn hello(&self) {
        self.send(Message::Hello { version: VERSION });
        assert_eq!(self.recv(), Message::Hello { version: VERSION });
    }

    /// Hello and OpenSource; returns (kind, size, id).
    fn open_source(&self, path: &Path, block: u32) -> (ObjectKind, u64, [u8; 32]) {
        self.hello();
        self.send(Message::OpenSource {
            block,
            path: path_bytes(path),
        });
        match self.recv() {
            Message::Opened {
                kind,
                size,
                id,
                resume_from,
                ..
            } => {
                assert_eq!(resume_from, 0, "a source never resumes");
                (kind, size, id)
            }
            other => panic!("expected Opened, got {other:?}"),
        }
    }

    /// Hello and OpenTarget; returns the `Opened` reply.
    fn open_target(
        &self,
        path: &Path,
        name: &str,
        block: u32,
        flags: u32,
        source_size: u64,
        source_id: [u8; 32],
    ) -> Message {
        self.hello();
        self.send(Message::OpenTarget {
            block,
            flags,
            source_size,
            source_id,
            path: path_bytes(path),
            name: name.as_bytes().to_vec(),
        });
        self.recv()
    }

    fn scan(&self, end: u64) {
        self.send(Message::Scan {
            start: 0,
            end,
            chain: CHAIN_START,
        });
    }

    /// The next reply must be an `Error` (streamed regions skipped).
    fn expect_error(&self, code: ErrorCode) -> String {
        match self.recv_skipping_regions() {
            Message::Error { code: c, message } => {
                assert_eq!(c, code as u32, "error code of {message:?}");
                message
            }
            other => panic!("expected Error, got {other:?}"),
        }
    }

    fn get_nodes(&self, region: u64, level: u8, first: u32, count: u32) -> Vec<WireHash> {
        self.send(Message::GetNodes {
            region,
            level,
            first,
            count,
        });
        match self.recv_skipping_regions() {
            Message::Nodes { hashes, .. } => hashes,
            other => panic!("expected Nodes, got {other:?}"),
        }
    }

    /// Closes the request stream and returns how the serve loop ended.
    fn end(mut self) -> Result<(), SyncError> {
        self.requests = None;
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("serve does not panic")
    }
}

fn region_root(m: &Message) -> (u64, u64, WireHash) {
    match m {
        Message::Region { offset, len, root } => (*offset, *len, *root),
        other => panic!("expected Region, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Refusals

#[test]
fn version_mismatch_is_an_error_after_the_endpoints_hello() {
    let e = Endpoint::start();
    e.send(Message::Hello {
        version: VERSION + 1,
    });
    // The endpoint names its own version first, so the driver can report both.
    assert_eq!(e.recv(), Message::Hello { version: VERSION });
    let message = e.expect_error(ErrorCode::Version);
    assert!(message.contains("version"), "{message}");
    assert!(
        message.contains(&VERSION.to_string()) && message.contains(&(VERSION + 1).to_string()),
        "both versions named: {message}"
    );
    assert!(matches!(
        e.end(),
        Err(SyncError::Remote(RemoteError::Version { ours, theirs })) if ours == VERSION && theirs == VERSION + 1
    ));
}

#[test]
fn anything_before_hello_is_a_protocol_error() {
    let e = Endpoint::start();
    e.send(Message::OpenSource {
        block: 4096,
        path: b"/dev/null".to_vec(),
    });
    let message = e.expect_error(ErrorCode::Protocol);
    assert!(message.contains("Hello"), "{message}");
    assert!(matches!(
        e.end(),
        Err(SyncError::Remote(RemoteError::Protocol(_)))
    ));
}

#[test]
fn write_before_open_target_is_a_protocol_error() {
    let e = Endpoint::start();
    e.hello();
    e.send(Message::Write {
        offset: 0,
        len: 4096,
        encoding: Encoding::Raw,
        payload: vec![1; 4096],
    });
    let message = e.expect_error(ErrorCode::Protocol);
    assert!(message.contains("Write"), "{message}");
    assert!(matches!(
        e.end(),
        Err(SyncError::Remote(RemoteError::Protocol(_)))
    ));
}

#[test]
fn get_nodes_for_an_unknown_region_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    std::fs::write(&path, bytes(MIB, 1)).expect("write");
    // Before any Scan.
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.send(Message::GetNodes {
        region: 0,
        level: 0,
        first: 0,
        count: 16,
    });
    let message = e.expect_error(ErrorCode::Protocol);
    assert!(message.contains("unknown region"), "{message}");
    assert!(e.end().is_err());
    // After a Scan, for a region that does not exist.
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.scan(MIB as u64);
    assert_eq!(region_root(&e.next_region()).0, 0);
    e.send(Message::GetNodes {
        region: 4 * REGION_SIZE,
        level: 0,
        first: 0,
        count: 16,
    });
    let message = e.expect_error(ErrorCode::Protocol);
    assert!(message.contains("unknown region"), "{message}");
    assert!(e.end().is_err());
}

#[test]
fn release_of_an_unknown_region_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    std::fs::write(&path, bytes(MIB, 2)).expect("write");
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.scan(MIB as u64);
    region_root(&e.next_region());
    e.send(Message::Release {
        region: REGION_SIZE,
    });
    e.expect_error(ErrorCode::Protocol);
    assert!(e.end().is_err());
}

#[test]
fn read_outside_the_scan_window_or_past_the_end_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    std::fs::write(&path, bytes(MIB, 3)).expect("write");
    // Before the Scan no block has a known hash to check against.
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.send(Message::Read {
        offset: 0,
        len: 4096,
    });
    e.expect_error(ErrorCode::Protocol);
    assert!(e.end().is_err());
    // Past the end, or not on a block boundary.
    for (offset, len) in [(MIB as u64, 4096), (MIB as u64 - 4096, 8192), (100, 4096)] {
        let e = Endpoint::start();
        e.open_source(&path, 4096);
        e.scan(MIB as u64);
        region_root(&e.next_region());
        e.send(Message::Read { offset, len });
        let message = e.expect_error(ErrorCode::Protocol);
        assert!(message.contains("Read"), "{message}");
        assert!(e.end().is_err());
    }
}

#[test]
fn write_to_a_source_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    let data = bytes(MIB, 4);
    std::fs::write(&path, &data).expect("write");
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.scan(MIB as u64);
    region_root(&e.next_region());
    e.send(Message::Write {
        offset: 0,
        len: 4096,
        encoding: Encoding::Raw,
        payload: vec![0xAA; 4096],
    });
    e.expect_error(ErrorCode::Protocol);
    assert!(e.end().is_err());
    assert_eq!(std::fs::read(&path).expect("read"), data, "source modified");
}

#[test]
fn dry_run_target_is_not_created_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.img");
    let e = Endpoint::start();
    let opened = e.open_target(
        &path,
        "src.img",
        4096,
        OPEN_CREATE | OPEN_DRY_RUN,
        MIB as u64,
        [1; 32],
    );
    assert!(
        matches!(
            opened,
            Message::Opened {
                kind: ObjectKind::Missing,
                size: 0,
                resume_from: 0,
                ..
            }
        ),
        "{opened:?}"
    );
    e.scan(MIB as u64);
    region_root(&e.next_region());
    e.send(Message::Write {
        offset: 0,
        len: 4096,
        encoding: Encoding::Raw,
        payload: vec![1; 4096],
    });
    let message = e.expect_error(ErrorCode::Protocol);
    assert!(message.contains("dry run"), "{message}");
    assert!(e.end().is_err());
    assert!(!path.exists(), "dry run created the target");
    assert!(!state_path(&path).exists());
}

#[test]
fn missing_target_without_the_create_flag_is_an_open_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.img");
    let e = Endpoint::start();
    let reply = e.open_target(&path, "x", 4096, 0, MIB as u64, [1; 32]);
    match reply {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::Open as u32);
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(e.end().is_err());
    assert!(!path.exists());
}

#[test]
fn invalid_block_sizes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    std::fs::write(&path, bytes(4096, 5)).expect("write");
    for block in [0, 1, 256, 1000, 4097, (REGION_SIZE as u32) * 2] {
        let e = Endpoint::start();
        e.hello();
        e.send(Message::OpenSource {
            block,
            path: path_bytes(&path),
        });
        let message = e.expect_error(ErrorCode::Protocol);
        assert!(message.contains("block size"), "{block}: {message}");
        assert!(e.end().is_err());
    }
}

#[test]
fn a_second_scan_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    std::fs::write(&path, bytes(MIB, 6)).expect("write");
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.scan(MIB as u64);
    e.scan(MIB as u64);
    e.expect_error(ErrorCode::Protocol);
    assert!(e.end().is_err());
}

// ---------------------------------------------------------------------------
// A source that changes under the sync

#[test]
fn source_changed_between_scan_and_read_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    let data = bytes(2 * MIB, 7);
    std::fs::write(&path, &data).expect("write");
    let e = Endpoint::start();
    let (kind, size, _) = e.open_source(&path, 4096);
    assert_eq!((kind, size), (ObjectKind::File, data.len() as u64));
    e.scan(size);
    let (offset, len, _) = region_root(&e.next_region());
    assert_eq!((offset, len), (0, size));

    // Unchanged blocks are served, with their bytes.
    e.send(Message::Read {
        offset: 0,
        len: 8192,
    });
    match e.recv() {
        Message::Data {
            offset: 0,
            len: 8192,
            encoding,
            payload,
        } => {
            let got = decode_payload(8192, encoding, &payload)
                .expect("decodes")
                .expect("not zeros");
            assert_eq!(got, data[..8192]);
        }
        other => panic!("expected Data, got {other:?}"),
    }

    // One byte of the third block changes in place (same inode).
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open for writing");
    file.write_all_at(&[data[3 * 4096 + 17] ^ 0xFF], 3 * 4096 + 17)
        .expect("modify");
    drop(file);
    // A read of blocks 2..=4 notices it at the changed block.
    e.send(Message::Read {
        offset: 2 * 4096,
        len: 3 * 4096,
    });
    let message = e.expect_error(ErrorCode::SourceChanged);
    assert!(message.contains("changed while it was read"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&(3 * 4096).to_string()), "{message}");
    match e.end() {
        Err(SyncError::Remote(RemoteError::SourceChanged { offset, .. })) => {
            assert_eq!(offset, 3 * 4096)
        }
        other => panic!("expected SourceChanged, got {other:?}"),
    }
}

#[test]
fn source_changed_to_zeros_is_reported_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.img");
    let data = bytes(MIB, 8);
    std::fs::write(&path, &data).expect("write");
    let e = Endpoint::start();
    e.open_source(&path, 64 * KIB as u32);
    e.scan(MIB as u64);
    region_root(&e.next_region());
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open for writing");
    file.write_all_at(&vec![0; 64 * KIB], 0).expect("zero");
    drop(file);
    e.send(Message::Read {
        offset: 0,
        len: 64 * KIB as u32,
    });
    let message = e.expect_error(ErrorCode::SourceChanged);
    assert!(message.contains("changed while it was read"), "{message}");
    assert!(e.end().is_err());
}

// ---------------------------------------------------------------------------
// Hashing and a whole session

/// A target shorter than the source hashes as if it were extended with
/// zeros to the source's size, also when its size is not a whole number of
/// blocks: its roots equal those of a source holding the zero-extended
/// bytes.
#[test]
fn short_target_hashes_like_its_zero_extended_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let block = 16 * KIB as u32;
    for target_len in [MIB, MIB + 5, MIB + 16 * KIB - 1, 3 * 4096 + 1] {
        let short = bytes(target_len, 9);
        let target = dir.path().join(format!("short-{target_len}.img"));
        std::fs::write(&target, &short).expect("write");
        let mut extended = short.clone();
        extended.resize(2 * MIB + 4321, 0);
        let source = dir.path().join(format!("extended-{target_len}.img"));
        std::fs::write(&source, &extended).expect("write");
        let end = extended.len() as u64;

        let s = Endpoint::start();
        let (_, size, id) = s.open_source(&source, block);
        assert_eq!(size, end);
        s.scan(end);
        let src_root = region_root(&s.next_region());

        let t = Endpoint::start();
        let opened = t.open_target(&target, "x", block, OPEN_CREATE, end, id);
        assert!(
            matches!(opened, Message::Opened { kind: ObjectKind::File, size, .. } if size == target_len as u64),
            "{opened:?}"
        );
        t.scan(end);
        let dst_root = region_root(&t.next_region());
        let leaves = end.div_ceil(u64::from(block)) as u32;
        assert_eq!(
            t.get_nodes(0, 0, leaves, 16),
            Vec::<WireHash>::new(),
            "target of {target_len} bytes has more than {leaves} leaves"
        );
        let last_data_leaf = (target_len / block as usize) as u32;
        assert_eq!(
            t.get_nodes(0, 0, last_data_leaf, 2),
            s.get_nodes(0, 0, last_data_leaf, 2),
            "target of {target_len} bytes: leaves around its end"
        );
        assert_eq!(
            src_root, dst_root,
            "target of {target_len} bytes: region roots"
        );
        drop(s);
        drop(t);
    }
}

#[test]
fn zero_regions_hash_like_zero_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zeros.img");
    // One full region of zeros, then a short data region.
    let mut data = vec![0u8; REGION_SIZE as usize];
    data.extend_from_slice(&bytes(64 * KIB, 10));
    std::fs::write(&path, &data).expect("write");
    let e = Endpoint::start();
    e.open_source(&path, 4096);
    e.scan(data.len() as u64);
    let first = region_root(&e.next_region());
    let second = region_root(&e.next_region());
    assert_eq!((first.0, first.1), (0, REGION_SIZE));
    assert_eq!((second.0, second.1), (REGION_SIZE, 64 * KIB as u64));
    let leaves = e.get_nodes(0, 0, 100, 16);
    assert_eq!(leaves, vec![wire_hash(&zero_leaf(4096)); 16]);
    let leaves = e.get_nodes(REGION_SIZE, 0, 0, 16);
    assert_eq!(leaves.len(), 16);
    assert_eq!(
        leaves[0],
        wire_hash(&blake3::hash(&data[REGION_SIZE as usize..][..4096]))
    );
}

/// Runs a complete session between a source and a target endpoint the
/// simple way: every region whose roots differ is copied whole.
fn copy_session(source: &Path, target: &Path, block: u32) -> ([u8; 32], [u8; 32], u64) {
    let s = Endpoint::start();
    let (_, size, id) = s.open_source(source, block);
    let t = Endpoint::start();
    let opened = t.open_target(target, "src.img", block, OPEN_CREATE, size, id);
    assert!(matches!(opened, Message::Opened { .. }), "{opened:?}");
    s.scan(size);
    t.scan(size);
    let mut written = 0;
    let mut offset = 0;
    while offset < size {
        let (so, len, sr) = region_root(&s.next_region());
        let (to, tlen, tr) = region_root(&t.next_region());
        assert_eq!(
            (so, len),
            (to, tlen),
            "regions arrive in order on both ends"
        );
        if sr != tr {
            let mut at = so;
            while at < so + len {
                let n = (so + len - at).min(MIB as u64) as u32;
                s.send(Message::Read { offset: at, len: n });
                match s.recv_skipping_regions() {
                    Message::Data {
                        offset,
                        len,
                        encoding,
                        payload,
                    } => t.send(Message::Write {
                        offset,
                        len,
                        encoding,
                        payload,
                    }),
                    other => panic!("expected Data, got {other:?}"),
                }
                at += u64::from(n);
                written += u64::from(n);
            }
        }
        s.send(Message::Release { region: so });
        t.send(Message::Release { region: so });
        offset = so + len;
    }
    s.send(Message::Finish { size });
    t.send(Message::Finish { size });
    let done = |e: &Endpoint| match e.recv_skipping_regions() {
        Message::Done { chain, .. } => chain,
        other => panic!("expected Done, got {other:?}"),
    };
    let (sc, tc) = (done(&s), done(&t));
    s.end().expect("source ends cleanly");
    t.end().expect("target ends cleanly");
    (sc, tc, written)
}

#[test]
fn a_session_makes_the_target_equal_and_the_chains_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = bytes(2 * REGION_SIZE as usize + 12_345, 11);
    data[MIB..3 * MIB].fill(0);
    let source = dir.path().join("src.img");
    std::fs::write(&source, &data).expect("write");
    // Into a directory: the source's name is appended.
    let target_dir = dir.path().join("out");
    std::fs::create_dir(&target_dir).expect("mkdir");
    let (sc, tc, written) = copy_session(&source, &target_dir, 4096);
    let target = target_dir.join("src.img");
    assert_eq!(sc, tc, "chains differ after a complete session");
    assert_eq!(written, data.len() as u64);
    assert!(
        std::fs::read(&target).expect("target") == data,
        "target differs"
    );
    assert!(!state_path(&target).exists(), "state left after Finish");

    // Again with one changed block: only its region moves, chains agree.
    data[REGION_SIZE as usize + 5000] ^= 1;
    std::fs::write(&source, &data).expect("rewrite");
    let (sc, tc, written) = copy_session(&source, &target, 4096);
    assert_eq!(sc, tc);
    assert_eq!(written, REGION_SIZE);
    assert!(
        std::fs::read(&target).expect("target") == data,
        "target differs"
    );

    // A larger target is truncated at Finish.
    let longer = dir.path().join("longer.img");
    std::fs::write(&longer, bytes(data.len() + 3 * MIB, 12)).expect("write");
    let (sc, tc, _) = copy_session(&source, &longer, 4096);
    assert_eq!(sc, tc);
    assert!(
        std::fs::read(&longer).expect("target") == data,
        "longer target differs"
    );
}

// ---------------------------------------------------------------------------
// Source identity and resume state

#[test]
fn source_identity_follows_the_file_and_its_mtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let data = bytes(64 * KIB, 13);
    std::fs::write(&a, &data).expect("write");
    std::fs::write(&b, &data).expect("write");
    let id = |p: &Path| {
        let e = Endpoint::start();
        let (_, _, id) = e.open_source(p, 4096);
        drop(e);
        id
    };
    let first = id(&a);
    assert_eq!(id(&a), first, "identity is stable");
    assert_ne!(id(&b), first, "another file with the same bytes");
    std::fs::File::options()
        .write(true)
        .open(&a)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(12345)))
        .expect("touch");
    assert_ne!(id(&a), first, "a touched file");
}

/// Writes a resume state file for `target` as an interrupted run would.
fn write_state(target: &Path, source_id: [u8; 32], size: u64, block: u32, offset: u64) {
    std::fs::write(
        state_path(target),
        state_for(target, source_id, size, block, offset),
    )
    .expect("write state");
}

fn state_for(target: &Path, source_id: [u8; 32], size: u64, block: u32, offset: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(target).expect("stat target");
    state_text(&StateFields {
        source_id,
        source_size: size,
        block,
        offset,
        chain: [7u8; 32],
        target_dev: meta.dev(),
        target_ino: meta.ino(),
    })
    .expect("encode state")
}

fn resume_from(opened: &Message) -> (u64, [u8; 32]) {
    match opened {
        Message::Opened {
            resume_from,
            resume_chain,
            ..
        } => (*resume_from, *resume_chain),
        other => panic!("expected Opened, got {other:?}"),
    }
}

/// A sparse target of `size` bytes in `dir`.
fn sparse_target(dir: &Path, size: u64) -> PathBuf {
    let target = dir.join("t.img");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(size))
        .expect("create target");
    target
}

/// Opens `target` on a fresh endpoint; returns the resume point it offers.
fn resume_point(
    target: &Path,
    source_id: [u8; 32],
    source_size: u64,
    block: u32,
    flags: u32,
) -> (u64, [u8; 32]) {
    let e = Endpoint::start();
    let opened = e.open_target(target, "x", block, flags, source_size, source_id);
    drop(e);
    resume_from(&opened)
}

#[test]
fn resume_state_is_used_only_for_the_same_source_size_and_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 3 * REGION_SIZE;
    let target = sparse_target(dir.path(), size);
    let id = [3u8; 32];
    let open = |source_id: [u8; 32], source_size: u64, block: u32, flags: u32| {
        resume_point(&target, source_id, source_size, block, flags)
    };

    write_state(&target, id, size, 4096, REGION_SIZE);
    assert_eq!(open(id, size, 4096, OPEN_CREATE), (REGION_SIZE, [7; 32]));
    assert_eq!(open([4; 32], size, 4096, OPEN_CREATE).0, 0, "other source");
    assert_eq!(open(id, size + 4096, 4096, OPEN_CREATE).0, 0, "other size");
    assert_eq!(open(id, size, 8192, OPEN_CREATE).0, 0, "other block size");
    assert_eq!(
        open(id, size, 4096, OPEN_CREATE | OPEN_DRY_RUN).0,
        0,
        "a dry run never resumes"
    );
    // An offset past the source's end is not trusted.
    write_state(&target, id, size, 4096, size + REGION_SIZE);
    assert_eq!(
        open(id, size, 4096, OPEN_CREATE).0,
        0,
        "offset past the end"
    );
    // A state about another file (replaced since), or a target truncated
    // below the offset, is not resumed into.
    write_state(&target, id, size, 4096, REGION_SIZE);
    // A new file renamed over the target has another inode (both exist at
    // once, so the number cannot be reused).
    let replacement = dir.path().join("replacement.img");
    std::fs::File::create(&replacement)
        .and_then(|f| f.set_len(size))
        .expect("create replacement");
    std::fs::rename(&replacement, &target).expect("replace target");
    assert_eq!(open(id, size, 4096, OPEN_CREATE).0, 0, "replaced target");
    write_state(&target, id, size, 4096, 2 * REGION_SIZE);
    std::fs::File::options()
        .write(true)
        .open(&target)
        .and_then(|f| f.set_len(REGION_SIZE))
        .expect("truncate target");
    assert_eq!(open(id, size, 4096, OPEN_CREATE).0, 0, "truncated target");
    // Garbage is ignored.
    std::fs::write(state_path(&target), "{not json").expect("write");
    assert_eq!(open(id, size, 4096, OPEN_CREATE).0, 0, "corrupt state");
}

#[test]
fn a_resume_state_whose_check_does_not_match_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 3 * REGION_SIZE;
    let target = sparse_target(dir.path(), size);
    let id = [3u8; 32];
    let open = || resume_point(&target, id, size, 4096, OPEN_CREATE).0;
    let good = state_for(&target, id, size, 4096, REGION_SIZE);
    std::fs::write(state_path(&target), &good).expect("write");
    assert_eq!(open(), REGION_SIZE, "an intact state resumes");
    // The dangerous damage: a larger offset would skip unwritten blocks.
    let moved = good.replace(
        &format!("\"offset\":{REGION_SIZE}"),
        &format!("\"offset\":{}", 2 * REGION_SIZE),
    );
    assert_ne!(moved, good);
    std::fs::write(state_path(&target), moved).expect("write");
    assert_eq!(open(), 0, "offset changed under an old check");
    // Every single-character change is refused or harmless.
    for (i, c) in good.char_indices() {
        let replacement = if c == '0' { '1' } else { '0' };
        let mut damaged = good.clone();
        damaged.replace_range(i..i + c.len_utf8(), &replacement.to_string());
        std::fs::write(state_path(&target), &damaged).expect("write");
        assert_eq!(open(), 0, "character {i} of {good} changed");
    }
    // A version 1 file (no check) starts from the beginning.
    let v1 = good.replace("\"version\":2", "\"version\":1");
    std::fs::write(state_path(&target), v1).expect("write");
    assert_eq!(open(), 0, "version 1 state");
}
