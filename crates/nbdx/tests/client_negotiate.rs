//! Negotiation against scripted servers: fallbacks, refusals, TLS policy,
//! limits, and the hand-over to the kernel.

mod client_support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use client_support::{bounded, decode_compact, export, handshake, memory_server, opts, FakeServer};
use nbdx::client::{self, Client, ClientError, Negotiation, Stream, TlsMode, TlsUpgrade, UpgradeFuture};
use nbdx::proto::codec::handshake::{Greeting, OptionHeader};
use nbdx::proto::codec::option_reply::ExportNameReply;
use nbdx::proto::server::{ServerConfig, TlsMode as ServerTls};
use nbdx::proto::{BlockSize, Cmd, HandshakeFlags, OptReply, OptType, ProtocolError, RepType, ReplyMode};
use nbdx::proto::{RequestHeader, TransmissionFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A server of a 1 MiB export that knows no option but
/// `NBD_OPT_EXPORT_NAME` (refused with `NBD_REP_ERR_UNSUP` when `fixed`),
/// then answers reads with simple replies of 0x42.
async fn export_name_only(mut s: UnixStream, fixed: bool) {
    let mut out = BytesMut::new();
    let flags =
        if fixed { HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES } else { HandshakeFlags::empty() };
    Greeting { flags }.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut cflags = [0u8; 4];
    s.read_exact(&mut cflags).await.unwrap();
    loop {
        let mut h = [0u8; OptionHeader::LEN];
        s.read_exact(&mut h).await.unwrap();
        let h = OptionHeader::decode(&h).unwrap();
        let mut payload = vec![0u8; h.len as usize];
        s.read_exact(&mut payload).await.unwrap();
        let mut out = BytesMut::new();
        if h.opt == OptType::EXPORT_NAME {
            let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
            ExportNameReply { size: 1 << 20, flags }.encode(cflags[3] & 2 != 0, &mut out);
            s.write_all(&out).await.unwrap();
            break;
        }
        assert!(fixed, "a client must send only NBD_OPT_EXPORT_NAME to a server that is not fixed newstyle");
        OptReply::Error { rep: RepType::ERR_UNSUP, message: String::new() }.encode(h.opt, &mut out);
        s.write_all(&out).await.unwrap();
    }
    let mut input = BytesMut::new();
    while s.read_buf(&mut input).await.unwrap_or(0) > 0 {
        while input.len() >= RequestHeader::COMPACT_LEN {
            let r = decode_compact(&mut input);
            if r.cmd == Cmd::DISC {
                return;
            }
            let mut out = BytesMut::new();
            nbdx::proto::codec::reply::SimpleReply { error: 0, cookie: r.cookie }.encode(&mut out);
            if r.cmd == Cmd::READ {
                out.extend_from_slice(&vec![0x42; r.length as usize]);
            }
            s.write_all(&out).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_server_without_go_is_opened_with_export_name() {
    bounded(async {
        for fixed in [true, false] {
            let server = FakeServer::start(move |s| export_name_only(s, fixed));
            let c = Client::connect(&server.target, &opts().export_name("disk")).await.unwrap();
            assert_eq!((c.size(), c.info().mode, c.info().fixed_newstyle), (1 << 20, ReplyMode::Simple, fixed));
            let mut b = vec![0u8; 4096];
            c.read(0, &mut b).await.unwrap();
            assert!(b.iter().all(|x| *x == 0x42));
            c.flush().await.unwrap();
            c.disconnect().await;
            let info = client::info(&server.target, &opts()).await.expect("info falls back to opening the export");
            assert_eq!(info.size, 1 << 20);
        }
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_sends_its_greeting_times_out_cleanly() {
    bounded(async {
        let server = FakeServer::start(|s| async move {
            let mut s = s;
            let _ = s.read(&mut [0u8; 1]).await;
        });
        let e = Client::connect(&server.target, &opts().timeout(Duration::from_millis(300))).await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().starts_with("timed out after 300ms"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn endless_option_replies_are_cut_off() {
    bounded(async {
        let server = FakeServer::start(|mut s| async move {
            let mut out = BytesMut::new();
            Greeting { flags: HandshakeFlags::FIXED_NEWSTYLE }.encode(&mut out);
            s.write_all(&out).await.unwrap();
            let mut skip = [0u8; 4 + OptionHeader::LEN];
            s.read_exact(&mut skip).await.unwrap();
            let mut reply = BytesMut::new();
            OptReply::Server { name: "again".into(), details: String::new() }.encode(OptType::LIST, &mut reply);
            while s.write_all(&reply).await.is_ok() {}
        });
        let o = opts().structured_replies(false);
        let e = client::list_exports(&server.target, &o).await.unwrap_err();
        assert!(matches!(e, ClientError::Protocol(ProtocolError::TooManyReplies)), "{e}");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_is_not_an_nbd_server_is_named_as_such() {
    bounded(async {
        let server = FakeServer::start(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let e = Client::connect(&server.target, &opts()).await.unwrap_err();
        assert!(e.to_string().contains("not an NBD server"), "{e}");
    })
    .await;
}

fn two_exports() -> ServerConfig {
    let mut a = export("a", 1 << 20);
    a.description = "the a disk".into();
    a.block_size = BlockSize { minimum: 512, preferred: 4096, maximum: 1 << 20 };
    let mut b = export("b", 2 << 20);
    b.flags |= TransmissionFlags::READ_ONLY;
    ServerConfig::new(vec![a, b])
}

#[tokio::test]
async fn list_and_info_report_what_the_server_advertises() {
    bounded(async {
        let server = memory_server(two_exports(), Arc::default(), Arc::default());
        let list = client::list_exports(&server.target, &opts()).await.unwrap();
        let names: Vec<_> = list.iter().map(|e| (e.name.as_str(), e.description.as_str())).collect();
        assert_eq!(names, [("a", "the a disk"), ("b", "")]);
        let mut n = Negotiation::start(&server.target, &opts()).await.unwrap();
        assert_eq!(n.mode(), ReplyMode::Extended);
        let a = n.info("a").await.unwrap();
        assert_eq!(
            (a.size, a.description.as_deref(), a.contexts.as_slice()),
            (1 << 20, Some("the a disk"), &["base:allocation".to_string()][..])
        );
        assert_eq!(a.block_size, Some(BlockSize { minimum: 512, preferred: 4096, maximum: 1 << 20 }));
        let b = n.info("b").await.unwrap();
        assert!(b.is_read_only() && !b.can_trim());
        let e = n.info("c").await.unwrap_err();
        assert_eq!(e.to_string(), "export 'c' not found on server: export 'c' not found");
        assert_eq!(n.list_meta_contexts("a", &["base:"]).await.unwrap(), ["base:allocation"]);
        n.abort().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_unknown_export_is_reported_by_name() {
    bounded(async {
        let server = memory_server(two_exports(), Arc::default(), Arc::default());
        let e = Client::connect(&server.target, &opts().export_name("nope")).await.unwrap_err();
        assert!(matches!(e, ClientError::ExportNotFound { .. }));
        assert!(e.to_string().starts_with("export 'nope' not found on server"), "{e}");
    })
    .await;
}

/// Stands in for TLS: the stream is returned as it is.
struct NoTls;

impl TlsUpgrade for NoTls {
    fn upgrade<'a>(&'a self, stream: Stream, _: &'a str) -> UpgradeFuture<'a> {
        Box::pin(async move { Ok(stream) })
    }
}

#[tokio::test]
async fn tls_policy_is_enforced_and_the_upgrade_hook_runs_at_starttls() {
    bounded(async {
        let mut cfg = ServerConfig::new(vec![export("", 1 << 20)]);
        cfg.tls = ServerTls::Require;
        let server = memory_server(cfg, Arc::new(std::sync::Mutex::new(vec![0; 1 << 20])), Arc::default());
        let e = Client::connect(&server.target, &opts()).await.unwrap_err();
        assert!(matches!(e, ClientError::TlsRequired), "{e}");
        let nowhere = client::Target::Unix("/nonexistent/nbd.sock".into());
        let e = Client::connect(&nowhere, &opts().tls(TlsMode::Require)).await.unwrap_err();
        assert!(matches!(e, ClientError::TlsUnsupported(_)), "refused before connecting: {e}");
        let c = Client::connect(&server.target, &opts().tls(TlsMode::Require).tls_upgrade(Arc::new(NoTls))).await;
        let c = c.expect("connects after STARTTLS");
        assert!(c.info().tls);
        assert_eq!(c.info().mode, ReplyMode::Extended, "options are renegotiated after STARTTLS");
        c.read(0, &mut [0; 512]).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_handed_over_socket_starts_at_transmission_in_the_kernels_subset() {
    bounded(async {
        let server = FakeServer::start(|mut s| async move {
            let Some((n, _)) = handshake(&mut s, ServerConfig::new(vec![export("k", 1 << 20)])).await else { return };
            assert_eq!(n.mode, ReplyMode::Simple, "no structured replies or extended headers for the kernel");
            assert!(n.meta_contexts.is_empty());
            let mut h = [0u8; RequestHeader::COMPACT_LEN];
            s.read_exact(&mut h).await.unwrap();
            let r = RequestHeader::decode(nbdx::proto::HeaderMode::Compact, &h).unwrap();
            let mut out = BytesMut::new();
            nbdx::proto::codec::reply::SimpleReply { error: 0, cookie: r.cookie }.encode(&mut out);
            out.extend_from_slice(&vec![0x11; r.length as usize]);
            s.write_all(&out).await.unwrap();
        });
        let h = client::connect_for_handover(&server.target, &opts().export_name("k")).await.unwrap();
        assert_eq!((h.export.size, h.export.mode), (1 << 20, ReplyMode::Simple));
        let client::Socket::Unix(mut sock) = h.socket else { panic!("a Unix socket was expected") };
        let data = tokio::task::spawn_blocking(move || {
            let req = RequestHeader { flags: Default::default(), cmd: Cmd::READ, cookie: 7, offset: 0, length: 512 };
            let mut out = BytesMut::new();
            req.encode(nbdx::proto::HeaderMode::Compact, &mut out);
            sock.write_all(&out).unwrap();
            let mut reply = vec![0u8; 16 + 512];
            sock.read_exact(&mut reply).unwrap();
            reply
        })
        .await
        .unwrap();
        assert_eq!(&data[8..16], &7u64.to_be_bytes());
        assert!(data[16..].iter().all(|b| *b == 0x11));
    })
    .await;
}
