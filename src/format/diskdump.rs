//! Stores made by diskdump 0.1.5 (PyPI package `diskdump`; `blockstore.py`,
//! `manifest.py`, `cli.py`), read safely: every block is decompressed and
//! checked against its SHA-256 before it is handed out.
//!
//! diskdump copies disks over ssh into a deduplicated, content-addressed
//! block store; `diskdump import IMAGE --as HOST:DEVICE` does the same from
//! a local image. The store lives in a base directory (`$DISKDUMP_BASE`, else
//! the working directory):
//!
//! ```text
//! BASE/.blockstore/config.json                      store settings (JSON)
//! BASE/.blockstore/blocks.db                        SQLite index of stored blocks (a cache; not read here)
//! BASE/.blockstore/ab/cd/abcd…(64 hex digits).lz4   one block: an LZ4 frame of its raw bytes
//! BASE/.blockstore/manifests/NAME/N.manifest        one dump: version N = 0, 1, 2, … of NAME
//! ```
//!
//! Its own README shows manifests under `BASE/YYYY/MM/DD/`; version 0.1.5
//! writes them only under `manifests/`, and its `status`, `gc` and `restore`
//! look for them only there. `NAME` is `HOST.DEV` (`DEVICE` without
//! `/dev/`, other `/` made `.`) for `import` and for `dump` without `--as`,
//! else the `--as` name verbatim (which may contain `/`).
//!
//! ## `config.json`
//!
//! Written once, when the store is created (`json.dump(..., indent=2)`):
//!
//! ```json
//! { "block_size": 131072, "hash_algo": "sha256", "version": 1 }
//! ```
//!
//! `block_size` is the block size of the dump that created the store. Later
//! dumps may use another block size and do not update it: the block size
//! of a dump is the one in its manifest.
//!
//! ## Block files
//!
//! A block is `block_size` bytes of the image, or fewer for the last block.
//! Its name is the lower-case hex SHA-256 of those raw (uncompressed) bytes;
//! its path `.blockstore/` + hex\[0..2\] + `/` + hex\[2..4\] + `/` + hex +
//! `.lz4`. The file is one LZ4 *frame* (`lz4.frame.compress`, python-lz4
//! defaults), not a raw LZ4 block:
//!
//! | offset | size | field                                                           |
//! |-------:|-----:|-----------------------------------------------------------------|
//! | 0      | 4    | magic `04 22 4D 18`                                             |
//! | 4      | 1    | FLG `0x68` (independent blocks) when the block is at most 64 KiB, else `0x48` (linked blocks); content size present, no checksums |
//! | 5      | 1    | BD `0x40`: LZ4 blocks of at most 64 KiB                         |
//! | 6      | 8    | content size, u64 little-endian: the raw block length           |
//! | 14     | 1    | header checksum                                                 |
//! | 15     | …    | LZ4 blocks: u32 LE length (bit 31 set: stored uncompressed), data |
//! | end−4  | 4    | end mark `00 00 00 00`                                          |
//!
//! A block of 128 KiB therefore spans two LZ4 blocks, the second of which
//! may refer back into the first. There is no zero or sparse marker: a block
//! of zeros is stored like any other (once, thanks to deduplication;
//! [`zero_block_hash`] gives its name). Blocks are deduplicated across all
//! dumps of the store.
//!
//! ## Manifests
//!
//! UTF-8 text, `\n` line ends, six header lines then one hash per block in
//! image order:
//!
//! ```text
//! # diskdump manifest v1
//! # source: server01:/dev/sda
//! # date: 2026-04-24T10:00:00.123456+00:00
//! # block_size: 131072
//! # total_blocks: 25
//! # total_size: 3146728
//! 62ea458bfca427bad2cfa6a81139191162b2462a63d5d2250d54d593d8da80bd
//! …
//! ```
//!
//! - `source`: `HOST:DEVICE` as given on the command line.
//! - `date`: `datetime.now(timezone.utc).isoformat()` when the dump
//!   finished, or the free-form text of `import --date`.
//! - `total_blocks`: the number of hash lines.
//! - `total_size`: the image size in bytes; the last block holds
//!   `total_size − (total_blocks − 1) · block_size` bytes, so
//!   `total_blocks = ⌈total_size / block_size⌉`.
//!
//! diskdump's own reader strips each line, skips blank lines, takes the
//! five `# key: value` lines wherever they are, ignores any other `#` line
//! and treats every other line as a hash. This reader accepts everything
//! diskdump writes but is stricter about the rest, so that a damaged
//! manifest is an error naming its line rather than a wrong image:
//!
//! - the first non-blank line must be `# diskdump manifest v1`;
//! - `block_size` (1..=[`MAX_BLOCK_SIZE`]) and `total_size` must come before
//!   the first hash; `source`, `date` and `total_blocks` may be missing;
//!   no key may appear twice, and none after the first hash;
//! - numbers are plain decimal digits;
//! - a hash line is exactly 64 lower-case hex digits (diskdump names block
//!   files by the line as it is, so other spellings never find a block);
//! - the number of hashes must equal `total_blocks` when present, and
//!   `⌈total_size / block_size⌉` always;
//! - lines are at most [`MAX_LINE_LEN`] bytes.
//!
//! Lines are trimmed of ASCII whitespace (so `\r\n` ends are accepted) and
//! numbered from 1 in error messages.

use std::cmp::Ordering;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The directory in the base directory that holds the whole store.
pub const STORE_DIR: &str = ".blockstore";
/// The settings file in [`STORE_DIR`].
pub const CONFIG_FILE: &str = "config.json";
/// The directory in [`STORE_DIR`] that holds the manifests.
pub const MANIFESTS_DIR: &str = "manifests";
/// File name suffix of manifests.
pub const MANIFEST_SUFFIX: &str = ".manifest";
/// File name suffix of block files.
pub const BLOCK_SUFFIX: &str = ".lz4";
/// First line of every manifest.
pub const MANIFEST_MAGIC: &str = "# diskdump manifest v1";
/// Prefix of the first line shared by every manifest version.
const MANIFEST_MAGIC_PREFIX: &str = "# diskdump manifest ";
/// The only `version` of `config.json` diskdump writes.
pub const CONFIG_VERSION: u64 = 1;
/// The only `hash_algo` of `config.json` diskdump writes.
pub const HASH_ALGO: &str = "sha256";
/// diskdump's default block size (`--block-size`).
pub const DEFAULT_BLOCK_SIZE: u64 = 131_072;
/// Largest block size accepted: a block is held in memory whole.
pub const MAX_BLOCK_SIZE: u64 = 64 * 1024 * 1024;
/// Longest manifest line accepted, in bytes (a hash line has 64).
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Largest `config.json` accepted (diskdump's has 67 bytes).
const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// Magic number at the start of an LZ4 frame (`0x184D2204` little-endian).
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
/// Longest text of a bad line quoted in an error.
const QUOTE_LEN: usize = 80;

/// Errors from reading a diskdump store.
#[derive(Debug, thiserror::Error)]
pub enum DiskdumpError {
    /// `BASE/.blockstore/config.json` does not exist.
    #[error("not a diskdump store: {path} does not exist")]
    NotAStore {
        /// The missing `config.json`.
        path: PathBuf,
    },
    /// Reading `config.json` failed.
    #[error("cannot read diskdump config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `config.json` is not JSON.
    #[error("diskdump config {path} is not valid JSON")]
    ConfigJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A field of `config.json` is missing or has a value this reader does
    /// not know.
    #[error("diskdump config {path}: field \"{field}\" {problem}")]
    BadConfig {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    /// Listing the manifests failed.
    #[error("cannot list diskdump manifests in {path}")]
    ListManifests {
        /// The directory being listed.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Opening a manifest failed.
    #[error("cannot open diskdump manifest {path}")]
    OpenManifest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A manifest could not be read or is malformed.
    #[error("diskdump manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    /// The file of a block named by a manifest does not exist.
    #[error("diskdump block {hash} is missing: no file {path}")]
    MissingBlock { hash: Sha256Hash, path: PathBuf },
    /// Reading the file of a block failed.
    #[error("cannot read diskdump block file {path}")]
    ReadBlock {
        hash: Sha256Hash,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A block file is not a valid LZ4 frame.
    #[error("corrupt diskdump block file {path}")]
    CorruptBlock {
        hash: Sha256Hash,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A block file, or the block it decompresses to, is larger than the
    /// block can be.
    #[error("corrupt diskdump block file {path}: {what} is larger than {max} bytes")]
    BlockTooLarge {
        hash: Sha256Hash,
        path: PathBuf,
        /// "the file" or "the block".
        what: &'static str,
        max: u64,
    },
    /// A block file decompresses to bytes of another SHA-256 than its name.
    #[error("corrupt diskdump block file {path}: its content has SHA-256 {actual}")]
    WrongHash {
        path: PathBuf,
        /// The hash in the file name (and the manifest).
        expected: Sha256Hash,
        actual: Sha256Hash,
    },
    /// A block has the right hash but not the length its position in the
    /// image calls for.
    #[error(
        "diskdump block {index} ({hash}) holds {actual} bytes, the manifest \
         calls for {expected}"
    )]
    BlockLength {
        hash: Sha256Hash,
        index: usize,
        expected: u64,
        actual: u64,
    },
    /// A block index past the end of the manifest.
    #[error("no diskdump block {index}: the manifest has {count} blocks")]
    BlockIndex { index: usize, count: usize },
}

/// Errors in the text of a manifest; lines are numbered from 1.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the manifest failed.
    #[error("read error at line {line}")]
    Read {
        line: u64,
        #[source]
        source: io::Error,
    },
    /// The manifest holds no non-blank line.
    #[error("empty file, not a diskdump manifest")]
    Empty,
    /// The first non-blank line is not the manifest magic.
    #[error("not a diskdump manifest: line {line} is {text:?}, expected {MANIFEST_MAGIC:?}")]
    MissingMagic { line: u64, text: String },
    /// A manifest of another format version.
    #[error("unsupported diskdump manifest version: line {line} is {text:?}")]
    UnsupportedVersion { line: u64, text: String },
    /// A line is not UTF-8.
    #[error("line {line} is not UTF-8")]
    NotUtf8 { line: u64 },
    /// A line is longer than [`MAX_LINE_LEN`].
    #[error("line {line} is longer than {max} bytes")]
    LineTooLong { line: u64, max: usize },
    /// A header value is not a decimal number.
    #[error("line {line}: {key} {value:?} is not a decimal number")]
    BadNumber {
        line: u64,
        key: &'static str,
        value: String,
    },
    /// A header key appears twice.
    #[error("line {line}: second {key} header")]
    DuplicateHeader { line: u64, key: &'static str },
    /// A header key appears after the first hash.
    #[error("line {line}: {key} header after the first block hash")]
    HeaderAfterBlocks { line: u64, key: &'static str },
    /// A header needed to place the blocks is missing: before the first
    /// hash (`line` is that hash's line) or in the whole manifest.
    #[error("no {key} header{}", before_line(.line))]
    MissingHeader {
        key: &'static str,
        line: Option<u64>,
    },
    /// The block size is 0 or above [`MAX_BLOCK_SIZE`].
    #[error("line {line}: block_size {block_size} is outside 1..={max}")]
    InvalidBlockSize {
        line: u64,
        block_size: u64,
        max: u64,
    },
    /// A line that should be a block hash is not one.
    #[error("line {line} is not a block hash ({reason}): {text:?}")]
    BadHash {
        line: u64,
        text: String,
        reason: &'static str,
    },
    /// More hashes than `total_size` has blocks.
    #[error(
        "line {line}: more block hashes than the {expected} blocks of \
         {block_size} bytes that total_size {image_size} calls for"
    )]
    TooManyBlocks {
        line: u64,
        image_size: u64,
        block_size: u64,
        expected: u64,
    },
    /// Fewer hashes than `total_size` has blocks.
    #[error(
        "{found} block hashes, but total_size {image_size} calls for \
         {expected} blocks of {block_size} bytes"
    )]
    TooFewBlocks {
        found: u64,
        image_size: u64,
        block_size: u64,
        expected: u64,
    },
    /// `total_blocks` differs from the number of hashes.
    #[error(
        "line {line}: total_blocks is {total_blocks}, but the manifest has {found} block hashes"
    )]
    TotalBlocksMismatch {
        line: u64,
        total_blocks: u64,
        found: u64,
    },
}

/// " before the first block hash on line N", or nothing.
fn before_line(line: &Option<u64>) -> String {
    match line {
        Some(line) => format!(" before the first block hash on line {line}"),
        None => String::new(),
    }
}

/// The SHA-256 of a block's raw bytes: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; 32]);

impl Sha256Hash {
    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256Hash(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256Hash(Sha256::digest(data).into())
    }

    /// Lower-case hex, 64 digits, as in manifests and block file names.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
        }
        out
    }

    /// Parses exactly 64 lower-case hex digits, the only spelling diskdump
    /// writes.
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hash(text.as_bytes()).ok()
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({})", self.to_hex())
    }
}

/// The hash of a block of `len` zero bytes: the name under which a store
/// keeps such blocks (diskdump has no zero marker). Hashes without
/// allocating `len` bytes.
pub fn zero_block_hash(len: u64) -> Sha256Hash {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        // n <= 4096, so the cast is lossless.
        hasher.update(&ZEROS[..n as usize]);
        left -= n;
    }
    Sha256Hash(hasher.finalize().into())
}

/// `config.json` of a store, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The block size of the dump that created the store; each manifest
    /// carries its own.
    pub block_size: u64,
    /// Always [`HASH_ALGO`].
    pub hash_algo: String,
    /// Always [`CONFIG_VERSION`].
    pub version: u64,
}

impl StoreConfig {
    /// Parses and checks the text of a `config.json` (`path` is for
    /// messages). Unknown fields are ignored.
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::ConfigJson`] or [`DiskdumpError::BadConfig`].
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, DiskdumpError> {
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|source| DiskdumpError::ConfigJson {
                path: path.to_owned(),
                source,
            })?;
        let bad = |field: &'static str, problem: String| DiskdumpError::BadConfig {
            path: path.to_owned(),
            field,
            problem,
        };
        let Some(object) = value.as_object() else {
            return Err(bad("(top level)", "is not a JSON object".to_owned()));
        };
        let field = |name: &'static str| {
            object
                .get(name)
                .ok_or_else(|| bad(name, "is missing".to_owned()))
        };

        let version = field("version")?;
        if version.as_u64() != Some(CONFIG_VERSION) {
            return Err(bad(
                "version",
                format!("is {version}, only {CONFIG_VERSION} is supported"),
            ));
        }
        let hash_algo = field("hash_algo")?;
        if hash_algo.as_str() != Some(HASH_ALGO) {
            return Err(bad(
                "hash_algo",
                format!("is {hash_algo}, only \"{HASH_ALGO}\" is supported"),
            ));
        }
        let block_size_value = field("block_size")?;
        let block_size = block_size_value
            .as_u64()
            .filter(|n| (1..=MAX_BLOCK_SIZE).contains(n))
            .ok_or_else(|| {
                bad(
                    "block_size",
                    format!("is {block_size_value}, expected an integer in 1..={MAX_BLOCK_SIZE}"),
                )
            })?;
        Ok(StoreConfig {
            block_size,
            hash_algo: HASH_ALGO.to_owned(),
            version: CONFIG_VERSION,
        })
    }
}

/// One dump: the parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The dump's name: the directory of the manifest under
    /// `.blockstore/manifests/` (`HOST.DEV` or the `--as` name). Set by
    /// [`DiskdumpStore::read_manifest`] for manifests in the store, `None`
    /// otherwise.
    pub name: Option<String>,
    /// `N` of the file name `N.manifest` (0 for the first dump of a name),
    /// when it is a number.
    pub version: Option<u64>,
    /// The `source` header (`HOST:DEVICE`), if present and not empty.
    pub source: Option<String>,
    /// The `date` header, if present and not empty: normally an ISO 8601
    /// UTC timestamp, but `import --date` stores any text.
    pub date: Option<String>,
    /// Bytes per block; the last block may be shorter.
    pub block_size: u64,
    /// Size of the image in bytes (`total_size`).
    pub image_size: u64,
    /// The blocks of the image, in order.
    pub blocks: Vec<Sha256Hash>,
}

impl Manifest {
    /// Byte offset in the image of block `index`.
    pub fn block_offset(&self, index: usize) -> u64 {
        (index as u64).saturating_mul(self.block_size)
    }

    /// Length in bytes of block `index` (the last one may be short), or
    /// `None` past the last block.
    pub fn block_len(&self, index: usize) -> Option<u64> {
        if index >= self.blocks.len() {
            return None;
        }
        let offset = self.block_offset(index);
        Some(self.image_size.saturating_sub(offset).min(self.block_size))
    }
}

/// Parses the text of a manifest.
///
/// # Errors
///
/// A [`ManifestError`] naming the offending line.
pub fn parse_manifest(text: &[u8]) -> Result<Manifest, ManifestError> {
    let mut parser = ManifestParser::new();
    for line in text.split(|&b| b == b'\n') {
        parser.line(line)?;
    }
    parser.finish()
}

/// Parses a manifest from a reader, one line at a time: memory is the
/// result plus one line of at most [`MAX_LINE_LEN`] bytes. Gives the same
/// result as [`parse_manifest`] over the same bytes.
///
/// # Errors
///
/// [`ManifestError::Read`], or a [`ManifestError`] naming the offending
/// line.
pub fn read_manifest_from<R: BufRead>(mut reader: R) -> Result<Manifest, ManifestError> {
    let mut parser = ManifestParser::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = MAX_LINE_LEN as u64 + 1;
        let n = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|source| ManifestError::Read {
                line: parser.line_no + 1,
                source,
            })?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // A line of more than MAX_LINE_LEN bytes arrives cut; `line` rejects
        // it for its length, as `parse_manifest` does.
        parser.line(&line)?;
    }
    parser.finish()
}

/// The header keys diskdump writes.
#[derive(Clone, Copy)]
enum Key {
    Source,
    Date,
    BlockSize,
    TotalBlocks,
    TotalSize,
}

impl Key {
    const ALL: [Key; 5] = [
        Key::Source,
        Key::Date,
        Key::BlockSize,
        Key::TotalBlocks,
        Key::TotalSize,
    ];

    fn name(self) -> &'static str {
        match self {
            Key::Source => "source",
            Key::Date => "date",
            Key::BlockSize => "block_size",
            Key::TotalBlocks => "total_blocks",
            Key::TotalSize => "total_size",
        }
    }

    /// The value of `line` if it is this key's header line: `# KEY: VALUE`,
    /// or `# KEY:` for an empty value (what diskdump's strip leaves).
    fn value(self, line: &str) -> Option<&str> {
        let rest = line.strip_prefix("# ")?.strip_prefix(self.name())?;
        let rest = rest.strip_prefix(':')?;
        if rest.is_empty() {
            return Some(rest);
        }
        rest.strip_prefix(' ')
    }
}

/// A header value and the line it came from.
#[derive(Clone, Copy)]
struct Numbered<T> {
    value: T,
    line: u64,
}

/// Line-at-a-time manifest parser shared by [`parse_manifest`] and
/// [`read_manifest_from`].
struct ManifestParser {
    /// Number of the last line given to [`line`](Self::line).
    line_no: u64,
    seen_magic: bool,
    source: Option<Numbered<String>>,
    date: Option<Numbered<String>>,
    block_size: Option<Numbered<u64>>,
    total_blocks: Option<Numbered<u64>>,
    image_size: Option<Numbered<u64>>,
    /// `⌈image_size / block_size⌉`, known from the first hash line on.
    expected_blocks: Option<u64>,
    blocks: Vec<Sha256Hash>,
}

impl ManifestParser {
    fn new() -> Self {
        ManifestParser {
            line_no: 0,
            seen_magic: false,
            source: None,
            date: None,
            block_size: None,
            total_blocks: None,
            image_size: None,
            expected_blocks: None,
            blocks: Vec::new(),
        }
    }

    /// One line, without its `\n`.
    fn line(&mut self, raw: &[u8]) -> Result<(), ManifestError> {
        self.line_no += 1;
        let line_no = self.line_no;
        if raw.len() > MAX_LINE_LEN {
            return Err(ManifestError::LineTooLong {
                line: line_no,
                max: MAX_LINE_LEN,
            });
        }
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        if !self.seen_magic {
            return self.magic(trimmed);
        }
        if trimmed.first() == Some(&b'#') {
            let text = std::str::from_utf8(trimmed)
                .map_err(|_| ManifestError::NotUtf8 { line: line_no })?;
            return self.header(text);
        }
        self.hash(trimmed)
    }

    fn magic(&mut self, line: &[u8]) -> Result<(), ManifestError> {
        let text = quote(line);
        if line == MANIFEST_MAGIC.as_bytes() {
            self.seen_magic = true;
            Ok(())
        } else if line.starts_with(MANIFEST_MAGIC_PREFIX.as_bytes()) {
            Err(ManifestError::UnsupportedVersion {
                line: self.line_no,
                text,
            })
        } else {
            Err(ManifestError::MissingMagic {
                line: self.line_no,
                text,
            })
        }
    }

    /// A `#` line: a header, or a comment that is ignored.
    fn header(&mut self, text: &str) -> Result<(), ManifestError> {
        let line = self.line_no;
        let Some((key, value)) = Key::ALL
            .into_iter()
            .find_map(|key| key.value(text).map(|value| (key, value)))
        else {
            return Ok(());
        };
        let name = key.name();
        if !self.blocks.is_empty() {
            return Err(ManifestError::HeaderAfterBlocks { line, key: name });
        }
        let duplicate = match key {
            Key::Source => self.source.is_some(),
            Key::Date => self.date.is_some(),
            Key::BlockSize => self.block_size.is_some(),
            Key::TotalBlocks => self.total_blocks.is_some(),
            Key::TotalSize => self.image_size.is_some(),
        };
        if duplicate {
            return Err(ManifestError::DuplicateHeader { line, key: name });
        }
        match key {
            Key::Source => {
                self.source = Some(Numbered {
                    value: value.to_owned(),
                    line,
                });
            }
            Key::Date => {
                self.date = Some(Numbered {
                    value: value.to_owned(),
                    line,
                });
            }
            Key::BlockSize => {
                let block_size = parse_number(value, line, name)?;
                if !(1..=MAX_BLOCK_SIZE).contains(&block_size) {
                    return Err(ManifestError::InvalidBlockSize {
                        line,
                        block_size,
                        max: MAX_BLOCK_SIZE,
                    });
                }
                self.block_size = Some(Numbered {
                    value: block_size,
                    line,
                });
            }
            Key::TotalBlocks => {
                self.total_blocks = Some(Numbered {
                    value: parse_number(value, line, name)?,
                    line,
                });
            }
            Key::TotalSize => {
                self.image_size = Some(Numbered {
                    value: parse_number(value, line, name)?,
                    line,
                });
            }
        }
        Ok(())
    }

    fn hash(&mut self, text: &[u8]) -> Result<(), ManifestError> {
        let line = self.line_no;
        let hash = parse_hash(text).map_err(|reason| ManifestError::BadHash {
            line,
            text: quote(text),
            reason,
        })?;
        let expected = match self.expected_blocks {
            Some(expected) => expected,
            None => {
                let missing = |key: &'static str| ManifestError::MissingHeader {
                    key,
                    line: Some(line),
                };
                let block_size = self.block_size.ok_or_else(|| missing("block_size"))?;
                let image_size = self.image_size.ok_or_else(|| missing("total_size"))?;
                let expected = image_size.value.div_ceil(block_size.value);
                self.expected_blocks = Some(expected);
                expected
            }
        };
        if self.blocks.len() as u64 >= expected {
            return Err(ManifestError::TooManyBlocks {
                line,
                image_size: self.image_size.map_or(0, |n| n.value),
                block_size: self.block_size.map_or(0, |n| n.value),
                expected,
            });
        }
        self.blocks.push(hash);
        Ok(())
    }

    fn finish(self) -> Result<Manifest, ManifestError> {
        if !self.seen_magic {
            return Err(ManifestError::Empty);
        }
        let missing = |key: &'static str| ManifestError::MissingHeader { key, line: None };
        let block_size = self.block_size.ok_or_else(|| missing("block_size"))?.value;
        let image_size = self.image_size.ok_or_else(|| missing("total_size"))?.value;
        let found = self.blocks.len() as u64;
        if let Some(total) = self.total_blocks {
            if total.value != found {
                return Err(ManifestError::TotalBlocksMismatch {
                    line: total.line,
                    total_blocks: total.value,
                    found,
                });
            }
        }
        let expected = image_size.div_ceil(block_size);
        if found != expected {
            return Err(ManifestError::TooFewBlocks {
                found,
                image_size,
                block_size,
                expected,
            });
        }
        let non_empty = |header: Option<Numbered<String>>| {
            header.map(|h| h.value).filter(|value| !value.is_empty())
        };
        Ok(Manifest {
            name: None,
            version: None,
            source: non_empty(self.source),
            date: non_empty(self.date),
            block_size,
            image_size,
            blocks: self.blocks,
        })
    }
}

/// Plain decimal digits, as Python's `str(int)` writes them.
fn parse_number(value: &str, line: u64, key: &'static str) -> Result<u64, ManifestError> {
    let bad = || ManifestError::BadNumber {
        line,
        key,
        value: quote(value.as_bytes()),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// 64 lower-case hex digits.
fn parse_hash(text: &[u8]) -> Result<Sha256Hash, &'static str> {
    if text.len() != 64 {
        return Err("not 64 characters");
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Err("upper-case hex digit"),
        _ => Err("not a hex digit"),
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(Sha256Hash(out))
}

/// A line's text for an error message: lossy UTF-8, cut at [`QUOTE_LEN`]
/// characters.
fn quote(text: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(text);
    let mut chars = lossy.chars();
    let mut out: String = chars.by_ref().take(QUOTE_LEN).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// A diskdump store, opened read-only. Never writes: not even the SQLite
/// index that diskdump itself keeps beside the blocks.
#[derive(Debug, Clone)]
pub struct DiskdumpStore {
    /// The base directory (holding `.blockstore/`).
    root: PathBuf,
    /// `root/.blockstore`.
    store_dir: PathBuf,
    config: StoreConfig,
}

impl DiskdumpStore {
    /// Opens the store in base directory `dir` (the directory that holds
    /// `.blockstore/`, diskdump's `$DISKDUMP_BASE`) and checks its
    /// `config.json`.
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::NotAStore`], [`DiskdumpError::ReadConfig`],
    /// [`DiskdumpError::ConfigJson`] or [`DiskdumpError::BadConfig`].
    pub fn open(dir: &Path) -> Result<Self, DiskdumpError> {
        let store_dir = dir.join(STORE_DIR);
        let path = store_dir.join(CONFIG_FILE);
        let file = fs::File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                DiskdumpError::NotAStore { path: path.clone() }
            } else {
                DiskdumpError::ReadConfig {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let mut text = Vec::new();
        file.take(MAX_CONFIG_LEN + 1)
            .read_to_end(&mut text)
            .map_err(|source| DiskdumpError::ReadConfig {
                path: path.clone(),
                source,
            })?;
        if text.len() as u64 > MAX_CONFIG_LEN {
            return Err(DiskdumpError::BadConfig {
                path,
                field: "(file)",
                problem: format!("is larger than {MAX_CONFIG_LEN} bytes"),
            });
        }
        let config = StoreConfig::parse(&text, &path)?;
        Ok(DiskdumpStore {
            root: dir.to_owned(),
            store_dir,
            config,
        })
    }

    /// The base directory given to [`open`](Self::open).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's `config.json`.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// `.blockstore/manifests`, where diskdump keeps its manifests.
    pub fn manifests_dir(&self) -> PathBuf {
        self.store_dir.join(MANIFESTS_DIR)
    }

    /// Every `*.manifest` file under [`manifests_dir`](Self::manifests_dir)
    /// (none when it does not exist yet), sorted by directory and then by
    /// version number, so the dumps of one name come oldest first.
    /// Symbolic links to directories are not followed.
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::ListManifests`].
    pub fn manifests(&self) -> Result<Vec<PathBuf>, DiskdumpError> {
        let mut found = Vec::new();
        let top = self.manifests_dir();
        let mut pending = vec![top.clone()];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir == top => {
                    return Ok(Vec::new());
                }
                Err(source) => return Err(DiskdumpError::ListManifests { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| DiskdumpError::ListManifests {
                    path: dir.clone(),
                    source,
                })?;
                let file_type =
                    entry
                        .file_type()
                        .map_err(|source| DiskdumpError::ListManifests {
                            path: entry.path(),
                            source,
                        })?;
                let path = entry.path();
                if file_type.is_dir() {
                    pending.push(path);
                } else if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.ends_with(MANIFEST_SUFFIX))
                {
                    found.push(path);
                }
            }
        }
        found.sort_by(|a, b| compare_manifest_paths(a, b));
        Ok(found)
    }

    /// Where diskdump looks for a manifest given as `name` on its command
    /// line (`diskdump restore NAME`): an absolute path as is; a relative
    /// one under [`manifests_dir`](Self::manifests_dir) if it exists there,
    /// else under the base directory.
    pub fn resolve_manifest(&self, name: &Path) -> PathBuf {
        if name.is_absolute() {
            return name.to_owned();
        }
        let under_manifests = self.manifests_dir().join(name);
        if under_manifests.exists() {
            under_manifests
        } else {
            self.root.join(name)
        }
    }

    /// Reads and checks the manifest at `path` (see the module docs for
    /// what is checked). Its name and version are filled in when it lies
    /// under [`manifests_dir`](Self::manifests_dir).
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::OpenManifest`] or [`DiskdumpError::Manifest`].
    pub fn read_manifest(&self, path: &Path) -> Result<Manifest, DiskdumpError> {
        let file = fs::File::open(path).map_err(|source| DiskdumpError::OpenManifest {
            path: path.to_owned(),
            source,
        })?;
        let mut manifest =
            read_manifest_from(BufReader::new(file)).map_err(|source| DiskdumpError::Manifest {
                path: path.to_owned(),
                source,
            })?;
        if let Ok(relative) = path.strip_prefix(self.manifests_dir()) {
            manifest.name = relative
                .parent()
                .and_then(Path::to_str)
                .filter(|name| !name.is_empty())
                .map(str::to_owned);
        }
        manifest.version = manifest_version(path);
        Ok(manifest)
    }

    /// The path of the file of the block named `hash`.
    pub fn block_path(&self, hash: &Sha256Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.store_dir
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(format!("{hex}{BLOCK_SUFFIX}"))
    }

    /// The raw bytes of the block named `hash`, decompressed and checked
    /// against `hash`. At most [`MAX_BLOCK_SIZE`] bytes.
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::MissingBlock`] when there is no such file,
    /// [`DiskdumpError::ReadBlock`] when reading it fails,
    /// [`DiskdumpError::CorruptBlock`] or [`DiskdumpError::BlockTooLarge`]
    /// when it does not decompress, [`DiskdumpError::WrongHash`] when it
    /// decompresses to other bytes.
    pub fn read_block(&self, hash: &Sha256Hash) -> Result<Vec<u8>, DiskdumpError> {
        self.read_block_limited(hash, MAX_BLOCK_SIZE)
    }

    /// Block `index` of `manifest`, checked against its hash and its
    /// length: `block_size` bytes, or what is left of `image_size` for the
    /// last block. Concatenated in order, these blocks are the image.
    ///
    /// # Errors
    ///
    /// [`DiskdumpError::BlockIndex`], the errors of
    /// [`read_block`](Self::read_block), or [`DiskdumpError::BlockLength`].
    pub fn read_manifest_block(
        &self,
        manifest: &Manifest,
        index: usize,
    ) -> Result<Vec<u8>, DiskdumpError> {
        let (Some(hash), Some(expected)) = (manifest.blocks.get(index), manifest.block_len(index))
        else {
            return Err(DiskdumpError::BlockIndex {
                index,
                count: manifest.blocks.len(),
            });
        };
        // Decompressed up to MAX_BLOCK_SIZE, not just `expected` bytes, so
        // that a block of the wrong length is reported with its length.
        let data = self.read_block(hash)?;
        if data.len() as u64 != expected {
            return Err(DiskdumpError::BlockLength {
                hash: *hash,
                index,
                expected,
                actual: data.len() as u64,
            });
        }
        Ok(data)
    }

    fn read_block_limited(&self, hash: &Sha256Hash, max: u64) -> Result<Vec<u8>, DiskdumpError> {
        let path = self.block_path(hash);
        let file = fs::File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                DiskdumpError::MissingBlock {
                    hash: *hash,
                    path: path.clone(),
                }
            } else {
                DiskdumpError::ReadBlock {
                    hash: *hash,
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let max_file = max_frame_len(max);
        let mut compressed = Vec::new();
        file.take(max_file.saturating_add(1))
            .read_to_end(&mut compressed)
            .map_err(|source| DiskdumpError::ReadBlock {
                hash: *hash,
                path: path.clone(),
                source,
            })?;
        if compressed.len() as u64 > max_file {
            return Err(DiskdumpError::BlockTooLarge {
                hash: *hash,
                path,
                what: "the file",
                max: max_file,
            });
        }
        // FrameDecoder reads an empty input as zero frames; diskdump never
        // writes one.
        if !compressed.starts_with(&LZ4_FRAME_MAGIC) {
            return Err(DiskdumpError::CorruptBlock {
                hash: *hash,
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "no LZ4 frame magic"),
            });
        }
        let mut data = Vec::new();
        lz4_flex::frame::FrameDecoder::new(compressed.as_slice())
            .take(max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| DiskdumpError::CorruptBlock {
                hash: *hash,
                path: path.clone(),
                source,
            })?;
        if data.len() as u64 > max {
            return Err(DiskdumpError::BlockTooLarge {
                hash: *hash,
                path,
                what: "the block",
                max,
            });
        }
        let actual = Sha256Hash::of(&data);
        if actual != *hash {
            return Err(DiskdumpError::WrongHash {
                path,
                expected: *hash,
                actual,
            });
        }
        Ok(data)
    }
}

/// Upper bound of the size of an LZ4 frame holding `len` bytes: the header
/// (at most 19 bytes), per LZ4 block of at least 64 KiB a 4-byte length and
/// a 4-byte checksum, the data stored uncompressed at worst, the end mark
/// and a content checksum.
fn max_frame_len(len: u64) -> u64 {
    let blocks = len.div_ceil(64 * 1024).max(1);
    len.saturating_add(blocks.saturating_mul(8))
        .saturating_add(32)
}

/// `N` of `N.manifest`.
fn manifest_version(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(MANIFEST_SUFFIX)?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Directory first, then numbered versions in numeric order, then other
/// names.
fn compare_manifest_paths(a: &Path, b: &Path) -> Ordering {
    a.parent()
        .cmp(&b.parent())
        .then_with(|| match (manifest_version(a), manifest_version(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.file_name().cmp(&b.file_name()))
}

#[cfg(test)]
mod tests;
