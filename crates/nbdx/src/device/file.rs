//! [`FileDevice`]: a regular file or a block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use libc::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};
use nbdx_proto::{AllocationFlags, Errno};

use self::sys::{is_unsupported, Os, Syscalls, BLKDISCARD, BLKZEROOUT};
use super::{check_range, run_blocking, Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};

mod sys;
#[cfg(test)]
mod tests;

/// Bytes per `pwrite` when zeroing has to write zeroes.
const ZERO_CHUNK: usize = 1 << 20;
/// Extents reported per call at most; the client asks again for the rest.
const MAX_EXTENTS: usize = 4096;

/// Optional methods, cleared when the kernel says they are not supported.
#[derive(Debug)]
struct Methods {
    punch_hole: AtomicBool,
    zero_range: AtomicBool,
    allocate: AtomicBool,
    discard: AtomicBool,
    zero_out: AtomicBool,
    dsync: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    /// Block device: requests to the kernel are in whole logical sectors;
    /// `offloaded_zero` when the queue zeroes without writing.
    Block {
        sector: u64,
        rotational: bool,
        offloaded_zero: bool,
    },
}

/// A regular file or block device served as is.
///
/// All I/O is positional (`pread`/`pwrite`), so requests run concurrently
/// on one descriptor, each inside [`run_blocking`]. Every connection shares
/// the kernel's page cache and `fdatasync` covers all of them, hence
/// `NBD_FLAG_CAN_MULTI_CONN`.
///
/// | operation | regular file | block device |
/// |---|---|---|
/// | flush | `fdatasync` | `fdatasync` |
/// | FUA | `pwritev2(RWF_DSYNC)`, else write + `fdatasync` | same |
/// | trim | `fallocate(PUNCH_HOLE)` | `BLKDISCARD` (whole sectors) |
/// | zero | `PUNCH_HOLE`, else `ZERO_RANGE`, else punch + allocate | `fallocate(PUNCH_HOLE)` (offloaded, may unmap), else `BLKZEROOUT` (with `FAST_ZERO` only if the queue offloads it) |
/// | extents | `SEEK_DATA`/`SEEK_HOLE` | not offered: all data |
/// | cache | `posix_fadvise(WILLNEED)` | same |
///
/// `NO_HOLE` skips the `PUNCH_HOLE` attempts. Support is learnt lazily: the first
/// `EOPNOTSUPP` clears a method for good, and zeroing falls back to writing
/// zeroes (unless `FAST_ZERO` asked for speed: then `NBD_ENOTSUP` before any
/// byte changes), while trim, being a hint, succeeds doing nothing.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    read_only: bool,
    kind: Kind,
    methods: Methods,
    sys: Arc<dyn Syscalls>,
}

impl FileDevice {
    /// Opens `path` (not created if missing), for reading only if `read_only`.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        Self::from_file(OpenOptions::new().read(true).write(!read_only).open(path)?, read_only)
    }

    /// Serves an open regular file or block device; unless `read_only`, it
    /// must be open for writing.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        Self::with_syscalls(file, read_only, Arc::new(Os))
    }

    pub(crate) fn with_syscalls(file: File, read_only: bool, sys: Arc<dyn Syscalls>) -> io::Result<Self> {
        if !read_only && sys::opened_read_only(&file)? {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "opened read-only but served writable"));
        }
        let meta = file.metadata()?;
        let (size, kind) = if meta.file_type().is_block_device() {
            let (size, sector) = sys::block_geometry(&file)?;
            let rotational = sys::queue_attribute(meta.rdev(), "rotational") == Some(1);
            let offloaded_zero = sys::queue_attribute(meta.rdev(), "write_zeroes_max_bytes").is_some_and(|n| n > 0);
            (size, Kind::Block { sector, rotational, offloaded_zero })
        } else if meta.is_file() {
            (meta.len(), Kind::File)
        } else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file or block device"));
        };
        let yes = || AtomicBool::new(true);
        let methods = Methods {
            punch_hole: yes(),
            zero_range: yes(),
            allocate: yes(),
            discard: yes(),
            zero_out: yes(),
            dsync: yes(),
        };
        Ok(Self { file, size, read_only, kind, methods, sys })
    }

    /// Whether this is a block device (otherwise a regular file).
    pub fn is_block_device(&self) -> bool {
        matches!(self.kind, Kind::Block { .. })
    }

    fn check_writable(&self, offset: u64, length: u64, beyond: Errno) -> DeviceResult<()> {
        if self.read_only {
            return Err(DeviceError::read_only());
        }
        check_range(self.size, offset, length, beyond)
    }

    /// Tries an optional method unless known unsupported: `Ok(true)` if it
    /// did the job, `Ok(false)` if the caller must fall back.
    fn attempt(&self, method: &AtomicBool, call: impl FnOnce() -> io::Result<()>) -> io::Result<bool> {
        if !method.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match call() {
            Ok(()) => Ok(true),
            Err(e) if is_unsupported(&e) => {
                tracing::debug!(error = %e, "method not supported; falling back");
                method.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn fallocate(&self, method: &AtomicBool, mode: libc::c_int, offset: u64, length: u64) -> io::Result<bool> {
        self.attempt(method, || self.sys.fallocate(&self.file, mode, offset, length))
    }

    fn write_durably(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.attempt(&self.methods.dsync, || self.sys.pwrite_dsync(&self.file, data, offset))? {
            return Ok(());
        }
        self.file.write_all_at(data, offset)?;
        self.file.sync_data()
    }

    fn write_zero_bytes(&self, mut offset: u64, length: u64) -> io::Result<()> {
        static ZEROES: OnceLock<Box<[u8]>> = OnceLock::new();
        let zeroes = ZEROES.get_or_init(|| vec![0; ZERO_CHUNK].into_boxed_slice());
        let end = offset + length;
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Zeroes a range of a regular file; `Ok(false)` when only writing
    /// zeroes is left and `fast` forbids it.
    fn zero_file(&self, offset: u64, length: u64, flags: ZeroFlags) -> io::Result<bool> {
        let m = &self.methods;
        let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        if !flags.no_hole && self.fallocate(&m.punch_hole, punch, offset, length)? {
            return Ok(true);
        }
        if self.fallocate(&m.zero_range, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)? {
            return Ok(true);
        }
        if m.allocate.load(Ordering::Relaxed) && self.fallocate(&m.punch_hole, punch, offset, length)? {
            // Zero now; provision again for NO_HOLE. Should allocation turn
            // out unsupported, writing zeroes provisions instead.
            if self.fallocate(&m.allocate, FALLOC_FL_KEEP_SIZE, offset, length)? || flags.fast {
                return Ok(true);
            }
        }
        if flags.fast {
            return Ok(false);
        }
        self.write_zero_bytes(offset, length).map(|()| true)
    }

    /// Zeroes a range of a block device: whole sectors by the kernel, the
    /// unaligned head and tail by writing zeroes once the middle succeeded.
    fn zero_block(&self, offset: u64, length: u64, sector: u64, flags: ZeroFlags, offloaded: bool) -> io::Result<bool> {
        let end = offset + length;
        let (start, stop) = (offset.next_multiple_of(sector), end / sector * sector);
        if start < stop {
            let m = &self.methods;
            let len = stop - start;
            // On a block device PUNCH_HOLE is an offloaded zero-out that may
            // unmap, or EOPNOTSUPP without fallback: fast either way.
            let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
            let done = (!flags.no_hole && self.fallocate(&m.punch_hole, punch, start, len)?)
                || ((offloaded || !flags.fast)
                    && self.attempt(&m.zero_out, || self.sys.block_range(&self.file, BLKZEROOUT, start, len))?);
            if !done {
                if flags.fast {
                    return Ok(false);
                }
                self.write_zero_bytes(start, len)?;
            }
            self.write_zero_bytes(offset, start - offset)?;
            self.write_zero_bytes(stop, end - stop)?;
        } else {
            self.write_zero_bytes(offset, length)?;
        }
        Ok(true)
    }

    fn extents_blocking(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let end = offset + length;
        let (hole, data) = (AllocationFlags::HOLE | AllocationFlags::ZERO, AllocationFlags::empty());
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end && extents.len() < MAX_EXTENTS {
            let next_data = sys::seek(&self.file, pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            if next_data > pos {
                extents.push(Extent { length: next_data - pos, flags: hole });
                pos = next_data;
                continue;
            }
            let next_hole = sys::seek(&self.file, pos, libc::SEEK_HOLE)?.unwrap_or(end).clamp(pos + 1, end);
            extents.push(Extent { length: next_hole - pos, flags: data });
            pos = next_hole;
        }
        Ok(extents)
    }
}

/// An OS error for the wire, with the operation named for the logs.
fn os_error(op: &str, e: io::Error) -> DeviceError {
    let mapped = DeviceError::from(e);
    DeviceError::new(mapped.errno(), format!("{op}: {}", mapped.message()))
}

#[async_trait]
impl Device for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        let writable = !self.read_only;
        Caps {
            read_only: self.read_only,
            flush: true,
            fua: if writable { Support::Native } else { Support::None },
            trim: writable,
            zero: if writable { Support::Native } else { Support::None },
            fast_zero: writable,
            cache: Support::Native,
            multi_conn: true,
            rotational: matches!(self.kind, Kind::Block { rotational: true, .. }),
            extents: self.kind == Kind::File,
            ..Caps::default()
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        check_range(self.size, offset, buf.len() as u64, Errno::EINVAL)?;
        // Page-cache hits are served on the spot; only what must come from
        // the disk pays for handing the worker's other tasks away.
        let cached = sys::read_cached(&self.file, buf, offset);
        if cached == buf.len() {
            return Ok(());
        }
        let rest = &mut buf[cached..];
        run_blocking(|| self.file.read_exact_at(rest, offset + cached as u64)).map_err(|e| os_error("read", e))
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, data.len() as u64, Errno::ENOSPC)?;
        run_blocking(|| match fua {
            true => self.write_durably(data, offset),
            false => self.file.write_all_at(data, offset),
        })
        .map_err(|e| os_error("write", e))
    }

    async fn flush(&self) -> DeviceResult<()> {
        run_blocking(|| self.file.sync_data()).map_err(|e| os_error("fdatasync", e))
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, length, Errno::EINVAL)?;
        run_blocking(|| {
            match self.kind {
                Kind::File if length > 0 => {
                    let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                    self.fallocate(&self.methods.punch_hole, mode, offset, length)?;
                }
                // Trim may shrink the range to whole sectors ("NBD_CMD_TRIM").
                Kind::Block { sector, .. } => {
                    let (start, stop) = (offset.next_multiple_of(sector), (offset + length) / sector * sector);
                    if start < stop {
                        let discard = || self.sys.block_range(&self.file, BLKDISCARD, start, stop - start);
                        self.attempt(&self.methods.discard, discard)?;
                    }
                }
                Kind::File => {}
            }
            if fua {
                self.file.sync_data()?;
            }
            Ok(())
        })
        .map_err(|e| os_error("trim", e))
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.check_writable(offset, length, Errno::ENOSPC)?;
        if length == 0 {
            return Ok(());
        }
        let zeroed = run_blocking(|| {
            let zeroed = match self.kind {
                Kind::File => self.zero_file(offset, length, flags)?,
                Kind::Block { sector, offloaded_zero, .. } => {
                    self.zero_block(offset, length, sector, flags, offloaded_zero)?
                }
            };
            if zeroed && flags.fua {
                self.file.sync_data()?;
            }
            Ok(zeroed)
        })
        .map_err(|e| os_error("write zeroes", e))?;
        match zeroed {
            true => Ok(()),
            false => Err(DeviceError::new(Errno::ENOTSUP, "no fast way to zero here")),
        }
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        check_range(self.size, offset, length, Errno::EINVAL)?;
        if length == 0 {
            return Ok(());
        }
        run_blocking(|| sys::will_need(&self.file, offset, length)).map_err(|e| os_error("posix_fadvise", e))
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        check_range(self.size, offset, length, Errno::EINVAL)?;
        match run_blocking(|| self.extents_blocking(offset, length)) {
            // Nothing is known: "a server MAY always safely report a status of 0".
            Err(e) if is_unsupported(&e) && length > 0 => Ok(vec![Extent { length, flags: AllocationFlags::empty() }]),
            result => result.map_err(|e| os_error("lseek", e)),
        }
    }
}
