//! The signature reader over arbitrary bytes: never panics, and what it
//! accepts is consistent. Also `delta::read_ends` (the trailer of a delta
//! found from the end of the file) over the same bytes.
//!
//! The first byte selects how to read (low 4 bits: bytes per `read` call,
//! 0 for all at once) and how to prepare the rest (high bits):
//! - 0: as is;
//! - 1: magic, version and header check forced, the body digest and the
//!   trailer's checksum resealed, so the frame and trailer consistency
//!   checks are reached.
#![no_main]

use std::io::Cursor;

use diskdelta::format::delta;
use diskdelta::format::signature::{Header, SignatureReader, HASH_LEN, HEADER_LEN, MAGIC};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{control, Chunky};

fn reseal(d: &mut [u8]) {
    d[0..8].copy_from_slice(&MAGIC);
    d[8..10].copy_from_slice(&1u16.to_le_bytes());
    d[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    let check = blake3::hash(&d[0..56]);
    d[56..64].copy_from_slice(&check.as_bytes()[0..8]);
    // Walk the frames as a reader would, hashing them.
    let mut body = blake3::Hasher::new();
    body.update(&d[0..HEADER_LEN]);
    let mut p = HEADER_LEN;
    loop {
        if p + 4 > d.len() {
            return;
        }
        let n = u32::from_le_bytes([d[p], d[p + 1], d[p + 2], d[p + 3]]) as usize;
        let end = p + 4 + n.min(4096) * HASH_LEN;
        if end > d.len() {
            return;
        }
        body.update(&d[p..end]);
        p = end;
        if n == 0 {
            break;
        }
    }
    if p + 88 > d.len() {
        return;
    }
    d[p + 48..p + 80].copy_from_slice(body.finalize().as_bytes());
    let samples = u32::from_le_bytes([d[p + 80], d[p + 81], d[p + 82], d[p + 83]]) as usize;
    let body_end = p + 88 + samples.min(4096) * 40;
    if body_end + 32 <= d.len() {
        let check = blake3::hash(&d[p..body_end]);
        d[body_end..body_end + 32].copy_from_slice(check.as_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((step, mode, rest)) = control(data) else {
        return;
    };
    let mut bytes = rest.to_vec();

    // A delta's ends, found from the end of the file.
    if let Ok((header, trailer)) = delta::read_ends(&mut Cursor::new(&bytes)) {
        assert!(header.old_size.is_none_or(|s| s == trailer.old_size));
        assert!(header.new_size.is_none_or(|s| s == trailer.new_size));
    }

    if bytes.len() >= HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        if let Ok(header) = Header::decode(&h) {
            assert_eq!(header.encode(), h, "a header that decodes re-encodes identically");
        }
        if mode % 2 == 1 {
            reseal(&mut bytes);
        }
    }

    let Ok(mut reader) = SignatureReader::new(Chunky { data: &bytes, step }) else {
        return;
    };
    let header = *reader.header();
    let mut count = 0u64;
    loop {
        match reader.next_hash() {
            Err(_) => return,
            Ok(None) => break,
            Ok(Some(_)) => count += 1,
        }
    }
    let trailer = reader.trailer().expect("trailer after the end").clone();
    assert_eq!(trailer.block_count, count);
    assert_eq!(header.blocks_of(trailer.image_size), count);
    assert!(header.image_size.is_none_or(|s| s == trailer.image_size));
    let bs = u64::from(header.block_size);
    assert!(trailer
        .samples
        .iter()
        .all(|s| (s.block + 1) * bs <= trailer.image_size));
    assert!(matches!(reader.next_hash(), Ok(None)));
});
