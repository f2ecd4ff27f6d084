//! The in-memory index: where each chunk is stored.
//!
//! Memory is about 80 bytes per distinct stored chunk (a 1 TiB repository
//! of unique data at 1 MiB chunks: about 80 MiB).
//!
//! Lookups take a chunk's content hash (what snapshots list and what a
//! backup computes); in an encrypted repository the index is keyed by the
//! stored ids of pack tables and index files, and [`Index::contains`] and
//! [`Index::get`] derive the stored id first.

use std::collections::HashMap;
use std::sync::Arc;

use super::crypto::Crypto;

use crate::format::pack::{Encoding, PackEntry};
use crate::id::{ChunkId, IdBuildHasher, IndexId, PackId};

/// Where one chunk's blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    /// Offset of the blob in the pack.
    pub offset: u32,
    /// Bytes of the blob.
    pub stored_len: u32,
    /// Bytes of the chunk.
    pub raw_len: u32,
    /// How the blob encodes the chunk.
    pub encoding: Encoding,
}

/// Chunk id to blob location, for every listed pack.
#[derive(Debug, Default)]
pub struct Index {
    /// The repository's key, which maps content hashes to stored ids.
    keyer: Option<Arc<Crypto>>,
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32, IdBuildHasher>,
    blobs: HashMap<ChunkId, BlobLocation, IdBuildHasher>,
    /// Further locations of chunks listed more than once (two backups that
    /// stored the same chunk, a borrowed chunk listed twice, or a wrong
    /// entry written by a client): a read that fails verification tries
    /// them, so no added index file can hide a good copy.
    alternates: HashMap<ChunkId, Vec<BlobLocation>, IdBuildHasher>,
    files: Vec<IndexId>,
}

impl Index {
    /// An empty index of a repository with `keyer` as its key (none: plain).
    pub fn new(keyer: Option<Arc<Crypto>>) -> Index {
        Index {
            keyer,
            ..Index::default()
        }
    }

    /// The id a chunk with content hash `id` is stored under.
    pub fn stored_id(&self, id: &ChunkId) -> ChunkId {
        match &self.keyer {
            Some(k) => k.stored_id(id),
            None => *id,
        }
    }

    /// Records that index file `id` was read.
    pub fn add_file(&mut self, id: IndexId) {
        self.files.push(id);
    }

    /// Index files read.
    pub fn files(&self) -> &[IndexId] {
        &self.files
    }

    /// Adds a pack's blobs (entries carry stored ids); a chunk already
    /// known keeps its first location.
    pub fn add_pack(&mut self, pack: PackId, entries: &[PackEntry]) {
        let number = match self.pack_numbers.get(&pack) {
            Some(n) => *n,
            None => {
                let n = self.packs.len() as u32;
                self.packs.push(pack);
                self.pack_numbers.insert(pack, n);
                n
            }
        };
        self.blobs.reserve(entries.len());
        for e in entries {
            let location = BlobLocation {
                pack: number,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                encoding: e.encoding,
            };
            match self.blobs.entry(e.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(location);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    if *o.get() != location {
                        let others = self.alternates.entry(e.id).or_default();
                        if !others.contains(&location) {
                            others.push(location);
                        }
                    }
                }
            }
        }
    }

    /// Other locations of the chunk with content hash `id`, beyond
    /// [`Self::get`]'s.
    pub fn alternates(&self, id: &ChunkId) -> &[BlobLocation] {
        self.alternates
            .get(&self.stored_id(id))
            .map_or(&[], Vec::as_slice)
    }

    /// True when the chunk with content hash `id` is stored.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(&self.stored_id(id))
    }

    /// Where the chunk with content hash `id` is.
    pub fn get(&self, id: &ChunkId) -> Option<&BlobLocation> {
        self.blobs.get(&self.stored_id(id))
    }

    /// True when a chunk is stored under the stored id `id`.
    pub fn contains_stored(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The id of pack number `n`.
    pub fn pack_id(&self, n: u32) -> &PackId {
        &self.packs[n as usize]
    }

    /// True when some index file lists the pack.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_numbers.contains_key(id)
    }

    /// Listed packs.
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Number of distinct chunks.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every chunk (by stored id) and where it is.
    pub fn iter(&self) -> impl Iterator<Item = (&ChunkId, &BlobLocation)> {
        self.blobs.iter()
    }
}
