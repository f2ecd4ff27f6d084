//! Sealed objects of encrypted repositories, version 1 (spec:
//! `docs/formats/repository.md`, "Encryption").
//!
//! Whole objects (index files, snapshots, the config's check) are wrapped
//! in an envelope; a pack's entry table and each chunk blob are sealed
//! without one (their kind is implied by where they are), but with
//! associated data that binds them to their place. The AEAD is
//! XChaCha20-Poly1305: 24-byte random nonces, 16-byte tags. This module
//! only lays out bytes; the cryptography is in `repo::crypto`.
//!
//! ```text
//! envelope
//! offset  size  field
//! 0       8     magic "DDLTSEAL"
//! 8       4     version (1)
//! 12      1     kind: 1 config check, 2 index file, 3 snapshot
//! 13      3     reserved, zero
//! 16      24    nonce
//! 40      n+16  ciphertext of the n-byte inner object, then the tag
//!               associated data: bytes 0..16
//!
//! sealed blob (a chunk in a pack)          sealed pack table
//! 0   24    nonce                          0   24     nonce
//! 24  n+16  ciphertext, tag                24  48c+16 ciphertext, tag
//! associated data (45 bytes):              associated data (16 bytes):
//!   "DDLTBLOB", stored chunk id (32),        "DDLTPTAB", version (u32) = 1,
//!   encoding (u8), plaintext length (u32)    entry count c (u32)
//! ```

use super::le32;

/// Magic of the envelope.
pub const MAGIC: [u8; 8] = *b"DDLTSEAL";
/// Envelope version written and read.
pub const VERSION: u32 = 1;
/// Bytes of the envelope header (the associated data).
pub const HEADER_LEN: usize = 16;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of an authentication tag.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a blob or a pack table: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// What an envelope adds to an object.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + SEAL_OVERHEAD;
/// Magic at the start of a blob's associated data.
pub const BLOB_AD_MAGIC: [u8; 8] = *b"DDLTBLOB";
/// Magic at the start of a pack table's associated data.
pub const TABLE_AD_MAGIC: [u8; 8] = *b"DDLTPTAB";

/// What an envelope holds; part of the associated data, so an object of
/// one kind cannot pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The config's sealed check of its own fields.
    Config = 1,
    /// An index file.
    Index = 2,
    /// A snapshot.
    Snapshot = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Config),
            2 => Some(Kind::Index),
            3 => Some(Kind::Snapshot),
            _ => None,
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Index => "index file",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// What is wrong with sealed bytes before any key is tried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealedError {
    /// Too short to hold header, nonce and tag.
    #[error("sealed object is truncated")]
    Truncated,
    /// Not an envelope.
    #[error("not a sealed object (bad magic): the repository is encrypted but this object is not")]
    BadMagic,
    /// Written by a newer diskdelta.
    #[error("sealed object version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// Reserved bytes are not zero.
    #[error("sealed object has non-zero reserved bytes")]
    Reserved,
    /// An unknown kind byte.
    #[error("sealed object of unknown kind {0}")]
    UnknownKind(u8),
    /// A kind other than the one expected at this name.
    #[error("sealed object holds a {found}, expected a {expected}")]
    WrongKind {
        /// What the name says.
        expected: &'static str,
        /// What the envelope says.
        found: &'static str,
    },
}

/// The parts of an envelope.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The associated data: magic, version, kind, reserved.
    pub header: &'a [u8],
    /// The nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
}

/// The header (associated data) of an envelope of `kind`.
pub fn header(kind: Kind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12] = kind as u8;
    h
}

/// Splits an envelope that must hold `expected`.
///
/// # Errors
/// Truncated bytes, bad magic, version, reserved bytes or kind.
pub fn parse(bytes: &[u8], expected: Kind) -> Result<Envelope<'_>, SealedError> {
    if bytes.len() < 8 || bytes[0..8] != MAGIC {
        return Err(
            if bytes.len() < ENVELOPE_OVERHEAD && MAGIC.starts_with(bytes) {
                SealedError::Truncated
            } else {
                SealedError::BadMagic
            },
        );
    }
    if bytes.len() < ENVELOPE_OVERHEAD {
        return Err(SealedError::Truncated);
    }
    let version = le32(&bytes[8..12]);
    if version != VERSION {
        return Err(SealedError::Version(version));
    }
    if bytes[13..16] != [0; 3] {
        return Err(SealedError::Reserved);
    }
    let kind = Kind::from_byte(bytes[12]).ok_or(SealedError::UnknownKind(bytes[12]))?;
    if kind != expected {
        return Err(SealedError::WrongKind {
            expected: expected.name(),
            found: kind.name(),
        });
    }
    let nonce = bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN]
        .try_into()
        .map_err(|_| SealedError::Truncated)?;
    Ok(Envelope {
        header: &bytes[..HEADER_LEN],
        nonce,
        ciphertext: &bytes[HEADER_LEN + NONCE_LEN..],
    })
}

/// The associated data of a chunk blob: binds it to the chunk it claims
/// to be and to how its plaintext is encoded.
pub fn blob_ad(stored_id: &[u8; 32], encoding: u8, raw_len: u32) -> [u8; 45] {
    let mut ad = [0u8; 45];
    ad[0..8].copy_from_slice(&BLOB_AD_MAGIC);
    ad[8..40].copy_from_slice(stored_id);
    ad[40] = encoding;
    ad[41..45].copy_from_slice(&raw_len.to_le_bytes());
    ad
}

/// The associated data of a pack's entry table of `count` entries.
pub fn table_ad(count: u32) -> [u8; 16] {
    let mut ad = [0u8; 16];
    ad[0..8].copy_from_slice(&TABLE_AD_MAGIC);
    ad[8..12].copy_from_slice(&VERSION.to_le_bytes());
    ad[12..16].copy_from_slice(&count.to_le_bytes());
    ad
}

/// Splits a sealed blob or table into nonce and ciphertext.
///
/// # Errors
/// Shorter than nonce and tag.
pub fn split(bytes: &[u8]) -> Result<(&[u8; NONCE_LEN], &[u8]), SealedError> {
    if bytes.len() < SEAL_OVERHEAD {
        return Err(SealedError::Truncated);
    }
    let nonce = bytes[..NONCE_LEN]
        .try_into()
        .map_err(|_| SealedError::Truncated)?;
    Ok((nonce, &bytes[NONCE_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_kinds_are_checked() {
        let mut bytes = header(Kind::Index).to_vec();
        bytes.extend_from_slice(&[7; NONCE_LEN]);
        bytes.extend_from_slice(&[1; TAG_LEN + 3]);
        let e = parse(&bytes, Kind::Index).expect("valid envelope");
        assert_eq!(e.nonce, &[7; NONCE_LEN]);
        assert_eq!(e.ciphertext.len(), TAG_LEN + 3);
        assert_eq!(
            parse(&bytes, Kind::Snapshot).expect_err("refused"),
            SealedError::WrongKind {
                expected: "snapshot",
                found: "index file"
            }
        );
        let mut bad = bytes.clone();
        bad[14] = 1;
        assert_eq!(
            parse(&bad, Kind::Index).expect_err("refused"),
            SealedError::Reserved
        );
        let mut bad = bytes.clone();
        bad[8] = 2;
        assert_eq!(
            parse(&bad, Kind::Index).expect_err("refused"),
            SealedError::Version(2)
        );
        let mut bad = bytes.clone();
        bad[12] = 9;
        assert_eq!(
            parse(&bad, Kind::Index).expect_err("refused"),
            SealedError::UnknownKind(9)
        );
        assert_eq!(
            parse(b"DDLTINDX", Kind::Index).expect_err("refused"),
            SealedError::BadMagic
        );
        for n in 0..ENVELOPE_OVERHEAD {
            assert!(parse(&bytes[..n], Kind::Index).is_err());
        }
    }

    #[test]
    fn associated_data_differs_in_every_field() {
        let a = blob_ad(&[1; 32], 1, 100);
        assert_ne!(a, blob_ad(&[2; 32], 1, 100));
        assert_ne!(a, blob_ad(&[1; 32], 0, 100));
        assert_ne!(a, blob_ad(&[1; 32], 1, 101));
        assert_ne!(table_ad(3), table_ad(4));
    }
}
