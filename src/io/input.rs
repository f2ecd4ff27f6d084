//! Opening a source: a regular file, a block device, a pipe or FIFO
//! (including bash process substitution), `-` for stdin, or an NBD export:
//! an `nbd://` / `nbd+unix://` URI, or (with [`SourceFormat::Auto`]) an
//! image file in a format other than raw (qcow2, vmdk, ...), served by a
//! private `qemu-nbd`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{device, sparse, IoError};
use crate::nbd::client::{uri, NbdUri};
use crate::nbd::qemu;
use crate::nbd::source::{NbdSource, NbdSourceOptions, SourceError};

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

/// How to read image files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceFormat {
    /// Every file is read byte for byte.
    #[default]
    Raw,
    /// A file whose header `qemu-img info` names a format other than raw
    /// (qcow2, vmdk, vhdx, ...) is read through a private `qemu-nbd`.
    Auto,
}

/// How to open sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputOptions {
    /// Bypass the page cache with `O_DIRECT` (files and block devices).
    pub direct: bool,
    /// How to read image files.
    pub format: SourceFormat,
}

/// What an [`Input`] reads from.
#[derive(Debug)]
enum Backing {
    File(File),
    /// An NBD export: a block device as far as reads go (known size,
    /// positioned reads).
    Nbd(Arc<NbdSource>),
}

/// An open source.
#[derive(Debug)]
pub struct Input {
    path: PathBuf,
    kind: InputKind,
    size: Option<u64>,
    sector_size: u32,
    direct: bool,
    backing: Backing,
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
        if let Some(text) = path.to_str().filter(|t| uri::is_nbd_uri(t)) {
            return Self::nbd_uri(text, &NbdSourceOptions::default());
        }
        if options.format == SourceFormat::Auto {
            if let Some(format) = image_format(path)? {
                return Self::image(path, &format, &NbdSourceOptions::default());
            }
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
            backing: Backing::File(file),
        })
    }

    /// Connects to the NBD export `uri`.
    ///
    /// # Errors
    /// [`IoError::Nbd`] for a bad URI or a failed connection.
    pub fn nbd_uri(uri: &str, options: &NbdSourceOptions) -> Result<Input, IoError> {
        let parsed = NbdUri::parse(uri).map_err(SourceError::from)?;
        let source = NbdSource::connect(&parsed, options).map_err(SourceError::from)?;
        Ok(Self::from_nbd(PathBuf::from(uri), source))
    }

    /// Reads the image `path` of `format` through a private qemu-nbd.
    ///
    /// # Errors
    /// [`IoError::Nbd`] when qemu-nbd is missing or fails.
    pub fn image(path: &Path, format: &str, options: &NbdSourceOptions) -> Result<Input, IoError> {
        let source = NbdSource::serve_image(path, format, options)?;
        Ok(Self::from_nbd(path.to_path_buf(), source))
    }

    fn from_nbd(path: PathBuf, source: NbdSource) -> Input {
        Input {
            path,
            kind: InputKind::BlockDevice,
            size: Some(source.size()),
            sector_size: 512,
            direct: false,
            backing: Backing::Nbd(Arc::new(source)),
        }
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
            backing: Backing::File(file),
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

    /// A second handle on the same source (a duplicated descriptor, or
    /// the same NBD connection).
    ///
    /// # Errors
    /// [`IoError::Op`] when the descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<Input, IoError> {
        let backing = match &self.backing {
            Backing::File(f) => Backing::File(f.try_clone().map_err(|source| IoError::Op {
                op: "dup",
                path: self.path.clone(),
                source,
            })?),
            Backing::Nbd(s) => Backing::Nbd(s.clone()),
        };
        Ok(Input {
            path: self.path.clone(),
            kind: self.kind,
            size: self.size,
            sector_size: self.sector_size,
            direct: self.direct,
            backing,
        })
    }

    /// The open file; `None` for an NBD export.
    pub fn file(&self) -> Option<&File> {
        match &self.backing {
            Backing::File(f) => Some(f),
            Backing::Nbd(_) => None,
        }
    }

    /// The NBD export behind this input, if it is one.
    pub fn nbd(&self) -> Option<&Arc<NbdSource>> {
        match &self.backing {
            Backing::Nbd(s) => Some(s),
            Backing::File(_) => None,
        }
    }

    /// Consumes the input, returning the open file.
    ///
    /// # Errors
    /// [`IoError::Unsupported`] for an NBD export, which is not a file.
    pub fn into_file(self) -> Result<File, IoError> {
        match self.backing {
            Backing::File(f) => Ok(f),
            Backing::Nbd(_) => Err(IoError::Unsupported {
                path: self.path,
                kind: "NBD export",
            }),
        }
    }

    /// Fills `buf` from `offset` (files, block devices and NBD exports).
    ///
    /// # Errors
    /// [`IoError::Read`] (a short read is `UnexpectedEof`), [`IoError::Nbd`].
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        use std::os::unix::fs::FileExt;
        match &self.backing {
            Backing::File(f) => f
                .read_exact_at(buf, offset)
                .map_err(|source| IoError::Read {
                    path: self.path.clone(),
                    offset,
                    source,
                }),
            Backing::Nbd(s) => Ok(s.read_at(buf, offset).map_err(SourceError::from)?),
        }
    }
}

/// The format of an image file when it is not raw: regular files and
/// block devices whose header qemu would probe as an image format are
/// asked about with `qemu-img info`.
///
/// # Errors
/// The file cannot be read, or qemu-img is missing or fails on it.
pub fn image_format(path: &Path) -> Result<Option<String>, IoError> {
    use std::io::Read;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None); // Input::open reports it
    };
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|source| IoError::Open {
            path: path.into(),
            source,
        })?;
    if !qemu::looks_like_image(&head) {
        return Ok(None);
    }
    let info = qemu::image_info(path).map_err(SourceError::from)?;
    Ok((info.format != "raw").then_some(info.format))
}
