//! Serves one `s3://` disk on a Unix socket until SIGTERM/SIGINT, then stores every dirty
//! chunk and releases the lease. A stand-in for `nbdx serve -U SOCKET s3://…` (used by
//! `bench/s3.sh` and `tests/s3/` when the CLI has no S3 yet).
//!
//! ```sh
//! eval "$(tests/s3/garage-cluster.sh start)"
//! cargo run --release --features s3 --example s3_serve -- /tmp/s3.sock \
//!     "s3://$NBDX_S3_BUCKET/disk1?endpoint=$NBDX_S3_ENDPOINT&region=garage&size=1G"
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use nbdx::device::s3::S3Device;
use nbdx::server::{Listener, Server};
use nbdx::Export;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, source] = args.as_slice() else {
        eprintln!("usage: s3_serve SOCKET s3://BUCKET/PREFIX?…");
        return ExitCode::from(2);
    };
    let device = match S3Device::open_source(source).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("s3_serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::fs::remove_file(socket);
    let server = match Server::new(vec![Export::from_arc("", device.clone())]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("s3_serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match Listener::bind(socket).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("s3_serve: {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("nbd+unix:///?socket={socket}");
    let token = server.shutdown_token();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        token.cancel();
    });
    let served = server.serve(listener).await;
    let closed = device.close().await;
    let _ = std::fs::remove_file(socket);
    match (served, closed) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) => {
            eprintln!("s3_serve: {e}");
            ExitCode::FAILURE
        }
        (_, Err(e)) => {
            eprintln!("s3_serve: closing: {e}");
            ExitCode::FAILURE
        }
    }
}
