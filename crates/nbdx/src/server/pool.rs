//! Request buffers and the memory budget that bounds them.
//!
//! Read replies and write payloads live in [`Buf`]s taken from a size-class
//! [`BufferPool`], so a busy connection reuses already-faulted memory instead
//! of asking the allocator (and the kernel, for large blocks) every time.
//! Every buffer is paid for up front from a [`Budget`]: a connection that
//! pipelines without reading its replies runs out of budget, stops being
//! read, and so is throttled by TCP back-pressure instead of growing.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Smallest size class (4 KiB) as a power of two.
const MIN_CLASS_SHIFT: u32 = 12;
/// Size classes from 4 KiB to 32 MiB.
const CLASSES: usize = 14;
/// Pooled buffers kept per class: enough for a few connections' worth of
/// in-flight requests, so steady traffic never goes back to the allocator
/// (large blocks would mean mmap/munmap, page faults and TLB shootdowns).
const KEEP_PER_CLASS: usize = 512;
/// Bytes the pool keeps idle in total.
const MAX_IDLE_BYTES: usize = 128 << 20;

/// Free lists of zero-initialised buffers by power-of-two size class.
#[derive(Debug)]
pub(crate) struct BufferPool {
    classes: Vec<Mutex<Vec<Vec<u8>>>>,
    idle: Mutex<usize>,
}

impl BufferPool {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { classes: (0..CLASSES).map(|_| Mutex::new(Vec::new())).collect(), idle: Mutex::new(0) })
    }

    fn class(len: usize) -> Option<usize> {
        let shift = len.max(1).next_power_of_two().trailing_zeros().max(MIN_CLASS_SHIFT);
        let c = (shift - MIN_CLASS_SHIFT) as usize;
        (c < CLASSES).then_some(c)
    }

    /// A buffer of exactly `len` bytes (contents unspecified: callers fill it).
    pub(crate) fn get(self: &Arc<Self>, len: usize) -> Buf {
        let class = Self::class(len);
        let reused = class.and_then(|c| lock(&self.classes[c]).pop());
        let vec = match reused {
            Some(v) => {
                *lock(&self.idle) -= v.len();
                v
            }
            None => vec![0; class.map_or(len, |c| 1 << (c as u32 + MIN_CLASS_SHIFT))],
        };
        Buf { vec, len, pool: Some(self.clone()) }
    }

    fn put(&self, vec: Vec<u8>) {
        let Some(c) = Self::class(vec.len()).filter(|c| vec.len() == 1 << (*c as u32 + MIN_CLASS_SHIFT)) else {
            return;
        };
        let mut idle = lock(&self.idle);
        if *idle + vec.len() > MAX_IDLE_BYTES {
            return;
        }
        let mut list = lock(&self.classes[c]);
        if list.len() < KEEP_PER_CLASS {
            *idle += vec.len();
            list.push(vec);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pooled byte buffer, returned to its pool on drop.
#[derive(Debug)]
pub(crate) struct Buf {
    vec: Vec<u8>,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.vec));
        }
    }
}

/// Bytes the whole server may hold in request buffers.
#[derive(Debug, Clone)]
pub(crate) struct GlobalBudget {
    sem: Arc<Semaphore>,
    total: u32,
}

impl GlobalBudget {
    /// A server-wide budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        let total = units(bytes).max(1);
        Self { sem: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// Bytes currently reserved, in whole 4 KiB units.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        (self.total as usize - self.sem.available_permits()) * 4096
    }
}

/// Bytes one connection may hold in request buffers, drawing on the
/// server-wide budget; counted in 4 KiB units.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    connection: Arc<Semaphore>,
    connection_total: u32,
    global: GlobalBudget,
}

/// Budget held by one request; released on drop.
#[derive(Debug)]
pub(crate) struct BudgetPermit {
    _connection: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4096)).unwrap_or(u32::MAX >> 4)
}

impl Budget {
    /// A connection budget of `per_connection` bytes drawing on `global`.
    pub(crate) fn new(per_connection: usize, global: GlobalBudget) -> Self {
        let connection_total = units(per_connection).max(1);
        Self { connection: Arc::new(Semaphore::new(connection_total as usize)), connection_total, global }
    }

    /// Waits until `bytes` may be held. A request larger than a whole budget
    /// is clamped to it: it waits for everything else, but still runs.
    pub(crate) async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let want = units(bytes).max(1);
        // Connection first, then global: every connection takes them in the
        // same order, so no two connections wait on each other in a cycle.
        let connection = self.connection.clone().acquire_many_owned(want.min(self.connection_total)).await;
        let global = self.global.sem.clone().acquire_many_owned(want.min(self.global.total)).await;
        match (connection, global) {
            (Ok(c), Ok(g)) => BudgetPermit { _connection: c, _global: g },
            // The semaphores are owned here and never closed.
            _ => unreachable!("budget semaphores are never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_to_their_size_class() {
        let pool = BufferPool::new();
        let b = pool.get(5000);
        assert_eq!(b.len(), 5000);
        drop(b);
        assert_eq!(*lock(&pool.idle), 8192);
        let b = pool.get(8000);
        assert_eq!(*lock(&pool.idle), 0, "reused the pooled buffer");
        assert_eq!(b.len(), 8000);
    }

    #[test]
    fn buffers_above_the_largest_class_are_not_pooled() {
        let pool = BufferPool::new();
        drop(pool.get(64 << 20));
        assert_eq!(*lock(&pool.idle), 0);
    }

    #[test]
    fn idle_memory_is_capped() {
        let pool = BufferPool::new();
        let bufs: Vec<Buf> = (0..8).map(|_| pool.get(32 << 20)).collect();
        drop(bufs);
        assert!(*lock(&pool.idle) <= MAX_IDLE_BYTES);
    }
}
