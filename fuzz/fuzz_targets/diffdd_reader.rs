//! The C++ diff-dd readers (format v1 and v2) over arbitrary bytes: never
//! panic, and the extents they return are in order.
//!
//! First byte: low 4 bits, bytes per `read` call (0: all at once); bit 4,
//! v1 instead of v2; bit 5, v2: put the valid 14-byte header in front.
//! For v1 the next two bytes give the sector size (0..=4096; 0 is invalid).
#![no_main]

use diskdelta::format::diffdd::{DiffDdReader, V2_MAGIC};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{control, Chunky, OrderCheck};

fuzz_target!(|data: &[u8]| {
    let Some((step, mode, rest)) = control(data) else {
        return;
    };
    let mut owned = Vec::new();
    let mut reader = if mode & 1 != 0 {
        let [a, b, body @ ..] = rest else {
            return;
        };
        let sector = u32::from(u16::from_le_bytes([*a, *b])) % 4097;
        DiffDdReader::v1(Chunky { data: body, step }, sector)
    } else {
        let input = if mode & 2 != 0 {
            owned.extend_from_slice(V2_MAGIC);
            owned.extend_from_slice(rest);
            &owned[..]
        } else {
            rest
        };
        match DiffDdReader::v2(Chunky { data: input, step }) {
            Ok(r) => r,
            Err(_) => return,
        }
    };
    let mut order = OrderCheck::new();
    loop {
        match reader.next_extent() {
            Err(_) => return,
            Ok(None) => break,
            Ok(Some(extent)) => order.check(&extent),
        }
    }
    assert!(reader.is_done());
    assert!(reader.new_size(0) >= order.end());
    assert!(matches!(reader.next_extent(), Ok(None)));
});
