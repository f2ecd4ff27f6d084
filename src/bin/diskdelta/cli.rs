//! Raw command-line arguments (clap). Converted once into the library's
//! validated options by the subcommand modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Block-level backup of disk images and block devices.
#[derive(Debug, Parser)]
#[command(
    name = "diskdelta",
    version,
    long_version = crate::version::long(),
    about,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the delta of NEW against OLD (files, block devices, pipes, `-`).
    #[command(after_help = crate::examples::DIFF)]
    Diff(DiffArgs),
    /// Rebuild NEW from OLD and a delta, or update a target in place.
    #[command(after_help = crate::examples::APPLY)]
    Apply(ApplyArgs),
    /// Describe a delta file (every record is verified).
    #[command(after_help = crate::examples::INFO)]
    Info(InfoArgs),
    /// Merge a series of deltas into one delta that makes the same image.
    #[command(after_help = crate::examples::MERGE)]
    Merge(MergeArgs),
    /// Write block hashes of an image, for `diff --signature` where the
    /// image itself is not.
    #[command(after_help = crate::examples::SIGNATURE)]
    Signature(SignatureArgs),
    /// Print the image digest of files or devices (as recorded in deltas).
    #[command(after_help = crate::examples::HASH)]
    Hash(HashArgs),
    /// Make DST byte-identical to SRC, moving only differing blocks
    /// (each is a local path or [user@]host:path reached over ssh).
    #[command(after_help = crate::examples::SYNC)]
    Sync(SyncArgs),
    /// Create a repository (backup creates the default one on first use).
    #[command(after_help = crate::examples::INIT)]
    Init(InitArgs),
    /// Back up images into the repository (local paths, `-`, or
    /// [user@]host:/path read over ssh).
    #[command(after_help = crate::examples::BACKUP)]
    Backup(BackupArgs),
    /// Back up an existing local image under a name.
    #[command(after_help = crate::examples::IMPORT)]
    Import(ImportArgs),
    /// Write a snapshot to a file, a block device or stdout.
    #[command(after_help = crate::examples::RESTORE)]
    Restore(RestoreArgs),
    /// Serve snapshots as NBD exports (read-only, or writable through a
    /// copy-on-write overlay) without restoring them.
    #[command(after_help = crate::examples::NBD)]
    Nbd(NbdArgs),
    /// Mount snapshots as a read-only tree of image files (FUSE):
    /// DIR/<name>/<time>.img, for `mount -o ro,loop` or `losetup -r -P`.
    #[command(after_help = crate::examples::MOUNT)]
    Mount(MountArgs),
    /// List snapshots.
    #[command(after_help = crate::examples::SNAPSHOTS)]
    Snapshots(SnapshotsArgs),
    /// Show repository size, chunk and pack counts, dedup ratio.
    #[command(after_help = crate::examples::STATUS)]
    Status(StatusArgs),
    /// Check the repository's structure, or with --read-data every chunk.
    #[command(after_help = crate::examples::VERIFY)]
    Verify(VerifyArgs),
    /// Remove data no snapshot refers to.
    #[command(after_help = crate::examples::GC)]
    Gc(GcArgs),
    /// Remove snapshots, by id or by a keep policy.
    #[command(after_help = crate::examples::FORGET)]
    Forget(ForgetArgs),
    /// Remove stale locks (or all locks with --all).
    #[command(after_help = crate::examples::UNLOCK)]
    Unlock(UnlockArgs),
    /// Copy snapshots from another repository, sending only missing chunks.
    #[command(after_help = crate::examples::COPY)]
    Copy(CopyArgs),
    /// Manage the passwords (key files) of an encrypted repository.
    #[command(subcommand, after_help = crate::examples::KEY)]
    Key(KeyCommand),
    /// Turn a diskdump 0.1.5 store into snapshots.
    #[command(after_help = crate::examples::IMPORT_DISKDUMP)]
    ImportDiskdump(ImportDiskdumpArgs),
    /// Serve a sync end, a backup source or a repository on stdin/stdout
    /// (started over ssh by `sync`, `backup HOST:PATH` and `-r ssh://`).
    ///
    /// For a client that may only add backups, put this in its
    /// `authorized_keys` line:
    /// command="diskdelta serve --repo /srv/repo --append-only",restrict ssh-ed25519 AAAA...
    #[command(after_help = crate::examples::SERVE)]
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = crate::examples::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Write the man pages (diskdelta.1 and one per subcommand) into a
    /// directory.
    #[command(hide = true, after_help = crate::examples::MAN)]
    Man(ManArgs),
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve only this repository (a client asking for another is refused).
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Refuse every delete, forget, gc, lock removal and overwrite: the
    /// client can add and read backups, not destroy them.
    #[arg(long)]
    pub append_only: bool,
    /// Open repositories only under this path (repeatable).
    #[arg(long, value_name = "PATH")]
    pub restrict_to_path: Vec<PathBuf>,
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
    /// OLD NEW: the base image (full older copy) and the changed image, `-`
    /// for stdin. With change tracking (--changed-ranges, --thin-*, --lvm)
    /// or --from-snapshot only NEW is given.
    #[arg(required = true, num_args = 1..=2, value_name = "OLD NEW")]
    pub images: Vec<PathBuf>,
    /// Where to write the delta (default: stdout).
    #[arg(short, long, value_name = "DELTA")]
    pub output: Option<PathBuf>,
    /// Comparison granularity, a power of two from 512 to 64M (default 4K;
    /// with --signature, the signature's).
    #[arg(short, long, value_name = "SIZE")]
    pub block_size: Option<String>,
    /// Payload compression: none, zstd or zstd:LEVEL (1-19).
    #[arg(long, value_name = "METHOD", default_value = "zstd:3")]
    pub compress: String,
    /// Output format: diskdelta (version 3: changed blocks compressed against
    /// the OLD bytes they replace, blocks moved within OLD as copies),
    /// diskdelta-v2 or diskdelta-v1 for older readers, or diff-dd-v2 for the
    /// C++ diff-dd tool.
    #[arg(long, value_name = "FORMAT", default_value = "diskdelta")]
    pub format: String,
    /// Compression threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Read inputs with O_DIRECT, bypassing the page cache.
    #[arg(long)]
    pub direct: bool,
    #[command(flatten)]
    pub tracking: TrackingArgs,
    /// With change tracking: sample unchanged blocks of OLD into the delta,
    /// so `apply --in-place --check-base sample` can check the base.
    #[arg(long, value_name = "OLD")]
    pub base_sample: Option<PathBuf>,
    /// OLD is this repository snapshot (id, prefix or name) instead of an
    /// image: only NEW is given and read.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["changed_ranges", "thin_metadata", "lvm", "base_sample"])]
    pub from_snapshot: Option<String>,
    /// OLD is described by this signature (`diskdelta signature OLD`; `-`
    /// for stdin) instead of being read: only NEW is given. The block size
    /// is the signature's.
    #[arg(long, value_name = "SIG", conflicts_with_all = ["changed_ranges", "thin_metadata", "lvm", "base_sample", "from_snapshot"])]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub source_format: SourceFormatArg,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct SignatureArgs {
    /// The image: a file, block device or `-` (stdin).
    #[arg(required_unless_present = "from_snapshot", value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Where to write the signature (default: stdout).
    #[arg(short, long, value_name = "SIG")]
    pub output: Option<PathBuf>,
    /// Block size of the hashes (power of two, 512 to 1M); deltas made
    /// from the signature use it.
    #[arg(short, long, value_name = "SIZE", default_value = "4K")]
    pub block_size: String,
    /// The image is this repository snapshot (id, prefix or name).
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "image")]
    pub from_snapshot: Option<String>,
    /// Seed of the block hashes instead of a random one (for golden files).
    #[arg(long, hide = true)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

/// Where changes come from when NEW is not compared byte by byte.
#[derive(Debug, Args, Default)]
pub struct TrackingArgs {
    /// Read only these ranges of NEW: lines `OFFSET LENGTH` in bytes, or
    /// thin_delta XML output (plain or --verbose); `-` for stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["thin_metadata", "lvm"])]
    pub changed_ranges: Option<PathBuf>,
    /// Thin-pool metadata (a metadata device or file) to run thin_delta on.
    #[arg(
        long,
        value_name = "PATH",
        requires = "thin_ids",
        conflicts_with = "lvm"
    )]
    pub thin_metadata: Option<PathBuf>,
    /// Thin device ids of OLD and NEW in --thin-metadata.
    #[arg(long, value_name = "OLD_ID,NEW_ID", requires = "thin_metadata")]
    pub thin_ids: Option<String>,
    /// LVM thin snapshot holding OLD (VG/LV): the pool, thin ids and chunk
    /// size come from lvs, thin_delta reads a reserved metadata snapshot.
    #[arg(long, value_name = "VG/OLDSNAP")]
    pub lvm: Option<String>,
}

impl TrackingArgs {
    /// True when any change tracker was chosen.
    pub fn any(&self) -> bool {
        self.changed_ranges.is_some() || self.thin_metadata.is_some() || self.lvm.is_some()
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The delta; `-` for stdin. Several deltas are a series (each made
    /// from the image the one before makes), applied in one pass.
    #[arg(required = true, value_name = "DELTA")]
    pub deltas: Vec<PathBuf>,
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
    /// The delta; `-` for stdin. Several deltas are shown as a series:
    /// whether each follows the one before, and the totals.
    #[arg(required = true, value_name = "DELTA")]
    pub deltas: Vec<PathBuf>,
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
pub struct MergeArgs {
    /// The series, in order; any may be `-` (stdin) or a pipe (spooled
    /// to a temporary file, as the ends of every delta are read first).
    #[arg(required = true, num_args = 2.., value_name = "DELTA")]
    pub deltas: Vec<PathBuf>,
    /// Where to write the merged delta (default: stdout).
    #[arg(short, long, value_name = "DELTA")]
    pub output: Option<PathBuf>,
    /// The first delta's OLD (a file or block device): every record is
    /// decoded and the merged records are compressed against it. Needed
    /// when a delta changes bytes that an earlier delta's record
    /// compressed against the base covers in part.
    #[arg(long, value_name = "OLD")]
    pub base: Option<PathBuf>,
    /// Payload compression: none, zstd or zstd:LEVEL.
    #[arg(long, value_name = "METHOD", default_value = "zstd:3")]
    pub compress: String,
    /// Compression threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Files, block devices, NBD URIs or `-`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub source_format: SourceFormatArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a file or block device, local or [user@]host:path, or an
    /// NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH).
    pub src: String,
    /// Target: a file (created if missing) or block device, local or
    /// [user@]host:path; an existing directory gets SRC's file name.
    pub dst: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Comparison block size (power of two, 512 to 1M); see docs/formats/wire.md
    /// for how the default was chosen.
    #[arg(short, long, value_name = "SIZE", default_value = "16K")]
    pub block_size: String,
    /// Report what would change; write nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// When a remote host lacks a compatible diskdelta, copy a static
    /// binary there over the ssh connection, cached in ~/.cache/diskdelta
    /// (DISKDELTA_DEPLOY_DIR). The binary is DISKDELTA_DEPLOY_BINARY, else
    /// this one if static, else diskdelta-static next to it.
    #[arg(long, env = "DISKDELTA_DEPLOY", value_parser = clap::builder::BoolishValueParser::new())]
    pub deploy: bool,
    #[command(flatten)]
    pub common: Common,
}

/// How to reach remote hosts (`sync`, `backup`).
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// ssh command and flags for remote hosts.
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
}

/// Where the repository is.
#[derive(Debug, Args, Clone)]
pub struct RepoArg {
    /// Repository: a directory (default: $XDG_DATA_HOME/diskdelta/repo; ./a:b
    /// for one with a colon), s3:http://HOST:PORT/BUCKET/PREFIX,
    /// s3:HOST/BUCKET/PREFIX or ssh://[USER@]HOST[:PORT]/PATH.
    #[arg(
        short = 'r',
        long = "repo",
        value_name = "LOCATION",
        env = "DISKDELTA_REPO"
    )]
    pub repo: Option<PathBuf>,
    /// Read the password of an encrypted repository from FILE (its first
    /// line). Otherwise DISKDELTA_PASSWORD, else a prompt on the terminal.
    #[arg(
        long,
        value_name = "FILE",
        env = "DISKDELTA_PASSWORD_FILE",
        conflicts_with = "password_command"
    )]
    pub password_file: Option<PathBuf>,
    /// Run CMD (through `sh -c`) and use the first line it prints as the
    /// password.
    #[arg(long, value_name = "CMD", env = "DISKDELTA_PASSWORD_COMMAND")]
    pub password_command: Option<String>,
    /// When a remote host (of an ssh:// repository or a backup SOURCE)
    /// lacks a compatible diskdelta, copy a static binary there over the
    /// ssh connection, cached in ~/.cache/diskdelta (DISKDELTA_DEPLOY_DIR).
    /// The binary is DISKDELTA_DEPLOY_BINARY, else this one if static, else
    /// diskdelta-static next to it.
    #[arg(long, env = "DISKDELTA_DEPLOY", value_parser = clap::builder::BoolishValueParser::new())]
    pub deploy: bool,
    /// The variable holding the password itself (DISKDELTA_PASSWORD, or
    /// DISKDELTA_FROM_PASSWORD for `copy --from`).
    #[arg(skip)]
    pub password_env: Option<&'static str>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Chunk size, a power of two from 16K to 4M (default 1M).
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Store data unencrypted (the default is encrypted, with a password).
    #[arg(long)]
    pub no_encryption: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Images to back up: local files, block devices, `-`,
    /// [user@]host:/path, or NBD URIs (nbd://HOST[:PORT]/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH). `--name`, `--parent` and `--sudo`
    /// after a SOURCE apply to it.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Snapshot name (default: derived from host and path).
    #[arg(long, value_name = "NAME")]
    pub name: Vec<String>,
    /// Run the remote side of the preceding SOURCE under sudo.
    #[arg(long, action = clap::ArgAction::Count)]
    pub sudo: u8,
    /// Compare with this snapshot (id, prefix or name) instead of the
    /// name's latest: a clone's first backup then sends only what differs.
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Vec<String>,
    /// Tag the snapshots (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Record this time instead of now (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Worker threads per source (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub tracking: TrackingArgs,
    /// With change tracking: re-read N random unchanged chunks and fail if
    /// one differs from the previous snapshot (a tracker that missed a change).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub verify_sample: usize,
    /// Store SOURCE, a snapshot (id, prefix or name), with the writes of
    /// this overlay (made by `nbd --writable`) as a new snapshot: only the
    /// chunks the writes touch are read, the others keep their ids.
    #[arg(long, value_name = "FILE")]
    pub from_overlay: Option<PathBuf>,
    /// Read only what the qemu dirty bitmap NAME marks as written since the
    /// previous snapshot (SOURCE: a qcow2 image or an NBD export offering
    /// `qemu:dirty-bitmap:NAME`). A missing or in-use bitmap, a size change
    /// or no previous snapshot mean a full read, said loudly.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["changed_ranges", "thin_metadata", "lvm"])]
    pub dirty_bitmap: Option<String>,
    #[command(flatten)]
    pub source_format: SourceFormatArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The image: a file, block device or `-`.
    pub image: PathBuf,
    /// Snapshot name.
    #[arg(long, value_name = "NAME", required = true)]
    pub name: String,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Record this time instead of now (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique id prefix, or name (its latest snapshot).
    pub snapshot: String,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Where to write the image (default: stdout).
    #[arg(short, long, value_name = "OUT", conflicts_with = "in_place")]
    pub output: Option<PathBuf>,
    /// Update TARGET (holding an older version) writing only differing chunks.
    #[arg(long, value_name = "TARGET")]
    pub in_place: Option<PathBuf>,
    /// Write OUT as an image of this format (qcow2, vmdk, vhdx, vdi, qed)
    /// with qemu-img, verified by reading it back through qemu-nbd.
    #[arg(long, value_name = "FORMAT", default_value = "raw", requires = "output", conflicts_with = "in_place",
          value_parser = ["raw", "qcow2", "vmdk", "vhdx", "vdi", "qed"])]
    pub format: String,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct NbdArgs {
    /// Snapshots to serve (id, unique id prefix, or name: its latest); each
    /// is an export named as written here.
    #[arg(required = true, value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Listen on TCP ADDR:PORT (e.g. 127.0.0.1:10809) instead of a Unix socket.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "socket")]
    pub listen: Option<String>,
    /// The Unix socket to create (default: diskdelta-nbd-PID.sock in
    /// $XDG_RUNTIME_DIR, /run/diskdelta or the temporary directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Memory for decompressed chunks, shared by the exports.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub cache_size: String,
    /// Clients served at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_clients: usize,
    /// Accept writes, into the overlay file given with --overlay (one
    /// snapshot only); the repository is never written.
    #[arg(long, requires = "overlay")]
    pub writable: bool,
    /// The copy-on-write overlay of --writable: created, or reopened when
    /// it exists (it must belong to the same snapshot).
    #[arg(long, value_name = "FILE", requires = "writable")]
    pub overlay: Option<PathBuf>,
    /// Print the exports' URIs as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// No log lines about failed requests.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The (empty) directory to mount on.
    pub dir: PathBuf,
    /// Snapshots to show (id, unique id prefix, or a name: all its
    /// snapshots); all snapshots when none is given.
    #[arg(value_name = "SNAPSHOT|NAME")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Memory for decompressed chunks of each image read.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub cache_size: String,
    /// Print the mount as one JSON line once it is ready.
    #[arg(long)]
    pub json: bool,
    /// No log lines about failed reads.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots of this name.
    pub name: Option<String>,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read, decompress and re-hash every chunk.
    #[arg(long)]
    pub read_data: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Report what would be removed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Snapshots to copy: ids, id prefixes, or names (every snapshot of
    /// the name); all snapshots when none are given.
    pub snapshots: Vec<String>,
    /// The repository to copy from (a directory or s3:...).
    #[arg(long, value_name = "LOCATION", env = "DISKDELTA_FROM_REPO")]
    pub from: PathBuf,
    /// Password file of the --from repository (else DISKDELTA_FROM_PASSWORD,
    /// else a prompt).
    #[arg(
        long,
        value_name = "FILE",
        env = "DISKDELTA_FROM_PASSWORD_FILE",
        conflicts_with = "from_password_command"
    )]
    pub from_password_file: Option<PathBuf>,
    /// Command printing the password of the --from repository.
    #[arg(long, value_name = "CMD", env = "DISKDELTA_FROM_PASSWORD_COMMAND")]
    pub from_password_command: Option<String>,
    /// The repository to copy into.
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to forget (ids, prefixes or names); or use --keep-*.
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Keep the newest N snapshots of each name.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest snapshot of each of the last N weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
    /// Apply the policy to this name only.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Run gc afterwards (exclusive lock).
    #[arg(long)]
    pub prune: bool,
    /// Report what would be removed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Remove every lock, also live ones (only when no diskdelta is running).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ImportDiskdumpArgs {
    /// The diskdump directory (the one holding `.blockstore/`).
    pub dir: PathBuf,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key files (one per password).
    #[command(after_help = crate::examples::KEY_LIST)]
    List(KeyArgs),
    /// Add a password.
    #[command(after_help = crate::examples::KEY_ADD)]
    Add(KeyNewArgs),
    /// Remove a password (not the one given, not the last one).
    #[command(after_help = crate::examples::KEY_REMOVE)]
    Remove(KeyRemoveArgs),
    /// Change the password given: add the new one, remove the old one.
    #[command(after_help = crate::examples::KEY_PASSWD)]
    Passwd(KeyNewArgs),
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct KeyNewArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read the new password from FILE (its first line); else
    /// DISKDELTA_NEW_PASSWORD, else a prompt (twice) on the terminal.
    #[arg(long, value_name = "FILE", env = "DISKDELTA_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// The key's id or a unique prefix of it (see `key list`).
    pub id: String,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub common: Common,
}

/// How image files given as sources are read.
#[derive(Debug, Args, Default, Clone)]
pub struct SourceFormatArg {
    /// How to read image files: `auto` reads a qcow2, vmdk, vhdx... image
    /// (as `qemu-img info` names it) through a private read-only qemu-nbd,
    /// `raw` reads every file byte for byte.
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = ["auto", "raw"])]
    pub source_format: String,
}

impl SourceFormatArg {
    /// The library's choice.
    pub fn format(&self) -> diskdelta::io::SourceFormat {
        if self.source_format == "raw" {
            diskdelta::io::SourceFormat::Raw
        } else {
            diskdelta::io::SourceFormat::Auto
        }
    }
}
