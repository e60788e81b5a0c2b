//! A blocking front-end over the async client, for programs without an
//! async runtime.
//!
//! Each [`Client`] owns one small current-thread runtime, created once at
//! connect time and used by every call (never one per call). Calls may be
//! made from several threads at once: one of them drives the connection's
//! reader while the others wait. Do not use it from inside an async runtime.

use std::io;
use std::sync::Arc;

use tokio::runtime::Runtime;

use super::error::{ClientError, ClientResult};
use super::info::ExportInfo;
use super::multi::MultiConn;
use super::options::ClientOptions;
use super::target::Target;
use crate::device::{Extent, ZeroFlags};
use crate::uri::NbdUri;

/// A connected client whose calls block. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    // Declared first: the connections close before the runtime goes away.
    inner: super::Client,
    rt: Runtime,
}

fn runtime() -> ClientResult<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e: io::Error| ClientError::Io(Arc::new(e)))
}

impl Client {
    /// Connects to `target` and opens the export named in `opts`.
    pub fn connect(target: &Target, opts: &ClientOptions) -> ClientResult<Self> {
        let rt = runtime()?;
        let inner = rt.block_on(super::Client::connect(target, opts))?;
        Ok(Self { inner, rt })
    }

    /// Connects to an NBD URI with default options.
    pub fn connect_uri(uri: &str) -> ClientResult<Self> {
        let uri = NbdUri::parse(uri)?;
        Self::connect(&uri.target, &ClientOptions::from_uri(&uri))
    }

    /// Opens `n` connections to an export that allows it (see [`MultiConn`]).
    pub fn connect_multi(target: &Target, opts: &ClientOptions, n: usize) -> ClientResult<Self> {
        let rt = runtime()?;
        let inner = rt.block_on(MultiConn::connect(target, opts, n))?.into_client();
        Ok(Self { inner, rt })
    }

    /// The async client underneath (usable only inside [`block_on`](Self::block_on)).
    pub fn async_client(&self) -> &super::Client {
        &self.inner
    }

    /// Runs a future on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        self.inner.info()
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// See [`super::Client::read`].
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> ClientResult<()> {
        self.rt.block_on(self.inner.read(offset, buf))
    }

    /// See [`super::Client::write`].
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> ClientResult<()> {
        self.rt.block_on(self.inner.write(offset, data, fua))
    }

    /// See [`super::Client::flush`].
    pub fn flush(&self) -> ClientResult<()> {
        self.rt.block_on(self.inner.flush())
    }

    /// See [`super::Client::trim`].
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> ClientResult<()> {
        self.rt.block_on(self.inner.trim(offset, len, fua))
    }

    /// See [`super::Client::write_zeroes`].
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> ClientResult<()> {
        self.rt.block_on(self.inner.write_zeroes(offset, len, flags))
    }

    /// See [`super::Client::cache`].
    pub fn cache(&self, offset: u64, len: u64) -> ClientResult<()> {
        self.rt.block_on(self.inner.cache(offset, len))
    }

    /// See [`super::Client::block_status`].
    pub fn block_status(&self, offset: u64, len: u64) -> ClientResult<Vec<Extent>> {
        self.rt.block_on(self.inner.block_status(offset, len))
    }

    /// See [`super::Client::extents`].
    pub fn extents(&self, offset: u64, len: u64) -> ClientResult<Vec<Extent>> {
        self.rt.block_on(self.inner.extents(offset, len))
    }

    /// See [`super::Client::disconnect`].
    pub fn disconnect(self) {
        self.rt.block_on(self.inner.disconnect());
    }
}
