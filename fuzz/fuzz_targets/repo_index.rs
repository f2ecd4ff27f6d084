//! The index-file decoder over arbitrary bytes: never panics, and what it
//! accepts encodes back to exactly the same bytes (the format has a single
//! encoding), with the same id.
//!
//! The first byte: bit 0, reseal: magic and version forced and the trailing
//! BLAKE3 recomputed, so the pack records are reached.
#![no_main]

use diskdelta::format::pack_index::{self, MAGIC, VERSION};
use diskdelta::id::IndexId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 && bytes.len() >= 16 + 32 {
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let body = bytes.len() - 32;
        let sum = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(sum.as_bytes());
    }
    let Ok(records) = pack_index::decode(&bytes) else {
        return;
    };
    let (again, id) = pack_index::encode(&records);
    assert_eq!(
        again, bytes,
        "an index file that decodes re-encodes identically"
    );
    assert_eq!(id, IndexId::of(&bytes));
});
