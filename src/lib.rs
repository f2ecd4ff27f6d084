//! diskdelta: block-level backup of disk images and block devices.
//!
//! The library's modules follow the data:
//!
//! ```text
//!   sources (io)          change detection (change)       sinks
//!   ─────────────         ─────────────────────────       ─────────────────────────
//!   file, block device,   byte comparison of OLD/NEW  ──> delta file (delta, format::delta)
//!   pipe, stdin, remote   hash trees, thin metadata,  ──> remote target (sync)
//!   read ahead + digest   range lists                 ──> repository (repo)
//! ```
//!
//! - [`io`]: opening sources and targets, read-ahead, sparse and atomic output.
//! - [`change`]: change detection as coalesced runs.
//! - [`digest`]: image and block digests (BLAKE3).
//! - [`format`]: byte formats, each with a spec under `docs/formats/`.
//! - [`delta`]: creating, applying and inspecting deltas.
//! - [`sync`]: keeping a copy up to date over ssh.
//! - [`repo`]: the deduplicated repository and its backends.
//! - [`nbd`]: the NBD protocol: export snapshots, read NBD sources.
//! - [`remote`]: the transport both use (ssh, frames, messages, serve).
//! - [`service`]: what `diskdelta serve` offers, routed by first request.
//! - [`units`]: sizes with K/M/G suffixes and the block-size newtype.
//!
//! See `docs/ARCHITECTURE.md` for the threads and channels of each pipeline.

pub mod change;
pub mod delta;
pub mod digest;
pub mod format;
pub mod id;
pub mod io;
pub mod mount;
pub mod nbd;
pub mod pipeline;
pub mod remote;
pub mod repo;
pub mod service;
pub mod sync;
pub mod units;

pub use delta::{
    apply_chain_in_place, apply_chain_stream, apply_in_place, apply_stream, create_delta, inspect,
    merge, ApplyOptions, ApplySummary, CheckBase, DeltaError, DeltaInfo, DeltaKind, DiffOptions,
    DiffSummary, MergeOptions, OutputFormat,
};
pub use digest::{Digest, ImageHasher};
pub use format::delta::Compression;
pub use units::{parse_size, BlockSize};
