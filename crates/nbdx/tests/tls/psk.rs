//! TLS with pre-shared keys (feature `psk`, over OpenSSL): nbdx to nbdx, and
//! the nbdx client to nbdkit `--tls-psk` (GnuTLS).

use std::path::Path;
use std::sync::Arc;

use nbdx::client::{Client, ClientError};
use nbdx::server::Server;
use nbdx::tls::{PskServerConfig, TlsMode};

use super::peers::{have, Peer};
use super::{bounded, exports, round_trip, Running};

/// A psktool-style keys file with `alice` and `bob`.
fn keys(dir: &Path, alice: &str) -> std::path::PathBuf {
    let path = dir.join("keys.psk");
    std::fs::write(&path, format!("alice:{alice}\nbob:{}\n", "5a".repeat(32))).unwrap();
    path
}

fn serve_psk(keys: &Path) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = exports(&["disk"], &[])
        .into_iter()
        .fold(Server::builder(), |b, e| b.export(e))
        .tls(TlsMode::Require, Arc::new(PskServerConfig::from_file(keys).unwrap()))
        .build()
        .unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    Running { server, socket, _dir: dir }
}

fn psk_uri(socket: &Path, user: &str, keys: &Path) -> String {
    format!("nbds+unix://{user}@/disk?socket={}&tls-psk-file={}", socket.display(), keys.display())
}

#[tokio::test]
async fn a_psk_client_reads_and_writes_through_a_psk_server() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), &"c3".repeat(32));
        let r = serve_psk(&keys);
        round_trip(Client::connect_uri(&psk_uri(&r.socket, "alice", &keys)).await).await;
        let by_param =
            format!("{}&tls-username=bob", r.uri("nbds+unix", "disk", &format!("tls-psk-file={}", keys.display())));
        round_trip(Client::connect_uri(&by_param).await).await;
    })
    .await
}

#[tokio::test]
async fn a_wrong_key_or_an_unknown_user_is_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), &"c3".repeat(32));
        let r = serve_psk(&keys);
        let other = tempfile::tempdir().unwrap();
        let wrong = self::keys(other.path(), &"c4".repeat(32));
        let e = Client::connect_uri(&psk_uri(&r.socket, "alice", &wrong)).await.unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
        std::fs::write(&wrong, format!("carol:{}\n", "c3".repeat(32))).unwrap();
        assert!(Client::connect_uri(&psk_uri(&r.socket, "carol", &wrong)).await.is_err());
        let e = Client::connect_uri(&psk_uri(&r.socket, "dave", &keys)).await.unwrap_err();
        assert!(e.to_string().contains("no key for user \"dave\""), "{e}");
    })
    .await
}

#[tokio::test]
async fn the_client_reads_and_writes_over_psk_to_nbdkit() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &"c3".repeat(32));
    let psk = format!("--tls-psk={}", keys.display());
    let p = Peer::start("nbdkit", &["-U", "{sock}", "--tls=require", &psk, "memory", "64M"]);
    bounded(async {
        let uri = format!("nbds+unix://alice@/?socket={}&tls-psk-file={}", p.sock().display(), keys.display());
        round_trip(Client::connect_uri(&uri).await).await;
    })
    .await
}
