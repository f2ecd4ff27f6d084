//! Block-device ioctls: size, logical sector size, zero-out and discard.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

// From <linux/fs.h>; stable kernel ABI. The request's type is the libc's
// (`unsigned long` in glibc, `int` in musl): the 32-bit codes are cast.
const BLKSSZGET: libc::Ioctl = 0x1268_u32 as libc::Ioctl;
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272_u32 as libc::Ioctl;
const BLKDISCARD: libc::Ioctl = 0x1277_u32 as libc::Ioctl;
const BLKZEROOUT: libc::Ioctl = 0x127f_u32 as libc::Ioctl;

/// Size in bytes of the block device open as `file` (`BLKGETSIZE64`).
///
/// # Errors
/// The ioctl's OS error (e.g. `ENOTTY` when `file` is no block device).
pub fn size(file: &File) -> io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live, properly aligned u64 for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes)
}

/// Logical sector size of the block device (`BLKSSZGET`).
///
/// # Errors
/// The ioctl's OS error.
pub fn logical_sector_size(file: &File) -> io::Result<u32> {
    let mut sector: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a
    // live c_int for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut sector as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(sector).map_err(|_| io::Error::other("negative sector size"))
}

fn range_ioctl(file: &File, request: libc::Ioctl, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT and BLKDISCARD read two u64 (start, length) from the
    // pointer, which points to a live [u64; 2] for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, range.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `len` bytes at `offset` read as zeros: `BLKZEROOUT` (which lets the
/// device unmap or write zeros efficiently), falling back to writing zeros
/// where the device does not support it. Offset and length must be
/// multiples of the logical sector size for the ioctl; unaligned edges are
/// written as zeros.
///
/// # Errors
/// The OS error of the ioctl or of the fallback writes.
pub fn zero_out(file: &File, offset: u64, len: u64, sector: u32) -> io::Result<()> {
    let sector = u64::from(sector.max(512));
    let start = offset.div_ceil(sector) * sector;
    let end = (offset + len) / sector * sector;
    if end > start {
        write_zeros(file, offset, start - offset)?;
        if range_ioctl(file, BLKZEROOUT, start, end - start).is_err() {
            write_zeros(file, start, end - start)?;
        }
        write_zeros(file, end, offset + len - end)
    } else {
        write_zeros(file, offset, len)
    }
}

/// Discards (unmaps) a range, so thin pools and SSDs free it. Not all devices
/// read zeros afterwards: callers that need zeros use [`zero_out`].
///
/// # Errors
/// The ioctl's OS error (`EOPNOTSUPP` when discard is unsupported).
pub fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    range_ioctl(file, BLKDISCARD, offset, len)
}

/// Writes `len` zero bytes at `offset` with positioned writes.
///
/// # Errors
/// The OS error of a failed write.
pub fn write_zeros(file: &File, mut offset: u64, mut len: u64) -> io::Result<()> {
    static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// Whether the byte at `offset` of `file` is in the page cache: a one-byte
/// `preadv2(RWF_NOWAIT)`, which fails with `EAGAIN` instead of going to
/// the disk. False when the kernel does not support it.
pub fn page_cached(file: &File, offset: u64) -> bool {
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return false;
    };
    let mut byte = 0u8;
    let iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: `iov` describes one writable byte that lives across the
    // call; preadv2 writes at most `iov_len` bytes into it.
    let rc = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    rc >= 0
}
