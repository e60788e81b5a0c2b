//! Chunk buffers: the write-back cache of dirty chunks and the clean-chunk read cache.
//!
//! Every chunk that has a buffer holds one permit of `buffers` (`cache-size / object-size`
//! permits), dirty or clean. A writer that needs a buffer evicts a clean one, or waits for
//! write-back to free one (back-pressure); readers and read-ahead never wait for a buffer,
//! they fall back to ranged GETs. Each chunk has two async locks, always taken in this
//! order: `put_lock` orders the stores and deletes of one chunk, `state` guards its buffer
//! (held across the GET of a read-modify-write, so concurrent partial writers of one chunk
//! apply one after the other on the same buffer). A buffer being stored is shared with the
//! PUT (`Arc`); a writer that changes it meanwhile copies it first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::S3Config;
use super::lease::Lease;
use super::manifest::Manifest;
use super::store::Store;
use crate::device::{DeviceError, DeviceResult};

/// Locks a std mutex, ignoring poisoning (no code panics while holding these).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk buffer shared with an in-flight PUT.
struct ChunkBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ChunkBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) data: Option<Arc<Vec<u8>>>,
    permit: Option<OwnedSemaphorePermit>,
    dirty: bool,
    generation: u64,
}

#[derive(Default)]
pub(crate) struct Entry {
    pub(crate) state: tokio::sync::Mutex<State>,
    put_lock: tokio::sync::Mutex<()>,
}

/// The chunks of one disk and everything cached about them.
pub(crate) struct Chunks {
    pub(crate) store: Store,
    pub(crate) object_size: usize,
    pub(crate) count: u64,
    pub(crate) lease: Option<Lease>,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    buffers: Arc<Semaphore>,
    pub(crate) max_buffers: usize,
    pub(crate) requests: Semaphore,
    pub(crate) concurrency: usize,
    allocated: Mutex<Vec<u64>>,
    /// Dirty chunks and since when.
    pub(crate) dirty: Mutex<BTreeMap<u64, Instant>>,
    /// Chunks whose last byte was written: stored without waiting for the delay.
    pub(crate) urgent: Mutex<HashSet<u64>>,
    clean: Mutex<VecDeque<u64>>,
    pub(crate) pressure: tokio::sync::Notify,
    pub(crate) last_read_end: AtomicU64,
    /// How long a writer waits for a buffer before failing with `NBD_EIO`.
    pub(crate) stall_timeout: Duration,
}

/// A counted reference to a chunk's entry; dropping the last one of an entry without a
/// buffer removes it from the map, so the map holds only chunks in use or cached.
pub(crate) struct EntryRef<'a> {
    chunks: &'a Chunks,
    index: u64,
    entry: Option<Arc<Entry>>,
}

impl std::ops::Deref for EntryRef<'_> {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        self.entry.as_deref().unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for EntryRef<'_> {
    fn drop(&mut self) {
        let Some(entry) = self.entry.take() else { return };
        let mut map = lock(&self.chunks.entries);
        if Arc::strong_count(&entry) == 2 && entry.state.try_lock().is_ok_and(|s| s.data.is_none() && !s.dirty) {
            map.remove(&self.index);
        }
    }
}

impl Chunks {
    pub(crate) fn new(
        store: Store,
        manifest: Manifest,
        present: &[u64],
        config: &S3Config,
        lease: Option<Lease>,
    ) -> Self {
        let (object_size, count, cache_size) = (manifest.object_size, manifest.chunks(), config.cache_size);
        let max_buffers = (cache_size / object_size).max(2) as usize;
        let mut allocated = vec![0u64; count.div_ceil(64) as usize];
        for &c in present.iter().filter(|&&c| c < count) {
            allocated[(c / 64) as usize] |= 1 << (c % 64);
        }
        Self {
            store,
            object_size: object_size as usize,
            count,
            lease,
            entries: Mutex::default(),
            buffers: Arc::new(Semaphore::new(max_buffers)),
            max_buffers,
            requests: Semaphore::new(config.concurrency),
            concurrency: config.concurrency,
            allocated: Mutex::new(allocated),
            dirty: Mutex::default(),
            urgent: Mutex::default(),
            clean: Mutex::default(),
            pressure: tokio::sync::Notify::new(),
            last_read_end: AtomicU64::new(u64::MAX),
            // A writer waits for write-back as long as one PUT may retry, twice.
            stall_timeout: config.retry_timeout * 2,
        }
    }

    pub(crate) fn entry(&self, index: u64) -> EntryRef<'_> {
        let entry = lock(&self.entries).entry(index).or_default().clone();
        EntryRef { chunks: self, index, entry: Some(entry) }
    }

    /// Whether the chunk has data: stored, or dirty in the cache.
    pub(crate) fn is_allocated(&self, index: u64) -> bool {
        lock(&self.allocated)[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    fn set_allocated(&self, index: u64, on: bool) {
        let mut bits = lock(&self.allocated);
        let word = &mut bits[(index / 64) as usize];
        if on {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Whether the chunk has a buffer or is locked (being fetched or changed).
    pub(crate) fn is_busy_or_cached(&self, index: u64) -> bool {
        lock(&self.entries).get(&index).is_some_and(|e| e.state.try_lock().map_or(true, |s| s.data.is_some()))
    }

    pub(crate) fn lease_check(&self) -> DeviceResult<()> {
        self.lease.as_ref().map_or(Ok(()), Lease::check)
    }

    /// A buffer permit: free, or taken from a clean chunk; with `wait`, waits for write-back
    /// (at most `stall_timeout`, then `None`).
    pub(crate) async fn buffer(&self, wait: bool) -> Option<OwnedSemaphorePermit> {
        let deadline = Instant::now() + self.stall_timeout;
        loop {
            if let Ok(permit) = self.buffers.clone().try_acquire_owned() {
                return Some(permit);
            }
            if self.evict_clean() {
                continue;
            }
            if !wait || Instant::now() >= deadline {
                return None;
            }
            self.pressure.notify_one();
            // Clean chunks locked a moment ago may be evictable now: look again shortly.
            if let Ok(permit) =
                tokio::time::timeout(Duration::from_millis(20), self.buffers.clone().acquire_owned()).await
            {
                return permit.ok();
            }
        }
    }

    /// A buffer permit if one is free, without evicting anything.
    pub(crate) fn free_buffer(&self) -> Option<OwnedSemaphorePermit> {
        self.buffers.clone().try_acquire_owned().ok()
    }

    /// Drops the least recently cached clean buffer that is not in use.
    fn evict_clean(&self) -> bool {
        let mut clean = lock(&self.clean);
        let mut map = lock(&self.entries);
        for _ in 0..clean.len() {
            let Some(index) = clean.pop_front() else { break };
            let Some(entry) = map.get(&index).cloned() else { continue };
            let Ok(mut state) = entry.state.try_lock() else {
                clean.push_back(index);
                continue;
            };
            if state.dirty || state.data.is_none() {
                continue;
            }
            state.data = None;
            state.permit = None;
            drop(state);
            if Arc::strong_count(&entry) == 2 {
                map.remove(&index);
            }
            return true;
        }
        false
    }

    /// Gives a clean buffer to the chunk and the read cache.
    pub(crate) fn cache_clean(&self, index: u64, state: &mut State, data: Vec<u8>, permit: OwnedSemaphorePermit) {
        state.data = Some(Arc::new(data));
        state.permit = Some(permit);
        lock(&self.clean).push_back(index);
    }

    /// The chunk's whole contents from the store, zeros when absent.
    pub(crate) async fn fetch(&self, index: u64) -> DeviceResult<Vec<u8>> {
        if !self.is_allocated(index) {
            return Ok(vec![0; self.object_size]);
        }
        let _request = self.requests.acquire().await.map_err(|_| DeviceError::io("shutting down"))?;
        let data = self.store.get_chunk(index).await?;
        Ok(data.map_or_else(|| vec![0; self.object_size], Vec::from))
    }

    /// Writes `data` (or zeros) at `offset` within chunk `index`, in the cache.
    pub(crate) async fn write(&self, index: u64, offset: usize, data: Option<&[u8]>, len: usize) -> DeviceResult<()> {
        self.lease_check()?;
        let entry = self.entry(index);
        let mut state = entry.state.lock().await;
        if state.data.is_none() {
            let permit = self
                .buffer(true)
                .await
                .ok_or_else(|| DeviceError::io("the write-back cache is full and the store is not taking writes"))?;
            let whole = offset == 0 && len == self.object_size;
            let contents = if whole { vec![0; self.object_size] } else { self.fetch(index).await? };
            state.data = Some(Arc::new(contents));
            state.permit = Some(permit);
        }
        let buf = Arc::make_mut(state.data.as_mut().unwrap_or_else(|| unreachable!("filled above")));
        match data {
            Some(d) => buf[offset..offset + len].copy_from_slice(d),
            None => buf[offset..offset + len].fill(0),
        }
        state.generation += 1;
        if !state.dirty {
            state.dirty = true;
            lock(&self.dirty).insert(index, Instant::now());
        }
        self.set_allocated(index, true);
        drop(state);
        if offset + len == self.object_size {
            lock(&self.urgent).insert(index);
            self.pressure.notify_one();
        }
        Ok(())
    }

    /// Stores the chunk if it is dirty; returns once the store has it.
    pub(crate) async fn write_back(&self, index: u64) -> DeviceResult<()> {
        let entry = self.entry(index);
        let _order = entry.put_lock.lock().await;
        let (data, generation) = {
            let state = entry.state.lock().await;
            match (&state.data, state.dirty) {
                (Some(data), true) => (data.clone(), state.generation),
                _ => return Ok(()),
            }
        };
        self.lease_check()?;
        let request = self.requests.acquire().await.map_err(|_| DeviceError::io("shutting down"))?;
        self.store.put_chunk(index, Bytes::from_owner(ChunkBytes(data))).await?;
        drop(request);
        let mut state = entry.state.lock().await;
        if state.generation == generation {
            state.dirty = false;
            lock(&self.dirty).remove(&index);
            lock(&self.urgent).remove(&index);
            if self.buffers.available_permits() == 0 {
                state.data = None;
                state.permit = None;
            } else {
                lock(&self.clean).push_back(index);
            }
        }
        Ok(())
    }

    /// Deletes the chunk's object and buffer: it reads as zeros and is a hole.
    pub(crate) async fn discard(&self, index: u64) -> DeviceResult<()> {
        self.lease_check()?;
        let entry = self.entry(index);
        let _order = entry.put_lock.lock().await;
        let mut state = entry.state.lock().await;
        if self.is_allocated(index) {
            let _request = self.requests.acquire().await.map_err(|_| DeviceError::io("shutting down"))?;
            self.store.delete_chunk(index).await?;
        }
        state.data = None;
        state.permit = None;
        state.generation += 1;
        if state.dirty {
            state.dirty = false;
            lock(&self.dirty).remove(&index);
            lock(&self.urgent).remove(&index);
        }
        self.set_allocated(index, false);
        Ok(())
    }
}
