//! NBD exports as copy ends: N connections when the export advertises
//! `NBD_FLAG_CAN_MULTI_CONN`, reads straight into recycled buffers, block
//! status for the allocation map, `NBD_CMD_WRITE_ZEROES` for zero ranges.

use async_trait::async_trait;
use nbdx_proto::AllocationFlags;
use tokio::task::JoinSet;

use super::ends::{zeroes, Reader, Writer};
use super::{dst_client, src_client, EndResult};
use crate::client::{Client, ClientError, ClientOptions, ClientResult};
use crate::device::{Extent, ZeroFlags};
use crate::uri::NbdUri;

/// Connects to `uri`: `n` connections if the export advertises multi-conn,
/// else one. Fails (closing what was opened) if any connection fails.
pub(crate) async fn connect(uri: &NbdUri, opts: &ClientOptions, n: usize) -> ClientResult<Client> {
    let first = Client::connect(&uri.target, opts).await?;
    if n <= 1 || !first.info().can_multi_conn() {
        return Ok(first);
    }
    let mut set = JoinSet::new();
    for _ in 1..n {
        let (target, opts) = (uri.target.clone(), opts.clone());
        set.spawn(async move { Client::connect(&target, &opts).await });
    }
    let mut clients = vec![first];
    let mut failure = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(ClientError::Closed)),
        }
    }
    if let Some(e) = failure {
        for c in &clients {
            c.disconnect().await;
        }
        return Err(e);
    }
    Client::merge(clients, opts)
}

/// An export read from.
#[derive(Debug)]
pub(crate) struct NbdReader {
    pub client: Client,
    /// Whether to ask for block status (else everything is data).
    pub extents: bool,
}

impl NbdReader {
    pub fn new(client: Client, use_extents: bool) -> Self {
        let extents = use_extents && client.can_block_status();
        Self { client, extents }
    }
}

#[async_trait]
impl Reader for NbdReader {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn alignment(&self) -> u64 {
        u64::from(self.client.info().effective_block_size().minimum.max(1))
    }

    fn connections(&self) -> usize {
        self.client.connections()
    }

    async fn extents(&self, offset: u64, len: u64) -> EndResult<Vec<Extent>> {
        if !self.extents {
            return Ok(vec![Extent { length: len, flags: AllocationFlags::empty() }]);
        }
        self.client.block_status(offset, len).await.map_err(src_client)
    }

    async fn read(&self, offset: u64, buf: Vec<u8>) -> EndResult<Vec<u8>> {
        self.client.read_owned(offset, buf).await.map_err(src_client)
    }

    async fn close(&self) {
        self.client.disconnect().await;
    }
}

/// An export written to.
#[derive(Debug)]
pub(crate) struct NbdWriter {
    pub client: Client,
    pub known_zero: bool,
}

impl NbdWriter {
    /// Fails if the export is read-only.
    pub fn new(client: Client, known_zero: bool) -> EndResult<Self> {
        if client.info().is_read_only() {
            return Err(super::EndError::destination("the export is read-only"));
        }
        Ok(Self { client, known_zero })
    }
}

#[async_trait]
impl Writer for NbdWriter {
    fn size(&self) -> Option<u64> {
        Some(self.client.size())
    }

    fn alignment(&self) -> u64 {
        u64::from(self.client.info().effective_block_size().minimum.max(1))
    }

    fn known_zero(&self) -> bool {
        self.known_zero
    }

    async fn write(&self, offset: u64, data: &[u8]) -> EndResult<()> {
        self.client.write(offset, data, false).await.map_err(dst_client)
    }

    async fn zero(&self, offset: u64, len: u64) -> EndResult<()> {
        if self.client.info().can_zero() {
            return self.client.write_zeroes(offset, len, ZeroFlags::default()).await.map_err(dst_client);
        }
        // No NBD_CMD_WRITE_ZEROES (and a trim need not read back as zeroes):
        // the zeroes go over the wire.
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let n = (end - at).min(zeroes().len() as u64);
            self.client.write(at, &zeroes()[..n as usize], false).await.map_err(dst_client)?;
            at += n;
        }
        Ok(())
    }

    async fn flush(&self) -> EndResult<()> {
        if !self.client.info().can_flush() {
            return Ok(());
        }
        self.client.flush().await.map_err(dst_client)
    }

    async fn close(&self) {
        self.client.disconnect().await;
    }
}
