//! The snapshot decoder over arbitrary bytes, and its chunk-id iterator:
//! never panics; an accepted snapshot's counts agree with its size; and a
//! snapshot whose whole list reads back is written again by
//! `SnapshotWriter` into a file that decodes to the same metadata and ids
//! (not the same bytes: JSON and zstd may encode differently).
//!
//! The first byte: bit 0, reseal: magic and version forced and the trailing
//! BLAKE3 recomputed, so the JSON and the list are reached (seeds are the
//! golden snapshots of tests/golden/repo/).
#![no_main]

use diskdelta::format::snapshot::{chunk_count, Snapshot, SnapshotWriter, MAGIC, VERSION};
use diskdelta::id::{ChunkId, SnapshotId};
use libfuzzer_sys::fuzz_target;

/// Ids read at most (a small zstd frame can expand enormously).
const MAX_IDS: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 && bytes.len() >= 16 + 16 + 32 {
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let body = bytes.len() - 32;
        let sum = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(sum.as_bytes());
    }
    let Ok(snap) = Snapshot::decode(&bytes) else {
        return;
    };
    assert_eq!(snap.id, SnapshotId::of(&bytes));
    assert_ne!(snap.meta.chunk_size, 0);
    assert_eq!(
        snap.count,
        chunk_count(snap.meta.size, snap.meta.chunk_size)
    );
    let Ok(ids) = snap.chunk_ids() else {
        return;
    };
    let mut list: Vec<ChunkId> = Vec::new();
    let mut complete = true;
    for (n, id) in ids.enumerate() {
        if n as u64 >= MAX_IDS {
            complete = false;
            break;
        }
        match id {
            Ok(id) => list.push(id),
            Err(_) => return,
        }
    }
    if !complete {
        return;
    }
    assert_eq!(list.len() as u64, snap.count, "a clean list has count ids");
    let mut w = SnapshotWriter::new().expect("zstd encoder");
    for id in &list {
        w.push(id).expect("push");
    }
    let (again, id) = w.finish(&snap.meta).expect("encode");
    let back = Snapshot::decode(&again).expect("a written snapshot decodes");
    assert_eq!(back.id, id);
    assert_eq!(back.meta, snap.meta);
    let back_ids: Vec<ChunkId> = back
        .chunk_ids()
        .expect("ids")
        .collect::<Result<_, _>>()
        .expect("a written list reads back");
    assert_eq!(back_ids, list);
});
