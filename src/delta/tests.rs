//! Round-trip properties of `diff` and `apply` through real files.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::digest::image_digest;
use crate::format::delta::Compression;
use crate::io::{Input, InputOptions, Output};
use crate::units::BlockSize;

pub(super) fn open(path: &Path) -> Input {
    Input::open(path, &InputOptions::default()).expect("open input")
}

fn make_delta(
    dir: &Path,
    old: &[u8],
    new: &[u8],
    options: &DiffOptions,
) -> (std::path::PathBuf, DiffSummary) {
    std::fs::write(dir.join("old"), old).expect("write old");
    std::fs::write(dir.join("new"), new).expect("write new");
    let delta = dir.join("delta");
    let mut out = Output::create(&delta).expect("create delta");
    out.set_sparse(false);
    let (out, summary) =
        create_delta(open(&dir.join("old")), open(&dir.join("new")), out, options).expect("diff");
    out.commit().expect("commit delta");
    (delta, summary)
}

/// An image of `len` bytes built from regions of zeros, repeated bytes and
/// pseudo-random bytes, so comparisons see every kind of block.
pub(super) fn image(len: usize, seed: u64, regions: &[(u8, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = seed | 1;
    let mut i = 0;
    while out.len() < len {
        let (kind, size) = regions
            .get(i % regions.len().max(1))
            .copied()
            .unwrap_or((2, len));
        let size = size.max(1).min(len - out.len());
        for _ in 0..size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(match kind % 3 {
                0 => 0,
                1 => 0xA5,
                _ => state as u8,
            });
        }
        i += 1;
    }
    out
}

fn mutate(base: &[u8], new_len: usize, edits: &[(usize, usize, u8)], seed: u64) -> Vec<u8> {
    let mut out = base.to_vec();
    out.resize(new_len, 0);
    let mut state = seed | 1;
    for &(at, len, kind) in edits {
        if out.is_empty() {
            break;
        }
        let at = at % out.len();
        let end = (at + len).min(out.len());
        for b in &mut out[at..end] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = if kind % 2 == 0 { 0 } else { state as u8 };
        }
    }
    out
}

fn round_trip(old: &[u8], new: &[u8], block: u64, compression: Compression) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DiffOptions {
        block_size: BlockSize::new(block).expect("block size"),
        compression,
        threads: 2,
        ..DiffOptions::default()
    };
    let (delta, summary) = make_delta(dir.path(), old, new, &options);
    assert_eq!(summary.old_size, old.len() as u64);
    assert_eq!(summary.new_size, new.len() as u64);
    assert_eq!(summary.new_digest, image_digest(new));

    // Stream mode.
    let out_path = dir.path().join("out");
    let applied = apply_stream(
        open(&delta),
        open(&dir.path().join("old")),
        Output::create(&out_path).expect("create output"),
        &ApplyOptions::default(),
    )
    .expect("apply stream");
    assert!(applied.verified);
    assert_eq!(std::fs::read(&out_path).expect("read output"), new);

    // In-place mode on a copy of OLD, with the full base check.
    let target = dir.path().join("target");
    std::fs::write(&target, old).expect("write target");
    let options = ApplyOptions {
        check_base: Some(CheckBase::Full),
        verify: true,
        ..ApplyOptions::default()
    };
    apply_in_place(open(&delta), &target, &options).expect("apply in place");
    assert_eq!(std::fs::read(&target).expect("read target"), new);
}

#[test]
fn boundary_sizes() {
    let chunk = crate::io::reader::DEFAULT_CHUNK_SIZE;
    for (old_len, new_len) in [
        (0, 0),
        (0, 1),
        (1, 0),
        (4095, 4097),
        (4096, 4096),
        (chunk - 1, chunk + 1),
        (chunk + 1, chunk - 1),
        (2 * chunk, 2 * chunk + 4096),
    ] {
        let old = image(old_len, 3, &[(2, 5000), (0, 9000), (1, 3000)]);
        let new = mutate(&old, new_len, &[(old_len / 2, 10_000, 1), (7, 4096, 0)], 9);
        round_trip(&old, &new, 4096, Compression::DEFAULT);
    }
}

#[test]
fn identical_images_give_an_empty_delta() {
    let old = image(3 << 20, 1, &[(2, 100_000), (0, 300_000)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, summary) = make_delta(dir.path(), &old, &old, &DiffOptions::default());
    assert_eq!(summary.records, 0);
    assert_eq!(summary.changed_bytes, 0);
}

#[test]
fn zeroed_region_becomes_zero_extent() {
    let old = image(1 << 20, 5, &[(2, 1 << 20)]);
    let mut new = old.clone();
    new[65536..131072].fill(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let (delta, _) = make_delta(dir.path(), &old, &new, &DiffOptions::default());
    let info = inspect(open(&delta), None, None).expect("inspect");
    assert_eq!(info.zero_extents, 1);
    assert_eq!(info.changed_bytes, 65536);
    assert_eq!(info.stored_bytes, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn apply_of_diff_rebuilds_new(
        old_len in 0usize..(600 * 1024),
        new_len in 0usize..(600 * 1024),
        regions in proptest::collection::vec((0u8..3, 1usize..70_000), 1..6),
        edits in proptest::collection::vec((0usize..1_000_000, 1usize..40_000, 0u8..2), 0..8),
        block_shift in 9u32..17,
        compress in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let old = image(old_len, seed, &regions);
        let new = mutate(&old, new_len, &edits, seed ^ 0x55);
        let compression = if compress { Compression::DEFAULT } else { Compression::None };
        round_trip(&old, &new, 1 << block_shift, compression);
    }
}
