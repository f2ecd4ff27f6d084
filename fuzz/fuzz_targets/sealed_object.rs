//! Sealed objects (envelopes, blobs, pack tables) opened with a fixed key
//! over arbitrary bytes: never panics, and nothing but what the key sealed
//! opens. The first byte picks what is opened: 0 an envelope of each kind,
//! 1 a chunk blob, 2 a pack table; bit 7 seals the rest first (with a
//! flipped byte when bit 6 is set too), so the opening paths are reached.
#![no_main]

use diskdelta::format::pack::TableSeal;
use diskdelta::format::sealed::Kind;
use diskdelta::id::ChunkId;
use diskdelta::repo::crypto::{Crypto, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let crypto = Crypto::new(&MasterKey::from_bytes(&[0x5a; 64]));
    let id = ChunkId::of(b"fuzz");
    let seal = mode & 0x80 != 0;
    let flip = mode & 0x40 != 0;
    let damage = |mut b: Vec<u8>| {
        if flip && !b.is_empty() {
            let i = rest.len() % b.len();
            b[i] ^= 1;
        }
        b
    };
    match mode & 3 {
        0 => {
            for kind in [Kind::Config, Kind::Index, Kind::Snapshot] {
                let bytes = if seal {
                    damage(crypto.seal_object(kind, rest))
                } else {
                    rest.to_vec()
                };
                match crypto.open_object(kind, &bytes) {
                    Ok(inner) => assert!(seal && !flip && inner == rest),
                    Err(_) => assert!(!seal || flip),
                }
            }
        }
        1 => {
            let bytes = if seal {
                damage(crypto.seal_blob(&id, 1, 7, rest))
            } else {
                rest.to_vec()
            };
            let mut out = Vec::new();
            match crypto.open_blob(&id, 1, 7, &bytes, &mut out) {
                Ok(()) => assert!(seal && !flip && out == rest),
                Err(_) => assert!(!seal || flip),
            }
        }
        _ => {
            let bytes = if seal {
                damage(crypto.seal_table(rest, 3))
            } else {
                rest.to_vec()
            };
            match crypto.open_table(&bytes, 3) {
                Some(table) => assert!(seal && !flip && table == rest),
                None => assert!(!seal || flip),
            }
        }
    }
});
