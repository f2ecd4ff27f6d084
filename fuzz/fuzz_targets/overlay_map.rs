//! Overlay map slots (`format::overlay`) from arbitrary bytes (an overlay
//! file is user-supplied): never panics, and a slot that decodes encodes
//! back to the same bytes.
#![no_main]

use diskdelta::format::overlay::{choose, decode_slot, encode_slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, map)) = decode_slot(data) {
        // A slot may be given shorter than its padding; what is there
        // must be what encoding gives.
        let again = encode_slot(&header, &map).expect("a decoded slot encodes");
        let n = again.len().min(data.len());
        assert_eq!(&again[..n], &data[..n]);
    }
    let half = data.len() / 2;
    let _ = choose(decode_slot(&data[..half]), decode_slot(&data[half..]));
});
