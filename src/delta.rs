//! Creating and applying delta files.
//!
//! - [`create`]: `diff`: OLD and NEW read ahead on two threads (each also
//!   computing its image digest), compared block by block on a third,
//!   changed runs compressed by a worker pool, one writer.
//! - [`apply`]: stream mode (OLD + delta -> NEW, sequential, pipes allowed)
//!   and in-place mode (TARGET holding OLD receives only changed extents,
//!   after every check passed).
//! - [`chain`]: series of deltas: applied in one pass over the base,
//!   merged into one delta, described by `info`.
//! - [`signature`]: block hashes of an image, and deltas made against
//!   them where the image itself is not.
//! - [`source`]: reads any supported delta format as one stream of extents.
//! - [`inspect`]: the `info` command.
//! - `journal`: the redo journal that lets an in-place apply of records
//!   compressed against OLD resume after it was cut short.

pub mod apply;
pub mod chain;
pub mod create;
pub mod from_snapshot;
pub mod inspect;
mod journal;
mod moves;
pub mod signature;
pub mod source;
pub mod tracked;

use std::path::PathBuf;

use crate::digest::Digest;
use crate::format::delta::DeltaFormatError;
use crate::format::diffdd::DiffDdError;
use crate::format::diffdd_py::PyDiffDdError;
use crate::io::IoError;

pub use apply::{apply_in_place, apply_stream, ApplyOptions, ApplySummary, CheckBase};
pub use chain::{apply_chain_in_place, apply_chain_stream, merge, MergeOptions};
pub use create::{create_delta, DiffOptions, DiffSummary, OutputFormat};
pub use from_snapshot::create_delta_from_snapshot;
pub use inspect::{inspect, inspect_stream, DeltaInfo};
pub use signature::{
    create_delta_from_signature, create_signature, SignatureOptions, SignatureSummary,
};
pub use source::{DeltaKind, DeltaSource};
pub use tracked::create_tracked_delta;

/// Errors of creating, applying or inspecting deltas.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Opening, reading or writing an image or delta failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The native delta is malformed.
    #[error(transparent)]
    Format(#[from] DeltaFormatError),
    /// A C++ diff-dd file is malformed.
    #[error(transparent)]
    DiffDd(#[from] DiffDdError),
    /// A Python diff-dd file is malformed.
    #[error(transparent)]
    PyDiffDd(#[from] PyDiffDdError),
    /// The delta's format could not be recognized.
    #[error("{path}: unknown delta format (not a diskdelta or diff-dd v2 file); for other formats pass --format")]
    UnknownFormat {
        /// The delta.
        path: PathBuf,
    },
    /// The base is not the OLD the delta was made from.
    #[error("base {path} does not match the delta: {detail}")]
    BaseMismatch {
        /// The base or target.
        path: PathBuf,
        /// What differed.
        detail: String,
    },
    /// The result does not match the NEW digest recorded in the delta.
    #[error(
        "result {path} does not match the delta's NEW digest (expected {expected}, got {actual})"
    )]
    ResultMismatch {
        /// The output.
        path: PathBuf,
        /// Recorded digest.
        expected: Digest,
        /// Computed digest.
        actual: Digest,
    },
    /// A size does not agree with the delta.
    #[error("{path}: {detail}")]
    Size {
        /// The object.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A base check the format cannot support.
    #[error("--check-base {mode} is impossible: {reason}")]
    CheckUnsupported {
        /// The requested mode.
        mode: &'static str,
        /// Why.
        reason: String,
    },
    /// Writing the delta file failed.
    #[error("writing the delta failed")]
    Write(#[source] std::io::Error),
    /// A repository snapshot cannot serve as OLD.
    #[error("snapshot {snapshot} cannot serve as OLD: {detail}")]
    BaseUnusable {
        /// Its id.
        snapshot: String,
        /// Why.
        detail: String,
    },
    /// The change tracker failed or reported nonsense.
    #[error(transparent)]
    Tracking(#[from] crate::change::tracked::TrackError),
    /// A series of deltas does not connect, or cannot be merged as asked.
    #[error("{detail}")]
    Chain {
        /// What is wrong, naming the deltas.
        detail: String,
    },
    /// A signature is damaged, truncated or not a signature.
    #[error(transparent)]
    Signature(#[from] crate::format::signature::SignatureError),
    /// The signature's block size is not the one asked for.
    #[error("the signature has {signature}-byte blocks, not the {asked}-byte blocks asked for (make it with --block-size {asked}, or drop --block-size)")]
    SignatureBlockSize {
        /// Block size of the signature.
        signature: u32,
        /// Block size asked for.
        asked: u32,
    },
    /// A worker thread panicked (a bug).
    #[error("internal error: {0} thread panicked")]
    Panic(&'static str),
}

impl DeltaError {
    /// True for errors that mean "data is not what it should be" (corrupt
    /// delta, wrong base, result mismatch), as opposed to I/O or usage.
    pub fn is_integrity(&self) -> bool {
        match self {
            DeltaError::Format(e) => !matches!(e, DeltaFormatError::Io { .. }),
            DeltaError::Signature(e) => {
                !matches!(e, crate::format::signature::SignatureError::Io { .. })
            }
            DeltaError::DiffDd(_)
            | DeltaError::PyDiffDd(_)
            | DeltaError::BaseMismatch { .. }
            | DeltaError::ResultMismatch { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
