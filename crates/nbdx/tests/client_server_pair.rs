//! The nbdx client against the nbdx server, in process, over a Unix socket:
//! every reply layout (simple, structured, extended headers), multi-conn,
//! a remote export served again (proxy), and shutdown seen by a client.

mod client_support;

use std::sync::Arc;

use client_support::{bounded, opts, suite};
use nbdx::client::{Client, ClientError, MultiConn, RemoteDevice, Target};
use nbdx::device::Device;
use nbdx::proto::{Errno, ReplyMode};
use nbdx::server::Server;
use nbdx::{Export, MemoryDevice};

fn ram(size: usize) -> Arc<dyn Device> {
    Arc::new(MemoryDevice::new(size as u64))
}

/// Serves `exports` on a Unix socket in a temp dir.
struct Running {
    server: Server,
    target: Target,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn serve(exports: Vec<Export>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbdx.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = Server::new(exports).unwrap();
    let task = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    Running { server, target: Target::Unix(path), _dir: dir, task }
}

async fn client(r: &Running, structured: bool, extended: bool) -> Client {
    let o = opts().structured_replies(structured).extended_headers(extended);
    Client::connect(&r.target, &o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_suite_passes_against_the_server_with_extended_headers() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(32 << 20))]);
        let c = client(&r, true, true).await;
        assert!(c.extended_headers());
        assert_eq!(c.info().mode, ReplyMode::Extended);
        suite::all(&c).await;
        c.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_suite_passes_against_the_server_with_structured_replies() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(32 << 20))]);
        let c = client(&r, true, false).await;
        assert_eq!(c.info().mode, ReplyMode::Structured);
        suite::all(&c).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_replies_serve_reads_and_writes_but_not_block_status() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(32 << 20))]);
        let c = client(&r, false, false).await;
        assert_eq!(c.info().mode, ReplyMode::Simple);
        suite::read_write_round_trip(&c).await;
        suite::many_requests_in_flight(&c).await;
        assert!(c.block_status(0, 4096).await.is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_connections_see_each_others_flushed_writes() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(16 << 20))]);
        let m = MultiConn::connect(&r.target, &opts(), 4).await.unwrap();
        assert_eq!(m.connections(), 4);
        let data = suite::pattern(1 << 20, 65536, 9);
        m.write(1 << 20, &data, false).await.unwrap();
        m.flush().await.unwrap();
        let other = client(&r, true, true).await;
        let mut back = vec![0u8; data.len()];
        other.read(1 << 20, &mut back).await.unwrap();
        assert_eq!(back, data);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_export_can_be_served_again_as_a_proxy() {
    bounded(async {
        let origin = serve(vec![Export::from_arc("", ram(8 << 20))]);
        let upstream = client(&origin, true, true).await;
        let proxy = serve(vec![Export::new("proxied", RemoteDevice::new(upstream))]);
        let c = Client::connect(&proxy.target, &opts().export_name("proxied")).await.unwrap();
        suite::read_write_round_trip(&c).await;
        let direct = client(&origin, true, false).await;
        let mut b = vec![0u8; 4096];
        c.write(8192, &[5u8; 4096], true).await.unwrap();
        direct.read(8192, &mut b).await.unwrap();
        assert_eq!(b, vec![5u8; 4096], "the write went through the proxy to the origin");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_the_server_fail_one_request_and_the_client_goes_on() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(1 << 20)).with_read_only(true)]);
        let c = client(&r, true, true).await;
        assert!(c.info().is_read_only());
        let mut b = [0u8; 512];
        c.read(0, &mut b).await.unwrap();
        let e = c.write(0, &b, false).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidRequest(_) | ClientError::Server { .. }), "{e}");
        c.read(512, &mut b).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_export_is_reported_by_name() {
    bounded(async {
        let r = serve(vec![Export::from_arc("disk", ram(1 << 20))]);
        let e = Client::connect(&r.target, &opts().export_name("nope")).await.unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_makes_new_requests_fail_with_eshutdown_and_serve_returns() {
    bounded(async {
        let r = serve(vec![Export::from_arc("", ram(1 << 20))]);
        let c = client(&r, true, true).await;
        let mut b = [0u8; 512];
        c.read(0, &mut b).await.unwrap();
        r.server.shutdown();
        match c.read(0, &mut b).await {
            Err(ClientError::Server { errno, .. }) => assert_eq!(errno, Errno::ESHUTDOWN),
            // The connection may already be closed when the request arrives.
            Err(e) => assert!(e.is_fatal(), "{e}"),
            Ok(()) => panic!("read succeeded after shutdown"),
        }
        r.task.await.unwrap().unwrap();
    })
    .await
}
