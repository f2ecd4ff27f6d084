//! Tests of the signature format: golden files (pinned forever), round
//! trips, and every damage a reader must refuse.

use proptest::prelude::*;

use super::*;

const OLD: &[u8] = include_bytes!("../../../tests/golden/delta/old.img");
const GOLDEN_512: &[u8] = include_bytes!("../../../tests/golden/signature/old-512.sig");
const GOLDEN_PIPE_1K: &[u8] = include_bytes!("../../../tests/golden/signature/old-pipe-1k.sig");

/// Reads a whole signature: its header, hashes and trailer.
fn read_all(bytes: &[u8]) -> Result<(Header, Vec<BlockHash>, Trailer)> {
    let mut reader = SignatureReader::new(bytes)?;
    let mut hashes = Vec::new();
    while let Some(h) = reader.next_hash()? {
        hashes.push(h);
    }
    let trailer = reader.trailer().cloned().expect("trailer after the end");
    Ok((*reader.header(), hashes, trailer))
}

/// The slow reference: each block hashed on its own, zero-padded.
fn reference_hashes(image: &[u8], block: usize, seed: u64) -> Vec<BlockHash> {
    image
        .chunks(block)
        .map(|b| {
            let mut padded = b.to_vec();
            padded.resize(block, 0);
            xxhash_rust::xxh3::xxh3_128_with_seed(&padded, seed).to_le_bytes()
        })
        .collect()
}

fn write(header: Header, hashes: &[BlockHash], size: u64, samples: Vec<Sample>) -> Vec<u8> {
    let mut w = SignatureWriter::new(Vec::new(), header).expect("header");
    for h in hashes {
        w.push(h).expect("push");
    }
    w.finish(size, Digest::of(b"image"), samples)
        .expect("finish")
        .0
}

#[test]
fn golden_signatures_decode_to_the_images_block_hashes() {
    for (bytes, block, size_in_header, seed) in [
        (GOLDEN_512, 512, true, 1),
        (GOLDEN_PIPE_1K, 1024, false, u64::MAX - 58),
    ] {
        let (header, hashes, trailer) = read_all(bytes).expect("golden decodes");
        assert_eq!(header.block_size, block);
        assert_eq!(header.seed, seed);
        assert_eq!(header.image_size.is_some(), size_in_header);
        assert_eq!(trailer.image_size, OLD.len() as u64);
        assert_eq!(hashes, reference_hashes(OLD, block as usize, seed));
        assert_eq!(trailer.image_digest, crate::digest::image_digest(OLD));
        // Samples are whole blocks, with their full BLAKE3.
        assert!(!trailer.samples.is_empty());
        for s in &trailer.samples {
            let at = s.block as usize * block as usize;
            assert_eq!(s.digest, Digest::of(&OLD[at..at + block as usize]));
        }
    }
}

#[test]
fn the_writer_reproduces_the_golden_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.img");
    std::fs::write(&path, OLD).expect("write");
    let input = crate::io::Input::open(&path, &crate::io::InputOptions::default()).expect("open");
    let options = crate::delta::SignatureOptions {
        block_size: crate::units::BlockSize::new(512).expect("block size"),
        seed: Some(1),
        ..crate::delta::SignatureOptions::default()
    };
    let (bytes, _) =
        crate::delta::create_signature(input, Vec::new(), &options).expect("signature");
    assert_eq!(bytes, GOLDEN_512);
}

#[test]
fn every_flipped_byte_is_refused() {
    for (i, _) in GOLDEN_512.iter().enumerate() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = GOLDEN_512.to_vec();
            bytes[i] ^= bit;
            assert!(
                read_all(&bytes).is_err(),
                "flip of bit {bit:#x} at byte {i} accepted"
            );
        }
    }
}

#[test]
fn every_truncation_and_extension_is_refused() {
    for len in 0..GOLDEN_512.len() {
        assert!(
            read_all(&GOLDEN_512[..len]).is_err(),
            "truncation to {len} accepted"
        );
    }
    let mut longer = GOLDEN_512.to_vec();
    longer.push(0);
    assert!(matches!(
        read_all(&longer),
        Err(SignatureError::TrailingData { .. })
    ));
}

#[test]
fn writer_refuses_counts_that_do_not_fit_the_size() {
    let header = Header {
        block_size: 512,
        image_size: None,
        seed: 0,
    };
    let mut w = SignatureWriter::new(Vec::new(), header).expect("header");
    w.push(&[1; HASH_LEN]).expect("push");
    assert!(w.finish(513, Digest::NONE, Vec::new()).is_err());
}

proptest! {
    #[test]
    fn round_trip(
        shift in 9u32..=20,
        size in 0u64..40_000_000,
        size_known in any::<bool>(),
        seed in any::<u8>(),
        samples in prop::collection::vec((any::<u64>(), any::<[u8; 32]>()), 0..20),
    ) {
        let header = Header {
            block_size: 1 << shift,
            image_size: size_known.then_some(size),
            seed: u64::from(seed) << 40,
        };
        let count = header.blocks_of(size) as usize;
        prop_assume!(count <= 20_000);
        let hashes: Vec<BlockHash> = (0..count)
            .map(|i| [seed.wrapping_add(i as u8); HASH_LEN])
            .collect();
        let whole = size >> shift;
        let samples: Vec<Sample> = samples
            .into_iter()
            .filter(|_| whole > 0)
            .map(|(b, d)| Sample { block: b % whole.max(1), digest: Digest::from_bytes(d) })
            .collect();
        let bytes = write(header, &hashes, size, samples.clone());
        let (h, read, trailer) = read_all(&bytes).expect("round trip");
        prop_assert_eq!(h, header);
        prop_assert_eq!(read, hashes);
        prop_assert_eq!(trailer.image_size, size);
        prop_assert_eq!(trailer.samples, samples);
    }
}
