//! The native delta reader over arbitrary bytes: never panics, and what it
//! accepts is consistent.
//!
//! The first byte selects how to read (low 4 bits: bytes per `read` call,
//! 0 for all at once) and how to prepare the rest (high bits):
//! - 0: as is;
//! - 1: magic, version (1; 2 when bit 2 of the mode is set; 3 when bit 3
//!   is set too) and header length forced, header check resealed, so the
//!   record parser is reached;
//! - 2: as 1, and every record checksum resealed (and the trailer's header
//!   and record-sequence digests set), so payload decoding and the
//!   trailer's consistency checks are reached too. Reference-compressed
//!   records (version 2) and copy records (version 3) are decoded against
//!   `reference(length)`.
#![no_main]

use diskdelta::format::delta::{
    DeltaReader, Header, Trailer, HEADER_LEN, MAGIC, RECORD_HEADER_LEN,
};
use diskdelta::format::ExtentData;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{control, Chunky, OrderCheck};

const KIND_ZERO: u8 = 3;
const KIND_ZSTD: u8 = 2;
const KIND_ZSTD_REF: u8 = 4;
const KIND_COPY: u8 = 5;

/// What the fuzzer pretends OLD holds under a reference record.
fn reference(length: u64) -> Vec<u8> {
    (0..length.min(1 << 20)).map(|i| (i % 251) as u8).collect()
}

fn decompress_against(payload: &[u8], reference: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(reference).ok()?;
    let mut out = Vec::with_capacity(cap);
    dctx.decompress(&mut out, payload).ok()?;
    Some(out)
}
const KIND_END: u8 = 255;

fn reseal_header(d: &mut [u8], version: u16) {
    d[0..8].copy_from_slice(&MAGIC);
    d[8..10].copy_from_slice(&version.to_le_bytes());
    d[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    let check = blake3::hash(&d[0..56]);
    d[56..64].copy_from_slice(&check.as_bytes()[0..8]);
}

fn le_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Rewrites every record checksum so it matches (as far as the record can
/// be decoded), and the trailer's digests of the header and the records.
fn reseal_records(d: &mut [u8]) {
    let header_digest = blake3::hash(&d[0..HEADER_LEN]);
    let mut sums = blake3::Hasher::new();
    let mut p = HEADER_LEN;
    while p + RECORD_HEADER_LEN <= d.len() {
        let kind = d[p];
        let stored = u32::from_le_bytes([d[p + 4], d[p + 5], d[p + 6], d[p + 7]]) as usize;
        let length = le_u64(&d[p + 16..]);
        let start = p + RECORD_HEADER_LEN;
        let end = start.saturating_add(stored).min(d.len());
        if kind == KIND_END && end - start >= 168 {
            d[start + 104..start + 136].copy_from_slice(sums.finalize().as_bytes());
            d[start + 136..start + 168].copy_from_slice(header_digest.as_bytes());
        }
        let mut h = blake3::Hasher::new();
        h.update(&d[p..p + 24]);
        match kind {
            KIND_ZERO => {}
            KIND_ZSTD => {
                let cap = length.min(1 << 24) as usize;
                if let Ok(data) = zstd::bulk::decompress(&d[start..end], cap) {
                    h.update(&data);
                }
            }
            KIND_COPY => {
                h.update(&reference(length));
            }
            KIND_ZSTD_REF => {
                let cap = length.min(1 << 20) as usize;
                if let Some(data) = decompress_against(&d[start..end], &reference(length), cap) {
                    h.update(&data);
                }
            }
            _ => {
                h.update(&d[start..end]);
            }
        }
        let sum = h.finalize();
        d[p + 24..p + 56].copy_from_slice(sum.as_bytes());
        if kind == KIND_END {
            break;
        }
        sums.update(sum.as_bytes());
        p = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((step, mode, rest)) = control(data) else {
        return;
    };
    let mut bytes = rest.to_vec();

    // The layout parsers on their own, on the raw bytes.
    if bytes.len() >= HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        if let Ok(header) = Header::decode(&h) {
            assert_eq!(
                header.encode(),
                h,
                "a header that decodes re-encodes identically"
            );
        }
    }
    for change_tracked in [false, true] {
        if let Ok(t) = Trailer::decode(&bytes, change_tracked) {
            assert_eq!(
                t.encode(),
                bytes,
                "a trailer that decodes re-encodes identically"
            );
        }
    }

    if mode % 4 != 0 && bytes.len() >= HEADER_LEN {
        let version = match (mode & 4 != 0, mode & 8 != 0) {
            (false, _) => 1,
            (true, false) => 2,
            (true, true) => 3,
        };
        reseal_header(&mut bytes, version);
        if mode % 4 >= 2 {
            reseal_records(&mut bytes);
        }
    }

    let Ok(mut reader) = DeltaReader::new(Chunky { data: &bytes, step }) else {
        return;
    };
    let header = *reader.header();
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd");
    let mut order = OrderCheck::new();
    let (mut count, mut changed, mut stored) = (0u64, 0u64, 0u64);
    loop {
        match reader.next_record() {
            Err(_) => return,
            Ok(None) => break,
            Ok(Some(raw)) => {
                let (offset, length) = (raw.offset, raw.length);
                assert_eq!(raw.index, count);
                count += 1;
                changed += length;
                stored += raw.stored_len();
                if let Some(n) = header.new_size {
                    assert!(offset + length <= n, "record past the header's NEW size");
                }
                match raw.decode(&mut decompressor) {
                    Ok(mut extent) => {
                        assert_eq!((extent.offset, extent.len()), (offset, length));
                        if let ExtentData::Referenced(raw) = &extent.data {
                            assert!(header.version >= 2, "reference records from version 2 on");
                            if raw.copy_source().is_some() {
                                assert!(
                                    header.version >= 3 && header.copies,
                                    "copy records only in version 3 with the flag"
                                );
                            }
                            match raw.decode_against(&reference(length)) {
                                Ok(bytes) => {
                                    assert_eq!(bytes.len() as u64, length);
                                    assert!(raw.holds(&bytes));
                                    extent.data = ExtentData::Bytes(bytes);
                                }
                                Err(_) => return,
                            }
                        }
                        order.check(&extent);
                    }
                    Err(_) => return,
                }
            }
        }
    }
    // A clean read: the trailer agrees with what was read.
    let trailer = reader.trailer().expect("trailer after the end").clone();
    assert_eq!(reader.position(), bytes.len() as u64);
    assert_eq!(trailer.record_count, count);
    assert_eq!(
        (trailer.changed_bytes, trailer.stored_bytes),
        (changed, stored)
    );
    assert!(order.end() <= trailer.new_size);
    assert_eq!(trailer.old_digest.is_none(), header.change_tracked);
    assert!(header.old_size.is_none_or(|s| s == trailer.old_size));
    assert!(header.new_size.is_none_or(|s| s == trailer.new_size));
    assert!(matches!(reader.next_record(), Ok(None)));
});
