//! Backups of remote sources: `diskdelta serve` reads, hashes, compares
//! with the previous snapshot's chunk ids and compresses on the remote
//! host; only chunks that differ from the previous snapshot cross the
//! network. Messages: `OpenBackup`, `Want`, `Chunks`, `Finish`, `Done`
//! (spec: `docs/formats/wire.md`).
//!
//! ```text
//!  repository host                               remote host (serve)
//!  ─────────────────                             ────────────────────────────────
//!  Want{seq, previous ids} ── up to WINDOW ahead ─> reader ─> workers (hash, compare,
//!  sink <── Chunks{seq: zero | same id | new blob} ──┘           compress) ─> in order
//!  Finish{size} ──────────────────────────────────> Done{image digest, bytes read}
//! ```
//!
//! The window bounds memory on both ends: the remote reads ahead only as
//! far as the repository side has asked.

use std::collections::BTreeMap;
use std::path::Path;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::backup::{
    classify_unit, BackupSession, BackupSummary, ChunkOutcome, Dedup, PreviousIds, Unit, UNIT_SIZE,
};
use super::RepoError;
use crate::digest::{Digest, SEGMENT_SIZE};
use crate::format::pack::Encoding;
use crate::id::ChunkId;
use crate::io::reader::{Chunk, ChunkReader, ReaderOptions, Recycler};
use crate::io::{Input, InputKind, InputOptions};
use crate::pipeline::{self, Cancel};
use crate::remote::connection::Connection;
use crate::remote::message::{ChunkEntry, Message, ObjectKind};
use crate::remote::RemoteError;

/// Units requested ahead of those received.
pub const WINDOW: u64 = 8;

/// Default compression level of the remote side (the repository's level is
/// sent implicitly by the chunk encoding; the remote uses this one).
const REMOTE_LEVEL: i32 = super::DEFAULT_COMPRESSION_LEVEL;

fn to_entry(o: ChunkOutcome) -> ChunkEntry {
    match o {
        ChunkOutcome::Zero => ChunkEntry::Zero,
        ChunkOutcome::Known(id) => ChunkEntry::Same(*id.as_bytes()),
        ChunkOutcome::New {
            id,
            raw_len,
            encoding,
            blob,
        } => ChunkEntry::New {
            id: *id.as_bytes(),
            raw_len,
            encoding: encoding as u8,
            payload: blob,
        },
    }
}

/// The remote side: serves one backup source after `OpenBackup`.
///
/// # Errors
/// Open and read failures, protocol errors.
pub fn serve_backup_source(
    chunk_size: u32,
    path: &Path,
    requests: &Receiver<Message>,
    replies: &Sender<Message>,
) -> Result<(), RemoteError> {
    let chunk_size = chunk_size as usize;
    if !chunk_size.is_power_of_two() || chunk_size < 4096 || !UNIT_SIZE.is_multiple_of(chunk_size) {
        return Err(RemoteError::Protocol(format!(
            "bad chunk size {chunk_size}"
        )));
    }
    let input = Input::open(path, &InputOptions::default())?;
    let kind = match input.kind() {
        InputKind::BlockDevice => ObjectKind::BlockDevice,
        InputKind::File => ObjectKind::File,
        _ => {
            return Err(RemoteError::NotSeekable {
                path: path.to_path_buf(),
            })
        }
    };
    let size = input.size().unwrap_or(0);
    let send = |m: Message| {
        replies.send(m).map_err(|_| RemoteError::Disconnected {
            peer: "repository".into(),
        })
    };
    send(Message::Opened {
        kind,
        size,
        id: [0; 32],
        resume_from: 0,
        resume_chain: [0; 32],
    })?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cancel = Cancel::new();
    let mut reader = ChunkReader::spawn(
        input,
        ReaderOptions {
            chunk_size: UNIT_SIZE,
            depth: threads + 3,
            digest: true,
            cancel: Some(cancel.clone()),
            ..ReaderOptions::default()
        },
    );
    let recycler = reader.recycler();
    let (work_tx, work_rx) = bounded::<(u64, Chunk, Vec<ChunkId>)>(threads);
    let (done_tx, done_rx) = bounded::<(u64, Vec<ChunkOutcome>)>(threads * 2);
    let dedup = Dedup::new(None, None);
    let mut bytes_read = 0u64;
    pipeline::scope(&cancel, |s| -> Result<(), RemoteError> {
        let cancel = &cancel;
        for _ in 0..threads {
            let work = work_rx.clone();
            let done = done_tx.clone();
            let recycler: Recycler = recycler.clone();
            let dedup = &dedup;
            s.spawn("worker", move || -> Result<(), RemoteError> {
                let mut compressor = zstd::bulk::Compressor::new(REMOTE_LEVEL)
                    .map_err(|e| RemoteError::Protocol(format!("zstd setup failed: {e}")))?;
                while let Ok((seq, chunk, prev)) = cancel.recv(&work) {
                    let outcomes = if chunk.hole {
                        (0..chunk.len.div_ceil(chunk_size))
                            .map(|_| ChunkOutcome::Zero)
                            .collect()
                    } else {
                        let per_segment = chunk_size == SEGMENT_SIZE;
                        let ids = |i: usize| {
                            per_segment
                                .then(|| chunk.segment_hash(i).map(|h| ChunkId::from(*h)))
                                .flatten()
                        };
                        classify_unit(
                            chunk.data(),
                            chunk_size,
                            &ids,
                            &prev,
                            dedup,
                            &mut compressor,
                        )
                    };
                    recycler.recycle(chunk);
                    if cancel.send(&done, (seq, outcomes)).is_err() {
                        break;
                    }
                }
                Ok(())
            });
        }
        drop(work_rx);
        drop(done_tx);
        let collector = s.spawn("collector", move || -> Result<(), RemoteError> {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            while let Ok((seq, outcomes)) = cancel.recv(&done_rx) {
                pending.insert(seq, outcomes);
                while let Some(o) = pending.remove(&next) {
                    send(Message::Chunks {
                        seq: next,
                        entries: o.into_iter().map(to_entry).collect(),
                    })?;
                    next += 1;
                }
            }
            Ok(())
        });
        let mut expected = 0u64;
        let mut final_size = None;
        while let Ok(m) = cancel.recv(requests) {
            match m {
                Message::Want { seq, prev } => {
                    if seq != expected {
                        return Err(RemoteError::Protocol(format!(
                            "asked for unit {seq}, expected {expected}"
                        )));
                    }
                    expected += 1;
                    let chunk = match reader.next_chunk() {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => return Err(e.into()),
                        None => {
                            return Err(RemoteError::Protocol(format!(
                                "unit {seq} is past the end of the source"
                            )))
                        }
                    };
                    if !chunk.hole {
                        bytes_read += chunk.len as u64;
                    }
                    let prev = prev.into_iter().map(ChunkId::from_bytes).collect();
                    if cancel.send(&work_tx, (seq, chunk, prev)).is_err() {
                        break;
                    }
                }
                Message::Finish { size: s } => {
                    final_size = Some(s);
                    break;
                }
                other => return Err(RemoteError::unexpected(other.name(), "Want or Finish")),
            }
        }
        drop(work_tx);
        collector
            .join()
            .unwrap_or_else(|_| Err(RemoteError::Protocol("collector panicked".into())))?;
        let Some(s) = final_size else {
            reader.abandon();
            return Ok(());
        };
        let summary = reader.finish()?;
        if summary.bytes != s {
            return Err(RemoteError::SourceChanged {
                path: path.to_path_buf(),
                offset: summary.bytes.min(s),
            });
        }
        let digest = summary
            .digest
            .ok_or_else(|| RemoteError::Protocol("no digest".into()))?;
        send(Message::Done {
            chain: *digest.as_bytes(),
            bytes: bytes_read,
        })
    })
}

/// The repository side: backs up `path` read by the remote end of `conn`.
///
/// # Errors
/// Connection and protocol failures, the remote's errors, storage failures.
pub fn run_remote(
    session: &BackupSession,
    conn: &mut Connection,
    path: &Path,
) -> Result<BackupSummary, RepoError> {
    use std::os::unix::ffi::OsStrExt;
    conn.handshake()?;
    let chunk_size = session.chunk_size();
    conn.send(Message::OpenBackup {
        chunk_size: chunk_size as u32,
        path: path.as_os_str().as_bytes().to_vec(),
    })?;
    let size = match conn.recv()? {
        Message::Opened { size, .. } => size,
        other => return Err(RemoteError::unexpected(other.name(), "Opened").into()),
    };
    let units = size.div_ceil(UNIT_SIZE as u64);
    let per_unit = UNIT_SIZE / chunk_size;
    let (unit_tx, unit_rx) = bounded::<Unit>(WINDOW as usize);
    let index = session.index();
    let repo = session.repo();
    std::thread::scope(|s| {
        let driver = s.spawn(move || -> Result<(Digest, u64), RepoError> {
            let mut prev_ids = PreviousIds::new(session.parent())?;
            let (mut sent, mut received) = (0u64, 0u64);
            while received < units {
                while sent < units && sent - received < WINDOW {
                    let len = (size - sent * UNIT_SIZE as u64).min(UNIT_SIZE as u64) as usize;
                    let n = len.div_ceil(chunk_size).min(per_unit);
                    let prev = prev_ids.take(n).iter().map(|id| *id.as_bytes()).collect();
                    conn.send(Message::Want { seq: sent, prev })?;
                    sent += 1;
                }
                match conn.recv()? {
                    Message::Chunks { seq, entries } if seq == received => {
                        let mut chunks = Vec::with_capacity(entries.len());
                        for e in entries {
                            chunks.push(match e {
                                ChunkEntry::Zero => ChunkOutcome::Zero,
                                ChunkEntry::Same(id) => {
                                    let id = ChunkId::from_bytes(id);
                                    if !index.contains(&id) {
                                        return Err(RepoError::MissingChunk { chunk: id });
                                    }
                                    ChunkOutcome::Known(id)
                                }
                                ChunkEntry::New {
                                    id,
                                    raw_len,
                                    encoding,
                                    payload,
                                } => {
                                    let blob = check_blob(id, raw_len, encoding, payload)?;
                                    let id = ChunkId::from_bytes(id);
                                    let encoding = Encoding::from_byte(encoding)
                                        .ok_or(RepoError::Internal("bad encoding"))?;
                                    // The remote side never holds the key:
                                    // what it sent is sealed here.
                                    let blob = repo.seal_blob(
                                        &repo.stored_id(&id),
                                        encoding,
                                        raw_len,
                                        blob,
                                    );
                                    ChunkOutcome::New {
                                        id,
                                        raw_len,
                                        encoding,
                                        blob,
                                    }
                                }
                            });
                        }
                        if unit_tx
                            .send(Unit {
                                seq,
                                chunks,
                                segments: Vec::new(),
                            })
                            .is_err()
                        {
                            return Err(RepoError::Stopped("backup sink"));
                        }
                        received += 1;
                    }
                    other => {
                        return Err(RemoteError::unexpected(other.name(), "Chunks").into());
                    }
                }
            }
            drop(unit_tx);
            conn.send(Message::Finish { size })?;
            match conn.recv()? {
                Message::Done { chain, bytes } => Ok((Digest::from_bytes(chain), bytes)),
                other => Err(RemoteError::unexpected(other.name(), "Done").into()),
            }
        });
        session.commit(unit_rx, || {
            let (digest, bytes_read) = driver
                .join()
                .unwrap_or(Err(RepoError::Internal("remote driver panicked")))?;
            Ok((size, Some(digest), bytes_read, 0))
        })
    })
}

/// Checks a chunk received from the network against its id before it is
/// stored: the remote side is trusted to read, not to be right.
fn check_blob(
    id: [u8; 32],
    raw_len: u32,
    encoding: u8,
    payload: Vec<u8>,
) -> Result<Vec<u8>, RepoError> {
    let id = ChunkId::from_bytes(id);
    let plain;
    let data: &[u8] = if encoding == Encoding::Zstd as u8 {
        plain = zstd::bulk::decompress(&payload, raw_len as usize).map_err(|e| {
            RepoError::Remote(RemoteError::Protocol(format!(
                "chunk {id}: bad zstd data: {e}"
            )))
        })?;
        &plain
    } else {
        &payload
    };
    if data.len() != raw_len as usize || ChunkId::of(data) != id {
        return Err(RepoError::Remote(RemoteError::Protocol(format!(
            "chunk {id} does not match its id"
        ))));
    }
    Ok(payload)
}
