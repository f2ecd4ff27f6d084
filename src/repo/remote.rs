//! Backups of remote sources, deduplicated on the wire against the whole
//! repository: `diskdelta serve` on the remote host reads and hashes the
//! source and offers each 4 MiB unit's chunk ids; this side answers with
//! the chunks the repository lacks, and only those cross the network
//! (compressed, verified here by id, sealed here in an encrypted
//! repository: the remote host never holds the key). Messages: `OpenBackup`,
//! `Offer`, `Need`, `Blobs`, `Resend`, `Finish`, `Done` (spec:
//! `docs/formats/wire.md`).
//!
//! ```text
//!  repository host (driver)                      remote host (source)
//!  ────────────────────────                      ────────────────────
//!                     <── Offer{seq, ids} ─────── reads, hashes, holds the unit
//!  index + run claims ─── Need{seq, bits} ──────> compresses the needed chunks
//!  sink <─────────────── Blobs{seq, chunks} ──────┘
//!  (after the image) ─── Resend{seq, bits} ─────> reads those chunks again
//!                    ─── Finish{size} ──────────> Done{image digest, bytes read}
//! ```
//!
//! Nothing waits for a round trip: the remote keeps offering while
//! earlier units' answers are on their way (its held units bound the
//! memory), and this side answers each offer as it arrives.
//!
//! Parallel remote sources of one run share chunks through
//! [`super::claims`]: a chunk both need crosses the wire once.

mod source;

pub use source::{serve_backup_source, HELD_UNITS};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crossbeam_channel::bounded;

use super::backup::{BackupSession, BackupSummary, ChunkOutcome, Unit, UNIT_SIZE};
use super::claims::ClaimOutcome;
use super::RepoError;
use crate::digest::Digest;
use crate::format::pack::Encoding;
use crate::id::{ChunkId, IdBuildHasher};
use crate::pipeline;
use crate::remote::connection::Connection;
use crate::remote::message::{set_bit, Message, WireBlob};
use crate::remote::RemoteError;

/// Units decided but not yet handed to the sink.
const SINK_QUEUE: usize = 8;

/// A unit whose needed chunks are on their way.
struct Awaited {
    outcomes: Vec<Option<ChunkOutcome>>,
    ids: Vec<Option<ChunkId>>,
    need: Vec<usize>,
}

/// What the driver learned besides the units.
struct DriverEnd {
    digest: Digest,
    bytes_read: u64,
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
    conn.send_hello()?;
    let chunk_size = session.chunk_size();
    conn.send(Message::OpenBackup {
        chunk_size: chunk_size as u32,
        path: path.as_os_str().as_bytes().to_vec(),
    })?;
    conn.expect_hello()?;
    let size = match conn.recv()? {
        Message::Opened { size, .. } => size,
        other => return Err(RemoteError::unexpected(other.name(), "Opened").into()),
    };
    let (unit_tx, unit_rx) = bounded::<Unit>(SINK_QUEUE);
    std::thread::scope(|s| {
        let driver = s.spawn(move || drive(session, conn, size, &unit_tx));
        session.commit(unit_rx, || {
            let end = driver
                .join()
                .unwrap_or(Err(RepoError::Internal("remote driver panicked")))?;
            Ok((size, Some(end.digest), end.bytes_read, 0))
        })
    })
}

/// Chunks in unit `seq` of an image of `size` bytes.
fn chunks_in_unit(size: u64, seq: u64, chunk_size: usize) -> usize {
    let start = seq * UNIT_SIZE as u64;
    let len = size.saturating_sub(start).min(UNIT_SIZE as u64);
    (len as usize).div_ceil(chunk_size)
}

fn drive(
    session: &BackupSession,
    conn: &mut Connection,
    size: u64,
    units_out: &crossbeam_channel::Sender<Unit>,
) -> Result<DriverEnd, RepoError> {
    let cancel = session.cancel();
    let units = size.div_ceil(UNIT_SIZE as u64);
    let emit = |unit: Unit| {
        cancel
            .send(units_out, unit)
            .map_err(|_| RepoError::Stopped("backup sink"))
    };
    // Decompressing, hashing and sealing what arrives takes more than one
    // core at network speed: verifiers share it, the sink restores order.
    let verifiers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let (fill_tx, fill_rx) = bounded::<(u64, Awaited, Vec<WireBlob>)>(verifiers);
    let borrowed = pipeline::scope(cancel, |s| {
        let handles: Vec<_> = (0..verifiers)
            .map(|_| {
                let fill_rx = fill_rx.clone();
                let emit = &emit;
                s.spawn("verifier", move || -> Result<(), RepoError> {
                    while let Ok((seq, mut unit, blobs)) = cancel.recv(&fill_rx) {
                        fill(session, &mut unit, blobs, seq)?;
                        emit(finished_unit(seq, units, unit.outcomes, false))?;
                    }
                    Ok(())
                })
            })
            .collect();
        drop(fill_rx);
        let mut result = receive_image(session, conn, size, &emit, &fill_tx);
        drop(fill_tx);
        for handle in handles {
            let joined = handle
                .join()
                .unwrap_or(Err(RepoError::Internal("verifier panicked")));
            result = pipeline::both(result, joined).map(|(b, ())| b);
        }
        result
    })?;
    resend_unkept(session, conn, size, borrowed, &emit)?;
    conn.send(Message::Finish { size })?;
    match conn.recv()? {
        Message::Done { chain, bytes } => Ok(DriverEnd {
            digest: Digest::from_bytes(chain),
            bytes_read: bytes,
        }),
        other => Err(RemoteError::unexpected(other.name(), "Done").into()),
    }
}

/// Receives the image's offers and blobs: answers each offer, hands each
/// unit to the sink (or, with blobs, to the verifiers). Returns the chunks
/// borrowed from parallel backups.
fn receive_image(
    session: &BackupSession,
    conn: &mut Connection,
    size: u64,
    emit: &(dyn Fn(Unit) -> Result<(), RepoError> + Sync),
    verify: &crossbeam_channel::Sender<(u64, Awaited, Vec<WireBlob>)>,
) -> Result<Vec<(u64, usize, ChunkId)>, RepoError> {
    let cancel = session.cancel();
    let chunk_size = session.chunk_size();
    let units = size.div_ceil(UNIT_SIZE as u64);
    let index = session.index();
    let claims = session.claims();
    // Chunks this backup asked for, when no run registry is shared.
    let mut requested: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    let mut borrowed: Vec<(u64, usize, ChunkId)> = Vec::new();
    let mut awaited: BTreeMap<u64, Awaited> = BTreeMap::new();
    let (mut offered, mut completed) = (0u64, 0u64);
    while completed < units {
        if cancel.is_cancelled() {
            return Err(RepoError::Stopped("remote backup"));
        }
        match conn.recv()? {
            Message::Offer { seq, ids } => {
                if seq != offered || seq >= units {
                    return Err(protocol(format!("Offer of unit {seq}, expected {offered}")));
                }
                if ids.len() != chunks_in_unit(size, seq, chunk_size) {
                    return Err(protocol(format!(
                        "Offer of unit {seq} has {} chunks",
                        ids.len()
                    )));
                }
                offered += 1;
                let ids: Vec<Option<ChunkId>> = ids
                    .into_iter()
                    .map(|i| i.map(ChunkId::from_bytes))
                    .collect();
                let mut outcomes = Vec::with_capacity(ids.len());
                let mut need = Vec::new();
                let mut bits = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let Some(id) = id else {
                        outcomes.push(Some(ChunkOutcome::Zero));
                        continue;
                    };
                    let fetch = if index.contains(id) {
                        false
                    } else if let Some((claims, owner)) = claims {
                        match claims.claim(index.stored_id(id), owner) {
                            ClaimOutcome::Claimed => true,
                            ClaimOutcome::Own => false,
                            ClaimOutcome::Borrowed => {
                                borrowed.push((seq, i, *id));
                                false
                            }
                        }
                    } else {
                        requested.insert(*id)
                    };
                    if fetch {
                        set_bit(&mut bits, ids.len(), i);
                        need.push(i);
                        outcomes.push(None);
                    } else {
                        outcomes.push(Some(ChunkOutcome::Known(*id)));
                    }
                }
                conn.send(Message::Need { seq, bits })?;
                if need.is_empty() {
                    emit(finished_unit(seq, units, outcomes, false))?;
                    completed += 1;
                } else {
                    awaited.insert(
                        seq,
                        Awaited {
                            outcomes,
                            ids,
                            need,
                        },
                    );
                }
            }
            Message::Blobs { seq, blobs } => {
                let unit = awaited
                    .remove(&seq)
                    .ok_or_else(|| protocol(format!("Blobs for unit {seq}, which needs none")))?;
                if cancel.send(verify, (seq, unit, blobs)).is_err() {
                    return Err(RepoError::Stopped("remote backup"));
                }
                completed += 1;
            }
            other => return Err(RemoteError::unexpected(other.name(), "Offer or Blobs").into()),
        }
    }
    Ok(borrowed)
}

/// Borrowed chunks whose lender stored them are listed in this backup's
/// index file; the others are read again from this backup's own source.
fn resend_unkept(
    session: &BackupSession,
    conn: &mut Connection,
    size: u64,
    borrowed: Vec<(u64, usize, ChunkId)>,
    emit: &(dyn Fn(Unit) -> Result<(), RepoError> + Sync),
) -> Result<(), RepoError> {
    let Some((claims, _)) = session.claims() else {
        return Ok(());
    };
    let index = session.index();
    let chunk_size = session.chunk_size();
    let mut again: BTreeMap<u64, Vec<(usize, ChunkId)>> = BTreeMap::new();
    let mut listed: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    for (seq, i, id) in borrowed {
        let stored_id = index.stored_id(&id);
        match claims.wait_resolved(&stored_id, session.cancel()) {
            Some((pack, entry)) => {
                if listed.insert(stored_id) {
                    session.add_borrowed(pack, entry);
                }
            }
            None => again.entry(seq).or_default().push((i, id)),
        }
    }
    let mut requested: HashMap<u64, Awaited> = HashMap::new();
    for (seq, chunks) in again {
        let n = chunks_in_unit(size, seq, chunk_size);
        let mut bits = Vec::new();
        let mut ids = vec![None; n];
        for (i, id) in &chunks {
            set_bit(&mut bits, n, *i);
            ids[*i] = Some(*id);
        }
        conn.send(Message::Resend { seq, bits })?;
        requested.insert(
            seq,
            Awaited {
                outcomes: (0..n).map(|_| None).collect(),
                ids,
                need: chunks.iter().map(|(i, _)| *i).collect(),
            },
        );
    }
    while !requested.is_empty() {
        match conn.recv()? {
            Message::Blobs { seq, blobs } => {
                let mut unit = requested
                    .remove(&seq)
                    .ok_or_else(|| protocol(format!("Blobs for unit {seq}, not asked again")))?;
                fill(session, &mut unit, blobs, seq)?;
                emit(finished_unit(seq, 0, unit.outcomes, true))?;
            }
            other => return Err(RemoteError::unexpected(other.name(), "Blobs").into()),
        }
    }
    Ok(())
}

/// Verifies the blobs a unit waited for and puts them in place.
fn fill(
    session: &BackupSession,
    unit: &mut Awaited,
    blobs: Vec<WireBlob>,
    seq: u64,
) -> Result<(), RepoError> {
    if blobs.len() != unit.need.len()
        || blobs
            .iter()
            .zip(&unit.need)
            .any(|(b, i)| usize::from(b.index) != *i)
    {
        return Err(protocol(format!(
            "Blobs of unit {seq} are not the chunks asked for"
        )));
    }
    let repo = session.repo();
    for blob in blobs {
        let i = usize::from(blob.index);
        let id = unit.ids[i].ok_or(RepoError::Internal("blob for a zero chunk"))?;
        let encoding =
            Encoding::from_byte(blob.encoding).ok_or(RepoError::Internal("bad encoding"))?;
        let payload = check_blob(&id, blob.raw_len, encoding, blob.payload)?;
        // The remote side never holds the key: what it sent is sealed here.
        let sealed = repo.seal_blob(&repo.stored_id(&id), encoding, blob.raw_len, payload);
        unit.outcomes[i] = Some(ChunkOutcome::New {
            id,
            raw_len: blob.raw_len,
            encoding,
            blob: sealed,
        });
    }
    Ok(())
}

/// A unit ready for the sink; the image's last one flushes the open pack
/// (parallel backups may be waiting for its chunks).
fn finished_unit(
    seq: u64,
    units: u64,
    outcomes: Vec<Option<ChunkOutcome>>,
    appendix: bool,
) -> Unit {
    Unit {
        seq,
        chunks: outcomes.into_iter().flatten().collect(),
        segments: Vec::new(),
        appendix,
        flush: !appendix && seq + 1 == units,
    }
}

fn protocol(text: String) -> RepoError {
    RepoError::Remote(RemoteError::Protocol(text))
}

/// Checks a chunk received from the network against its id before it is
/// stored: the remote side is trusted to read, not to be right.
fn check_blob(
    id: &ChunkId,
    raw_len: u32,
    encoding: Encoding,
    payload: Vec<u8>,
) -> Result<Vec<u8>, RepoError> {
    let plain;
    let data: &[u8] = if encoding == Encoding::Zstd {
        plain = zstd::bulk::decompress(&payload, raw_len as usize)
            .map_err(|e| protocol(format!("chunk {id}: bad zstd data: {e}")))?;
        &plain
    } else {
        &payload
    };
    if data.len() != raw_len as usize || ChunkId::of(data) != *id {
        return Err(protocol(format!("chunk {id} does not match its id")));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use crossbeam_channel::{Receiver, Sender};

    use super::*;
    use crate::repo::backup::BackupOptions;
    use crate::repo::claims::Claims;
    use crate::repo::{no_password, InitOptions, Repository};
    use crate::service::ServiceError;

    const MIB: usize = 1 << 20;

    fn image(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut counter = 0u64;
        while out.len() < len {
            let block = blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat());
            out.extend_from_slice(block.as_bytes());
            counter += 1;
        }
        out.truncate(len);
        out
    }

    fn options(name: &str) -> BackupOptions {
        BackupOptions {
            name: name.into(),
            source: name.into(),
            host: "test".into(),
            ..BackupOptions::default()
        }
    }

    /// The real backup source of `diskdelta serve`, on a thread.
    fn real_source(name: &str) -> Connection {
        Connection::local(name, |requests, replies| {
            crate::remote::serve::serve(requests, replies, |first, rq, rp| {
                crate::service::route(&Default::default(), first, rq, rp)
            })
        })
    }

    /// A source that offers the first unit of `data`, reports the `Need`,
    /// then fails when told to: a lender that dies holding promises.
    fn failing_source(data: Vec<u8>, needed: Sender<()>, fail: Receiver<()>) -> Connection {
        Connection::local("failing", move |requests, replies| {
            crate::remote::serve::serve(requests, replies, move |_first, rq, rp| {
                let send = |m| crate::remote::serve::send(rp, m);
                send(Message::Opened {
                    kind: crate::remote::message::ObjectKind::File,
                    size: data.len() as u64,
                    id: [0; 32],
                    resume_from: 0,
                    resume_chain: [0; 32],
                })?;
                let ids = data[..UNIT_SIZE]
                    .chunks(MIB)
                    .map(|c| Some(*ChunkId::of(c).as_bytes()))
                    .collect();
                send(Message::Offer { seq: 0, ids })?;
                match rq.recv() {
                    Ok(Message::Need { .. }) => {}
                    other => panic!("expected Need, got {other:?}"),
                }
                let _ = needed.send(());
                let _ = fail.recv();
                Err::<(), ServiceError>(RemoteError::Protocol("source died".into()).into())
            })
        })
    }

    #[test]
    fn a_borrower_sends_again_what_a_failed_lender_promised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        std::fs::create_dir_all(&root).expect("mkdir");
        let init = InitOptions {
            chunk_size: MIB as u32,
            encrypt: false,
            ..InitOptions::default()
        };
        let password = no_password("test");
        let repo = Repository::open_local(&root, Some(&init), &password).expect("repo");
        let data = image(8 * MIB, 1);
        let path: PathBuf = dir.path().join("b.img");
        std::fs::write(&path, &data).expect("image");
        let claims = Arc::new(Claims::new());
        let (needed_tx, needed_rx) = crossbeam_channel::bounded(1);
        let (fail_tx, fail_rx) = crossbeam_channel::bounded(1);
        std::thread::scope(|s| {
            let lender = s.spawn(|| {
                let mut session = BackupSession::start(&repo, options("a")).expect("session a");
                session.share_claims(claims.clone());
                let mut conn = failing_source(data.clone(), needed_tx, fail_rx);
                let result = run_remote(&session, &mut conn, Path::new("/a"));
                drop(session);
                result
            });
            // The lender has claimed unit 0's four chunks.
            needed_rx.recv().expect("the lender's Need");
            let borrower = s.spawn(|| {
                let mut session = BackupSession::start(&repo, options("b")).expect("session b");
                session.share_claims(claims.clone());
                let mut conn = real_source("b");
                run_remote(&session, &mut conn, &path)
            });
            // The borrower reaches its end and waits for the lender.
            std::thread::sleep(std::time::Duration::from_millis(500));
            assert!(
                !borrower.is_finished(),
                "the borrower waits for the lender's promise"
            );
            fail_tx.send(()).expect("fail the lender");
            assert!(lender.join().expect("lender").is_err());
            let summary = borrower
                .join()
                .expect("borrower")
                .expect("borrower's backup");
            assert_eq!(summary.new_chunks, 8, "{summary:?}");
        });
        let snapshot = repo.resolve("b").expect("snapshot b");
        let (index, _) = repo.load_index_lenient().expect("index");
        let ids: Vec<(usize, ChunkId)> = snapshot
            .chunk_ids()
            .expect("ids")
            .map(|i| i.expect("id"))
            .enumerate()
            .collect();
        let mut out = vec![0u8; data.len()];
        let mut decoder = crate::repo::ChunkDecoder::new().expect("decoder");
        crate::repo::restore::fetch_chunks(&repo, &index, &ids, MIB, &mut out, &mut decoder)
            .expect("every chunk of b is stored");
        assert!(out == data, "b restores");
    }
}
