//! Change-tracker input (`--changed-ranges`: `OFFSET LENGTH` lines or
//! `thin_delta` XML, from any program) over arbitrary bytes: never panics,
//! stops at its first error, and every run it yields is non-empty, in
//! increasing order and without overlap.
#![no_main]

use diskdelta::change::tracked::TrackedRuns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runs = TrackedRuns::parse("fuzz", std::io::Cursor::new(data.to_vec()));
    let mut end = 0u64;
    let mut failed = false;
    for run in runs {
        assert!(!failed, "a run after an error");
        match run {
            Ok(r) => {
                assert!(r.run.len > 0);
                assert!(r.run.offset >= end);
                end = r.run.offset + r.run.len;
            }
            Err(_) => failed = true,
        }
    }
});
