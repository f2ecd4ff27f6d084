//! Identities of repository objects: 32-byte BLAKE3 hashes, each kind its
//! own newtype so that a pack id can never be looked up as a chunk id.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw bytes read from a format.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// BLAKE3 of `data`.
            pub fn of(data: &[u8]) -> Self {
                $name(*blake3::hash(data).as_bytes())
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex_string(&self.0)
            }

            /// The first `n` hex digits, for messages.
            pub fn short(&self) -> String {
                let mut s = self.to_hex();
                s.truncate(8);
                s
            }

            /// Parses 64 hex digits.
            pub fn from_hex(text: &str) -> Option<Self> {
                parse_hex(text).map($name)
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                $name(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

id_type!(
    /// BLAKE3 of a chunk's plaintext.
    ChunkId
);
id_type!(
    /// BLAKE3 of a whole pack file.
    PackId
);
id_type!(
    /// BLAKE3 of a whole snapshot file.
    SnapshotId
);
id_type!(
    /// BLAKE3 of a whole index file.
    IndexId
);

impl ChunkId {
    /// Stands for a chunk of zeros in snapshot chunk lists; such chunks are
    /// never stored. (No BLAKE3 output is all zeros in practice.)
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    /// True for [`ChunkId::ZERO`].
    pub fn is_zero_marker(&self) -> bool {
        self.0 == [0; 32]
    }

    /// A cheap 64-bit key for hash maps (ids are already uniform).
    pub fn prefix64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }
}

fn hex_string(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A `HashMap` hasher for ids: their first 8 bytes are already uniform, so
/// hashing them again (SipHash) would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Ids hash as their 32 raw bytes; take the first 8 (other callers
        // fall back to folding everything in).
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
            if bytes.len() == 32 {
                break;
            }
        }
    }
}

/// Build-hasher for id-keyed maps.
pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"abc");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.to_hex(), blake3::hash(b"abc").to_hex().as_str());
        assert!(ChunkId::from_hex("zz").is_none());
        assert!(!id.is_zero_marker());
        assert!(ChunkId::ZERO.is_zero_marker());
    }
}
