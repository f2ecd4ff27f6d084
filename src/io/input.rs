//! Opening a source: a regular file, a block device, a pipe or FIFO
//! (including bash process substitution), or `-` for stdin.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{device, sparse, IoError};

/// What kind of object a source is; decides which reads are possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A regular file: known size, positioned reads, holes.
    File,
    /// A block device: known size, positioned reads, sector alignment.
    BlockDevice,
    /// A pipe, FIFO, socket or character device: one sequential pass,
    /// size unknown until the end.
    Stream,
}

impl InputKind {
    /// Lower-case name for messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::File => "file",
            InputKind::BlockDevice => "block device",
            InputKind::Stream => "stream",
        }
    }
}

/// How to open sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputOptions {
    /// Bypass the page cache with `O_DIRECT` (files and block devices).
    pub direct: bool,
}

/// An open source.
#[derive(Debug)]
pub struct Input {
    path: PathBuf,
    kind: InputKind,
    size: Option<u64>,
    sector_size: u32,
    direct: bool,
    file: File,
}

/// Classifies an open file, returning its kind and size.
pub(crate) fn classify(file: &File, path: &Path) -> Result<(InputKind, Option<u64>, u32), IoError> {
    let meta = file.metadata().map_err(|source| IoError::Op {
        op: "stat",
        path: path.into(),
        source,
    })?;
    let ft = meta.file_type();
    if ft.is_file() {
        Ok((InputKind::File, Some(meta.len()), 512))
    } else if ft.is_block_device() {
        let size = device::size(file).map_err(|source| IoError::Op {
            op: "BLKGETSIZE64",
            path: path.into(),
            source,
        })?;
        let sector = device::logical_sector_size(file).unwrap_or(512);
        Ok((InputKind::BlockDevice, Some(size), sector))
    } else if ft.is_fifo() || ft.is_socket() || ft.is_char_device() {
        Ok((InputKind::Stream, None, 512))
    } else if ft.is_dir() {
        Err(IoError::Unsupported {
            path: path.into(),
            kind: "directory",
        })
    } else {
        Err(IoError::Unsupported {
            path: path.into(),
            kind: "special file",
        })
    }
}

impl Input {
    /// Opens `path` for reading; `-` is stdin.
    ///
    /// # Errors
    /// [`IoError::Open`] when the path cannot be opened, [`IoError::Unsupported`]
    /// for directories and other special files.
    pub fn open(path: &Path, options: &InputOptions) -> Result<Input, IoError> {
        if path == Path::new("-") {
            return Self::stdin();
        }
        let mut open = OpenOptions::new();
        open.read(true);
        let file = open.open(path).map_err(|source| IoError::Open {
            path: path.into(),
            source,
        })?;
        let (kind, size, sector_size) = classify(&file, path)?;
        let mut direct = false;
        let file = if options.direct && kind != InputKind::Stream {
            direct = true;
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .map_err(|source| IoError::Open {
                    path: path.into(),
                    source,
                })?
        } else {
            file
        };
        if kind != InputKind::Stream {
            sparse::advise_sequential(&file);
        }
        Ok(Input {
            path: path.into(),
            kind,
            size,
            sector_size,
            direct,
            file,
        })
    }

    /// Standard input. When it is redirected from a regular file or block
    /// device, it gets that object's kind and size.
    ///
    /// # Errors
    /// [`IoError::Open`] when stdin is closed.
    pub fn stdin() -> Result<Input, IoError> {
        let path = PathBuf::from("-");
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| IoError::Open {
                path: path.clone(),
                source,
            })?;
        let file = File::from(fd);
        let (kind, size, sector_size) = classify(&file, &path)?;
        Ok(Input {
            path,
            kind,
            size,
            sector_size,
            direct: false,
            file,
        })
    }

    /// The path as given (`-` for stdin).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when this is standard input.
    pub fn is_stdin(&self) -> bool {
        self.path == Path::new("-")
    }

    /// The kind of source.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// Size in bytes when known before reading.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Logical sector size (512 for everything but block devices).
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// True when opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Consumes the input, returning the open file.
    pub fn into_file(self) -> File {
        self.file
    }
}
