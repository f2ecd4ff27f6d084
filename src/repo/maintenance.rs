//! Upkeep: status, verify, gc and forget (invariants: see [`crate::repo`]).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::lock::Lock;
use super::{index_key, pack_key, time, ChunkDecoder, RepoError, Repository};
use crate::format::pack::{self, PackBuilder, PackEntry};
use crate::format::pack_index::PackRecord;
use crate::format::snapshot::Snapshot;
use crate::id::{ChunkId, IdBuildHasher, IndexId, PackId, SnapshotId};

/// Numbers describing a repository.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// Where it is.
    pub location: String,
    /// Chunk size.
    pub chunk_size: u32,
    /// Number of snapshots.
    pub snapshots: usize,
    /// Number of distinct stored chunks.
    pub chunks: usize,
    /// Number of packs.
    pub packs: usize,
    /// Number of index files.
    pub index_files: usize,
    /// Bytes of all objects.
    pub repository_bytes: u64,
    /// Bytes of packs.
    pub pack_bytes: u64,
    /// Sum of all snapshots' image sizes.
    pub logical_bytes: u64,
    /// Sum of the stored chunks' uncompressed sizes.
    pub unique_bytes: u64,
    /// Logical over repository bytes.
    pub dedup_ratio: f64,
}

/// Computes [`Status`].
///
/// # Errors
/// Storage failures, damaged objects.
pub fn status(repo: &Repository) -> Result<Status, RepoError> {
    let index = repo.load_index()?;
    let snaps = repo.snapshots()?;
    let all = repo.backend().list("")?;
    let repository_bytes: u64 = all.iter().map(|o| o.size).sum();
    let pack_bytes: u64 = all
        .iter()
        .filter(|o| o.key.starts_with("data/"))
        .map(|o| o.size)
        .sum();
    let logical_bytes: u64 = snaps.iter().map(|s| s.meta.size).sum();
    Ok(Status {
        location: repo.backend().location(),
        chunk_size: repo.chunk_size(),
        snapshots: snaps.len(),
        chunks: index.len(),
        packs: all.iter().filter(|o| o.key.starts_with("data/")).count(),
        index_files: index.files().len(),
        repository_bytes,
        pack_bytes,
        logical_bytes,
        unique_bytes: index.iter().map(|(_, l)| u64::from(l.raw_len)).sum(),
        dedup_ratio: if repository_bytes == 0 {
            0.0
        } else {
            logical_bytes as f64 / repository_bytes as f64
        },
    })
}

/// A snapshot harmed by a problem `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct AffectedSnapshot {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its time.
    pub time: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs checked.
    pub packs: usize,
    /// Chunks whose data was read and re-hashed (`--read-data`).
    pub chunks_read: u64,
    /// Packs no index lists (left by interrupted backups; gc removes them).
    pub orphan_packs: usize,
    /// One line per problem.
    pub errors: Vec<String>,
    /// Snapshots that cannot be restored as they are.
    pub damaged_snapshots: Vec<AffectedSnapshot>,
}

/// An error's message followed by its causes, each once (for reports that
/// are not printed through an error chain).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// Reads all index files with their per-pack records.
/// Every readable index file with its records, and the keys of those that
/// cannot be decoded.
type IndexFiles = (Vec<(IndexId, Vec<PackRecord>)>, Vec<String>);

fn index_records(repo: &Repository) -> Result<IndexFiles, RepoError> {
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    for obj in repo.backend().list("index/")? {
        let Some(id) = obj.key.rsplit('/').next().and_then(IndexId::from_hex) else {
            continue;
        };
        let bytes = repo.backend().get(&obj.key)?;
        match repo.decode_index_file(&obj.key, bytes) {
            Ok(records) => out.push((id, records)),
            Err(_) => damaged.push(obj.key.clone()),
        }
    }
    Ok((out, damaged))
}

fn decode_blob(
    repo: &Repository,
    entry: &PackEntry,
    blob: &[u8],
    target: &mut Vec<u8>,
    decoder: &mut ChunkDecoder,
) -> Result<(), String> {
    target.resize(entry.raw_len as usize, 0);
    repo.decode_blob(&entry.id, entry.encoding, blob, target, decoder)
        .map(|_| ())
}

/// Checks the repository: every snapshot decodes and all its chunks are
/// indexed, every indexed pack exists and its trailer agrees with the
/// index; with `read_data`, every chunk is read, decompressed and
/// re-hashed, and every pack's id is checked.
///
/// # Errors
/// Storage failures that stop the check itself (problems with the data are
/// reported in the [`VerifyReport`]).
pub fn verify(
    repo: &Repository,
    read_data: bool,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<VerifyReport, RepoError> {
    let mut report = VerifyReport::default();
    let mut bad_chunks: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    // Index files.
    let mut by_pack: HashMap<PackId, Vec<PackEntry>, IdBuildHasher> = HashMap::default();
    let mut known: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    for obj in repo.backend().list("index/")? {
        let bytes = repo.backend().get(&obj.key)?;
        let named = IndexId::of(&bytes).to_hex();
        match repo.decode_index_file(&obj.key, bytes) {
            Ok(records) => {
                if obj.key.rsplit('/').next() != Some(named.as_str()) {
                    report.errors.push(format!(
                        "index file {}: content does not match its name",
                        obj.key
                    ));
                }
                for r in records {
                    for e in &r.entries {
                        known.insert(e.id);
                    }
                    by_pack.entry(r.pack).or_default().extend(r.entries);
                }
            }
            Err(e) => report.errors.push(with_causes(&e)),
        }
    }
    // Packs.
    let packs: HashMap<PackId, u64, IdBuildHasher> = repo.list_packs()?.into_iter().collect();
    report.orphan_packs = packs.keys().filter(|p| !by_pack.contains_key(p)).count();
    let total_bytes: u64 = by_pack.keys().filter_map(|p| packs.get(p)).sum();
    let mut done_bytes = 0u64;
    let mut decoder = ChunkDecoder::new()?;
    let mut plain = Vec::new();
    let mut pack_list: Vec<_> = by_pack.iter().collect();
    pack_list.sort_by_key(|(id, _)| **id);
    for (pack_id, entries) in pack_list {
        report.packs += 1;
        let Some(&len) = packs.get(pack_id) else {
            report
                .errors
                .push(format!("pack {pack_id} is listed in the index but missing"));
            bad_chunks.extend(entries.iter().map(|e| e.id));
            continue;
        };
        if read_data {
            let bytes = repo.backend().get(&pack_key(pack_id))?;
            if PackId::of(&bytes) != *pack_id {
                report
                    .errors
                    .push(format!("pack {pack_id}: content does not match its name"));
            }
            if let Err(e) = pack::parse_sealed(&bytes, repo.table_seal()) {
                report.errors.push(format!("pack {pack_id}: {e}"));
            }
            for e in entries {
                report.chunks_read += 1;
                let blob = bytes.get(e.offset as usize..e.end() as usize);
                let result = match blob {
                    Some(b) => decode_blob(repo, e, b, &mut plain, &mut decoder),
                    None => Err("blob lies outside the pack".into()),
                };
                if let Err(reason) = result {
                    report
                        .errors
                        .push(format!("chunk {} in pack {pack_id}: {reason}", e.id));
                    bad_chunks.insert(e.id);
                }
            }
            done_bytes += len;
            if let Some(p) = progress {
                p(done_bytes, total_bytes);
            }
        } else {
            match repo.read_pack_table(pack_id, len) {
                Ok(table) => {
                    let table: HashSet<(ChunkId, u32, u32)> = table
                        .iter()
                        .map(|e| (e.id, e.offset, e.stored_len))
                        .collect();
                    for e in entries {
                        if !table.contains(&(e.id, e.offset, e.stored_len)) {
                            report
                                .errors
                                .push(format!("chunk {}: index and pack {pack_id} disagree", e.id));
                            bad_chunks.insert(e.id);
                        }
                    }
                }
                Err(e) => report.errors.push(with_causes(&e)),
            }
        }
    }
    // Snapshots.
    for id in repo.snapshot_ids()? {
        report.snapshots += 1;
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(with_causes(&e));
                report.damaged_snapshots.push(AffectedSnapshot {
                    id: id.to_hex(),
                    name: "?".into(),
                    time: "?".into(),
                });
                continue;
            }
        };
        let mut damaged = false;
        let mut missing = 0u64;
        let ids = match snap.chunk_ids() {
            Ok(i) => i,
            Err(e) => {
                report.errors.push(format!("snapshot {id}: {e}"));
                continue;
            }
        };
        for chunk in ids {
            match chunk {
                Ok(c) if c.is_zero_marker() => {}
                Ok(c) => {
                    let c = repo.stored_id(&c);
                    if !known.contains(&c) {
                        missing += 1;
                        damaged = true;
                    } else if bad_chunks.contains(&c) {
                        damaged = true;
                    }
                }
                Err(e) => {
                    report.errors.push(format!("snapshot {id}: {e}"));
                    damaged = true;
                    break;
                }
            }
        }
        if missing > 0 {
            report.errors.push(format!(
                "snapshot {} ({}): {missing} chunks missing from the index",
                snap.id.short(),
                snap.meta.name
            ));
        }
        if damaged {
            report.damaged_snapshots.push(AffectedSnapshot {
                id: snap.id.to_hex(),
                name: snap.meta.name.clone(),
                time: snap.meta.time.clone(),
            });
        }
    }
    Ok(report)
}

/// What `gc` did or would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Packs deleted whole (nothing referenced in them).
    pub packs_deleted: usize,
    /// Packs rewritten because most of their bytes were garbage.
    pub packs_repacked: usize,
    /// Packs no index listed (from interrupted backups), deleted.
    pub orphan_packs_deleted: usize,
    /// New packs written by repacking.
    pub packs_written: usize,
    /// Chunks no snapshot refers to any more (and second copies of a
    /// chunk), removed.
    pub chunks_removed: u64,
    /// Such chunks left where they are, in packs that are mostly live
    /// (rewriting a pack for them would cost more than it frees).
    pub chunks_left: u64,
    /// Their stored bytes.
    pub bytes_left: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Index files replaced.
    pub index_files_replaced: usize,
    /// Temporary files of writers killed mid-write, removed.
    pub temporaries_removed: usize,
    /// Stale locks seen.
    pub stale_locks: Vec<String>,
    /// Index files that could not be read, replaced by the new index
    /// (their packs were read from their own tables).
    pub damaged_index_files: Vec<String>,
}

/// gc removes temporary files of killed writers once they are this old.
/// Under gc's exclusive lock nobody else writes but processes trying to
/// lock, whose temporary lock files live for milliseconds.
pub const STALE_TEMPORARY_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// A pack is rewritten when less than this share of its blob bytes is live.
pub const REPACK_LIVE_BELOW: f64 = 0.5;

/// Every chunk some snapshot refers to.
///
/// # Errors
/// Any snapshot that cannot be read: gc must not guess.
pub fn referenced_chunks(snaps: &[Snapshot]) -> Result<HashSet<ChunkId, IdBuildHasher>, RepoError> {
    let mut set: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    for snap in snaps {
        let ids = snap.chunk_ids().map_err(|source| RepoError::Snapshot {
            key: super::snapshot_key(&snap.id),
            source,
        })?;
        for id in ids {
            let id = id.map_err(|source| RepoError::Snapshot {
                key: super::snapshot_key(&snap.id),
                source,
            })?;
            if !id.is_zero_marker() {
                set.insert(id);
            }
        }
    }
    Ok(set)
}

/// Removes unreferenced data under an exclusive lock.
///
/// # Errors
/// Locked repository, unreadable snapshots or index files, missing chunks
/// (gc refuses to run on a damaged repository), storage failures.
pub fn gc(repo: &Repository, dry_run: bool) -> Result<GcReport, RepoError> {
    if !dry_run {
        super::refuse_if_append_only(repo.backend().as_ref(), "gc")?;
    }
    let lock = Lock::acquire(repo.backend().clone(), true, "gc")?;
    let mut report = gc_locked(repo, dry_run)?;
    report.stale_locks = lock.stale.clone();
    Ok(report)
}

fn gc_locked(repo: &Repository, dry_run: bool) -> Result<GcReport, RepoError> {
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let snaps = repo.snapshots_strict()?;
    // Pack tables and index files list stored ids.
    let referenced: HashSet<ChunkId, IdBuildHasher> = referenced_chunks(&snaps)?
        .iter()
        .map(|id| repo.stored_id(id))
        .collect();
    let (files, damaged) = index_records(repo)?;
    // One record per pack; a chunk lives in the first pack that lists it.
    let mut packs: Vec<PackRecord> = Vec::new();
    let mut seen_packs: HashSet<PackId, IdBuildHasher> = HashSet::default();
    for (_, records) in &files {
        for r in records {
            if seen_packs.insert(r.pack) {
                packs.push(r.clone());
            }
        }
    }
    let stored: HashMap<PackId, u64, IdBuildHasher> = repo.list_packs()?.into_iter().collect();
    if !damaged.is_empty() {
        // A damaged index file may have listed any unlisted pack: read
        // their own tables rather than deleting them as orphans. The new
        // index written below replaces the damaged files.
        let mut unlisted: Vec<(&PackId, &u64)> = stored
            .iter()
            .filter(|(p, _)| !seen_packs.contains(*p))
            .collect();
        unlisted.sort();
        for (pack, len) in unlisted {
            if let Ok(entries) = repo.read_pack_table(pack, *len) {
                seen_packs.insert(*pack);
                packs.push(PackRecord {
                    pack: *pack,
                    entries,
                });
            }
        }
    }
    report.damaged_index_files = damaged.clone();
    let mut owner: HashSet<ChunkId, IdBuildHasher> = HashSet::default();
    let mut keep = Vec::new();
    let mut repack = Vec::new();
    let mut delete = Vec::new();
    for r in &packs {
        if !stored.contains_key(&r.pack) {
            // Listed but gone: drop it from the index (verify reports it).
            continue;
        }
        let mut total = 0u64;
        let mut live = 0u64;
        let mut live_entries = Vec::new();
        for e in &r.entries {
            total += u64::from(e.stored_len);
            if referenced.contains(&e.id) && owner.insert(e.id) {
                live += u64::from(e.stored_len);
                live_entries.push(*e);
            }
        }
        // Unreferenced chunks and second copies of a chunk.
        let dead = (r.entries.len() - live_entries.len()) as u64;
        if live == 0 {
            report.chunks_removed += dead;
            delete.push(r.pack);
        } else if total > 0 && (live as f64) < REPACK_LIVE_BELOW * total as f64 {
            report.chunks_removed += dead;
            repack.push((r.pack, live_entries));
        } else {
            report.chunks_left += dead;
            report.bytes_left += total - live;
            keep.push(r.clone());
        }
    }
    for id in &referenced {
        if !owner.contains(id) {
            return Err(RepoError::MissingChunk { chunk: *id });
        }
    }
    let orphans: Vec<PackId> = stored
        .keys()
        .filter(|p| !seen_packs.contains(*p))
        .copied()
        .collect();
    report.packs_deleted = delete.len();
    report.packs_repacked = repack.len();
    report.orphan_packs_deleted = orphans.len();
    report.index_files_replaced = files.len();
    let freed_whole: u64 = delete
        .iter()
        .chain(orphans.iter())
        .filter_map(|p| stored.get(p))
        .sum();
    report.bytes_freed = freed_whole;
    if dry_run {
        for (p, live) in &repack {
            let live_bytes: u64 = live.iter().map(|e| u64::from(e.stored_len)).sum();
            report.bytes_freed += stored
                .get(p)
                .copied()
                .unwrap_or(0)
                .saturating_sub(live_bytes);
        }
        return Ok(report);
    }
    let listed_but_gone = packs.iter().any(|r| !stored.contains_key(&r.pack));
    if delete.is_empty()
        && !listed_but_gone
        && repack.is_empty()
        && orphans.is_empty()
        && damaged.is_empty()
        && files.len() <= 1
    {
        // Nothing to remove: an idle gc leaves the repository as it is
        // (rewriting its one index file would only churn its name, since
        // sealing draws a new nonce every time).
        report.index_files_replaced = 0;
        report.temporaries_removed = repo
            .backend()
            .remove_stale_temporaries(STALE_TEMPORARY_AGE)?;
        return Ok(report);
    }
    // Repack: copy live blobs into new packs.
    let mut new_records = Vec::new();
    let mut builder = PackBuilder::new();
    let mut written_bytes = 0u64;
    let flush =
        |builder: PackBuilder, new_records: &mut Vec<PackRecord>| -> Result<u64, RepoError> {
            let (bytes, id, entries) = builder.finish_sealed(repo.table_seal());
            repo.backend().put_if_absent(&pack_key(&id), &bytes)?;
            new_records.push(PackRecord { pack: id, entries });
            Ok(bytes.len() as u64)
        };
    for (pack_id, live) in &repack {
        let bytes = repo.backend().get(&pack_key(pack_id))?;
        for e in live {
            let blob = bytes
                .get(e.offset as usize..e.end() as usize)
                .ok_or_else(|| RepoError::CorruptChunk {
                    chunk: e.id,
                    pack: *pack_id,
                    reason: "blob lies outside the pack".into(),
                })?;
            builder.add(e.id, blob, e.raw_len, e.encoding);
            if builder.len() >= super::backup::PACK_TARGET {
                written_bytes += flush(std::mem::take(&mut builder), &mut new_records)?;
            }
        }
    }
    if !builder.is_empty() {
        written_bytes += flush(builder, &mut new_records)?;
    }
    report.packs_written = new_records.len();
    let repacked_bytes: u64 = repack.iter().filter_map(|(p, _)| stored.get(p)).sum();
    report.bytes_freed += repacked_bytes.saturating_sub(written_bytes);
    // One new index for everything that stays, then delete the old ones,
    // then the packs.
    keep.extend(new_records);
    let new_index = if keep.is_empty() {
        None
    } else {
        Some(repo.write_index(&keep)?)
    };
    for (id, _) in &files {
        if Some(*id) != new_index {
            repo.backend().delete(&index_key(id))?;
        }
    }
    for key in &damaged {
        repo.backend().delete(key)?;
        // The new index can have the very name of a damaged file (same
        // records, same id): put_if_absent kept the damaged bytes, so
        // write it again now that the name is free.
        if new_index.is_some_and(|id| index_key(&id) == *key) {
            repo.write_index(&keep)?;
        }
    }
    // A repacked pack can come out identical to a pack that is already
    // there: written by a gc killed before its index (an orphan now, or
    // listed again by a backup that adopted it). It is in the new index,
    // so it must stay.
    let listed: HashSet<PackId, IdBuildHasher> = keep.iter().map(|r| r.pack).collect();
    let spared = |list: &[PackId]| -> (usize, u64) {
        let kept: Vec<&PackId> = list.iter().filter(|p| listed.contains(*p)).collect();
        let bytes = kept.iter().filter_map(|p| stored.get(*p)).sum();
        (kept.len(), bytes)
    };
    let (n, bytes) = spared(&delete);
    report.packs_deleted -= n;
    report.bytes_freed = report.bytes_freed.saturating_sub(bytes);
    let (n, bytes) = spared(&orphans);
    report.orphan_packs_deleted -= n;
    report.bytes_freed = report.bytes_freed.saturating_sub(bytes);
    for p in delete
        .iter()
        .chain(orphans.iter())
        .chain(repack.iter().map(|(p, _)| p))
    {
        if !listed.contains(p) {
            repo.backend().delete(&pack_key(p))?;
        }
    }
    // Half-written objects of killed backups: invisible to list, but they
    // hold disk space (up to a whole pack each).
    report.temporaries_removed = repo
        .backend()
        .remove_stale_temporaries(STALE_TEMPORARY_AGE)?;
    Ok(report)
}

/// How many snapshots to keep per name.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: usize,
    /// The newest of each of the last N days with snapshots.
    pub daily: usize,
    /// The newest of each of the last N ISO weeks with snapshots.
    pub weekly: usize,
    /// The newest of each of the last N months with snapshots.
    pub monthly: usize,
}

impl KeepPolicy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// One snapshot's fate under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetDecision {
    /// Snapshot id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its time.
    pub time: String,
    /// Kept?
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `monthly`).
    pub reasons: Vec<String>,
}

fn day_key(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

fn week_key(unix: i64) -> (i64, i64) {
    let days = unix.div_euclid(86_400);
    let weekday = (days + 3).rem_euclid(7); // Monday = 0
    let thursday = days - weekday + 3;
    let (y, _, _) = time::civil_from_days(thursday);
    (y, (thursday - time::days_from_civil(y, 1, 1)) / 7 + 1)
}

fn month_key(unix: i64) -> (i64, u32) {
    let (y, m, _) = time::civil_from_days(unix.div_euclid(86_400));
    (y, m)
}

/// Applies `policy` to each name's snapshots separately (newest first, as
/// restic and borg do).
pub fn plan_forget(snaps: &[Snapshot], policy: &KeepPolicy) -> Vec<ForgetDecision> {
    let mut names: Vec<&str> = snaps.iter().map(|s| s.meta.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let mut group: Vec<&Snapshot> = snaps.iter().filter(|s| s.meta.name == name).collect();
        group.sort_by_key(|s| std::cmp::Reverse((s.meta.unix_time, s.meta.nanos, s.id)));
        let mut last_day = None;
        let mut last_week = None;
        let mut last_month = None;
        let (mut daily, mut weekly, mut monthly) = (0, 0, 0);
        for (i, s) in group.iter().enumerate() {
            let t = s.meta.unix_time;
            let mut reasons = Vec::new();
            if i < policy.last {
                reasons.push("last".to_string());
            }
            if daily < policy.daily && last_day != Some(day_key(t)) {
                last_day = Some(day_key(t));
                daily += 1;
                reasons.push("daily".into());
            }
            if weekly < policy.weekly && last_week != Some(week_key(t)) {
                last_week = Some(week_key(t));
                weekly += 1;
                reasons.push("weekly".into());
            }
            if monthly < policy.monthly && last_month != Some(month_key(t)) {
                last_month = Some(month_key(t));
                monthly += 1;
                reasons.push("monthly".into());
            }
            out.push(ForgetDecision {
                id: s.id.to_hex(),
                name: s.meta.name.clone(),
                time: s.meta.time.clone(),
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out
}

/// What `forget` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Every snapshot considered and its fate.
    pub decisions: Vec<ForgetDecision>,
    /// Snapshots removed (or that would be).
    pub removed: usize,
    /// The gc that followed (`--prune`).
    pub prune: Option<GcReport>,
}

/// Which snapshots `forget` removes.
#[derive(Debug, Clone)]
pub enum ForgetSelection {
    /// These snapshots (ids, prefixes or names).
    Snapshots(Vec<String>),
    /// A keep policy, for one name or all.
    Policy {
        /// The rules.
        policy: KeepPolicy,
        /// Only this name.
        name: Option<String>,
    },
}

/// The id of the snapshot object `spec` names in full, when that object
/// exists but does not decode.
fn damaged_snapshot(repo: &Repository, spec: &str) -> Option<SnapshotId> {
    let id = SnapshotId::from_hex(&spec.to_ascii_lowercase())?;
    match repo.load_snapshot(&id) {
        Err(RepoError::Snapshot { .. } | RepoError::Sealed { .. }) => Some(id),
        _ => None,
    }
}

/// Forgets snapshots, then with `prune` runs gc under the same exclusive
/// lock.
///
/// # Errors
/// Unknown snapshots, locked repository, storage failures.
pub fn forget(
    repo: &Repository,
    selection: &ForgetSelection,
    prune: bool,
    dry_run: bool,
) -> Result<ForgetReport, RepoError> {
    if !dry_run {
        super::refuse_if_append_only(repo.backend().as_ref(), "forget")?;
    }
    let lock = Lock::acquire(
        repo.backend().clone(),
        prune && !dry_run,
        if prune { "forget --prune" } else { "forget" },
    )?;
    let mut report = ForgetReport {
        dry_run,
        ..ForgetReport::default()
    };
    let snaps = repo.snapshots()?;
    let remove: Vec<SnapshotId> = match selection {
        ForgetSelection::Snapshots(specs) => {
            let mut ids = Vec::new();
            for spec in specs {
                // A damaged snapshot file is skipped when resolving, but it
                // must stay removable by its full id: gc refuses to run
                // while any snapshot cannot be read.
                if let Some(id) = damaged_snapshot(repo, spec) {
                    report.decisions.push(ForgetDecision {
                        id: id.to_hex(),
                        name: "?".into(),
                        time: "?".into(),
                        keep: false,
                        reasons: vec![],
                    });
                    ids.push(id);
                    continue;
                }
                let s = repo.resolve(spec)?;
                report.decisions.push(ForgetDecision {
                    id: s.id.to_hex(),
                    name: s.meta.name.clone(),
                    time: s.meta.time.clone(),
                    keep: false,
                    reasons: vec![],
                });
                ids.push(s.id);
            }
            ids
        }
        ForgetSelection::Policy { policy, name } => {
            let chosen: Vec<Snapshot> = snaps
                .iter()
                .filter(|s| name.as_ref().is_none_or(|n| &s.meta.name == n))
                .cloned()
                .collect();
            if let Some(n) = name {
                if chosen.is_empty() {
                    return Err(RepoError::NoSnapshot(n.clone()));
                }
            }
            report.decisions = plan_forget(&chosen, policy);
            report
                .decisions
                .iter()
                .filter(|d| !d.keep)
                .filter_map(|d| SnapshotId::from_hex(&d.id))
                .collect()
        }
    };
    report.removed = remove.len();
    if !dry_run {
        for id in &remove {
            repo.delete_snapshot(id)?;
        }
    }
    if prune {
        let mut gc_report = gc_locked(repo, dry_run)?;
        gc_report.stale_locks = lock.stale.clone();
        report.prune = Some(gc_report);
    }
    Ok(report)
}
