//! The kernel hand-over over TLS: raw NBD requests (simple replies, compact
//! headers, as `nbd.ko` sends them) written to the kernel's end of the
//! socketpair travel through the proxy to a TLS server.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nbdx::client::{ClientOptions, Socket};
use nbdx::proto::consts::{REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
use nbdx::proto::{Cmd, ReplyMode};
use nbdx::tls::proxy::{connect_for_handover, connect_for_handover_blocking, Proxy};
use nbdx::tls::TlsMode;
use nbdx::uri::NbdUri;

use super::pki::{client_dir, server_dir, Ca};
use super::{bounded, exports, serve, Running};

/// A raw request with a compact header.
pub(crate) fn request(cmd: Cmd, cookie: u64, offset: u64, len: u32, data: &[u8]) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend(0u16.to_be_bytes());
    b.extend(cmd.0.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend(offset.to_be_bytes());
    b.extend(len.to_be_bytes());
    b.extend(data);
    b
}

/// Reads a simple reply; returns (error, cookie).
pub(crate) fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), SIMPLE_REPLY_MAGIC);
    (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..].try_into().unwrap()))
}

/// Reads the simple replies to `cookies` in whatever order they come (the
/// server may complete requests out of order); the reply to `read` (a
/// cookie and a length) carries data, returned. Every reply must succeed.
pub(crate) fn replies(s: &mut UnixStream, cookies: &[u64], read: (u64, usize)) -> Vec<u8> {
    let mut pending = cookies.to_vec();
    let mut data = Vec::new();
    while !pending.is_empty() {
        let (error, cookie) = simple_reply(s);
        assert_eq!(error, 0, "request {cookie} failed");
        assert!(pending.contains(&cookie), "unexpected reply to {cookie}");
        pending.retain(|c| *c != cookie);
        if cookie == read.0 {
            data = vec![0u8; read.1];
            s.read_exact(&mut data).unwrap();
        }
    }
    data
}

/// Negotiates `nbds+unix://` to `r` for the kernel: (its socket, the proxy).
async fn attach(r: &Running, ca: &Ca) -> (UnixStream, Proxy, tempfile::TempDir) {
    let cdir = client_dir(ca, None);
    let uri = NbdUri::parse(&r.nbds("disk", cdir.path())).unwrap();
    let (handover, proxy) = connect_for_handover(&uri.target, &ClientOptions::from_uri(&uri)).await.unwrap();
    assert_eq!(handover.export.mode, ReplyMode::Simple, "the kernel's protocol subset");
    assert!(handover.export.tls);
    assert_eq!(handover.export.size, 8 << 20);
    let Socket::Unix(kernel) = handover.socket else { panic!("the kernel gets a socketpair end") };
    (kernel, proxy.expect("TLS needs a proxy"), cdir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_nbd_requests_on_the_kernel_socket_reach_a_tls_server_through_the_proxy() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let (mut kernel, proxy, _cdir) = attach(&r, &ca).await;
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        // As nbd.ko would: blocking I/O on its socket, several requests in
        // flight, and a read of written data only once the write completed
        // (concurrent requests may run in any order).
        let back = tokio::task::spawn_blocking(move || {
            kernel.write_all(&request(Cmd::WRITE, 1, 1 << 20, sent.len() as u32, &sent)).unwrap();
            replies(&mut kernel, &[1], (0, 0));
            let mut out = request(Cmd::FLUSH, 2, 0, 0, &[]);
            out.extend(request(Cmd::READ, 3, 1 << 20, sent.len() as u32, &[]));
            kernel.write_all(&out).unwrap();
            let back = replies(&mut kernel, &[2, 3], (3, sent.len()));
            kernel.write_all(&request(Cmd::DISC, 4, 0, 0, &[])).unwrap();
            kernel.shutdown(std::net::Shutdown::Both).unwrap();
            back
        })
        .await
        .unwrap();
        assert!(back == data, "read back through the proxy what was written through it");
        let stats = proxy.wait().await.expect("the proxy ends cleanly once the kernel closes");
        assert!(stats.to_server > 4 << 20 && stats.to_kernel > 4 << 20, "{stats:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_closes_the_kernel_socket_when_the_server_goes_away() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let (mut kernel, proxy, _cdir) = attach(&r, &ca).await;
        r.server.shutdown();
        let eof = tokio::task::spawn_blocking(move || kernel.read(&mut [0u8; 64]).unwrap()).await.unwrap();
        assert_eq!(eof, 0, "the kernel sees its connection end");
        proxy.wait().await.expect("a server that closes is a clean end");
    })
    .await
}

#[tokio::test]
async fn a_plaintext_handover_needs_no_proxy() {
    bounded(async {
        let r = serve(TlsMode::Off, None, exports(&["disk"], &[]));
        let uri = NbdUri::parse(&r.uri("nbd+unix", "disk", "")).unwrap();
        let (handover, proxy) = connect_for_handover(&uri.target, &ClientOptions::from_uri(&uri)).await.unwrap();
        assert!(proxy.is_none());
        assert!(!handover.export.tls);
    })
    .await
}

#[test]
fn synchronous_callers_get_the_proxy_on_a_thread_of_its_own() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ca = Ca::new("nbdx test CA");
    let sdir = server_dir(&ca, &ca);
    let cdir = client_dir(&ca, None);
    let r = rt.block_on(async { serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[])) });
    let uri = NbdUri::parse(&r.nbds("disk", cdir.path())).unwrap();
    let (handover, proxy) = connect_for_handover_blocking(&uri.target, &ClientOptions::from_uri(&uri)).unwrap();
    let Socket::Unix(mut kernel) = handover.socket else { panic!("the kernel gets a socketpair end") };
    kernel.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    kernel.write_all(&request(Cmd::WRITE, 1, 0, 3, b"abc")).unwrap();
    replies(&mut kernel, &[1], (0, 0));
    kernel.write_all(&request(Cmd::READ, 2, 0, 3, &[])).unwrap();
    assert_eq!(replies(&mut kernel, &[2], (2, 3)), b"abc");
    kernel.write_all(&request(Cmd::DISC, 3, 0, 0, &[])).unwrap();
    drop(kernel);
    let stats = proxy.expect("TLS needs a proxy").join().expect("ends cleanly");
    assert!(stats.to_server > 0 && stats.to_kernel > 0);
}
