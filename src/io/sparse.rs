//! Sparse files and kernel hints: `SEEK_DATA`, hole punching, `posix_fadvise`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Where the next data at or after `offset` starts: `Some(pos)`, or `None`
/// when only a hole remains up to the end of the file. Filesystems without
/// `SEEK_DATA` report everything as data, which is correct, just slower.
///
/// # Errors
/// OS errors other than `ENXIO` (which means "no more data").
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: lseek on an fd we own; no memory is passed.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(offset)),
            _ => Err(err),
        };
    }
    Ok(Some(rc as u64))
}

/// Where the hole at or after `offset` starts (every file ends with one, at
/// its size). Filesystems without `SEEK_HOLE` report `u64::MAX`: all data.
///
/// # Errors
/// OS errors other than "unsupported" and `ENXIO` (past the end, reported
/// as `offset`).
pub fn next_hole(file: &File, offset: u64) -> io::Result<u64> {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(offset);
    };
    // SAFETY: lseek on an fd we own; no memory is passed.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_HOLE) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(offset),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(u64::MAX),
            _ => Err(err),
        };
    }
    Ok(rc as u64)
}

/// Deallocates `len` bytes at `offset` of a regular file, keeping its size;
/// the range then reads as zeros. Returns `Ok(false)` when the filesystem
/// cannot punch holes, so the caller writes zeros instead.
///
/// # Errors
/// OS errors other than "not supported".
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(false);
    };
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            n,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(true)
}

/// Tells the kernel the file is read sequentially, which doubles read-ahead.
/// Advisory: failures are ignored.
pub fn advise_sequential(file: &File) {
    // SAFETY: posix_fadvise on an fd we own; no memory is passed.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Bytes actually allocated on disk for a file (`st_blocks * 512`).
///
/// # Errors
/// The `fstat` error.
pub fn allocated_bytes(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}
