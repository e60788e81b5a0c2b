//! [`MemoryDevice`]: a sparse RAM disk.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use nbdx_proto::{AllocationFlags, Errno};

use super::{check_range, Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};

/// Number of independently locked page maps.
const SHARDS: usize = 64;
/// Page size in bytes, as a `u64` for offset arithmetic.
const PAGE: u64 = MemoryDevice::PAGE_SIZE as u64;
/// Pages gathered per step of [`Device::extents`], and its work budget per
/// call (pages found plus shard lookups); holes are skipped at no cost.
const EXTENTS_WINDOW: u64 = 1 << 16;

type Page = Box<[u8]>;
type Shard = BTreeMap<u64, Page>;

/// A sparse RAM disk. Contents are lost when the device is dropped; `flush`,
/// FUA and `cache` are no-ops.
///
/// Storage is split into pages of [`PAGE_SIZE`](Self::PAGE_SIZE) bytes, held in
/// 64 ordered maps (`page index → page`) each behind its own
/// `RwLock`; page `i` lives in shard `i % 64`, so a large request spreads
/// over all shards and requests on different pages rarely contend. A page
/// exists only while it holds a nonzero byte: untouched, trimmed and zeroed
/// pages use no RAM and are reported as `NBD_STATE_HOLE | NBD_STATE_ZERO`.
///
/// Why 64 KiB pages: a 32 MiB request touches 512 pages (one lock and one
/// map lookup per 64 KiB copied, so bookkeeping stays far below the cost of
/// the copy), the map overhead per page is about 0.1 %, and all-zero
/// detection over 64 KiB is a vectorised OR. The price is that a lone 4 KiB
/// write allocates 64 KiB; a RAM disk is bounded by its size anyway, and
/// trimming or zeroing the rest of a page frees it again. Ordered maps (not
/// hash maps) let `extents`, `trim` and `write_zeroes` visit only allocated
/// pages, so even a petabyte-sized sparse device answers them at once.
#[derive(Debug)]
pub struct MemoryDevice {
    size: u64,
    read_only: bool,
    shards: Box<[RwLock<Shard>]>,
}

impl MemoryDevice {
    /// Bytes per page: the unit of allocation and of hole reporting.
    pub const PAGE_SIZE: usize = 64 * 1024;

    /// An all-zero device of `size` bytes that uses no RAM yet.
    pub fn new(size: u64) -> Self {
        Self { size, read_only: false, shards: (0..SHARDS).map(|_| RwLock::default()).collect() }
    }

    /// Refuses writes, trims and zeroing with `NBD_EPERM` (and says so in
    /// [`Caps::read_only`]).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Pages currently holding data; RAM use is this times
    /// [`PAGE_SIZE`](Self::PAGE_SIZE).
    pub fn allocated_pages(&self) -> u64 {
        (0..SHARDS).map(|s| self.shard(s).len() as u64).sum()
    }

    fn shard(&self, index: usize) -> RwLockReadGuard<'_, Shard> {
        // Pages are plain bytes: a panic elsewhere cannot leave them invalid.
        self.shards[index].read().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_mut(&self, index: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[index].write().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_of(page: u64) -> usize {
        (page % SHARDS as u64) as usize
    }

    fn check_writable(&self, offset: u64, length: u64) -> DeviceResult<()> {
        if self.read_only {
            return Err(DeviceError::read_only());
        }
        check_range(self.size, offset, length, Errno::ENOSPC)
    }

    fn write_page(&self, page: u64, at: usize, data: &[u8]) -> DeviceResult<()> {
        let zero = is_zero(data);
        let mut shard = self.shard_mut(Self::shard_of(page));
        match shard.get_mut(&page) {
            Some(bytes) => {
                bytes[at..at + data.len()].copy_from_slice(data);
                if zero && is_zero(bytes) {
                    shard.remove(&page);
                }
            }
            None if zero => {}
            None => {
                shard.insert(page, new_page(at, data)?);
            }
        }
        Ok(())
    }

    /// Zeroes `range` (bytes) and frees every page left all zero, unless
    /// `keep` asks allocated pages to stay allocated (`NBD_CMD_FLAG_NO_HOLE`).
    fn zero_range(&self, range: Range<u64>, keep: bool) {
        let (first_full, end_full) = (range.start.div_ceil(PAGE), range.end / PAGE);
        if first_full >= end_full || end_full - first_full <= SHARDS as u64 {
            // A few pages: visit each rather than every shard.
            for (page, at, len, _) in segments(range.start, range.end - range.start) {
                self.zero_in_page(page, at..at + len, keep);
            }
            return;
        }
        if range.start < first_full * PAGE {
            self.zero_in_page(first_full - 1, (range.start % PAGE) as usize..Self::PAGE_SIZE, keep);
        }
        for shard in 0..SHARDS {
            let mut shard = self.shard_mut(shard);
            if keep {
                shard.range_mut(first_full..end_full).for_each(|(_, bytes)| bytes.fill(0));
            } else {
                let doomed: Vec<u64> = shard.range(first_full..end_full).map(|(&page, _)| page).collect();
                doomed.iter().for_each(|page| drop(shard.remove(page)));
            }
        }
        if range.end > end_full * PAGE {
            self.zero_in_page(end_full, 0..(range.end % PAGE) as usize, keep);
        }
    }

    fn zero_in_page(&self, page: u64, bytes: Range<usize>, keep: bool) {
        let whole = bytes.len() == Self::PAGE_SIZE;
        let mut shard = self.shard_mut(Self::shard_of(page));
        if !keep && whole {
            shard.remove(&page);
        } else if let Some(data) = shard.get_mut(&page) {
            data[bytes].fill(0);
            if !keep && is_zero(data) {
                shard.remove(&page);
            }
        }
    }

    /// Allocated pages in `pages`, in order.
    fn allocated_in(&self, pages: Range<u64>) -> Vec<u64> {
        if pages.end - pages.start <= SHARDS as u64 {
            return pages.filter(|page| self.shard(Self::shard_of(*page)).contains_key(page)).collect();
        }
        let mut found: Vec<u64> =
            (0..SHARDS).flat_map(|s| self.shard(s).range(pages.clone()).map(|(&p, _)| p).collect::<Vec<_>>()).collect();
        found.sort_unstable();
        found
    }

    /// The first allocated page at or after `page`, if any.
    fn next_allocated(&self, page: u64) -> Option<u64> {
        (0..SHARDS).filter_map(|s| self.shard(s).range(page..).next().map(|(&p, _)| p)).min()
    }
}

/// A fresh page holding `data` at `at`, zero elsewhere. Running out of
/// memory fails the request with `NBD_ENOMEM` instead of aborting.
fn new_page(at: usize, data: &[u8]) -> DeviceResult<Page> {
    let mut page = Vec::new();
    page.try_reserve_exact(MemoryDevice::PAGE_SIZE)
        .map_err(|_| DeviceError::new(Errno::ENOMEM, "out of memory for a RAM disk page"))?;
    page.resize(at, 0);
    page.extend_from_slice(data);
    page.resize(MemoryDevice::PAGE_SIZE, 0);
    Ok(page.into_boxed_slice())
}

/// Whether every byte is zero; ORs 64-byte blocks so the compiler can
/// vectorise, stopping at the first nonzero block.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let blocks = bytes.chunks_exact(64);
    let tail = blocks.remainder();
    blocks.into_iter().all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0) && tail.iter().all(|&b| b == 0)
}

/// Splits `offset..offset + length` at page boundaries into
/// `(page, offset in page, length, offset in the request)`.
fn segments(offset: u64, length: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let end = offset + length;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let (page, at) = (pos / PAGE, (pos % PAGE) as usize);
            let len = (MemoryDevice::PAGE_SIZE - at).min((end - pos) as usize);
            let segment = (page, at, len, (pos - offset) as usize);
            pos += len as u64;
            segment
        })
    })
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
            ..Caps::default()
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        check_range(self.size, offset, buf.len() as u64, Errno::EINVAL)?;
        for (page, at, len, pos) in segments(offset, buf.len() as u64) {
            let out = &mut buf[pos..pos + len];
            match self.shard(Self::shard_of(page)).get(&page) {
                Some(bytes) => out.copy_from_slice(&bytes[at..at + len]),
                None => out.fill(0),
            }
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, data.len() as u64)?;
        for (page, at, len, pos) in segments(offset, data.len() as u64) {
            self.write_page(page, at, &data[pos..pos + len])?;
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
        let last = end.div_ceil(PAGE);
        let clip = |page: u64| page.saturating_mul(PAGE).clamp(offset, end);
        let (hole, data) = (AllocationFlags::HOLE | AllocationFlags::ZERO, AllocationFlags::empty());

        let mut extents = Vec::new();
        let (mut cursor, mut budget) = (offset / PAGE, EXTENTS_WINDOW);
        while cursor < last && budget > 0 {
            let window_end = last.min(cursor + EXTENTS_WINDOW);
            let pages = self.allocated_in(cursor..window_end);
            budget = budget.saturating_sub(pages.len() as u64 + SHARDS as u64);
            for page in pages {
                push_run(&mut extents, clip(page) - clip(cursor), hole);
                push_run(&mut extents, clip(page + 1) - clip(page), data);
                cursor = page + 1;
            }
            if cursor < window_end {
                // A trailing hole runs on to the next allocated page.
                let hole_end = match window_end < last {
                    true => self.next_allocated(window_end).map_or(last, |page| page.min(last)),
                    false => last,
                };
                push_run(&mut extents, clip(hole_end) - clip(cursor), hole);
                cursor = hole_end;
            }
        }
        Ok(extents)
    }
}

#[cfg(test)]
mod tests;
