//! The userspace TLS proxy for the kernel hand-over.
//!
//! The Linux NBD driver sends requests over a plain socket and speaks no
//! TLS. For an `nbds://` export the client negotiates over TLS itself, then
//! gives the kernel one end of a Unix socketpair and relays bytes between
//! the other end and the TLS session:
//!
//! ```text
//!  nbd.ko ══ socketpair ══ pump() ══ TLS session ══ TCP/Unix ══ server
//!           (plain NBD)     both directions, 256 KiB buffers
//! ```
//!
//! [`connect_for_handover`] does all of it and works for plaintext targets
//! too (then there is no proxy):
//!
//! ```no_run
//! # async fn demo(uri: &nbdx::uri::NbdUri) -> nbdx::client::ClientResult<()> {
//! use nbdx::client::ClientOptions;
//! let opts = ClientOptions::from_uri(uri);
//! let (handover, proxy) = nbdx::tls::proxy::connect_for_handover(&uri.target, &opts).await?;
//! // Give handover.socket.into_fd() to the kernel (netlink CONNECT), with
//! // handover.export.size and .flags. Keep the runtime running while the
//! // device is attached: the proxy is a task on it.
//! if let Some(proxy) = proxy {
//!     let stats = proxy.wait().await; // ends when the kernel or the server closes
//! }
//! # Ok(()) }
//! ```
//!
//! Synchronous code without a runtime of its own uses
//! [`connect_for_handover_blocking`]: the proxy then runs on a thread.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::client::{
    check_tls, connect_for_handover as plain_handover, ClientError, ClientOptions, ClientResult, Handover, Negotiation,
    Socket, Stream, Target, TlsMode,
};

/// Bytes read at a time in each direction.
pub const BUFFER: usize = 256 << 10;

/// Size asked for the socketpair's kernel buffers (capped by
/// `net.core.wmem_max`/`rmem_max` unless privileged).
const SOCKET_BUFFER: usize = 4 << 20;

/// After the kernel closed its end, how long the server gets to answer the
/// TLS close (`close_notify`) before the proxy stops.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a proxy relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Bytes from the kernel to the server.
    pub to_server: u64,
    /// Bytes from the server to the kernel.
    pub to_kernel: u64,
}

/// A running proxy task. Dropping it does not stop the task; [`abort`](Self::abort) does.
#[derive(Debug)]
pub struct Proxy {
    task: JoinHandle<io::Result<ProxyStats>>,
}

impl Proxy {
    /// Waits for the proxy to end: `Ok` when one side closed cleanly, the
    /// first I/O or TLS error otherwise.
    pub async fn wait(self) -> io::Result<ProxyStats> {
        self.task.await.map_err(io::Error::other)?
    }

    /// Whether the proxy has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the proxy: both sockets close, and the kernel sees its
    /// connection die.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Relays between `server` (a negotiated stream, usually TLS, in the
/// transmission phase) and `kernel` (our end of the kernel's socketpair)
/// until one side closes.
///
/// * The server closes or fails: the proxy ends at once and closes the
///   kernel's socket, which the kernel sees as a dead connection.
/// * The kernel closes (after `NBD_CMD_DISC`, or on disconnect): the proxy
///   closes the TLS session (`close_notify`), still passes on what the
///   server sends for up to [`CLOSE_GRACE`], and ends.
pub async fn pump(server: Stream, kernel: UnixStream) -> io::Result<ProxyStats> {
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let (mut kernel_rx, mut kernel_tx) = kernel.into_split();
    let (to_server, to_kernel) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = relay(&mut kernel_rx, &mut server_tx, &to_server);
    let down = relay(&mut server_rx, &mut kernel_tx, &to_kernel);
    tokio::pin!(up, down);
    let ended = tokio::select! {
        r = &mut down => r,
        r = &mut up => match r {
            Err(e) => Err(e),
            // The kernel is gone: what the server still sends has nowhere
            // to go, so a failed write to the kernel is not an error.
            Ok(()) => match tokio::time::timeout(CLOSE_GRACE, down).await {
                Ok(Err(e)) if !gone(&e) => Err(e),
                Ok(_) => Ok(()),
                Err(_) => {
                    tracing::debug!("server did not close within {CLOSE_GRACE:?} of the kernel");
                    Ok(())
                }
            },
        },
    };
    ended?;
    Ok(ProxyStats { to_server: to_server.load(Ordering::Relaxed), to_kernel: to_kernel.load(Ordering::Relaxed) })
}

/// Copies until end of stream, then shuts `tx` down (for TLS: `close_notify`).
async fn relay<R, W>(rx: &mut R, tx: &mut W, count: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tx.write_all(&buf[..n]).await?;
        tx.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    // The other side may be gone already (the server closes right after
    // NBD_CMD_DISC): then there is nothing left to close.
    match tx.shutdown().await {
        Err(e) if !gone(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Whether `e` only says that the peer has already closed.
fn gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::NotConnected | io::ErrorKind::ConnectionReset)
}

/// A connected socketpair: (the kernel's end, in blocking mode; ours).
fn socketpair() -> io::Result<(StdUnixStream, UnixStream)> {
    let (kernel, ours) = StdUnixStream::pair()?;
    for s in [&kernel, &ours] {
        let s = socket2::SockRef::from(s);
        // Best effort: larger buffers mean fewer wake-ups for large I/O.
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    ours.set_nonblocking(true)?;
    Ok((kernel, UnixStream::from_std(ours)?))
}

/// Connects and negotiates up to transmission in the kernel's protocol
/// subset (simple replies, compact headers, no metadata contexts), like
/// [`client::connect_for_handover`](crate::client::connect_for_handover),
/// for plaintext and TLS alike.
///
/// * Plaintext (`opts` without [`TlsMode::Require`]): the negotiated
///   socket itself is handed over; no proxy.
/// * TLS: negotiation (STARTTLS first) runs over TLS; the returned socket is
///   the kernel's end of a socketpair, and a [`pump`] task on the current
///   runtime relays it to the TLS session. The runtime must outlive the
///   attachment.
pub async fn connect_for_handover(target: &Target, opts: &ClientOptions) -> ClientResult<(Handover, Option<Proxy>)> {
    if opts.tls != TlsMode::Require {
        return Ok((plain_handover(target, opts).await?, None));
    }
    let host = match target {
        Target::Tcp { host, .. } => host.as_str(),
        _ => "",
    };
    check_tls(opts)?;
    let stream = target.connect(opts.timeout).await?;
    let (stream, export) = Negotiation::handover(stream, opts, host).await?;
    let (kernel, ours) = socketpair().map_err(ClientError::io)?;
    let task = tokio::spawn(pump(stream, ours));
    Ok((Handover { socket: Socket::Unix(kernel), export }, Some(Proxy { task })))
}

/// A proxy running on a thread of its own (see [`connect_for_handover_blocking`]).
#[derive(Debug)]
pub struct ProxyThread {
    thread: std::thread::JoinHandle<io::Result<ProxyStats>>,
}

impl ProxyThread {
    /// Waits for the proxy to end (see [`Proxy::wait`]).
    pub fn join(self) -> io::Result<ProxyStats> {
        self.thread.join().map_err(|_| io::Error::other("the TLS proxy thread panicked"))?
    }

    /// Whether the proxy has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// [`connect_for_handover`] for synchronous callers (such as `nbdx attach`):
/// negotiates on a private runtime, then keeps that runtime, and with it the
/// proxy, running on a new thread named `nbdx-tls-proxy` until the kernel or
/// the server closes. The thread lives in this process: do not `fork` after
/// calling this (a child has no threads but the caller); start it in the
/// process that stays with the device.
pub fn connect_for_handover_blocking(
    target: &Target,
    opts: &ClientOptions,
) -> ClientResult<(Handover, Option<ProxyThread>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ClientError::io)?;
    let (handover, proxy) = runtime.block_on(connect_for_handover(target, opts))?;
    let Some(proxy) = proxy else { return Ok((handover, None)) };
    let thread = std::thread::Builder::new()
        .name("nbdx-tls-proxy".into())
        .spawn(move || runtime.block_on(proxy.wait()))
        .map_err(ClientError::io)?;
    Ok((handover, Some(ProxyThread { thread })))
}
