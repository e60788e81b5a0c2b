//! Work the device does on its own: storing dirty chunks (write-back) and fetching chunks
//! ahead of a sequential reader (read-ahead).
//!
//! Write-back stores a dirty chunk when its last byte was written (a sequential writer has
//! finished it), when it has been dirty for [`WRITEBACK_DELAY`] (so small adjacent writes
//! coalesce into one PUT), or, oldest first, when writers wait for buffers. Failed stores
//! keep the chunk dirty and are retried on the next round; `FLUSH` reports them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cache::{lock, Chunks};

/// How long a chunk may stay dirty without a flush.
pub const WRITEBACK_DELAY: Duration = Duration::from_secs(1);
/// How often write-back looks for old dirty chunks when nothing wakes it.
const TICK: Duration = Duration::from_millis(100);

/// Runs write-back until `stop` is cancelled.
pub(crate) async fn write_back_loop(chunks: Arc<Chunks>, stop: CancellationToken) {
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = chunks.pressure.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        let picked = pick(&chunks, &lock(&in_flight));
        for index in picked {
            lock(&in_flight).insert(index);
            let (chunks, in_flight) = (chunks.clone(), in_flight.clone());
            tokio::spawn(async move {
                if let Err(e) = chunks.write_back(index).await {
                    tracing::warn!(chunk = index, error = %e, "write-back failed; the chunk stays dirty");
                }
                lock(&in_flight).remove(&index);
                chunks.pressure.notify_one();
            });
        }
    }
}

/// The dirty chunks to store now, at most `concurrency` in flight.
fn pick(chunks: &Chunks, in_flight: &HashSet<u64>) -> Vec<u64> {
    let room = chunks.concurrency.saturating_sub(in_flight.len());
    if room == 0 {
        return Vec::new();
    }
    let dirty = lock(&chunks.dirty);
    let urgent = lock(&chunks.urgent);
    let now = Instant::now();
    // Writers wait for buffers when more than half of them are dirty.
    let pressure = dirty.len() * 2 > chunks.max_buffers;
    let mut picked: Vec<u64> = urgent.iter().copied().filter(|c| !in_flight.contains(c)).take(room).collect();
    let mut by_age: Vec<(Instant, u64)> = dirty
        .iter()
        .filter(|(c, since)| {
            !in_flight.contains(c)
                && !urgent.contains(c)
                && (pressure || now.duration_since(**since) >= WRITEBACK_DELAY)
        })
        .map(|(&c, &since)| (since, c))
        .collect();
    by_age.sort_unstable();
    picked.extend(by_age.into_iter().map(|(_, c)| c).take(room - picked.len()));
    picked
}

/// Starts fetching the chunks after `index` into the cache, skipping those that are
/// holes, cached or being fetched, when buffers and request slots are free.
pub(crate) fn read_ahead(chunks: &Arc<Chunks>, index: u64, count: usize) {
    for next in (index + 1..chunks.count).take(count) {
        if !chunks.is_allocated(next) || chunks.is_busy_or_cached(next) || chunks.requests.available_permits() < 2 {
            continue;
        }
        let chunks = chunks.clone();
        tokio::spawn(async move { fetch_into_cache(&chunks, next).await });
    }
}

/// Fetches a stored chunk into the read cache if a buffer is free and nobody holds it.
pub(crate) async fn fetch_into_cache(chunks: &Chunks, index: u64) {
    if !chunks.is_allocated(index) {
        return;
    }
    let entry = chunks.entry(index);
    let Ok(mut state) = entry.state.try_lock() else { return };
    if state.data.is_some() {
        return;
    }
    let Some(permit) = chunks.buffer(false).await else { return };
    tracing::debug!(chunk = index, "read-ahead");
    match chunks.fetch(index).await {
        Ok(data) => chunks.cache_clean(index, &mut state, data, permit),
        Err(e) => tracing::debug!(chunk = index, error = %e, "read-ahead failed"),
    }
}

/// Whether a read continues the previous one (or is large), so that read-ahead pays off
/// and whole chunks should be fetched.
pub(crate) fn is_sequential(chunks: &Chunks, offset: u64, len: u64) -> bool {
    let previous_end = chunks.last_read_end.swap(offset + len, Ordering::Relaxed);
    previous_end == offset || len >= 64 << 10
}
