//! [`RemoteDevice`]: an export on another server as an nbdx [`Device`], so
//! that nbdx can serve (proxy) any NBD server.
//!
//! Capabilities come from the transmission flags: what the remote server
//! advertises is offered as [`Support::Native`] (the remote does it), the
//! rest as unsupported; block sizes are passed on as advertised (or the
//! spec's defaults).

use async_trait::async_trait;

use super::api::Client;
use crate::device::{Caps, Device, DeviceResult, Extent, Support, ZeroFlags};

/// A remote export, served through a [`Client`] (one connection or many).
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    client: Client,
    caps: Caps,
}

fn native(advertised: bool) -> Support {
    if advertised {
        Support::Native
    } else {
        Support::None
    }
}

impl RemoteDevice {
    /// Wraps a connected client.
    pub fn new(client: impl Into<Client>) -> Self {
        let client = client.into();
        let i = client.info();
        let caps = Caps {
            read_only: i.is_read_only(),
            flush: i.can_flush(),
            fua: native(i.can_fua()),
            trim: i.can_trim(),
            zero: native(i.can_zero()),
            fast_zero: i.can_fast_zero(),
            cache: native(i.can_cache()),
            multi_conn: i.can_multi_conn(),
            rotational: i.is_rotational(),
            extents: client.can_block_status(),
            block_size: i.effective_block_size(),
            immediate: false,
        };
        Self { client, caps }
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl Device for RemoteDevice {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn caps(&self) -> Caps {
        self.caps
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        Ok(self.client.read(offset, buf).await?)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        Ok(self.client.write(offset, data, fua).await?)
    }

    async fn flush(&self) -> DeviceResult<()> {
        Ok(self.client.flush().await?)
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        Ok(self.client.trim(offset, length, fua).await?)
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        Ok(self.client.write_zeroes(offset, length, flags).await?)
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        Ok(self.client.cache(offset, length).await?)
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        Ok(self.client.block_status(offset, length).await?)
    }
}
