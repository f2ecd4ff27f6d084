//! Tests of the native delta format: golden files (pinned forever), the
//! writer/reader round trip, truncation and corruption at every byte, and
//! one test per reader check.

use super::*;

use crate::digest::image_digest;
use proptest::prelude::*;

// --- helpers ---------------------------------------------------------------

/// Reads a whole delta and decodes every record, as an apply would.
fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Extent>, Trailer)> {
    let mut reader = DeltaReader::new(bytes)?;
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompressor");
    let mut extents = Vec::new();
    while let Some(raw) = reader.next_record()? {
        extents.push(raw.decode(&mut decompressor)?);
    }
    let trailer = reader
        .trailer()
        .cloned()
        .expect("a reader that returned None has a trailer");
    assert_eq!(reader.position(), bytes.len() as u64);
    // Reading on after the end keeps saying "end".
    assert!(reader.next_record()?.is_none());
    Ok((*reader.header(), extents, trailer))
}

/// The error `read_all` must report.
fn read_err(bytes: &[u8]) -> DeltaFormatError {
    match read_all(bytes) {
        Ok((_, extents, trailer)) => {
            panic!(
                "read cleanly: {} extents, trailer {trailer:?}",
                extents.len()
            )
        }
        Err(e) => e,
    }
}

/// NEW = OLD cut or zero-extended to `new_size`, extents written over it.
fn apply(old: &[u8], new_size: u64, extents: &[Extent]) -> Vec<u8> {
    let mut out = old.to_vec();
    out.resize(usize::try_from(new_size).expect("small NEW"), 0);
    for e in extents {
        let at = usize::try_from(e.offset).expect("small offset");
        match &e.data {
            ExtentData::Bytes(b) => out[at..at + b.len()].copy_from_slice(b),
            ExtentData::Zeros(n) => out[at..at + *n as usize].fill(0),
            ExtentData::Referenced(raw) => {
                let decoded = raw
                    .decode_against(&reference_of(old, raw))
                    .expect("reference");
                out[at..at + decoded.len()].copy_from_slice(&decoded);
            }
        }
    }
    out
}

/// What a record that refers to OLD is decoded against: OLD as it was
/// before any record of the delta, at [`RawRecord::reference_range`] (a
/// copy record's source, a zstd-ref record's own range), zero past OLD's
/// end.
fn reference_of(old: &[u8], raw: &RawRecord) -> Vec<u8> {
    let range = raw.reference_range();
    let start = usize::try_from(range.start).expect("small offset");
    let end = usize::try_from(range.end).expect("small offset");
    let mut out = old[start.min(old.len())..end.min(old.len())].to_vec();
    out.resize(end - start, 0);
    out
}

/// NEW made from `old` and `extents` (records that refer to OLD decoded
/// against it), or `None` when a record does not decode.
fn applied_or_refused(old: &[u8], extents: &[Extent], new_size: u64) -> Option<Vec<u8>> {
    let mut out = old.to_vec();
    out.resize(new_size as usize, 0);
    for e in extents {
        let range = e.offset as usize..e.end() as usize;
        match &e.data {
            ExtentData::Bytes(b) => out[range].copy_from_slice(b),
            ExtentData::Zeros(_) => out[range].fill(0),
            ExtentData::Referenced(raw) => {
                let b = raw.decode_against(&reference_of(old, raw)).ok()?;
                out[range].copy_from_slice(&b);
            }
        }
    }
    Some(out)
}

/// The sampling rule of `docs/formats/delta.md`, restated naively: full
/// blocks of both OLD and NEW that no record touches, in order, whose index
/// is a multiple of a stride that doubles (dropping the samples that are no
/// longer multiples) whenever 128 samples are held.
fn reference_samples(old: &[u8], new: &[u8], block: usize, extents: &[Extent]) -> Vec<Sample> {
    let mut stride = 1u64;
    let mut samples: Vec<Sample> = Vec::new();
    for b in 0..old.len().min(new.len()) / block {
        let (start, end) = (b * block, (b + 1) * block);
        let touched = extents
            .iter()
            .any(|e| e.offset < end as u64 && e.end() > start as u64);
        if touched || !(b as u64).is_multiple_of(stride) {
            continue;
        }
        samples.push(Sample {
            block: b as u64,
            digest: Digest::of(&old[start..end]),
        });
        if samples.len() >= 128 {
            stride *= 2;
            samples.retain(|s| s.block.is_multiple_of(stride));
        }
    }
    samples
}

fn reseal_header(b: &mut [u8; HEADER_LEN]) {
    let check = blake3::hash(&b[0..56]);
    b[56..64].copy_from_slice(&check.as_bytes()[0..8]);
}

/// An end record carrying `body` with a correct checksum.
fn end_record_of(body: &[u8]) -> Vec<u8> {
    let prefix = record_prefix(KIND_END, body.len() as u32, 0, 0);
    let checksum = record_checksum(&prefix, Some(body));
    let mut out = prefix.to_vec();
    out.extend_from_slice(checksum.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A data record with any field values, checksum over `prefix ‖ data`.
fn record_bytes(kind: u8, stored_len: u32, offset: u64, length: u64, payload: &[u8]) -> Vec<u8> {
    let prefix = record_prefix(kind, stored_len, offset, length);
    let data = (kind != KIND_ZERO).then_some(payload);
    let checksum = record_checksum(&prefix, data);
    let mut out = prefix.to_vec();
    out.extend_from_slice(checksum.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn header(old: Option<u64>, new: Option<u64>) -> Header {
    Header {
        version: VERSION_1,
        block_size: 4096,
        old_size: old,
        new_size: new,
        change_tracked: false,
        copies: false,
    }
}

fn extent(offset: u64, bytes: &[u8]) -> Extent {
    Extent {
        offset,
        data: ExtentData::Bytes(bytes.to_vec()),
    }
}

fn zeros(offset: u64, len: u64) -> Extent {
    Extent {
        offset,
        data: ExtentData::Zeros(len),
    }
}

/// A delta made by hand, not by `DeltaWriter`, so records may break the
/// writer's rules; the trailer is what an honest writer would put there,
/// then `tweak`ed.
fn craft(header: Header, records: &[Vec<u8>], tweak: impl FnOnce(&mut Trailer)) -> Vec<u8> {
    let header_bytes = header.encode();
    let mut out = header_bytes.to_vec();
    let mut sums = blake3::Hasher::new();
    let (mut changed, mut stored) = (0, 0);
    for r in records {
        out.extend_from_slice(r);
        sums.update(&r[24..56]);
        changed += le_u64(r, 16);
        stored += u64::from(le_u32(r, 4));
    }
    let mut trailer = Trailer {
        old_size: header.old_size.unwrap_or(1 << 20),
        new_size: header.new_size.unwrap_or(1 << 20),
        record_count: records.len() as u64,
        changed_bytes: changed,
        stored_bytes: stored,
        old_digest: (!header.change_tracked).then(|| Digest::of(b"OLD")),
        new_digest: Digest::of(b"NEW"),
        records_digest: sums.finalize().into(),
        header_digest: Digest::of(&header_bytes),
        samples: vec![Sample {
            block: 3,
            digest: Digest::of(b"block 3"),
        }],
    };
    tweak(&mut trailer);
    out.extend_from_slice(&end_record_of(&trailer.encode()));
    out
}

fn rec(e: &Extent) -> Vec<u8> {
    encode_record(e, None).as_bytes().to_vec()
}

fn assert_corrupt_record(err: &DeltaFormatError, index: u64, needle: &str) {
    match err {
        DeltaFormatError::CorruptRecord {
            index: i, reason, ..
        } if *i == index && reason.contains(needle) => {}
        other => panic!("expected CorruptRecord {index} ({needle}), got {other:?}"),
    }
}

fn assert_corrupt_trailer(err: &DeltaFormatError, needle: &str) {
    match err {
        DeltaFormatError::CorruptTrailer { reason } if reason.contains(needle) => {}
        other => panic!("expected CorruptTrailer ({needle}), got {other:?}"),
    }
}

fn assert_corrupt_header(err: &DeltaFormatError, needle: &str) {
    match err {
        DeltaFormatError::CorruptHeader { reason } if reason.contains(needle) => {}
        other => panic!("expected CorruptHeader ({needle}), got {other:?}"),
    }
}

// --- golden files (tests/golden/delta, made by make.py there) ---------------

const OLD: &[u8] = include_bytes!("../../../tests/golden/delta/old.img");
const NEW_GROWN: &[u8] = include_bytes!("../../../tests/golden/delta/new-grown.img");
const NEW_SHRUNK: &[u8] = include_bytes!("../../../tests/golden/delta/new-shrunk.img");
const TINY_OLD: &[u8] = include_bytes!("../../../tests/golden/delta/tiny-old.img");
const TINY_NEW: &[u8] = include_bytes!("../../../tests/golden/delta/tiny-new.img");
const TINY_NONE: &[u8] = include_bytes!("../../../tests/golden/delta/tiny-none.delta");
const GROWN_NONE: &[u8] = include_bytes!("../../../tests/golden/delta/grown-none.delta");
const SHRUNK_ZSTD: &[u8] = include_bytes!("../../../tests/golden/delta/shrunk-zstd.delta");
const GROWN_PIPE_ZSTD: &[u8] = include_bytes!("../../../tests/golden/delta/grown-pipe-zstd.delta");
const TINY_TRACKED_NONE: &[u8] =
    include_bytes!("../../../tests/golden/delta/tiny-tracked-none.delta");

struct Golden {
    name: &'static str,
    delta: &'static [u8],
    old: &'static [u8],
    new: &'static [u8],
    header: Header,
    /// (encoding, NEW offset, NEW length, stored length) of every record.
    records: &'static [(&'static str, u64, u64, u64)],
}

fn goldens() -> [Golden; 4] {
    [
        Golden {
            name: "tiny-none",
            delta: TINY_NONE,
            old: TINY_OLD,
            new: TINY_NEW,
            header: Header {
                version: VERSION_1,
                block_size: 512,
                old_size: Some(1058),
                new_size: Some(1058),
                change_tracked: false,
                copies: false,
            },
            records: &[("zero", 512, 512, 0), ("raw", 1024, 34, 34)],
        },
        Golden {
            name: "grown-none",
            delta: GROWN_NONE,
            old: OLD,
            new: NEW_GROWN,
            header: Header {
                version: VERSION_1,
                block_size: 512,
                old_size: Some(6000),
                new_size: Some(7680),
                change_tracked: false,
                copies: false,
            },
            records: &[
                ("raw", 512, 512, 512),
                ("raw", 1536, 1536, 1536),
                ("raw", 5632, 1536, 1536),
            ],
        },
        Golden {
            name: "shrunk-zstd",
            delta: SHRUNK_ZSTD,
            old: OLD,
            new: NEW_SHRUNK,
            header: Header {
                version: VERSION_1,
                block_size: 1024,
                old_size: Some(6000),
                new_size: Some(4500),
                change_tracked: false,
                copies: false,
            },
            records: &[
                ("zero", 1024, 1024, 0),
                ("zstd", 2048, 1024, 66),
                ("raw", 4096, 404, 404),
            ],
        },
        Golden {
            name: "grown-pipe-zstd",
            delta: GROWN_PIPE_ZSTD,
            old: OLD,
            new: NEW_GROWN,
            header: Header {
                version: VERSION_1,
                block_size: 512,
                old_size: Some(6000),
                new_size: None,
                change_tracked: false,
                copies: false,
            },
            records: &[
                ("raw", 512, 512, 512),
                ("raw", 1536, 1536, 1536),
                ("zstd", 5632, 1536, 1392),
            ],
        },
    ]
}

#[test]
fn golden_inputs_are_the_documented_ones() {
    // make.py's recipe, restated on the bytes (README.md lists it).
    assert_eq!(
        (OLD.len(), NEW_GROWN.len(), NEW_SHRUNK.len()),
        (6000, 7680, 4500)
    );
    assert_eq!(NEW_GROWN[700], OLD[700] ^ 0x01);
    assert_eq!(
        NEW_GROWN[..2000]
            .iter()
            .zip(OLD)
            .filter(|(a, b)| a != b)
            .count(),
        1
    );
    assert_eq!(&NEW_GROWN[2600..6000], &OLD[2600..]);
    assert!(NEW_GROWN[7000..].iter().all(|&b| b == 0));
    assert!(NEW_SHRUNK[1024..2048].iter().all(|&b| b == 0));
    assert_eq!(NEW_SHRUNK[4200], OLD[4200] ^ 0xFF);
    assert_eq!(&TINY_NEW[1024..], b"diskdelta v1 golden: the NEW tail\n");
    assert_eq!(&TINY_NEW[..512], &TINY_OLD[..512]);
    assert!(TINY_NEW[512..1024].iter().all(|&b| b == 0));
}

#[test]
fn golden_deltas_decode_to_new() {
    for g in goldens() {
        let (header, extents, trailer) =
            read_all(g.delta).unwrap_or_else(|e| panic!("{}: {e}", g.name));
        assert_eq!(header, g.header, "{}", g.name);

        let mut reader = DeltaReader::new(g.delta).expect("header");
        let mut seen = Vec::new();
        while let Some(raw) = reader.next_record().expect("record") {
            seen.push((raw.encoding(), raw.offset, raw.length, raw.stored_len()));
        }
        assert_eq!(seen, g.records, "{}", g.name);

        let old_size = g.old.len() as u64;
        let new_size = g.new.len() as u64;
        assert_eq!(trailer.old_size, old_size, "{}", g.name);
        assert_eq!(trailer.new_size, new_size, "{}", g.name);
        assert_eq!(trailer.record_count, g.records.len() as u64);
        assert_eq!(
            trailer.changed_bytes,
            g.records.iter().map(|r| r.2).sum::<u64>()
        );
        assert_eq!(
            trailer.stored_bytes,
            g.records.iter().map(|r| r.3).sum::<u64>()
        );
        assert_eq!(trailer.old_digest, Some(image_digest(g.old)), "{}", g.name);
        assert_eq!(trailer.new_digest, image_digest(g.new), "{}", g.name);
        assert_eq!(trailer.header_digest, Digest::of(&g.delta[..HEADER_LEN]));
        let block = g.header.block_size as usize;
        assert_eq!(
            trailer.samples,
            reference_samples(g.old, g.new, block, &extents),
            "{}",
            g.name
        );
        assert_eq!(apply(g.old, new_size, &extents), g.new, "{}", g.name);
    }
}

/// The `*.json` descriptions written by make.py's own parser agree with
/// this reader, field by field.
#[test]
fn golden_json_descriptions_match_the_reader() {
    let descriptions = [
        include_str!("../../../tests/golden/delta/tiny-none.json"),
        include_str!("../../../tests/golden/delta/grown-none.json"),
        include_str!("../../../tests/golden/delta/shrunk-zstd.json"),
        include_str!("../../../tests/golden/delta/grown-pipe-zstd.json"),
    ];
    for (g, text) in goldens().iter().zip(descriptions) {
        let json: serde_json::Value = serde_json::from_str(text).expect("JSON");
        let size = |v: &serde_json::Value| v.as_u64();
        assert_eq!(
            json["size"].as_u64(),
            Some(g.delta.len() as u64),
            "{}",
            g.name
        );
        let h = &json["header"];
        assert_eq!(
            h["block_size"].as_u64(),
            Some(u64::from(g.header.block_size))
        );
        assert_eq!(size(&h["old_size"]), g.header.old_size, "{}", g.name);
        assert_eq!(size(&h["new_size"]), g.header.new_size, "{}", g.name);
        assert_eq!(h["change_tracked"].as_bool(), Some(false));

        let mut reader = DeltaReader::new(g.delta).expect("header");
        let records = json["records"].as_array().expect("records");
        for r in records {
            let raw = reader.next_record().expect("record").expect("a record");
            assert_eq!(
                r["at"].as_u64(),
                Some(reader.position() - RECORD_HEADER_LEN as u64 - raw.stored_len())
            );
            assert_eq!(r["kind"].as_str(), Some(raw.encoding()));
            assert_eq!(r["offset"].as_u64(), Some(raw.offset));
            assert_eq!(r["length"].as_u64(), Some(raw.length));
            assert_eq!(r["stored_length"].as_u64(), Some(raw.stored_len()));
            assert_eq!(r["checksum"].as_str(), Some(raw.checksum.to_hex().as_str()));
        }
        assert!(reader.next_record().expect("end").is_none());
        let t = reader.trailer().expect("trailer");
        let jt = &json["trailer"];
        assert_eq!(jt["old_size"].as_u64(), Some(t.old_size));
        assert_eq!(jt["new_size"].as_u64(), Some(t.new_size));
        assert_eq!(jt["record_count"].as_u64(), Some(t.record_count));
        assert_eq!(jt["changed_bytes"].as_u64(), Some(t.changed_bytes));
        assert_eq!(jt["stored_bytes"].as_u64(), Some(t.stored_bytes));
        let old_digest = t.old_digest.expect("OLD digest").to_hex();
        assert_eq!(jt["old_digest"].as_str(), Some(old_digest.as_str()));
        assert_eq!(
            jt["new_digest"].as_str(),
            Some(t.new_digest.to_hex().as_str())
        );
        assert_eq!(
            jt["records_digest"].as_str(),
            Some(t.records_digest.to_hex().as_str())
        );
        assert_eq!(
            jt["header_digest"].as_str(),
            Some(t.header_digest.to_hex().as_str())
        );
        let samples = jt["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), t.samples.len());
        for (js, s) in samples.iter().zip(&t.samples) {
            assert_eq!(js["block"].as_u64(), Some(s.block));
            assert_eq!(js["blake3"].as_str(), Some(s.digest.to_hex().as_str()));
        }
    }
}

#[test]
fn golden_pipe_delta_carries_the_same_extents_as_the_file_delta() {
    let (_, from_file, file_trailer) = read_all(GROWN_NONE).expect("file delta");
    let (_, from_pipe, pipe_trailer) = read_all(GROWN_PIPE_ZSTD).expect("pipe delta");
    assert_eq!(from_file, from_pipe);
    assert_eq!(file_trailer.new_digest, pipe_trailer.new_digest);
    assert_eq!(file_trailer.samples, pipe_trailer.samples);
}

#[test]
fn golden_uncompressed_deltas_re_encode_byte_for_byte() {
    for g in goldens().into_iter().filter(|g| g.name.ends_with("-none")) {
        let (header, extents, trailer) = read_all(g.delta).expect("golden");
        assert_eq!(header.encode()[..], g.delta[..HEADER_LEN], "{}", g.name);
        let mut writer = DeltaWriter::new(Vec::new(), header).expect("header");
        let mut at = HEADER_LEN;
        for e in &extents {
            let record = encode_record(e, None);
            let len = record.as_bytes().len();
            assert_eq!(record.as_bytes(), &g.delta[at..at + len], "{}", g.name);
            at += len;
            writer.write_record(&record).expect("record");
        }
        let (bytes, written, total) = writer
            .finish(TrailerInput {
                old_size: g.old.len() as u64,
                new_size: g.new.len() as u64,
                old_digest: Some(image_digest(g.old)),
                new_digest: image_digest(g.new),
                samples: reference_samples(g.old, g.new, header.block_size as usize, &extents),
            })
            .expect("trailer");
        assert_eq!(written, trailer, "{}", g.name);
        assert_eq!(total, g.delta.len() as u64);
        assert!(bytes == g.delta, "{}: re-encoded bytes differ", g.name);
    }
}

#[test]
fn golden_tiny_fields_at_their_offsets() {
    // The worked example of docs/formats/delta.md, field by field.
    let d = TINY_NONE;
    assert_eq!(d.len(), 482);
    assert_eq!(&d[0..8], b"DSKDELTA");
    assert_eq!(le_u16(d, 8), 1);
    assert_eq!(le_u16(d, 10), 64);
    assert_eq!(le_u32(d, 12), FLAG_OLD_SIZE | FLAG_NEW_SIZE);
    assert_eq!(le_u32(d, 16), 512);
    assert_eq!((le_u64(d, 24), le_u64(d, 32)), (1058, 1058));
    assert_eq!(hex::encode(&d[56..64]), "1a256c0748cbdfe0");
    // Record 0 at 64: zero, 512 bytes at 512, no payload.
    assert_eq!(
        (d[64], le_u32(d, 68), le_u64(d, 72), le_u64(d, 80)),
        (3, 0, 512, 512)
    );
    let zero_sum = blake3::hash(&d[64..88]);
    assert_eq!(&d[88..120], zero_sum.as_bytes());
    // Record 1 at 120: raw, 34 bytes at 1024, payload at 176.
    assert_eq!(
        (d[120], le_u32(d, 124), le_u64(d, 128), le_u64(d, 136)),
        (1, 34, 1024, 34)
    );
    let mut h = blake3::Hasher::new();
    h.update(&d[120..144]);
    h.update(&d[176..210]);
    assert_eq!(&d[144..176], h.finalize().as_bytes());
    assert_eq!(&d[176..210], &TINY_NEW[1024..]);
    // End record at 210, trailer (216 bytes, one sample) at 266.
    assert_eq!(
        (d[210], le_u32(d, 214), le_u64(d, 218), le_u64(d, 226)),
        (255, 216, 0, 0)
    );
    let mut h = blake3::Hasher::new();
    h.update(&d[210..234]);
    h.update(&d[266..]);
    assert_eq!(&d[234..266], h.finalize().as_bytes());
    let t = &d[266..];
    assert_eq!(
        [0, 8, 16, 24, 32].map(|at| le_u64(t, at)),
        [1058, 1058, 2, 546, 34]
    );
    assert_eq!(&t[40..72], image_digest(TINY_OLD).as_bytes());
    assert_eq!(&t[72..104], image_digest(TINY_NEW).as_bytes());
    let mut sums = blake3::Hasher::new();
    sums.update(&d[88..120]);
    sums.update(&d[144..176]);
    assert_eq!(&t[104..136], sums.finalize().as_bytes());
    assert_eq!(&t[136..168], blake3::hash(&d[0..64]).as_bytes());
    assert_eq!((le_u32(t, 168), le_u32(t, 172)), (1, 0));
    assert_eq!(le_u64(t, 176), 0);
    assert_eq!(&t[184..216], blake3::hash(&TINY_OLD[..512]).as_bytes());
}

// --- round trips -------------------------------------------------------------

/// Deterministic pseudo-random bytes (splitmix64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[derive(Debug, Clone)]
enum Piece {
    Noise(usize, u64),
    Repeat(usize, u8),
    Text(usize),
    Zeros(u64),
}

impl Piece {
    fn data(&self) -> ExtentData {
        match *self {
            Piece::Noise(n, seed) => ExtentData::Bytes(noise(n, seed)),
            Piece::Repeat(n, b) => ExtentData::Bytes(vec![b; n]),
            Piece::Text(n) => ExtentData::Bytes(
                b"the quick brown fox jumps over the lazy dog "
                    .iter()
                    .copied()
                    .cycle()
                    .take(n)
                    .collect(),
            ),
            Piece::Zeros(n) => ExtentData::Zeros(n),
        }
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (1usize..5000, any::<u64>()).prop_map(|(n, s)| Piece::Noise(n, s)),
        (1usize..5000, any::<u8>()).prop_map(|(n, b)| Piece::Repeat(n, b)),
        (1usize..5000).prop_map(Piece::Text),
        (1u64..(1 << 40)).prop_map(Piece::Zeros),
        Just(Piece::Noise(1, 7)),
    ]
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        (1i32..=6).prop_map(Compression::Zstd)
    ]
}

fn any_header() -> impl Strategy<Value = Header> {
    (
        prop::sample::select(&VERSIONS[..]),
        9u32..=20,
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(version, log, old_size, new_size, change_tracked, copies)| Header {
                version,
                block_size: 1 << log,
                old_size,
                new_size,
                change_tracked,
                // The copy flag exists in version 3 only.
                copies: copies && version >= VERSION,
            },
        )
}

proptest! {
    #[test]
    fn header_round_trip(h in any_header()) {
        let bytes = h.encode();
        prop_assert_eq!(Header::decode(&bytes).expect("decodes"), h);
        let reader = DeltaReader::new(&bytes[..]).expect("reader");
        prop_assert_eq!(reader.header(), &h);
    }

    #[test]
    fn write_then_read_gives_the_same_extents(
        log in 9u32..=20,
        old_size in 0u64..(1 << 50),
        old_known in any::<bool>(),
        new_known in any::<bool>(),
        change_tracked in any::<bool>(),
        pieces in proptest::collection::vec((0u64..10_000, piece()), 0..8),
        tail in 0u64..10_000,
        compression in compression(),
        samples in proptest::collection::vec((any::<u64>(), any::<[u8; 32]>()), 0..5),
        seed in any::<u64>(),
    ) {
        let mut extents = Vec::new();
        let mut end = 0u64;
        for (gap, p) in &pieces {
            let e = Extent { offset: end + gap, data: p.data() };
            end = e.end();
            extents.push(e);
        }
        let new_size = end + tail;
        let header = Header {
            version: VERSION_1,
            block_size: 1 << log,
            old_size: old_known.then_some(old_size),
            new_size: new_known.then_some(new_size),
            change_tracked,
            copies: false,
        };
        let mut compressor = match compression {
            Compression::None => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level).expect("zstd")),
        };
        let mut writer = DeltaWriter::new(Vec::new(), header).expect("header");
        for e in &extents {
            writer.write_record(&encode_record(e, compressor.as_mut())).expect("record");
        }
        prop_assert_eq!(writer.record_count(), extents.len() as u64);
        let old_digest = Digest::of(&seed.to_le_bytes());
        let samples: Vec<Sample> = samples
            .into_iter()
            .map(|(block, d)| Sample { block, digest: Digest::from_bytes(d) })
            .collect();
        let (bytes, written, total) = writer
            .finish(TrailerInput {
                old_size,
                new_size,
                old_digest: Some(old_digest),
                new_digest: Digest::of(&noise(32, seed)),
                samples: samples.clone(),
            })
            .expect("finish");
        prop_assert_eq!(total, bytes.len() as u64);

        let (read_header, read_extents, trailer) = read_all(&bytes).expect("reads back");
        prop_assert_eq!(read_header, header);
        prop_assert_eq!(&read_extents, &extents);
        prop_assert_eq!(&trailer, &written);
        prop_assert_eq!(trailer.old_size, old_size);
        prop_assert_eq!(trailer.new_size, new_size);
        prop_assert_eq!(trailer.old_digest, (!change_tracked).then_some(old_digest));
        prop_assert_eq!(trailer.samples, samples);
        prop_assert_eq!(trailer.changed_bytes, extents.iter().map(Extent::len).sum::<u64>());

        let mut reader = DeltaReader::new(&bytes[..]).expect("header");
        while let Some(raw) = reader.next_record().expect("record") {
            if compression == Compression::None {
                prop_assert_ne!(raw.encoding(), "zstd");
            }
        }
    }
}

// --- damage at every byte ------------------------------------------------------

fn small_deltas() -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = goldens()
        .iter()
        .map(|g| (g.name, g.delta.to_vec()))
        .collect();
    // A change-tracked delta with no records and no samples.
    let header = Header {
        version: VERSION_1,
        block_size: 512,
        old_size: None,
        new_size: None,
        change_tracked: true,
        copies: false,
    };
    let writer = DeltaWriter::new(Vec::new(), header).expect("header");
    let (bytes, _, _) = writer
        .finish(TrailerInput {
            old_size: 0,
            new_size: 0,
            old_digest: None,
            new_digest: image_digest(&[]),
            samples: Vec::new(),
        })
        .expect("finish");
    out.push(("empty-change-tracked", bytes));
    out
}

#[test]
fn every_truncation_is_reported_where_it_happens() {
    for (name, delta) in small_deltas() {
        read_all(&delta).unwrap_or_else(|e| panic!("{name}: {e}"));
        for cut in 0..delta.len() {
            match read_err(&delta[..cut]) {
                DeltaFormatError::Truncated { offset, .. } => {
                    assert_eq!(offset, cut as u64, "{name} cut at {cut}")
                }
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
    }
}

/// Byte ranges of the zstd payloads of a delta.
fn zstd_payloads(delta: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut reader = DeltaReader::new(delta).expect("header");
    let mut out = Vec::new();
    while let Some(raw) = reader.next_record().expect("record") {
        if raw.encoding() == "zstd" {
            let end = reader.position() as usize;
            out.push(end - raw.stored_len() as usize..end);
        }
    }
    out
}

/// Reads a damaged delta: an error, or (returning true) a clean read of
/// exactly the original content when the damage lies inside a zstd payload.
fn damage_is_detected_or_harmless(
    original: &(Header, Vec<Extent>, Trailer),
    zstd: &[std::ops::Range<usize>],
    damaged: &[u8],
    at: usize,
    what: &str,
) -> bool {
    match read_all(damaged) {
        Err(_) => false,
        Ok(read) => {
            assert!(zstd.iter().any(|r| r.contains(&at)), "{what}: not detected");
            assert!(read == *original, "{what}: read cleanly but NEW changed");
            true
        }
    }
}

/// Every flipped bit is an error, with one exception the format accepts on
/// purpose: a record checksum covers the *decoded* data, so a flip inside
/// a zstd payload that zstd ignores (the unused bit 4 of the frame header
/// descriptor, some padding bits of the entropy-coded streams) decodes to
/// the very same bytes and is harmless. Those flips must then read back
/// exactly the original content. The uncompressed deltas have none.
#[test]
fn every_bit_flip_is_detected_or_harmless() {
    let mut harmless = Vec::new();
    for (name, delta) in small_deltas() {
        let original = read_all(&delta).expect("original");
        let zstd = zstd_payloads(&delta);
        let mut damaged = delta.clone();
        for at in 0..delta.len() {
            for bit in 0..8 {
                damaged[at] ^= 1 << bit;
                let what = format!("{name}: bit {bit} of byte {at} flipped");
                if damage_is_detected_or_harmless(&original, &zstd, &damaged, at, &what) {
                    harmless.push((name, at, bit));
                }
                damaged[at] ^= 1 << bit;
            }
        }
    }
    // With zstd 1.5 four flips are harmless, among them byte 180 bit 4 of
    // shrunk-zstd: the frame header descriptor of its zstd record.
    assert!(harmless.len() < 16, "{harmless:?}");
    assert!(harmless.contains(&("shrunk-zstd", 180, 4)), "{harmless:?}");
}

#[test]
fn every_byte_flip_is_detected_or_harmless() {
    for (name, delta) in small_deltas() {
        let original = read_all(&delta).expect("original");
        let zstd = zstd_payloads(&delta);
        let mut damaged = delta.clone();
        for at in 0..delta.len() {
            for mask in [0xFF, 0x81, 0x0F, 0xF0] {
                damaged[at] ^= mask;
                let what = format!("{name}: byte {at} ^ {mask:#04x}");
                damage_is_detected_or_harmless(&original, &zstd, &damaged, at, &what);
                damaged[at] ^= mask;
            }
        }
    }
}

#[test]
fn payload_damage_is_a_checksum_error_naming_the_record() {
    let mut damaged = GROWN_NONE.to_vec();
    // Record 1 (raw, NEW 1536..3072) starts at 64 + 56 + 512; its payload 56 later.
    damaged[64 + 56 + 512 + 56 + 100] ^= 0x40;
    match read_err(&damaged) {
        DeltaFormatError::Checksum { index, start, end } => {
            assert_eq!((index, start, end), (1, 1536, 3072))
        }
        other => panic!("{other:?}"),
    }
    // A damaged zstd payload: either zstd fails or the checksum does.
    let mut damaged = SHRUNK_ZSTD.to_vec();
    damaged[120 + 56 + 30] ^= 0x01;
    assert!(matches!(
        read_err(&damaged),
        DeltaFormatError::Checksum {
            index: 1,
            start: 2048,
            end: 3072
        }
    ));
}

// --- header checks ---------------------------------------------------------------

#[test]
fn header_checks() {
    let good = header(Some(10), Some(20)).encode();
    assert_eq!(
        Header::decode(&good).expect("good"),
        header(Some(10), Some(20))
    );

    let mut b = good;
    b[0] = b'X';
    assert!(matches!(
        Header::decode(&b),
        Err(DeltaFormatError::NotADelta)
    ));
    assert!(matches!(
        DeltaReader::new(&b[..]),
        Err(DeltaFormatError::NotADelta)
    ));
    assert!(matches!(
        DeltaReader::new(&b"NOTADELTA-short"[..]),
        Err(DeltaFormatError::NotADelta)
    ));

    for version in [0u8, 4] {
        let mut b = good;
        b[8] = version;
        reseal_header(&mut b);
        assert!(matches!(
            Header::decode(&b),
            Err(DeltaFormatError::UnsupportedVersion { version: v }) if v == u16::from(version)
        ));
    }
    // The version is checked before the checksum: a future version may
    // protect its header differently.
    let mut b = good;
    b[8..10].copy_from_slice(&0x0100u16.to_le_bytes());
    assert!(matches!(
        Header::decode(&b),
        Err(DeltaFormatError::UnsupportedVersion { version: 256 })
    ));

    let mut b = good;
    b[57] ^= 1;
    assert_corrupt_header(&Header::decode(&b).expect_err("check"), "checksum");

    let mut b = good;
    b[10] = 65;
    reseal_header(&mut b);
    assert_corrupt_header(&Header::decode(&b).expect_err("len"), "header length");

    // Flag 8 (copies) is known in version 3 only (see
    // `the_copy_flag_exists_in_version_3_only`).
    for flag in [8u32, 16, 1 << 31] {
        let mut b = good;
        b[12..16].copy_from_slice(&(FLAG_OLD_SIZE | FLAG_NEW_SIZE | flag).to_le_bytes());
        reseal_header(&mut b);
        assert_corrupt_header(&Header::decode(&b).expect_err("flags"), "unknown flags");
    }

    for size in [0u32, 256, 511, 4095, 4097, 3 << 12] {
        let mut b = good;
        b[16..20].copy_from_slice(&size.to_le_bytes());
        reseal_header(&mut b);
        assert_corrupt_header(&Header::decode(&b).expect_err("block"), "block size");
    }
    for log in 9..32 {
        let mut b = good;
        b[16..20].copy_from_slice(&(1u32 << log).to_le_bytes());
        reseal_header(&mut b);
        assert_eq!(Header::decode(&b).expect("block size").block_size, 1 << log);
    }

    for at in (20..24).chain(40..56) {
        let mut b = good;
        b[at] = 1;
        reseal_header(&mut b);
        assert_corrupt_header(&Header::decode(&b).expect_err("reserved"), "reserved");
    }

    let unknown = header(None, None).encode();
    for at in [24, 32] {
        let mut b = unknown;
        b[at] = 1;
        reseal_header(&mut b);
        assert_corrupt_header(&Header::decode(&b).expect_err("size"), "without its flag");
    }
}

#[test]
fn header_bytes_are_pinned() {
    let h = Header {
        version: VERSION_1,
        block_size: 4096,
        old_size: Some(0x0102_0304_0506_0708),
        new_size: None,
        change_tracked: true,
        copies: false,
    };
    assert_eq!(
        hex::encode(&h.encode()[..56]),
        concat!(
            "44534b44454c5441",
            "0100",
            "4000",
            "05000000",
            "00100000",
            "00000000",
            "0807060504030201",
            "0000000000000000",
            "00000000000000000000000000000000",
        )
    );
}

// --- record checks -----------------------------------------------------------------

#[test]
fn a_crafted_delta_reads_cleanly() {
    let records = [
        rec(&extent(0, b"abc")),
        rec(&zeros(3, 5)),
        rec(&extent(100, b"x")),
    ];
    let bytes = craft(header(Some(200), Some(200)), &records, |_| {});
    let (_, extents, trailer) = read_all(&bytes).expect("clean");
    assert_eq!(extents, [extent(0, b"abc"), zeros(3, 5), extent(100, b"x")]);
    assert_eq!(
        (
            trailer.record_count,
            trailer.changed_bytes,
            trailer.stored_bytes
        ),
        (3, 9, 4)
    );
}

#[test]
fn out_of_order_and_overlapping_records_are_rejected() {
    let h = header(None, None);
    let out_of_order = craft(
        h,
        &[rec(&extent(100, b"a")), rec(&extent(50, b"b"))],
        |_| {},
    );
    assert_corrupt_record(&read_err(&out_of_order), 1, "overlaps");
    let overlapping = craft(h, &[rec(&extent(100, b"abc")), rec(&zeros(102, 9))], |_| {});
    assert_corrupt_record(&read_err(&overlapping), 1, "overlaps");
    let same = craft(h, &[rec(&zeros(0, 4)), rec(&zeros(0, 4))], |_| {});
    assert_corrupt_record(&read_err(&same), 1, "overlaps");
    // Adjacent is fine.
    let adjacent = craft(h, &[rec(&extent(100, b"abc")), rec(&zeros(103, 9))], |_| {});
    read_all(&adjacent).expect("adjacent records");

    let mut writer = DeltaWriter::new(Vec::new(), h).expect("header");
    writer
        .write_record(&encode_record(&extent(100, b"abc"), None))
        .expect("first");
    match writer.write_record(&encode_record(&extent(102, b"d"), None)) {
        Err(DeltaFormatError::OutOfOrder {
            offset: 102,
            previous_end: 103,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn records_past_new_size_are_rejected() {
    let past = craft(header(None, Some(100)), &[rec(&extent(98, b"abc"))], |t| {
        t.new_size = 100
    });
    assert_corrupt_record(&read_err(&past), 0, "past NEW size");
    let zeros_past = craft(header(None, Some(100)), &[rec(&zeros(0, 101))], |_| {});
    assert_corrupt_record(&read_err(&zeros_past), 0, "past NEW size");
    // Ending exactly at NEW's size is fine.
    let at_end = craft(header(None, Some(100)), &[rec(&extent(97, b"abc"))], |_| {});
    read_all(&at_end).expect("ends at NEW size");
    // NEW size unknown in the header: the trailer's size is checked at the end.
    let late = craft(header(None, None), &[rec(&extent(98, b"abc"))], |t| {
        t.new_size = 100
    });
    assert_corrupt_trailer(&read_err(&late), "past NEW size");

    let writer = DeltaWriter::new(Vec::new(), header(None, None)).expect("header");
    let mut writer = writer;
    writer
        .write_record(&encode_record(&extent(98, b"abc"), None))
        .expect("record");
    let err = writer
        .finish(TrailerInput {
            old_size: 0,
            new_size: 100,
            old_digest: Some(Digest::of(b"OLD")),
            new_digest: Digest::of(b"NEW"),
            samples: Vec::new(),
        })
        .expect_err("past NEW size");
    assert_corrupt_trailer(&err, "past NEW size");
}

#[test]
fn malformed_record_headers_are_rejected() {
    let h = header(None, None);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            record_bytes(KIND_RAW, 2, 0, 3, b"ab"),
            "raw record stores 2 bytes for length 3",
        ),
        (
            record_bytes(KIND_ZSTD, 3, 0, 3, b"abc"),
            "zstd record stores 3 bytes",
        ),
        (
            record_bytes(KIND_ZSTD, 0, 0, 3, b""),
            "zstd record stores 0 bytes",
        ),
        (
            record_bytes(KIND_ZERO, 1, 0, 3, b"a"),
            "zero record with payload",
        ),
        (record_bytes(KIND_ZERO, 0, 0, 0, b""), "empty record"),
        (record_bytes(KIND_RAW, 0, 0, 0, b""), "empty record"),
        (record_bytes(0, 0, 0, 3, b""), "unknown record kind 0"),
        (record_bytes(4, 0, 0, 3, b""), "unknown record kind 4"),
        (record_bytes(254, 0, 0, 3, b""), "unknown record kind 254"),
        (
            record_bytes(KIND_ZSTD, 10, 0, MAX_RECORD_LEN + 1, &[0; 10]),
            "exceeds the limit",
        ),
        (
            record_bytes(KIND_ZERO, 0, u64::MAX - 1, 2, b""),
            "overflows",
        ),
    ];
    for (record, needle) in cases {
        let bytes = craft(h, &[record], |_| {});
        assert_corrupt_record(&read_err(&bytes), 0, needle);
    }
    for at in 1..4 {
        let mut record = rec(&extent(0, b"abc"));
        record[at] = 1;
        let bytes = craft(h, &[rec(&zeros(0, 1)), record], |_| {});
        assert_corrupt_record(&read_err(&bytes), 1, "reserved");
    }
    // Zero records may be longer than the payload limit.
    let big = craft(h, &[rec(&zeros(0, MAX_RECORD_LEN * 1000))], |t| {
        t.new_size = MAX_RECORD_LEN * 1000
    });
    read_all(&big).expect("a long zero record");
    // Data records may be exactly at the limit (zstd keeps this one tiny).
    let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
    let limit = encode_record(&extent(0, &vec![7; MAX_RECORD_LEN as usize]), Some(&mut c));
    let bytes = craft(h, &[limit.as_bytes().to_vec()], |t| {
        t.new_size = MAX_RECORD_LEN
    });
    assert_eq!(
        read_all(&bytes).expect("at the limit").1[0].len(),
        MAX_RECORD_LEN
    );
}

// --- trailer checks ------------------------------------------------------------------

/// A change to an honest trailer.
type TrailerTweak = Box<dyn Fn(&mut Trailer)>;

#[test]
fn trailer_must_agree_with_header_and_records() {
    let h = header(Some(1000), Some(2000));
    let records = [rec(&extent(10, b"abcd")), rec(&zeros(20, 30))];
    let cases: Vec<(TrailerTweak, &str)> = vec![
        (
            Box::new(|t| t.record_count += 1),
            "3 records expected, 2 found",
        ),
        (Box::new(|t| t.changed_bytes += 1), "byte counts"),
        (Box::new(|t| t.stored_bytes -= 1), "byte counts"),
        (
            Box::new(|t| t.records_digest = Digest::of(b"x")),
            "record sequence digest",
        ),
        (
            Box::new(|t| t.header_digest = Digest::of(b"x")),
            "does not belong",
        ),
        (Box::new(|t| t.old_size += 1), "sizes contradict the header"),
        (Box::new(|t| t.new_size -= 1), "sizes contradict the header"),
        (Box::new(|t| t.old_digest = None), "change-tracked flag"),
    ];
    for (tweak, needle) in cases {
        let bytes = craft(h, &records, tweak);
        assert_corrupt_trailer(&read_err(&bytes), needle);
    }
    // A record dropped, with the counts fixed up: only the digest catches it.
    let dropped = craft(h, &records[..1], |t| {
        let full = craft(h, &records, |_| {});
        t.records_digest = read_all(&full).expect("full").2.records_digest;
    });
    assert_corrupt_trailer(&read_err(&dropped), "record sequence digest");

    // A change-tracked header with an OLD digest in the trailer.
    let ct = Header {
        change_tracked: true,
        copies: false,
        ..h
    };
    let bytes = craft(ct, &records, |t| t.old_digest = Some(Digest::of(b"OLD")));
    assert_corrupt_trailer(&read_err(&bytes), "change-tracked flag");
    let bytes = craft(ct, &records, |_| {});
    assert_eq!(read_all(&bytes).expect("change-tracked").2.old_digest, None);
}

#[test]
fn trailer_layout_checks() {
    let h = header(None, None);
    let good = craft(h, &[], |_| {});
    let start = good.len() - (TRAILER_FIXED_LEN + SAMPLE_LEN);
    let body = good[start..].to_vec();
    let with_body = |body: &[u8]| {
        let mut out = good[..HEADER_LEN].to_vec();
        out.extend_from_slice(&end_record_of(body));
        out
    };
    read_all(&with_body(&body)).expect("good");

    let mut b = body.clone();
    b[172] = 1;
    assert_corrupt_trailer(&read_err(&with_body(&b)), "reserved");
    let mut b = body.clone();
    b[168] = 2; // two samples announced, one present
    assert_corrupt_trailer(&read_err(&with_body(&b)), "sample count");
    let mut b = body.clone();
    b[168..172].copy_from_slice(&(MAX_SAMPLES + 1).to_le_bytes());
    assert_corrupt_trailer(&read_err(&with_body(&b)), "too many samples");
    assert_corrupt_trailer(
        &read_err(&with_body(&body[..TRAILER_FIXED_LEN - 1])),
        "out of range",
    );
    let huge = vec![0u8; TRAILER_FIXED_LEN + SAMPLE_LEN * (MAX_SAMPLES as usize + 1)];
    assert_corrupt_trailer(&read_err(&with_body(&huge)), "out of range");

    // The end record must not carry an offset or length.
    for (offset, length) in [(1, 0), (0, 1)] {
        let prefix = record_prefix(KIND_END, body.len() as u32, offset, length);
        let mut out = good[..HEADER_LEN].to_vec();
        out.extend_from_slice(&prefix);
        out.extend_from_slice(record_checksum(&prefix, Some(&body)).as_bytes());
        out.extend_from_slice(&body);
        assert_corrupt_trailer(&read_err(&out), "offset or length");
    }
    // Reserved bytes of the end record.
    let mut out = with_body(&body);
    out[HEADER_LEN + 2] = 1;
    assert_corrupt_record(&read_err(&out), 0, "reserved");
    // Its checksum.
    let mut out = with_body(&body);
    out[HEADER_LEN + 30] ^= 1;
    assert_corrupt_trailer(&read_err(&out), "trailer checksum");

    // MAX_SAMPLES is allowed.
    let many: Vec<Sample> = (0..u64::from(MAX_SAMPLES))
        .map(|block| Sample {
            block,
            digest: Digest::of(&block.to_le_bytes()),
        })
        .collect();
    let bytes = craft(h, &[], |t| t.samples = many.clone());
    assert_eq!(read_all(&bytes).expect("max samples").2.samples, many);
}

#[test]
fn trailing_data_is_rejected() {
    for extra in [&[0u8][..], b"x", &[0; 100]] {
        let mut bytes = TINY_NONE.to_vec();
        bytes.extend_from_slice(extra);
        match read_err(&bytes) {
            DeltaFormatError::TrailingData { offset } => assert_eq!(offset, 482),
            other => panic!("{other:?}"),
        }
    }
    // Two deltas back to back are not one delta.
    let mut twice = TINY_NONE.to_vec();
    twice.extend_from_slice(TINY_NONE);
    assert!(matches!(
        read_err(&twice),
        DeltaFormatError::TrailingData { offset: 482 }
    ));
}

#[test]
fn writer_checks_sizes_against_the_header() {
    let input = |old_size, new_size| TrailerInput {
        old_size,
        new_size,
        old_digest: Some(Digest::of(b"OLD")),
        new_digest: Digest::of(b"NEW"),
        samples: Vec::new(),
    };
    let w = DeltaWriter::new(Vec::new(), header(Some(5), Some(6))).expect("header");
    assert_corrupt_trailer(&w.finish(input(4, 6)).expect_err("old"), "OLD size");
    let w = DeltaWriter::new(Vec::new(), header(Some(5), Some(6))).expect("header");
    assert_corrupt_trailer(&w.finish(input(5, 7)).expect_err("new"), "NEW size");
    let w = DeltaWriter::new(Vec::new(), header(Some(5), Some(6))).expect("header");
    let (bytes, _, n) = w.finish(input(5, 6)).expect("sizes agree");
    assert_eq!(n, bytes.len() as u64);
    assert_eq!(
        n,
        (HEADER_LEN + RECORD_HEADER_LEN + TRAILER_FIXED_LEN) as u64
    );
}

#[test]
fn encoded_record_layout() {
    let e = extent(0x1122, b"hello");
    let r = encode_record(&e, None);
    assert_eq!((r.offset(), r.length(), r.stored_len()), (0x1122, 5, 5));
    let b = r.as_bytes();
    assert_eq!(b.len(), RECORD_HEADER_LEN + 5);
    assert_eq!(
        hex::encode(&b[..24]),
        concat!(
            "01",
            "000000",
            "05000000",
            "2211000000000000",
            "0500000000000000"
        )
    );
    assert_eq!(&b[56..], b"hello");
    // zstd is used only when it makes the payload smaller.
    let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
    assert_eq!(encode_record(&e, Some(&mut c)).as_bytes()[0], KIND_RAW);
    let long = extent(0, &[b'a'; 4096]);
    let z = encode_record(&long, Some(&mut c));
    assert_eq!(z.as_bytes()[0], KIND_ZSTD);
    assert!(z.stored_len() < 100);
    let zr = encode_record(&zeros(4096, 1 << 40), Some(&mut c));
    assert_eq!(
        (zr.as_bytes()[0], zr.stored_len(), zr.length()),
        (KIND_ZERO, 0, 1 << 40)
    );
}

// --- the image digest test vectors of docs/formats/image-digest.md ------------

#[test]
fn image_digest_vectors() {
    use crate::digest::{IMAGE_DIGEST_CONTEXT, SEGMENT_SIZE};
    /// The definition with plain blake3 calls: (L, digest).
    fn definition(data: &[u8]) -> (String, String) {
        let mut segs = blake3::Hasher::new_derive_key(IMAGE_DIGEST_CONTEXT);
        for seg in data.chunks(SEGMENT_SIZE) {
            segs.update(blake3::hash(seg).as_bytes());
        }
        let l = segs.finalize();
        let mut material = (data.len() as u64).to_le_bytes().to_vec();
        material.extend_from_slice(l.as_bytes());
        let digest = blake3::derive_key(IMAGE_DIGEST_CONTEXT, &material);
        (l.to_hex().to_string(), hex::encode(digest))
    }
    assert_eq!(IMAGE_DIGEST_CONTEXT, "diskdelta 2026-11 image digest v1");
    assert_eq!(SEGMENT_SIZE, 1 << 20);
    let pattern: Vec<u8> = (0..SEGMENT_SIZE + 1).map(|i| (i % 251) as u8).collect();
    let vectors: [(&str, Vec<u8>, &str, &str); 6] = [
        (
            "empty",
            Vec::new(),
            "ea6e1e41be9ce57fddc78e4b82761bf34f3dd5e3e86455f19e33b67300a365c8",
            "684342458c2c3f1ec7f4712accd68d04de53bce3c2a2a666f90b1034a34403fa",
        ),
        (
            "abc",
            b"abc".to_vec(),
            "52b7b6ae4f70a372ee2ac1e69dc3f8ade76e60b223d7f47c07891a06848e6a96",
            "385b7b3426cfa4d457eb9b053daff688b8a414baae991fb1fa0c44595964ea7d",
        ),
        (
            "4096 zeros",
            vec![0; 4096],
            "ae183f820e5362de3461690c5718a867d7d21ba79a99b5e117a9ff6ed40695d9",
            "746f377d83c9beb98fb61c32cc96cb56b749173857931e079a2335a619df67ee",
        ),
        (
            "1 MiB of zeros",
            vec![0; SEGMENT_SIZE],
            "264cdad633847fb8328549fb3159254d83cfb91489f88fdd3aaa1126c8490075",
            "88750c6b2635dc0cff301b40fed0c7b52c34b44f17216891a8b3b2c233c1d4fd",
        ),
        (
            "i mod 251, 1 MiB + 1",
            pattern,
            "15ddd2b90ca5903b95d9078583d7b13fa4df20574f119f7a939a9b802e4f26af",
            "b9f3d830911ba3399fcbc8a2922c810adb23a036f247feeffdf7d7cf6bf14972",
        ),
        (
            "tiny-new.img",
            TINY_NEW.to_vec(),
            "1e431202f47d15c02afd3af14cd9dcf91ba2000f35b20b0f28e05d2d9235ede0",
            "5a4ad9d6055bd37c6b49a4086458fcde138a220c7fb9125a90c26d7584779ec5",
        ),
    ];
    for (name, data, l, digest) in vectors {
        assert_eq!(
            definition(&data),
            (l.to_owned(), digest.to_owned()),
            "{name}"
        );
        assert_eq!(image_digest(&data).to_hex(), digest, "{name}");
        if data.iter().all(|&b| b == 0) {
            let mut zeros_fed = crate::digest::ImageHasher::new();
            zeros_fed.update_zeros(data.len() as u64);
            assert_eq!(
                zeros_fed.finalize().to_hex(),
                digest,
                "{name} (update_zeros)"
            );
        }
    }
    assert_eq!(
        blake3::hash(&vec![0u8; SEGMENT_SIZE]).to_hex().as_str(),
        "488de202f73bd976de4e7048f4e1f39a776d86d582b7348ff53bf432b987fca8"
    );
    assert_eq!(
        blake3::hash(&[0u8; 4096]).to_hex().as_str(),
        "b6fb73fc46938c981e2b0b4b1ef282adcfc89854d01bfe3972fdc4785b41b2c7"
    );
    assert_eq!(
        blake3::hash(b"abc").to_hex().as_str(),
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    );
}

#[test]
fn writer_refuses_what_readers_would_reject() {
    let header = Header {
        version: VERSION_1,
        block_size: 4096,
        old_size: Some(8192),
        new_size: Some(8192),
        change_tracked: false,
        copies: false,
    };
    let mut w = DeltaWriter::new(Vec::new(), header).expect("header");
    let empty = encode_record(
        &Extent {
            offset: 0,
            data: ExtentData::Bytes(Vec::new()),
        },
        None,
    );
    assert!(w.write_record(&empty).is_err());
    let no_old_digest = TrailerInput {
        old_size: 8192,
        new_size: 8192,
        old_digest: None,
        new_digest: Digest::NONE,
        samples: Vec::new(),
    };
    assert!(w.finish(no_old_digest).is_err());
    let w = DeltaWriter::new(Vec::new(), header).expect("header");
    let too_many = TrailerInput {
        old_size: 8192,
        new_size: 8192,
        old_digest: Some(Digest::NONE),
        new_digest: Digest::NONE,
        samples: vec![
            Sample {
                block: 0,
                digest: Digest::NONE
            };
            MAX_SAMPLES as usize + 1
        ],
    };
    assert!(w.finish(too_many).is_err());
}

#[test]
fn golden_change_tracked_delta_decodes_to_new() {
    let (header, extents, trailer) = read_all(TINY_TRACKED_NONE).expect("golden decodes");
    assert!(header.change_tracked);
    assert_eq!(header.block_size, 512);
    assert_eq!(trailer.old_digest, None);
    assert_eq!(trailer.new_digest, Digest::NONE);
    assert_eq!(trailer.samples, Vec::new());
    let ranges: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len())).collect();
    assert_eq!(ranges, [(512, 512), (1024, 34)]);
    assert_eq!(
        apply(TINY_OLD, trailer.new_size, &extents),
        TINY_NEW.to_vec()
    );
}

// --- version 2: records compressed against OLD ------------------------------

const V2_GROWN_ZSTD: &[u8] = include_bytes!("../../../tests/golden/delta/v2-grown-zstd.delta");
const V2_SHRUNK_ZSTD: &[u8] = include_bytes!("../../../tests/golden/delta/v2-shrunk-zstd.delta");

fn v2_goldens() -> [Golden; 2] {
    [
        Golden {
            name: "v2-grown-zstd",
            delta: V2_GROWN_ZSTD,
            old: OLD,
            new: NEW_GROWN,
            header: Header {
                version: VERSION_2,
                block_size: 512,
                old_size: Some(6000),
                new_size: Some(7680),
                change_tracked: false,
                copies: false,
            },
            // One record from the flipped byte to the end of the new data:
            // the unchanged runs between changes ride along against OLD.
            records: &[("zstd-ref", 512, 6656, 1635)],
        },
        Golden {
            name: "v2-shrunk-zstd",
            delta: V2_SHRUNK_ZSTD,
            old: OLD,
            new: NEW_SHRUNK,
            header: Header {
                version: VERSION_2,
                block_size: 1024,
                old_size: Some(6000),
                new_size: Some(4500),
                change_tracked: false,
                copies: false,
            },
            records: &[("zero", 1024, 1024, 0), ("zstd-ref", 2048, 2452, 74)],
        },
    ]
}

#[test]
fn v2_golden_deltas_decode_to_new_against_old() {
    let descriptions = [
        include_str!("../../../tests/golden/delta/v2-grown-zstd.json"),
        include_str!("../../../tests/golden/delta/v2-shrunk-zstd.json"),
    ];
    for (g, text) in v2_goldens().iter().zip(descriptions) {
        assert_eq!(le_u16(g.delta, 8), 2, "{}", g.name);
        let (header, extents, trailer) =
            read_all(g.delta).unwrap_or_else(|e| panic!("{}: {e}", g.name));
        assert_eq!(header, g.header, "{}", g.name);
        let mut reader = DeltaReader::new(g.delta).expect("header");
        let json: serde_json::Value = serde_json::from_str(text).expect("JSON");
        let records = json["records"].as_array().expect("records");
        let mut seen = Vec::new();
        for r in records {
            let raw = reader.next_record().expect("record").expect("a record");
            assert_eq!(r["kind"].as_str(), Some(raw.encoding()));
            assert_eq!(r["checksum"].as_str(), Some(raw.checksum.to_hex().as_str()));
            seen.push((raw.encoding(), raw.offset, raw.length, raw.stored_len()));
        }
        assert_eq!(seen, g.records, "{}", g.name);
        assert_eq!(trailer.old_digest, Some(image_digest(g.old)), "{}", g.name);
        assert_eq!(trailer.new_digest, image_digest(g.new), "{}", g.name);
        let block = g.header.block_size as usize;
        for s in &trailer.samples {
            let range = s.block as usize * block..(s.block as usize + 1) * block;
            assert_eq!(s.digest, Digest::of(&g.old[range.clone()]), "{}", g.name);
            assert_eq!(
                g.old[range.clone()],
                g.new[range],
                "{}: sampled a changed block",
                g.name
            );
        }
        assert_eq!(
            apply(g.old, g.new.len() as u64, &extents),
            g.new,
            "{}",
            g.name
        );
    }
}

#[test]
fn v2_records_do_not_decode_against_another_base() {
    for g in v2_goldens() {
        let (_, extents, _) = read_all(g.delta).expect("golden");
        let mut other = g.old.to_vec();
        other[5000] ^= 0x40;
        for e in &extents {
            let ExtentData::Referenced(raw) = &e.data else {
                continue;
            };
            let mut base = other.clone();
            base.resize(g.new.len().max(base.len()), 0);
            let range = e.offset as usize..e.end() as usize;
            if range.contains(&5000) {
                assert!(matches!(
                    raw.decode_against(&base[range]),
                    Err(DeltaFormatError::ReferenceMismatch { .. })
                ));
            }
        }
    }
}

/// Every single-bit flip of a version 2 golden is either rejected (by the
/// reader, or by decoding against OLD) or decodes to NEW all the same.
#[test]
fn v2_golden_bit_flips_never_give_other_bytes() {
    for g in v2_goldens() {
        for at in 0..g.delta.len() {
            for bit in [0x01u8, 0x80] {
                let mut d = g.delta.to_vec();
                d[at] ^= bit;
                let Ok((_, extents, trailer)) = read_all(&d) else {
                    continue;
                };
                if let Some(out) = applied_or_refused(g.old, &extents, trailer.new_size) {
                    assert_eq!(
                        out, g.new,
                        "{}: flip {bit:#x} at {at} gave other bytes",
                        g.name
                    );
                }
            }
        }
    }
}

#[test]
fn reference_kind_is_unknown_in_version_1() {
    let old = noise(4096, 7);
    let mut new = old.clone();
    new[100] ^= 1;
    let e = Extent {
        offset: 0,
        data: ExtentData::Bytes(new),
    };
    let record = RecordEncoder::new(Compression::DEFAULT).encode(&e, Some(&old));
    assert_eq!(record.as_bytes()[0], KIND_ZSTD_REF);
    for (version, ok) in [(VERSION_1, false), (VERSION_2, true), (VERSION, true)] {
        let h = Header {
            version,
            ..header(Some(4096), Some(4096))
        };
        let mut writer = DeltaWriter::new(Vec::new(), h).expect("header");
        if !ok {
            // The writer refuses what readers reject; by hand, the reader
            // names the kind.
            assert!(writer.write_record(&record).is_err());
            let bytes = craft(h, &[record.as_bytes().to_vec()], |_| {});
            assert_corrupt_record(&read_err(&bytes), 0, "unknown record kind 4");
            continue;
        }
        writer.write_record(&record).expect("record");
        let (bytes, _, _) = writer
            .finish(TrailerInput {
                old_size: 4096,
                new_size: 4096,
                old_digest: Some(image_digest(&old)),
                new_digest: Digest::NONE,
                samples: Vec::new(),
            })
            .expect("finish");
        match read_all(&bytes) {
            Ok(_) => assert!(ok),
            Err(DeltaFormatError::CorruptRecord { reason, .. }) => {
                assert!(!ok);
                assert!(reason.contains("unknown record kind 4"), "{reason}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn readers_name_the_versions_they_read() {
    // An older reader checks the version before anything else and names
    // it; this one reads 1, 2 and 3 and refuses 4 the same way.
    let mut b = header(Some(1), Some(1)).encode();
    b[8..10].copy_from_slice(&4u16.to_le_bytes());
    reseal_header(&mut b);
    let e = Header::decode(&b).expect_err("version 4");
    assert!(matches!(
        e,
        DeltaFormatError::UnsupportedVersion { version: 4 }
    ));
    assert!(e.to_string().contains("reads versions 1, 2 and 3"), "{e}");
    assert_eq!(VERSIONS, [1, 2, 3]);
    assert_eq!((VERSION_1, VERSION_2, VERSION), (1, 2, 3));
    for g in goldens() {
        assert_eq!(le_u16(g.delta, 8), 1, "{}", g.name);
    }
}

#[test]
fn the_window_check_does_not_overflow() {
    assert!(!within_window(u64::MAX, 2));
    assert!(within_window(u64::MAX, 1));
    assert!(!within_window(0, 0));
    assert!(within_window(REFERENCE_WINDOW, REFERENCE_WINDOW));
    assert!(!within_window(REFERENCE_WINDOW - 1, 2));
}

#[test]
fn a_reference_record_crossing_a_window_is_rejected() {
    let window = REFERENCE_WINDOW;
    let prefix = record_prefix(KIND_ZSTD_REF, 10, window - 512, 1024);
    let mut bytes = Header {
        version: VERSION,
        ..header(None, None)
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&[0u8; 32]);
    bytes.extend_from_slice(&[0u8; 10]);
    match read_err(&bytes) {
        DeltaFormatError::CorruptRecord { reason, .. } => {
            assert!(reason.contains("window"), "{reason}")
        }
        e => panic!("{e}"),
    }
}

fn reference_case() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, u64)> {
    // (reference, NEW, offset): sizes from 1 byte to a whole window; the
    // reference is OLD's bytes (zero-extended), all zeros, or a mix.
    (1usize..=(1 << 20), 0u8..4, any::<u64>(), 0u64..4).prop_map(|(len, shape, seed, slot)| {
        let len = if seed % 5 == 0 { len } else { len % 70_000 + 1 };
        let old = noise(len, seed);
        let reference = match shape {
            0 => vec![0; len],
            1 => {
                // OLD shorter than NEW: zero past its end.
                let mut r = old.clone();
                r[len / 2..].fill(0);
                r
            }
            _ => old,
        };
        let mut new = reference.clone();
        for i in (0..len).step_by(997) {
            new[i] = new[i].wrapping_add(1 + (seed as u8 % 7));
        }
        (reference, new, slot * REFERENCE_WINDOW)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn reference_records_round_trip(case in reference_case(), level in 1i32..=6) {
        let (reference, new, offset) = case;
        let e = Extent { offset, data: ExtentData::Bytes(new.clone()) };
        let record = RecordEncoder::new(Compression::Zstd(level)).encode(&e, Some(&reference));
        let h = Header { version: VERSION, ..header(None, None) };
        let mut writer = DeltaWriter::new(Vec::new(), h).expect("header");
        writer.write_record(&record).expect("record");
        let (bytes, _, _) = writer
            .finish(TrailerInput {
                old_size: offset + new.len() as u64,
                new_size: offset + new.len() as u64,
                old_digest: Some(Digest::of(b"OLD")),
                new_digest: Digest::NONE,
                samples: Vec::new(),
            })
            .expect("finish");
        let (_, extents, _) = read_all(&bytes).expect("reads back");
        prop_assert_eq!(extents.len(), 1);
        let decoded = match &extents[0].data {
            ExtentData::Referenced(raw) => raw.decode_against(&reference).expect("decodes"),
            ExtentData::Bytes(b) => b.clone(),
            ExtentData::Zeros(_) => unreachable!("data extent"),
        };
        prop_assert_eq!(decoded, new);
        // An all-zero reference never gives a reference record.
        if reference.iter().all(|&b| b == 0) {
            prop_assert!(!matches!(extents[0].data, ExtentData::Referenced(_)));
        }
    }
}

#[test]
fn extents_longer_than_a_window_are_compressed_on_their_own() {
    for len in [(1 << 20) + 1, 16 << 20] {
        let old = noise(len, 3);
        let mut new = old.clone();
        new[len / 2] ^= 1;
        let e = Extent {
            offset: 0,
            data: ExtentData::Bytes(new),
        };
        let record = RecordEncoder::new(Compression::DEFAULT).encode(&e, Some(&old));
        assert_ne!(record.as_bytes()[0], KIND_ZSTD_REF, "{len}");
    }
}

// --- version 3: copy records -------------------------------------------------

fn v3_header(old: Option<u64>, new: Option<u64>) -> Header {
    Header {
        version: VERSION,
        copies: true,
        ..header(old, new)
    }
}

/// A delta written by `DeltaWriter`: `records` (in order), then an honest
/// trailer for OLD and NEW of these sizes.
fn write_delta(header: Header, records: &[EncodedRecord], old_size: u64, new_size: u64) -> Vec<u8> {
    let mut writer = DeltaWriter::new(Vec::new(), header).expect("header");
    for r in records {
        writer.write_record(r).expect("record");
    }
    let (bytes, _, total) = writer
        .finish(TrailerInput {
            old_size,
            new_size,
            old_digest: Some(Digest::of(b"OLD")),
            new_digest: Digest::NONE,
            samples: Vec::new(),
        })
        .expect("finish");
    assert_eq!(total, bytes.len() as u64);
    bytes
}

/// A copy record of NEW bytes `offset ..` from OLD's bytes at `source ..`.
fn copy_of(old: &[u8], offset: u64, source: u64, length: usize) -> EncodedRecord {
    let at = usize::try_from(source).expect("small source");
    encode_copy(offset, source, &old[at..at + length])
}

/// The records of a delta, as read (not decoded).
fn raw_records(bytes: &[u8]) -> Vec<RawRecord> {
    let mut reader = DeltaReader::new(bytes).expect("header");
    let mut out = Vec::new();
    while let Some(raw) = reader.next_record().expect("record") {
        out.push(raw);
    }
    out
}

#[test]
fn encoded_copy_record_layout() {
    let r = encode_copy(0x1122, 0x0102_0304_0506_0708, b"hello");
    assert_eq!(
        (r.offset(), r.length(), r.stored_len()),
        (0x1122, 5, COPY_PAYLOAD_LEN as u64)
    );
    assert_eq!(COPY_PAYLOAD_LEN, 8);
    let b = r.as_bytes();
    assert_eq!(b.len(), RECORD_HEADER_LEN + 8);
    assert_eq!(
        hex::encode(&b[..24]),
        concat!(
            "05",
            "000000",
            "08000000",
            "2211000000000000",
            "0500000000000000"
        )
    );
    // The payload is the source; the checksum covers the prefix and the
    // copied (NEW) bytes, not the source.
    assert_eq!(hex::encode(&b[56..]), "0807060504030201");
    let mut h = blake3::Hasher::new();
    h.update(&b[..24]);
    h.update(b"hello");
    assert_eq!(&b[24..56], h.finalize().as_bytes());
}

#[test]
fn the_copy_flag_exists_in_version_3_only() {
    for version in [VERSION_1, VERSION_2] {
        let h = Header {
            version,
            copies: true,
            ..header(Some(10), Some(20))
        };
        let bytes = h.encode();
        assert_eq!(
            le_u32(&bytes, 12),
            FLAG_OLD_SIZE | FLAG_NEW_SIZE | FLAG_COPIES
        );
        assert_corrupt_header(
            &Header::decode(&bytes).expect_err("copies before version 3"),
            "unknown flags",
        );
        assert_corrupt_header(
            &DeltaReader::new(&bytes[..]).expect_err("copies before version 3"),
            "unknown flags",
        );
    }
    for copies in [false, true] {
        let h = Header {
            copies,
            ..v3_header(Some(10), Some(20))
        };
        assert_eq!(Header::decode(&h.encode()).expect("version 3"), h);
    }
    // Bit 4 and up stay unknown in version 3.
    for flag in [16u32, 1 << 31] {
        let mut b = v3_header(None, None).encode();
        b[12..16].copy_from_slice(&(FLAG_COPIES | flag).to_le_bytes());
        reseal_header(&mut b);
        assert_corrupt_header(&Header::decode(&b).expect_err("flags"), "unknown flags");
    }
    // The header of version 3, byte for byte: version 3, flags 1 | 2 | 8.
    assert_eq!(
        hex::encode(&v3_header(Some(0x0102), Some(0x0304)).encode()[..56]),
        concat!(
            "44534b44454c5441",
            "0300",
            "4000",
            "0b000000",
            "00100000",
            "00000000",
            "0201000000000000",
            "0403000000000000",
            "00000000000000000000000000000000",
        )
    );
}

#[test]
fn a_copy_record_needs_the_flag() {
    let old = noise(4096, 11);
    let copy = copy_of(&old, 100, 1000, 50).as_bytes().to_vec();
    let no_flag = Header {
        copies: false,
        ..v3_header(Some(4096), Some(4096))
    };
    let bytes = craft(no_flag, &[rec(&zeros(0, 10)), copy.clone()], |_| {});
    assert_corrupt_record(
        &read_err(&bytes),
        1,
        "copy record in a delta whose header announces none",
    );
    // The same records under the flag read cleanly.
    let bytes = craft(
        v3_header(Some(4096), Some(4096)),
        &[rec(&zeros(0, 10)), copy],
        |_| {},
    );
    read_all(&bytes).expect("flagged");
    // The flag without copy records is allowed ("may hold").
    let bytes = write_delta(v3_header(Some(4096), Some(4096)), &[], 4096, 4096);
    assert!(read_all(&bytes).expect("flag, no copies").1.is_empty());
}

#[test]
fn copy_kind_is_unknown_in_versions_1_and_2() {
    let old = noise(4096, 12);
    let copy = copy_of(&old, 0, 100, 200).as_bytes().to_vec();
    for version in [VERSION_1, VERSION_2] {
        // Such a header cannot carry the copy flag, so it has none.
        let h = Header {
            version,
            ..header(Some(4096), Some(4096))
        };
        let bytes = craft(h, &[rec(&zeros(4000, 1)), copy.clone()], |_| {});
        let err = read_err(&bytes);
        assert_corrupt_record(&err, 1, "unknown record kind 5");
        // The kind is unknown before its payload length is looked at.
        let bad = record_bytes(KIND_COPY, 3, 0, 3, b"abc");
        assert_corrupt_record(
            &read_err(&craft(h, &[bad], |_| {})),
            0,
            "unknown record kind 5",
        );
    }
}

#[test]
fn a_version_3_delta_is_refused_by_older_readers_by_its_version() {
    let old = noise(4096, 13);
    let bytes = write_delta(
        v3_header(Some(4096), Some(4096)),
        &[copy_of(&old, 0, 2048, 1024)],
        4096,
        4096,
    );
    read_all(&bytes).expect("version 3");
    // Check #3 of every reader: the version, before the header check. A
    // reader of versions 1 and 2 stops here ("unsupported delta format
    // version 3"); what follows shows that it could not have misread the
    // delta had it gone on.
    assert_eq!(le_u16(&bytes, 8), 3);
    // The same bytes labelled version 2: the copy flag is unknown there.
    let mut forged = bytes.clone();
    forged[8] = 2;
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&forged[..HEADER_LEN]);
    reseal_header(&mut h);
    forged[..HEADER_LEN].copy_from_slice(&h);
    assert_corrupt_header(&read_err(&forged), "unknown flags");
    // And without the flag, kind 5 is unknown in version 2.
    let mut h2 = h;
    h2[12..16].copy_from_slice(&(FLAG_OLD_SIZE | FLAG_NEW_SIZE).to_le_bytes());
    reseal_header(&mut h2);
    forged[..HEADER_LEN].copy_from_slice(&h2);
    assert_corrupt_record(&read_err(&forged), 0, "unknown record kind 5");
    // A version 3 delta without copy records is still version 3: it is the
    // version, not the content, that older readers go by.
    let plain = write_delta(
        Header {
            copies: false,
            ..v3_header(Some(4096), Some(4096))
        },
        &[encode_record(&zeros(0, 4096), None)],
        4096,
        4096,
    );
    assert_eq!(le_u16(&plain, 8), 3);
}

#[test]
fn copy_sources_must_lie_inside_old() {
    let old = noise(4096, 14);
    let h = v3_header(Some(4096), None);
    // Up to OLD's very end is fine: the last byte, the last 1000 bytes,
    // all of OLD.
    for (source, length) in [(4095, 1), (3096, 1000), (0, 4096)] {
        let bytes = craft(
            h,
            &[copy_of(&old, 0, source, length).as_bytes().to_vec()],
            |_| {},
        );
        let (_, extents, _) = read_all(&bytes).expect("inside OLD");
        assert_eq!(
            apply(&old, length as u64, &extents),
            old[source as usize..source as usize + length]
        );
    }
    // Past it is rejected when the header has OLD's size.
    let past = |source: u64, length: u64| {
        let mut r = copy_of(&old, 100, 0, length as usize).as_bytes().to_vec();
        r[56..64].copy_from_slice(&source.to_le_bytes());
        r
    };
    for (source, length) in [(4096, 1), (4095, 2), (3097, 1000), (1, 4096)] {
        let bytes = craft(h, &[rec(&zeros(0, 5)), past(source, length)], |_| {});
        assert_corrupt_record(
            &read_err(&bytes),
            1,
            &format!("copy record reads {source}+{length}, past OLD's end"),
        );
    }
    // Without OLD's size the reader cannot tell (the applier checks against
    // the OLD it has), but an end past 2^64 is always rejected.
    let unknown = v3_header(None, None);
    let bytes = craft(unknown, &[past(4096, 1)], |_| {});
    let (_, extents, _) = read_all(&bytes).expect("OLD size unknown");
    let ExtentData::Referenced(raw) = &extents[0].data else {
        panic!("a copy record decodes to a referenced extent")
    };
    assert_eq!(raw.reference_range(), 4096..4097);
    for (source, length) in [(u64::MAX, 2), (u64::MAX - 99, 101)] {
        let bytes = craft(unknown, &[past(source, length)], |_| {});
        assert_corrupt_record(&read_err(&bytes), 0, "past OLD's end");
    }
    // Up to 2^64 - 1 the record itself is fine; the trailer's OLD size
    // then tells, and the reader checks every copy against it at the end.
    let bytes = craft(unknown, &[past(u64::MAX - 1, 1)], |_| {});
    assert_corrupt_trailer(&read_err(&bytes), "copy records read past OLD size");
}

#[test]
fn copy_record_lengths_at_the_limits() {
    let max = MAX_RECORD_LEN as usize;
    let old = noise(max + 4096, 15);
    let old_size = old.len() as u64;
    let records = [
        // One byte, from OLD's last byte.
        copy_of(&old, 0, old_size - 1, 1),
        // 16 MiB, ending exactly at OLD's end.
        copy_of(&old, 1, 4096, max),
        // 16 MiB from OLD's start, right after.
        copy_of(&old, 1 + MAX_RECORD_LEN, 0, max),
        // One byte, from OLD's first byte.
        copy_of(&old, 1 + 2 * MAX_RECORD_LEN, 0, 1),
    ];
    let new_size = 2 + 2 * MAX_RECORD_LEN;
    let bytes = write_delta(
        v3_header(Some(old_size), Some(new_size)),
        &records,
        old_size,
        new_size,
    );
    assert_eq!(
        bytes.len(),
        HEADER_LEN + 4 * (RECORD_HEADER_LEN + 8) + RECORD_HEADER_LEN + TRAILER_FIXED_LEN
    );
    let (_, extents, trailer) = read_all(&bytes).expect("at the limits");
    assert_eq!(trailer.stored_bytes, 4 * 8);
    assert_eq!(trailer.changed_bytes, new_size);
    let new = apply(&old, new_size, &extents);
    assert_eq!(new[0], old[max + 4095]);
    assert!(new[1..1 + max] == old[4096..]);
    assert!(new[1 + max..1 + 2 * max] == old[..max]);
    assert_eq!(new[1 + 2 * max], old[0]);

    // One byte more: the writer refuses it, a reader rejects it.
    let long = copy_of(&old, 0, 0, max + 1);
    let mut w = DeltaWriter::new(Vec::new(), v3_header(None, None)).expect("header");
    assert!(matches!(
        w.write_record(&long),
        Err(DeltaFormatError::CorruptRecord { .. })
    ));
    let bytes = craft(v3_header(None, None), &[long.as_bytes().to_vec()], |t| {
        t.new_size = MAX_RECORD_LEN + 1
    });
    assert_corrupt_record(&read_err(&bytes), 0, "exceeds the limit");
    // And an empty copy.
    let empty = encode_copy(0, 0, &[]);
    assert!(w.write_record(&empty).is_err());
    let bytes = craft(v3_header(None, None), &[empty.as_bytes().to_vec()], |_| {});
    assert_corrupt_record(&read_err(&bytes), 0, "empty record");
}

#[test]
fn copy_payload_must_be_8_bytes() {
    let h = v3_header(None, None);
    for n in [0u32, 1, 7, 9, 16] {
        let payload = vec![0u8; n as usize];
        let bytes = craft(h, &[record_bytes(KIND_COPY, n, 0, 500, &payload)], |_| {});
        assert_corrupt_record(
            &read_err(&bytes),
            0,
            &format!("copy record stores {n} bytes, not 8"),
        );
    }
}

#[test]
fn a_damaged_copy_record_does_not_decode() {
    let old = noise(8192, 16);
    let good = copy_of(&old, 0, 1000, 500).as_bytes().to_vec();
    let h = v3_header(Some(8192), Some(8192));
    let (_, extents, _) = read_all(&craft(h, std::slice::from_ref(&good), |_| {})).expect("good");
    assert_eq!(apply(&old, 8192, &extents)[..500], old[1000..1500]);

    // Another source: the checksum covers NEW's bytes, not the source, so
    // the record reads; it does not decode against OLD's bytes there.
    let mut moved = good.clone();
    moved[56..64].copy_from_slice(&1001u64.to_le_bytes());
    let bytes = craft(h, &[moved], |_| {});
    let raws = raw_records(&bytes);
    assert_eq!(raws[0].copy_source(), Some(1001));
    assert_eq!(raws[0].reference_range(), 1001..1501);
    let err = raws[0]
        .decode_against(&old[1001..1501])
        .expect_err("other source");
    assert!(matches!(
        err,
        DeltaFormatError::ReferenceMismatch {
            index: 0,
            start: 0,
            end: 500
        }
    ));
    // Against the right bytes it still decodes: the damage is in where
    // the applier looks, which the checksum of what it finds catches.
    assert_eq!(
        raws[0]
            .decode_against(&old[1000..1500])
            .expect("same bytes"),
        old[1000..1500]
    );

    // A base that is not OLD at the source.
    let raw = &raw_records(&craft(h, std::slice::from_ref(&good), |_| {}))[0];
    let mut other = old[1000..1500].to_vec();
    other[499] ^= 0x80;
    assert!(matches!(
        raw.decode_against(&other),
        Err(DeltaFormatError::ReferenceMismatch { .. })
    ));
    // A reference of the wrong length.
    for range in [1000..1499, 1000..1501] {
        assert!(matches!(
            raw.decode_against(&old[range]),
            Err(DeltaFormatError::ReferenceMismatch { .. })
        ));
    }
    // Another offset: the checksum covers the prefix.
    let mut shifted = good.clone();
    shifted[8..16].copy_from_slice(&1u64.to_le_bytes());
    let raws = raw_records(&craft(h, &[shifted], |_| {}));
    assert!(matches!(
        raws[0].decode_against(&old[1000..1500]),
        Err(DeltaFormatError::ReferenceMismatch {
            index: 0,
            start: 1,
            end: 501
        })
    ));
    // A damaged checksum.
    let mut sum = good;
    sum[40] ^= 1;
    let raws = raw_records(&craft(h, &[sum], |_| {}));
    assert!(raws[0].decode_against(&old[1000..1500]).is_err());
}

#[test]
fn copies_read_old_as_it_was_before_any_record() {
    // Record 0 overwrites OLD 1000..1500; record 1 copies OLD 1000..1500 to
    // 3000: it gets OLD's bytes there, not record 0's.
    let old = noise(4096, 17);
    let records = [
        encode_record(&extent(1000, &[0xAB; 500]), None),
        copy_of(&old, 3000, 1000, 500),
    ];
    let bytes = write_delta(v3_header(Some(4096), Some(4096)), &records, 4096, 4096);
    let (_, extents, _) = read_all(&bytes).expect("reads");
    let new = apply(&old, 4096, &extents);
    assert!(new[1000..1500].iter().all(|&b| b == 0xAB));
    assert_eq!(new[3000..3500], old[1000..1500]);
    // An applier that read the source from the image as records are
    // applied would find record 0's bytes there: the record says so.
    let ExtentData::Referenced(raw) = &extents[1].data else {
        panic!("copy")
    };
    assert!(matches!(
        raw.decode_against(&new[1000..1500]),
        Err(DeltaFormatError::ReferenceMismatch { index: 1, .. })
    ));
}

/// Copy records between other records: zero runs and raw data.
#[derive(Debug, Clone)]
enum CopyPiece {
    /// Length (at most OLD's), where in OLD (modulo the room left), or
    /// (true) at OLD's very end.
    Copy(usize, u64, bool),
    Zeros(u64),
    Noise(usize, u64),
}

fn copy_piece() -> impl Strategy<Value = CopyPiece> {
    prop_oneof![
        4 => (1usize..20_000, any::<u64>()).prop_map(|(n, at)| CopyPiece::Copy(n, at, false)),
        1 => (1usize..20_000).prop_map(|n| CopyPiece::Copy(n, 0, true)),
        1 => Just(CopyPiece::Copy(1, 0, true)),
        1 => (1u64..100_000).prop_map(CopyPiece::Zeros),
        1 => (1usize..5000, any::<u64>()).prop_map(|(n, s)| CopyPiece::Noise(n, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn copy_records_round_trip(
        old_len in 1usize..100_000,
        seed in any::<u64>(),
        old_known in any::<bool>(),
        new_known in any::<bool>(),
        pieces in proptest::collection::vec((0u64..5000, copy_piece()), 0..10),
        tail in 0u64..5000,
    ) {
        let old = noise(old_len, seed);
        let mut records = Vec::new();
        // (NEW offset, NEW bytes) of every record, (offset, source) of copies.
        let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut copies = Vec::new();
        let mut end = 0u64;
        for (gap, piece) in &pieces {
            let offset = end + gap;
            let (record, bytes) = match *piece {
                CopyPiece::Copy(length, at, at_end) => {
                    let length = length.min(old_len);
                    let room = (old_len - length) as u64;
                    let source = if at_end { room } else { at % (room + 1) };
                    copies.push((offset, source));
                    let s = source as usize;
                    (copy_of(&old, offset, source, length), old[s..s + length].to_vec())
                }
                CopyPiece::Zeros(n) => {
                    (encode_record(&zeros(offset, n), None), vec![0; n as usize])
                }
                CopyPiece::Noise(n, s) => {
                    let b = noise(n, s);
                    (encode_record(&extent(offset, &b), None), b)
                }
            };
            end = offset + bytes.len() as u64;
            records.push(record);
            written.push((offset, bytes));
        }
        let new_size = end + tail;
        // NEW by the rule of §2, by hand: OLD cut or zero-extended, every
        // record's bytes on top (copies from OLD as it was).
        let mut new = old.clone();
        new.resize(new_size as usize, 0);
        for (offset, bytes) in &written {
            new[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
        }
        let header = Header {
            old_size: old_known.then_some(old_len as u64),
            new_size: new_known.then_some(new_size),
            ..v3_header(None, None)
        };
        let bytes = write_delta(header, &records, old_len as u64, new_size);

        let (read_header, extents, trailer) = read_all(&bytes).expect("reads back");
        prop_assert_eq!(read_header, header);
        prop_assert_eq!(trailer.record_count, records.len() as u64);
        let copy_count = copies.len() as u64;
        let raw_bytes: u64 = pieces
            .iter()
            .map(|(_, p)| match p { CopyPiece::Noise(n, _) => *n as u64, _ => 0 })
            .sum();
        prop_assert_eq!(trailer.stored_bytes, 8 * copy_count + raw_bytes);
        let raws = raw_records(&bytes);
        let mut seen = Vec::new();
        for (raw, e) in raws.iter().zip(&extents) {
            prop_assert_eq!((raw.offset, raw.length), (e.offset, e.len()));
            let Some(source) = raw.copy_source() else {
                prop_assert_ne!(raw.encoding(), "copy");
                continue;
            };
            prop_assert_eq!(raw.encoding(), "copy");
            prop_assert_eq!(raw.stored_len(), COPY_PAYLOAD_LEN as u64);
            prop_assert_eq!(raw.reference_range(), source..source + raw.length);
            prop_assert!(raw.reference_range().end <= old_len as u64);
            prop_assert!(matches!(e.data, ExtentData::Referenced(_)));
            let range = source as usize..(source + raw.length) as usize;
            let decoded = raw.decode_against(&old[range.clone()]).expect("decodes");
            prop_assert_eq!(&decoded[..], &old[range]);
            prop_assert!(raw.holds(&decoded));
            seen.push((raw.offset, source));
        }
        prop_assert_eq!(seen, copies);
        prop_assert!(apply(&old, new_size, &extents) == new);
    }
}

// --- version 3 golden file ---------------------------------------------------

const V3_OLD: &[u8] = include_bytes!("../../../tests/golden/delta/v3-old.img");
const V3_NEW: &[u8] = include_bytes!("../../../tests/golden/delta/v3-new.img");
const V3_MOVED_ZSTD: &[u8] = include_bytes!("../../../tests/golden/delta/v3-moved-zstd.delta");
const V3_MOVED_ZSTD_JSON: &str = include_str!("../../../tests/golden/delta/v3-moved-zstd.json");

fn v3_golden() -> Golden {
    Golden {
        name: "v3-moved-zstd",
        delta: V3_MOVED_ZSTD,
        old: V3_OLD,
        new: V3_NEW,
        header: Header {
            version: VERSION,
            block_size: 1024,
            old_size: Some(45056),
            new_size: Some(46056),
            change_tracked: false,
            copies: true,
        },
        records: &[
            ("zstd-ref", 1024, 1024, 21),
            ("zero", 7168, 2048, 0),
            ("copy", 20480, 2048, 8),
            ("copy", 40960, 2048, 8),
            ("zero", 43008, 2048, 0),
            ("zstd", 45056, 1000, 66),
        ],
    }
}

/// (NEW offset, OLD source) of the golden's copy records.
const V3_COPIES: [(u64, u64); 2] = [(20480, 7168), (40960, 20480)];

#[test]
fn v3_golden_inputs_are_the_documented_ones() {
    // make.py's recipe, restated on the bytes (README.md lists it).
    let k = 1024;
    assert_eq!((V3_OLD.len(), V3_NEW.len()), (44 * k, 44 * k + 1000));
    assert_eq!(V3_NEW[1100], V3_OLD[1100] ^ 0x01);
    assert_eq!(V3_NEW[..1100], V3_OLD[..1100]);
    assert_eq!(V3_NEW[1101..7 * k], V3_OLD[1101..7 * k]);
    assert!(V3_NEW[7 * k..9 * k].iter().all(|&b| b == 0));
    assert_eq!(V3_NEW[9 * k..20 * k], V3_OLD[9 * k..20 * k]);
    assert_eq!(V3_NEW[20 * k..22 * k], V3_OLD[7 * k..9 * k]);
    assert_eq!(V3_NEW[22 * k..40 * k], V3_OLD[22 * k..40 * k]);
    assert_eq!(V3_NEW[40 * k..42 * k], V3_OLD[20 * k..22 * k]);
    assert!(V3_NEW[42 * k..44 * k].iter().all(|&b| b == 0));
    let text = b"diskdelta golden: a compressible line of text. ";
    assert!(V3_NEW[44 * k..]
        .iter()
        .zip(text.iter().cycle())
        .all(|(a, b)| a == b));
}

#[test]
fn v3_golden_delta_decodes_to_new_against_old() {
    let g = v3_golden();
    assert_eq!(le_u16(g.delta, 8), 3);
    assert_eq!(
        le_u32(g.delta, 12),
        FLAG_OLD_SIZE | FLAG_NEW_SIZE | FLAG_COPIES
    );
    let (header, extents, trailer) = read_all(g.delta).expect("golden");
    assert_eq!(header, g.header);
    let raws = raw_records(g.delta);
    let seen: Vec<_> = raws
        .iter()
        .map(|r| (r.encoding(), r.offset, r.length, r.stored_len()))
        .collect();
    assert_eq!(seen, g.records);
    let copies: Vec<_> = raws
        .iter()
        .filter_map(|r| r.copy_source().map(|s| (r.offset, s)))
        .collect();
    assert_eq!(copies, V3_COPIES);
    for r in &raws {
        if let Some(source) = r.copy_source() {
            let range = source as usize..(source + r.length) as usize;
            assert_eq!(
                r.decode_against(&g.old[range.clone()]).expect("copy"),
                g.old[range]
            );
        }
    }
    assert_eq!(trailer.old_size, g.old.len() as u64);
    assert_eq!(trailer.new_size, g.new.len() as u64);
    assert_eq!(trailer.record_count, g.records.len() as u64);
    assert_eq!(
        trailer.changed_bytes,
        g.records.iter().map(|r| r.2).sum::<u64>()
    );
    assert_eq!(
        trailer.stored_bytes,
        g.records.iter().map(|r| r.3).sum::<u64>()
    );
    assert_eq!(trailer.old_digest, Some(image_digest(g.old)));
    assert_eq!(trailer.new_digest, image_digest(g.new));
    assert_eq!(trailer.header_digest, Digest::of(&g.delta[..HEADER_LEN]));
    // Samples: whole blocks whose NEW bytes are OLD's, hashed from OLD.
    assert!(!trailer.samples.is_empty());
    let block = g.header.block_size as usize;
    for s in &trailer.samples {
        let range = s.block as usize * block..(s.block as usize + 1) * block;
        assert_eq!(s.digest, Digest::of(&g.old[range.clone()]));
        assert_eq!(
            g.old[range.clone()],
            g.new[range],
            "sampled a changed block"
        );
    }
    assert!(apply(g.old, g.new.len() as u64, &extents) == g.new);
}

/// The `*.json` that make.py's own parser wrote agrees with this reader.
#[test]
fn v3_golden_json_description_matches_the_reader() {
    let g = v3_golden();
    let json: serde_json::Value = serde_json::from_str(V3_MOVED_ZSTD_JSON).expect("JSON");
    assert_eq!(json["size"].as_u64(), Some(g.delta.len() as u64));
    let h = &json["header"];
    assert_eq!(h["version"].as_u64(), Some(3));
    assert_eq!(h["flags"].as_u64(), Some(11));
    assert_eq!(h["copies"].as_bool(), Some(true));
    assert_eq!(h["block_size"].as_u64(), Some(1024));
    assert_eq!(h["old_size"].as_u64(), g.header.old_size);
    assert_eq!(h["new_size"].as_u64(), g.header.new_size);
    let mut reader = DeltaReader::new(g.delta).expect("header");
    let records = json["records"].as_array().expect("records");
    assert_eq!(records.len(), g.records.len());
    for r in records {
        let raw = reader.next_record().expect("record").expect("a record");
        assert_eq!(
            r["at"].as_u64(),
            Some(reader.position() - RECORD_HEADER_LEN as u64 - raw.stored_len())
        );
        assert_eq!(r["kind"].as_str(), Some(raw.encoding()));
        assert_eq!(r["offset"].as_u64(), Some(raw.offset));
        assert_eq!(r["length"].as_u64(), Some(raw.length));
        assert_eq!(r["stored_length"].as_u64(), Some(raw.stored_len()));
        assert_eq!(r["source"].as_u64(), raw.copy_source());
        assert_eq!(r["checksum"].as_str(), Some(raw.checksum.to_hex().as_str()));
    }
    assert!(reader.next_record().expect("end").is_none());
    let t = reader.trailer().expect("trailer");
    let jt = &json["trailer"];
    assert_eq!(jt["record_count"].as_u64(), Some(t.record_count));
    assert_eq!(jt["changed_bytes"].as_u64(), Some(t.changed_bytes));
    assert_eq!(jt["stored_bytes"].as_u64(), Some(t.stored_bytes));
    assert_eq!(
        jt["records_digest"].as_str(),
        Some(t.records_digest.to_hex().as_str())
    );
    assert_eq!(
        jt["samples"].as_array().map(Vec::len),
        Some(t.samples.len())
    );
}

#[test]
fn v3_golden_copy_and_zero_records_re_encode_byte_for_byte() {
    let g = v3_golden();
    let mut reader = DeltaReader::new(g.delta).expect("header");
    let mut at = HEADER_LEN;
    while let Some(raw) = reader.next_record().expect("record") {
        let len = RECORD_HEADER_LEN + raw.stored_len() as usize;
        let (o, l) = (raw.offset as usize, raw.length as usize);
        let again = match (raw.encoding(), raw.copy_source()) {
            ("copy", Some(source)) => Some(encode_copy(raw.offset, source, &g.new[o..o + l])),
            ("zero", _) => Some(encode_record(&zeros(raw.offset, raw.length), None)),
            _ => None,
        };
        if let Some(again) = again {
            assert_eq!(again.as_bytes(), &g.delta[at..at + len], "record at {at}");
        }
        assert_eq!(raw.encoded().as_bytes(), &g.delta[at..at + len]);
        at += len;
    }
}

/// The second copy reads OLD's block 20, which the first copy overwrites:
/// taking sources from the image as the records are applied gives other
/// bytes, and the record's checksum says so.
#[test]
fn v3_golden_copies_read_old_not_what_earlier_records_wrote() {
    let g = v3_golden();
    let (_, extents, _) = read_all(g.delta).expect("golden");
    let mut target = g.old.to_vec();
    target.resize(g.new.len(), 0);
    let mut failed = Vec::new();
    for e in &extents {
        let range = e.offset as usize..e.end() as usize;
        match &e.data {
            ExtentData::Bytes(b) => target[range].copy_from_slice(b),
            ExtentData::Zeros(_) => target[range].fill(0),
            ExtentData::Referenced(raw) => {
                // A naive applier copies what it finds.
                let r = raw.reference_range();
                let naive = target[r.start as usize..r.end as usize].to_vec();
                match raw.decode_against(&naive) {
                    Ok(_) => {}
                    Err(DeltaFormatError::ReferenceMismatch { start, .. }) => failed.push(start),
                    Err(other) => panic!("{other}"),
                }
                target[range].copy_from_slice(&naive);
            }
        }
    }
    // The zero record over blocks 7, 8 and the copy to 20, 21 came first:
    // both copies would copy zeros.
    assert_eq!(failed, [20480, 40960]);
    assert!(target[20480..22528].iter().all(|&b| b == 0));
    assert!(target[40960..43008].iter().all(|&b| b == 0));
}

#[test]
fn v3_golden_truncations_and_bit_flips() {
    let g = v3_golden();
    for cut in 0..g.delta.len() {
        match read_err(&g.delta[..cut]) {
            DeltaFormatError::Truncated { offset, .. } => assert_eq!(offset, cut as u64),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Every single-bit flip is rejected (by the reader, or when a record
    // is decoded against OLD) or gives NEW all the same.
    for at in 0..g.delta.len() {
        for bit in [0x01u8, 0x10, 0x80] {
            let mut d = g.delta.to_vec();
            d[at] ^= bit;
            let Ok((_, extents, trailer)) = read_all(&d) else {
                continue;
            };
            if let Some(out) = applied_or_refused(g.old, &extents, trailer.new_size) {
                assert!(out == g.new, "flip {bit:#x} at {at} gave other bytes");
            }
        }
    }
}

#[test]
fn v3_golden_copy_record_fields_at_their_offsets() {
    // The example of §5b of docs/formats/delta.md, field by field.
    let d = &V3_MOVED_ZSTD[197..261];
    assert_eq!((d[0], &d[1..4]), (KIND_COPY, &[0u8, 0, 0][..]));
    assert_eq!(le_u32(d, 4), 8);
    assert_eq!((le_u64(d, 8), le_u64(d, 16)), (20480, 2048));
    assert_eq!(
        hex::encode(&d[24..56]),
        "d24efdb191df3e4efa4ac10c4b6dafe40d588b3a79109a5e45799ac63b38b954"
    );
    let mut h = blake3::Hasher::new();
    h.update(&d[..24]);
    h.update(&V3_OLD[7168..9216]);
    assert_eq!(&d[24..56], h.finalize().as_bytes());
    assert_eq!(le_u64(d, 56), 7168);
    assert_eq!(hex::encode(&d[56..]), "001c000000000000");
}
