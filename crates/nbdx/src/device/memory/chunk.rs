//! One 2 MiB chunk of a [`MemoryDevice`](super::MemoryDevice): an anonymous
//! private mapping that the kernel fills lazily, plus a bitmap of which
//! 64 KiB pages hold data.
//!
//! Untouched 4 KiB pages of the mapping read as the kernel's shared zero
//! page and use no RAM; pages that become empty are returned to the kernel
//! with `MADV_DONTNEED` (they read as zeroes again). Before a large copy
//! into pages without data, `MADV_POPULATE_WRITE` faults them in with one
//! system call instead of one page fault per 4 KiB, which is what makes
//! filling a fresh RAM disk fast.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock};

use memmap2::{Advice, MmapMut, MmapOptions, UncheckedAdvice};

use super::is_zero;
use crate::device::{DeviceError, DeviceResult};

/// Bytes per chunk.
pub(super) const CHUNK: usize = 2 << 20;
/// Bytes per page (the unit of hole reporting).
pub(super) const PAGE: usize = 64 << 10;
/// Pages per chunk: one bit each in a `u32`.
pub(super) const PAGES: usize = CHUNK / PAGE;

/// Copies at least this large populate their target pages first.
const POPULATE_MIN: usize = 64 << 10;

pub(super) struct Chunk {
    map: RwLock<MmapMut>,
    /// Bit `i`: page `i` may hold a nonzero byte.
    present: AtomicU32,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({:#010x})", self.present())
    }
}

#[cfg(test)]
fn page_bits(range: std::ops::Range<usize>) -> u32 {
    if range.is_empty() {
        return 0;
    }
    let (first, last) = (range.start / PAGE, (range.end - 1) / PAGE);
    let upper = if last + 1 >= 32 { u32::MAX } else { (1u32 << (last + 1)) - 1 };
    upper & !((1u32 << first) - 1)
}

impl Chunk {
    /// A chunk without data. Fails with `NBD_ENOMEM` if the kernel refuses
    /// the mapping.
    pub(super) fn new() -> DeviceResult<Self> {
        let map = MmapOptions::new()
            .len(CHUNK)
            .map_anon()
            .map_err(|e| DeviceError::new(nbdx_proto::Errno::ENOMEM, format!("RAM disk chunk: {e}")))?;
        // With transparent huge pages set to "always", the first touch of a
        // 2 MiB-aligned chunk would commit and zero a whole huge page: a
        // scattered 4 KiB write would cost 2 MiB of RAM and of zeroing.
        // Keep 4 KiB granularity; bulk writes populate ranges explicitly.
        let _ = map.advise(Advice::NoHugePage);
        Ok(Self { map: RwLock::new(map), present: AtomicU32::new(0) })
    }

    /// Pages holding data, as a bitmap.
    pub(super) fn present(&self) -> u32 {
        self.present.load(Ordering::Acquire)
    }

    /// Copies `at..at + out.len()` of the chunk into `out`.
    pub(super) fn read(&self, at: usize, out: &mut [u8]) {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        out.copy_from_slice(&map[at..at + out.len()]);
    }

    /// Writes `data` at `at`. Zeroes written over pages without data are
    /// skipped; pages left all zero are given back to the kernel.
    pub(super) fn write(&self, at: usize, data: &[u8]) {
        let end = at + data.len();
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let present = self.present();
        let mut set = 0u32;
        let mut emptied = Vec::new();
        let mut pos = at;
        while pos < end {
            let page = pos / PAGE;
            let stop = ((page + 1) * PAGE).min(end);
            let src = &data[pos - at..stop - at];
            let had = present & (1 << page) != 0;
            if is_zero(src) {
                if had {
                    map[pos..stop].copy_from_slice(src);
                    if is_zero(&map[page * PAGE..(page + 1) * PAGE]) {
                        emptied.push(page);
                    }
                }
            } else {
                if !had && stop - pos >= POPULATE_MIN.min(PAGE) {
                    // Best effort: older kernels lack MADV_POPULATE_WRITE and
                    // simply fault the pages in during the copy.
                    let _ = map.advise_range(Advice::PopulateWrite, pos & !4095, (stop - (pos & !4095)).min(CHUNK));
                }
                map[pos..stop].copy_from_slice(src);
                set |= 1 << page;
            }
            pos = stop;
        }
        let mut clear = 0u32;
        for page in emptied {
            Self::release(&mut map, page * PAGE, PAGE);
            clear |= 1 << page;
        }
        self.present.store((present | set) & !clear, Ordering::Release);
    }

    /// Zeroes `range`; unless `keep`, whole pages are released and pages left
    /// all zero too.
    pub(super) fn zero(&self, range: std::ops::Range<usize>, keep: bool) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let present = self.present();
        let mut clear = 0u32;
        for page in 0..PAGES {
            let bit = 1u32 << page;
            let (start, end) = ((page * PAGE).max(range.start), ((page + 1) * PAGE).min(range.end));
            if start >= end || present & bit == 0 {
                continue;
            }
            if keep {
                map[start..end].fill(0);
            } else if end - start == PAGE || {
                map[start..end].fill(0);
                is_zero(&map[page * PAGE..(page + 1) * PAGE])
            } {
                Self::release(&mut map, page * PAGE, PAGE);
                clear |= bit;
            }
        }
        self.present.store(present & !clear, Ordering::Release);
    }

    /// Gives pages back to the kernel; they read as zeroes afterwards.
    fn release(map: &mut MmapMut, offset: usize, len: usize) {
        // SAFETY: MADV_DONTNEED on a private anonymous mapping replaces the
        // range with zero-fill-on-demand pages. We hold the write lock
        // (`&mut MmapMut`), so no slice into the mapping is alive while its
        // contents change, and the range lies inside the mapping.
        let done = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
        if done.is_err() {
            // Without the advice the memory stays committed: keep it correct.
            map[offset..offset + len].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bits_cover_exactly_the_pages_a_range_touches() {
        assert_eq!(page_bits(0..1), 1);
        assert_eq!(page_bits(PAGE - 1..PAGE + 1), 0b11);
        assert_eq!(page_bits(0..CHUNK), u32::MAX);
        assert_eq!(page_bits(5..5), 0);
    }

    #[test]
    fn released_pages_read_back_as_zeroes() {
        let c = Chunk::new().unwrap();
        c.write(PAGE, &[7u8; PAGE]);
        assert_eq!(c.present(), 0b10);
        c.zero(PAGE..2 * PAGE, false);
        assert_eq!(c.present(), 0);
        let mut b = vec![1u8; PAGE];
        c.read(PAGE, &mut b);
        assert!(is_zero(&b));
    }
}
