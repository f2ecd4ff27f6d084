//! Hash trees over regions of an image, for comparing two copies that are
//! not on the same machine (sync) without sending their data.
//!
//! The image is cut into regions of [`REGION_SIZE`] bytes; each region gets
//! its own tree, so a reader holds the trees of a few regions at a time and
//! memory does not grow with the image. Within a region:
//!
//! - level 0: one leaf per block, `BLAKE3(block bytes)` (the last block of
//!   the image may be short; its hash covers only its bytes);
//! - level k+1: one node per [`FANOUT`] nodes of level k,
//!   `BLAKE3(0x01 ‖ the children's 32-byte hashes)` (a last group may be short);
//! - the top level has one node: the region root.
//!
//! Comparing two trees walks down from the roots into differing nodes only,
//! so an unchanged region costs one hash and a region with one changed block
//! costs `FANOUT × depth` hashes. The result is the same coalesced [`Run`]s
//! that byte comparison yields.

use super::Run;
use crate::digest::is_zero;

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Bytes covered by one tree.
pub const REGION_SIZE: u64 = 16 << 20;

const NODE_DOMAIN: u8 = 0x01;

/// A node or leaf hash.
pub type NodeHash = blake3::Hash;

/// The hash tree of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTree {
    offset: u64,
    len: u64,
    block: u32,
    /// `levels[0]` are the leaves; the last level holds the root alone.
    levels: Vec<Vec<NodeHash>>,
}

/// The leaf hash of `len` zero bytes.
pub fn zero_leaf(len: usize) -> NodeHash {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    if len <= ZEROS.len() {
        return blake3::hash(&ZEROS[..len]);
    }
    let mut h = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len());
        h.update(&ZEROS[..n]);
        left -= n;
    }
    h.finalize()
}

fn parent(children: &[NodeHash]) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_DOMAIN]);
    for c in children {
        h.update(c.as_bytes());
    }
    h.finalize()
}

fn build_levels(leaves: Vec<NodeHash>) -> Vec<Vec<NodeHash>> {
    let mut levels = vec![leaves];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let next = levels
            .last()
            .map(|l| l.chunks(FANOUT).map(parent).collect())
            .unwrap_or_default();
        levels.push(next);
    }
    if levels[0].is_empty() {
        levels[0].push(blake3::hash(&[]));
    }
    levels
}

impl RegionTree {
    /// Builds the tree of `data`, the region's bytes starting at `offset`,
    /// or of `len` zero bytes when `data` is `None` (a hole, not read).
    ///
    /// # Panics
    /// When `block` is zero (a caller bug; block sizes are validated).
    pub fn build(offset: u64, data: Option<&[u8]>, len: usize, block: u32) -> RegionTree {
        assert!(block > 0, "block size must be positive");
        let b = block as usize;
        let mut leaves = Vec::with_capacity(len.div_ceil(b));
        let full_zero = zero_leaf(b);
        let mut at = 0;
        while at < len {
            let end = (at + b).min(len);
            let leaf = match data {
                Some(d) if !is_zero(&d[at..end]) => blake3::hash(&d[at..end]),
                _ if end - at == b => full_zero,
                _ => zero_leaf(end - at),
            };
            leaves.push(leaf);
            at = end;
        }
        RegionTree {
            offset,
            len: len as u64,
            block,
            levels: build_levels(leaves),
        }
    }

    /// Rebuilds a tree from leaf hashes (as received from a peer).
    pub fn from_leaves(offset: u64, len: u64, block: u32, leaves: Vec<NodeHash>) -> RegionTree {
        RegionTree {
            offset,
            len,
            block,
            levels: build_levels(leaves),
        }
    }

    /// The same tree for a region at another offset (trees do not depend
    /// on their offset; used to reuse the tree of an all-zero region).
    pub fn relocated(&self, offset: u64) -> RegionTree {
        RegionTree {
            offset,
            ..self.clone()
        }
    }

    /// First byte covered.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of levels (1 for a single leaf).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The region root.
    pub fn root(&self) -> NodeHash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_else(|| blake3::hash(&[]))
    }

    /// The nodes of one level (0 = leaves).
    pub fn level(&self, level: usize) -> &[NodeHash] {
        self.levels.get(level).map_or(&[], Vec::as_slice)
    }

    /// The children (one level down) of node `index` at `level`.
    pub fn children(&self, level: usize, index: usize) -> &[NodeHash] {
        if level == 0 {
            return &[];
        }
        let below = self.level(level - 1);
        let start = (index * FANOUT).min(below.len());
        let end = (start + FANOUT).min(below.len());
        &below[start..end]
    }

    /// Replaces a leaf (after its block was rewritten) and updates the path
    /// to the root.
    pub fn set_leaf(&mut self, index: usize, hash: NodeHash) {
        if index >= self.levels[0].len() {
            return;
        }
        self.levels[0][index] = hash;
        let mut i = index;
        for level in 1..self.levels.len() {
            i /= FANOUT;
            let start = i * FANOUT;
            let end = (start + FANOUT).min(self.levels[level - 1].len());
            let h = parent(&self.levels[level - 1][start..end]);
            self.levels[level][i] = h;
        }
    }

    /// Byte range of leaf `index`.
    pub fn leaf_range(&self, index: usize) -> Run {
        let start = self.offset + index as u64 * u64::from(self.block);
        let end = (start + u64::from(self.block)).min(self.offset + self.len);
        Run {
            offset: start,
            len: end.saturating_sub(start),
        }
    }
}

/// The leaves where two trees of the same region and shape differ, found by
/// descending from the roots into differing nodes only; coalesced into runs.
/// Trees of different shapes (lengths) are compared over the shorter length,
/// and the rest of the longer one counts as changed.
pub fn changed_runs(a: &RegionTree, b: &RegionTree) -> Vec<Run> {
    let mut out = Vec::new();
    if a.root() == b.root() && a.len == b.len && a.block == b.block {
        return out;
    }
    let mut coalescer = super::RunCoalescer::default();
    let same_shape = a.len == b.len && a.block == b.block;
    if same_shape {
        let top = a.depth() - 1;
        descend(a, b, top, 0, &mut |leaf| {
            if let Some(r) = coalescer.push(a.leaf_range(leaf)) {
                out.push(r);
            }
        });
    } else {
        let leaves = a.level(0).len().max(b.level(0).len());
        for i in 0..leaves {
            let differs = a.level(0).get(i) != b.level(0).get(i);
            if differs {
                let longer = if a.len >= b.len { a } else { b };
                if let Some(r) = coalescer.push(longer.leaf_range(i)) {
                    out.push(r);
                }
            }
        }
    }
    out.extend(coalescer.finish());
    out.retain(|r| r.len > 0);
    out
}

fn descend(
    a: &RegionTree,
    b: &RegionTree,
    level: usize,
    index: usize,
    leaf: &mut impl FnMut(usize),
) {
    if a.level(level).get(index) == b.level(level).get(index) {
        return;
    }
    if level == 0 {
        leaf(index);
        return;
    }
    let children = a.children(level, index).len();
    for child in 0..children {
        descend(a, b, level - 1, index * FANOUT + child, leaf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: compare every block.
    fn reference_runs(a: &[u8], b: &[u8], block: usize) -> Vec<Run> {
        let mut c = crate::change::RunCoalescer::default();
        let mut out = Vec::new();
        let len = a.len().max(b.len());
        let mut at = 0;
        while at < len {
            let end = (at + block).min(len);
            let (sa, sb) = (
                a.get(at..end.min(a.len())).unwrap_or(&[]),
                b.get(at..end.min(b.len())).unwrap_or(&[]),
            );
            if sa != sb {
                if let Some(r) = c.push(Run {
                    offset: at as u64,
                    len: (end - at) as u64,
                }) {
                    out.push(r);
                }
            }
            at = end;
        }
        out.extend(c.finish());
        out
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn boundary_sizes_against_reference() {
        let block = 512usize;
        let f = FANOUT;
        for blocks in [
            0usize,
            1,
            2,
            f - 1,
            f,
            f + 1,
            f * f - 1,
            f * f,
            f * f + 1,
            3 * f * f + 5,
        ] {
            for tail in [0usize, 1, block - 1] {
                let len = blocks * block + tail;
                let a = data(len, 1);
                let tree_a = RegionTree::build(0, Some(&a), len, block as u32);
                assert_eq!(changed_runs(&tree_a, &tree_a.clone()), vec![], "len {len}");
                for flip in [0, len / 3, len.saturating_sub(1)] {
                    if len == 0 {
                        continue;
                    }
                    let mut b = a.clone();
                    b[flip] ^= 0xFF;
                    let tree_b = RegionTree::build(0, Some(&b), len, block as u32);
                    assert_ne!(tree_a.root(), tree_b.root());
                    assert_eq!(
                        changed_runs(&tree_a, &tree_b),
                        reference_runs(&a, &b, block),
                        "len {len} flip {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn holes_hash_like_zeros() {
        let zeros = vec![0u8; 5000];
        let read = RegionTree::build(0, Some(&zeros), zeros.len(), 512);
        let hole = RegionTree::build(0, None, zeros.len(), 512);
        assert_eq!(read, hole);
    }

    #[test]
    fn set_leaf_matches_rebuild() {
        let block = 512;
        let mut a = data(300 * block, 3);
        let mut tree = RegionTree::build(0, Some(&a), a.len(), block as u32);
        for i in [0usize, 17, 255, 299] {
            a[i * block..(i + 1) * block].fill(i as u8 ^ 0x5A);
            tree.set_leaf(i, blake3::hash(&a[i * block..(i + 1) * block]));
        }
        assert_eq!(tree, RegionTree::build(0, Some(&a), a.len(), block as u32));
    }

    #[test]
    fn different_lengths_mark_the_tail_changed() {
        let a = data(4096, 1);
        let b = data(6000, 1);
        let ta = RegionTree::build(0, Some(&a), a.len(), 1024);
        let tb = RegionTree::build(0, Some(&b), b.len(), 1024);
        assert_eq!(
            changed_runs(&ta, &tb),
            vec![Run {
                offset: 4096,
                len: 6000 - 4096
            }]
        );
    }

    #[test]
    fn from_leaves_rebuilds_the_same_tree() {
        let a = data(100_000, 9);
        let t = RegionTree::build(1 << 24, Some(&a), a.len(), 4096);
        let r = RegionTree::from_leaves(1 << 24, a.len() as u64, 4096, t.level(0).to_vec());
        assert_eq!(t, r);
    }
}
