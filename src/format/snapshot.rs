//! Snapshot files of the repository, version 1 (spec: `docs/formats/repository.md`).
//!
//! A snapshot is a JSON description followed by the image's chunk list,
//! one 32-byte chunk id per chunk-size piece of the image in order
//! ([`ChunkId::ZERO`] for a piece of zeros), zstd-compressed. All integers
//! are little-endian.
//!
//! ```text
//! offset    size  field
//! 0         8     magic "DDLTSNAP"
//! 8         4     version (1)
//! 12        4     JSON length j
//! 16        j     JSON metadata (UTF-8, see `SnapshotMeta`)
//! 16+j      8     chunk count c (= ceil(size / chunk_size))
//! 24+j      8     compressed list length l
//! 32+j      l     zstd frame of c * 32 bytes of chunk ids
//! 32+j+l    32    BLAKE3 of everything before
//! ```
//!
//! The snapshot's id is the BLAKE3 of the whole file.

use super::{le32, le64};
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, SnapshotId};

/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"DDLTSNAP";
/// Format version written and read.
pub const VERSION: u32 = 1;
/// Largest JSON part accepted.
pub const MAX_META_LEN: u32 = 1 << 20;

/// The description of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Name the snapshot series goes by (for example `host.sda`).
    pub name: String,
    /// Where the image came from, as given (`host:/dev/sda`, a path, `-`).
    pub source: String,
    /// Host the image was read on.
    pub host: String,
    /// When the backup started, RFC 3339 UTC.
    pub time: String,
    /// The same instant as seconds since the Unix epoch.
    pub unix_time: i64,
    /// Nanoseconds within that second (orders snapshots taken in the same
    /// second; 0 when the time was given by the user).
    #[serde(default)]
    pub nanos: u32,
    /// Image size in bytes.
    pub size: u64,
    /// Chunk size of the repository when it was made.
    pub chunk_size: u32,
    /// Image digest (see `docs/formats/image-digest.md`), hex.
    pub digest: String,
    /// Snapshot this one was compared against, hex id.
    pub parent: Option<String>,
    /// User tags.
    pub tags: Vec<String>,
    /// The diskdelta version that wrote it.
    pub program: String,
    /// Thin device id the image was read from by a thin-aware backup, so
    /// that the next one can check its `thin_delta` starts from this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_id: Option<u64>,
}

/// What is wrong with a snapshot file's bytes.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    /// Shorter than its structure says, or longer.
    #[error("snapshot file is truncated or has trailing bytes")]
    Length,
    /// Not a snapshot file.
    #[error("not a diskdelta snapshot (bad magic)")]
    BadMagic,
    /// Written by a newer diskdelta.
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// Checksum mismatch.
    #[error("snapshot file checksum mismatch")]
    Checksum,
    /// The JSON part does not parse.
    #[error("snapshot metadata: {0}")]
    Meta(#[from] serde_json::Error),
    /// The chunk count does not match size and chunk size.
    #[error("chunk count {count} does not fit size {size} at chunk size {chunk_size}")]
    Count {
        /// Stored count.
        count: u64,
        /// Stored size.
        size: u64,
        /// Stored chunk size.
        chunk_size: u32,
    },
    /// The chunk list does not decompress to its count.
    #[error("chunk list is damaged: {0}")]
    List(std::io::Error),
}

/// Number of chunks of an image.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// Builds a snapshot's chunk list as chunks arrive, compressing on the go so
/// memory stays proportional to the compressed list.
pub struct SnapshotWriter {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    count: u64,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("count", &self.count)
            .finish()
    }
}

impl SnapshotWriter {
    /// An empty list.
    ///
    /// # Errors
    /// zstd setup failure.
    pub fn new() -> std::io::Result<Self> {
        Ok(SnapshotWriter {
            encoder: zstd::stream::write::Encoder::new(Vec::new(), 3)?,
            count: 0,
        })
    }

    /// Appends the next chunk id.
    ///
    /// # Errors
    /// zstd failure.
    pub fn push(&mut self, id: &ChunkId) -> std::io::Result<()> {
        self.count += 1;
        self.encoder.write_all(id.as_bytes())
    }

    /// Chunks pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The whole file and its id.
    ///
    /// # Errors
    /// zstd or JSON failure.
    pub fn finish(self, meta: &SnapshotMeta) -> std::io::Result<(Vec<u8>, SnapshotId)> {
        let list = self.encoder.finish()?;
        let json = serde_json::to_vec(meta)?;
        let mut out = Vec::with_capacity(json.len() + list.len() + 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(list.len() as u64).to_le_bytes());
        out.extend_from_slice(&list);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        let id = SnapshotId::of(&out);
        Ok((out, id))
    }
}

/// A decoded snapshot file: its metadata and its (still compressed) list.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The snapshot's id (BLAKE3 of the stored object: in an encrypted
    /// repository, of its sealed bytes).
    pub id: SnapshotId,
    /// BLAKE3 of the snapshot file itself (the id of a plain repository's
    /// copy of it): equal in every repository the snapshot is copied to.
    pub content_id: SnapshotId,
    /// Its description.
    pub meta: SnapshotMeta,
    /// Number of chunks.
    pub count: u64,
    list: Vec<u8>,
}

impl Snapshot {
    /// Decodes a snapshot file.
    ///
    /// # Errors
    /// Structural problems, checksum mismatch, bad JSON, inconsistent count.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotFormatError> {
        if bytes.len() < 16 + 16 + 32 {
            return Err(SnapshotFormatError::Length);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if body[0..8] != MAGIC {
            return Err(SnapshotFormatError::BadMagic);
        }
        let version = le32(&body[8..12]);
        if version != VERSION {
            return Err(SnapshotFormatError::Version(version));
        }
        if blake3::hash(body).as_bytes()[..] != sum[..] {
            return Err(SnapshotFormatError::Checksum);
        }
        let json_len = le32(&body[12..16]);
        if json_len > MAX_META_LEN {
            return Err(SnapshotFormatError::Length);
        }
        let json_end = 16 + json_len as usize;
        let json = body.get(16..json_end).ok_or(SnapshotFormatError::Length)?;
        let meta: SnapshotMeta = serde_json::from_slice(json)?;
        let head = body
            .get(json_end..json_end + 16)
            .ok_or(SnapshotFormatError::Length)?;
        let count = le64(&head[0..8]);
        let list_len = le64(&head[8..16]);
        // Checked: a huge length must not overflow (the checksum is no
        // defence, anyone can compute it).
        if (json_end as u64 + 16).checked_add(list_len) != Some(body.len() as u64) {
            return Err(SnapshotFormatError::Length);
        }
        if meta.chunk_size == 0 || count != chunk_count(meta.size, meta.chunk_size) {
            return Err(SnapshotFormatError::Count {
                count,
                size: meta.size,
                chunk_size: meta.chunk_size,
            });
        }
        Ok(Snapshot {
            id: SnapshotId::of(bytes),
            content_id: SnapshotId::of(bytes),
            meta,
            count,
            list: body[json_end + 16..].to_vec(),
        })
    }

    /// The chunk ids in image order, decompressed as they are read.
    ///
    /// # Errors
    /// zstd setup failure.
    pub fn chunk_ids(&self) -> Result<ChunkIds<'_>, SnapshotFormatError> {
        Ok(ChunkIds {
            decoder: zstd::stream::read::Decoder::with_buffer(&self.list[..])
                .map_err(SnapshotFormatError::List)?,
            left: self.count,
            done: false,
        })
    }

    /// The digest as hex.
    pub fn digest_hex(&self) -> &str {
        &self.meta.digest
    }
}

/// Streaming iterator over a snapshot's chunk ids.
pub struct ChunkIds<'a> {
    decoder: zstd::stream::read::Decoder<'a, &'a [u8]>,
    left: u64,
    done: bool,
}

impl std::fmt::Debug for ChunkIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkIds")
            .field("left", &self.left)
            .finish()
    }
}

impl Iterator for ChunkIds<'_> {
    type Item = Result<ChunkId, SnapshotFormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            // The list must end exactly here.
            let mut extra = [0u8; 1];
            return match self.decoder.read(&mut extra) {
                Ok(0) => None,
                Ok(_) => Some(Err(SnapshotFormatError::List(std::io::Error::other(
                    "more chunk ids than the count",
                )))),
                Err(e) => Some(Err(SnapshotFormatError::List(e))),
            };
        }
        let mut id = [0u8; 32];
        match self.decoder.read_exact(&mut id) {
            Ok(()) => {
                self.left -= 1;
                Some(Ok(ChunkId::from_bytes(id)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(SnapshotFormatError::List(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn meta(size: u64, chunk_size: u32) -> SnapshotMeta {
        SnapshotMeta {
            name: "host.sda".into(),
            source: "host:/dev/sda".into(),
            host: "host".into(),
            time: "2026-11-22T10:00:00Z".into(),
            unix_time: 1_795_341_600,
            nanos: 0,
            size,
            chunk_size,
            digest: "00".repeat(32),
            parent: None,
            tags: vec!["nightly".into()],
            program: "diskdelta 0.1.0".into(),
            thin_id: None,
        }
    }

    fn build(ids: &[ChunkId], size: u64) -> (Vec<u8>, SnapshotId) {
        let mut w = SnapshotWriter::new().expect("encoder");
        for id in ids {
            w.push(id).expect("push");
        }
        w.finish(&meta(size, 4096)).expect("finish")
    }

    #[test]
    fn round_trip() {
        let ids = vec![ChunkId::of(b"a"), ChunkId::ZERO, ChunkId::of(b"c")];
        let (bytes, id) = build(&ids, 3 * 4096 - 5);
        let snap = Snapshot::decode(&bytes).expect("decode");
        assert_eq!(snap.id, id);
        assert_eq!(snap.meta, meta(3 * 4096 - 5, 4096));
        let back: Vec<ChunkId> = snap
            .chunk_ids()
            .expect("ids")
            .collect::<Result<_, _>>()
            .expect("list");
        assert_eq!(back, ids);
    }

    #[test]
    fn damage_is_caught() {
        let (bytes, _) = build(&[ChunkId::of(b"a")], 4096);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Snapshot::decode(&bad).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(Snapshot::decode(&bytes[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn count_must_match_size() {
        let (bytes, _) = build(&[ChunkId::of(b"a")], 2 * 4096);
        assert!(matches!(
            Snapshot::decode(&bytes),
            Err(SnapshotFormatError::Count { .. })
        ));
    }

    /// A valid file whose list-length field says `list_len`, checksum resealed.
    fn with_list_len(list_len: u64) -> Vec<u8> {
        let (mut bytes, _) = build(&[ChunkId::of(b"a")], 4096);
        let json_len = le32(&bytes[12..16]) as usize;
        let at = 16 + json_len + 8;
        bytes[at..at + 8].copy_from_slice(&list_len.to_le_bytes());
        let body = bytes.len() - 32;
        let sum = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(sum.as_bytes());
        bytes
    }

    #[test]
    fn list_lengths_that_overflow_are_refused() {
        for list_len in [u64::MAX, u64::MAX - 20, 1 << 63, 1 << 40] {
            assert!(
                matches!(
                    Snapshot::decode(&with_list_len(list_len)),
                    Err(SnapshotFormatError::Length)
                ),
                "{list_len}"
            );
        }
    }

    fn metas() -> impl Strategy<Value = (SnapshotMeta, u64)> {
        (
            ("\\PC{0,20}", "\\PC{0,30}", "[a-z0-9.-]{0,20}"),
            (
                (any::<i64>(), 0u32..1_000_000_000),
                1u32..=(4 << 20),
                0u64..40,
                any::<u32>(),
            ),
            (
                proptest::collection::vec("\\PC{0,10}", 0..4),
                proptest::option::of(any::<[u8; 32]>()),
                any::<[u8; 32]>(),
            ),
        )
            .prop_map(
                |(
                    (name, source, host),
                    ((unix_time, nanos), chunk_size, count, tail),
                    (tags, parent, digest),
                )| {
                    let cs = u64::from(chunk_size);
                    let size = if count == 0 {
                        0
                    } else {
                        (count - 1) * cs + 1 + u64::from(tail) % cs
                    };
                    let meta = SnapshotMeta {
                        name,
                        source,
                        host,
                        time: format!("t{unix_time}"),
                        unix_time,
                        nanos,
                        size,
                        chunk_size,
                        digest: ChunkId::from_bytes(digest).to_hex(),
                        parent: parent.map(|p| SnapshotId::from_bytes(p).to_hex()),
                        tags,
                        program: "diskdelta test".into(),
                        thin_id: None,
                    };
                    (meta, count)
                },
            )
    }

    proptest! {
        #[test]
        fn written_snapshots_decode_back(
            (meta, count) in metas(),
            seeds in proptest::collection::vec(any::<u8>(), 40),
        ) {
            prop_assert_eq!(chunk_count(meta.size, meta.chunk_size), count);
            // Zero markers and repeated ids mixed in, as in real lists.
            let ids: Vec<ChunkId> = seeds[..count as usize]
                .iter()
                .map(|&b| if b < 40 { ChunkId::ZERO } else { ChunkId::of(&[b % 50]) })
                .collect();
            let mut w = SnapshotWriter::new().expect("encoder");
            for id in &ids {
                w.push(id).expect("push");
            }
            prop_assert_eq!(w.count(), count);
            let (bytes, id) = w.finish(&meta).expect("finish");
            prop_assert_eq!(id, SnapshotId::of(&bytes));
            let snap = Snapshot::decode(&bytes).expect("decode");
            prop_assert_eq!(snap.id, id);
            prop_assert_eq!(&snap.meta, &meta);
            prop_assert_eq!(snap.count, count);
            let back: Vec<ChunkId> = snap
                .chunk_ids()
                .expect("ids")
                .collect::<Result<_, _>>()
                .expect("list");
            prop_assert_eq!(back, ids);
        }

        #[test]
        fn damaged_snapshots_are_refused(
            (meta, count) in metas(),
            at in any::<usize>(),
            x in 1u8..,
            cut in any::<usize>(),
        ) {
            let mut w = SnapshotWriter::new().expect("encoder");
            for i in 0..count {
                w.push(&ChunkId::of(&i.to_le_bytes())).expect("push");
            }
            let (bytes, _) = w.finish(&meta).expect("finish");
            let mut bad = bytes.clone();
            let i = at % bad.len();
            bad[i] ^= x;
            prop_assert!(Snapshot::decode(&bad).is_err(), "flipped byte {}", i);
            let cut = cut % bytes.len();
            prop_assert!(Snapshot::decode(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }
}
