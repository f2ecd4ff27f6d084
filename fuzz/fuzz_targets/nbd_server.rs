//! The NBD server's handshake and transmission state machine over
//! arbitrary client bytes (what any local process or network peer can
//! send): never panics, never allocates without bound, always ends. The
//! first byte is the mode: bit 0 makes the export writable, bit 1 makes
//! part of it unreadable (an EIO range). Seeds: tests/golden/nbd/.
#![no_main]

use std::sync::Arc;

use diskdelta::nbd::server::export::MemoryExport;
use diskdelta::nbd::server::{serve_bytes, Exports};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, client)) = data.split_first() else {
        return;
    };
    let bytes: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut export = MemoryExport::new("disk", bytes, mode & 1 != 0);
    if mode & 2 != 0 {
        export = export.with_bad_range(8192, 4096);
    }
    let Ok(exports) = Exports::new(vec![Arc::new(export)]) else {
        return;
    };
    let mut out = Vec::new();
    let _ = serve_bytes(client, &mut out, &exports);
});
