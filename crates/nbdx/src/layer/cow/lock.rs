//! A lock on ranges of block numbers: requests that touch disjoint blocks
//! run concurrently, requests that share a block run one after the other.
//!
//! The copy-on-write layer takes it around every change to the overlay, so
//! that a read-modify-write of a partial block cannot lose a concurrent
//! write to another part of the same block.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::layer::lock;

/// Held ranges, inclusive, with a notification on every release. The list
/// holds one entry per in-flight change, so a linear scan is cheap.
#[derive(Default)]
pub(super) struct RangeLock {
    held: Mutex<Vec<(u64, u64)>>,
    released: Notify,
}

/// Releases its range when dropped.
pub(super) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    range: (u64, u64),
}

impl RangeLock {
    /// Waits until no held range overlaps `first..=last`, then holds it.
    /// Cancel-safe: dropping the future before it completes holds nothing.
    pub(super) async fn lock(&self, first: u64, last: u64) -> RangeGuard<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before looking, so a release between the look and
            // the wait is not missed.
            released.as_mut().enable();
            {
                let mut held = lock(&self.held);
                if !held.iter().any(|&(a, b)| a <= last && first <= b) {
                    held.push((first, last));
                    return RangeGuard { lock: self, range: (first, last) };
                }
            }
            released.await;
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.lock.held);
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn disjoint_ranges_are_held_at_the_same_time() {
        let l = RangeLock::default();
        let a = l.lock(0, 3).await;
        let b = l.lock(4, 4).await;
        assert_eq!(l.held(), 2);
        drop((a, b));
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn an_overlapping_range_waits_for_the_release() {
        let l = Arc::new(RangeLock::default());
        let a = l.lock(2, 5).await;
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                let _g = l.lock(5, 9).await;
            })
        };
        // Let the waiter run until it blocks on the held range.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_holds_nothing() {
        let l = RangeLock::default();
        let a = l.lock(0, 0).await;
        {
            let wait = l.lock(0, 0);
            tokio::pin!(wait);
            assert!(futures_poll_once(wait.as_mut()).await.is_none());
        }
        drop(a);
        assert_eq!(l.held(), 0);
        let _again = l.lock(0, 0).await;
    }

    /// Polls a future once; `None` if it is still pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
