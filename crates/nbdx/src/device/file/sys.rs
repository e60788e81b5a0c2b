//! The Linux system calls behind [`FileDevice`](super::FileDevice), each a
//! small safe wrapper returning [`io::Result`]. The ones whose support
//! varies by filesystem or device go through [`Syscalls`], so that tests can
//! stand in an implementation that reports `EOPNOTSUPP`.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;

use libc::{c_int, c_void, off_t};

/// Linux ioctl numbers of `<linux/fs.h>` that `libc` does not define,
/// encoded as `_IO`/`_IOR(0x12, nr, ...)` for the target's ioctl layout.
mod ioc {
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    const fn encode(read: bool, nr: u32, size: u32) -> u32 {
        (if read { 2 } else { 1 }) << 29 | size << 16 | 0x12 << 8 | nr
    }
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    const fn encode(read: bool, nr: u32, size: u32) -> u32 {
        (if read { 2 } else { 0 }) << 30 | size << 16 | 0x12 << 8 | nr
    }

    /// `BLKSSZGET`: logical sector size (also in `libc`, checked in tests).
    pub const BLKSSZGET: u32 = encode(false, 104, 0);
    /// `BLKGETSIZE64`: device size in bytes, `_IOR(0x12, 114, size_t)`.
    pub const BLKGETSIZE64: u32 = encode(true, 114, std::mem::size_of::<usize>() as u32);
    /// `BLKDISCARD`: discard a `[start, length]` byte range.
    pub const BLKDISCARD: u32 = encode(false, 119, 0);
    /// `BLKZEROOUT`: zero a `[start, length]` byte range.
    pub const BLKZEROOUT: u32 = encode(false, 127, 0);
}
pub(crate) use ioc::{BLKDISCARD, BLKGETSIZE64, BLKSSZGET, BLKZEROOUT};

/// The calls whose support depends on the filesystem or the device.
/// Every method defaults to the real system call.
pub(crate) trait Syscalls: Send + Sync + fmt::Debug {
    /// `fallocate(2)` with `mode` (`FALLOC_FL_*`).
    fn fallocate(&self, file: &File, mode: c_int, offset: u64, length: u64) -> io::Result<()> {
        let (offset, length) = (to_off(offset)?, to_off(length)?);
        // SAFETY: plain integer arguments on a descriptor `file` keeps open.
        retry(|| unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) } as isize).map(drop)
    }

    /// A block device ioctl taking a `[start, length]` range: `BLKDISCARD`
    /// or `BLKZEROOUT`.
    fn block_range(&self, file: &File, request: u32, offset: u64, length: u64) -> io::Result<()> {
        let range = [offset, length];
        // SAFETY: both requests read exactly two u64 from the pointer, which
        // points to `range`, alive for the whole call.
        retry(|| unsafe { libc::ioctl(file.as_raw_fd(), request as libc::Ioctl, range.as_ptr()) } as isize).map(drop)
    }

    /// `pwritev2(RWF_DSYNC)`: a write that is durable when it returns.
    fn pwrite_dsync(&self, file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        while !data.is_empty() {
            let iov = libc::iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: data.len() };
            let at = to_off(offset)?;
            // SAFETY: `iov` describes `data`, valid for reads of `iov_len`
            // bytes during the call; the kernel only reads through it.
            let written = retry(|| unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at, libc::RWF_DSYNC) })?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[written..];
            offset += written as u64;
        }
        Ok(())
    }
}

/// Reads what the page cache already holds of `buf.len()` bytes at
/// `offset`, without blocking (`preadv2(RWF_NOWAIT)`): returns how many
/// bytes were read, 0 when the first page is not cached (`EAGAIN`) or the
/// kernel does not support the flag. The caller reads the rest the blocking
/// way.
pub(crate) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec { iov_base: rest.as_mut_ptr() as *mut c_void, iov_len: rest.len() };
        let Ok(at) = to_off(offset + done as u64) else { break };
        // SAFETY: `iov` describes `rest`, valid for writes of `iov_len` bytes
        // during the call; nothing else borrows it meanwhile.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Os;

impl Syscalls for Os {}

/// Whether an error says "this call is not supported here" rather than
/// "this call failed": the caller then remembers and falls back.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY))
}

fn to_off(value: u64) -> io::Result<off_t> {
    off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// Runs a call returning -1 and `errno` on failure, retrying on `EINTR`.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        match call() {
            -1 => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e => return Err(e),
            },
            n => return Ok(n as usize),
        }
    }
}

/// `lseek(SEEK_DATA or SEEK_HOLE)`; `None` when there is no data at or after
/// `offset` (`ENXIO`). Only the returned offset is used, so the shared file
/// position moving under concurrent calls does not matter.
pub(crate) fn seek(file: &File, offset: u64, whence: c_int) -> io::Result<Option<u64>> {
    let at = to_off(offset)?;
    // SAFETY: plain integer arguments on a descriptor `file` keeps open.
    match retry(|| unsafe { libc::lseek(file.as_raw_fd(), at, whence) } as isize) {
        Ok(pos) => Ok(Some(pos as u64)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `posix_fadvise(POSIX_FADV_WILLNEED)`: start reading a range into the
/// page cache.
pub(crate) fn will_need(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let (offset, length) = (to_off(offset)?, to_off(length)?);
    // SAFETY: plain integer arguments on a descriptor `file` keeps open.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, length, libc::POSIX_FADV_WILLNEED) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Whether the descriptor was opened for reading only.
pub(crate) fn opened_read_only(file: &File) -> io::Result<bool> {
    // SAFETY: F_GETFL takes no argument and only returns the flags.
    let flags = retry(|| unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) } as isize)?;
    Ok(flags as c_int & libc::O_ACCMODE == libc::O_RDONLY)
}

/// Size in bytes and logical sector size of a block device.
pub(crate) fn block_geometry(file: &File) -> io::Result<(u64, u64)> {
    let mut size: u64 = 0;
    let mut sector: c_int = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 (whatever the size encoded in its
    // number) through the pointer, which points to `size`.
    retry(|| unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as libc::Ioctl, &mut size as *mut u64) } as isize)?;
    // SAFETY: BLKSSZGET writes one int through the pointer, to `sector`.
    retry(|| unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET as libc::Ioctl, &mut sector as *mut c_int) } as isize)?;
    Ok((size, u64::try_from(sector).unwrap_or(512).max(512)))
}

/// A block queue attribute (`rotational`, `write_zeroes_max_bytes`) of the
/// device `rdev`, from `/sys/dev/block/MAJ:MIN/queue/` or, for a partition,
/// from its disk's `queue/` one level up.
pub(crate) fn queue_attribute(rdev: u64, name: &str) -> Option<u64> {
    let dir = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    [format!("{dir}/queue/{name}"), format!("{dir}/../queue/{name}")]
        .iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_reads_return_a_correct_prefix_and_stop_at_the_end_of_the_file() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let mut buf = vec![0u8; 50_000];
        let n = read_cached(&f, &mut buf, 30_000);
        assert!(n <= buf.len());
        assert_eq!(&buf[..n], &data[30_000..30_000 + n]);
        let mut tail = vec![0u8; 10];
        let n = read_cached(&f, &mut tail, 99_995);
        assert!(n <= 5, "read past the end of the file");
    }

    #[test]
    fn ioctl_numbers_follow_the_targets_encoding() {
        assert_eq!(BLKSSZGET as libc::Ioctl, libc::BLKSSZGET);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
        assert_eq!((BLKGETSIZE64, BLKDISCARD, BLKZEROOUT), (0x8008_1272, 0x1277, 0x127f));
    }

    #[test]
    fn only_not_supported_errors_count_as_unsupported() {
        for errno in [libc::EOPNOTSUPP, libc::ENOSYS, libc::ENOTTY] {
            assert!(is_unsupported(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::EIO, libc::EINVAL, libc::ENOSPC] {
            assert!(!is_unsupported(&io::Error::from_raw_os_error(errno)));
        }
    }

    #[test]
    fn offsets_beyond_off_t_fail_with_eoverflow() {
        assert_eq!(to_off(u64::MAX).unwrap_err().raw_os_error(), Some(libc::EOVERFLOW));
    }
}
