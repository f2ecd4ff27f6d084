//! `diskdelta._diskdelta`: the native half of the Python package. It calls
//! the library crate directly (never the binary), releases the GIL while it
//! works, and returns plain JSON-shaped results that `diskdelta/__init__.py`
//! turns into dataclasses with the same fields as the CLI's `--json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diskdelta::delta::{inspect_stream, DeltaError};
use diskdelta::io::{Input, InputOptions, IoError, Output, OutputKind};
use diskdelta::repo::backup::{BackupOptions, BackupSession};
use diskdelta::repo::maintenance::{self, ForgetSelection, KeepPolicy};
use diskdelta::repo::restore::{self, RestoreOptions};
use diskdelta::repo::{location, lock, InitOptions, Password, RepoError, Repository};
use diskdelta::{
    apply_in_place as lib_apply_in_place, apply_stream, create_delta, ApplyOptions, ApplySummary,
    BlockSize, CheckBase, Compression, DeltaKind, DiffOptions,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use serde_json::json;
use zeroize::Zeroizing;

create_exception!(
    _diskdelta,
    DiskdeltaError,
    PyException,
    "Any diskdelta failure."
);
create_exception!(
    _diskdelta,
    DeltaCorrupt,
    DiskdeltaError,
    "The delta is damaged, truncated or not a delta."
);
create_exception!(
    _diskdelta,
    BaseMismatch,
    DiskdeltaError,
    "The base (or in-place target) is not the image the delta was made from."
);
create_exception!(
    _diskdelta,
    ResultMismatch,
    DeltaCorrupt,
    "The result does not match the NEW digest the delta records."
);
create_exception!(
    _diskdelta,
    RepositoryError,
    DiskdeltaError,
    "The repository cannot be opened, read or changed as asked."
);
create_exception!(
    _diskdelta,
    RepositoryDamaged,
    RepositoryError,
    "Repository data is missing, damaged or was tampered with."
);
create_exception!(
    _diskdelta,
    IoFailure,
    DiskdeltaError,
    "Reading or writing an image, a delta or a device failed."
);

/// The error and its causes on one line, as the CLI prints them.
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn delta_error(err: DeltaError) -> PyErr {
    let text = one_line(&err);
    match err {
        DeltaError::BaseMismatch { .. } => BaseMismatch::new_err(text),
        DeltaError::ResultMismatch { .. } => ResultMismatch::new_err(text),
        DeltaError::Io(_) | DeltaError::Write(_) => IoFailure::new_err(text),
        e if e.is_integrity() => DeltaCorrupt::new_err(text),
        _ => DiskdeltaError::new_err(text),
    }
}

fn io_error(err: IoError) -> PyErr {
    IoFailure::new_err(one_line(&err))
}

fn open(path: &Path) -> PyResult<Input> {
    Input::open(path, &InputOptions::default()).map_err(io_error)
}

/// Runs `work` on its own thread with the GIL released; every 100 ms the
/// calling thread reports `progress` to `callback(done, total)`.
fn run_detached<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    total: Option<u64>,
    progress: Arc<AtomicU64>,
    work: impl FnOnce() -> Result<T, PyErr> + Send,
) -> PyResult<T> {
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        std::thread::scope(|scope| {
            let worker = scope.spawn(work);
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(100));
                if let Some(cb) = &callback {
                    let done = progress.load(Ordering::Relaxed);
                    Python::attach(|py| {
                        if callback_error.is_none() {
                            if let Err(e) = cb.call1(py, (done, total)) {
                                callback_error = Some(e);
                            }
                        }
                    });
                }
            }
            worker.join()
        })
    });
    let value = match result {
        Ok(r) => r?,
        Err(_) => {
            return Err(DiskdeltaError::new_err(
                "internal error: worker thread panicked",
            ))
        }
    };
    if let Some(cb) = &callback {
        let done = progress.load(Ordering::Relaxed);
        cb.call1(py, (done, total))?;
    }
    match callback_error {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

fn parse_compression(text: &str) -> PyResult<Compression> {
    match text.split_once(':') {
        None if text == "none" => Ok(Compression::None),
        None if text == "zstd" => Ok(Compression::DEFAULT),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
            _ => Err(PyValueError::new_err(format!(
                "invalid zstd level {level:?} (1-19)"
            ))),
        },
        _ => Err(PyValueError::new_err(format!(
            "invalid compress {text:?} (expected none, zstd or zstd:LEVEL)"
        ))),
    }
}

/// Writes the delta of `new` against `old` to `out` (a file is written
/// under a temporary name, read back and verified, then renamed); returns
/// the `diff --json` fields as JSON.
#[pyfunction]
#[pyo3(signature = (old, new, out, block_size=4096, compress="zstd:3", threads=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn diff(
    py: Python<'_>,
    old: PathBuf,
    new: PathBuf,
    out: PathBuf,
    block_size: u64,
    compress: &str,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let block_size =
        BlockSize::new(block_size).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let compression = parse_compression(compress)?;
    let old = open(&old)?;
    let new = open(&new)?;
    let total = new.size();
    let counter = Arc::new(AtomicU64::new(0));
    let options = DiffOptions {
        block_size,
        compression,
        threads: threads.unwrap_or_else(|| DiffOptions::default().threads),
        progress: Some(counter.clone()),
        ..DiffOptions::default()
    };
    run_detached(py, progress, total, counter, move || {
        let started = std::time::Instant::now();
        let mut output = Output::create(&out).map_err(io_error)?;
        output.set_sparse(false);
        let (mut output, summary) =
            create_delta(old, new, output, &options).map_err(delta_error)?;
        output.flush().map_err(io_error)?;
        let delta_bytes = output.position();
        if output.kind() == OutputKind::File {
            let back = output.read_back().map_err(io_error)?;
            inspect_stream(&out, Box::new(back), None, None).map_err(delta_error)?;
        }
        output.commit().map_err(io_error)?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(json!({
            "format": "diskdelta",
            "old_size": summary.old_size,
            "new_size": summary.new_size,
            "extents": summary.records,
            "changed_bytes": summary.changed_bytes,
            "delta_bytes": delta_bytes,
            "seconds": seconds,
            "old_digest": summary.old_digest.map(|d| d.to_hex()),
            "new_digest": summary.new_digest.to_hex(),
            "bytes_read": summary.bytes_read,
            "change_tracked": summary.change_tracked,
        })
        .to_string())
    })
}

fn apply_json(mode: &str, s: &ApplySummary, seconds: f64) -> String {
    json!({
        "mode": mode,
        "format": s.format.name(),
        "new_size": s.new_size,
        "extents": s.extents,
        "changed_bytes": s.changed_bytes,
        "check_base": s.check_base.name(),
        "verified": s.verified,
        "new_digest": s.new_digest.map(|d| d.to_hex()),
        "seconds": seconds,
        "notes": s.notes,
    })
    .to_string()
}

/// Rebuilds NEW from `base` and `delta` into `out` (published only after
/// its digest matched); returns the `apply --json` fields as JSON.
#[pyfunction]
#[pyo3(signature = (delta, base, out, progress=None, format=None, block_size=None))]
fn apply(
    py: Python<'_>,
    delta: PathBuf,
    base: PathBuf,
    out: PathBuf,
    progress: Option<Py<PyAny>>,
    format: Option<&str>,
    block_size: Option<u32>,
) -> PyResult<String> {
    let format = match format {
        None => None,
        Some(name) => Some(DeltaKind::from_name(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown delta format {name:?} (diskdelta, diff-dd-v1, diff-dd-v2, diff-dd-py)"
            ))
        })?),
    };
    let delta = open(&delta)?;
    let base = open(&base)?;
    let total = base.size();
    let counter = Arc::new(AtomicU64::new(0));
    let options = ApplyOptions {
        format,
        block_size,
        verify: true,
        progress: Some(counter.clone()),
        ..ApplyOptions::default()
    };
    run_detached(py, progress, total, counter, move || {
        let started = std::time::Instant::now();
        let output = Output::create(&out).map_err(io_error)?;
        let summary = apply_stream(delta, base, output, &options).map_err(delta_error)?;
        Ok(apply_json(
            "stream",
            &summary,
            started.elapsed().as_secs_f64(),
        ))
    })
}

/// Changes `target` (holding the delta's OLD) into NEW, writing only the
/// changed extents after every check passed.
#[pyfunction]
#[pyo3(signature = (delta, target, check_base=None, verify=false, progress=None))]
fn apply_in_place(
    py: Python<'_>,
    delta: PathBuf,
    target: PathBuf,
    check_base: Option<&str>,
    verify: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let check_base = match check_base {
        None => None,
        Some("none") => Some(CheckBase::None),
        Some("sample") => Some(CheckBase::Sample),
        Some("full") => Some(CheckBase::Full),
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "invalid check_base {other:?} (expected none, sample or full)"
            )))
        }
    };
    let delta = open(&delta)?;
    let counter = Arc::new(AtomicU64::new(0));
    let options = ApplyOptions {
        check_base,
        verify,
        progress: Some(counter.clone()),
        ..ApplyOptions::default()
    };
    run_detached(py, progress, None, counter, move || {
        let started = std::time::Instant::now();
        let summary = lib_apply_in_place(delta, &target, &options).map_err(delta_error)?;
        Ok(apply_json(
            "in-place",
            &summary,
            started.elapsed().as_secs_f64(),
        ))
    })
}

/// What a delta holds (every record verified); the `info --json` fields.
#[pyfunction]
fn info(py: Python<'_>, delta: PathBuf) -> PyResult<String> {
    let input = open(&delta)?;
    py.detach(move || {
        let info = diskdelta::inspect(input, None, None).map_err(delta_error)?;
        serde_json::to_string(&info).map_err(|e| DiskdeltaError::new_err(e.to_string()))
    })
}

fn repo_error(err: RepoError) -> PyErr {
    let text = one_line(&err);
    if err.is_integrity() {
        RepositoryDamaged::new_err(text)
    } else {
        RepositoryError::new_err(text)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| DiskdeltaError::new_err(e.to_string()))
}

/// A repository: a local directory, `s3:…` or `ssh://…`, as `-r` takes it.
#[pyclass(name = "Repository", module = "diskdelta._diskdelta", frozen)]
struct PyRepository {
    repo: Arc<Repository>,
    location: String,
}

#[pymethods]
impl PyRepository {
    /// Opens the repository at `location` (with `create`, makes one there).
    /// The password of an encrypted repository is `password`, else
    /// `DISKDELTA_PASSWORD`.
    #[new]
    #[pyo3(signature = (location, password=None, create=false, encrypt=true, chunk_size=None))]
    fn new(
        py: Python<'_>,
        location: PathBuf,
        password: Option<String>,
        create: bool,
        encrypt: bool,
        chunk_size: Option<u32>,
    ) -> PyResult<Self> {
        let parsed = location::parse(location.as_os_str())
            .map_err(|e| RepositoryError::new_err(one_line(&e)))?;
        let shown = location.display().to_string();
        py.detach(|| {
            let opened = location::open_backend(&parsed)
                .map_err(|e| RepositoryError::new_err(one_line(&e)))?;
            let where_ = shown.clone();
            let source = move |_new: bool| -> Result<Password, RepoError> {
                match password
                    .clone()
                    .or_else(|| std::env::var("DISKDELTA_PASSWORD").ok())
                {
                    Some(p) => Ok(Zeroizing::new(p)),
                    None => Err(RepoError::PasswordNeeded(where_.clone())),
                }
            };
            let repo = if create {
                let mut options = InitOptions {
                    encrypt,
                    ..InitOptions::default()
                };
                if let Some(c) = chunk_size {
                    options.chunk_size = c;
                }
                Repository::init_with(opened.backend, &options, &source)
            } else {
                Repository::open_with(opened.backend, &source)
            }
            .map_err(repo_error)?;
            Ok(PyRepository {
                repo: Arc::new(repo),
                location: shown,
            })
        })
    }

    /// Where the repository is.
    #[getter]
    fn location(&self) -> String {
        self.location.clone()
    }

    /// Backs up `source` (a file or block device) as a new snapshot of
    /// `name` (default: `HOST-FILE`), incremental against the name's
    /// latest snapshot; the `backup --json` fields.
    #[pyo3(signature = (source, name=None, tags=Vec::new(), progress=None))]
    fn backup(
        &self,
        py: Python<'_>,
        source: PathBuf,
        name: Option<String>,
        tags: Vec<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let input = open(&source)?;
        let total = input.size();
        let counter = Arc::new(AtomicU64::new(0));
        let host = lock::hostname();
        let name = name.unwrap_or_else(|| {
            let base = source
                .file_name()
                .map_or_else(|| "stdin".into(), |n| n.to_string_lossy().into_owned());
            format!("{host}-{base}")
        });
        let options = BackupOptions {
            name,
            source: source.display().to_string(),
            host,
            tags,
            progress: Some(counter.clone()),
            ..BackupOptions::default()
        };
        let repo = self.repo.clone();
        run_detached(py, progress, total, counter, move || {
            let session = BackupSession::start(&repo, options).map_err(repo_error)?;
            let summary = session.run_local(input).map_err(repo_error)?;
            to_json(&summary)
        })
    }

    /// The snapshots, oldest first: id, name, time, size, digest, tags...
    fn snapshots(&self, py: Python<'_>) -> PyResult<String> {
        let repo = self.repo.clone();
        py.detach(move || {
            let snaps = repo.snapshots().map_err(repo_error)?;
            let list: Vec<serde_json::Value> = snaps
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id.to_hex(),
                        "name": s.meta.name,
                        "time": s.meta.time,
                        "size": s.meta.size,
                        "digest": s.meta.digest,
                        "source": s.meta.source,
                        "host": s.meta.host,
                        "parent": s.meta.parent,
                        "tags": s.meta.tags,
                        "chunk_size": s.meta.chunk_size,
                    })
                })
                .collect();
            to_json(&list)
        })
    }

    /// Writes `snapshot` (an id, a unique prefix or a name: its latest) to
    /// `out`, every chunk verified, a file published only after the image
    /// digest matched; the `restore --json` fields.
    #[pyo3(signature = (snapshot, out, progress=None))]
    fn restore(
        &self,
        py: Python<'_>,
        snapshot: String,
        out: PathBuf,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let repo = self.repo.clone();
        let snap = py.detach(|| repo.resolve(&snapshot)).map_err(repo_error)?;
        let total = Some(snap.meta.size);
        let counter = Arc::new(AtomicU64::new(0));
        let options = RestoreOptions {
            threads: 0,
            progress: Some(counter.clone()),
        };
        run_detached(py, progress, total, counter, move || {
            let output = Output::create(&out).map_err(io_error)?;
            let summary = restore::restore(&repo, &snap, output, &options).map_err(repo_error)?;
            to_json(&summary)
        })
    }

    /// Checks the repository's structure, with `read_data` every chunk too;
    /// the `verify --json` report. Problems are in the report, not raised.
    #[pyo3(signature = (read_data=false))]
    fn verify(&self, py: Python<'_>, read_data: bool) -> PyResult<String> {
        let repo = self.repo.clone();
        py.detach(move || {
            let report = maintenance::verify(&repo, read_data, None).map_err(repo_error)?;
            to_json(&report)
        })
    }

    /// Removes snapshots: those named in `snapshots`, or those a keep
    /// policy does not keep (for `name` only, when given); `prune` then
    /// removes data no snapshot uses. The `forget --json` report.
    #[pyo3(signature = (snapshots=Vec::new(), keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0, name=None, prune=false, dry_run=false))]
    #[allow(clippy::too_many_arguments)]
    fn forget(
        &self,
        py: Python<'_>,
        snapshots: Vec<String>,
        keep_last: usize,
        keep_daily: usize,
        keep_weekly: usize,
        keep_monthly: usize,
        name: Option<String>,
        prune: bool,
        dry_run: bool,
    ) -> PyResult<String> {
        let policy = KeepPolicy {
            last: keep_last,
            daily: keep_daily,
            weekly: keep_weekly,
            monthly: keep_monthly,
        };
        let selection = match (snapshots.is_empty(), policy.is_empty()) {
            (false, true) => ForgetSelection::Snapshots(snapshots),
            (true, false) => ForgetSelection::Policy { policy, name },
            _ => {
                return Err(PyValueError::new_err(
                    "give either snapshots or a keep policy (keep_last, keep_daily, ...)",
                ))
            }
        };
        let repo = self.repo.clone();
        py.detach(move || {
            let report =
                maintenance::forget(&repo, &selection, prune, dry_run).map_err(repo_error)?;
            to_json(&report)
        })
    }
}

#[pymodule]
fn _diskdelta(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RepositoryError", py.get_type::<RepositoryError>())?;
    m.add("RepositoryDamaged", py.get_type::<RepositoryDamaged>())?;
    m.add_class::<PyRepository>()?;
    m.add("DiskdeltaError", py.get_type::<DiskdeltaError>())?;
    m.add("DeltaCorrupt", py.get_type::<DeltaCorrupt>())?;
    m.add("BaseMismatch", py.get_type::<BaseMismatch>())?;
    m.add("ResultMismatch", py.get_type::<ResultMismatch>())?;
    m.add("IoFailure", py.get_type::<IoFailure>())?;
    m.add_function(wrap_pyfunction!(diff, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_function(wrap_pyfunction!(apply_in_place, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    Ok(())
}
