//! The Python diff-dd reader over arbitrary bytes: never panics, and a
//! clean read describes exactly `new_size` contiguous bytes from 0.
//!
//! First byte: low 4 bits, bytes per `read` call (0: all at once); bit 4,
//! put a valid empty 32 KiB header in front (libFuzzer's inputs are short).
//! The next two bytes give the block size (0..=8192; 0 is invalid).
#![no_main]

use diskdelta::format::diffdd_py::{PyDiffDdReader, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{control, Chunky, OrderCheck};

fuzz_target!(|data: &[u8]| {
    let Some((step, mode, rest)) = control(data) else {
        return;
    };
    let [a, b, body @ ..] = rest else {
        return;
    };
    let block_size = u32::from(u16::from_le_bytes([*a, *b])) % 8193;
    let mut owned = Vec::new();
    let input = if mode & 1 != 0 {
        owned.resize(HEADER_LEN, 0);
        owned.extend_from_slice(body);
        &owned[..]
    } else {
        body
    };
    let Ok(mut reader) = PyDiffDdReader::new(Chunky { data: input, step }, block_size) else {
        return;
    };
    let mut order = OrderCheck::new();
    let mut covered = 0u64;
    loop {
        match reader.next_extent() {
            Err(_) => return,
            Ok(None) => break,
            Ok(Some(extent)) => {
                assert_eq!(
                    extent.offset, covered,
                    "Python diff-dd extents are contiguous"
                );
                covered += extent.len();
                order.check(&extent);
            }
        }
    }
    assert!(reader.is_done());
    assert_eq!(reader.new_size(), covered);
    assert_eq!(order.end(), covered);
    assert!(matches!(reader.next_extent(), Ok(None)));
});
