//! `-s/--single`: one client on stdin/stdout (inetd, `ssh host nbdx serve
//! -s`, systemd `Accept=yes` with `StandardInput=socket`), then exit.
//! Nothing but NBD goes to stdout: the URI is not printed and logs go to
//! stderr.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use nbdx::server::{BoxStream, Server};
use socket2::{Domain, Socket};
use tracing::Instrument;

use super::ops::PidFile;
use super::parent::Parent;
use super::ServeArgs;
use crate::util::{CliResult, Signals};

/// Serves the client on stdin/stdout.
pub(crate) async fn serve(server: &Server, args: &ServeArgs, parent: Parent) -> CliResult<()> {
    let signals = Signals::install();
    if args.ops.exit_with_parent && !parent.exit_with()? {
        tracing::info!("the parent process has already exited");
        return Ok(());
    }
    let stream = stdio().map_err(|e| format!("stdin/stdout: {e}"))?;
    let _pidfile = PidFile::write(args.pidfile.as_deref())?;
    serve_stream(server, stream, "stdio", signals).await
}

/// Serves one connected client until it disconnects; SIGINT/SIGTERM start
/// the server's lame-duck shutdown.
pub(crate) async fn serve_stream(
    server: &Server,
    stream: BoxStream,
    peer: &str,
    mut signals: Signals,
) -> CliResult<()> {
    let token = server.shutdown_token();
    let span = tracing::info_span!("conn", peer = %peer);
    let connection = server.serve_connection(stream).instrument(span);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = &mut connection => served,
        _ = signals.next() => {
            tracing::info!("shutting down");
            token.cancel();
            connection.await
        }
    };
    served.map_err(|e| format!("connection failed: {e}"))
}

/// stdin and stdout as one stream: the socket itself when both are the
/// same socket (inetd, systemd), else a pair of pipes (ssh), files or
/// terminals, read and written on blocking threads. These are duplicates
/// of the descriptors as tokio files, not tokio's stdio: std's stdout is
/// line-buffered and would hold replies back until a newline or a flush.
fn stdio() -> io::Result<BoxStream> {
    if let Some(socket) = shared_socket()? {
        let unix = socket.domain()? == Domain::UNIX;
        socket.set_nonblocking(true)?;
        return Ok(if unix {
            Box::new(tokio::net::UnixStream::from_std(socket.into())?)
        } else {
            let stream = tokio::net::TcpStream::from_std(socket.into())?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        });
    }
    let input = tokio::fs::File::from_std(File::from(io::stdin().as_fd().try_clone_to_owned()?));
    let output = tokio::fs::File::from_std(File::from(io::stdout().as_fd().try_clone_to_owned()?));
    Ok(Box::new(tokio::io::join(input, output)))
}

/// A duplicate of stdin when stdin and stdout are the same socket.
fn shared_socket() -> io::Result<Option<Socket>> {
    use std::os::unix::fs::FileTypeExt;
    let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let (i, o) = (input.metadata()?, output.metadata()?);
    if !i.file_type().is_socket() || (i.dev(), i.ino()) != (o.dev(), o.ino()) {
        return Ok(None);
    }
    drop(output);
    Ok(Some(Socket::from(std::os::fd::OwnedFd::from(input))))
}
