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
use diskdelta::{
    apply_in_place as lib_apply_in_place, apply_stream, create_delta, ApplyOptions, ApplySummary,
    BlockSize, CheckBase, Compression, DiffOptions,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use serde_json::json;

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
#[pyo3(signature = (delta, base, out, progress=None))]
fn apply(
    py: Python<'_>,
    delta: PathBuf,
    base: PathBuf,
    out: PathBuf,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let delta = open(&delta)?;
    let base = open(&base)?;
    let total = base.size();
    let counter = Arc::new(AtomicU64::new(0));
    let options = ApplyOptions {
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

#[pymodule]
fn _diskdelta(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
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
