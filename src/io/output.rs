//! Targets: a new regular file (written under a temporary name in the same
//! directory and renamed into place only by [`Output::commit`]), an existing
//! block device, a FIFO, stdout, or an existing file or device changed in
//! place.
//!
//! Writes go through one cursor-style API. On regular files, all-zero 4 KiB
//! blocks are skipped (left as holes) and zero ranges are punched, so
//! outputs are sparse; on devices, zero ranges use `BLKZEROOUT`.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{device, sparse, IoError};
use crate::digest::is_zero;

/// Granularity of hole detection when writing regular files.
const SPARSE_BLOCK: usize = 4096;

/// What kind of object a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A regular file (new: under a temporary name until committed).
    File,
    /// A block device.
    BlockDevice,
    /// A pipe, FIFO, character device or stdout: sequential only.
    Stream,
}

/// An open target.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    kind: OutputKind,
    file: File,
    temp: Option<tempfile::TempPath>,
    sector_size: u32,
    size: Option<u64>,
    pos: u64,
    sparse: bool,
    /// A second handle on a new file, opened with `O_DIRECT`, for
    /// [`Output::place`]: restored images bypass the page cache.
    direct: Option<File>,
}

/// Alignment of `O_DIRECT` offsets, lengths and buffers.
const DIRECT_ALIGN: usize = 4096;

fn op_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError::Op {
        op,
        path: path.into(),
        source,
    }
}

impl Output {
    /// Opens `path` to receive a whole new image; `-` is stdout. A regular
    /// file (new or existing) is written under a temporary name beside it.
    ///
    /// # Errors
    /// [`IoError::Open`] when the target or its directory cannot be opened.
    pub fn create(path: &Path) -> Result<Output, IoError> {
        if path == Path::new("-") {
            return Self::stdout();
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                let file = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(path)
                    .map_err(|source| IoError::Open {
                        path: path.into(),
                        source,
                    })?;
                Self::for_device(path, file)
            }
            Ok(meta) if meta.file_type().is_fifo() || meta.file_type().is_char_device() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| IoError::Open {
                        path: path.into(),
                        source,
                    })?;
                Ok(Self::stream(path.into(), file))
            }
            Ok(meta) if meta.is_dir() => Err(IoError::Unsupported {
                path: path.into(),
                kind: "directory",
            }),
            existing => {
                let permissions = existing.ok().map(|m| m.permissions());
                Self::temp_file(path, permissions)
            }
        }
    }

    /// Opens a file or block device for changes in place, creating an empty
    /// regular file when nothing exists at `path`.
    ///
    /// # Errors
    /// As [`Output::open_in_place`].
    pub fn open_or_create_in_place(path: &Path) -> Result<Output, IoError> {
        if std::fs::symlink_metadata(path).is_err() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|source| IoError::Open {
                    path: path.into(),
                    source,
                })?;
        }
        Self::open_in_place(path)
    }

    /// Opens an existing file or block device for changes in place.
    ///
    /// # Errors
    /// [`IoError::Open`], or [`IoError::Unsupported`] for other objects.
    pub fn open_in_place(path: &Path) -> Result<Output, IoError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| IoError::Open {
                path: path.into(),
                source,
            })?;
        let meta = file.metadata().map_err(op_err("stat", path))?;
        if meta.file_type().is_block_device() {
            Self::for_device(path, file)
        } else if meta.is_file() {
            Ok(Output {
                path: path.into(),
                kind: OutputKind::File,
                file,
                temp: None,
                sector_size: 512,
                size: Some(meta.len()),
                pos: 0,
                sparse: false,
                direct: None,
            })
        } else {
            Err(IoError::Unsupported {
                path: path.into(),
                kind: "stream",
            })
        }
    }

    fn stdout() -> Result<Output, IoError> {
        let path = PathBuf::from("-");
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| IoError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self::stream(path, File::from(fd)))
    }

    fn stream(path: PathBuf, file: File) -> Output {
        Output {
            path,
            kind: OutputKind::Stream,
            file,
            temp: None,
            sector_size: 512,
            size: None,
            pos: 0,
            sparse: false,
            direct: None,
        }
    }

    fn for_device(path: &Path, file: File) -> Result<Output, IoError> {
        let size = device::size(&file).map_err(op_err("BLKGETSIZE64", path))?;
        let sector_size = device::logical_sector_size(&file).unwrap_or(512);
        Ok(Output {
            path: path.into(),
            kind: OutputKind::BlockDevice,
            file,
            temp: None,
            sector_size,
            size: Some(size),
            pos: 0,
            sparse: false,
            direct: None,
        })
    }

    fn temp_file(path: &Path, permissions: Option<Permissions>) -> Result<Output, IoError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        // Checked first so the error names the user's path, not the random
        // temporary one that tempfile would report.
        if let Err(source) = std::fs::metadata(dir) {
            return Err(IoError::Open {
                path: path.into(),
                source,
            });
        }
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| IoError::Open {
                path: path.into(),
                // tempfile's error names the random temporary path; keep
                // only the OS error so the message names the user's path.
                source: e.raw_os_error().map_or_else(
                    || std::io::Error::new(e.kind(), e.kind().to_string()),
                    std::io::Error::from_raw_os_error,
                ),
            })?;
        let (file, temp_path) = temp.into_parts();
        super::cleanup::register(&temp_path);
        let mode = permissions.unwrap_or_else(|| Permissions::from_mode(0o644));
        file.set_permissions(mode).map_err(op_err("chmod", path))?;
        Ok(Output {
            path: path.into(),
            kind: OutputKind::File,
            file,
            temp: Some(temp_path),
            sector_size: 512,
            size: None,
            pos: 0,
            sparse: true,
            direct: None,
        })
    }

    /// The target path as given (`-` for stdout).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kind of target.
    pub fn kind(&self) -> OutputKind {
        self.kind
    }

    /// Size of a block device or an existing in-place file.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Turns hole skipping on or off for a new regular file (off for files
    /// that are not images, such as delta files).
    pub fn set_sparse(&mut self, sparse: bool) {
        self.sparse = sparse && self.kind == OutputKind::File && self.temp.is_some();
    }

    /// Bytes written through the cursor so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Fails unless a block device can hold `needed` bytes.
    ///
    /// # Errors
    /// [`IoError::TooSmall`].
    pub fn require_capacity(&self, needed: u64) -> Result<(), IoError> {
        match (self.kind, self.size) {
            (OutputKind::BlockDevice, Some(size)) if size < needed => Err(IoError::TooSmall {
                path: self.path.clone(),
                size,
                needed,
            }),
            _ => Ok(()),
        }
    }

    /// Appends bytes at the cursor. New regular files skip all-zero 4 KiB
    /// blocks, leaving holes.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn append(&mut self, data: &[u8]) -> Result<(), IoError> {
        let pos = self.pos;
        match self.kind {
            OutputKind::Stream => {
                self.file.write_all(data).map_err(|source| IoError::Write {
                    path: self.path.clone(),
                    offset: pos,
                    source,
                })?;
            }
            OutputKind::File if self.sparse => self.write_sparse_at(pos, data)?,
            _ => self.write_at(pos, data)?,
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Appends `len` zero bytes at the cursor: a hole on new regular files,
    /// `BLKZEROOUT` on devices, literal zeros on streams.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn append_zeros(&mut self, len: u64) -> Result<(), IoError> {
        let pos = self.pos;
        match self.kind {
            OutputKind::Stream => {
                static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    self.file
                        .write_all(&ZEROS[..n])
                        .map_err(|source| IoError::Write {
                            path: self.path.clone(),
                            offset: pos + (len - left),
                            source,
                        })?;
                    left -= n as u64;
                }
            }
            OutputKind::File if self.sparse => {}
            _ => self.zero_range(pos, len)?,
        }
        self.pos += len;
        Ok(())
    }

    /// Whether pieces of a new image may be written at any offset, in any
    /// order, from several threads (files and devices; not streams).
    pub fn is_positional(&self) -> bool {
        self.kind != OutputKind::Stream
    }

    /// Writes a piece of a new image at `offset`, out of order: on a new
    /// sparse file its all-zero 4 KiB blocks stay holes.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn place(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if self.sparse {
            self.write_sparse_at(offset, data)
        } else {
            self.write_placed(offset, data)
        }
    }

    /// Makes a range of a new image read as zeros, out of order: nothing
    /// to do on a new sparse file, `BLKZEROOUT` or a hole otherwise.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn place_zeros(&self, offset: u64, len: u64) -> Result<(), IoError> {
        if self.sparse {
            Ok(())
        } else {
            self.zero_range(offset, len)
        }
    }

    /// Makes [`Output::place`] write a new regular file with `O_DIRECT`
    /// where offsets, lengths and buffers are 4 KiB aligned: a restore
    /// then neither copies through nor floods the page cache (the rest of
    /// the machine keeps its cache; fsync has nothing left to flush).
    /// Returns false, changing nothing, where the file system refuses
    /// `O_DIRECT` or the output is not a new file.
    pub fn use_direct_placement(&mut self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(temp) = &self.temp else {
            return false;
        };
        if self.kind != OutputKind::File {
            return false;
        }
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(temp)
        {
            Ok(f) => {
                self.direct = Some(f);
                true
            }
            Err(_) => false,
        }
    }

    /// Writes a run of a placed piece: `O_DIRECT` when enabled and
    /// aligned, buffered otherwise (and when the direct write is refused).
    fn write_placed(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if let Some(direct) = &self.direct {
            let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
                && data.len().is_multiple_of(DIRECT_ALIGN)
                && data.as_ptr().align_offset(DIRECT_ALIGN) == 0;
            if aligned && direct.write_all_at(data, offset).is_ok() {
                return Ok(());
            }
        }
        self.write_at(offset, data)
    }

    /// Moves the cursor past pieces written with [`Output::place`], so
    /// that [`Output::commit`] gives a new file its full length.
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// Writes `data` at `offset` (files and devices).
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|source| IoError::Write {
                path: self.path.clone(),
                offset,
                source,
            })
    }

    /// Writes `data` at `offset` of a regular file, punching holes for its
    /// all-zero 4 KiB blocks instead of writing them (a block that was data
    /// and became zeros frees its space). Other targets get plain writes.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn write_punching_zeros(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if self.kind != OutputKind::File || !offset.is_multiple_of(SPARSE_BLOCK as u64) {
            return self.write_at(offset, data);
        }
        let mut at = 0;
        while at < data.len() {
            let end = (at + SPARSE_BLOCK).min(data.len());
            let zero = is_zero(&data[at..end]);
            let mut run_end = end;
            while run_end < data.len() {
                let next = (run_end + SPARSE_BLOCK).min(data.len());
                if is_zero(&data[run_end..next]) != zero {
                    break;
                }
                run_end = next;
            }
            if zero {
                self.zero_range(offset + at as u64, (run_end - at) as u64)?;
            } else {
                self.write_at(offset + at as u64, &data[at..run_end])?;
            }
            at = run_end;
        }
        Ok(())
    }

    fn write_sparse_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let mut run_start: Option<usize> = None;
        let mut at = 0;
        while at < data.len() {
            let end = (at + SPARSE_BLOCK).min(data.len());
            if is_zero(&data[at..end]) {
                if let Some(start) = run_start.take() {
                    self.write_placed(offset + start as u64, &data[start..at])?;
                }
            } else if run_start.is_none() {
                run_start = Some(at);
            }
            at = end;
        }
        if let Some(start) = run_start {
            self.write_placed(offset + start as u64, &data[start..])?;
        }
        Ok(())
    }

    /// Makes a range read as zeros: punched hole on files (zeros written
    /// where punching is unsupported), `BLKZEROOUT` on devices.
    ///
    /// # Errors
    /// [`IoError::Write`].
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let wrap = |source| IoError::Write {
            path: self.path.clone(),
            offset,
            source,
        };
        match self.kind {
            OutputKind::BlockDevice => {
                device::zero_out(&self.file, offset, len, self.sector_size).map_err(wrap)
            }
            _ => {
                if !sparse::punch_hole(&self.file, offset, len).map_err(wrap)? {
                    device::write_zeros(&self.file, offset, len).map_err(wrap)?;
                }
                Ok(())
            }
        }
    }

    /// Makes a range read as zeros by discarding it where that works: on
    /// a block device, `BLKDISCARD` (thin pools unmap the range instead of
    /// filling with zeros), then the range is read back and whatever does
    /// not read as zeros is zeroed (`BLKZEROOUT`): not every device returns
    /// zeros after a discard. On files it punches a hole.
    ///
    /// # Errors
    /// [`IoError::Write`], or [`IoError::Read`] while checking.
    pub fn discard_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        if self.kind != OutputKind::BlockDevice || device::discard(&self.file, offset, len).is_err()
        {
            return self.zero_range(offset, len);
        }
        let mut buf = vec![0u8; (1usize << 20).min(len as usize)];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|source| IoError::Read {
                    path: self.path.clone(),
                    offset: at,
                    source,
                })?;
            if !is_zero(&buf[..n]) {
                return self.zero_range(at, end - at);
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Sets the length of a regular file (no-op for other targets).
    ///
    /// # Errors
    /// [`IoError::Op`].
    pub fn set_len(&self, len: u64) -> Result<(), IoError> {
        if self.kind == OutputKind::File {
            self.file
                .set_len(len)
                .map_err(op_err("truncate", &self.path))?;
        }
        Ok(())
    }

    /// Flushes data to stable storage (files and devices).
    ///
    /// # Errors
    /// [`IoError::Op`].
    pub fn sync(&self) -> Result<(), IoError> {
        match self.kind {
            OutputKind::Stream => Ok(()),
            _ => self.file.sync_all().map_err(op_err("fsync", &self.path)),
        }
    }

    /// Makes the output durable and visible: fsync, and for a new regular
    /// file, rename over the final path and fsync the directory.
    ///
    /// # Errors
    /// [`IoError::Op`] when syncing or renaming fails (the temporary file is
    /// then removed).
    pub fn commit(mut self) -> Result<(), IoError> {
        if self.kind == OutputKind::File && self.sparse {
            self.set_len(self.pos)?;
        }
        self.sync()?;
        if let Some(temp) = self.temp.take() {
            super::cleanup::unregister(&temp);
            temp.persist(&self.path).map_err(|e| IoError::Op {
                op: "rename",
                path: self.path.clone(),
                source: e.error,
            })?;
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Flushes a stream target's buffered data.
    ///
    /// # Errors
    /// [`IoError::Op`].
    pub fn flush(&mut self) -> Result<(), IoError> {
        self.file.flush().map_err(op_err("flush", &self.path))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            super::cleanup::unregister(temp);
        }
    }
}

/// Reads back what was written to an [`Output`], from the start.
#[derive(Debug)]
pub struct ReadBack {
    file: File,
    pos: u64,
}

impl std::io::Read for ReadBack {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Output {
    /// A reader over the bytes written so far (files and devices), used to
    /// verify an output before it is committed.
    ///
    /// # Errors
    /// [`IoError::Op`] when the descriptor cannot be duplicated.
    pub fn read_back(&self) -> Result<ReadBack, IoError> {
        let file = self.file.try_clone().map_err(op_err("dup", &self.path))?;
        Ok(ReadBack { file, pos: 0 })
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf).map_err(|e| match e {
            IoError::Write { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
