//! nbdx client ↔ nbdx server over TLS: the three server modes, peer
//! verification on both sides, and no downgrade for `nbds://`.

use nbdx::client::{list_exports, Client, ClientError, ClientOptions, TlsMode as ClientTls};
use nbdx::tls::{TlsClientConfig, TlsMode};
use nbdx::uri::NbdUri;

use super::pki::{client_dir, server_dir, Ca};
use super::{bounded, exports, round_trip, serve};

/// The error of connecting to `uri`.
async fn refusal(uri: &str) -> ClientError {
    Client::connect_uri(uri).await.expect_err("connecting must fail")
}

#[tokio::test]
async fn a_tls_client_reads_and_writes_through_a_server_that_requires_tls() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let c = Client::connect_uri(&r.nbds("disk", cdir.path())).await.unwrap();
        assert!(c.info().tls, "the connection reports TLS");
        round_trip(Ok(c)).await;
    })
    .await
}

#[tokio::test]
async fn a_plaintext_client_is_refused_by_a_server_that_requires_tls_and_sees_no_export() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let sdir = server_dir(&ca, &ca);
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        assert!(matches!(refusal(&r.uri("nbd+unix", "disk", "")).await, ClientError::TlsRequired));
        let uri = NbdUri::parse(&r.uri("nbd+unix", "", "")).unwrap();
        let listed = list_exports(&uri.target, &ClientOptions::from_uri(&uri)).await;
        assert!(matches!(listed, Err(ClientError::TlsRequired)), "{listed:?}");
    })
    .await
}

#[tokio::test]
async fn a_selective_server_serves_plaintext_and_tls_clients_and_tls_only_exports_only_over_tls() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
        let r = serve(TlsMode::On, Some((sdir.path(), false)), exports(&["open", "secret"], &["secret"]));
        round_trip(Client::connect_uri(&r.uri("nbd+unix", "open", "")).await).await;
        round_trip(Client::connect_uri(&r.nbds("open", cdir.path())).await).await;
        round_trip(Client::connect_uri(&r.nbds("secret", cdir.path())).await).await;
        assert!(matches!(refusal(&r.uri("nbd+unix", "secret", "")).await, ClientError::TlsRequired));
        let uri = NbdUri::parse(&r.uri("nbd+unix", "", "")).unwrap();
        let names: Vec<String> = list_exports(&uri.target, &ClientOptions::from_uri(&uri))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["open"], "a plaintext listing omits TLS-only exports");
    })
    .await
}

#[tokio::test]
async fn a_server_that_verifies_peers_refuses_a_client_without_a_certificate() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
        let r = serve(TlsMode::Require, Some((sdir.path(), true)), exports(&["disk"], &[]));
        let e = refusal(&r.nbds("disk", cdir.path())).await;
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("requires a client certificate")), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_server_that_verifies_peers_accepts_a_client_certificate_signed_by_its_ca() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, Some(&ca)));
        let r = serve(TlsMode::Require, Some((sdir.path(), true)), exports(&["disk"], &[]));
        round_trip(Client::connect_uri(&r.nbds("disk", cdir.path())).await).await;
    })
    .await
}

#[tokio::test]
async fn a_server_that_verifies_peers_refuses_a_client_certificate_from_another_ca() {
    bounded(async {
        let (ca, rogue) = (Ca::new("nbdx test CA"), Ca::new("another CA"));
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, Some(&rogue)));
        let r = serve(TlsMode::Require, Some((sdir.path(), true)), exports(&["disk"], &[]));
        let e = refusal(&r.nbds("disk", cdir.path())).await;
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("refused our client certificate")), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_fails_the_handshake() {
    bounded(async {
        let (ca, rogue) = (Ca::new("nbdx test CA"), Ca::new("another CA"));
        let (sdir, cdir) = (server_dir(&rogue, &rogue), client_dir(&ca, None));
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let e = refusal(&r.nbds("disk", cdir.path())).await;
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("UnknownIssuer")), "{e}");
    })
    .await
}

#[tokio::test]
async fn tls_verify_peer_0_accepts_a_server_certificate_from_an_untrusted_ca() {
    bounded(async {
        let (ca, rogue) = (Ca::new("nbdx test CA"), Ca::new("another CA"));
        let (sdir, cdir) = (server_dir(&rogue, &rogue), client_dir(&ca, None));
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let uri = r.uri("nbds+unix", "disk", &format!("tls-certificates={}&tls-verify-peer=0", cdir.path().display()));
        round_trip(Client::connect_uri(&uri).await).await;
    })
    .await
}

#[tokio::test]
async fn the_server_name_is_verified_and_tls_hostname_names_it() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
        let r = serve(TlsMode::Require, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let certs = format!("tls-certificates={}", cdir.path().display());
        let wrong = r.uri("nbds+unix", "disk", &format!("{certs}&tls-hostname=nbd.example.com"));
        let e = refusal(&wrong).await;
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("not valid for name")), "{e}");
        let ip = r.uri("nbds+unix", "disk", &format!("{certs}&tls-hostname=127.0.0.1"));
        round_trip(Client::connect_uri(&ip).await).await;
    })
    .await
}

#[tokio::test]
async fn nbds_to_a_plaintext_server_fails_and_never_continues_in_plaintext() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let cdir = client_dir(&ca, None);
        let r = serve(TlsMode::Off, None, exports(&["disk"], &[]));
        let e = refusal(&r.nbds("disk", cdir.path())).await;
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("does not offer TLS")), "{e}");
        assert!(e.to_string().contains("NBD_REP_ERR_POLICY"), "{e}");
    })
    .await
}

#[tokio::test]
async fn unusable_client_credentials_fail_before_connecting_and_name_the_file() {
    bounded(async {
        let r = serve(TlsMode::Off, None, exports(&["disk"], &[]));
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("client-cert.pem"), "").unwrap();
        let e = refusal(&r.nbds("disk", empty.path())).await;
        assert!(e.to_string().contains("client-key.pem: no such file"), "{e}");
        let e = refusal(&r.uri("nbds+unix", "disk", "tls-type=anon")).await;
        assert!(e.to_string().contains("anonymous TLS is not supported"), "{e}");
    })
    .await
}

#[tokio::test]
async fn the_library_requires_tls_through_client_options() {
    bounded(async {
        let ca = Ca::new("nbdx test CA");
        let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
        let r = serve(TlsMode::On, Some((sdir.path(), false)), exports(&["disk"], &[]));
        let target = nbdx::client::Target::Unix(r.socket.clone());
        let tls = TlsClientConfig::from_dir(Some(cdir.path()), true).unwrap();
        let opts =
            ClientOptions::new().export_name("disk").tls(ClientTls::Require).tls_upgrade(std::sync::Arc::new(tls));
        let c = Client::connect(&target, &opts).await.unwrap();
        assert!(c.info().tls);
        round_trip(Ok(c)).await;
        let no_impl = ClientOptions::new().export_name("disk").tls(ClientTls::Require);
        assert!(matches!(Client::connect(&target, &no_impl).await, Err(ClientError::TlsUnsupported(_))));
        r.server.shutdown();
    })
    .await
}
