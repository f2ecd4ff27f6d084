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
