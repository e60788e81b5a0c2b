//! Where the server listens, the URI clients use to get there, and the
//! files to remove when it stops (the socket, the private directory of
//! `-U -`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nbdx::server::Listener;
use tempfile::TempDir;

use crate::util::{uri_escape, CliResult};

/// An address clients connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// TCP: host as it goes in a URI (IPv6 in brackets) and port.
    Tcp { host: String, port: u16 },
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// A TCP endpoint for a listener bound on `ip` (every address if
    /// `None` or unspecified, which clients reach as `localhost`).
    pub(crate) fn tcp(ip: Option<IpAddr>, port: u16) -> Self {
        let host = match ip {
            Some(ip) if ip.is_unspecified() => "localhost".to_owned(),
            Some(IpAddr::V6(v6)) => format!("[{v6}]"),
            Some(ip) => ip.to_string(),
            None => "localhost".to_owned(),
        };
        Self::Tcp { host, port }
    }

    /// The endpoint of an already bound listener (socket activation).
    pub(crate) fn of_listener(listener: &Listener) -> CliResult<Self> {
        match listener {
            Listener::Tcp(l) => {
                let addr = l.local_addr().map_err(|e| format!("passed TCP socket: {e}"))?;
                Ok(Self::tcp(Some(addr.ip()), addr.port()))
            }
            Listener::Unix(l) => {
                let addr = l.local_addr().map_err(|e| format!("passed Unix socket: {e}"))?;
                let path = addr.as_pathname().ok_or("passed Unix socket has no path (abstract or unnamed)")?;
                Ok(Self::Unix(path.to_owned()))
            }
        }
    }

    /// The URI of `export` at this endpoint, in the form the NBD URI
    /// specification prefers (`nbd://host:port/name`,
    /// `nbd+unix:///name?socket=PATH`).
    pub(crate) fn uri(&self, export: &str) -> String {
        let name = uri_escape(export);
        match self {
            Self::Tcp { host, port } => format!("nbd://{host}:{port}/{name}"),
            Self::Unix(path) => format!("nbd+unix:///{name}?socket={}", uri_escape(&path.to_string_lossy())),
        }
    }
}

/// Files the server made to listen, removed when this is dropped: on a
/// normal exit, on an error and after SIGINT/SIGTERM alike.
#[derive(Debug, Default)]
pub(crate) struct Cleanup {
    socket: Option<PathBuf>,
    /// The directory of `-U -`, removed after the socket.
    private_dir: Option<TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = self.private_dir.take() {
            let _ = dir.close();
        }
    }
}

/// A listener with its endpoint and what to remove afterwards.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: Listener,
    pub(crate) endpoint: Endpoint,
    pub(crate) cleanup: Cleanup,
}

/// Binds what `-U`, `-i` and `-p` ask for: a Unix socket (`-` for a
/// private one in a new temporary directory) or TCP.
pub(crate) fn bind(unix: Option<&Path>, ip: Option<IpAddr>, port: Option<u16>) -> CliResult<Bound> {
    match unix {
        Some(path) if path == Path::new("-") => {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o700);
            let dir = tempfile::Builder::new()
                .prefix("nbdx-")
                .permissions(private)
                .tempdir()
                .map_err(|e| format!("cannot create a private socket directory: {e}"))?;
            let path = dir.path().join("socket");
            let listener = bind_unix(&path)?;
            let cleanup = Cleanup { socket: Some(path.clone()), private_dir: Some(dir) };
            Ok(Bound { listener, endpoint: Endpoint::Unix(path), cleanup })
        }
        Some(path) => {
            let listener = bind_unix(path)?;
            let cleanup = Cleanup { socket: Some(path.to_owned()), private_dir: None };
            Ok(Bound { listener, endpoint: Endpoint::Unix(path.to_owned()), cleanup })
        }
        None => {
            let port = port.unwrap_or(nbdx::proto::consts::DEFAULT_PORT);
            let listener = Listener::bind_tcp(ip, port).map_err(|e| format!("port {port}: {e}"))?;
            let port = listener.local_port().unwrap_or(port);
            Ok(Bound { listener, endpoint: Endpoint::tcp(ip, port), cleanup: Cleanup::default() })
        }
    }
}

/// Binds a Unix socket, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path) -> CliResult<Listener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err();
        if !stale {
            return Err(format!("{}: already exists", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Listener::Unix(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_the_host_or_socket_and_escape_the_export_name() {
        assert_eq!(Endpoint::tcp(None, 10809).uri(""), "nbd://localhost:10809/");
        assert_eq!(Endpoint::tcp(Some("0.0.0.0".parse().unwrap()), 1).uri("a b"), "nbd://localhost:1/a%20b");
        assert_eq!(Endpoint::tcp(Some("::".parse().unwrap()), 2).uri(""), "nbd://localhost:2/");
        assert_eq!(Endpoint::tcp(Some("::1".parse().unwrap()), 3).uri("x"), "nbd://[::1]:3/x");
        assert_eq!(Endpoint::tcp(Some("127.0.0.1".parse().unwrap()), 4).uri(""), "nbd://127.0.0.1:4/");
        assert_eq!(Endpoint::Unix("/tmp/a b.sock".into()).uri("e"), "nbd+unix:///e?socket=/tmp/a%20b.sock");
    }

    #[tokio::test]
    async fn a_private_socket_directory_is_removed_with_its_cleanup() {
        let bound = bind(Some(Path::new("-")), None, None).unwrap();
        let Endpoint::Unix(path) = &bound.endpoint else { panic!("not a Unix endpoint: {:?}", bound.endpoint) };
        let dir = path.parent().unwrap().to_owned();
        assert!(path.exists(), "the socket is bound");
        drop(bound);
        assert!(!dir.exists(), "{} is still there", dir.display());
    }

    #[tokio::test]
    async fn a_socket_file_that_is_in_use_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let first = bind(Some(&path), None, None).unwrap();
        let second = bind(Some(&path), None, None).unwrap_err();
        assert!(second.contains("already exists"), "{second}");
        drop(first);
        assert!(!path.exists(), "the first server's cleanup removes its socket");
    }
}
