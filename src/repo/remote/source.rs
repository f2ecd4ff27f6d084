//! The remote side of a remote backup: `diskdelta serve` after
//! `OpenBackup` reads and hashes the source, offers each unit's chunk ids,
//! and compresses only the chunks the repository says it lacks.
//!
//! ```text
//!  reader ─> hash workers ─> offer collector ──Offer{seq, ids}──────────> repository
//!                                  │ held units (bounded: HELD_UNITS)
//!  repository ──Need{seq, bits}──> responder ─> compress workers ─> blob sender ──Blobs──>
//!             ──Resend{seq, bits}─┘ (reads the unit again)
//!             ──Finish{size}──────> Done{image digest, bytes read}
//! ```
//!
//! Held units keep their buffers until the repository answers, so the
//! wire's round trip is hidden behind `HELD_UNITS` units in flight and
//! memory stays bounded whatever the source's size.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::digest::SEGMENT_SIZE;
use crate::id::ChunkId;
use crate::io::reader::{Chunk, ChunkReader, ReaderOptions, Recycler};
use crate::io::{Input, InputKind, InputOptions};
use crate::pipeline::{self, Cancel};
use crate::remote::message::{bit, Message, ObjectKind, WireBlob};
use crate::remote::RemoteError;
use crate::repo::backup::{encode_chunk, UNIT_SIZE};

/// Units whose bytes are kept until the repository answers, by default:
/// 128 MiB, a 100 ms round trip at 1.3 GB/s.
pub const HELD_UNITS: usize = 32;

/// Units offered ahead of the answers at most (their ids only: 16 GiB of
/// the source for a few hundred KiB of memory).
const MAX_AHEAD: usize = 4096;

/// Answers remembered to judge whether running ahead pays.
const RECENT: usize = 16;

/// A unit offered and not yet answered.
enum Held {
    /// Its bytes, kept.
    Data(Chunk),
    /// Its bytes were let go (the repository has lately needed little):
    /// read again if it asks for any, and checked against these ids.
    Dropped(Vec<Option<ChunkId>>),
}

/// Whether the last answers needed data: while they mostly did not (a
/// clone, an incremental), the source runs ahead of the answers past its
/// kept bytes, so a slow link's round trip does not stall it; while they
/// mostly did (a first backup), it waits, so nothing is read twice.
#[derive(Default)]
struct Recent(std::sync::Mutex<std::collections::VecDeque<bool>>);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<bool>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, needed: bool) {
        let mut r = self.lock();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(needed);
    }

    /// At most a quarter of the last (at least 8) answers needed data.
    fn sparse(&self) -> bool {
        let r = self.lock();
        r.len() >= RECENT / 2 && r.iter().filter(|n| **n).count() * 4 <= r.len()
    }
}

/// Compression level of the remote side.
const REMOTE_LEVEL: i32 = crate::repo::DEFAULT_COMPRESSION_LEVEL;

/// Units held, from `DISKDELTA_WIRE_WINDOW` (MiB) or the default.
fn held_units() -> usize {
    std::env::var("DISKDELTA_WIRE_WINDOW")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(HELD_UNITS, |mib| (mib / (UNIT_SIZE >> 20)).clamp(1, 1024))
}

/// The bytes a compress job reads: a held unit or one read again.
enum Payload {
    Held(Chunk),
    Reread(Vec<u8>),
}

impl Payload {
    fn data(&self) -> &[u8] {
        match self {
            Payload::Held(c) => c.data(),
            Payload::Reread(v) => v,
        }
    }
}

struct CompressJob {
    job: u64,
    seq: u64,
    payload: Payload,
    bits: Vec<u8>,
    /// For a unit read again after its bytes were let go: the ids it was
    /// offered with, which the new read must match.
    expect: Option<Vec<Option<ChunkId>>>,
}

/// Serves one backup source after `OpenBackup`.
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
    let send = |m: Message| crate::remote::serve::send(replies, m);
    send(Message::Opened {
        kind,
        size,
        id: [0; 32],
        resume_from: 0,
        resume_chain: [0; 32],
    })?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let held = held_units();
    let cancel = Cancel::new();
    let mut reader = ChunkReader::spawn(
        input,
        ReaderOptions {
            chunk_size: UNIT_SIZE,
            depth: threads * 2 + 3 + held,
            digest: true,
            cancel: Some(cancel.clone()),
            ..ReaderOptions::default()
        },
    );
    let recycler = reader.recycler();
    let (hash_tx, hash_rx) = bounded::<(u64, Chunk)>(threads);
    let (hashed_tx, hashed_rx) = bounded::<(u64, Chunk, Vec<Option<ChunkId>>)>(threads * 2);
    let (held_tx, held_rx) = bounded::<(u64, Held)>(MAX_AHEAD);
    // One token per unit whose bytes may be kept.
    let (slot_tx, slot_rx) = bounded::<()>(held);
    for _ in 0..held {
        let _ = slot_tx.try_send(());
    }
    let recent = Recent::default();
    let recent = &recent;
    let (job_tx, job_rx) = bounded::<CompressJob>(threads);
    let (blobs_tx, blobs_rx) = bounded::<(u64, u64, Vec<WireBlob>, Payload)>(threads * 2);
    pipeline::scope(&cancel, |s| -> Result<(), RemoteError> {
        let cancel = &cancel;
        let feeder = s.spawn("reader", move || -> Result<_, RemoteError> {
            let mut seq = 0u64;
            let mut bytes_read = 0u64;
            while let Some(chunk) = reader.next_chunk() {
                let chunk = chunk?;
                if !chunk.hole {
                    bytes_read += chunk.len as u64;
                }
                if cancel.send(&hash_tx, (seq, chunk)).is_err() {
                    reader.abandon();
                    return Err(RemoteError::Protocol("backup stopped".into()));
                }
                seq += 1;
            }
            drop(hash_tx);
            let summary = reader.finish()?;
            Ok((summary, bytes_read))
        });
        for _ in 0..threads {
            let hash_rx = hash_rx.clone();
            let hashed_tx = hashed_tx.clone();
            s.spawn("hasher", move || -> Result<(), RemoteError> {
                while let Ok((seq, chunk)) = cancel.recv(&hash_rx) {
                    let ids = chunk_ids(&chunk, chunk_size);
                    if cancel.send(&hashed_tx, (seq, chunk, ids)).is_err() {
                        break;
                    }
                }
                Ok(())
            });
        }
        drop(hash_rx);
        drop(hashed_tx);
        let offer_recycler = recycler.clone();
        s.spawn("offers", move || -> Result<(), RemoteError> {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            while let Ok((seq, chunk, ids)) = cancel.recv(&hashed_rx) {
                pending.insert(seq, (chunk, ids));
                while let Some((chunk, ids)) = pending.remove(&next) {
                    let keep = slot_rx.try_recv().is_ok()
                        || (!recent.sparse() && cancel.recv(&slot_rx).is_ok());
                    let entry = if keep {
                        Held::Data(chunk)
                    } else {
                        offer_recycler.recycle(chunk);
                        Held::Dropped(ids.clone())
                    };
                    // Held before offered: the answer finds it waiting.
                    if cancel.send(&held_tx, (next, entry)).is_err() {
                        return Ok(());
                    }
                    send(Message::Offer {
                        seq: next,
                        ids: ids.into_iter().map(|i| i.map(|i| *i.as_bytes())).collect(),
                    })?;
                    next += 1;
                }
            }
            Ok(())
        });
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let blobs_tx = blobs_tx.clone();
            s.spawn("compressor", move || -> Result<(), RemoteError> {
                let mut compressor = zstd::bulk::Compressor::new(REMOTE_LEVEL)
                    .map_err(|e| RemoteError::Protocol(format!("zstd setup failed: {e}")))?;
                while let Ok(job) = cancel.recv(&job_rx) {
                    let data = job.payload.data();
                    let count = data.len().div_ceil(chunk_size);
                    let mut blobs = Vec::new();
                    for i in (0..count).filter(|&i| bit(&job.bits, i)) {
                        let piece = &data[i * chunk_size..((i + 1) * chunk_size).min(data.len())];
                        if let Some(ids) = &job.expect {
                            if ids.get(i).copied().flatten() != Some(ChunkId::of(piece)) {
                                return Err(RemoteError::SourceChanged {
                                    path: path.to_path_buf(),
                                    offset: job.seq * UNIT_SIZE as u64 + (i * chunk_size) as u64,
                                });
                            }
                        }
                        let (encoding, payload) = encode_chunk(&mut compressor, piece);
                        blobs.push(WireBlob {
                            index: i as u16,
                            raw_len: piece.len() as u32,
                            encoding: encoding as u8,
                            payload,
                        });
                    }
                    if cancel
                        .send(&blobs_tx, (job.job, job.seq, blobs, job.payload))
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(())
            });
        }
        drop(job_rx);
        drop(blobs_tx);
        let recycle = recycler.clone();
        let blob_sender = s.spawn("blobs", move || -> Result<(), RemoteError> {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            while let Ok((job, seq, blobs, payload)) = cancel.recv(&blobs_rx) {
                pending.insert(job, (seq, blobs, payload));
                while let Some((seq, blobs, payload)) = pending.remove(&next) {
                    if let Payload::Held(chunk) = payload {
                        recycle.recycle(chunk);
                    }
                    send(Message::Blobs { seq, blobs })?;
                    next += 1;
                }
            }
            Ok(())
        });
        let final_size = respond(
            &Responder {
                path,
                size,
                held: &held_rx,
                slots: &slot_tx,
                recent,
                jobs: &job_tx,
                recycler: &recycler,
                cancel,
            },
            requests,
        )?;
        drop(job_tx);
        drop(held_rx);
        blob_sender
            .join()
            .unwrap_or_else(|_| Err(RemoteError::Protocol("blob sender panicked".into())))?;
        let Some(final_size) = final_size else {
            return Ok(());
        };
        let (summary, bytes_read) = feeder
            .join()
            .unwrap_or_else(|_| Err(RemoteError::Protocol("reader panicked".into())))?;
        if summary.bytes != final_size {
            return Err(RemoteError::SourceChanged {
                path: path.to_path_buf(),
                offset: summary.bytes.min(final_size),
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

/// The ids of a unit's chunks, `None` for all-zero ones.
fn chunk_ids(chunk: &Chunk, chunk_size: usize) -> Vec<Option<ChunkId>> {
    let count = chunk.len.div_ceil(chunk_size);
    if chunk.hole {
        return vec![None; count];
    }
    let data = chunk.data();
    (0..count)
        .map(|i| {
            let piece = &data[i * chunk_size..((i + 1) * chunk_size).min(data.len())];
            if crate::digest::is_zero(piece) {
                return None;
            }
            let segment = (chunk_size == SEGMENT_SIZE)
                .then(|| chunk.segment_hash(i).map(|h| ChunkId::from(*h)))
                .flatten();
            Some(segment.unwrap_or_else(|| ChunkId::of(piece)))
        })
        .collect()
}

/// What answers the repository's requests works with.
struct Responder<'a> {
    path: &'a Path,
    size: u64,
    held: &'a Receiver<(u64, Held)>,
    slots: &'a Sender<()>,
    recent: &'a Recent,
    jobs: &'a Sender<CompressJob>,
    recycler: &'a Recycler,
    cancel: &'a Cancel,
}

impl Responder<'_> {
    /// Unit `seq` read again from the source.
    fn read_unit(
        &self,
        file: &mut Option<std::fs::File>,
        seq: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let offset = seq.saturating_mul(UNIT_SIZE as u64);
        if offset >= self.size {
            return Err(RemoteError::Protocol(format!(
                "unit {seq} is past the end of the source"
            )));
        }
        let len = (self.size - offset).min(UNIT_SIZE as u64) as usize;
        let path = self.path.to_path_buf();
        let file = match file {
            Some(f) => f,
            None => file.insert(std::fs::File::open(&path).map_err(|source| {
                crate::io::IoError::Open {
                    path: path.clone(),
                    source,
                }
            })?),
        };
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, offset)
            .map_err(|source| crate::io::IoError::Read {
                path,
                offset,
                source,
            })?;
        Ok(data)
    }
}

/// Answers the repository's `Need` and `Resend` until `Finish` (its size)
/// or the end of the requests (`None`).
fn respond(r: &Responder<'_>, requests: &Receiver<Message>) -> Result<Option<u64>, RemoteError> {
    let mut job = 0u64;
    let mut reread: Option<std::fs::File> = None;
    let stopped = || RemoteError::Protocol("backup stopped".into());
    while let Ok(m) = r.cancel.recv(requests) {
        let (seq, payload, bits, expect) = match m {
            Message::Need { seq, bits } => {
                let (held_seq, entry) = r.cancel.recv(r.held).map_err(|_| stopped())?;
                if held_seq != seq {
                    return Err(RemoteError::Protocol(format!(
                        "Need for unit {seq}, expected {held_seq}"
                    )));
                }
                let needed = bits.iter().any(|b| *b != 0);
                r.recent.record(needed);
                match entry {
                    Held::Data(chunk) => {
                        let _ = r.slots.try_send(());
                        if !needed {
                            r.recycler.recycle(chunk);
                            continue;
                        }
                        (seq, Payload::Held(chunk), bits, None)
                    }
                    Held::Dropped(_) if !needed => continue,
                    Held::Dropped(ids) => (
                        seq,
                        Payload::Reread(r.read_unit(&mut reread, seq)?),
                        bits,
                        Some(ids),
                    ),
                }
            }
            Message::Resend { seq, bits } => (
                seq,
                Payload::Reread(r.read_unit(&mut reread, seq)?),
                bits,
                None,
            ),
            Message::Finish { size } => return Ok(Some(size)),
            other => {
                return Err(RemoteError::unexpected(
                    other.name(),
                    "Need, Resend or Finish",
                ))
            }
        };
        let sent = r.cancel.send(
            r.jobs,
            CompressJob {
                job,
                seq,
                payload,
                bits,
                expect,
            },
        );
        if sent.is_err() {
            return Err(stopped());
        }
        job += 1;
    }
    Ok(None)
}
