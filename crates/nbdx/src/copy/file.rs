//! Local files and block devices as copy ends, over [`FileDevice`]
//! (positional I/O, `SEEK_DATA`/`SEEK_HOLE`, hole punching, `BLKZEROOUT`).
//!
//! A regular destination file is created if missing and sized to the
//! source. When its old contents are all overwritten anyway (it is no
//! larger than the source), it is truncated to nothing first, which makes
//! it one big hole: zero ranges of the source then cost nothing and the
//! copy is as sparse as the source. A larger file keeps its tail, and its
//! zero ranges are punched. A block device must be at least as large as
//! the source.
//!
//! File I/O blocks a thread ([`run_blocking`](crate::device::run_blocking));
//! a semaphore keeps a few calls at a time so that many requests in flight
//! do not turn into as many threads.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use nbdx_proto::AllocationFlags;
use tokio::sync::Semaphore;

use super::ends::{Reader, Writer};
use super::{describe, EndError, EndResult};
use crate::device::{run_blocking, Device, Extent, FileDevice, ZeroFlags};

/// Calls in flight at once on a source file, or on a destination block
/// device, when they block.
const FILE_CALLS: usize = 4;
/// Writes in flight at once on a destination regular file: one. Buffered
/// writes to one file serialize on its inode lock anyway; letting several
/// threads contend for it cost a third more CPU than the copying itself.
const FILE_WRITES: usize = 1;

/// What a path or an inherited descriptor turned out to be.
pub(crate) enum Opened {
    /// A regular file or block device.
    Random(File),
    /// A pipe, socket or character device: read or written in order.
    Stream(File),
}

/// Classifies an open file.
pub(crate) fn classify(file: File) -> std::io::Result<Opened> {
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if meta.is_file() || kind.is_block_device() {
        Ok(Opened::Random(file))
    } else {
        Ok(Opened::Stream(file))
    }
}

/// (device, inode) of a path, to refuse copying a file onto itself.
pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A file or block device read from. Reads of what the page cache holds
/// run inline ([`FileDevice`] tries `preadv2(RWF_NOWAIT)` first).
#[derive(Debug)]
pub(crate) struct FileReader {
    dev: FileDevice,
    calls: Semaphore,
}

impl FileReader {
    pub fn new(file: File) -> EndResult<Self> {
        let dev = FileDevice::from_file(file, true).map_err(|e| EndError::source(describe(&e)))?;
        Ok(Self { dev, calls: Semaphore::new(FILE_CALLS) })
    }
}

#[async_trait]
impl Reader for FileReader {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    async fn extents(&self, offset: u64, len: u64) -> EndResult<Vec<Extent>> {
        if !self.dev.caps().extents {
            return Ok(vec![Extent { length: len, flags: AllocationFlags::empty() }]);
        }
        let _permit = self.calls.acquire().await;
        self.dev.extents(offset, len).await.map_err(|e| EndError::source(e.message()))
    }

    async fn read(&self, offset: u64, mut buf: Vec<u8>) -> EndResult<Vec<u8>> {
        let _permit = self.calls.acquire().await;
        self.dev.read(offset, &mut buf).await.map_err(|e| EndError::source(e.message()))?;
        Ok(buf)
    }
}

/// A file or block device written to.
#[derive(Debug)]
pub(crate) struct FileWriter {
    dev: FileDevice,
    /// For a regular file, the same open file: writes into the page cache
    /// run inline (see [`Writer::write`] below).
    inline: Option<File>,
    known_zero: bool,
    calls: Semaphore,
    /// Written ranges whose writeback was started, oldest first.
    writeback: std::sync::Mutex<VecDeque<(u64, u64)>>,
}

/// A destination file opened and checked, not yet changed.
pub(crate) struct PendingFile {
    file: File,
    /// Current size.
    size: u64,
    block_device: bool,
}

impl PendingFile {
    /// Opens (creating if missing) a destination path for writing.
    pub fn open(path: &Path) -> EndResult<Opened> {
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(path);
        let file = file.map_err(|e| EndError::destination(describe(&e)))?;
        classify(file).map_err(|e| EndError::destination(describe(&e)))
    }

    /// Checks an open regular file or block device (e.g. an inherited
    /// standard output); fails if it is in append mode, where positional
    /// writes would go to the end.
    pub fn new(file: File) -> EndResult<Self> {
        let err = |e: std::io::Error| EndError::destination(describe(&e));
        let meta = file.metadata().map_err(err)?;
        let block_device = meta.file_type().is_block_device();
        if append_mode(&file) {
            return Err(EndError::destination("opened in append mode (use > rather than >>)"));
        }
        let size = match block_device {
            true => FileDevice::from_file(file.try_clone().map_err(err)?, false).map_err(err)?.size(),
            false => meta.len(),
        };
        Ok(Self { file, size, block_device })
    }

    /// Size now; a regular file can grow, so only a block device has a limit.
    pub fn limit(&self) -> Option<u64> {
        self.block_device.then_some(self.size)
    }

    /// Sizes a regular file for a source of `len` bytes (see the module
    /// docs; for a stream, `None`, the file is emptied and takes the
    /// stream's length) and returns the writer.
    pub fn prepare(self, len: Option<u64>, assume_zero: bool) -> EndResult<Arc<dyn Writer>> {
        let err = |e: std::io::Error| EndError::destination(describe(&e));
        let mut known_zero = assume_zero;
        if !self.block_device {
            let Some(len) = len else {
                self.file.set_len(0).map_err(err)?;
                return Ok(Arc::new(GrowingFile { file: self.file, calls: Semaphore::new(FILE_WRITES) }));
            };
            if self.size <= len {
                if self.size > 0 {
                    self.file.set_len(0).map_err(err)?;
                }
                self.file.set_len(len).map_err(err)?;
                known_zero = true;
            }
        }
        let inline = match self.block_device {
            true => None,
            false => Some(self.file.try_clone().map_err(err)?),
        };
        let calls = Semaphore::new(if inline.is_some() { FILE_WRITES } else { FILE_CALLS });
        let dev = FileDevice::from_file(self.file, false).map_err(err)?;
        Ok(Arc::new(FileWriter { dev, inline, known_zero, calls, writeback: Default::default() }))
    }
}

/// Ranges of a destination file written and not yet known to be on disk.
/// Beyond this many, the oldest is waited for and dropped from the cache.
const WRITEBACK_WINDOWS: usize = 32;

impl FileWriter {
    /// Starts writing a range to disk at once, and waits for (then evicts
    /// from the page cache) the range written [`WRITEBACK_WINDOWS`] writes
    /// ago. The copy then keeps pace with the disk instead of filling the
    /// page cache (whose reclaim, and the final flush of everything at
    /// once, cost more CPU and time), and does not push other files'
    /// pages out of the cache. Errors are left to the final flush.
    fn start_writeback(&self, file: &File, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        let mut windows = self.writeback.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= WRITEBACK_WINDOWS {
            if let Some((o, l)) = windows.pop_front() {
                let wait =
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // SAFETY: plain integer arguments on a descriptor `file` keeps open.
                unsafe {
                    libc::sync_file_range(fd, o as i64, l as i64, wait);
                    libc::posix_fadvise(fd, o as i64, l as i64, libc::POSIX_FADV_DONTNEED);
                }
            }
        }
        // SAFETY: as above.
        unsafe { libc::sync_file_range(fd, off, n, libc::SYNC_FILE_RANGE_WRITE) };
        windows.push_back((offset, len));
    }
}

fn append_mode(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL takes no argument and only returns the flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags != -1 && flags & libc::O_APPEND != 0
}

#[async_trait]
impl Writer for FileWriter {
    fn size(&self) -> Option<u64> {
        Some(self.dev.size())
    }

    fn known_zero(&self) -> bool {
        self.known_zero
    }

    async fn write(&self, offset: u64, data: &[u8]) -> EndResult<()> {
        let _permit = self.calls.acquire().await;
        if let Some(file) = &self.inline {
            // A buffered write to a regular file is a copy into the page
            // cache, and waits only when writeback throttles it, which is
            // when the disk is the bottleneck anyway. Handing each write to
            // another thread (block_in_place) cost more than it saved: two
            // context switches per request.
            file.write_all_at(data, offset).map_err(|e| EndError::destination(describe(&e)))?;
            self.start_writeback(file, offset, data.len() as u64);
            return Ok(());
        }
        self.dev.write(offset, data, false).await.map_err(|e| EndError::destination(e.message()))
    }

    async fn zero(&self, offset: u64, len: u64) -> EndResult<()> {
        let _permit = self.calls.acquire().await;
        self.dev.write_zeroes(offset, len, ZeroFlags::default()).await.map_err(|e| EndError::destination(e.message()))
    }

    async fn flush(&self) -> EndResult<()> {
        self.dev.flush().await.map_err(|e| EndError::destination(e.message()))
    }
}

/// An emptied regular file that a stream is written to: it reads as zeroes
/// everywhere, grows with each write, and takes the stream's length at the
/// end (so a zero tail stays a hole).
#[derive(Debug)]
pub(crate) struct GrowingFile {
    file: File,
    calls: Semaphore,
}

#[async_trait]
impl Writer for GrowingFile {
    fn size(&self) -> Option<u64> {
        None
    }

    fn known_zero(&self) -> bool {
        true
    }

    async fn write(&self, offset: u64, data: &[u8]) -> EndResult<()> {
        let _permit = self.calls.acquire().await;
        run_blocking(|| self.file.write_all_at(data, offset)).map_err(|e| EndError::destination(describe(&e)))
    }

    async fn zero(&self, _offset: u64, _len: u64) -> EndResult<()> {
        Ok(())
    }

    async fn flush(&self) -> EndResult<()> {
        run_blocking(|| self.file.sync_data()).map_err(|e| EndError::destination(describe(&e)))
    }

    async fn end(&self, len: u64) -> EndResult<()> {
        self.file.set_len(len).map_err(|e| EndError::destination(describe(&e)))
    }
}
