//! Series of deltas: `apply D1 … Dn` in one pass over the base, and
//! `merge D1 … Dn` into one delta.
//!
//! A chain connects when each delta was made from the image the previous
//! one makes: its OLD size and digest are the previous NEW size and digest.
//! That is checked from the trailers (read from the end of each file)
//! before anything is written.
//!
//! The deltas are composed one [`REFERENCE_WINDOW`] at a time: the window's
//! base bytes, then the first delta's extents in it, then the window cut at
//! the first delta's NEW size, then the second delta's extents, and so on.
//! A reference-compressed record refers to the bytes its own delta's OLD
//! holds at its range and never crosses a window, so it always finds them
//! in the window being composed. Memory is a window plus a few extents per
//! delta (each at most 1 MiB as `diff` writes them), whatever the images'
//! sizes.
//!
//! ```text
//!  delta reader threads (one per delta) ──(verified extents)──┐
//!  OLD reader thread ──(chunks, digest OLD)──> composer (this thread) ──(chunks)──> writer (digest NEW)
//! ```

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;

use super::apply::{
    self, check_sizes, seekable_delta, spawn_delta_reader, with_writer, ApplyOptions, ApplySummary,
    CheckBase, DeltaEvent, OldChunks,
};
use super::create::{write_delta, Built, Compared, ExtentBuilder, ExtentSink, Reference};
use super::source::{DeltaKind, DeltaSource};
use super::{DeltaError, DiffOptions, DiffSummary};
use crate::change::compare::{compare_blocks, BlockChange, View};
use crate::digest::{is_zero, Digest};
use crate::format::delta::{self, Header, Sample, Trailer, REFERENCE_WINDOW, VERSION};
use crate::format::{Extent, ExtentData};
use crate::io::reader::{AlignedBuf, Chunk, ReaderOptions, DEFAULT_CHUNK_SIZE};
use crate::io::{ChunkReader, Input, IoError, Output, OutputKind};
use crate::pipeline::Cancel;

const WINDOW: u64 = REFERENCE_WINDOW;
/// Extents each delta's reader decodes ahead: memory grows with the number
/// of deltas in a series, so each gets a short queue.
const LINK_DEPTH: usize = 2;

/// One delta of a series, with the ends read from its file.
#[derive(Debug)]
pub struct ChainLink {
    /// Where it was read from.
    pub path: PathBuf,
    file: File,
    /// Its header.
    pub header: Header,
    /// Its trailer.
    pub trailer: Trailer,
}

impl ChainLink {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn source(&mut self) -> Result<DeltaSource, DeltaError> {
        let stream = apply::rewind(&self.path, &mut self.file)?;
        DeltaSource::open(&self.path, stream, Some(DeltaKind::Native), None)
    }
}

/// How two neighbours of a series relate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The second was made from the first's NEW (sizes and digests agree).
    Connects,
    /// The second was made by change tracking, so only the sizes could be
    /// compared; they agree.
    SizesAgree,
    /// They do not connect, and why.
    Broken(String),
}

/// Opens every delta of a series and reads its header and trailer. A delta
/// read from a pipe is spooled to a temporary file first.
///
/// # Errors
/// I/O and format errors, naming the delta; [`DeltaError::Chain`] for a
/// delta of a format that records no digests.
pub fn open_chain(deltas: Vec<Input>) -> Result<Vec<ChainLink>, DeltaError> {
    deltas
        .into_iter()
        .map(|input| {
            let (path, mut file) = seekable_delta(input)?;
            let (header, trailer) =
                delta::read_ends(&mut file).map_err(|e| DeltaError::Chain {
                    detail: format!(
                        "{}: {e} (only diskdelta deltas, which record their images' digests, form a series)",
                        path.display()
                    ),
                })?;
            Ok(ChainLink {
                path,
                file,
                header,
                trailer,
            })
        })
        .collect()
}

/// How `next` relates to `previous` in a series.
pub fn link(previous: &ChainLink, next: &ChainLink) -> Link {
    let (p, n) = (&previous.trailer, &next.trailer);
    let (a, b) = (previous.name(), next.name());
    if p.records_digest == n.records_digest && p.new_digest == n.new_digest {
        return Link::Broken(format!("{b} repeats {a}: the same delta would apply twice"));
    }
    if p.old_digest.is_some() && p.old_digest == n.old_digest && p.old_digest != Some(p.new_digest)
    {
        return Link::Broken(format!(
            "{a} and {b} were both made from the same OLD: {b} applies to {a}'s base, not to its result"
        ));
    }
    if n.old_size != p.new_size {
        return Link::Broken(format!(
            "{b} does not follow {a}: {b} was made from a {}-byte image, {a} makes {} bytes",
            n.old_size, p.new_size
        ));
    }
    match n.old_digest {
        Some(d) if d == p.new_digest => Link::Connects,
        Some(d) => Link::Broken(format!(
            "{b} does not follow {a}: {b} was made from the image with digest {d}, {a} makes {}",
            p.new_digest
        )),
        None => Link::SizesAgree,
    }
}

/// Checks that each delta follows the one before it.
///
/// # Errors
/// [`DeltaError::Chain`] naming the first two deltas that do not connect.
pub fn check_chain(links: &[ChainLink]) -> Result<Vec<String>, DeltaError> {
    let mut notes = Vec::new();
    for pair in links.windows(2) {
        match link(&pair[0], &pair[1]) {
            Link::Connects => {}
            Link::SizesAgree => notes.push(format!(
                "{} was made by change tracking and records no OLD digest: only its size was checked against {}",
                pair[1].name(),
                pair[0].name()
            )),
            Link::Broken(detail) => return Err(DeltaError::Chain { detail }),
        }
    }
    if links
        .last()
        .is_some_and(|l| l.trailer.new_digest == Digest::NONE && l.trailer.old_digest.is_none())
    {
        notes.push(
            "the last delta was made from change tracking and records no NEW digest: the result cannot be verified as a whole".into(),
        );
    }
    Ok(notes)
}

/// Extents of one delta, pulled from its reader thread as the windows
/// advance.
struct LinkReader {
    name: PathBuf,
    events: Receiver<DeltaEvent>,
    pending: Option<Extent>,
    end: Option<Box<DeltaSource>>,
    new_size: u64,
    extents: u64,
    changed: u64,
}

impl LinkReader {
    /// The next extent not yet fully applied, if any.
    fn peek(&mut self) -> Result<Option<&Extent>, DeltaError> {
        if self.pending.is_none() && self.end.is_none() {
            match self.events.recv() {
                Ok(DeltaEvent::Extent(e)) => {
                    self.extents += 1;
                    self.changed += e.len();
                    self.pending = Some(e);
                }
                Ok(DeltaEvent::End(source)) => self.end = Some(source),
                Ok(DeltaEvent::Failed(e)) => return Err(e),
                Err(_) => return Err(DeltaError::Panic("delta reader")),
            }
        }
        Ok(self.pending.as_ref())
    }

    /// Reads the rest of the delta (extents past the final size apply to an
    /// image the series cuts off), so its trailer is checked.
    fn drain(&mut self) -> Result<(), DeltaError> {
        while self.peek()?.is_some() {
            self.pending = None;
        }
        Ok(())
    }
}

/// Ranges of a window, as offsets from its start, kept sorted and disjoint.
#[derive(Debug, Default)]
struct RangeSet(Vec<(usize, usize)>);

impl RangeSet {
    fn insert(&mut self, start: usize, end: usize) {
        let (mut start, mut end) = (start, end);
        self.0.retain(|&(s, e)| {
            if e < start || s > end {
                true
            } else {
                start = start.min(s);
                end = end.max(e);
                false
            }
        });
        let at = self.0.partition_point(|&(s, _)| s < start);
        self.0.insert(at, (start, end));
    }

    /// Bytes of `start..end` in the set.
    fn covered(&self, start: usize, end: usize) -> usize {
        self.0
            .iter()
            .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
            .sum()
    }
}

/// What composing a window whose base bytes are unknown left: the ranges
/// whose bytes are known, and records kept as they are because they refer
/// to base bytes no delta before them changed.
#[derive(Debug, Default)]
struct WindowChanges {
    known: RangeSet,
    kept: Vec<delta::RawRecord>,
}

impl WindowChanges {
    fn kept_overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = usize> + '_ {
        self.kept
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.offset < end && r.offset + r.length > start)
            .map(|(i, _)| i)
    }
}

/// Applies a series window by window.
struct Composer {
    links: Vec<LinkReader>,
    final_size: u64,
    /// The smallest intermediate NEW size: windows from here to the final
    /// size were cut by some delta and must be composed even without
    /// extents.
    shrink_floor: u64,
}

impl Composer {
    fn start(links: &mut [ChainLink]) -> Result<Composer, DeltaError> {
        let final_size = links.last().map_or(0, |l| l.trailer.new_size);
        let shrink_floor = links
            .iter()
            .rev()
            .skip(1)
            .map(|l| l.trailer.new_size)
            .min()
            .unwrap_or(u64::MAX);
        let readers = links
            .iter_mut()
            .map(|link| {
                Ok(LinkReader {
                    name: link.path.clone(),
                    events: spawn_delta_reader(link.source()?, LINK_DEPTH),
                    pending: None,
                    end: None,
                    new_size: link.trailer.new_size,
                    extents: 0,
                    changed: 0,
                })
            })
            .collect::<Result<Vec<_>, DeltaError>>()?;
        Ok(Composer {
            links: readers,
            final_size,
            shrink_floor,
        })
    }

    /// The first window at or after `from` that some delta changes.
    fn next_window(&mut self, from: u64) -> Result<Option<u64>, DeltaError> {
        let mut next = u64::MAX;
        if self.shrink_floor < self.final_size {
            next = from.max(self.shrink_floor / WINDOW * WINDOW);
        }
        for link in &mut self.links {
            if let Some(e) = link.peek()? {
                next = next.min(from.max(e.offset / WINDOW * WINDOW));
            }
        }
        Ok((next < self.final_size).then_some(next))
    }

    /// Composes the window at `start`. `window` holds its base bytes (zero
    /// past the base's end), or zeros when `base_known` is false; records
    /// that need unknown base bytes are then kept in `changes` as they are.
    fn compose(
        &mut self,
        start: u64,
        window: &mut [u8],
        base_known: bool,
        changes: &mut WindowChanges,
    ) -> Result<(), DeltaError> {
        let end = start + window.len() as u64;
        let count = self.links.len();
        for (index, link) in self.links.iter_mut().enumerate() {
            while let Some(e) = link.peek()? {
                if e.offset >= end {
                    break;
                }
                let from = e.offset.max(start);
                let to = e.end().min(end);
                let range = (from - start) as usize..(to - start) as usize;
                let Some(mut e) = link.pending.take() else {
                    break;
                };
                if e.end() > end && matches!(e.data, ExtentData::Referenced(_)) {
                    return Err(DeltaError::Panic(
                        "compose (reference record across windows)",
                    ));
                }
                if e.end() > end {
                    // The rest belongs to the next windows.
                    link.pending = Some(split_off(&mut e, end));
                }
                let overlapping: Vec<usize> = changes.kept_overlapping(from, to).collect();
                match e.data {
                    ExtentData::Bytes(b) => {
                        window[range.clone()].copy_from_slice(&b[(from - e.offset) as usize..]);
                    }
                    ExtentData::Zeros(_) => window[range.clone()].fill(0),
                    ExtentData::Referenced(raw) => {
                        let known = changes.known.covered(range.start, range.end);
                        if base_known || (known == range.len() && overlapping.is_empty()) {
                            let bytes = raw.decode_against(&window[range.clone()])?;
                            window[range.clone()].copy_from_slice(&bytes);
                        } else if known == 0 && overlapping.is_empty() {
                            changes.kept.push(*raw);
                            changes.kept.sort_by_key(|r| r.offset);
                            continue;
                        } else {
                            return Err(needs_base(&link.name, from, to));
                        }
                    }
                }
                drop_covered(changes, &overlapping, from, to, &link.name)?;
                changes.known.insert(range.start, range.end);
            }
            // The next delta was made from this one's NEW: nothing past its
            // size.
            if index + 1 < count && link.new_size < end {
                let cut = link.new_size.max(start);
                if cut < end {
                    let overlapping: Vec<usize> = changes.kept_overlapping(cut, end).collect();
                    drop_covered(changes, &overlapping, cut, end, &link.name)?;
                    let range = (cut - start) as usize..window.len();
                    window[range.clone()].fill(0);
                    changes.known.insert(range.start, range.end);
                }
            }
        }
        Ok(())
    }

    /// Reads every delta to its end and returns their readers.
    fn finish(mut self) -> Result<Vec<LinkReader>, DeltaError> {
        for link in &mut self.links {
            link.drain()?;
        }
        Ok(self.links)
    }
}

/// Splits `e` at `at` (inside it), leaving the first part in `e` and
/// returning the rest. Only literal and zero extents cross windows.
fn split_off(e: &mut Extent, at: u64) -> Extent {
    let head = (at - e.offset) as usize;
    let data = match &mut e.data {
        ExtentData::Bytes(b) => ExtentData::Bytes(b.split_off(head)),
        ExtentData::Zeros(n) => {
            let rest = *n - head as u64;
            *n = head as u64;
            ExtentData::Zeros(rest)
        }
        // Refused by the caller: a reference record never crosses a window.
        ExtentData::Referenced(r) => ExtentData::Zeros(r.length - head as u64),
    };
    Extent { offset: at, data }
}

/// Drops kept records that `from..to` overwrites completely; a partial
/// overwrite would need the record's decoded bytes, so the base.
fn drop_covered(
    changes: &mut WindowChanges,
    overlapping: &[usize],
    from: u64,
    to: u64,
    name: &Path,
) -> Result<(), DeltaError> {
    for &i in overlapping.iter().rev() {
        let r = &changes.kept[i];
        if r.offset < from || r.offset + r.length > to {
            return Err(needs_base(name, from, to));
        }
        changes.kept.remove(i);
    }
    Ok(())
}

fn needs_base(name: &Path, from: u64, to: u64) -> DeltaError {
    DeltaError::Chain {
        detail: format!(
            "{} changes bytes {from}..{to}, which an earlier delta's record compressed against the base covers only in part: pass --base OLD to merge this series",
            name.display()
        ),
    }
}

fn verify_ends(readers: &[LinkReader], links: &[ChainLink]) -> Result<(u64, u64), DeltaError> {
    let (mut extents, mut changed) = (0, 0);
    for (reader, link) in readers.iter().zip(links) {
        let source = reader
            .end
            .as_deref()
            .ok_or(DeltaError::Panic("delta reader (no end)"))?;
        if source.trailer() != Some(&link.trailer) {
            return Err(DeltaError::Chain {
                detail: format!("{}: changed while it was read", link.name()),
            });
        }
        extents += reader.extents;
        changed += reader.changed;
    }
    Ok((extents, changed))
}

/// Stream mode for a series: writes the image the last delta makes, from
/// `base` (the first delta's OLD), in one pass.
///
/// # Errors
/// [`DeltaError::Chain`] before anything is written when the series does
/// not connect; as [`apply::apply_stream`] otherwise.
pub fn apply_chain_stream(
    deltas: Vec<Input>,
    base: Input,
    output: Output,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    let mut links = open_chain(deltas)?;
    let mut notes = check_chain(&links)?;
    let (Some(first), Some(last)) = (links.first(), links.last()) else {
        return Err(DeltaError::Chain {
            detail: "no delta given".into(),
        });
    };
    let old_digest = first.trailer.old_digest;
    let (new_digest, final_size) = (last.trailer.new_digest, last.trailer.new_size);
    if output.kind() == OutputKind::BlockDevice {
        output.require_capacity(final_size)?;
    }
    if links.iter().any(|l| l.header.copies) {
        return apply_one_by_one(links, base, output, options, notes);
    }
    let base_path = base.path().to_path_buf();
    if let (crate::io::InputKind::File, Some(actual)) = (base.kind(), base.size()) {
        if let Some(first) = links.first() {
            apply::check_base_size(first.trailer.old_size, actual, &base_path)?;
        }
    }
    let out_path = output.path().to_path_buf();
    let cancel = Cancel::new();
    let mut old = ChunkReader::spawn(
        base,
        ReaderOptions {
            digest: true,
            cancel: Some(cancel.clone()),
            ..ReaderOptions::default()
        },
    );
    let mut composer = Composer::start(&mut links)?;
    let (result, recycle_rx) = with_writer(&cancel, output, options.progress.clone(), |tx, rx| {
        produce_chain(&mut old, &mut composer, tx, rx)
    });
    let written = match result.and_then(|((), w)| Ok((w, composer.finish()?))) {
        Ok(r) => r,
        Err(e) => {
            old.abandon();
            return Err(e);
        }
    };
    let (written, readers) = written;
    while let Ok(buf) = recycle_rx.try_recv() {
        old.recycle_buf(buf);
    }
    let old_summary = old.finish()?;
    let (extents, changed) = verify_ends(&readers, &links)?;
    if let Some(first) = links.first() {
        check_sizes(&first.trailer, old_summary.bytes, &base_path)?;
    }
    if let (Some(expected), Some(actual)) = (old_digest, old_summary.digest) {
        if expected != actual {
            return Err(DeltaError::BaseMismatch {
                path: base_path,
                detail: format!("OLD digest of the first delta is {expected}, base has {actual}"),
            });
        }
    }
    let unknown_new =
        new_digest == Digest::NONE && links.last().is_some_and(|l| l.trailer.old_digest.is_none());
    if !unknown_new && written.digest != new_digest {
        return Err(DeltaError::ResultMismatch {
            path: out_path,
            expected: new_digest,
            actual: written.digest,
        });
    }
    if old_digest.is_none() {
        notes
            .push("the first delta was made from change tracking: the base was not checked".into());
    }
    debug_assert_eq!(written.bytes, final_size);
    written.output.commit()?;
    Ok(ApplySummary {
        format: DeltaKind::Native,
        new_size: final_size,
        extents,
        changed_bytes: changed,
        new_digest: Some(written.digest),
        check_base: if unknown_new {
            CheckBase::None
        } else {
            CheckBase::Full
        },
        verified: !unknown_new,
        notes,
    })
}

/// The overlay loop of a series: OLD chunks (zeros past OLD's end), each
/// changed window composed, cut to the final size, sent in order.
fn produce_chain(
    old: &mut ChunkReader,
    composer: &mut Composer,
    chunks: crossbeam_channel::Sender<Chunk>,
    recycled: &Receiver<AlignedBuf>,
) -> Result<(), DeltaError> {
    let chunk_size = DEFAULT_CHUNK_SIZE as u64;
    let final_size = composer.final_size;
    let mut pos = 0u64;
    let mut source = OldChunks::new(old);
    let mut window = vec![0u8; WINDOW as usize];
    let mut changes = WindowChanges::default();
    while pos < final_size {
        source.reclaim(recycled);
        let need = (final_size - pos).min(chunk_size) as usize;
        let mut chunk = match source.next()? {
            Some(c) => c,
            None => source.zeros(pos, 0),
        };
        if chunk.len < need {
            chunk.set_len(need);
        }
        let mut at = pos;
        while let Some(start) = composer.next_window(at)? {
            if start >= pos + need as u64 {
                break;
            }
            let in_chunk = (start - pos) as usize..chunk.len.min((start - pos + WINDOW) as usize);
            changes.known = RangeSet::default();
            // Composed in a scratch window (base bytes, zeros past the
            // chunk) and copied back only where the series wrote: the
            // writer then rehashes only those digest segments.
            window.fill(0);
            if !chunk.hole {
                window[..in_chunk.len()].copy_from_slice(&chunk.data()[in_chunk.clone()]);
            }
            composer.compose(start, &mut window, true, &mut changes)?;
            for &(from, to) in &changes.known.0 {
                let to = to.min(in_chunk.len());
                if from < to {
                    let at = in_chunk.start;
                    chunk
                        .range_mut(at + from..at + to)
                        .copy_from_slice(&window[from..to]);
                }
            }
            at = start + WINDOW;
        }
        chunk.set_len(need);
        pos += need as u64;
        if chunks.send(chunk).is_err() {
            return Err(DeltaError::Panic("writer (stopped)"));
        }
    }
    Ok(())
}

/// In-place mode for a series: merges it against the target (which must
/// hold the first delta's OLD) into a temporary delta and applies that, so
/// the target is written once, only where the series changes it, after
/// every check passed.
///
/// # Errors
/// [`DeltaError::Chain`] before anything is written when the series does
/// not connect; as [`apply::apply_in_place`] otherwise.
pub fn apply_chain_in_place(
    deltas: Vec<Input>,
    target: &Path,
    options: &ApplyOptions,
) -> Result<ApplySummary, DeltaError> {
    let links = open_chain(deltas)?;
    let mut notes = check_chain(&links)?;
    if links.iter().any(|l| l.header.copies) {
        // Copy records cannot be merged: each delta in its turn, each
        // verified before it writes.
        let count = links.len();
        let mut last = None;
        for link in links {
            let mut summary = apply::apply_in_place_file(&link.path, link.file, target, options)?;
            notes.append(&mut summary.notes);
            last = Some(summary);
        }
        return one_by_one_summary(last, notes, count);
    }
    let merged = tempfile::Builder::new()
        .prefix(".diskdelta-chain-")
        .tempfile()
        .map_err(|source| IoError::Op {
            op: "create temporary delta",
            path: std::env::temp_dir(),
            source,
        })?;
    let write = merged.reopen().map_err(|source| IoError::Op {
        op: "open temporary delta",
        path: merged.path().into(),
        source,
    })?;
    merge_links(links, Some(target), write, &MergeOptions::default())?;
    let input = Input::open(merged.path(), &crate::io::InputOptions::default())?;
    let mut summary = apply::apply_in_place(input, target, options)?;
    notes.append(&mut summary.notes);
    summary.notes = notes;
    Ok(summary)
}

/// Stream mode for a series with copy records: each delta applied in its
/// turn, the images between them in a temporary directory beside the
/// output (two at a time), each verified like a single apply.
fn apply_one_by_one(
    links: Vec<ChainLink>,
    base: Input,
    output: Output,
    options: &ApplyOptions,
    mut notes: Vec<String>,
) -> Result<ApplySummary, DeltaError> {
    let dir = match output.kind() {
        OutputKind::File => output
            .path()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        _ => std::env::temp_dir(),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".diskdelta-series-")
        .tempdir_in(&dir)
        .map_err(|source| IoError::Op {
            op: "create a temporary directory",
            path: dir.clone(),
            source,
        })?;
    let count = links.len();
    let mut input = base;
    let mut output = Some(output);
    let mut summary = None;
    for (i, mut link) in links.into_iter().enumerate() {
        let source = link.source()?;
        let last = i + 1 == count;
        let (out, step_path) = if last {
            (
                output
                    .take()
                    .ok_or(DeltaError::Panic("series (output used twice)"))?,
                None,
            )
        } else {
            let path = scratch.path().join(format!("image-{i}"));
            (Output::create(&path)?, Some(path))
        };
        let step_options = ApplyOptions {
            progress: if last { options.progress.clone() } else { None },
            ..options.clone()
        };
        let mut done = apply::apply_stream_source(source, input, out, &step_options)?;
        notes.append(&mut done.notes);
        summary = Some(done);
        if let Some(path) = step_path {
            input = Input::open(&path, &crate::io::InputOptions::default())?;
            // The image before this one is no longer needed.
            if i > 0 {
                let _ = std::fs::remove_file(scratch.path().join(format!("image-{}", i - 1)));
            }
        } else {
            break;
        }
    }
    one_by_one_summary(summary, notes, count)
}

/// The summary of a series applied one delta after another: the last
/// apply's, with every note.
fn one_by_one_summary(
    last: Option<ApplySummary>,
    mut notes: Vec<String>,
    count: usize,
) -> Result<ApplySummary, DeltaError> {
    let Some(mut summary) = last else {
        return Err(DeltaError::Chain {
            detail: "no delta given".into(),
        });
    };
    notes.push(format!(
        "the series holds copy records: its {count} deltas were applied one after another"
    ));
    summary.notes = notes;
    Ok(summary)
}

/// Validated options of `merge`.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Compression and encoder threads of the merged delta.
    pub diff: DiffOptions,
}

/// Writes one delta equivalent to the series `deltas` to `out`. With
/// `base` (a seekable file or device holding the first delta's OLD), every
/// record is decoded and the merged records are compressed against the
/// base; without it, records compressed against base bytes that no earlier
/// delta changed are kept as they are, and a series where a later record
/// refers to bytes an earlier one changed fails asking for the base.
///
/// # Errors
/// [`DeltaError::Chain`] when the series does not connect or needs the
/// base; format, I/O and base errors.
pub fn merge<W: Write + Send>(
    deltas: Vec<Input>,
    base: Option<&Path>,
    out: W,
    options: &MergeOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let links = open_chain(deltas)?;
    check_chain(&links)?;
    merge_links(links, base, out, options)
}

fn merge_links<W: Write + Send>(
    mut links: Vec<ChainLink>,
    base: Option<&Path>,
    out: W,
    options: &MergeOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let (Some(first), Some(last)) = (links.first(), links.last()) else {
        return Err(DeltaError::Chain {
            detail: "no delta given".into(),
        });
    };
    if let Some(link) = links.iter().find(|l| l.header.copies) {
        return Err(DeltaError::Chain {
            detail: format!(
                "{} holds copy records (format version 3), which merge cannot combine; apply the series instead, or make its deltas with `diff --format diskdelta-v2`",
                link.name()
            ),
        });
    }
    let header = Header {
        version: VERSION,
        block_size: first.header.block_size,
        old_size: Some(first.trailer.old_size),
        new_size: Some(last.trailer.new_size),
        change_tracked: first.trailer.old_digest.is_none(),
        copies: false,
    };
    let ends = Compared {
        old_size: first.trailer.old_size,
        new_size: last.trailer.new_size,
        old_digest: first.trailer.old_digest,
        new_digest: last.trailer.new_digest,
        samples: first.trailer.samples.clone(),
        bytes_read: 0,
        moves: None,
    };
    let base = match base {
        Some(path) => {
            let file = File::open(path).map_err(|source| IoError::Open {
                path: path.into(),
                source,
            })?;
            check_base_samples(&file, path, &ends, first.header.block_size)?;
            Some((path.to_path_buf(), file))
        }
        None => None,
    };
    let block = first.header.block_size as usize;
    let mut composer = Composer::start(&mut links)?;
    let mut diff = options.diff.clone();
    diff.format = super::OutputFormat::Native;
    let written = write_delta(header, out, &diff, |sink| {
        compose_merged(&mut composer, base.as_ref(), block, ends, sink)
    })?;
    let readers = composer.finish()?;
    verify_ends(&readers, &links)?;
    Ok(written)
}

fn check_base_samples(
    file: &File,
    path: &Path,
    ends: &Compared,
    block_size: u32,
) -> Result<(), DeltaError> {
    let bs = u64::from(block_size);
    let mut buf = vec![0u8; block_size as usize];
    for sample in &ends.samples {
        let offset = sample.block.saturating_mul(bs);
        let len = bs.min(ends.old_size.saturating_sub(offset)) as usize;
        read_base(file, path, offset, &mut buf[..len], ends.old_size)?;
        if Digest::of(&buf[..len]) != sample.digest {
            return Err(DeltaError::BaseMismatch {
                path: path.into(),
                detail: format!("sampled OLD block {} differs", sample.block),
            });
        }
    }
    Ok(())
}

/// Reads base bytes at `offset` into `buf`, zeros past `old_size`.
fn read_base(
    file: &File,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
    old_size: u64,
) -> Result<(), DeltaError> {
    let readable = old_size.saturating_sub(offset).min(buf.len() as u64) as usize;
    file.read_exact_at(&mut buf[..readable], offset)
        .map_err(|source| IoError::Read {
            path: path.into(),
            offset,
            source,
        })?;
    buf[readable..].fill(0);
    Ok(())
}

/// Produces the merged delta's extents window by window.
fn compose_merged(
    composer: &mut Composer,
    base: Option<&(PathBuf, File)>,
    block: usize,
    mut ends: Compared,
    mut sink: ExtentSink,
) -> Result<Option<Compared>, DeltaError> {
    let mut window = vec![0u8; WINDOW as usize];
    let mut base_window = vec![0u8; WINDOW as usize];
    let mut builder = ExtentBuilder::default();
    let mut changed = Vec::new();
    let references = sink.references;
    let mut at = 0;
    while let Some(start) = composer.next_window(at)? {
        at = start + WINDOW;
        let len = (composer.final_size - start).min(WINDOW) as usize;
        let mut changes = WindowChanges::default();
        match base {
            Some((path, file)) => {
                read_base(file, path, start, &mut base_window, ends.old_size)?;
                window.copy_from_slice(&base_window);
                composer.compose(start, &mut window, true, &mut changes)?;
                let mut stop = false;
                compare_blocks(
                    Some(View::Bytes(&base_window[..len])),
                    View::Bytes(&window[..len]),
                    block,
                    |from, to, change| {
                        if stop {
                            return;
                        }
                        let offset = start + from as u64;
                        let built = match change {
                            BlockChange::Unchanged if references => {
                                builder.push_unchanged(offset, &window[from..to])
                            }
                            BlockChange::Unchanged => builder.flush(),
                            BlockChange::Zeroed => builder.push_zeros(offset, (to - from) as u64),
                            BlockChange::Data => builder.push_data_against(
                                offset,
                                &window[from..to],
                                if references {
                                    Reference::Old(&base_window[from..to])
                                } else {
                                    Reference::Absent
                                },
                            ),
                        };
                        stop = !send(&mut sink, built, &mut changed);
                    },
                );
                if stop {
                    return Ok(None);
                }
            }
            None => {
                window.fill(0);
                composer.compose(start, &mut window, false, &mut changes)?;
                // Records past the final size change bytes the series cuts
                // off; one across it cannot be cut without its bytes.
                let final_size = composer.final_size;
                if let Some(r) = changes
                    .kept
                    .iter()
                    .find(|r| r.offset < final_size && r.offset + r.length > final_size)
                {
                    return Err(needs_base(
                        Path::new("a delta"),
                        r.offset,
                        r.offset + r.length,
                    ));
                }
                changes.kept.retain(|r| r.offset < final_size);
                let mut kept = changes.kept.into_iter().peekable();
                for &(from, to) in &changes.known.0 {
                    let to = to.min(len);
                    if from >= to {
                        continue;
                    }
                    while let Some(r) = kept.next_if(|r| r.offset < start + from as u64) {
                        if !send_kept(&mut sink, &mut builder, r, &mut changed) {
                            return Ok(None);
                        }
                    }
                    let mut run = from;
                    while run < to {
                        let next = (run + block).min(to);
                        let bytes = &window[run..next];
                        let offset = start + run as u64;
                        let built = if is_zero(bytes) {
                            builder.push_zeros(offset, bytes.len() as u64)
                        } else {
                            builder.push_data(offset, bytes)
                        };
                        if !send(&mut sink, built, &mut changed) {
                            return Ok(None);
                        }
                        run = next;
                    }
                    if !send(&mut sink, builder.flush(), &mut changed) {
                        return Ok(None);
                    }
                }
                for r in kept {
                    if !send_kept(&mut sink, &mut builder, r, &mut changed) {
                        return Ok(None);
                    }
                }
            }
        }
    }
    if !send(&mut sink, builder.flush(), &mut changed) {
        return Ok(None);
    }
    // Samples must be blocks the merged delta leaves unchanged, so that a
    // rerun after an interrupted in-place apply still passes the check.
    let bs = block as u64;
    ends.samples
        .retain(|s: &Sample| !overlaps_any(&changed, s.block * bs, (s.block + 1) * bs));
    Ok(Some(ends))
}

fn overlaps_any(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let at = ranges.partition_point(|&(_, e)| e <= start);
    ranges.get(at).is_some_and(|&(s, _)| s < end)
}

fn send(sink: &mut ExtentSink, built: Option<Built>, changed: &mut Vec<(u64, u64)>) -> bool {
    if let Some(b) = &built {
        changed.push((b.extent.offset, b.extent.end()));
    }
    sink.send(built)
}

fn send_kept(
    sink: &mut ExtentSink,
    builder: &mut ExtentBuilder,
    record: delta::RawRecord,
    changed: &mut Vec<(u64, u64)>,
) -> bool {
    if !send(sink, builder.flush(), changed) {
        return false;
    }
    let built = Built {
        extent: Extent {
            offset: record.offset,
            data: ExtentData::Referenced(Box::new(record)),
        },
        reference: None,
    };
    send(sink, Some(built), changed)
}

/// One delta of a series as `info` shows it.
#[derive(Debug, Clone)]
pub struct SeriesEntry {
    /// The delta.
    pub path: PathBuf,
    /// Its OLD and NEW sizes.
    pub old_size: u64,
    /// NEW size.
    pub new_size: u64,
    /// Records.
    pub records: u64,
    /// NEW bytes its records carry.
    pub changed_bytes: u64,
    /// Payload bytes stored.
    pub stored_bytes: u64,
    /// How it relates to the delta before it (`None` for the first).
    pub link: Option<Link>,
}

/// What `info D1 … Dn` shows: each delta's ends and whether the series
/// connects. Only the ends are read.
///
/// # Errors
/// I/O and format errors, naming the delta.
pub fn describe_series(deltas: Vec<Input>) -> Result<Vec<SeriesEntry>, DeltaError> {
    let links = open_chain(deltas)?;
    Ok(links
        .iter()
        .enumerate()
        .map(|(i, l)| SeriesEntry {
            path: l.path.clone(),
            old_size: l.trailer.old_size,
            new_size: l.trailer.new_size,
            records: l.trailer.record_count,
            changed_bytes: l.trailer.changed_bytes,
            stored_bytes: l.trailer.stored_bytes,
            link: (i > 0).then(|| link(&links[i - 1], l)),
        })
        .collect())
}

#[cfg(test)]
mod tests;
