//! The client against real servers installed on this machine: nbdkit,
//! qemu-nbd, nbd-server. A test whose peer is missing prints
//! `SKIP: <peer> not installed` and passes (the project's test script
//! installs the peers, so they run in CI).
//!
//! Peers are started on Unix sockets in temporary directories (or a free
//! TCP port), in their daemon mode: the command returns once the server
//! listens, so no polling is needed. A guard kills each one by pid.

mod client_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use client_support::{bounded, opts, suite};
use nbdx::client::{self, blocking, Client, ClientError, MultiConn, RemoteDevice, Target};
use nbdx::device::Device;
use nbdx::proto::{AllocationFlags, ReplyMode};

const MIB: u64 = 1 << 20;

/// Whether `bin` is on the PATH; prints the skip line if not.
fn have(bin: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if !found {
        println!("SKIP: {bin} not installed");
    }
    found
}

/// A running peer, killed by pid on drop.
struct Peer {
    pid: u32,
    dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

impl Peer {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn target(&self) -> Target {
        Target::Unix(self.sock())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("peer failed to start");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// The daemon whose command line contains `needle` (a unique temporary
/// path): nbdkit writes its pid file only after its parent has returned,
/// and nbd-server has none.
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

/// `nbdkit ARGS` on a Unix socket (the command returns once it listens).
fn nbdkit(args: &[&str]) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    run(Command::new("nbdkit").arg("-U").arg(&sock).args(args));
    Peer { pid: pid_of_cmdline(&sock), dir }
}

/// `qemu-nbd` serving raw `file` as export `disk` to up to 4 clients.
fn qemu_nbd(size: u64, setup: impl FnOnce(&std::fs::File)) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.raw");
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(size).unwrap();
    setup(&f);
    let sock = dir.path().join("nbd.sock");
    run(Command::new("qemu-nbd")
        .args(["--fork", "-t", "-e", "4", "-f", "raw", "-x", "disk", "-k"])
        .arg(&sock)
        .arg(&file));
    Peer { pid: pid_of_cmdline(&sock), dir }
}

fn write_at(f: &std::fs::File, offset: u64, data: &[u8]) {
    std::os::unix::fs::FileExt::write_all_at(f, data, offset).unwrap();
}

#[tokio::test]
async fn nbdkit_lists_several_exports_and_describes_each() {
    if !have("nbdkit") {
        return;
    }
    let p = nbdkit(&[
        "--filter=exportname",
        "memory",
        "16M",
        "exportname-list=explicit",
        "exportname=a",
        "exportname=b",
        "exportdesc=fixed:a memory disk",
    ]);
    bounded(async {
        let list = client::list_exports(&p.target(), &opts()).await.unwrap();
        let names: Vec<_> = list.iter().map(|e| (e.name.as_str(), e.description.as_str())).collect();
        assert_eq!(names, [("a", "a memory disk"), ("b", "a memory disk")]);
        let mut n = client::Negotiation::start(&p.target(), &opts()).await.unwrap();
        for e in &list {
            let info = n.info(&e.name).await.unwrap();
            assert_eq!(info.size, 16 * MIB);
            assert!(info.contexts.contains(&"base:allocation".to_string()), "{:?}", info.contexts);
            assert!(
                info.can_flush() && info.can_trim() && info.can_zero() && info.can_multi_conn() && !info.is_read_only()
            );
            assert_eq!(info.protocol(), "newstyle-fixed");
        }
        n.abort().await.unwrap();
        let info = client::info(&p.target(), &opts().export_name("b")).await.unwrap();
        assert_eq!(info.description.as_deref(), Some("a memory disk"));
    })
    .await;
}

#[tokio::test]
async fn nbdkit_memory_passes_the_client_suite_over_tcp() {
    if !have("nbdkit") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    run(Command::new("nbdkit")
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-P"])
        .arg(&pidfile)
        .args(["memory", "32M"]));
    let _peer = Peer { pid: pid_of_cmdline(&pidfile), dir };
    bounded(async {
        let c = Client::connect_uri(&format!("nbd://127.0.0.1:{port}/")).await.unwrap();
        assert_ne!(c.info().mode, ReplyMode::Simple);
        suite::all(&c).await;
        c.disconnect().await;
    })
    .await;
}

/// qemu-nbd 10.0 answers `NBD_OPT_EXTENDED_HEADERS` with
/// `NBD_REP_ERR_UNSUP` ("Unsupported option 11"): the client falls back to
/// structured replies. Should a later qemu-nbd accept extended headers, the
/// test checks that the connection uses them.
#[tokio::test]
async fn qemu_nbd_negotiates_the_best_reply_mode_it_offers_and_passes_the_client_suite() {
    if !have("qemu-nbd") {
        return;
    }
    let p = qemu_nbd(32 * MIB, |_| {});
    bounded(async {
        let c = Client::connect(&p.target(), &opts().export_name("disk")).await.unwrap();
        let n = client::Negotiation::start(&p.target(), &opts()).await.unwrap();
        assert_eq!(c.info().mode, n.mode(), "transmission uses what negotiation obtained");
        assert_ne!(n.mode(), ReplyMode::Simple);
        n.abort().await.unwrap();
        println!("qemu-nbd reply mode: {:?}", c.info().mode);
        suite::all(&c).await;
        c.flush().await.unwrap();
        c.disconnect().await;
    })
    .await;
    let on_disk = std::fs::read(p.path("disk.raw")).unwrap();
    assert!(on_disk[MIB as usize..][..4096] == suite::pattern(MIB, 4096, 7)[..], "writes reached the file");
}

#[tokio::test]
async fn multi_conn_works_against_nbdkit_and_qemu_nbd() {
    let mut peers = Vec::new();
    if have("nbdkit") {
        peers.push((nbdkit(&["memory", "32M"]), ""));
    }
    if have("qemu-nbd") {
        peers.push((qemu_nbd(32 * MIB, |_| {}), "disk"));
    }
    for (p, name) in &peers {
        bounded(async {
            let m = MultiConn::connect(&p.target(), &opts().export_name(*name), 4).await.unwrap();
            assert_eq!(m.connections(), 4);
            suite::all(&m).await;
            m.flush().await.unwrap();
            m.disconnect().await;
        })
        .await;
    }
}

#[tokio::test]
async fn nbd_server_serves_a_named_export_with_simple_replies() {
    if !have("nbd-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (file, sock, conf) = (dir.path().join("disk.raw"), dir.path().join("nbd.sock"), dir.path().join("conf"));
    std::fs::write(&file, suite::pattern(0, MIB as usize, 2)).unwrap();
    let config = format!(
        "[generic]\n    unixsock = {}\n    allowlist = true\n[disk]\n    exportname = {}\n",
        sock.display(),
        file.display()
    );
    std::fs::write(&conf, config).unwrap();
    // nbd-server forks into the background before it creates its socket,
    // and writes no pid file: watch the directory for the socket.
    let created = CreateWatch::new(dir.path());
    run(Command::new("nbd-server").arg("-C").arg(&conf));
    created.wait_for(&sock);
    let _peer = Peer { pid: pid_of_cmdline(&conf), dir };
    let target = Target::Unix(sock);
    bounded(async {
        let list = client::list_exports(&target, &opts()).await.unwrap();
        assert!(list.iter().any(|e| e.name == "disk"), "{list:?}");
        let e = Client::connect(&target, &opts().export_name("nope")).await.unwrap_err();
        assert!(matches!(e, ClientError::ExportNotFound { .. }), "{e}");
        let c = Client::connect(&target, &opts().export_name("disk")).await.unwrap();
        assert_eq!((c.size(), c.info().mode), (MIB, ReplyMode::Simple));
        let mut b = vec![0u8; MIB as usize];
        c.read(0, &mut b).await.unwrap();
        assert!(b == suite::pattern(0, MIB as usize, 2));
        c.write(4096, &[9; 8192], false).await.unwrap();
        c.read(4096, &mut b[..8192]).await.unwrap();
        assert!(b[..8192].iter().all(|x| *x == 9));
        assert!(matches!(c.block_status(0, 4096).await, Err(ClientError::Unsupported(_))));
        c.disconnect().await;
    })
    .await;
}

/// Waits for a file to appear, woken by inotify (not by polling).
struct CreateWatch(std::fs::File);

impl CreateWatch {
    fn new(dir: &Path) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls; the descriptor is checked and then owned by the File.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            assert!(fd >= 0, "inotify_init1 failed");
            assert!(libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE) >= 0, "inotify_add_watch failed");
            Self(std::fs::File::from_raw_fd(fd))
        }
    }

    /// Returns once `path` exists and, for a socket, listens; panics after
    /// the test bound.
    fn wait_for(&self, path: &Path) {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + client_support::BOUND;
        while !path.exists() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "{} did not appear", path.display());
            let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            let _ = (&self.0).read(&mut [0u8; 4096]);
        }
        // bind() creates the file a moment before listen(): wait for the
        // kernel to list it as listening (__SO_ACCEPTCON) in /proc/net/unix.
        let needle = path.to_string_lossy().into_owned();
        let listening = || {
            let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
            table.lines().any(|l| l.ends_with(&needle) && l.split_whitespace().nth(3) == Some("00010000"))
        };
        while !listening() {
            assert!(std::time::Instant::now() < deadline, "{} does not listen", path.display());
            std::thread::yield_now();
        }
    }
}

/// Reads `c` the way a sparse-aware copy does: block status first, then
/// only the data extents. Returns the image and how many bytes were read.
async fn sparse_read(c: &Client) -> (Vec<u8>, u64) {
    let map = c.extents(0, c.size()).await.unwrap();
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), c.size());
    let mut image = vec![0u8; c.size() as usize];
    let (mut pos, mut transferred) = (0u64, 0u64);
    for e in map {
        if !e.flags.contains(AllocationFlags::ZERO) {
            c.read(pos, &mut image[pos as usize..(pos + e.length) as usize]).await.unwrap();
            transferred += e.length;
        }
        pos += e.length;
    }
    (image, transferred)
}

#[tokio::test]
async fn a_sparse_1_gib_source_is_read_through_block_status_without_transferring_holes() {
    let gib = 1u64 << 30;
    let pieces = [(0u64, 65536usize), (300 * MIB, MIB as usize), (gib - 4096, 4096)];
    let mut expected = vec![0u8; gib as usize];
    for (at, len) in pieces {
        expected[at as usize..at as usize + len].copy_from_slice(&suite::pattern(at, len, 4));
    }
    if have("qemu-nbd") {
        let p = qemu_nbd(gib, |f| pieces.iter().for_each(|(at, len)| write_at(f, *at, &suite::pattern(*at, *len, 4))));
        bounded(async {
            let c = Client::connect(&p.target(), &opts().export_name("disk")).await.unwrap();
            let (image, transferred) = sparse_read(&c).await;
            assert!(transferred < 4 * MIB, "{transferred} bytes of data read for 1.1 MiB of data");
            assert!(image == expected, "the image read through block status differs from the file");
        })
        .await;
    }
    if have("nbdkit") {
        let p = nbdkit(&["memory", "1G"]);
        bounded(async {
            let c = Client::connect(&p.target(), &opts()).await.unwrap();
            for (at, len) in pieces {
                c.write(at, &suite::pattern(at, len, 4), false).await.unwrap();
            }
            let (image, transferred) = sparse_read(&c).await;
            assert!(transferred < 4 * MIB, "{transferred} bytes of data read for 1.1 MiB of data");
            assert!(image == expected);
        })
        .await;
    }
}

#[tokio::test]
async fn a_remote_device_passes_on_what_nbdkit_advertises() {
    if !have("nbdkit") {
        return;
    }
    let p = nbdkit(&["memory", "8M"]);
    bounded(async {
        let dev = RemoteDevice::new(Client::connect(&p.target(), &opts()).await.unwrap());
        let caps = dev.caps();
        assert!(caps.flush && caps.trim && caps.extents && caps.multi_conn && !caps.read_only);
        assert!(caps.zero.advertised() && caps.fua.advertised() && caps.cache.advertised());
        assert_eq!(dev.size(), 8 * MIB);
        dev.write(4096, &[3; 4096], true).await.unwrap();
        let mut b = [0u8; 4096];
        dev.read(4096, &mut b).await.unwrap();
        assert_eq!(b, [3; 4096]);
        let extents = dev.extents(0, 8 * MIB).await.unwrap();
        assert!(!extents.is_empty());
        dev.client().disconnect().await;
    })
    .await;
}

#[test]
fn the_blocking_client_reads_and_writes_against_nbdkit() {
    if !have("nbdkit") {
        return;
    }
    let p = nbdkit(&["memory", "8M"]);
    let uri = format!("nbd+unix:///?socket={}", p.sock().display());
    let c = blocking::Client::connect_uri(&uri).unwrap();
    assert_eq!(c.size(), 8 * MIB);
    let data = suite::pattern(0, 3 * MIB as usize, 8);
    c.write(MIB, &data, false).unwrap();
    c.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    c.read(MIB, &mut back).unwrap();
    assert!(back == data);
    let map = c.extents(0, 8 * MIB).unwrap();
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 8 * MIB);
    c.disconnect();
}
