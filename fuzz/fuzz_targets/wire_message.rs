//! The wire protocol's frame reader and message decoder over arbitrary
//! bytes (what a remote peer, or anything printing on its stdout, can send):
//! never panics, and every decoded message encodes back to a frame that
//! decodes to the same message. The same bytes as a repository listing
//! (an `ObjReply`'s data) decode without panicking and round-trip.
#![no_main]

use diskdelta::remote::frame::FrameReader;
use diskdelta::remote::message::{decode_listing, encode_listing, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = FrameReader::new(data);
    while let Ok(Some(frame)) = frames.read_frame() {
        if let Ok(message) = Message::decode(&frame) {
            let again = Message::decode(&message.encode());
            assert_eq!(again.as_ref(), Ok(&message));
        }
    }
    if let Some(listing) = decode_listing(data) {
        let bytes = encode_listing(listing.iter().map(|(k, s)| (k.as_str(), *s)));
        assert_eq!(bytes, data);
    }
});
