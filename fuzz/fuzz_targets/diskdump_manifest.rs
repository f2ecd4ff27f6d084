//! The diskdump manifest parser over arbitrary bytes: never panics, the
//! whole-buffer and the line-by-line readers agree, and a manifest that
//! parses describes its image exactly.
//!
//! First byte: low 4 bits, bytes per `read` call of the streaming reader
//! (0: all at once); bit 4, put the magic line `# diskdump manifest v1` in
//! front; bit 5, also the headers `# block_size: 16` and `# total_size: N`
//! with N from the next byte (libFuzzer rarely guesses them by itself).
#![no_main]

use std::io::BufReader;

use diskdelta::format::diskdump::{parse_manifest, read_manifest_from, MANIFEST_MAGIC};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
#[allow(dead_code)] // OrderCheck: no extents here.
mod common;
use common::{control, Chunky};

fuzz_target!(|data: &[u8]| {
    let Some((step, mode, rest)) = control(data) else {
        return;
    };
    let mut input = Vec::new();
    let mut body = rest;
    if mode & 1 != 0 {
        input.extend_from_slice(MANIFEST_MAGIC.as_bytes());
        input.push(b'\n');
    }
    if mode & 2 != 0 {
        let Some((&size, tail)) = body.split_first() else {
            return;
        };
        body = tail;
        input.extend_from_slice(format!("# block_size: 16\n# total_size: {size}\n").as_bytes());
    }
    input.extend_from_slice(body);

    let parsed = parse_manifest(&input);
    // The streaming reader, fed `step` bytes at a time through a small
    // buffer, must see the same lines.
    let reader = BufReader::with_capacity(step.clamp(1, 4096), Chunky { data: &input, step });
    let streamed = read_manifest_from(reader);
    match (&parsed, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse_manifest {parsed:?} but read_manifest_from {streamed:?}"),
    }

    let Ok(manifest) = parsed else {
        return;
    };
    assert!(manifest.block_size >= 1);
    assert_eq!(
        manifest.blocks.len() as u64,
        manifest.image_size.div_ceil(manifest.block_size)
    );
    let mut covered = 0u64;
    for index in 0..manifest.blocks.len() {
        assert_eq!(manifest.block_offset(index), covered);
        let len = manifest.block_len(index).expect("block in range");
        assert!(len >= 1 && len <= manifest.block_size);
        covered += len;
    }
    assert_eq!(covered, manifest.image_size);
    assert_eq!(manifest.block_len(manifest.blocks.len()), None);
});
