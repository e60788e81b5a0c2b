//! [`ReadaheadLayer`]: prefetching for sequential reads (nbdkit's readahead
//! filter).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::lock;
use crate::device::{Caps, Device, DeviceResult, Extent, ZeroFlags};

/// The first prefetch window, in bytes.
const MIN_WINDOW: u64 = 64 << 10;
/// The window doubles on every sequential miss up to this size.
const MAX_WINDOW: u64 = 4 << 20;

/// Detects sequential reads and reads ahead of them.
///
/// A read that starts near where the previous one ended (within the
/// current window) is sequential. A sequential read that is not already
/// cached is sent to the inner device extended by a prefetch window, which
/// starts at 64 KiB and doubles on every such miss up to 4 MiB; a read
/// elsewhere resets it. What was read is kept in a small cache of at most
/// [`ReadaheadLayer::CACHE_LIMIT`] bytes (oldest windows go first) and later
/// reads inside it are answered from memory. Reads of 4 MiB or more go
/// straight through.
///
/// Correctness first: every write, trim and zero drops cached data it
/// overlaps, both before and after it reaches the inner device, and a
/// prefetch that overlapped any change in flight is not cached. So a read
/// that starts after a change completed never sees data from before it.
/// Capabilities are the inner device's.
pub struct ReadaheadLayer {
    inner: Arc<dyn Device>,
    maximum: u64,
    state: Mutex<State>,
}

struct Window {
    offset: u64,
    data: Box<[u8]>,
}

impl Window {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

struct State {
    windows: VecDeque<Window>,
    bytes: usize,
    /// Where the last read ended.
    next: u64,
    /// The next prefetch size.
    window: u64,
    /// Bumped by every change, so a prefetch can tell it may be stale.
    epoch: u64,
}

impl State {
    /// Copies `offset..offset + buf.len()` from a cached window, if one
    /// holds all of it.
    fn lookup(&self, offset: u64, buf: &mut [u8]) -> bool {
        let end = offset + buf.len() as u64;
        match self.windows.iter().rev().find(|w| w.offset <= offset && end <= w.end()) {
            Some(w) => {
                let at = (offset - w.offset) as usize;
                buf.copy_from_slice(&w.data[at..at + buf.len()]);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, window: Window) {
        self.bytes += window.data.len();
        self.windows.push_back(window);
        while self.bytes > ReadaheadLayer::CACHE_LIMIT {
            match self.windows.pop_front() {
                Some(old) => self.bytes -= old.data.len(),
                None => break,
            }
        }
    }

    fn invalidate(&mut self, start: u64, end: u64) {
        self.epoch += 1;
        let bytes = &mut self.bytes;
        self.windows.retain(|w| {
            let keep = w.end() <= start || end <= w.offset;
            if !keep {
                *bytes -= w.data.len();
            }
            keep
        });
    }
}

impl ReadaheadLayer {
    /// The most bytes the cache holds.
    pub const CACHE_LIMIT: usize = 2 * MAX_WINDOW as usize;

    /// Wraps `inner` with readahead.
    pub fn new(inner: Arc<dyn Device>) -> Self {
        let maximum = u64::from(inner.caps().block_size.maximum);
        let state = State { windows: VecDeque::new(), bytes: 0, next: 0, window: MIN_WINDOW, epoch: 0 };
        Self { inner, maximum, state: Mutex::new(state) }
    }

    /// Bytes currently cached (at most [`Self::CACHE_LIMIT`]).
    pub fn cached_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Runs a change to `offset..offset + length`, dropping overlapping
    /// cached data before and after it.
    async fn change<F>(&self, offset: u64, length: u64, op: F) -> DeviceResult<()>
    where
        F: std::future::Future<Output = DeviceResult<()>>,
    {
        let end = offset.saturating_add(length);
        lock(&self.state).invalidate(offset, end);
        let r = op.await;
        lock(&self.state).invalidate(offset, end);
        r
    }
}

#[async_trait]
impl Device for ReadaheadLayer {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        self.inner.caps()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let len = buf.len() as u64;
        let prefetch = {
            let mut s = lock(&self.state);
            if s.lookup(offset, buf) {
                s.next = offset + len;
                return Ok(());
            }
            let sequential = offset.abs_diff(s.next) <= s.window.max(len);
            let fetch = (len + s.window).min(self.inner.size().saturating_sub(offset)).min(self.maximum.max(len));
            s.next = offset + len;
            if !sequential {
                s.window = MIN_WINDOW;
                None
            } else if len >= MAX_WINDOW || fetch <= len {
                None
            } else {
                s.window = (s.window * 2).min(MAX_WINDOW);
                Some((fetch, s.epoch))
            }
        };
        let Some((fetch, epoch)) = prefetch else {
            return self.inner.read(offset, buf).await;
        };
        let mut data = vec![0u8; fetch as usize].into_boxed_slice();
        self.inner.read(offset, &mut data).await?;
        buf.copy_from_slice(&data[..buf.len()]);
        let mut s = lock(&self.state);
        if s.epoch == epoch {
            s.insert(Window { offset, data });
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.change(offset, data.len() as u64, self.inner.write(offset, data, fua)).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.inner.flush().await
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        self.change(offset, length, self.inner.trim(offset, length, fua)).await
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.change(offset, length, self.inner.write_zeroes(offset, length, flags)).await
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        self.inner.cache(offset, length).await
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        self.inner.extents(offset, length).await
    }
}
