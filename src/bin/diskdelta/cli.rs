//! Raw command-line arguments (clap). Converted once into the library's
//! validated options by the subcommand modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Block-level backup of disk images and block devices.
#[derive(Debug, Parser)]
#[command(name = "diskdelta", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the delta of NEW against OLD (files, block devices, pipes, `-`).
    Diff(DiffArgs),
    /// Rebuild NEW from OLD and a delta, or update a target in place.
    Apply(ApplyArgs),
    /// Describe a delta file (every record is verified).
    Info(InfoArgs),
    /// Print the image digest of files or devices (as recorded in deltas).
    Hash(HashArgs),
    /// Make DST byte-identical to SRC, moving only differing blocks
    /// (each is a local path or [user@]host:path reached over ssh).
    Sync(SyncArgs),
    /// Serve one end of a sync on stdin/stdout (started by `sync` over ssh).
    #[command(hide = true)]
    Serve,
}

/// Flags every subcommand takes.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// No progress bar and no summary line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout (on stderr when stdout carries data).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The base image (full older copy); `-` for stdin.
    pub old: PathBuf,
    /// The changed image; `-` for stdin.
    pub new: PathBuf,
    /// Where to write the delta (default: stdout).
    #[arg(short, long, value_name = "DELTA")]
    pub output: Option<PathBuf>,
    /// Comparison granularity, a power of two from 512 to 64M.
    #[arg(short, long, value_name = "SIZE", default_value = "4K")]
    pub block_size: String,
    /// Payload compression: none, zstd or zstd:LEVEL (1-19).
    #[arg(long, value_name = "METHOD", default_value = "zstd:3")]
    pub compress: String,
    /// Output format: diskdelta, or diff-dd-v2 for the C++ diff-dd tool.
    #[arg(long, value_name = "FORMAT", default_value = "diskdelta")]
    pub format: String,
    /// Compression threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Read inputs with O_DIRECT, bypassing the page cache.
    #[arg(long)]
    pub direct: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The delta; `-` for stdin.
    pub delta: PathBuf,
    /// Stream mode: the base image OLD; `-` for stdin.
    #[arg(
        long,
        value_name = "OLD",
        conflicts_with = "in_place",
        required_unless_present = "in_place"
    )]
    pub base: Option<PathBuf>,
    /// Stream mode: where to write NEW (default: stdout).
    #[arg(short, long, value_name = "NEW", conflicts_with = "in_place")]
    pub output: Option<PathBuf>,
    /// In-place mode: TARGET holds OLD and receives only the changed extents.
    #[arg(long, value_name = "TARGET")]
    pub in_place: Option<PathBuf>,
    /// In-place base check before writing: none, sample or full
    /// (default: sample for diskdelta deltas, none for formats without hashes).
    #[arg(long, value_name = "MODE")]
    pub check_base: Option<String>,
    /// In-place mode: re-read TARGET afterwards and compare with NEW's digest.
    #[arg(long)]
    pub verify: bool,
    /// Delta format: diskdelta, diff-dd-v1, diff-dd-v2, diff-dd-py (default: detect).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Record size of diff-dd-v1 (default 512) and diff-dd-py (default 8192).
    #[arg(short, long, value_name = "SIZE")]
    pub block_size: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The delta; `-` for stdin.
    pub delta: PathBuf,
    /// Delta format (default: detect).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Record size of diff-dd-v1 and diff-dd-py.
    #[arg(short, long, value_name = "SIZE")]
    pub block_size: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Files, block devices or `-`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a file or block device, local or [user@]host:path.
    pub src: String,
    /// Target: a file (created if missing) or block device, local or
    /// [user@]host:path; an existing directory gets SRC's file name.
    pub dst: String,
    /// ssh command and flags for remote ends.
    #[arg(
        short = 'e',
        long = "rsh",
        value_name = "CMD",
        env = "DISKDELTA_RSH",
        default_value = "ssh"
    )]
    pub rsh: String,
    /// The diskdelta binary on remote hosts.
    #[arg(long, value_name = "PATH", default_value = "diskdelta")]
    pub remote_path: String,
    /// Comparison block size (power of two, 512 to 1M); see docs/formats/wire.md
    /// for how the default was chosen.
    #[arg(short, long, value_name = "SIZE", default_value = "16K")]
    pub block_size: String,
    /// Report what would change; write nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}
