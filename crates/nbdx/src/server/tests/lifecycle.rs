//! Handshake limits, listeners, connection caps and lame-duck shutdown.

use std::time::Duration;

use nbdx_proto::{Cmd, CmdFlags, Errno};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::server::{ConnectionError, Server, ServerOptions};
use crate::Export;

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_at_the_handshake_time_limit() {
    let (mut s, task) = pipe(&server_for(TestDisk::new(4096)));
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    let r = task.await.unwrap();
    assert!(matches!(r, Err(ConnectionError::HandshakeTimeout)), "{r:?}");
}

#[tokio::test]
async fn the_connection_limit_closes_extra_clients_instead_of_hanging() {
    let server = Server::builder()
        .export(Export::from_arc("", TestDisk::new(4096)))
        .options(ServerOptions { max_connections: 1, ..ServerOptions::default() })
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    first.read_exact(&mut greeting).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 18];
    assert_eq!(second.read(&mut buf).await.unwrap(), 0, "second client must see a clean close");
    server.shutdown();
    drop(first);
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn lame_duck_shutdown_answers_eshutdown_finishes_in_flight_work_and_closes() {
    let disk = TestDisk::new(1 << 20);
    let gate = disk.gate(0);
    let server = server_for(disk.clone());
    let (s, task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Structured).await;
    c.send(Cmd::WRITE, CmdFlags::empty(), 1, 0, 4, b"keep").await;
    tokio::task::yield_now().await;
    server.shutdown();
    tokio::task::yield_now().await;
    c.send(Cmd::READ, CmdFlags::empty(), 2, 4096, 4, &[]).await;
    let (cookie, e, ..) = c.reply(0).await.unwrap();
    assert_eq!((cookie, e), (2, Errno::ESHUTDOWN));
    gate.notify_one();
    let (cookie, e, ..) = c.reply(0).await.unwrap();
    assert_eq!((cookie, e), (1, Errno(0)));
    assert!(c.reply(0).await.is_none(), "closed once in-flight work is done");
    task.await.unwrap().unwrap();
    assert_eq!(&disk.data.lock().unwrap()[..4], b"keep");
    assert!(disk.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn options_after_shutdown_get_err_shutdown() {
    let server = server_for(TestDisk::new(4096));
    server.shutdown();
    let (mut s, _task) = pipe(&server);
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(&[0, 0, 0, 3]).await.unwrap();
    s.write_all(b"IHAVEOPT\0\0\0\x03\0\0\0\0").await.unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply[12..16], &((1u32 << 31) + 7).to_be_bytes(), "NBD_REP_ERR_SHUTDOWN");
}

#[tokio::test]
async fn serve_over_a_unix_socket_and_stop_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = server_for(TestDisk::new(1 << 20));
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (a, b) = tokio::io::duplex(1 << 16);
    // Bridge the socket to the raw client's duplex end.
    tokio::spawn(async move {
        let (mut sr, mut sw) = s.into_split();
        let (mut br, mut bw) = tokio::io::split(b);
        tokio::select! {
            _ = tokio::io::copy(&mut sr, &mut bw) => {}
            _ = tokio::io::copy(&mut br, &mut sw) => {}
        }
    });
    let mut c = Raw::connect(a, Mode::Simple).await;
    assert_eq!(c.write(1, 0, b"unix").await, Errno(0));
    assert_eq!(c.read(2, 0, 4).await.1, b"unix");
    drop(c);
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn exports_with_duplicate_names_are_refused() {
    let d = TestDisk::new(4096);
    let r = Server::new(vec![Export::from_arc("a", d.clone()), Export::from_arc("a", d)]);
    assert!(matches!(r, Err(crate::server::ServerError::DuplicateName(_))));
}

#[tokio::test(start_paused = true)]
async fn a_client_dribbling_its_handshake_is_dropped_at_the_handshake_time_limit() {
    let (mut s, task) = pipe(&server_for(TestDisk::new(4096)));
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    let start = tokio::time::Instant::now();
    let dribble = tokio::spawn(async move {
        // Client flags, then an option one byte per second: always progress.
        for b in b"\0\0\0\x03IHAVEOPT\0\0\0\x03\0\0\0\0".iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let r = task.await.unwrap();
    assert!(matches!(r, Err(ConnectionError::HandshakeTimeout)), "{r:?}");
    assert!(start.elapsed() <= ServerOptions::default().handshake_timeout + Duration::from_secs(1));
    dribble.await.unwrap();
}

#[tokio::test]
async fn serve_returns_within_the_grace_period_though_a_request_never_completes() {
    let disk = TestDisk::new(1 << 20);
    let _gate = disk.gate(0);
    let opts = ServerOptions { grace_period: Duration::from_millis(500), ..ServerOptions::default() };
    let server = server_with(disk, opts);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    // NBD_OPT_EXPORT_NAME "" with NO_ZEROES, then a read that never completes.
    s.write_all(b"\0\0\0\x03IHAVEOPT\0\0\0\x01\0\0\0\0").await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    let mut req = Vec::new();
    nbdx_proto::RequestHeader { flags: CmdFlags::empty(), cmd: Cmd::READ, cookie: 1, offset: 0, length: 512 }
        .encode(nbdx_proto::HeaderMode::Compact, &mut req);
    s.write_all(&req).await.unwrap();
    let started = async {
        while server.budget_in_use() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), started).await.expect("the read never started");
    let start = std::time::Instant::now();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving).await.expect("serve did not return").unwrap().unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "returned before the grace period: {took:?}");
    assert!(took < Duration::from_secs(3), "returned {took:?} after shutdown");
}
