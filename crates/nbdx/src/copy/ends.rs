//! The two ends of a copy as the engine sees them: a [`Reader`] with an
//! allocation map and a [`Writer`] that writes, zeroes and flushes. A
//! stream (a pipe on standard input or output) is not one of these: the
//! stream drivers in [`super::engine`] handle it.

use std::sync::OnceLock;

use async_trait::async_trait;

use super::EndResult;
use crate::device::Extent;

/// A source with random access.
#[async_trait]
pub(crate) trait Reader: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Offsets and lengths of reads must be multiples of this.
    fn alignment(&self) -> u64 {
        1
    }

    /// Connections in use (1 for a local file).
    fn connections(&self) -> usize {
        1
    }

    /// The allocation map from `offset` on: at least one extent, usually
    /// covering `len` bytes (more or fewer are allowed). A source that
    /// knows nothing reports one data extent.
    async fn extents(&self, offset: u64, len: u64) -> EndResult<Vec<Extent>>;

    /// Fills `buf` with the bytes at `offset` and hands it back.
    async fn read(&self, offset: u64, buf: Vec<u8>) -> EndResult<Vec<u8>>;

    /// Closes connections cleanly.
    async fn close(&self) {}
}

/// A destination with random access.
#[async_trait]
pub(crate) trait Writer: Send + Sync + 'static {
    /// Size in bytes, if bounded.
    fn size(&self) -> Option<u64>;

    /// Offsets and lengths of zeroing must be multiples of this.
    fn alignment(&self) -> u64 {
        1
    }

    /// Whether the destination is known to read as zeroes everywhere, so
    /// that zero ranges of the source need no request at all.
    fn known_zero(&self) -> bool {
        false
    }

    /// Writes `data` at `offset`.
    async fn write(&self, offset: u64, data: &[u8]) -> EndResult<()>;

    /// Makes `offset..offset + len` read as zeroes, as cheaply as the
    /// destination allows (a hole where possible).
    async fn zero(&self, offset: u64, len: u64) -> EndResult<()>;

    /// Makes everything written durable.
    async fn flush(&self) -> EndResult<()>;

    /// Told, after a streamed source ended, how many bytes it held.
    async fn end(&self, len: u64) -> EndResult<()> {
        let _ = len;
        Ok(())
    }

    /// Closes connections cleanly.
    async fn close(&self) {}
}

/// `null:`: discards everything.
#[derive(Debug, Default)]
pub(crate) struct NullWriter;

#[async_trait]
impl Writer for NullWriter {
    fn size(&self) -> Option<u64> {
        None
    }
    fn known_zero(&self) -> bool {
        true
    }
    async fn write(&self, _offset: u64, _data: &[u8]) -> EndResult<()> {
        Ok(())
    }
    async fn zero(&self, _offset: u64, _len: u64) -> EndResult<()> {
        Ok(())
    }
    async fn flush(&self) -> EndResult<()> {
        Ok(())
    }
}

/// Bytes of [`zeroes`].
pub(crate) const ZEROES_LEN: usize = 1 << 20;

/// A shared buffer of zero bytes, for destinations that have to be sent
/// zeroes as data.
pub(crate) fn zeroes() -> &'static [u8] {
    static ZEROES: OnceLock<Box<[u8]>> = OnceLock::new();
    ZEROES.get_or_init(|| vec![0; ZEROES_LEN].into_boxed_slice())
}

/// Whether `data` is all zero bytes. Checks 64 bytes at a time (a loop the
/// compiler vectorizes) and stops at the first block that is not zero, so
/// data costs almost nothing and only zeroes are read in full.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    let blocks_zero = chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    blocks_zero && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_finds_a_single_set_byte_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf), "{len} zero bytes");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if at < len {
                    buf[at] = 1;
                    assert!(!is_zero(&buf), "byte {at} of {len} set");
                    buf[at] = 0;
                }
            }
        }
    }

    #[test]
    fn the_shared_zero_buffer_is_zero() {
        assert_eq!(zeroes().len(), ZEROES_LEN);
        assert!(is_zero(zeroes()));
    }
}
