//! Chunks promised across the parallel remote backups of one run.
//!
//! When two remote sources of one `backup` run both hold a chunk the
//! repository lacks, only the first to offer it sends it; the other
//! *borrows* it. A borrowed chunk is safe only once it is in an uploaded
//! pack: the borrower then lists that pack's entry in its own index file.
//! At the end of its image a borrower flushes its own last pack, then
//! waits for each borrowed chunk to be stored or released (the lender
//! failed); released ones it asks its own source to send again, so one
//! source's failure never breaks another's snapshot. Every owner flushes
//! before it waits, so two backups borrowing from each other never wait
//! in a circle. Keys are stored ids (keyed hashes in encrypted repositories).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::pipeline::Cancel;

use crate::format::pack::PackEntry;
use crate::id::{ChunkId, IdBuildHasher, PackId};

#[derive(Debug, Clone, Copy)]
enum Claim {
    /// Owner's number; the chunk is on its way through that owner's sink.
    Pending(u64),
    /// In an uploaded pack.
    Stored(PackId, PackEntry),
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Nobody had it: the claimer fetches it.
    Claimed,
    /// The claimer itself is already fetching it.
    Own,
    /// Another backup of the run fetches or stored it.
    Borrowed,
}

/// The registry of one run.
#[derive(Debug, Default)]
pub struct Claims {
    map: Mutex<HashMap<ChunkId, Claim, IdBuildHasher>>,
    /// Signalled when claims are stored or released.
    changed: Condvar,
    owners: AtomicU64,
}

impl Claims {
    /// An empty registry.
    pub fn new() -> Claims {
        Claims::default()
    }

    /// A number for a new claimer.
    pub fn new_owner(&self) -> u64 {
        self.owners.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Claim, IdBuildHasher>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims chunk `stored_id` for `owner`.
    pub fn claim(&self, stored_id: ChunkId, owner: u64) -> ClaimOutcome {
        let mut map = self.lock();
        match map.get(&stored_id) {
            None => {
                map.insert(stored_id, Claim::Pending(owner));
                ClaimOutcome::Claimed
            }
            Some(Claim::Pending(o)) if *o == owner => ClaimOutcome::Own,
            Some(_) => ClaimOutcome::Borrowed,
        }
    }

    /// Records that `pack` was uploaded with `entries`.
    pub fn stored(&self, pack: &PackId, entries: &[PackEntry]) {
        let mut map = self.lock();
        for e in entries {
            if let Some(c @ Claim::Pending(_)) = map.get_mut(&e.id) {
                *c = Claim::Stored(*pack, *e);
            }
        }
        self.changed.notify_all();
    }

    /// Waits until the chunk's claim is stored (its location) or released
    /// (`None`: its owner ended without storing it). Owners flush their
    /// last pack before they wait on others, so the wait always ends;
    /// `cancel` ends it early.
    pub fn wait_resolved(
        &self,
        stored_id: &ChunkId,
        cancel: &Cancel,
    ) -> Option<(PackId, PackEntry)> {
        let mut map = self.lock();
        loop {
            match map.get(stored_id) {
                Some(Claim::Stored(p, e)) => return Some((*p, *e)),
                None => return None,
                Some(Claim::Pending(_)) if cancel.is_cancelled() => return None,
                Some(Claim::Pending(_)) => {
                    map = self
                        .changed
                        .wait_timeout(map, Duration::from_millis(200))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Where a chunk was stored, if it was.
    pub fn location(&self, stored_id: &ChunkId) -> Option<(PackId, PackEntry)> {
        match self.lock().get(stored_id) {
            Some(Claim::Stored(p, e)) => Some((*p, *e)),
            _ => None,
        }
    }

    /// Drops `owner`'s claims that never reached a pack (it ended).
    pub fn release(&self, owner: u64) {
        self.lock()
            .retain(|_, c| !matches!(c, Claim::Pending(o) if *o == owner));
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::Encoding;

    fn entry(id: ChunkId) -> PackEntry {
        PackEntry {
            id,
            offset: 0,
            stored_len: 1,
            raw_len: 1,
            encoding: Encoding::Raw,
        }
    }

    #[test]
    fn first_claimer_fetches_others_borrow_until_released() {
        let claims = Claims::new();
        let (a, b) = (claims.new_owner(), claims.new_owner());
        let x = ChunkId::of(b"x");
        assert_eq!(claims.claim(x, a), ClaimOutcome::Claimed);
        assert_eq!(claims.claim(x, a), ClaimOutcome::Own);
        assert_eq!(claims.claim(x, b), ClaimOutcome::Borrowed);
        assert_eq!(claims.location(&x), None);
        claims.release(a);
        assert_eq!(claims.claim(x, b), ClaimOutcome::Claimed);
        let pack = PackId::of(b"p");
        claims.stored(&pack, &[entry(x)]);
        claims.release(b);
        assert!(claims.wait_resolved(&x, &Cancel::new()).is_some());
        assert!(claims
            .wait_resolved(&ChunkId::of(b"y"), &Cancel::new())
            .is_none());
        assert_eq!(claims.location(&x).map(|(p, _)| p), Some(pack));
        assert_eq!(claims.claim(x, a), ClaimOutcome::Borrowed);
    }
}
