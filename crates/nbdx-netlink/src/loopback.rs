//! [`loopback`]: an in-process [`Device`] as `/dev/nbdN`.
//!
//! ```text
//!  Device ◄── nbdx Server (tokio) ◄── socketpair ──► handshake (client) ──► kernel
//!                 serve_connection      × connections     handover_over        CONNECT
//! ```
//!
//! The server end of each socketpair is served by an nbdx [`Server`] on a
//! tokio runtime (the caller's, or one the [`Loopback`] owns); the client
//! end negotiates like any client and is then handed to the kernel. The
//! device is torn down by [`Loopback::close`] or on drop: DISCONNECT (the
//! kernel sends `NBD_CMD_DISC`, the server finishes in-flight requests and
//! flushes), server stop, a last flush, and a wait until the kernel has let
//! the device go.
//!
//! The runtime threads the loopback creates are marked `PR_SET_IO_FLUSHER`
//! (best effort; it needs `CAP_SYS_RESOURCE`), so that memory reclaim never
//! waits on writeback to the very device they serve.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nbdx::client::{handover_over, ClientOptions, Stream};
use nbdx::device::Device;
use nbdx::server::Server;
use nbdx::Export;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::task::JoinHandle;

use crate::configure::{Attachment, ConfigureOptions, Driver, Interface};
use crate::error::{Error, Result};
use crate::sysfs;

/// `PR_SET_IO_FLUSHER` of `include/uapi/linux/prctl.h` (Linux 5.6).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// How [`loopback`] sets the device up.
#[derive(Debug, Clone)]
pub struct LoopbackOptions {
    /// Socketpairs, one kernel connection each; more than one needs a
    /// multi-conn device (`Caps::multi_conn`).
    pub connections: usize,
    /// What the kernel is told (index, read-only, timeouts, backend).
    /// `size` is replaced by the `size` argument of [`loopback`].
    pub configure: ConfigureOptions,
    /// Which kernel interface to use.
    pub interface: Interface,
    /// Serve on this runtime (multi-threaded) instead of one of our own.
    pub runtime: Option<Handle>,
    /// Bound on each wait of the teardown.
    pub teardown_timeout: Duration,
}

impl Default for LoopbackOptions {
    fn default() -> Self {
        Self {
            connections: 1,
            configure: ConfigureOptions { backend: Some("nbdx loopback".into()), ..ConfigureOptions::default() },
            interface: Interface::Auto,
            runtime: None,
            teardown_timeout: Duration::from_secs(30),
        }
    }
}

/// A device served in-process and attached as `/dev/nbdN`; detached by
/// [`close`](Self::close) or on drop.
///
/// Close or drop it from blocking code (a plain thread, `spawn_blocking`):
/// the teardown waits for the kernel and for the server.
pub struct Loopback {
    index: u32,
    size: u64,
    driver: Driver,
    attachment: Option<Attachment>,
    server: Server,
    device: Arc<dyn Device>,
    connections: Vec<JoinHandle<()>>,
    handle: Option<Handle>,
    runtime: Option<Runtime>,
    teardown_timeout: Duration,
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("attachment", &self.attachment)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// Serves `device` in-process and attaches it; returns once `/dev/nbdN` is
/// usable. `size` (at most the device's size) is what the kernel sees;
/// `None` for all of the device.
pub fn loopback(device: Arc<dyn Device>, size: Option<u64>, options: LoopbackOptions) -> Result<Loopback> {
    let connections = options.connections;
    if connections == 0 {
        return Err(Error::Unsupported("a loopback device needs at least one connection".into()));
    }
    if connections > 1 && !device.caps().multi_conn {
        return Err(Error::Unsupported(format!(
            "{connections} connections need a device that is consistent across connections (multi-conn)"
        )));
    }
    if options.runtime.as_ref().is_some_and(|h| h.runtime_flavor() != RuntimeFlavor::MultiThread) {
        return Err(Error::Unsupported("a loopback device needs a multi-threaded tokio runtime".into()));
    }
    let driver = Driver::open(options.interface)?;
    let export = Export::from_arc("", Arc::clone(&device)).with_read_only(options.configure.read_only);
    let server = Server::new(vec![export]).map_err(|e| Error::Unsupported(e.to_string()))?;
    let (handle, runtime) = match options.runtime {
        Some(handle) => (handle, None),
        None => {
            let runtime = own_runtime()?;
            (runtime.handle().clone(), Some(runtime))
        }
    };

    let mut tasks = Vec::with_capacity(connections);
    let negotiated = off_runtime(|| {
        handle.block_on(async {
            let mut sockets = Vec::with_capacity(connections);
            let mut export = None;
            for _ in 0..connections {
                let (ours, theirs) = tokio::net::UnixStream::pair()?;
                let server = server.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(err) = server.serve_connection(theirs).await {
                        tracing::warn!(%err, "loopback connection ended with an error");
                    }
                }));
                let handover = handover_over(Stream::Unix(ours), &ClientOptions::new()).await?;
                sockets.push(handover.socket.into_fd());
                export = Some(handover.export);
            }
            Ok::<_, Error>((sockets, export.expect("at least one connection")))
        })
    });
    let mut loopback = Loopback {
        index: 0,
        size: 0,
        driver,
        attachment: None,
        server,
        device,
        connections: tasks,
        handle: Some(handle),
        runtime,
        teardown_timeout: options.teardown_timeout,
    };
    let (sockets, export): (Vec<OwnedFd>, _) = negotiated?;
    let borrowed: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let configure = ConfigureOptions { size, ..options.configure };
    let attachment = loopback.driver.configure(&export, &borrowed, &configure)?;
    loopback.index = attachment.index();
    loopback.size = sysfs::size_bytes(loopback.index)?;
    loopback.attachment = Some(attachment);
    Ok(loopback)
}

impl Loopback {
    /// The device index N.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `/dev/nbdN`.
    pub fn path(&self) -> PathBuf {
        sysfs::device_path(self.index)
    }

    /// The size of the block device in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The served device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// Detaches the device, stops the server and flushes the device;
    /// reports what failed.
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let timeout = self.teardown_timeout;
        let detached = match self.attachment.take() {
            Some(attachment) => self.driver.disconnect(attachment, timeout),
            None => Ok(()),
        };
        let Some(handle) = self.handle.take() else { return detached };
        let connections = std::mem::take(&mut self.connections);
        let server = self.server.clone();
        let device = Arc::clone(&self.device);
        let runtime = self.runtime.take();
        let flushed = off_runtime(move || {
            let flushed = handle.block_on(async move {
                // NBD_CMD_DISC ends each connection once its requests are done.
                let drained = tokio::time::timeout(timeout, async {
                    for connection in connections {
                        let _ = connection.await;
                    }
                })
                .await;
                server.shutdown();
                if drained.is_err() {
                    tracing::warn!(?timeout, "loopback connections still open after the disconnect");
                }
                match device.caps().flush {
                    true => device.flush().await.map_err(|e| io::Error::other(format!("final flush failed: {e}"))),
                    false => Ok(()),
                }
            });
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(timeout);
            }
            flushed
        });
        detached.and(flushed.map_err(Error::Io))
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::warn!(index = self.index, %err, "tearing down the loopback device failed");
        }
    }
}

/// A multi-threaded runtime whose threads are marked as I/O flushers.
fn own_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nbdx-loopback")
        .on_thread_start(|| {
            // SAFETY: prctl with PR_SET_IO_FLUSHER takes integer arguments
            // only and changes flags of the calling thread; failure
            // (EPERM without CAP_SYS_RESOURCE, EINVAL before 5.6) is harmless.
            unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
        })
        .build()
        .map_err(Error::Io)
}

/// Runs `f` on a thread of its own and waits for it, so that blocking on
/// the runtime (or dropping one) works even when called from async code.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdx::MemoryDevice;

    #[test]
    fn several_connections_need_a_multi_conn_device() {
        struct Single(MemoryDevice);
        #[async_trait::async_trait]
        impl Device for Single {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn caps(&self) -> nbdx::device::Caps {
                nbdx::device::Caps { multi_conn: false, ..self.0.caps() }
            }
            async fn read(&self, offset: u64, buf: &mut [u8]) -> nbdx::device::DeviceResult<()> {
                self.0.read(offset, buf).await
            }
        }
        let device = Arc::new(Single(MemoryDevice::new(1 << 20)));
        let options = LoopbackOptions { connections: 2, ..LoopbackOptions::default() };
        let err = loopback(device, None, options).unwrap_err();
        assert!(err.to_string().contains("multi-conn"), "{err}");
    }

    #[test]
    fn a_current_thread_runtime_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let options = LoopbackOptions { runtime: Some(runtime.handle().clone()), ..LoopbackOptions::default() };
        let err = loopback(Arc::new(MemoryDevice::new(1 << 20)), None, options).unwrap_err();
        assert!(err.to_string().contains("multi-threaded"), "{err}");
    }
}
