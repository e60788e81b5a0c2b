//! systemd socket activation: `LISTEN_PID` and `LISTEN_FDS` hand this
//! process already bound sockets starting at file descriptor 3
//! (`sd_listen_fds(3)`). Listening sockets (`Accept=no`, the default) are
//! served like `-U`/`-p` ones; a single connected socket (`Accept=yes`
//! without `StandardInput=socket`) is served like `-s` serves stdin.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nbdx::server::{BoxStream, Listener};
use socket2::{Domain, Socket, Type};

use super::endpoint::{Bound, Cleanup, Endpoint};
use super::ServeArgs;
use crate::util::CliResult;

/// The first passed file descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The variables of the protocol; all are removed so that commands run by
/// nbdx (`--run`) do not take the sockets for theirs.
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Takes the sockets passed to this process, if any. Must run before any
/// thread is started: it changes the environment.
pub(crate) fn take_sockets() -> CliResult<Option<Vec<Socket>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for name in VARIABLES {
        std::env::remove_var(name);
    }
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(None) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (the variables were inherited).
        tracing::debug!(LISTEN_PID = %pid, "socket activation variables are not for this process");
        return Ok(None);
    }
    let count: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| format!("socket activation: LISTEN_FDS={count:?} is not a number of sockets"))?;
    (FIRST_FD..FIRST_FD + count).map(adopt).collect::<CliResult<Vec<_>>>().map(Some)
}

/// Takes ownership of a passed file descriptor, which must be a stream
/// socket.
fn adopt(fd: RawFd) -> CliResult<Socket> {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor flags of an integer
    // descriptor; it fails with EBADF if the descriptor is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!("socket activation: file descriptor {fd} is not open"));
    }
    // SAFETY: socket activation hands descriptors 3..3+LISTEN_FDS over to
    // this process; this one was just checked to be open, and nothing else
    // in nbdx owns or closes it.
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let fail = |e: std::io::Error| format!("socket activation: file descriptor {fd}: {e}");
    if socket.r#type().map_err(fail)? != Type::STREAM {
        return Err(format!("socket activation: file descriptor {fd} is not a stream socket"));
    }
    socket.set_cloexec(true).map_err(fail)?;
    Ok(socket)
}

/// The options socket activation replaces, if one was given.
pub(crate) fn clash(args: &ServeArgs) -> Option<&'static str> {
    [
        (args.unix.is_some(), "-U/--unix"),
        (args.port.is_some(), "-p/--port"),
        (args.ip.is_some(), "-i/--ip"),
        (args.ops.single, "-s/--single"),
        (args.ops.run.is_some(), "--run"),
    ]
    .into_iter()
    .find_map(|(given, name)| given.then_some(name))
}

/// What the passed sockets are for.
pub(crate) enum Activated {
    /// Listening sockets: accept clients on each.
    Listeners(Vec<Bound>),
    /// One connected socket: serve that client, then exit.
    Connection(BoxStream),
}

/// Turns the passed sockets into tokio listeners (or one connection).
/// Must run inside the runtime.
pub(crate) fn adopt_all(sockets: Vec<Socket>) -> CliResult<Activated> {
    let listening = sockets.iter().map(Socket::is_listener).collect::<Result<Vec<_>, _>>();
    let listening = listening.map_err(|e| format!("socket activation: {e}"))?;
    if listening.iter().all(|l| !l) && sockets.len() == 1 {
        let socket = sockets.into_iter().next().ok_or("socket activation: no socket")?;
        return connection(socket).map(Activated::Connection);
    }
    if listening.iter().any(|l| !l) {
        return Err("socket activation: expected listening sockets (or exactly one connection)".into());
    }
    let mut bound = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let listener = listener(socket)?;
        let endpoint = Endpoint::of_listener(&listener)?;
        // The socket belongs to the service manager: nothing to remove.
        bound.push(Bound { listener, endpoint, cleanup: Cleanup::default() });
    }
    Ok(Activated::Listeners(bound))
}

fn is_unix(socket: &Socket) -> CliResult<bool> {
    let domain = socket.domain().map_err(|e| format!("socket activation: {e}"))?;
    match domain {
        Domain::UNIX => Ok(true),
        Domain::IPV4 | Domain::IPV6 => Ok(false),
        other => Err(format!("socket activation: unsupported address family {other:?}")),
    }
}

fn listener(socket: Socket) -> CliResult<Listener> {
    let fail = |e: std::io::Error| format!("socket activation: {e}");
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(if is_unix(&socket)? {
        Listener::Unix(tokio::net::UnixListener::from_std(socket.into()).map_err(fail)?)
    } else {
        Listener::Tcp(tokio::net::TcpListener::from_std(socket.into()).map_err(fail)?)
    })
}

fn connection(socket: Socket) -> CliResult<BoxStream> {
    let fail = |e: std::io::Error| format!("socket activation: {e}");
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(if is_unix(&socket)? {
        Box::new(tokio::net::UnixStream::from_std(socket.into()).map_err(fail)?)
    } else {
        let stream = tokio::net::TcpStream::from_std(socket.into()).map_err(fail)?;
        // "both the client and server SHOULD disable Nagle's algorithm"
        stream.set_nodelay(true).map_err(fail)?;
        Box::new(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_listener(dir: &std::path::Path, name: &str) -> Socket {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        socket.bind(&socket2::SockAddr::unix(dir.join(name)).unwrap()).unwrap();
        socket.listen(8).unwrap();
        socket
    }

    #[tokio::test]
    async fn passed_listening_sockets_become_listeners_with_their_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        tcp.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        tcp.listen(8).unwrap();
        let port = tcp.local_addr().unwrap().as_socket().unwrap().port();
        let Activated::Listeners(bound) = adopt_all(vec![unix_listener(dir.path(), "a"), tcp]).unwrap() else {
            panic!("listening sockets taken for a connection");
        };
        let endpoints: Vec<_> = bound.iter().map(|b| b.endpoint.clone()).collect();
        assert_eq!(endpoints, [Endpoint::Unix(dir.path().join("a")), Endpoint::Tcp { host: "127.0.0.1".into(), port }]);
        drop(bound);
        assert!(dir.path().join("a").exists(), "a passed socket belongs to the service manager");
    }

    #[tokio::test]
    async fn one_passed_connection_is_served_as_a_single_client() {
        let (ours, _theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
        assert!(matches!(adopt_all(vec![ours]), Ok(Activated::Connection(_))));
    }

    #[tokio::test]
    async fn connections_mixed_with_listeners_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, _theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
        let Err(e) = adopt_all(vec![unix_listener(dir.path(), "b"), ours]) else { panic!("accepted") };
        assert!(e.contains("expected listening sockets"), "{e}");
    }
}
