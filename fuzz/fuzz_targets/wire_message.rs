//! The sync protocol's frame reader and message decoder over arbitrary
//! bytes (what a remote peer, or anything printing on its stdout, can send):
//! never panics, and every decoded message encodes back to a frame that
//! decodes to the same message.
#![no_main]

use diskdelta::remote::frame::FrameReader;
use diskdelta::remote::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = FrameReader::new(data);
    while let Ok(Some(frame)) = frames.read_frame() {
        if let Ok(message) = Message::decode(&frame) {
            let again = Message::decode(&message.encode());
            assert_eq!(again.as_ref(), Ok(&message));
        }
    }
});
