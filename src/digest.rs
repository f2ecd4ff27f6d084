//! Content digests.
//!
//! The **image digest** identifies the whole content of an image. It is a
//! two-level BLAKE3 tree: the image is cut into 1 MiB segments, each segment
//! is hashed with plain BLAKE3 (`h_i`), and the image digest is
//! `DK(LE64(size) ‖ DK(h_0 ‖ h_1 ‖ …))`, where `DK` is BLAKE3 `derive_key` with
//! context [`IMAGE_DIGEST_CONTEXT`] (spec: `docs/formats/image-digest.md`). A segment of zeros always has the
//! same hash, so holes in sparse images are digested without reading or
//! hashing them: a 1 TiB sparse image costs a million 32-byte updates, not a
//! terabyte of hashing. It differs from `b3sum` of the image on purpose; the
//! `hash` subcommand prints it.

use std::fmt;
use std::sync::OnceLock;

/// Segment size of the image digest tree.
pub const SEGMENT_SIZE: usize = 1 << 20;

/// Domain-separation context of the image digest.
pub const IMAGE_DIGEST_CONTEXT: &str = "diskdelta 2026-11 image digest v1";

/// A 32-byte BLAKE3 digest (of an image, a block or a record).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The all-zero digest, used as "absent" in fixed-size fields.
    pub const NONE: Digest = Digest([0; 32]);

    /// Wraps raw digest bytes read from a format.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Plain BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// True when every byte of `buf` is zero. Word-at-a-time, so it runs near
/// memory bandwidth and exits at the first non-zero word.
pub fn is_zero(buf: &[u8]) -> bool {
    let (chunks, rest) = buf.as_chunks::<64>();
    for chunk in chunks {
        let (words, _) = chunk.as_chunks::<8>();
        let acc = words
            .iter()
            .fold(0u64, |acc, w| acc | u64::from_ne_bytes(*w));
        if acc != 0 {
            return false;
        }
    }
    rest.iter().all(|&b| b == 0)
}

/// True when `a` and `b` hold the same bytes. Word-at-a-time like
/// [`is_zero`], so comparing images runs near memory bandwidth whatever
/// the C library's `memcmp` (musl's, in static builds, goes byte by byte).
pub fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_chunks, a_rest) = a.as_chunks::<64>();
    let (b_chunks, b_rest) = b.as_chunks::<64>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        let (xw, _) = x.as_chunks::<8>();
        let (yw, _) = y.as_chunks::<8>();
        let diff = xw.iter().zip(yw).fold(0u64, |acc, (p, q)| {
            acc | (u64::from_ne_bytes(*p) ^ u64::from_ne_bytes(*q))
        });
        if diff != 0 {
            return false;
        }
    }
    a_rest == b_rest
}

fn zero_segment_hash() -> &'static blake3::Hash {
    static HASH: OnceLock<blake3::Hash> = OnceLock::new();
    HASH.get_or_init(|| blake3::hash(&vec![0u8; SEGMENT_SIZE]))
}

/// The hash of one digest segment (at most [`SEGMENT_SIZE`] bytes), as
/// [`ImageHasher`] computes it. Reusable through
/// [`ImageHasher::push_segment`] when the same bytes appear at the same
/// segment-aligned position of another image.
pub fn hash_segment(seg: &[u8]) -> blake3::Hash {
    if seg.len() == SEGMENT_SIZE && is_zero(seg) {
        *zero_segment_hash()
    } else {
        blake3::hash(seg)
    }
}

/// The hash of a segment of `len` zero bytes.
pub fn zero_segment(len: usize) -> blake3::Hash {
    if len == SEGMENT_SIZE {
        *zero_segment_hash()
    } else {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut h = blake3::Hasher::new();
        let mut left = len.min(SEGMENT_SIZE);
        while left > 0 {
            let n = left.min(ZEROS.len());
            h.update(&ZEROS[..n]);
            left -= n;
        }
        h.finalize()
    }
}

/// Incremental image digest. Feed bytes in any split with [`update`], or
/// runs of zeros with [`update_zeros`].
///
/// [`update`]: ImageHasher::update
/// [`update_zeros`]: ImageHasher::update_zeros
#[derive(Debug, Clone)]
pub struct ImageHasher {
    segments: Vec<u8>,
    outer: blake3::Hasher,
    partial: blake3::Hasher,
    partial_len: usize,
    total: u64,
    partial_zero: bool,
}

impl Default for ImageHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageHasher {
    /// A hasher for an empty image.
    pub fn new() -> Self {
        ImageHasher {
            segments: Vec::with_capacity(32 * 1024),
            outer: blake3::Hasher::new_derive_key(IMAGE_DIGEST_CONTEXT),
            partial: blake3::Hasher::new(),
            partial_len: 0,
            total: 0,
            partial_zero: true,
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True before any byte was fed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn push_segment_hash(&mut self, hash: &blake3::Hash) {
        self.segments.extend_from_slice(hash.as_bytes());
        if self.segments.len() >= 32 * 1024 {
            self.outer.update(&self.segments);
            self.segments.clear();
        }
    }

    fn close_partial(&mut self) {
        let hash = if self.partial_zero && self.partial_len == SEGMENT_SIZE {
            *zero_segment_hash()
        } else {
            self.partial.finalize()
        };
        self.push_segment_hash(&hash);
        self.partial.reset();
        self.partial_len = 0;
        self.partial_zero = true;
    }

    /// Feeds a segment whose hash is already known: `len` bytes (a whole
    /// segment, or the image's last, shorter one) at a segment boundary.
    /// Returns false, feeding nothing, when the hasher is not at a segment
    /// boundary; the caller then feeds the bytes with [`ImageHasher::update`].
    pub fn push_segment(&mut self, hash: &blake3::Hash, len: usize) -> bool {
        if self.partial_len != 0 || len > SEGMENT_SIZE || len == 0 {
            return false;
        }
        self.push_segment_hash(hash);
        self.total += len as u64;
        true
    }

    /// Feeds image bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.partial_len == 0 && data.len() >= SEGMENT_SIZE {
                let (seg, rest) = data.split_at(SEGMENT_SIZE);
                let hash = hash_segment(seg);
                self.push_segment_hash(&hash);
                data = rest;
                continue;
            }
            let take = (SEGMENT_SIZE - self.partial_len).min(data.len());
            let (part, rest) = data.split_at(take);
            self.partial.update(part);
            self.partial_zero = self.partial_zero && is_zero(part);
            self.partial_len += take;
            data = rest;
            if self.partial_len == SEGMENT_SIZE {
                self.close_partial();
            }
        }
    }

    /// Feeds `count` zero bytes; whole zero segments cost no hashing.
    pub fn update_zeros(&mut self, mut count: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while count > 0 {
            if self.partial_len == 0 && count >= SEGMENT_SIZE as u64 {
                let hash = *zero_segment_hash();
                self.push_segment_hash(&hash);
                self.total += SEGMENT_SIZE as u64;
                count -= SEGMENT_SIZE as u64;
                continue;
            }
            let room = (SEGMENT_SIZE - self.partial_len) as u64;
            let take = count.min(room).min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..take]);
            count -= take as u64;
        }
    }

    /// The image digest of everything fed.
    pub fn finalize(mut self) -> Digest {
        if self.partial_len > 0 {
            self.close_partial();
        }
        let mut outer = self.outer;
        outer.update(&self.segments);
        let mut size_prefixed = blake3::Hasher::new_derive_key(IMAGE_DIGEST_CONTEXT);
        size_prefixed.update(&self.total.to_le_bytes());
        size_prefixed.update(outer.finalize().as_bytes());
        size_prefixed.finalize().into()
    }
}

/// The image digest of a byte slice held in memory.
pub fn image_digest(data: &[u8]) -> Digest {
    let mut h = ImageHasher::new();
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward restatement of the definition, for cross-checking.
    fn reference(data: &[u8]) -> Digest {
        let mut segs = blake3::Hasher::new_derive_key(IMAGE_DIGEST_CONTEXT);
        for seg in data.chunks(SEGMENT_SIZE) {
            segs.update(blake3::hash(seg).as_bytes());
        }
        let mut outer = blake3::Hasher::new_derive_key(IMAGE_DIGEST_CONTEXT);
        outer.update(&(data.len() as u64).to_le_bytes());
        outer.update(segs.finalize().as_bytes());
        outer.finalize().into()
    }

    #[test]
    fn boundary_sizes_match_reference() {
        let s = SEGMENT_SIZE;
        for len in [0, 1, 4095, s - 1, s, s + 1, 2 * s, 3 * s + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
            assert_eq!(image_digest(&data), reference(&data), "len {len}");
            let zeros = vec![0u8; len];
            let mut h = ImageHasher::new();
            h.update_zeros(len as u64);
            assert_eq!(h.finalize(), reference(&zeros), "zeros len {len}");
        }
    }

    #[test]
    fn pushed_segments_equal_fed_bytes() {
        let data: Vec<u8> = (0..(2 * SEGMENT_SIZE + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut h = ImageHasher::new();
        for seg in data.chunks(SEGMENT_SIZE) {
            assert!(h.push_segment(&hash_segment(seg), seg.len()));
        }
        assert_eq!(h.finalize(), image_digest(&data));
        let mut h = ImageHasher::new();
        h.update(&[1]);
        assert!(!h.push_segment(&hash_segment(&data[..SEGMENT_SIZE]), SEGMENT_SIZE));
        assert_eq!(zero_segment(100), blake3::hash(&[0u8; 100]));
        assert_eq!(
            zero_segment(SEGMENT_SIZE),
            blake3::hash(&vec![0u8; SEGMENT_SIZE])
        );
    }

    #[test]
    fn length_is_bound() {
        assert_ne!(image_digest(&[]), image_digest(&[0]));
        assert_ne!(image_digest(&[0]), image_digest(&[0, 0]));
    }

    #[test]
    fn bytes_equal_finds_any_difference() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for len in [0, 1, 63, 64, 65, 127, 128, 999, 1000] {
            assert!(bytes_equal(&a[..len], &a[..len]));
            for at in 0..len {
                let mut b = a[..len].to_vec();
                b[at] ^= 0x20;
                assert!(!bytes_equal(&a[..len], &b), "difference at {at} of {len}");
            }
        }
        assert!(!bytes_equal(&a[..10], &a[..11]));
    }

    #[test]
    fn is_zero_finds_any_byte() {
        let mut buf = vec![0u8; 300];
        assert!(is_zero(&buf));
        for i in 0..buf.len() {
            buf[i] = 1;
            assert!(!is_zero(&buf), "byte {i}");
            buf[i] = 0;
        }
    }

    proptest! {
        #[test]
        fn any_split_matches_reference(
            len in 0usize..(3 * SEGMENT_SIZE),
            cuts in proptest::collection::vec(0usize..(3 * SEGMENT_SIZE), 0..6),
            zero_from in 0usize..(3 * SEGMENT_SIZE),
        ) {
            let data: Vec<u8> = (0..len)
                .map(|i| if i >= zero_from { 0 } else { (i % 251) as u8 })
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.sort_unstable();
            let mut h = ImageHasher::new();
            let mut at = 0;
            for c in cuts.into_iter().chain(std::iter::once(len)) {
                if is_zero(&data[at..c]) {
                    h.update_zeros((c - at) as u64);
                } else {
                    h.update(&data[at..c]);
                }
                at = c;
            }
            prop_assert_eq!(h.finalize(), reference(&data));
        }
    }

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }
}
