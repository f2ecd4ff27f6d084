//! The redo journal of `apply --in-place` for records compressed against
//! OLD (format: `docs/formats/delta.md`, §9a).
//!
//! Such a record decodes only against OLD's bytes at its range, which its
//! own write destroys. A write cut short (process killed inside it, power
//! lost before the target was synced) would leave bytes that are neither
//! OLD nor NEW, and the record could never be applied again. So decoded
//! records are written in batches: the batch goes to the journal first
//! (temporary name, fsync, rename), then to the target, which is synced
//! before the next batch replaces the journal. A rerun finds the records it
//! cannot decode in the journal. The journal names the delta by its
//! records digest, so a journal of another delta is ignored.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::DeltaError;
use crate::digest::Digest;
use crate::format::delta::RawRecord;
use crate::io::{IoError, Output};

const MAGIC: &[u8; 8] = b"DDJRNL01";
/// Decoded bytes gathered before they are journaled and written.
pub(super) const BATCH_BYTES: usize = 32 << 20;

/// Where the journal of `target` lives: beside a regular file, else in the
/// user's state directory.
pub(super) fn journal_path(target: &Path, is_file: bool) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "target".into(), |n| n.to_string_lossy().into_owned());
    if is_file {
        return target.with_file_name(format!(".{name}.diskdelta-apply"));
    }
    let canonical = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let key = Digest::of(canonical.as_os_str().as_encoded_bytes()).to_hex();
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("diskdelta")
        .join(format!("apply-{name}-{}", &key[..16]))
}

/// Decoded records of the delta being applied, as found in a journal.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    records: HashMap<u64, Vec<u8>>,
}

impl Recovered {
    /// Reads the journal at `path` if it belongs to the delta whose records
    /// digest is `delta`. A missing, damaged or foreign journal gives
    /// nothing (the records it would hold are then reported as
    /// undecodable, never guessed).
    pub(super) fn load(path: &Path, delta: &Digest) -> Recovered {
        let Ok(bytes) = std::fs::read(path) else {
            return Recovered::default();
        };
        Self::parse(&bytes, delta).unwrap_or_default()
    }

    fn parse(bytes: &[u8], delta: &Digest) -> Option<Recovered> {
        let body_len = bytes.len().checked_sub(32)?;
        let (body, check) = bytes.split_at(body_len);
        if Digest::of(body).as_bytes() != check || body.get(..8)? != MAGIC {
            return None;
        }
        if body.get(8..40)? != delta.as_bytes() {
            return None;
        }
        let mut records = HashMap::new();
        let mut at = 40;
        while at < body.len() {
            let index = u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
            let length = usize::try_from(u64::from_le_bytes(
                body.get(at + 8..at + 16)?.try_into().ok()?,
            ))
            .ok()?;
            let data = body.get(at + 16..at.checked_add(16)?.checked_add(length)?)?;
            records.insert(index, data.to_vec());
            at += 16 + length;
        }
        Some(Recovered { records })
    }

    /// The journaled bytes of `raw`, if they are its result.
    pub(super) fn bytes_of(&self, raw: &RawRecord) -> Option<&[u8]> {
        self.records
            .get(&raw.index)
            .map(Vec::as_slice)
            .filter(|b| raw.holds(b))
    }
}

/// Decoded records waiting to be journaled and written.
#[derive(Debug)]
pub(super) struct Batch {
    path: PathBuf,
    delta: Digest,
    records: Vec<(u64, u64, Vec<u8>)>,
    bytes: usize,
    written: bool,
}

impl Batch {
    pub(super) fn new(path: PathBuf, delta: Digest) -> Batch {
        Batch {
            path,
            delta,
            records: Vec::new(),
            bytes: 0,
            written: false,
        }
    }

    /// Adds a decoded record; true when the batch is full.
    pub(super) fn push(&mut self, raw: &RawRecord, bytes: Vec<u8>) -> bool {
        self.bytes += bytes.len();
        self.records.push((raw.index, raw.offset, bytes));
        self.bytes >= BATCH_BYTES
    }

    /// Journals the batch, writes it to the target and syncs the target.
    pub(super) fn flush(&mut self, output: &Output) -> Result<(), DeltaError> {
        if self.records.is_empty() {
            return Ok(());
        }
        self.write_journal()?;
        if std::env::var_os("DISKDELTA_TESTONLY_CUT_IN_PLACE").is_some() {
            // What a crash inside the first write leaves: half of it.
            if let Some((_, offset, bytes)) = self.records.first() {
                output.write_at(*offset, &bytes[..bytes.len() / 2])?;
                output.sync()?;
            }
            std::process::exit(99);
        }
        for (_, offset, bytes) in &self.records {
            output.write_at(*offset, bytes)?;
        }
        output.sync()?;
        self.records.clear();
        self.bytes = 0;
        Ok(())
    }

    fn write_journal(&mut self) -> Result<(), DeltaError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| DeltaError::Io(IoError::Op { op, path, source })
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create journal directory", dir))?;
        }
        let mut body = Vec::with_capacity(self.bytes + 40 + 16 * self.records.len() + 32);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(self.delta.as_bytes());
        for (index, _, bytes) in &self.records {
            body.extend_from_slice(&index.to_le_bytes());
            body.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            body.extend_from_slice(bytes);
        }
        let check = Digest::of(&body);
        body.extend_from_slice(check.as_bytes());
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(io("create journal", &tmp))?;
        file.write_all(&body).map_err(io("write journal", &tmp))?;
        file.sync_all().map_err(io("sync journal", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename journal", &self.path))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.written = true;
        Ok(())
    }

    /// Removes the journal after the last batch reached the target.
    pub(super) fn finish(self) {
        if self.written || self.path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

const SPILL_MAGIC: &[u8; 8] = b"DDCOPY01";

/// Where the copy spill of the journal at `journal` lives.
pub(super) fn spill_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".copies");
    PathBuf::from(name)
}

/// The source bytes of a delta's copy records, read from the target before
/// its first write (§9a): a copy reads OLD, which earlier records of the
/// same delta may overwrite. Entries are found by record index and
/// verified against the record when read.
#[derive(Debug)]
pub(super) struct CopySpill {
    file: File,
    entries: HashMap<u64, (u64, u64)>,
}

impl CopySpill {
    /// Opens the spill at `path` if it belongs to the delta whose records
    /// digest is `delta` and its checksum holds; otherwise `None`.
    pub(super) fn load(path: &Path, delta: &Digest) -> Option<CopySpill> {
        use std::io::{BufReader, Read};
        let file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let body_len = len.checked_sub(32)?;
        let mut reader = BufReader::with_capacity(1 << 20, file.try_clone().ok()?);
        let mut head = [0u8; 40];
        reader.read_exact(&mut head).ok()?;
        if &head[..8] != SPILL_MAGIC || &head[8..40] != delta.as_bytes() {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        let mut entries = HashMap::new();
        let mut at = 40u64;
        let mut buf = vec![0u8; 1 << 20];
        while at < body_len {
            let mut entry = [0u8; 16];
            reader.read_exact(&mut entry).ok()?;
            hasher.update(&entry);
            let index = u64::from_le_bytes(entry[..8].try_into().ok()?);
            let length = u64::from_le_bytes(entry[8..].try_into().ok()?);
            let data_at = at + 16;
            let end = data_at.checked_add(length).filter(|&e| e <= body_len)?;
            let mut left = length;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                reader.read_exact(&mut buf[..n]).ok()?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            entries.insert(index, (data_at, length));
            at = end;
        }
        let mut check = [0u8; 32];
        reader.read_exact(&mut check).ok()?;
        if hasher.finalize().as_bytes() != &check {
            return None;
        }
        Some(CopySpill { file, entries })
    }

    /// The spilled source bytes of copy record `raw`, if they verify.
    pub(super) fn bytes_of(&self, raw: &RawRecord) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let &(at, length) = self.entries.get(&raw.index)?;
        if length != raw.length {
            return None;
        }
        let mut bytes = vec![0u8; length as usize];
        self.file.read_exact_at(&mut bytes, at).ok()?;
        raw.holds(&bytes).then_some(bytes)
    }
}

/// Writes a copy spill: entries in record order, then the checksum; the
/// spill replaces any earlier one only once it is complete and synced.
pub(super) struct SpillWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<File>>,
    hasher: blake3::Hasher,
}

impl Drop for SpillWriter {
    /// An unfinished spill (an error, or a failed check before the first
    /// write) is removed.
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            crate::io::cleanup::unregister(&self.tmp);
        }
    }
}

impl SpillWriter {
    pub(super) fn create(path: PathBuf, delta: &Digest) -> Result<SpillWriter, DeltaError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(op("create journal directory", dir))?;
        }
        let tmp = path.with_extension("copies-tmp");
        let file = File::create(&tmp).map_err(op("create copy spill", &tmp))?;
        // Ctrl-C before the spill is complete removes it.
        crate::io::cleanup::register(&tmp);
        let mut writer = SpillWriter {
            path,
            tmp,
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
        };
        writer.put(SPILL_MAGIC)?;
        writer.put(delta.as_bytes())?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), DeltaError> {
        self.hasher.update(bytes);
        let Some(out) = self.out.as_mut() else {
            return Err(DeltaError::Panic("copy spill (written after finishing)"));
        };
        out.write_all(bytes)
            .map_err(op("write copy spill", &self.tmp))
    }

    /// Adds the source bytes of record `index`.
    pub(super) fn push(&mut self, index: u64, bytes: &[u8]) -> Result<(), DeltaError> {
        self.put(&index.to_le_bytes())?;
        self.put(&(bytes.len() as u64).to_le_bytes())?;
        self.put(bytes)
    }

    /// Seals, syncs and renames the spill into place, and opens it.
    pub(super) fn finish(mut self, delta: &Digest) -> Result<CopySpill, DeltaError> {
        let check = *self.hasher.finalize().as_bytes();
        self.put(&check)?;
        let Some(out) = self.out.as_mut() else {
            return Err(DeltaError::Panic("copy spill (finished twice)"));
        };
        out.flush().map_err(op("write copy spill", &self.tmp))?;
        out.get_ref()
            .sync_all()
            .map_err(op("sync copy spill", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(op("rename copy spill", &self.path))?;
        // Renamed: nothing left for Drop or Ctrl-C to remove.
        self.out = None;
        crate::io::cleanup::unregister(&self.tmp);
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        CopySpill::load(&self.path, delta).ok_or_else(|| {
            op("read back copy spill", &self.path)(std::io::Error::other(
                "the spill just written does not verify",
            ))
        })
    }
}

fn op(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DeltaError {
    let path = path.to_path_buf();
    move |source| DeltaError::Io(IoError::Op { op, path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_or_foreign_journals_give_nothing() {
        let delta = Digest::of(b"delta");
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(delta.as_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(b"abc");
        let check = Digest::of(&body);
        body.extend_from_slice(check.as_bytes());
        let good = Recovered::parse(&body, &delta).expect("valid journal");
        assert_eq!(good.records.get(&7).map(Vec::as_slice), Some(&b"abc"[..]));
        assert!(Recovered::parse(&body, &Digest::of(b"other")).is_none());
        for at in 0..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 0x10;
            assert!(Recovered::parse(&bad, &delta).is_none(), "flip at {at}");
        }
        for cut in 0..body.len() {
            assert!(
                Recovered::parse(&body[..cut], &delta).is_none(),
                "cut at {cut}"
            );
        }
    }
}
