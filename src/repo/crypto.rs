//! The cryptography of encrypted repositories (design and threat model:
//! `docs/formats/repository.md`, "Encryption").
//!
//! A repository's master key has two halves: the data key seals every
//! stored object with XChaCha20-Poly1305 (random 24-byte nonces, so they
//! never repeat in practice: 2^-96 after 2^48 objects), and the id key
//! turns a chunk's content hash into the id under which it is stored,
//! `BLAKE3-keyed(id key, BLAKE3(plaintext))`, so ids in pack tables and
//! index files reveal nothing about the data without the key. Snapshots
//! keep the content hashes (inside their sealed bytes): they are the image
//! digest's segments and what a remote source compares against, and the
//! keyed id is derived from them where the index is consulted.
//!
//! Nothing here is hand-written cryptography: the AEAD is the RustCrypto
//! `chacha20poly1305` crate, keyed hashing is BLAKE3's keyed mode.

use chacha20poly1305::aead::{AeadCore, AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::format::pack::TableSeal;
use crate::format::sealed::{self, Kind, SealedError, NONCE_LEN, TAG_LEN};
use crate::id::ChunkId;

/// Bytes of a master key: data key and id key.
pub const MASTER_KEY_LEN: usize = 64;

/// Why a sealed object could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The bytes are not a well-formed sealed object.
    #[error(transparent)]
    Format(#[from] SealedError),
    /// The object does not authenticate: its bytes were changed, it was
    /// moved from another place, or it was written with another key.
    #[error("{0} fails authentication (tampered with, moved, or written with another key)")]
    Authentication(&'static str),
}

/// A repository's master key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    data: [u8; 32],
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> MasterKey {
        let data: [u8; 32] = XChaCha20Poly1305::generate_key(&mut OsRng).into();
        let id: [u8; 32] = XChaCha20Poly1305::generate_key(&mut OsRng).into();
        MasterKey { data, id }
    }

    /// The key from its 64 bytes (data key, then id key).
    pub fn from_bytes(bytes: &[u8; MASTER_KEY_LEN]) -> MasterKey {
        let mut data = [0u8; 32];
        let mut id = [0u8; 32];
        data.copy_from_slice(&bytes[..32]);
        id.copy_from_slice(&bytes[32..]);
        MasterKey { data, id }
    }

    /// Its 64 bytes, for wrapping into a key file.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; MASTER_KEY_LEN]> {
        let mut out = zeroize::Zeroizing::new([0u8; MASTER_KEY_LEN]);
        out[..32].copy_from_slice(&self.data);
        out[32..].copy_from_slice(&self.id);
        out
    }
}

/// Seals and opens with a master key; cheap to share between threads.
pub struct Crypto {
    cipher: XChaCha20Poly1305,
    id_key: [u8; 32],
}

impl Drop for Crypto {
    fn drop(&mut self) {
        self.id_key.zeroize();
    }
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(..)")
    }
}

impl Crypto {
    /// Sealing and opening with `key`.
    pub fn new(key: &MasterKey) -> Crypto {
        Crypto {
            cipher: XChaCha20Poly1305::new((&key.data).into()),
            id_key: key.id,
        }
    }

    /// The id a chunk with content hash `content` is stored under; the
    /// zero marker stays itself (zero chunks are never stored).
    pub fn stored_id(&self, content: &ChunkId) -> ChunkId {
        if content.is_zero_marker() {
            return *content;
        }
        ChunkId::from(blake3::keyed_hash(&self.id_key, content.as_bytes()))
    }

    /// `nonce || ciphertext || tag` of `plain` under `ad`.
    fn seal(&self, ad: &[u8], plain: &[u8], prefix: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = Vec::with_capacity(prefix.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        // Encryption fails only past the cipher's 256 GiB message limit;
        // sealed objects are bounded far below it (packs 2 GiB at most).
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, ad, &mut out[start..])
            .unwrap_or_default();
        out.extend_from_slice(&tag);
        out
    }

    /// The plaintext of `ciphertext || tag` under `nonce` and `ad`, into
    /// `out`, which must be the ciphertext's length.
    fn open_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ()> {
        let Some(split) = sealed.len().checked_sub(TAG_LEN) else {
            return Err(());
        };
        let (ciphertext, tag) = sealed.split_at(split);
        if out.len() != ciphertext.len() {
            return Err(());
        }
        out.copy_from_slice(ciphertext);
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, out, Tag::from_slice(tag))
            .map_err(|_| out.fill(0))
    }

    /// [`Self::open_to`] into a vector sized to fit.
    fn open_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        out.resize(sealed.len().saturating_sub(TAG_LEN), 0);
        self.open_to(nonce, ad, sealed, out)
            .map_err(|_| out.clear())
    }

    /// A chunk's stored blob: `encoded` (its zstd frame or raw bytes)
    /// sealed and bound to the chunk's stored id, encoding and length.
    pub fn seal_blob(
        &self,
        stored_id: &ChunkId,
        encoding: u8,
        raw_len: u32,
        encoded: &[u8],
    ) -> Vec<u8> {
        let ad = sealed::blob_ad(stored_id.as_bytes(), encoding, raw_len);
        self.seal(&ad, encoded, &[])
    }

    /// The encoded chunk inside a stored blob, written to `out`.
    ///
    /// # Errors
    /// The blob is too short or does not authenticate for this chunk.
    pub fn open_blob(
        &self,
        stored_id: &ChunkId,
        encoding: u8,
        raw_len: u32,
        blob: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (nonce, sealed) = sealed::split(blob)?;
        let ad = sealed::blob_ad(stored_id.as_bytes(), encoding, raw_len);
        self.open_into(nonce, &ad, sealed, out)
            .map_err(|_| CryptoError::Authentication("chunk"))
    }

    /// [`Self::open_blob`] straight into `out`, which must be the encoded
    /// chunk's length (a raw chunk opens into its place in an image).
    ///
    /// # Errors
    /// As [`Self::open_blob`], and a blob of another length.
    pub fn open_blob_to(
        &self,
        stored_id: &ChunkId,
        encoding: u8,
        raw_len: u32,
        blob: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (nonce, sealed) = sealed::split(blob)?;
        let ad = sealed::blob_ad(stored_id.as_bytes(), encoding, raw_len);
        self.open_to(nonce, &ad, sealed, out)
            .map_err(|_| CryptoError::Authentication("chunk"))
    }

    /// A whole object (index file, snapshot, config check) in its envelope.
    pub fn seal_object(&self, kind: Kind, inner: &[u8]) -> Vec<u8> {
        let header = sealed::header(kind);
        self.seal(&header, inner, &header)
    }

    /// The inner bytes of an envelope of `kind`.
    ///
    /// # Errors
    /// A malformed envelope, another kind, or bytes that do not authenticate.
    pub fn open_object(&self, kind: Kind, bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let envelope = sealed::parse(bytes, kind)?;
        let mut out = Vec::new();
        self.open_into(
            envelope.nonce,
            envelope.header,
            envelope.ciphertext,
            &mut out,
        )
        .map_err(|_| CryptoError::Authentication(kind.name()))?;
        Ok(out)
    }
}

impl TableSeal for Crypto {
    fn seal_table(&self, table: &[u8], count: u32) -> Vec<u8> {
        self.seal(&sealed::table_ad(count), table, &[])
    }

    fn open_table(&self, region: &[u8], count: u32) -> Option<Vec<u8>> {
        let (nonce, sealed) = sealed::split(region).ok()?;
        let mut out = Vec::new();
        self.open_into(nonce, &sealed::table_ad(count), sealed, &mut out)
            .ok()?;
        Some(out)
    }
}

/// Wraps a master key under a key derived from a password (the sealed
/// part of a key file): `nonce || ciphertext || tag`, bound to `ad`.
pub fn wrap_master_key(wrapping: &[u8; 32], master: &MasterKey, ad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let bytes = master.to_bytes();
    let mut buf = bytes.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(&nonce, ad, &mut buf)
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    buf.zeroize();
    out
}

/// The master key inside a wrapped one, or `None` when `wrapping` is not
/// the key it was wrapped with (a wrong password) or the bytes changed.
pub fn unwrap_master_key(wrapping: &[u8; 32], wrapped: &[u8], ad: &[u8]) -> Option<MasterKey> {
    if wrapped.len() != NONCE_LEN + MASTER_KEY_LEN + TAG_LEN {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let (nonce, rest) = wrapped.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(MASTER_KEY_LEN);
    let mut buf = zeroize::Zeroizing::new([0u8; MASTER_KEY_LEN]);
    buf.copy_from_slice(ciphertext);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            ad,
            &mut buf[..],
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(MasterKey::from_bytes(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn crypto() -> Crypto {
        Crypto::new(&MasterKey::from_bytes(&[7; 64]))
    }

    #[test]
    fn stored_ids_are_keyed_and_keep_the_zero_marker() {
        let c = crypto();
        let other = Crypto::new(&MasterKey::from_bytes(&[8; 64]));
        let id = ChunkId::of(b"data");
        assert_ne!(c.stored_id(&id), id);
        assert_ne!(c.stored_id(&id), other.stored_id(&id));
        assert_eq!(c.stored_id(&id), c.stored_id(&id));
        assert_eq!(c.stored_id(&ChunkId::ZERO), ChunkId::ZERO);
    }

    #[test]
    fn blobs_are_bound_to_their_chunk_encoding_and_length() {
        let c = crypto();
        let id = ChunkId::of(b"x");
        let blob = c.seal_blob(&id, 1, 10, b"frame");
        assert_eq!(blob.len(), 5 + sealed::SEAL_OVERHEAD);
        let mut out = Vec::new();
        c.open_blob(&id, 1, 10, &blob, &mut out).expect("opens");
        assert_eq!(out, b"frame");
        let other = ChunkId::of(b"y");
        assert!(c.open_blob(&other, 1, 10, &blob, &mut out).is_err());
        assert!(c.open_blob(&id, 0, 10, &blob, &mut out).is_err());
        assert!(c.open_blob(&id, 1, 11, &blob, &mut out).is_err());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(c.open_blob(&id, 1, 10, &bad, &mut out).is_err(), "byte {i}");
        }
        // Two seals of the same bytes differ (random nonces).
        assert_ne!(blob, c.seal_blob(&id, 1, 10, b"frame"));
    }

    #[test]
    fn objects_are_bound_to_their_kind() {
        let c = crypto();
        let sealed = c.seal_object(Kind::Snapshot, b"inner");
        assert_eq!(
            c.open_object(Kind::Snapshot, &sealed).as_deref(),
            Ok(&b"inner"[..])
        );
        assert!(c.open_object(Kind::Index, &sealed).is_err());
        // A forged kind byte fails authentication, not only the kind check.
        let mut forged = sealed.clone();
        forged[12] = Kind::Index as u8;
        assert_eq!(
            c.open_object(Kind::Index, &forged),
            Err(CryptoError::Authentication("index file"))
        );
        let wrong_key = Crypto::new(&MasterKey::from_bytes(&[9; 64]));
        assert!(wrong_key.open_object(Kind::Snapshot, &sealed).is_err());
    }

    #[test]
    fn tables_open_only_with_their_count() {
        let c = crypto();
        let region = c.seal_table(&[5; 96], 2);
        assert_eq!(c.open_table(&region, 2), Some(vec![5; 96]));
        assert_eq!(c.open_table(&region, 3), None);
        assert_eq!(c.open_table(&region[..10], 2), None);
    }

    #[test]
    fn master_keys_wrap_and_unwrap() {
        let master = MasterKey::from_bytes(&[3; 64]);
        let wrapped = wrap_master_key(&[1; 32], &master, b"repo");
        let back = unwrap_master_key(&[1; 32], &wrapped, b"repo").expect("unwraps");
        assert_eq!(*back.to_bytes(), [3; 64]);
        assert!(unwrap_master_key(&[2; 32], &wrapped, b"repo").is_none());
        assert!(unwrap_master_key(&[1; 32], &wrapped, b"other").is_none());
        assert!(unwrap_master_key(&[1; 32], &wrapped[1..], b"repo").is_none());
    }

    proptest! {
        #[test]
        fn sealed_objects_round_trip(inner in proptest::collection::vec(any::<u8>(), 0..2000), flip in any::<usize>()) {
            let c = crypto();
            let sealed = c.seal_object(Kind::Index, &inner);
            prop_assert_eq!(sealed.len(), inner.len() + sealed::ENVELOPE_OVERHEAD);
            prop_assert_eq!(c.open_object(Kind::Index, &sealed), Ok(inner.clone()));
            let mut bad = sealed.clone();
            let i = flip % bad.len();
            bad[i] ^= 0x80;
            prop_assert!(c.open_object(Kind::Index, &bad).is_err());
        }
    }
}
