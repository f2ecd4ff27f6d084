//! diskdelta: block-level backup of disk images and block devices.
//!
//! The library's modules follow the data:
//!
//! ```text
//!   sources (io)          change detection (change)       sinks
//!   ─────────────         ─────────────────────────       ─────────────────────────
//!   file, block device,   byte comparison of OLD/NEW  ──> delta file (delta, format::delta)
//!   pipe, stdin  ──────>  (later: hash trees, thin    ──> (later: remote target, repository)
//!   read ahead + digest    metadata, range lists)
//! ```
//!
//! - [`io`]: opening sources and targets, read-ahead, sparse and atomic output.
//! - [`change`]: change detection as coalesced runs.
//! - [`digest`]: image and block digests (BLAKE3).
//! - [`format`]: byte formats, each with a spec under `docs/formats/`.
//! - [`delta`]: creating, applying and inspecting deltas.
//! - [`units`]: sizes with K/M/G suffixes and the block-size newtype.
//!
//! See `docs/ARCHITECTURE.md` for the threads and channels of each pipeline.

pub mod change;
pub mod delta;
pub mod digest;
pub mod format;
pub mod id;
pub mod io;
pub mod pipeline;
pub mod repo;
pub mod sync;
pub mod units;

pub use delta::{
    apply_in_place, apply_stream, create_delta, inspect, ApplyOptions, ApplySummary, CheckBase,
    DeltaError, DeltaInfo, DeltaKind, DiffOptions, DiffSummary, OutputFormat,
};
pub use digest::{Digest, ImageHasher};
pub use format::delta::Compression;
pub use units::{parse_size, BlockSize};
