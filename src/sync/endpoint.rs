//! One end of a sync: the source it reads or the target it writes. Runs the
//! same code in `diskdelta serve` on a remote host and in a thread for a
//! local path.
//!
//! ```text
//!  requests ──> serve loop ──┬─ Scan: scanner thread ──(Region roots)──> replies
//!                            ├─ GetNodes / Read / Write / Release / Finish
//!                            └─ replies
//! ```
//! The scanner reads the object region by region, builds each region's hash
//! tree, and keeps at most [`WINDOW`] trees that the driver has not released,
//! so memory is bounded whatever the object's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::state::ResumeState;
use super::SyncError;
use crate::change::merkle::{zero_leaf, NodeHash, RegionTree, REGION_SIZE};
use crate::digest::is_zero;
use crate::io::reader::ReaderOptions;
use crate::io::{ChunkReader, Input, InputKind, InputOptions, Output, OutputKind};
use crate::remote::message::{
    wire_hash, Encoding, Message, ObjectKind, WireHash, OPEN_CREATE, OPEN_DRY_RUN,
};
use crate::remote::{RemoteError, WireError};

/// Region trees a scanner may hold before the driver releases them.
pub const WINDOW: usize = 32;

/// Chain value before the first region.
pub const CHAIN_START: [u8; 32] = [0; 32];

/// Advances the chain over one region root: `BLAKE3(chain ‖ offset ‖ len ‖ root)`.
pub fn chain_next(chain: &[u8; 32], offset: u64, len: u64, root: &NodeHash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(chain);
    h.update(&offset.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(root.as_bytes());
    *h.finalize().as_bytes()
}

#[derive(Debug, Default)]
struct Window {
    trees: BTreeMap<u64, RegionTree>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    window: Mutex<Window>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Role {
    Source {
        input: Input,
        path: PathBuf,
        size: u64,
        block: u32,
    },
    Target {
        output: Option<Box<Output>>,
        path: PathBuf,
        size: u64,
        block: u32,
        dry_run: bool,
        state: Option<ResumeState>,
        written: u64,
    },
}

/// Serves one sync session on a thread of this process (a local end of
/// `diskdelta sync`): the handshake, then [`run`].
///
/// # Errors
/// Whatever ended the session.
pub fn serve(requests: Receiver<Message>, replies: Sender<Message>) -> Result<(), SyncError> {
    crate::remote::serve::serve(requests, replies, |first, requests, replies| {
        run(first, requests, replies)
    })
}

/// True for the requests that open a sync session.
pub fn opens_session(m: &Message) -> bool {
    matches!(m, Message::OpenSource { .. } | Message::OpenTarget { .. })
}

fn recv(requests: &Receiver<Message>) -> Result<Option<Message>, SyncError> {
    Ok(requests.recv().ok())
}

fn send(replies: &Sender<Message>, m: Message) -> Result<(), SyncError> {
    Ok(crate::remote::serve::send(replies, m)?)
}

/// Serves one sync session after the handshake: `first` opens the source
/// or target, then the requests of the session until `Finish`.
///
/// # Errors
/// Whatever ended the session.
pub fn run(
    first: Message,
    requests: &Receiver<Message>,
    replies: &Sender<Message>,
) -> Result<(), SyncError> {
    let mut role = match first {
        Message::OpenSource { block, path } => open_source(block, &path, replies)?,
        Message::OpenTarget {
            block,
            flags,
            source_size,
            source_id,
            path,
            name,
        } => open_target(block, flags, source_size, source_id, &path, &name, replies)?,
        other => {
            return Err(SyncError::unexpected(
                other.name(),
                "OpenSource or OpenTarget",
            ))
        }
    };
    let shared = Arc::new(Shared::default());
    let mut chain = CHAIN_START;
    let mut scanner: Option<std::thread::JoinHandle<Result<(), SyncError>>> = None;
    let result = (|| {
        while let Some(msg) = recv(requests)? {
            match msg {
                Message::Scan {
                    start,
                    end,
                    chain: from,
                } => {
                    if scanner.is_some() || !start.is_multiple_of(REGION_SIZE) || start > end {
                        return Err(SyncError::protocol("bad or repeated Scan".into()));
                    }
                    chain = from;
                    scanner = Some(start_scanner(
                        &role,
                        start,
                        end,
                        shared.clone(),
                        replies.clone(),
                    )?);
                }
                Message::GetNodes {
                    region,
                    level,
                    first,
                    count,
                } => {
                    let w = shared.lock();
                    let tree = w.trees.get(&region).ok_or_else(|| {
                        SyncError::protocol(format!("GetNodes for unknown region {region}"))
                    })?;
                    let nodes = tree.level(usize::from(level));
                    let first_i = (first as usize).min(nodes.len());
                    let end_i = first_i.saturating_add(count as usize).min(nodes.len());
                    let hashes: Vec<WireHash> =
                        nodes[first_i..end_i].iter().map(wire_hash).collect();
                    drop(w);
                    send(
                        replies,
                        Message::Nodes {
                            region,
                            level,
                            first,
                            hashes,
                        },
                    )?;
                }
                Message::Release { region } => {
                    let tree = {
                        let mut w = shared.lock();
                        let t = w.trees.remove(&region);
                        shared.changed.notify_all();
                        t
                    };
                    let tree = tree.ok_or_else(|| {
                        SyncError::protocol(format!("Release of unknown region {region}"))
                    })?;
                    chain = chain_next(&chain, tree.offset(), tree.len(), &tree.root());
                    if let Role::Target {
                        output: Some(out),
                        state: Some(state),
                        ..
                    } = &mut role
                    {
                        state.advance(tree.offset() + tree.len(), chain, out)?;
                    }
                }
                Message::Read { offset, len } => {
                    let reply = read_source(&role, &shared, offset, len)?;
                    send(replies, reply)?;
                }
                Message::Write {
                    offset,
                    len,
                    encoding,
                    payload,
                } => write_target(&mut role, &shared, offset, len, encoding, &payload)?,
                Message::Finish { size } => {
                    if let Some(handle) = scanner.take() {
                        stop_scanner(&shared);
                        join_scanner(handle)?;
                    }
                    let bytes = finish(&mut role, size)?;
                    send(replies, Message::Done { chain, bytes })?;
                    return Ok(());
                }
                other => return Err(SyncError::unexpected(other.name(), "a request")),
            }
        }
        Ok(())
    })();
    stop_scanner(&shared);
    let scanned = scanner.map_or(Ok(()), join_scanner);
    result.and(scanned)
}

fn stop_scanner(shared: &Shared) {
    shared.lock().stop = true;
    shared.changed.notify_all();
}

fn join_scanner(handle: std::thread::JoinHandle<Result<(), SyncError>>) -> Result<(), SyncError> {
    handle
        .join()
        .map_err(|_| SyncError::protocol("scanner thread panicked".into()))?
}

fn path_from(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

fn check_block(block: u32) -> Result<(), SyncError> {
    // A block must fit in one Read/Write, which the source checks against
    // the block's hash as a whole.
    if block.is_power_of_two() && (512..=crate::remote::MAX_DATA as u32).contains(&block) {
        Ok(())
    } else {
        Err(SyncError::protocol(format!("invalid block size {block}")))
    }
}

/// Identity of a source for resuming: device, inode, size and mtime of a
/// file; device number and size of a block device.
fn source_identity(file: Option<&File>, path: &std::path::Path, size: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("diskdelta sync source identity v1");
    if file.is_none() {
        // An NBD export: its URI.
        h.update(path.as_os_str().as_encoded_bytes());
    }
    if let Some(Ok(m)) = file.map(File::metadata) {
        h.update(&m.dev().to_le_bytes());
        h.update(&m.ino().to_le_bytes());
        h.update(&m.rdev().to_le_bytes());
        if m.is_file() {
            h.update(&m.mtime().to_le_bytes());
            h.update(&m.mtime_nsec().to_le_bytes());
        }
    }
    h.update(&size.to_le_bytes());
    *h.finalize().as_bytes()
}

fn open_source(block: u32, path: &[u8], replies: &Sender<Message>) -> Result<Role, SyncError> {
    check_block(block)?;
    let path = path_from(path);
    let input = Input::open(&path, &InputOptions::default())?;
    if input.kind() == InputKind::Stream {
        return Err(RemoteError::NotSeekable { path }.into());
    }
    let size = input.size().unwrap_or(0);
    let kind = if input.kind() == InputKind::BlockDevice {
        ObjectKind::BlockDevice
    } else {
        ObjectKind::File
    };
    let id = source_identity(input.file(), &path, size);
    send(
        replies,
        Message::Opened {
            kind,
            size,
            id,
            resume_from: 0,
            resume_chain: CHAIN_START,
        },
    )?;
    Ok(Role::Source {
        input,
        path,
        size,
        block,
    })
}

#[allow(clippy::too_many_arguments)]
fn open_target(
    block: u32,
    flags: u32,
    source_size: u64,
    source_id: [u8; 32],
    path: &[u8],
    name: &[u8],
    replies: &Sender<Message>,
) -> Result<Role, SyncError> {
    check_block(block)?;
    let mut path = path_from(path);
    if path.is_dir() {
        if name.is_empty() {
            return Err(SyncError::protocol(format!(
                "target {} is a directory and the source has no file name",
                path.display()
            )));
        }
        path = path.join(path_from(name));
    }
    let dry_run = flags & OPEN_DRY_RUN != 0;
    let exists = std::fs::metadata(&path).is_ok();
    if !exists && flags & OPEN_CREATE == 0 {
        return Err(SyncError::Io(crate::io::IoError::Open {
            path,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
    }
    let output = if dry_run {
        None
    } else {
        Some(Box::new(Output::open_or_create_in_place(&path)?))
    };
    let (kind, size) = match &output {
        Some(o) if o.kind() == OutputKind::BlockDevice => {
            (ObjectKind::BlockDevice, o.size().unwrap_or(0))
        }
        Some(o) => (ObjectKind::File, o.size().unwrap_or(0)),
        None if exists => {
            let input = Input::open(&path, &InputOptions::default())?;
            let k = if input.kind() == InputKind::BlockDevice {
                ObjectKind::BlockDevice
            } else {
                ObjectKind::File
            };
            (k, input.size().unwrap_or(0))
        }
        None => (ObjectKind::Missing, 0),
    };
    if kind == ObjectKind::BlockDevice && size < source_size {
        return Err(SyncError::TooSmall {
            path,
            size,
            needed: source_size,
        });
    }
    let state = match (&output, kind) {
        (Some(o), ObjectKind::File) => Some(ResumeState::load_or_new(
            &path,
            o.file(),
            source_id,
            source_size,
            block,
        )?),
        _ => None,
    };
    let (resume_from, resume_chain) = state
        .as_ref()
        .map_or((0, CHAIN_START), |s| (s.offset(), s.chain()));
    send(
        replies,
        Message::Opened {
            kind,
            size,
            id: [0; 32],
            resume_from,
            resume_chain,
        },
    )?;
    Ok(Role::Target {
        output,
        path,
        size,
        block,
        dry_run,
        state,
        written: 0,
    })
}

fn start_scanner(
    role: &Role,
    start: u64,
    end: u64,
    shared: Arc<Shared>,
    replies: Sender<Message>,
) -> Result<std::thread::JoinHandle<Result<(), SyncError>>, SyncError> {
    let (path, size, block, source) = match role {
        Role::Source {
            path,
            size,
            block,
            input,
        } => (path.clone(), *size, *block, Some(input)),
        Role::Target {
            path, size, block, ..
        } => (path.clone(), *size, *block, None),
    };
    let input = match source {
        _ if size <= start => None,
        Some(input) => Some(input.try_clone()?),
        None => Some(Input::open(&path, &InputOptions::default())?),
    };
    std::thread::Builder::new()
        .name("scan".into())
        .spawn(move || {
            let result = scan(input, start, end, size, block, &shared, &replies);
            // The request loop only sees the scanner's result at Finish;
            // the driver, waiting for regions, must hear of a read error now.
            if let Err(e) = &result {
                let _ = replies.send(Message::Error {
                    code: e.code() as u32,
                    message: crate::remote::error_chain(e),
                });
            }
            result
        })
        .map_err(|e| SyncError::protocol(format!("cannot start scanner: {e}")))
}

/// Hashes `[start, end)` region by region. Past the object's own size
/// (a target shorter than the source) the content counts as zeros, which
/// is what the target holds once it is extended.
fn scan(
    input: Option<Input>,
    start: u64,
    end: u64,
    size: u64,
    block: u32,
    shared: &Shared,
    replies: &Sender<Message>,
) -> Result<(), SyncError> {
    let mut reader = input.map(|i| {
        ChunkReader::spawn(
            i,
            ReaderOptions {
                digest: false,
                start,
                limit: Some(end.min(size)),
                ..ReaderOptions::default()
            },
        )
    });
    let zero_tree = RegionTree::build(0, None, REGION_SIZE as usize, block);
    let mut region = start;
    let mut leaves = LeafBuilder::new(block);
    let mut pending: Option<crate::io::Chunk> = None;
    while region < end {
        let region_len = (end - region).min(REGION_SIZE);
        let mut at = region;
        let region_end = region + region_len;
        while at < region_end {
            let chunk = match pending.take() {
                Some(c) => Some(c),
                None if at < size => match reader.as_mut().and_then(ChunkReader::next_chunk) {
                    Some(c) => Some(c?),
                    None => None,
                },
                None => None,
            };
            match chunk {
                Some(c) => {
                    let take_end = c.end().min(region_end);
                    let from = (at - c.offset) as usize;
                    let to = (take_end - c.offset) as usize;
                    if c.hole {
                        leaves.feed(None, to - from);
                    } else {
                        leaves.feed(Some(&c.data()[from..to]), to - from);
                    }
                    at = take_end;
                    if c.end() > region_end {
                        pending = Some(c);
                    } else if let Some(r) = reader.as_ref() {
                        r.recycle(c);
                    }
                }
                None => {
                    // Past the object's end: zeros, on the same block grid.
                    leaves.feed(None, (region_end - at) as usize);
                    at = region_end;
                }
            }
        }
        let (hashes, all_zero) = leaves.finish_region();
        let tree = if all_zero && region_len == REGION_SIZE {
            zero_tree.relocated(region)
        } else {
            RegionTree::from_leaves(region, region_len, block, hashes)
        };
        let root = wire_hash(&tree.root());
        {
            let mut w = shared.lock();
            while w.trees.len() >= WINDOW && !w.stop {
                w = shared
                    .changed
                    .wait(w)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if w.stop {
                break;
            }
            w.trees.insert(region, tree);
        }
        if replies
            .send(Message::Region {
                offset: region,
                len: region_len,
                root,
            })
            .is_err()
        {
            break;
        }
        region += region_len;
    }
    if let Some(r) = reader {
        r.abandon();
    }
    Ok(())
}

/// Leaf hashes of one region, fed in pieces of any size that need not
/// line up with blocks (chunks end where the object ends; blocks may be
/// larger than chunks).
struct LeafBuilder {
    block: usize,
    zero_block: NodeHash,
    hasher: blake3::Hasher,
    filled: usize,
    leaves: Vec<NodeHash>,
    all_zero: bool,
}

impl LeafBuilder {
    fn new(block: u32) -> Self {
        LeafBuilder {
            block: block as usize,
            zero_block: zero_leaf(block as usize),
            hasher: blake3::Hasher::new(),
            filled: 0,
            leaves: Vec::new(),
            all_zero: true,
        }
    }

    /// Feeds `len` bytes: `data`, or zeros when `None`.
    fn feed(&mut self, data: Option<&[u8]>, len: usize) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = 0;
        while at < len {
            let take = (self.block - self.filled).min(len - at);
            let piece = data.map(|d| &d[at..at + take]);
            let zero = piece.is_none_or(is_zero);
            if self.filled == 0 && take == self.block {
                self.leaves.push(match piece {
                    Some(p) if !zero => blake3::hash(p),
                    _ => self.zero_block,
                });
            } else {
                match piece {
                    Some(p) => {
                        self.hasher.update(p);
                    }
                    None => {
                        let mut left = take;
                        while left > 0 {
                            let n = left.min(ZEROS.len());
                            self.hasher.update(&ZEROS[..n]);
                            left -= n;
                        }
                    }
                }
                self.filled += take;
                if self.filled == self.block {
                    self.close_leaf();
                }
            }
            self.all_zero &= zero;
            at += take;
        }
    }

    fn close_leaf(&mut self) {
        self.leaves.push(self.hasher.finalize());
        self.hasher.reset();
        self.filled = 0;
    }

    /// The region's leaves (a short last leaf closes at the region's end)
    /// and whether the region held only zeros.
    fn finish_region(&mut self) -> (Vec<NodeHash>, bool) {
        if self.filled > 0 {
            self.close_leaf();
        }
        let all_zero = std::mem::replace(&mut self.all_zero, true);
        (std::mem::take(&mut self.leaves), all_zero)
    }
}

fn region_of(offset: u64) -> u64 {
    offset - offset % REGION_SIZE
}

fn read_source(role: &Role, shared: &Shared, offset: u64, len: u32) -> Result<Message, SyncError> {
    let Role::Source {
        input,
        path,
        size,
        block,
        ..
    } = role
    else {
        return Err(SyncError::protocol("Read sent to a target".into()));
    };
    let end = offset.saturating_add(u64::from(len));
    if end > *size
        || len as usize > crate::remote::MAX_DATA
        || !offset.is_multiple_of(u64::from(*block))
    {
        return Err(SyncError::protocol(format!(
            "bad Read of {len} bytes at {offset}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact_at(&mut buf, offset)?;
    // The blocks must still hash as they did when scanned: a source that
    // changes under a sync is reported, never copied half-old, half-new.
    {
        let w = shared.lock();
        let region = region_of(offset);
        let tree = w.trees.get(&region).ok_or_else(|| {
            SyncError::protocol(format!("Read outside the scan window at {offset}"))
        })?;
        let first_leaf = ((offset - region) / u64::from(*block)) as usize;
        for (i, piece) in buf.chunks(*block as usize).enumerate() {
            let expected = tree.level(0).get(first_leaf + i);
            if expected != Some(&blake3::hash(piece)) {
                return Err(RemoteError::SourceChanged {
                    path: path.clone(),
                    offset: offset + (i * *block as usize) as u64,
                }
                .into());
            }
        }
    }
    if is_zero(&buf) {
        return Ok(Message::Data {
            offset,
            len,
            encoding: Encoding::Zero,
            payload: Vec::new(),
        });
    }
    let compressed = zstd::bulk::compress(&buf, 1)
        .ok()
        .filter(|c| c.len() < buf.len());
    Ok(match compressed {
        Some(c) => Message::Data {
            offset,
            len,
            encoding: Encoding::Zstd,
            payload: c,
        },
        None => Message::Data {
            offset,
            len,
            encoding: Encoding::Raw,
            payload: buf,
        },
    })
}

/// Decodes a `Data`/`Write` payload.
///
/// # Errors
/// [`SyncError::Protocol`] when the payload does not decode to `len` bytes.
pub fn decode_payload(
    len: u32,
    encoding: Encoding,
    payload: &[u8],
) -> Result<Option<Vec<u8>>, SyncError> {
    match encoding {
        Encoding::Zero => Ok(None),
        Encoding::Raw => Ok(Some(payload.to_vec())),
        Encoding::Zstd => {
            let out = zstd::bulk::decompress(payload, len as usize)
                .map_err(|e| SyncError::protocol(format!("bad zstd payload: {e}")))?;
            if out.len() != len as usize {
                return Err(SyncError::protocol(
                    "zstd payload has the wrong length".into(),
                ));
            }
            Ok(Some(out))
        }
    }
}

fn write_target(
    role: &mut Role,
    shared: &Shared,
    offset: u64,
    len: u32,
    encoding: Encoding,
    payload: &[u8],
) -> Result<(), SyncError> {
    let Role::Target {
        output,
        block,
        written,
        dry_run,
        ..
    } = role
    else {
        return Err(SyncError::protocol("Write sent to a source".into()));
    };
    if *dry_run {
        return Err(SyncError::protocol("Write in a dry run".into()));
    }
    let Some(out) = output.as_ref() else {
        return Err(SyncError::protocol("Write without a target".into()));
    };
    let b = u64::from(*block);
    if !offset.is_multiple_of(b) || len as usize > crate::remote::MAX_DATA {
        return Err(SyncError::protocol(format!(
            "bad Write of {len} bytes at {offset}"
        )));
    }
    let data = decode_payload(len, encoding, payload)?;
    match &data {
        Some(d) if out.kind() == OutputKind::File => out.write_punching_zeros(offset, d)?,
        Some(d) => out.write_at(offset, d)?,
        None => {
            if out.kind() == OutputKind::BlockDevice {
                out.zero_range(offset, u64::from(len))?;
            } else {
                out.discard_range(offset, u64::from(len))?;
            }
        }
    }
    *written += u64::from(len);
    let mut w = shared.lock();
    let region = region_of(offset);
    let tree = w
        .trees
        .get_mut(&region)
        .ok_or_else(|| SyncError::protocol(format!("Write outside the scan window at {offset}")))?;
    let first_leaf = ((offset - region) / b) as usize;
    let mut at = 0usize;
    let mut leaf = first_leaf;
    while at < len as usize {
        let n = (len as usize - at).min(*block as usize);
        let hash = match &data {
            Some(d) => blake3::hash(&d[at..at + n]),
            None => zero_leaf(n),
        };
        tree.set_leaf(leaf, hash);
        at += n;
        leaf += 1;
    }
    Ok(())
}

fn finish(role: &mut Role, size: u64) -> Result<u64, SyncError> {
    match role {
        Role::Source { size: s, .. } => Ok(*s),
        Role::Target {
            output,
            state,
            written,
            ..
        } => {
            if let Some(out) = output.as_ref() {
                if out.kind() == OutputKind::File {
                    out.set_len(size)?;
                }
                out.sync()?;
            }
            if let Some(s) = state.take() {
                s.remove()?;
            }
            Ok(*written)
        }
    }
}
