//! The [`Device`] abstraction: what an export serves, and what a remote
//! export is to a client.
//!
//! A device declares what it can do in [`Caps`]; the server advertises
//! exactly that, and emulates what a device only supports at the
//! [`Support::Emulate`] level (FUA as write + flush, zeroing as writes of
//! zeroes, cache as a read). Optional operations default to `NBD_ENOTSUP`;
//! nothing panics.
//!
//! Implementations must be safe to call concurrently: the server runs many
//! requests of one connection, and many connections, at once. Two requests
//! never overlap in a way the client did not ask for, but the device must
//! not assume any ordering between in-flight requests.

use async_trait::async_trait;
use nbdx_proto::{AllocationFlags, BlockSize, Errno};

mod blocking;
#[cfg(test)]
pub(crate) mod conformance;
mod error;
mod file;
mod memory;
mod null;
#[cfg(feature = "s3")]
pub mod s3;

pub use blocking::run_blocking;
pub use error::{DeviceError, DeviceResult};
pub use file::FileDevice;
pub use memory::MemoryDevice;
pub use null::NullDevice;

/// How well a device supports an optional feature (nbdkit's
/// `NBDKIT_FUA_NONE/EMULATE/NATIVE` and `NBDKIT_ZERO_*`, `NBDKIT_CACHE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Support {
    /// Not advertised to clients.
    #[default]
    None,
    /// Advertised; the server implements it with other operations.
    Emulate,
    /// Advertised; the device implements it.
    Native,
}

impl Support {
    /// Whether the feature is advertised.
    pub fn advertised(self) -> bool {
        self != Self::None
    }
}

/// What a device can do. The server derives the transmission flags from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caps {
    /// Writes are refused (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// [`Device::flush`] makes completed writes durable (`NBD_FLAG_SEND_FLUSH`).
    pub flush: bool,
    /// Forced unit access on writes, trims and zeroes (`NBD_FLAG_SEND_FUA`).
    pub fua: Support,
    /// [`Device::trim`] (`NBD_FLAG_SEND_TRIM`).
    pub trim: bool,
    /// Writing zeroes (`NBD_FLAG_SEND_WRITE_ZEROES`).
    pub zero: Support,
    /// Native zeroing is fast: with `NBD_CMD_FLAG_FAST_ZERO` the device
    /// either zeroes quickly or fails with `NBD_ENOTSUP`
    /// (`NBD_FLAG_SEND_FAST_ZERO`).
    pub fast_zero: bool,
    /// Prefetching (`NBD_FLAG_SEND_CACHE`).
    pub cache: Support,
    /// Consistent across connections: a flush on one is visible on all
    /// (`NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
    /// Behaves like a spinning disk (`NBD_FLAG_ROTATIONAL`).
    pub rotational: bool,
    /// [`Device::extents`] reports holes and zeroes (`base:allocation`);
    /// otherwise everything is reported allocated.
    pub extents: bool,
    /// Size constraints the server advertises and enforces.
    pub block_size: BlockSize,
    /// Operations finish without waiting for I/O (an in-memory device): the
    /// server runs them on the connection's reader instead of spawning a
    /// task per request, which saves a task hand-off per request. Devices
    /// whose operations block or wait must leave this `false`.
    pub immediate: bool,
}

impl Default for Caps {
    /// A plain read-write device: no optional features, default block sizes.
    fn default() -> Self {
        Self {
            read_only: false,
            flush: false,
            fua: Support::None,
            trim: false,
            zero: Support::None,
            fast_zero: false,
            cache: Support::None,
            multi_conn: false,
            rotational: false,
            extents: false,
            block_size: BlockSize::default(),
            immediate: false,
        }
    }
}

/// Flags of a [`Device::write_zeroes`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ZeroFlags {
    /// Persist before returning (`NBD_CMD_FLAG_FUA`).
    pub fua: bool,
    /// The range must stay allocated: no hole punching (`NBD_CMD_FLAG_NO_HOLE`).
    pub no_hole: bool,
    /// Fail with `NBD_ENOTSUP` unless zeroing is faster than writing
    /// (`NBD_CMD_FLAG_FAST_ZERO`); the contents must then be unchanged.
    pub fast: bool,
}

/// One run of bytes with the same allocation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length in bytes (nonzero).
    pub length: u64,
    /// `NBD_STATE_HOLE` / `NBD_STATE_ZERO`.
    pub flags: AllocationFlags,
}

/// Fails with `beyond` unless `offset..offset + length` lies within a device
/// of `size` bytes. The server validates requests first; devices check again
/// so that a direct caller gets an error, never a panic.
pub(crate) fn check_range(size: u64, offset: u64, length: u64, beyond: Errno) -> DeviceResult<()> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::new(beyond, format!("range {offset}+{length} is beyond the device size {size}"))),
    }
}

/// A block device to serve. See the [module docs](self).
#[async_trait]
pub trait Device: Send + Sync + 'static {
    /// Size in bytes. Must not change while served.
    fn size(&self) -> u64;

    /// Capabilities; must not change while served.
    fn caps(&self) -> Caps;

    /// Fills `buf` with the bytes at `offset`. The range is within the
    /// device and honours the block size constraints.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()>;

    /// Writes `data` at `offset`; with `fua`, durably before returning
    /// (only passed when [`Caps::fua`] is [`Support::Native`]).
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        let _ = (offset, data, fua);
        Err(DeviceError::unsupported())
    }

    /// Makes every completed write durable.
    async fn flush(&self) -> DeviceResult<()> {
        Err(DeviceError::unsupported())
    }

    /// Discards a range (a hint: contents become unspecified).
    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        let _ = (offset, length, fua);
        Err(DeviceError::unsupported())
    }

    /// Zeroes a range (only called when [`Caps::zero`] is [`Support::Native`]).
    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        let _ = (offset, length, flags);
        Err(DeviceError::unsupported())
    }

    /// Prefetches a range (only called when [`Caps::cache`] is [`Support::Native`]).
    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        let _ = (offset, length);
        Err(DeviceError::unsupported())
    }

    /// Allocation status from `offset` on, for at least one byte and
    /// usually up to `length` (more or less is allowed). Only called when
    /// [`Caps::extents`] is set.
    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        let _ = (offset, length);
        Err(DeviceError::unsupported())
    }
}

#[async_trait]
impl<D: Device + ?Sized> Device for std::sync::Arc<D> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn caps(&self) -> Caps {
        (**self).caps()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        (**self).read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        (**self).write(offset, data, fua).await
    }
    async fn flush(&self) -> DeviceResult<()> {
        (**self).flush().await
    }
    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        (**self).trim(offset, length, fua).await
    }
    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        (**self).write_zeroes(offset, length, flags).await
    }
    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        (**self).cache(offset, length).await
    }
    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        (**self).extents(offset, length).await
    }
}
