//! Accepting connections on TCP or Unix listeners.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use super::Server;

/// A bound listener the server accepts clients on.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain socket.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Self::Unix(l)
    }
}

impl Listener {
    /// Binds a TCP listener on `ip`, or on every address (IPv6 and IPv4,
    /// dual-stack where the system allows) when `ip` is `None`.
    pub fn bind_tcp(ip: Option<std::net::IpAddr>, port: u16) -> io::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let any6 = std::net::SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port);
        let any4 = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        let open = |addr: std::net::SocketAddr| -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            if addr.is_ipv6() && ip.is_none() {
                socket.set_only_v6(false)?;
            }
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        };
        let socket = match ip {
            Some(ip) => open(std::net::SocketAddr::new(ip, port))?,
            // Hosts without IPv6 fall back to IPv4 only.
            None => open(any6).or_else(|_| open(any4))?,
        };
        Ok(Self::Tcp(TcpListener::from_std(socket.into())?))
    }

    /// The local TCP port, for listeners bound to port 0.
    pub fn local_port(&self) -> Option<u16> {
        match self {
            Self::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Self::Unix(_) => None,
        }
    }

    /// Binds `addr`: `host:port` for TCP, anything containing `/` for a
    /// Unix socket path.
    pub async fn bind(addr: &str) -> io::Result<Self> {
        if addr.contains('/') {
            Ok(Self::Unix(UnixListener::bind(addr)?))
        } else {
            Ok(Self::Tcp(TcpListener::bind(addr).await?))
        }
    }
}

/// Warnings a peer can trigger at will are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for a warning that peers can provoke (refused connections,
/// failed accepts): a flood of connections must not become a flood of log
/// lines. Events in between are counted and the count goes with the next
/// warning.
#[derive(Debug)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const fn new() -> Self {
        Self { last: None, suppressed: 0 }
    }

    /// Whether to log an event happening at `now`; if so, how many earlier
    /// events went unlogged.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Accepts until shutdown; then waits for connections (bounded by the
/// grace period).
pub(super) async fn serve(server: Server, listener: Listener) -> io::Result<()> {
    let inner = &server.inner;
    let slots = Arc::new(Semaphore::new(inner.options.max_connections.max(1)));
    let (mut refusals, mut failures) = (Throttle::new(), Throttle::new());
    let mut accepted_count: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            a = accept(&listener) => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_transient(&e) => {
                match failures.admit(Instant::now()) {
                    Some(suppressed) => tracing::warn!(error = %e, suppressed, "accept failed"),
                    None => tracing::debug!(error = %e, "accept failed"),
                }
                // Out of file descriptors and the like: back off a little
                // instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            match refusals.admit(Instant::now()) {
                Some(suppressed) => {
                    tracing::warn!(%peer, suppressed, "connection limit reached; closing new connections")
                }
                None => tracing::debug!(%peer, "connection limit reached; closing new connection"),
            }
            drop(stream);
            continue;
        };
        let server2 = server.clone();
        accepted_count += 1;
        let span = tracing::info_span!("conn", id = accepted_count, %peer);
        inner.tracker.spawn(
            async move {
                tracing::info!("connected");
                let r = match stream {
                    Accepted::Tcp(s) => server2.serve_connection(s).await,
                    Accepted::Unix(s) => server2.serve_connection(s).await,
                };
                match r {
                    Ok(()) => tracing::info!("disconnected"),
                    Err(e) => tracing::info!(error = %e, "connection ended"),
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
    server.wait().await;
    Ok(())
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Accepted, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            // "both the client and server SHOULD disable Nagle's algorithm"
            s.set_nodelay(true)?;
            Ok((Accepted::Tcp(s), addr.to_string()))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), "unix".to_owned()))
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_refusals_gives_one_warning_then_one_per_period_with_the_count() {
        let mut t = Throttle::new();
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0), "the first is logged");
        for i in 1..300u64 {
            assert_eq!(t.admit(start + Duration::from_millis(i)), None, "event {i} of the burst");
        }
        assert_eq!(t.admit(start + WARN_EVERY), Some(299), "the next period reports what was left out");
        assert_eq!(t.admit(start + WARN_EVERY + Duration::from_secs(1)), None);
        assert_eq!(t.admit(start + WARN_EVERY * 3), Some(1));
    }
}
