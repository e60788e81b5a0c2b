//! [`DelayLayer`]: added latency, for testing clients against slow storage
//! (nbdkit's delay filter).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::device::{Caps, Device, DeviceResult, Extent, ZeroFlags};

/// Sleeps before passing a request on: `read_delay` before reads and
/// caching, `write_delay` before writes, trims and zeroes. Flushes and
/// block status go through at once. Capabilities are the inner device's.
///
/// The delay is a [`tokio::time::sleep`], so tests can run it under paused
/// time. A delay of zero does not yield.
pub struct DelayLayer {
    inner: Arc<dyn Device>,
    read_delay: Duration,
    write_delay: Duration,
}

impl DelayLayer {
    /// Wraps `inner`, delaying reads by `read_delay` and writes, trims and
    /// zeroes by `write_delay`.
    pub fn new(inner: Arc<dyn Device>, read_delay: Duration, write_delay: Duration) -> Self {
        Self { inner, read_delay, write_delay }
    }

    /// The delay added to reads.
    pub fn read_delay(&self) -> Duration {
        self.read_delay
    }

    /// The delay added to writes, trims and zeroes.
    pub fn write_delay(&self) -> Duration {
        self.write_delay
    }
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[async_trait]
impl Device for DelayLayer {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        // Sleeping is waiting: never run inline.
        Caps { immediate: false, ..self.inner.caps() }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        pause(self.read_delay).await;
        self.inner.read(offset, buf).await
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        pause(self.write_delay).await;
        self.inner.write(offset, data, fua).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.inner.flush().await
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        pause(self.write_delay).await;
        self.inner.trim(offset, length, fua).await
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        pause(self.write_delay).await;
        self.inner.write_zeroes(offset, length, flags).await
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        pause(self.read_delay).await;
        self.inner.cache(offset, length).await
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        self.inner.extents(offset, length).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Support;
    use tokio::time::Instant;

    /// Accepts everything at once.
    struct Instant0;

    #[async_trait]
    impl Device for Instant0 {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn caps(&self) -> Caps {
            Caps { trim: true, zero: Support::Native, flush: true, ..Caps::default() }
        }
        async fn read(&self, _offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
            buf.fill(7);
            Ok(())
        }
        async fn write(&self, _offset: u64, _data: &[u8], _fua: bool) -> DeviceResult<()> {
            Ok(())
        }
        async fn flush(&self) -> DeviceResult<()> {
            Ok(())
        }
        async fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> DeviceResult<()> {
            Ok(())
        }
        async fn write_zeroes(&self, _offset: u64, _length: u64, _flags: ZeroFlags) -> DeviceResult<()> {
            Ok(())
        }
    }

    fn layer(read_ms: u64, write_ms: u64) -> DelayLayer {
        DelayLayer::new(Arc::new(Instant0), Duration::from_millis(read_ms), Duration::from_millis(write_ms))
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_completes_exactly_after_the_read_delay() {
        let d = layer(30, 200);
        let start = Instant::now();
        let mut buf = [0u8; 512];
        d.read(0, &mut buf).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        assert_eq!(buf, [7; 512]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_trims_and_zeroes_complete_exactly_after_the_write_delay() {
        let d = layer(30, 200);
        let start = Instant::now();
        d.write(0, &[1; 512], false).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        d.trim(0, 512, false).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        d.write_zeroes(0, 512, ZeroFlags::default()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_are_not_delayed_and_concurrent_reads_overlap() {
        let d = layer(30, 200);
        let start = Instant::now();
        d.flush().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        let (ra, rb) = tokio::join!(d.read(0, &mut a), d.read(8, &mut b));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }

    #[test]
    fn the_layer_keeps_the_inner_capabilities_and_size() {
        let d = layer(1, 2);
        assert_eq!(d.caps(), Instant0.caps());
        assert_eq!(d.size(), 1 << 20);
        assert_eq!((d.read_delay(), d.write_delay()), (Duration::from_millis(1), Duration::from_millis(2)));
    }
}
