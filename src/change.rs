//! Change detection. Every change source yields the same thing: which
//! blocks of NEW differ from OLD, as coalesced [`Run`]s, so every sink
//! (delta file, remote target, repository) works with every source.
//!
//! - [`compare`]: byte comparison of aligned OLD and NEW chunks.
//! - [`merkle`]: per-region hash trees, for copies on different machines.
//! - [`tracked`]: what an outside change tracker (thin-pool metadata, a
//!   changed-range list) reports, so only changed bytes are read.
//! - [`thin`]: running `thin_delta`, and finding a thin pool with LVM.

pub mod compare;
pub mod merkle;
pub mod thin;
pub mod tracked;

/// A run of changed bytes of NEW: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First changed byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl Run {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Merges runs that arrive in increasing order into maximal runs.
#[derive(Debug, Default)]
pub struct RunCoalescer {
    pending: Option<Run>,
}

impl RunCoalescer {
    /// Adds a run; returns the previous maximal run when this one does not
    /// touch it.
    pub fn push(&mut self, run: Run) -> Option<Run> {
        match &mut self.pending {
            Some(p) if p.end() == run.offset => {
                p.len += run.len;
                None
            }
            pending => pending.replace(run),
        }
    }

    /// The last pending run.
    pub fn finish(self) -> Option<Run> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_adjacent_runs() {
        let mut c = RunCoalescer::default();
        assert_eq!(c.push(Run { offset: 0, len: 4 }), None);
        assert_eq!(c.push(Run { offset: 4, len: 4 }), None);
        assert_eq!(
            c.push(Run { offset: 12, len: 4 }),
            Some(Run { offset: 0, len: 8 })
        );
        assert_eq!(c.finish(), Some(Run { offset: 12, len: 4 }));
    }
}
