//! [`MemoryDevice`]: a sparse RAM disk.

mod chunk;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use nbdx_proto::{AllocationFlags, Errno};

use super::{check_range, Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};
use chunk::{Chunk, CHUNK, PAGE, PAGES};

/// Chunks visited per call of [`Device::extents`] at most (holes between
/// chunks cost nothing).
const EXTENTS_BUDGET: usize = 1 << 14;

/// A sparse RAM disk. Contents are lost when the device is dropped; `flush`,
/// FUA and `cache` are no-ops.
///
/// Storage is a map of 2 MiB chunks, each an anonymous private memory
/// mapping the kernel fills lazily: untouched parts of a chunk use no RAM,
/// and pages given back with `MADV_DONTNEED` read as zeroes again. Each
/// chunk keeps a bitmap of its 64 KiB pages
/// ([`PAGE_SIZE`](Self::PAGE_SIZE)) that hold data: those are reported as
/// data by `extents`, the rest as `NBD_STATE_HOLE | NBD_STATE_ZERO`. Zeroes
/// written to pages without data are not stored, a page left all zero is
/// released, and a chunk left without data is unmapped.
///
/// Why chunks of mappings rather than one allocation per page: a fresh RAM
/// disk is filled through page faults, and with `MADV_POPULATE_WRITE` a
/// whole request's worth of pages is faulted in with one system call, while
/// reads and trims need no allocator at all. Each chunk has its own lock
/// (readers share it); the chunk map's lock is held only to find or insert
/// a chunk.
#[derive(Debug)]
pub struct MemoryDevice {
    size: u64,
    read_only: bool,
    chunks: RwLock<BTreeMap<u64, Arc<Chunk>>>,
}

impl MemoryDevice {
    /// Bytes per page: the unit of hole reporting.
    pub const PAGE_SIZE: usize = PAGE;

    /// An all-zero device of `size` bytes that uses no RAM yet.
    pub fn new(size: u64) -> Self {
        Self { size, read_only: false, chunks: RwLock::default() }
    }

    /// Refuses writes, trims and zeroing with `NBD_EPERM` (and says so in
    /// [`Caps::read_only`]).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Pages currently holding data; RAM use is at most this times
    /// [`PAGE_SIZE`](Self::PAGE_SIZE).
    pub fn allocated_pages(&self) -> u64 {
        self.map().values().map(|c| u64::from(c.present().count_ones())).sum()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Chunk>>> {
        // Chunks are plain bytes: a panic elsewhere cannot leave them invalid.
        self.chunks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<Chunk>>> {
        self.chunks.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn chunk(&self, index: u64) -> Option<Arc<Chunk>> {
        self.map().get(&index).cloned()
    }

    fn chunk_or_insert(&self, index: u64) -> DeviceResult<Arc<Chunk>> {
        if let Some(c) = self.chunk(index) {
            return Ok(c);
        }
        let mut map = self.map_mut();
        if let Some(c) = map.get(&index) {
            return Ok(c.clone());
        }
        let c = Arc::new(Chunk::new()?);
        map.insert(index, c.clone());
        Ok(c)
    }

    /// Unmaps `index` if it holds no data any more.
    fn drop_if_empty(&self, index: u64) {
        let mut map = self.map_mut();
        if map.get(&index).is_some_and(|c| c.present() == 0) {
            map.remove(&index);
        }
    }

    fn check_writable(&self, offset: u64, length: u64) -> DeviceResult<()> {
        if self.read_only {
            return Err(DeviceError::read_only());
        }
        check_range(self.size, offset, length, Errno::ENOSPC)
    }

    /// Zeroes `range` (bytes); unless `keep` (`NBD_CMD_FLAG_NO_HOLE`),
    /// releases what becomes empty. Only chunks that exist are visited.
    fn zero_range(&self, range: Range<u64>, keep: bool) {
        let (first, last) = (range.start / CHUNK as u64, range.end.div_ceil(CHUNK as u64));
        let present: Vec<(u64, Arc<Chunk>)> = self.map().range(first..last).map(|(i, c)| (*i, c.clone())).collect();
        for (index, chunk) in present {
            let base = index * CHUNK as u64;
            let start = range.start.max(base) - base;
            let end = range.end.min(base + CHUNK as u64) - base;
            chunk.zero(start as usize..end as usize, keep);
            if chunk.present() == 0 && !keep {
                self.drop_if_empty(index);
            }
        }
    }
}

/// Splits `offset..offset + length` at chunk boundaries into
/// `(chunk, offset in chunk, length, offset in the request)`.
fn segments(offset: u64, length: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let end = offset + length;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let (chunk, at) = (pos / CHUNK as u64, (pos % CHUNK as u64) as usize);
            let len = (CHUNK - at).min((end - pos) as usize);
            let segment = (chunk, at, len, (pos - offset) as usize);
            pos += len as u64;
            segment
        })
    })
}

/// Whether every byte is zero; ORs 64-byte blocks so the compiler can
/// vectorise, stopping at the first nonzero block.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let blocks = bytes.chunks_exact(64);
    let tail = blocks.remainder();
    blocks.into_iter().all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0) && tail.iter().all(|&b| b == 0)
}

/// Appends a run to `extents`, merging it with the previous run of the same
/// status.
fn push_run(extents: &mut Vec<Extent>, length: u64, flags: AllocationFlags) {
    match extents.last_mut() {
        Some(last) if last.flags == flags => last.length += length,
        _ if length > 0 => extents.push(Extent { length, flags }),
        _ => {}
    }
}

#[async_trait]
impl Device for MemoryDevice {
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
            extents: true,
            immediate: true,
            ..Caps::default()
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        check_range(self.size, offset, buf.len() as u64, Errno::EINVAL)?;
        for (chunk, at, len, pos) in segments(offset, buf.len() as u64) {
            let out = &mut buf[pos..pos + len];
            match self.chunk(chunk) {
                Some(c) => c.read(at, out),
                None => out.fill(0),
            }
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, data.len() as u64)?;
        for (chunk, at, len, pos) in segments(offset, data.len() as u64) {
            let src = &data[pos..pos + len];
            let c = match self.chunk(chunk) {
                Some(c) => c,
                // Zeroes over a chunk without data change nothing.
                None if is_zero(src) => continue,
                None => self.chunk_or_insert(chunk)?,
            };
            c.write(at, src);
            if c.present() == 0 {
                self.drop_if_empty(chunk);
            }
        }
        Ok(())
    }

    async fn flush(&self) -> DeviceResult<()> {
        Ok(())
    }

    async fn trim(&self, offset: u64, length: u64, _fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, length)?;
        self.zero_range(offset..offset + length, false);
        Ok(())
    }

    /// Zeroing is always fast here. With `no_hole`, pages already allocated
    /// stay allocated; RAM for pages never written is not reserved, as a
    /// RAM disk provisions every page on demand.
    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.check_writable(offset, length)?;
        self.zero_range(offset..offset + length, flags.no_hole);
        Ok(())
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        check_range(self.size, offset, length, Errno::EINVAL)
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        check_range(self.size, offset, length, Errno::EINVAL)?;
        let end = offset + length;
        let (hole, data) = (AllocationFlags::HOLE | AllocationFlags::ZERO, AllocationFlags::empty());
        let first = offset / CHUNK as u64;
        let last = end.div_ceil(CHUNK as u64);
        let chunks: Vec<(u64, u32)> =
            self.map().range(first..last).take(EXTENTS_BUDGET).map(|(i, c)| (*i, c.present())).collect();
        // Past the budget the rest is not examined: report up to there.
        let end = match chunks.len() == EXTENTS_BUDGET {
            true => chunks.last().map_or(end, |(i, _)| ((i + 1) * CHUNK as u64).min(end)),
            false => end,
        };
        let mut extents = Vec::new();
        let mut cursor = offset;
        for (index, present) in chunks {
            for page in 0..PAGES as u64 {
                let start = (index * CHUNK as u64 + page * PAGE as u64).max(cursor);
                let stop = (index * CHUNK as u64 + (page + 1) * PAGE as u64).min(end);
                if start >= stop {
                    continue;
                }
                push_run(&mut extents, start - cursor, hole);
                let flags = if present & (1 << page) != 0 { data } else { hole };
                push_run(&mut extents, stop - start, flags);
                cursor = stop;
            }
        }
        push_run(&mut extents, end - cursor, hole);
        Ok(extents)
    }
}

#[cfg(test)]
mod tests;
