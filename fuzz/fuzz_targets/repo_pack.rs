//! The pack parser over arbitrary bytes (a repository is untrusted
//! storage): never panics; what it accepts lies inside the blob area, in
//! order; the trailer-only path (two range reads, as the repository reads
//! packs) agrees with the whole-pack parse; and a pack whose blobs lie back
//! to back rebuilds byte for byte through `PackBuilder`.
//!
//! The first byte says how to prepare the rest:
//! - bit 0: reseal: magic, version and reserved bytes of header and footer
//!   forced, entry count made to fit, table checksum recomputed, so the
//!   entry checks are reached;
//! - bit 1 (with bit 0): the entry count is the largest that fits (every
//!   byte after the header is table), else the stored count modulo that.
#![no_main]

use diskdelta::format::pack::{
    self, PackBuilder, END_MAGIC, ENTRY_LEN, FOOTER_LEN, HEADER_LEN, MAGIC, VERSION,
};
use diskdelta::id::PackId;
use libfuzzer_sys::fuzz_target;

fn reseal(d: &mut [u8], all_table: bool) {
    let len = d.len();
    d[0..8].copy_from_slice(&MAGIC);
    d[8..12].copy_from_slice(&VERSION.to_le_bytes());
    d[12..16].fill(0);
    let max = ((len - HEADER_LEN - FOOTER_LEN) / ENTRY_LEN) as u32;
    let stored = u32::from_le_bytes([d[len - 16], d[len - 15], d[len - 14], d[len - 13]]);
    let count = if all_table { max } else { stored % (max + 1) };
    let table_start = len - FOOTER_LEN - count as usize * ENTRY_LEN;
    let sum = blake3::hash(&d[table_start..len - FOOTER_LEN]);
    let f = len - FOOTER_LEN;
    d[f..f + 32].copy_from_slice(sum.as_bytes());
    d[f + 32..f + 36].copy_from_slice(&count.to_le_bytes());
    d[f + 36..f + 40].copy_from_slice(&VERSION.to_le_bytes());
    d[f + 40..f + 48].copy_from_slice(&END_MAGIC);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 && bytes.len() >= HEADER_LEN + FOOTER_LEN {
        reseal(&mut bytes, mode & 2 != 0);
    }
    let len = bytes.len() as u64;

    // The trailer-only path, as `Repository::read_pack_table` takes it.
    let from_trailer = (|| {
        if bytes.len() < HEADER_LEN + FOOTER_LEN {
            return None;
        }
        let (count, sum) = pack::parse_footer(&bytes[bytes.len() - FOOTER_LEN..]).ok()?;
        let trailer = pack::trailer_len(count);
        if trailer + HEADER_LEN as u64 > len {
            return None;
        }
        let table = &bytes[(len - trailer) as usize..bytes.len() - FOOTER_LEN];
        Some(pack::parse_table(table, &sum, len))
    })();

    let Ok(entries) = pack::parse(&bytes) else {
        return;
    };
    // The whole-pack parse also checks the header; where it accepts, the
    // trailer path must give the same entries.
    assert_eq!(from_trailer, Some(Ok(entries.clone())));
    let blob_end = len - pack::trailer_len(entries.len() as u32);
    let mut prev = HEADER_LEN as u64;
    let mut back_to_back = true;
    for e in &entries {
        assert!(
            u64::from(e.offset) >= prev,
            "blobs out of order or overlapping"
        );
        assert!(e.end() <= blob_end, "blob past the blob area");
        back_to_back &= u64::from(e.offset) == prev;
        prev = e.end();
    }
    if back_to_back && prev == blob_end {
        let mut builder = PackBuilder::new();
        for e in &entries {
            let again = builder.add(
                e.id,
                &bytes[e.offset as usize..e.end() as usize],
                e.raw_len,
                e.encoding,
            );
            assert_eq!(again, *e);
        }
        let (rebuilt, id, rebuilt_entries) = builder.finish();
        assert_eq!(rebuilt, bytes, "a gapless pack rebuilds byte for byte");
        assert_eq!(id, PackId::of(&bytes));
        assert_eq!(rebuilt_entries, entries);
    }
});
