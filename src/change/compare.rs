//! Byte comparison of OLD and NEW, block by block.
//!
//! NEW is defined as OLD cut or zero-extended to NEW's length with the
//! changed blocks written over it, so a NEW block equals OLD when its bytes
//! match OLD where OLD has bytes and are zero past OLD's end.

use crate::digest::{bytes_equal, is_zero};

/// One NEW block's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockChange {
    /// Same as OLD.
    Unchanged,
    /// Differs from OLD; NEW holds only zeros here.
    Zeroed,
    /// Differs from OLD; NEW holds data.
    Data,
}

/// A chunk's bytes, or a run of zeros that was never read (a hole).
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    /// Real bytes.
    Bytes(&'a [u8]),
    /// `len` zero bytes.
    Zeros(usize),
}

impl View<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            View::Bytes(b) => b.len(),
            View::Zeros(n) => *n,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_zero_range(&self, start: usize, end: usize) -> bool {
        match self {
            View::Bytes(b) => is_zero(&b[start..end]),
            View::Zeros(_) => true,
        }
    }
}

/// Compares the NEW chunk with the OLD chunk at the same offset (OLD may be
/// shorter or absent past OLD's end) and calls `visit(block_start, block_end,
/// change)` for every block of NEW, with offsets relative to the chunk.
/// Chunks must start at a multiple of `block`.
pub fn compare_blocks(
    old: Option<View<'_>>,
    new: View<'_>,
    block: usize,
    mut visit: impl FnMut(usize, usize, BlockChange),
) {
    let old = old.unwrap_or(View::Zeros(0));
    // Fast path: identical whole chunks (the common case) in one memcmp.
    match (old, new) {
        (View::Bytes(o), View::Bytes(n)) if o.len() >= n.len() && bytes_equal(&o[..n.len()], n) => {
            visit_all(n.len(), block, BlockChange::Unchanged, &mut visit);
            return;
        }
        (View::Zeros(o), View::Zeros(n)) => {
            // Zeros past OLD's end equal the implicit zero extension.
            let _ = o;
            visit_all(n, block, BlockChange::Unchanged, &mut visit);
            return;
        }
        _ => {}
    }
    let mut start = 0;
    while start < new.len() {
        let end = (start + block).min(new.len());
        let old_end = old.len().clamp(start, end);
        let same_as_old = old_end == start
            || match (old, new) {
                (View::Bytes(o), View::Bytes(n)) => {
                    bytes_equal(&o[start..old_end], &n[start..old_end])
                }
                (View::Zeros(_), n) => n.is_zero_range(start, old_end),
                (o, View::Zeros(_)) => o.is_zero_range(start, old_end),
            };
        let tail_zero = new.is_zero_range(old_end, end);
        let change = if same_as_old && tail_zero {
            BlockChange::Unchanged
        } else if new.is_zero_range(start, end) {
            BlockChange::Zeroed
        } else {
            BlockChange::Data
        };
        visit(start, end, change);
        start = end;
    }
}

fn visit_all(
    len: usize,
    block: usize,
    change: BlockChange,
    visit: &mut impl FnMut(usize, usize, BlockChange),
) {
    let mut start = 0;
    while start < len {
        let end = (start + block).min(len);
        visit(start, end, change);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(old: Option<View<'_>>, new: View<'_>, block: usize) -> Vec<(usize, BlockChange)> {
        let mut out = Vec::new();
        compare_blocks(old, new, block, |s, _, c| out.push((s, c)));
        out
    }

    #[test]
    fn finds_changed_and_zeroed_blocks() {
        let old = vec![1u8; 16];
        let mut new = old.clone();
        new[5] = 9;
        new[8..12].fill(0);
        let v = verdicts(Some(View::Bytes(&old)), View::Bytes(&new), 4);
        assert_eq!(
            v,
            vec![
                (0, BlockChange::Unchanged),
                (4, BlockChange::Data),
                (8, BlockChange::Zeroed),
                (12, BlockChange::Unchanged)
            ]
        );
    }

    #[test]
    fn past_old_end_zero_is_unchanged() {
        let old = vec![1u8; 6];
        let mut new = vec![1u8; 6];
        new.extend_from_slice(&[0, 0, 0, 0, 0, 0, 7, 0]);
        let v = verdicts(Some(View::Bytes(&old)), View::Bytes(&new), 4);
        assert_eq!(
            v,
            vec![
                (0, BlockChange::Unchanged),
                (4, BlockChange::Unchanged),
                (8, BlockChange::Unchanged),
                (12, BlockChange::Data)
            ]
        );
    }

    #[test]
    fn holes_compare_as_zeros() {
        let data = vec![3u8; 8];
        let v = verdicts(Some(View::Zeros(8)), View::Bytes(&data), 4);
        assert!(v.iter().all(|(_, c)| *c == BlockChange::Data));
        let v = verdicts(Some(View::Bytes(&data)), View::Zeros(8), 4);
        assert!(v.iter().all(|(_, c)| *c == BlockChange::Zeroed));
        let v = verdicts(None, View::Zeros(8), 4);
        assert!(v.iter().all(|(_, c)| *c == BlockChange::Unchanged));
    }
}
