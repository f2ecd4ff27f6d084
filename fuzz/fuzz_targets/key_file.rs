//! The key-file parser over arbitrary bytes: never panics, bounds every
//! cost parameter (a key file is read before anything authenticates it),
//! and what it accepts serializes back to a file that parses the same.
#![no_main]

use diskdelta::format::keyfile::{KeyFile, MAX_ITERATIONS, MAX_MEMORY_KIB, MAX_PARALLELISM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = KeyFile::parse(data) else {
        return;
    };
    assert!(key.kdf.memory_kib <= MAX_MEMORY_KIB);
    assert!(key.kdf.iterations <= MAX_ITERATIONS);
    assert!(key.kdf.parallelism <= MAX_PARALLELISM);
    assert!(key.salt().is_ok() && key.wrapped().is_ok());
    assert_eq!(KeyFile::parse(&key.to_bytes()).as_ref(), Ok(&key));
});
