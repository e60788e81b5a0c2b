//! The nbdx client (and the kernel proxy) against nbdkit and qemu-nbd with
//! TLS, certificates from rcgen (ECDSA P-256, PKCS#8). A test whose peer is
//! missing prints `SKIP: <peer> not installed` and passes; the project's
//! test script installs the peers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use nbdx::client::{Client, ClientError, ClientOptions, Socket};
use nbdx::proto::{Cmd, ReplyMode};
use nbdx::tls::proxy::connect_for_handover;
use nbdx::uri::NbdUri;

use super::pki::{client_dir, server_dir, Ca};
use super::proxy::{replies, request};
use super::{bounded, round_trip};

pub(crate) fn have(bin: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if !found {
        println!("SKIP: {bin} not installed");
    }
    found
}

/// A daemonized peer on a Unix socket, killed on drop.
pub(crate) struct Peer {
    pid: u32,
    dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

impl Peer {
    /// Runs `program` with `args` (where `{sock}` is the socket path); the
    /// command returns once the daemon listens.
    pub(crate) fn start(program: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let args: Vec<String> = args.iter().map(|a| a.replace("{sock}", sock.to_str().unwrap())).collect();
        let status = Command::new(program).args(&args).status().expect("peer starts");
        assert!(status.success(), "{program} {args:?}: {status}");
        Self { pid: pid_of_cmdline(&sock), dir }
    }

    pub(crate) fn sock(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn uri(&self, scheme: &str, export: &str, certs: &Path) -> String {
        format!("{scheme}:///{export}?socket={}&tls-certificates={}", self.sock().display(), certs.display())
    }
}

/// The daemon whose command line contains `needle` (its unique socket path).
fn pid_of_cmdline(needle: &Path) -> u32 {
    let needle = needle.to_string_lossy();
    let found = std::fs::read_dir("/proc").ok().and_then(|dir| {
        dir.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&*needle).then_some(pid)
        })
    });
    found.unwrap_or_else(|| panic!("no process runs with {needle}"))
}

/// `nbdkit` with TLS `mode` (`require`, `on`, `off`) serving 64 MiB of RAM.
fn nbdkit(mode: &str, certs: &Path, verify_peer: bool) -> Peer {
    let tls = format!("--tls={mode}");
    let dir = format!("--tls-certificates={}", certs.display());
    let mut args = vec!["-U", "{sock}", &tls, &dir];
    if verify_peer {
        args.push("--tls-verify-peer");
    }
    args.extend(["memory", "64M"]);
    Peer::start("nbdkit", &args)
}

#[tokio::test]
async fn the_client_reads_and_writes_over_nbds_to_nbdkit_requiring_tls() {
    if !have("nbdkit") {
        return;
    }
    let ca = Ca::new("nbdx test CA");
    let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
    let p = nbdkit("require", sdir.path(), false);
    bounded(async {
        let c = Client::connect_uri(&p.uri("nbds+unix", "", cdir.path())).await.unwrap();
        assert!(c.info().tls);
        round_trip(Ok(c)).await;
        let plain = Client::connect_uri(&p.uri("nbd+unix", "", cdir.path())).await;
        assert!(matches!(plain, Err(ClientError::TlsRequired)), "{plain:?}");
    })
    .await
}

#[tokio::test]
async fn the_client_presents_its_certificate_to_nbdkit_verifying_peers() {
    if !have("nbdkit") {
        return;
    }
    let ca = Ca::new("nbdx test CA");
    let (sdir, with, without) = (server_dir(&ca, &ca), client_dir(&ca, Some(&ca)), client_dir(&ca, None));
    let p = nbdkit("require", sdir.path(), true);
    bounded(async {
        round_trip(Client::connect_uri(&p.uri("nbds+unix", "", with.path())).await).await;
        let refused = Client::connect_uri(&p.uri("nbds+unix", "", without.path())).await;
        assert!(refused.is_err(), "nbdkit --tls-verify-peer refuses a client without a certificate");
    })
    .await
}

#[tokio::test]
async fn the_client_refuses_nbdkit_with_a_certificate_from_an_untrusted_ca() {
    if !have("nbdkit") {
        return;
    }
    let (ca, rogue) = (Ca::new("nbdx test CA"), Ca::new("another CA"));
    let (sdir, cdir) = (server_dir(&rogue, &rogue), client_dir(&ca, None));
    let p = nbdkit("require", sdir.path(), false);
    bounded(async {
        let e = Client::connect_uri(&p.uri("nbds+unix", "", cdir.path())).await.unwrap_err();
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("UnknownIssuer")), "{e}");
    })
    .await
}

#[tokio::test]
async fn nbds_to_nbdkit_without_tls_fails() {
    if !have("nbdkit") {
        return;
    }
    let ca = Ca::new("nbdx test CA");
    let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
    let p = nbdkit("off", sdir.path(), false);
    bounded(async {
        let e = Client::connect_uri(&p.uri("nbds+unix", "", cdir.path())).await.unwrap_err();
        assert!(matches!(&e, ClientError::Tls(m) if m.contains("does not offer TLS")), "{e}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_proxy_negotiates_with_nbdkit_over_tls() {
    if !have("nbdkit") {
        return;
    }
    let ca = Ca::new("nbdx test CA");
    let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
    let p = nbdkit("require", sdir.path(), false);
    bounded(async {
        let uri = NbdUri::parse(&p.uri("nbds+unix", "", cdir.path())).unwrap();
        let (handover, proxy) = connect_for_handover(&uri.target, &ClientOptions::from_uri(&uri)).await.unwrap();
        assert_eq!((handover.export.size, handover.export.mode), (64 << 20, ReplyMode::Simple));
        let Socket::Unix(mut kernel) = handover.socket else { panic!("the kernel gets a socketpair end") };
        tokio::task::spawn_blocking(move || {
            kernel.write_all(&request(Cmd::WRITE, 1, 4096, 5, b"hello")).unwrap();
            replies(&mut kernel, &[1], (0, 0));
            kernel.write_all(&request(Cmd::READ, 2, 4096, 5, &[])).unwrap();
            assert_eq!(replies(&mut kernel, &[2], (2, 5)), b"hello");
            kernel.write_all(&request(Cmd::DISC, 3, 0, 0, &[])).unwrap();
        })
        .await
        .unwrap();
        proxy.expect("a proxy").wait().await.expect("ends cleanly when the kernel side closes");
    })
    .await
}

#[tokio::test]
async fn the_client_reads_and_writes_over_nbds_to_qemu_nbd_with_x509_credentials() {
    if !have("qemu-nbd") {
        return;
    }
    let ca = Ca::new("nbdx test CA");
    let (sdir, cdir) = (server_dir(&ca, &ca), client_dir(&ca, None));
    let image = sdir.path().join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    let object = format!("tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off", sdir.path().display());
    let p = Peer::start(
        "qemu-nbd",
        &[
            "--fork",
            "-f",
            "raw",
            "-x",
            "disk",
            "-k",
            "{sock}",
            "--object",
            &object,
            "--tls-creds",
            "tls0",
            image.to_str().unwrap(),
        ],
    );
    bounded(async {
        round_trip(Client::connect_uri(&p.uri("nbds+unix", "disk", cdir.path())).await).await;
    })
    .await
}
