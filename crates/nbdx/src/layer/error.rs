//! [`ErrorLayer`]: injected failures at a configured rate, reproducible from
//! a seed (nbdkit's error filter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nbdx_proto::Errno;

use super::lock;
use crate::device::{Caps, Device, DeviceError, DeviceResult, Extent, ZeroFlags};

/// Fails a fraction of requests with a fixed NBD error, without passing
/// them on; the others go to the inner device unchanged.
///
/// Every request (read, write, flush, trim, zero, cache, block status)
/// draws one number from a generator seeded at construction, so the same
/// seed and the same sequence of requests fail the same requests. With
/// concurrent requests the sequence is the order in which they reach the
/// layer. Capabilities are the inner device's.
pub struct ErrorLayer {
    inner: Arc<dyn Device>,
    rate: f64,
    errno: Errno,
    rng: Mutex<fastrand::Rng>,
    injected: AtomicU64,
}

impl ErrorLayer {
    /// The seed used when none is given (`--layer error=RATE[:ERRNO]`).
    pub const DEFAULT_SEED: u64 = 0x6e62_6478;

    /// Wraps `inner`, failing a fraction `rate` of requests with `errno`.
    ///
    /// `rate` is clamped to `0..=1` (NaN counts as 0). An `errno` the NBD
    /// protocol does not define is replaced by `NBD_EIO`, as for any device
    /// error.
    pub fn new(inner: Arc<dyn Device>, rate: f64, errno: Errno, seed: u64) -> Self {
        let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        let errno = DeviceError::from(errno).errno();
        Self { inner, rate, errno, rng: Mutex::new(fastrand::Rng::with_seed(seed)), injected: AtomicU64::new(0) }
    }

    /// The fraction of requests that fail.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The error failed requests get.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// How many requests were failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Draws for one request: `Err` if it is to fail.
    fn draw(&self, what: &str) -> DeviceResult<()> {
        if lock(&self.rng).f64() < self.rate {
            self.injected.fetch_add(1, Ordering::Relaxed);
            Err(DeviceError::new(self.errno, format!("{what}: injected error (error layer)")))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Device for ErrorLayer {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        self.inner.caps()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.draw("read")?;
        self.inner.read(offset, buf).await
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.draw("write")?;
        self.inner.write(offset, data, fua).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.draw("flush")?;
        self.inner.flush().await
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        self.draw("trim")?;
        self.inner.trim(offset, length, fua).await
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.draw("write zeroes")?;
        self.inner.write_zeroes(offset, length, flags).await
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        self.draw("cache")?;
        self.inner.cache(offset, length).await
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        self.draw("block status")?;
        self.inner.extents(offset, length).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Succeeds at everything.
    struct Fine;

    #[async_trait]
    impl Device for Fine {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn caps(&self) -> Caps {
            Caps { flush: true, ..Caps::default() }
        }
        async fn read(&self, _offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
            buf.fill(1);
            Ok(())
        }
        async fn write(&self, _offset: u64, _data: &[u8], _fua: bool) -> DeviceResult<()> {
            Ok(())
        }
        async fn flush(&self) -> DeviceResult<()> {
            Ok(())
        }
    }

    /// Runs 10 000 mixed requests; returns which failed and with what.
    async fn run(layer: &ErrorLayer) -> Vec<Option<Errno>> {
        let mut outcome = Vec::with_capacity(10_000);
        let mut buf = [0u8; 512];
        for i in 0..10_000u64 {
            let r = match i % 3 {
                0 => layer.read(i % 64 * 512, &mut buf).await,
                1 => layer.write(i % 64 * 512, &buf, false).await,
                _ => layer.flush().await,
            };
            outcome.push(r.err().map(|e| e.errno()));
        }
        outcome
    }

    #[tokio::test]
    async fn a_quarter_of_requests_fail_identically_across_runs_with_the_same_seed() {
        let a = ErrorLayer::new(Arc::new(Fine), 0.25, Errno::ENOSPC, 7);
        let b = ErrorLayer::new(Arc::new(Fine), 0.25, Errno::ENOSPC, 7);
        let (ra, rb) = (run(&a).await, run(&b).await);
        assert_eq!(ra, rb);
        let failed = ra.iter().filter(|r| r.is_some()).count();
        assert!((2300..=2700).contains(&failed), "{failed} of 10000 failed");
        assert!(ra.iter().flatten().all(|e| *e == Errno::ENOSPC));
        assert_eq!(a.injected(), failed as u64);
    }

    #[tokio::test]
    async fn another_seed_fails_other_requests() {
        let a = run(&ErrorLayer::new(Arc::new(Fine), 0.25, Errno::EIO, 1)).await;
        let b = run(&ErrorLayer::new(Arc::new(Fine), 0.25, Errno::EIO, 2)).await;
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn rate_zero_never_fails_and_rate_one_always_fails_without_reaching_the_device() {
        let never = ErrorLayer::new(Arc::new(Fine), 0.0, Errno::EIO, 3);
        assert!(run(&never).await.iter().all(Option::is_none));
        let always = ErrorLayer::new(Arc::new(Fine), 1.0, Errno::EPERM, 3);
        let mut buf = [0u8; 4];
        let err = always.read(0, &mut buf).await.unwrap_err();
        assert_eq!(err.errno(), Errno::EPERM);
        assert!(err.message().contains("injected"), "{err}");
        assert_eq!(buf, [0; 4], "the failed read must not reach the device");
    }

    #[test]
    fn out_of_range_rates_are_clamped_and_unknown_errnos_become_eio() {
        assert_eq!(ErrorLayer::new(Arc::new(Fine), 3.0, Errno::EIO, 0).rate(), 1.0);
        assert_eq!(ErrorLayer::new(Arc::new(Fine), -1.0, Errno::EIO, 0).rate(), 0.0);
        assert_eq!(ErrorLayer::new(Arc::new(Fine), f64::NAN, Errno::EIO, 0).rate(), 0.0);
        assert_eq!(ErrorLayer::new(Arc::new(Fine), 0.5, Errno(2), 0).errno(), Errno::EIO);
        let l = ErrorLayer::new(Arc::new(Fine), 0.5, Errno::ENOMEM, 0);
        assert_eq!((l.errno(), l.caps(), l.size()), (Errno::ENOMEM, Fine.caps(), 1 << 20));
    }
}
