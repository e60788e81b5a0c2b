//! Where a server is ([`Target`]), the byte stream to it ([`Stream`]) and
//! the plain socket it can become for the kernel ([`Socket`]).

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::error::{ClientError, ClientResult};

/// The address of an NBD server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// TCP: a host name or IP address (IPv6 without brackets) and a port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (10809 by default in URIs).
        port: u16,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A Linux abstract Unix socket, named without its leading NUL.
    UnixAbstract(Vec<u8>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::UnixAbstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl Target {
    /// Opens a connection, within `timeout`. TCP connections get
    /// `TCP_NODELAY` (requests are small and latency matters).
    pub async fn connect(&self, timeout: Duration) -> ClientResult<Stream> {
        let fail = |e: io::Error| ClientError::Connect { target: self.to_string(), source: Arc::new(e) };
        let stream = tokio::time::timeout(timeout, self.connect_inner())
            .await
            .map_err(|_| ClientError::Timeout { waiting_for: "the connection to open", after: timeout })?
            .map_err(fail)?;
        Ok(stream)
    }

    async fn connect_inner(&self) -> io::Result<Stream> {
        match self {
            Self::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Self::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
            Self::UnixAbstract(name) => connect_abstract(name).map(Stream::Unix),
        }
    }
}

#[cfg(target_os = "linux")]
fn connect_abstract(name: &[u8]) -> io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_: &[u8]) -> io::Result<UnixStream> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract Unix sockets exist only on Linux"))
}

/// Any bidirectional async byte stream (a TLS session, an in-memory pipe).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// The byte stream of one connection.
pub enum Stream {
    /// A TCP socket.
    Tcp(TcpStream),
    /// A Unix socket.
    Unix(UnixStream),
    /// Anything else, such as a TLS session over one of the above.
    Other(Box<dyn AsyncStream>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Self::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            Self::Other(_) => f.write_str("Other"),
        }
    }
}

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl Stream {
    /// Wraps any async stream.
    pub fn other(s: impl AsyncStream) -> Self {
        Self::Other(Box::new(s))
    }

    /// Splits into independently usable halves (sockets without a lock).
    pub(crate) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::Other(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }

    /// The plain socket in blocking mode, for handing to the kernel; a
    /// stream that is not a plain socket (TLS) is refused.
    pub(crate) fn into_socket(self) -> ClientResult<Socket> {
        let s = match self {
            Self::Tcp(s) => Socket::Tcp(s.into_std().map_err(ClientError::io)?),
            Self::Unix(s) => Socket::Unix(s.into_std().map_err(ClientError::io)?),
            Self::Other(_) => {
                return Err(ClientError::Unsupported("only a plain TCP or Unix socket can be handed over".into()))
            }
        };
        match &s {
            Socket::Tcp(t) => t.set_nonblocking(false),
            Socket::Unix(u) => u.set_nonblocking(false),
        }
        .map_err(ClientError::io)?;
        Ok(s)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Other($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A negotiated plain socket, in blocking mode, ready for the kernel.
#[derive(Debug)]
pub enum Socket {
    /// A TCP socket.
    Tcp(std::net::TcpStream),
    /// A Unix socket.
    Unix(std::os::unix::net::UnixStream),
}

impl Socket {
    /// The file descriptor.
    pub fn into_fd(self) -> OwnedFd {
        match self {
            Self::Tcp(s) => s.into(),
            Self::Unix(s) => s.into(),
        }
    }
}
