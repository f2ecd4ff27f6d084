//! Restoring a snapshot into an image file of another format (qcow2,
//! vmdk, ...): the snapshot is restored to a sparse raw file next to the
//! output, converted with `qemu-img convert`, read back through a private
//! qemu-nbd and checked against the snapshot's image digest, and only then
//! renamed into place. On any failure nothing is left at the output path.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::format::snapshot::Snapshot;
use crate::io::reader::ReaderOptions;
use crate::io::{ChunkReader, Input, InputOptions, IoError, Output};
use crate::repo::restore::{restore, RestoreOptions, RestoreSummary};
use crate::repo::{RepoError, Repository};

use super::qemu::QemuError;
use super::source::{NbdSourceOptions, SourceError};

/// Output formats `qemu-img convert` writes that restore offers.
pub const FORMATS: [&str; 6] = ["raw", "qcow2", "vmdk", "vhdx", "vdi", "qed"];

/// Errors of a restore into another format.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The converted image does not read back as the snapshot.
    #[error("{path} read back through qemu-nbd has digest {got}, the snapshot {expected}: not published")]
    Mismatch {
        path: PathBuf,
        expected: String,
        got: String,
    },
    /// Not a format offered.
    #[error("unknown image format {0:?} (one of: raw, qcow2, vmdk, vhdx, vdi, qed)")]
    Format(String),
}

impl From<SourceError> for ConvertError {
    fn from(e: SourceError) -> Self {
        ConvertError::Io(IoError::Nbd(e))
    }
}

fn digest_of(input: Input) -> Result<Option<Digest>, IoError> {
    Ok(ChunkReader::spawn(input, ReaderOptions::default())
        .finish()?
        .digest)
}

/// Restores `snap` to `out` as an image of `format`.
///
/// # Errors
/// Repository and I/O failures, qemu-img or qemu-nbd missing or failing,
/// an image that does not read back as the snapshot.
pub fn restore_as(
    repo: &Repository,
    snap: &Snapshot,
    out: &Path,
    format: &str,
    options: &RestoreOptions,
) -> Result<RestoreSummary, ConvertError> {
    if !FORMATS.contains(&format) {
        return Err(ConvertError::Format(format.to_string()));
    }
    let started = std::time::Instant::now();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = out
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    let temp = |suffix: &str| -> Result<tempfile::TempPath, IoError> {
        let path = tempfile::Builder::new()
            .prefix(&format!(".{stem}."))
            .suffix(suffix)
            .tempfile_in(&parent)
            .map_err(|source| IoError::Op {
                op: "create a temporary file",
                path: parent.clone(),
                source,
            })?
            .into_temp_path();
        crate::io::cleanup::register(&path);
        Ok(path)
    };
    let raw = temp(".raw")?;
    let converted = temp(&format!(".{format}"))?;
    let result = (|| {
        let mut summary = restore(repo, snap, Output::create(&raw)?, options)?;
        let mut cmd = std::process::Command::new("qemu-img");
        cmd.args(["convert", "-q", "-f", "raw", "-O", format, "--"])
            .arg(&*raw)
            .arg(&*converted)
            .stdin(std::process::Stdio::null());
        super::qemu::unblock_signals(&mut cmd);
        let tool = cmd.output().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                QemuError::Missing { tool: "qemu-img" }
            } else {
                QemuError::Spawn {
                    tool: "qemu-img",
                    source,
                }
            }
        })?;
        if !tool.status.success() {
            return Err(QemuError::Failed {
                tool: "qemu-img",
                path: out.to_path_buf(),
                message: String::from_utf8_lossy(&tool.stderr).trim().to_string(),
            }
            .into());
        }
        // What the snapshot says the image is; the raw file (checked chunk
        // by chunk) when it records no image digest.
        let expected = if snap.meta.digest.is_empty() {
            digest_of(Input::open(&raw, &InputOptions::default())?)?.map(|d| d.to_hex())
        } else {
            Some(snap.meta.digest.clone())
        };
        let back = if format == "raw" {
            Input::open(&converted, &InputOptions::default())?
        } else {
            Input::image(&converted, format, &NbdSourceOptions::default())?
        };
        let got = digest_of(back)?.map(|d| d.to_hex());
        if got != expected {
            return Err(ConvertError::Mismatch {
                path: out.to_path_buf(),
                expected: expected.unwrap_or_default(),
                got: got.unwrap_or_default(),
            });
        }
        publish(&converted, out)?;
        summary.digest_checked = true;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    })();
    crate::io::cleanup::unregister(&raw);
    crate::io::cleanup::unregister(&converted);
    result
}

/// fsyncs `from`, renames it to `to`, fsyncs the directory.
fn publish(from: &Path, to: &Path) -> Result<(), IoError> {
    let op = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IoError::Op { op, path, source }
    };
    std::fs::File::open(from)
        .and_then(|f| f.sync_all())
        .map_err(op("fsync", from))?;
    std::fs::rename(from, to).map_err(op("rename", to))?;
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(op("fsync", dir))
}
