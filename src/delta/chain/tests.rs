//! Series of deltas through real files: applying the chain, applying the
//! merged delta (with and without the base) and applying each delta in
//! turn give the same image.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::delta::tests::{image, open};
use crate::delta::{apply_in_place, apply_stream, create_delta, DeltaError, OutputFormat};
use crate::io::Output;

/// Edits of an image: zeros, random bytes, or bytes changed a little (so
/// records compress against OLD), possibly after a resize.
fn edit(base: &[u8], new_len: usize, edits: &[(usize, usize, u8)], seed: u64) -> Vec<u8> {
    let mut out = base.to_vec();
    out.resize(new_len, 0);
    // Not the sequence `image` draws from the same seed.
    let mut state = (seed ^ 0x9E37_79B9_7F4A_7C15) | 1;
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
            *b = match kind % 3 {
                0 => 0,
                1 => state as u8,
                _ => b.wrapping_add((state % 3) as u8),
            };
        }
    }
    out
}

fn diff_to(dir: &Path, old: &Path, new: &Path, name: &str, format: OutputFormat) -> PathBuf {
    let path = dir.join(name);
    let mut out = Output::create(&path).expect("create delta");
    out.set_sparse(false);
    let options = DiffOptions {
        format,
        ..DiffOptions::default()
    };
    let (out, _) = create_delta(open(old), open(new), out, &options).expect("diff");
    out.commit().expect("commit");
    path
}

fn apply_chain_to(deltas: &[PathBuf], base: &Path, out: &Path) -> Result<(), DeltaError> {
    let inputs = deltas.iter().map(|d| open(d)).collect();
    let output = Output::create(out).expect("create output");
    apply_chain_stream(inputs, open(base), output, &ApplyOptions::default()).map(|_| ())
}

fn merge_to(deltas: &[PathBuf], base: Option<&Path>, out: &Path) -> Result<(), DeltaError> {
    let inputs = deltas.iter().map(|d| open(d)).collect();
    let mut output = Output::create(out).expect("create merged");
    output.set_sparse(false);
    let (output, _) = merge(inputs, base, output, &MergeOptions::default())?;
    output.commit().expect("commit merged");
    Ok(())
}

fn apply_to(delta: &Path, base: &Path, out: &Path) {
    let output = Output::create(out).expect("create output");
    apply_stream(open(delta), open(base), output, &ApplyOptions::default()).expect("apply");
}

struct Series {
    dir: tempfile::TempDir,
    images: Vec<PathBuf>,
    deltas: Vec<PathBuf>,
}

type Night = (usize, Vec<(usize, usize, u8)>);

fn series(base_len: usize, nights: &[Night], seed: u64) -> Series {
    series_in(base_len, nights, seed, OutputFormat::Native)
}

fn series_in(base_len: usize, nights: &[Night], seed: u64, format: OutputFormat) -> Series {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut images = vec![dir.path().join("image-0")];
    let mut bytes = image(base_len, seed, &[(2, 300_000), (0, 200_000), (1, 100_000)]);
    std::fs::write(&images[0], &bytes).expect("write base");
    let mut deltas = Vec::new();
    for (i, (len, edits)) in nights.iter().enumerate() {
        bytes = edit(&bytes, *len, edits, seed + i as u64);
        let path = dir.path().join(format!("image-{}", i + 1));
        std::fs::write(&path, &bytes).expect("write image");
        deltas.push(diff_to(
            dir.path(),
            &images[i],
            &path,
            &format!("d{}", i + 1),
            format,
        ));
        images.push(path);
    }
    Series {
        dir,
        images,
        deltas,
    }
}

fn night() -> impl Strategy<Value = Night> {
    (
        0usize..3_500_000,
        prop::collection::vec((0usize..4_000_000, 1usize..200_000, 0u8..3), 0..12),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn chain_merge_and_last_image_agree(
        base_len in 0usize..3_500_000,
        nights in prop::collection::vec(night(), 1..5),
        seed in any::<u64>(),
    ) {
        let s = series(base_len, &nights, seed);
        let dir = s.dir.path();
        let last = std::fs::read(s.images.last().expect("last")).expect("read last");

        apply_chain_to(&s.deltas, &s.images[0], &dir.join("chained")).expect("chain apply");
        prop_assert!(std::fs::read(dir.join("chained")).expect("read") == last);

        merge_to(&s.deltas, Some(&s.images[0]), &dir.join("merged-base")).expect("merge with base");
        apply_to(&dir.join("merged-base"), &s.images[0], &dir.join("from-merged-base"));
        prop_assert!(std::fs::read(dir.join("from-merged-base")).expect("read") == last);

        // Without the base a merge either succeeds and agrees, or says
        // that it needs the base.
        match merge_to(&s.deltas, None, &dir.join("merged")) {
            Ok(()) => {
                apply_to(&dir.join("merged"), &s.images[0], &dir.join("from-merged"));
                prop_assert!(std::fs::read(dir.join("from-merged")).expect("read") == last);
            }
            Err(DeltaError::Chain { detail }) => prop_assert!(detail.contains("--base"), "{detail}"),
            Err(e) => prop_assert!(false, "merge without base: {e}"),
        }

        let target = dir.join("target");
        std::fs::copy(&s.images[0], &target).expect("copy base");
        let inputs = s.deltas.iter().map(|d| open(d)).collect();
        apply_chain_in_place(inputs, &target, &ApplyOptions::default()).expect("chain in place");
        prop_assert!(std::fs::read(&target).expect("read") == last);
    }
}

#[test]
fn series_of_version_1_deltas_merges_without_the_base() {
    // Deltas without records compressed against OLD always merge.
    let s = series_in(
        2_500_000,
        &[
            (2_500_000, vec![(10, 5000, 1), (1_500_000, 70_000, 0)]),
            (3_000_000, vec![(20, 3000, 1), (2_600_000, 1000, 1)]),
            (1_000_000, vec![(500, 100, 0)]),
        ],
        7,
        OutputFormat::NativeV1,
    );
    let dir = s.dir.path();
    merge_to(&s.deltas, None, &dir.join("merged")).expect("merge");
    apply_to(&dir.join("merged"), &s.images[0], &dir.join("out"));
    assert_eq!(
        std::fs::read(dir.join("out")).expect("read"),
        std::fs::read(&s.images[3]).expect("read")
    );
}

fn chain_error(deltas: &[PathBuf], base: &Path, out: &Path) -> String {
    match apply_chain_to(deltas, base, out) {
        Err(DeltaError::Chain { detail }) => detail,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn broken_series_are_refused_by_name_before_writing() {
    let s = series(
        1_200_000,
        &[
            (1_200_000, vec![(0, 100, 1)]),
            (1_200_000, vec![(9000, 100, 1)]),
            (1_200_000, vec![(50_000, 100, 2)]),
        ],
        3,
    );
    let dir = s.dir.path();
    let out = dir.join("out");
    let name = |i: usize| s.deltas[i].display().to_string();
    let wrong_order = chain_error(
        &[s.deltas[1].clone(), s.deltas[0].clone()],
        &s.images[0],
        &out,
    );
    assert!(
        wrong_order.contains(&name(0)) && wrong_order.contains(&name(1)),
        "{wrong_order}"
    );
    let gap = chain_error(
        &[s.deltas[0].clone(), s.deltas[2].clone()],
        &s.images[0],
        &out,
    );
    assert!(gap.contains("does not follow"), "{gap}");
    let twice = chain_error(
        &[s.deltas[0].clone(), s.deltas[0].clone()],
        &s.images[0],
        &out,
    );
    assert!(twice.contains("twice"), "{twice}");
    assert!(!out.exists());
    // A base other than the first delta’s OLD: refused, nothing published.
    let wrong_base = apply_chain_to(&s.deltas, &s.images[1], &out);
    assert!(
        matches!(wrong_base, Err(ref e) if e.is_integrity()),
        "{wrong_base:?}"
    );
    assert!(!out.exists());
    // In place onto a target that is not OLD: refused before any write.
    let target = dir.join("target");
    std::fs::write(&target, image(1_200_000, 99, &[(2, 1000)])).expect("write target");
    let before = std::fs::read(&target).expect("read");
    let inputs = s.deltas.iter().map(|d| open(d)).collect();
    assert!(apply_chain_in_place(inputs, &target, &ApplyOptions::default()).is_err());
    assert_eq!(std::fs::read(&target).expect("read"), before);
}

#[test]
fn a_damaged_delta_in_a_series_fails_without_output() {
    let s = series(
        2_000_000,
        &[
            (2_000_000, vec![(0, 400_000, 1)]),
            (2_000_000, vec![(100_000, 400_000, 1)]),
        ],
        11,
    );
    let dir = s.dir.path();
    let mut bytes = std::fs::read(&s.deltas[1]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&s.deltas[1], &bytes).expect("write");
    let out = dir.join("out");
    assert!(apply_chain_to(&s.deltas, &s.images[0], &out).is_err());
    assert!(!out.exists());
    let _ = apply_in_place;
}
