//! The driver: compares the two endpoints' hash trees as they stream in
//! and moves only the differing blocks from source to target.
//!
//! ```text
//!  source endpoint ──Region roots──┐                   ┌──Region roots── target endpoint
//!                  <──GetNodes──── │  driver (select)  │ ────GetNodes──>
//!                  ──Nodes───────> │  descends into    │ <───Nodes─────
//!                  <──Read──────── │  differing nodes  │
//!                  ──Data────────> │  ──────Write───────────────────────>
//!                  <──Release───── └───────────────────┘ ────Release───>
//! ```
//! Everything is pipelined: many regions are compared at once, limited by
//! the endpoints' scan window and by [`MAX_READ_IN_FLIGHT`], so a long
//! round-trip time costs throughput only when the window is too small.
//! Regions are released in order, which is the order of the final chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::select;
use serde::Serialize;

use super::endpoint::CHAIN_START;
use super::SyncError;
use crate::change::merkle::{FANOUT, REGION_SIZE};
use crate::change::{Run, RunCoalescer};
use crate::remote::connection::Connection;
use crate::remote::message::{Message, ObjectKind, WireHash, OPEN_CREATE, OPEN_DRY_RUN, VERSION};
use crate::remote::{RemoteError, MAX_DATA};

/// Bytes of `Read` requests the driver keeps outstanding.
pub const MAX_READ_IN_FLIGHT: u64 = 32 << 20;

/// Validated options of `sync`.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Leaf block size.
    pub block: u32,
    /// Report what would change; write nothing.
    pub dry_run: bool,
    /// Bytes compared so far (for progress).
    pub compared: Option<Arc<AtomicU64>>,
    /// Bytes of changed blocks moved so far (for progress).
    pub moved: Option<Arc<AtomicU64>>,
    /// Set to the source size once known (for progress).
    pub total: Option<Arc<AtomicU64>>,
}

/// What a sync did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncSummary {
    /// Source size.
    pub source_size: u64,
    /// Target size before the sync.
    pub target_size_before: u64,
    /// Where comparison started (non-zero after resuming).
    pub resumed_from: u64,
    /// Bytes compared.
    pub bytes_compared: u64,
    /// Changed blocks found.
    pub changed_blocks: u64,
    /// Bytes of changed blocks (written, or that would be).
    pub changed_bytes: u64,
    /// Payload bytes of the changed blocks as moved (compressed).
    pub payload_bytes: u64,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// True when the final chains of both ends matched.
    pub verified: bool,
}

#[derive(Debug, Default)]
struct RegionState {
    len: u64,
    src_root: Option<WireHash>,
    dst_root: Option<WireHash>,
    /// Node requests sent and not yet answered by both ends.
    open_queries: usize,
    /// Differing leaves found.
    leaves: BTreeSet<u32>,
    /// Reads not yet sent (coalesced runs).
    to_read: Vec<Run>,
    reads_out: usize,
    compared: bool,
}

#[derive(Debug, Default)]
struct NodePair {
    src: Option<Vec<WireHash>>,
    dst: Option<Vec<WireHash>>,
}

fn depth_for(len: u64, block: u32) -> u8 {
    let mut nodes = len.div_ceil(u64::from(block)).max(1);
    let mut levels = 1u8;
    while nodes > 1 {
        nodes = nodes.div_ceil(FANOUT as u64);
        levels += 1;
    }
    levels
}

fn expect_hello(c: &mut Connection) -> Result<(), SyncError> {
    match c.recv()? {
        Message::Hello { version } if version == VERSION => Ok(()),
        Message::Hello { version } => Err(RemoteError::Version {
            ours: VERSION,
            theirs: version,
        }
        .into()),
        other => Err(SyncError::unexpected(other.name(), "Hello")),
    }
}

struct Opened {
    kind: ObjectKind,
    size: u64,
    id: [u8; 32],
    resume_from: u64,
    resume_chain: [u8; 32],
}

fn expect_opened(c: &mut Connection) -> Result<Opened, SyncError> {
    match c.recv()? {
        Message::Opened {
            kind,
            size,
            id,
            resume_from,
            resume_chain,
        } => Ok(Opened {
            kind,
            size,
            id,
            resume_from,
            resume_chain,
        }),
        other => Err(SyncError::unexpected(other.name(), "Opened")),
    }
}

/// Runs a sync between two connected endpoints.
///
/// # Errors
/// Any endpoint's error, a lost connection, or [`SyncError::Verify`].
pub fn run(
    src: &mut Connection,
    dst: &mut Connection,
    src_path: &Path,
    dst_path: &Path,
    options: &SyncOptions,
) -> Result<SyncSummary, SyncError> {
    use std::os::unix::ffi::OsStrExt;
    src.send(Message::Hello { version: VERSION })?;
    dst.send(Message::Hello { version: VERSION })?;
    expect_hello(src)?;
    src.handshake_done();
    expect_hello(dst)?;
    dst.handshake_done();
    src.send(Message::OpenSource {
        block: options.block,
        path: src_path.as_os_str().as_bytes().to_vec(),
    })?;
    let source = expect_opened(src)?;
    let mut flags = OPEN_CREATE;
    if options.dry_run {
        flags |= OPEN_DRY_RUN;
    }
    dst.send(Message::OpenTarget {
        block: options.block,
        flags,
        source_size: source.size,
        source_id: source.id,
        path: dst_path.as_os_str().as_bytes().to_vec(),
        name: src_path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default(),
    })?;
    if let Some(total) = &options.total {
        total.store(source.size, Ordering::Relaxed);
    }
    let target = expect_opened(dst)?;
    let _ = source.kind;
    let (start, chain) = if target.resume_from > 0
        && target.resume_from <= source.size
        && target.resume_from.is_multiple_of(REGION_SIZE)
    {
        (target.resume_from, target.resume_chain)
    } else {
        (0, CHAIN_START)
    };
    let mut session = Session {
        block: options.block,
        end: source.size,
        regions: BTreeMap::new(),
        pairs: HashMap::new(),
        next_release: start,
        reads_in_flight: 0,
        read_queue: Vec::new(),
        summary: SyncSummary {
            source_size: source.size,
            target_size_before: target.size,
            resumed_from: start,
            bytes_compared: 0,
            changed_blocks: 0,
            changed_bytes: 0,
            payload_bytes: 0,
            dry_run: options.dry_run,
            verified: false,
        },
        options: options.clone(),
    };
    if target.kind == ObjectKind::Missing && options.dry_run {
        // Nothing to read on the target side: every non-zero block changes.
    }
    if start < source.size {
        src.send(Message::Scan {
            start,
            end: source.size,
            chain,
        })?;
        dst.send(Message::Scan {
            start,
            end: source.size,
            chain,
        })?;
        let idle = crate::remote::connection::idle_timeout()
            .unwrap_or(std::time::Duration::from_secs(u64::MAX / 4));
        while session.next_release < session.end {
            select! {
                recv(src.replies()) -> m => {
                    let m = match m { Ok(m) => src.check(m)?, Err(_) => return Err(src.failure().into()) };
                    session.on_source(m, src, dst)?;
                }
                recv(dst.replies()) -> m => {
                    let m = match m { Ok(m) => dst.check(m)?, Err(_) => return Err(dst.failure().into()) };
                    session.on_target(m, src, dst)?;
                }
                default(idle) => {
                    // Neither end spoke: the one owed a reply is stalled.
                    return Err(if dst.is_remote() && !src.is_remote() { dst.stalled() } else { src.stalled() }.into());
                }
            }
        }
    }
    src.send(Message::Finish { size: source.size })?;
    dst.send(Message::Finish { size: source.size })?;
    let src_chain = expect_done(src)?;
    let dst_chain = expect_done(dst)?;
    if !options.dry_run {
        if src_chain != dst_chain {
            return Err(SyncError::Verify);
        }
        session.summary.verified = true;
    }
    Ok(session.summary)
}

fn expect_done(c: &mut Connection) -> Result<[u8; 32], SyncError> {
    loop {
        match c.recv()? {
            Message::Done { chain, .. } => return Ok(chain),
            // Region roots past the end of a shortened scan may still arrive.
            Message::Region { .. } => {}
            other => return Err(SyncError::unexpected(other.name(), "Done")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Source,
    Target,
}

struct Session {
    block: u32,
    end: u64,
    regions: BTreeMap<u64, RegionState>,
    pairs: HashMap<(u64, u8, u32), NodePair>,
    next_release: u64,
    reads_in_flight: u64,
    read_queue: Vec<(u64, Run)>,
    summary: SyncSummary,
    options: SyncOptions,
}

impl Session {
    fn on_source(
        &mut self,
        m: Message,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        match m {
            Message::Data {
                offset,
                len,
                encoding,
                payload,
            } => {
                self.reads_in_flight = self.reads_in_flight.saturating_sub(u64::from(len));
                self.summary.payload_bytes += payload.len() as u64;
                if let Some(p) = &self.options.moved {
                    p.fetch_add(u64::from(len), Ordering::Relaxed);
                }
                if !self.options.dry_run {
                    dst.send(Message::Write {
                        offset,
                        len,
                        encoding,
                        payload,
                    })?;
                }
                let region = offset - offset % REGION_SIZE;
                if let Some(r) = self.regions.get_mut(&region) {
                    r.reads_out = r.reads_out.saturating_sub(1);
                }
                self.pump_reads(src)?;
                self.release_ready(src, dst)
            }
            other => self.on_tree(Side::Source, other, src, dst),
        }
    }

    fn on_target(
        &mut self,
        m: Message,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        self.on_tree(Side::Target, m, src, dst)
    }

    /// Region roots and node replies, which both ends send.
    fn on_tree(
        &mut self,
        side: Side,
        m: Message,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        match m {
            Message::Region { offset, len, root } => {
                let r = self.regions.entry(offset).or_default();
                r.len = len;
                match side {
                    Side::Source => r.src_root = Some(root),
                    Side::Target => r.dst_root = Some(root),
                }
                self.try_compare(offset, src, dst)
            }
            Message::Nodes {
                region,
                level,
                first,
                hashes,
            } => {
                let pair = self.pairs.entry((region, level, first)).or_default();
                match side {
                    Side::Source => pair.src = Some(hashes),
                    Side::Target => pair.dst = Some(hashes),
                }
                self.on_pair(region, level, first, src, dst)
            }
            other => Err(SyncError::unexpected(
                other.name(),
                match side {
                    Side::Source => "Region, Nodes or Data from the source",
                    Side::Target => "Region or Nodes from the target",
                },
            )),
        }
    }

    fn try_compare(
        &mut self,
        offset: u64,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        let Some(r) = self.regions.get_mut(&offset) else {
            return Ok(());
        };
        let (Some(a), Some(b)) = (r.src_root, r.dst_root) else {
            return Ok(());
        };
        if r.compared {
            return Ok(());
        }
        r.compared = true;
        self.summary.bytes_compared += r.len;
        if let Some(p) = &self.options.compared {
            p.fetch_add(r.len, Ordering::Relaxed);
        }
        if a != b {
            let top = depth_for(r.len, self.block) - 1;
            if top == 0 {
                r.leaves.insert(0);
            } else {
                self.query(offset, top - 1, 0, src, dst)?;
            }
        }
        self.after_queries(offset, src, dst)
    }

    fn query(
        &mut self,
        region: u64,
        level: u8,
        first: u32,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        if let Some(r) = self.regions.get_mut(&region) {
            r.open_queries += 1;
        }
        let m = Message::GetNodes {
            region,
            level,
            first,
            count: FANOUT as u32,
        };
        src.send(m.clone())?;
        Ok(dst.send(m)?)
    }

    fn on_pair(
        &mut self,
        region: u64,
        level: u8,
        first: u32,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        let key = (region, level, first);
        let ready = self
            .pairs
            .get(&key)
            .is_some_and(|p| p.src.is_some() && p.dst.is_some());
        if !ready {
            return Ok(());
        }
        let Some(NodePair {
            src: Some(a),
            dst: Some(b),
        }) = self.pairs.remove(&key)
        else {
            return Ok(());
        };
        let n = a.len().max(b.len());
        let mut children = Vec::new();
        for i in 0..n {
            if a.get(i) != b.get(i) {
                children.push(first + i as u32);
            }
        }
        if let Some(r) = self.regions.get_mut(&region) {
            r.open_queries = r.open_queries.saturating_sub(1);
            if level == 0 {
                r.leaves.extend(children.iter().copied());
                children.clear();
            }
        }
        for c in children {
            self.query(region, level - 1, c * FANOUT as u32, src, dst)?;
        }
        self.after_queries(region, src, dst)
    }

    /// When a region's comparison is complete, queue reads of its changed
    /// leaves (or release it when nothing changed).
    fn after_queries(
        &mut self,
        region: u64,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        let block = u64::from(self.block);
        let Some(r) = self.regions.get_mut(&region) else {
            return Ok(());
        };
        if !r.compared || r.open_queries > 0 {
            return Ok(());
        }
        let mut coalescer = RunCoalescer::default();
        let mut runs = Vec::new();
        for &leaf in &r.leaves {
            let start = region + u64::from(leaf) * block;
            let end = (start + block).min(region + r.len);
            if start >= end {
                continue;
            }
            self.summary.changed_blocks += 1;
            self.summary.changed_bytes += end - start;
            let run = Run {
                offset: start,
                len: end - start,
            };
            if let Some(done) = coalescer.push(run) {
                runs.push(done);
            }
        }
        runs.extend(coalescer.finish());
        r.leaves.clear();
        for run in runs {
            let mut at = run.offset;
            while at < run.end() {
                let len = (run.end() - at).min(MAX_DATA as u64);
                r.to_read.push(Run { offset: at, len });
                at += len;
            }
        }
        for run in r.to_read.drain(..) {
            r.reads_out += 1;
            self.read_queue.push((region, run));
        }
        self.pump_reads(src)?;
        self.release_ready(src, dst)
    }

    fn pump_reads(&mut self, src: &mut Connection) -> Result<(), SyncError> {
        while self.reads_in_flight < MAX_READ_IN_FLIGHT && !self.read_queue.is_empty() {
            let (_, run) = self.read_queue.remove(0);
            self.reads_in_flight += run.len;
            src.send(Message::Read {
                offset: run.offset,
                len: run.len as u32,
            })?;
        }
        Ok(())
    }

    /// Releases, in order, the regions whose blocks have all moved.
    fn release_ready(
        &mut self,
        src: &mut Connection,
        dst: &mut Connection,
    ) -> Result<(), SyncError> {
        while let Some(r) = self.regions.get(&self.next_release) {
            let done =
                r.compared && r.open_queries == 0 && r.reads_out == 0 && r.to_read.is_empty();
            if !done {
                break;
            }
            let len = r.len;
            self.regions.remove(&self.next_release);
            src.send(Message::Release {
                region: self.next_release,
            })?;
            dst.send(Message::Release {
                region: self.next_release,
            })?;
            self.next_release += len.max(1);
        }
        Ok(())
    }
}
