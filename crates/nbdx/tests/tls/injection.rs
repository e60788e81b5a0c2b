//! Raw clients against a TLS server: the STARTTLS plaintext-injection attack
//! (nbdkit's CVE-2021-3716), nothing disclosed before TLS under FORCEDTLS,
//! and negotiation state forgotten after the upgrade.

use std::time::Duration;

use nbdx::client::{Stream, TlsUpgrade};
use nbdx::proto::consts::{IHAVEOPT, OPT_REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
use nbdx::proto::{Cmd, OptType, RepType};
use nbdx::tls::{TlsClientConfig, TlsMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::pki::{client_dir, server_dir, Ca};
use super::{bounded, exports, serve, Running};

/// `NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES`.
const CLIENT_FLAGS: u32 = 3;

fn option(opt: OptType, payload: &[u8]) -> Vec<u8> {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend(opt.0.to_be_bytes());
    b.extend((payload.len() as u32).to_be_bytes());
    b.extend(payload);
    b
}

/// `NBD_OPT_GO`/`NBD_OPT_INFO` payload: the name, no information requests.
fn name_payload(name: &str) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend(name.as_bytes());
    b.extend(0u16.to_be_bytes());
    b
}

/// Connects, reads the greeting and sends the client flags.
async fn greeted(r: &Running) -> UnixStream {
    let mut s = UnixStream::connect(&r.socket).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&CLIENT_FLAGS.to_be_bytes()).await.unwrap();
    s
}

/// One option reply: (option, reply type, payload).
async fn reply(s: &mut (impl AsyncRead + Unpin)) -> (OptType, RepType, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), OPT_REPLY_MAGIC);
    let opt = OptType(u32::from_be_bytes(h[8..12].try_into().unwrap()));
    let rep = RepType(u32::from_be_bytes(h[12..16].try_into().unwrap()));
    let mut payload = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
    s.read_exact(&mut payload).await.unwrap();
    (opt, rep, payload)
}

/// Everything the server sends until it closes.
async fn rest(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

async fn tls(s: UnixStream, ca: &Ca) -> Stream {
    let dir = client_dir(ca, None);
    let config = TlsClientConfig::from_dir(Some(dir.path()), true).unwrap();
    config.upgrade(Stream::Unix(s), "localhost").await.expect("TLS handshake")
}

#[tokio::test]
async fn starttls_with_an_option_queued_behind_it_ends_the_connection_with_nothing_processed() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let mut s = greeted(&r).await;
        // The attack: a man in the middle appends a plaintext GO to the
        // client's STARTTLS, hoping the server runs it as if it came over TLS.
        let mut injected = option(OptType::STARTTLS, &[]);
        injected.extend(option(OptType::GO, &name_payload("disk")));
        s.write_all(&injected).await.unwrap();
        let mut first = [0u8; 20];
        let mut got = 0;
        while got < first.len() {
            match s.read(&mut first[got..]).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        if got == first.len() {
            // The server acknowledged STARTTLS. If it also ran the queued GO,
            // its answer now comes over TLS.
            let mut t = tls(s, &ca).await;
            let over_tls = tokio::time::timeout(Duration::from_secs(5), reply(&mut t)).await;
            if let Ok((OptType::GO, rep, _)) = over_tls {
                panic!("the server processed the NBD_OPT_GO injected before the TLS handshake (answered {rep})");
            }
            panic!("the server acknowledged NBD_OPT_STARTTLS although plaintext bytes were queued behind it");
        }
        assert_eq!(got, 0, "the server answered nothing, not {:?}", &first[..got]);
        assert!(rest(&mut s).await.is_empty(), "and closed the connection");
    })
    .await
}

#[tokio::test]
async fn a_server_that_requires_tls_discloses_no_export_in_plaintext() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["hidden-export"], &[]));
        let mut s = greeted(&r).await;
        let asked = [
            (OptType::LIST, vec![]),
            (OptType::INFO, name_payload("hidden-export")),
            (OptType::INFO, name_payload("")),
            (OptType::GO, name_payload("hidden-export")),
            (OptType::STRUCTURED_REPLY, vec![]),
            (OptType(0x1234), vec![]),
        ];
        for (opt, payload) in &asked {
            s.write_all(&option(*opt, payload)).await.unwrap();
            let (o, rep, text) = reply(&mut s).await;
            assert_eq!((o, rep), (*opt, RepType::ERR_TLS_REQD), "{}", String::from_utf8_lossy(&text));
            assert!(!String::from_utf8_lossy(&text).contains("hidden"), "{opt} disclosed the export");
        }
        // NBD_OPT_EXPORT_NAME cannot be refused: the session ends, silently.
        s.write_all(&option(OptType::EXPORT_NAME, b"hidden-export")).await.unwrap();
        assert!(rest(&mut s).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn starttls_forgets_structured_replies_negotiated_in_plaintext() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::On, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let mut s = greeted(&r).await;
        s.write_all(&option(OptType::STRUCTURED_REPLY, &[])).await.unwrap();
        assert_eq!(reply(&mut s).await.1, RepType::ACK, "structured replies accepted in plaintext");
        s.write_all(&option(OptType::STARTTLS, &[])).await.unwrap();
        assert_eq!(reply(&mut s).await.1, RepType::ACK);
        let mut t = tls(s, &ca).await;
        t.write_all(&option(OptType::GO, &name_payload("disk"))).await.unwrap();
        while reply(&mut t).await.1 != RepType::ACK {}
        let mut read = REQUEST_MAGIC.to_be_bytes().to_vec();
        read.extend(0u16.to_be_bytes());
        read.extend(Cmd::READ.0.to_be_bytes());
        read.extend(7u64.to_be_bytes());
        read.extend(0u64.to_be_bytes());
        read.extend(512u32.to_be_bytes());
        t.write_all(&read).await.unwrap();
        let mut header = [0u8; 16];
        t.read_exact(&mut header).await.unwrap();
        let magic = u32::from_be_bytes(header[..4].try_into().unwrap());
        assert_eq!(magic, SIMPLE_REPLY_MAGIC, "a simple reply: the plaintext NBD_OPT_STRUCTURED_REPLY was forgotten");
        assert_eq!(u64::from_be_bytes(header[8..].try_into().unwrap()), 7, "cookie");
    })
    .await
}
