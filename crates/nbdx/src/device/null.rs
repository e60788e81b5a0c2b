//! [`NullDevice`]: reads zeroes, discards writes (like nbdkit's `null`
//! plugin). Useful to measure the server and the network without any
//! storage cost, and as a sink for copies.

use async_trait::async_trait;
use nbdx_proto::{AllocationFlags, Errno};

use super::{check_range, Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};

/// A device of a fixed size that holds nothing: every read returns zeroes,
/// every write, trim, zeroing, cache and flush succeeds without effect, and
/// the whole device is reported as `NBD_STATE_HOLE | NBD_STATE_ZERO`.
#[derive(Debug, Clone)]
pub struct NullDevice {
    size: u64,
    read_only: bool,
}

impl NullDevice {
    /// A null device of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self { size, read_only: false }
    }

    /// Refuses writes, trims and zeroing with `NBD_EPERM` (and says so in
    /// [`Caps::read_only`]).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    fn check_writable(&self, offset: u64, length: u64) -> DeviceResult<()> {
        if self.read_only {
            return Err(DeviceError::read_only());
        }
        check_range(self.size, offset, length, Errno::ENOSPC)
    }
}

#[async_trait]
impl Device for NullDevice {
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
        buf.fill(0);
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, data.len() as u64)
    }

    async fn flush(&self) -> DeviceResult<()> {
        Ok(())
    }

    async fn trim(&self, offset: u64, length: u64, _fua: bool) -> DeviceResult<()> {
        self.check_writable(offset, length)
    }

    async fn write_zeroes(&self, offset: u64, length: u64, _flags: ZeroFlags) -> DeviceResult<()> {
        self.check_writable(offset, length)
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        check_range(self.size, offset, length, Errno::EINVAL)
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        check_range(self.size, offset, length, Errno::EINVAL)?;
        let flags = AllocationFlags::HOLE | AllocationFlags::ZERO;
        Ok(if length == 0 { Vec::new() } else { vec![Extent { length, flags }] })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::device::conformance::{device_conformance_tests, Profile};

    device_conformance_tests!(
        |size| Arc::new(NullDevice::new(size)),
        Profile { stores: false, punches_holes: true, fast_zero: true }
    );

    #[tokio::test]
    async fn written_data_is_discarded_and_reads_back_as_zeroes() {
        let dev = NullDevice::new(1 << 40);
        dev.write((1 << 40) - 4, &[1, 2, 3, 4], true).await.unwrap();
        let mut buf = [9u8; 4];
        dev.read((1 << 40) - 4, &mut buf).await.unwrap();
        assert_eq!(buf, [0; 4]);
    }

    #[tokio::test]
    async fn the_whole_device_is_one_hole_that_reads_as_zeroes() {
        let dev = NullDevice::new(1 << 40);
        let want = vec![Extent { length: 1 << 39, flags: AllocationFlags::HOLE | AllocationFlags::ZERO }];
        assert_eq!(dev.extents(1 << 39, 1 << 39).await.unwrap(), want);
    }

    #[tokio::test]
    async fn every_optional_operation_succeeds_and_is_advertised() {
        let dev = NullDevice::new(4096);
        let caps = dev.caps();
        assert!(caps.flush && caps.trim && caps.fast_zero && caps.multi_conn && caps.extents && !caps.read_only);
        assert_eq!((caps.fua, caps.zero, caps.cache), (Support::Native, Support::Native, Support::Native));
        let all = ZeroFlags { fua: true, no_hole: true, fast: true };
        assert_eq!(dev.write_zeroes(0, 4096, all).await, Ok(()));
        assert_eq!(dev.trim(0, 4096, true).await, Ok(()));
        assert_eq!(dev.cache(0, 4096).await, Ok(()));
        assert_eq!(dev.flush().await, Ok(()));
    }

    #[tokio::test]
    async fn a_read_only_null_device_refuses_writes_with_eperm() {
        let dev = NullDevice::new(4096).with_read_only(true);
        assert!(dev.caps().read_only && !dev.caps().trim && dev.caps().zero == Support::None);
        assert_eq!(dev.write(0, &[1], false).await.unwrap_err().errno(), Errno::EPERM);
        assert_eq!(dev.trim(0, 1, false).await.unwrap_err().errno(), Errno::EPERM);
        let mut buf = [1u8; 2];
        assert_eq!(dev.read(0, &mut buf).await, Ok(()));
    }

    #[tokio::test]
    async fn a_write_past_the_end_fails_with_enospc() {
        let dev = NullDevice::new(4096);
        assert_eq!(dev.write(4095, &[1, 2], false).await.unwrap_err().errno(), Errno::ENOSPC);
        assert_eq!(dev.extents(4096, 1).await.unwrap_err().errno(), Errno::EINVAL);
    }
}
