//! `nbdx attach`, `detach` and `status` against the real NBD driver, with
//! `nbdx serve` as the server (root and `/sys/module/nbd`, else `SKIP`).

mod common;

use std::time::Duration;

use async_trait::async_trait;
use nbdx::device::{Caps, Device, DeviceResult};
use nbdx::server::Server;
use nbdx::{Export, MemoryDevice};

use common::*;

const SIZE: u64 = 16 << 20;
const CHUNK: usize = 256 << 10;

#[test]
fn attach_over_a_unix_socket_gives_a_device_that_status_and_detach_agree_on() {
    let Some(env) = kernel_env() else { return };
    let file = env.path("disk.img");
    make_file(&file, SIZE, CHUNK, 1);
    let sock = env.path("nbd.sock");
    let server = ServeProcess::start(&env, &[file.to_str().unwrap(), "-U", sock.to_str().unwrap()]);

    // The same as dev=$(nbdx attach URI): run() reads stdout to end of file.
    let dev = run(env.nbdx(["attach", &server.uri])).ok();
    let index = index_of(&dev);
    let device = Direct::open(&dev, true).unwrap();
    assert_eq!(device.read_at(0, CHUNK).unwrap(), pattern(CHUNK, 1), "the file's data through the device");
    device.write_at(4 << 20, &pattern(CHUNK, 2)).unwrap();
    assert_eq!(file_bytes(&file, 4 << 20, CHUNK), pattern(CHUNK, 2), "a write through the device");
    drop(device);

    let state = status(&env, &dev);
    assert_eq!(state["device"], dev.as_str());
    assert_eq!(state["connected"], true);
    assert_eq!(state["size"], SIZE);
    assert_eq!(state["backend"], server.uri.as_str(), "the backend is the export URI");
    assert_eq!((state["read_only"].clone(), state["monitor"].clone()), (false.into(), serde_json::Value::Null));
    let all: serde_json::Value = serde_json::from_str(&run(env.nbdx(["status", "--json"])).ok()).unwrap();
    assert!(all.as_array().unwrap().contains(&state), "status of all devices lists {dev}");
    let text = run(env.nbdx(["status", &dev])).ok();
    assert!(text.contains("connected") && text.contains(&server.uri), "{text}");

    assert_eq!(run(env.nbdx(["detach", &dev])).ok(), "");
    assert!(!started_devices().contains(&index));
    let state = status(&env, &dev);
    assert_eq!((state["connected"].clone(), state["size"].clone()), (false.into(), 0.into()));
    let again = run(env.nbdx(["detach", &dev])).one_line_error();
    assert!(again.contains("not attached"), "{again}");
}

#[test]
fn attach_over_tcp_with_four_connections_uses_all_four() {
    let Some(env) = kernel_env() else { return };
    let file = env.path("disk.img");
    make_file(&file, SIZE, 0, 0);
    let port = free_port().to_string();
    let server = ServeProcess::start(&env, &[file.to_str().unwrap(), "--ip", "127.0.0.1", "-p", &port]);
    let dev = run(env.nbdx(["attach", &server.uri, "-C", "4", "--timeout", "60"])).ok();
    let established = established_to(port.parse().unwrap());
    println!("{established} established connections to port {port}");
    assert_eq!(established, 4, "four kernel connections");
    let device = Direct::open(&dev, true).unwrap();
    std::thread::scope(|scope| {
        for i in 0..8u32 {
            let device = &device;
            scope.spawn(move || device.write_at(u64::from(i) * CHUNK as u64, &pattern(CHUNK, 10 + i)).unwrap());
        }
    });
    for i in 0..8u32 {
        assert_eq!(file_bytes(&file, u64::from(i) * CHUNK as u64, CHUNK), pattern(CHUNK, 10 + i), "chunk {i}");
    }
    drop(device);
    run(env.nbdx(["detach", &dev])).ok();
    wait_for("the kernel to close its connections", Duration::from_secs(30), || {
        established_to(port.parse().unwrap()) == 0
    });
}

/// Established TCP connections on 127.0.0.1 whose local port is `port`
/// (the server's side), from /proc/net/tcp.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<_> = l.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}

#[test]
fn a_read_only_attach_refuses_writes_and_leaves_the_file_unchanged() {
    let Some(env) = kernel_env() else { return };
    let file = env.path("disk.img");
    make_file(&file, SIZE, CHUNK, 3);
    let sock = env.path("nbd.sock");
    let server = ServeProcess::start(&env, &[file.to_str().unwrap(), "-U", sock.to_str().unwrap()]);
    let dev = run(env.nbdx(["attach", "-r", &server.uri])).ok();
    assert_eq!(status(&env, &dev)["read_only"], true);
    let written = Direct::open(&dev, true).and_then(|d| d.write_at(0, &pattern(CHUNK, 4)));
    println!("writing to the read-only {dev}: {written:?}");
    assert!(written.is_err(), "the write must fail");
    assert_eq!(Direct::open(&dev, false).unwrap().read_at(0, CHUNK).unwrap(), pattern(CHUNK, 3));
    assert_eq!(file_bytes(&file, 0, CHUNK), pattern(CHUNK, 3), "the file is unchanged");
    run(env.nbdx(["detach", &dev])).ok();
}

#[test]
fn status_says_disconnected_for_a_device_that_was_never_attached() {
    let Some(env) = kernel_env() else { return };
    let unused = nbdx_netlink::list_devices().unwrap().into_iter().rev().find(|i| !started_devices().contains(i));
    let dev = format!("/dev/nbd{}", unused.expect("a free device"));
    let state = status(&env, &dev);
    assert_eq!((state["connected"].clone(), state["backend"].clone()), (false.into(), serde_json::Value::Null));
    let err = run(env.nbdx(["status", "/dev/nbd4000"])).one_line_error();
    assert!(err.contains("no such device"), "{err}");
    let err = run(env.nbdx(["detach", &dev])).one_line_error();
    assert!(err.contains("not attached"), "{err}");
}

/// A RAM disk that does not promise consistency across connections.
struct SingleConn(MemoryDevice);

#[async_trait]
impl Device for SingleConn {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        Caps { multi_conn: false, ..self.0.caps() }
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.0.read(offset, buf).await
    }
}

#[test]
fn attach_errors_are_one_line_and_leave_no_device_behind() {
    let Some(env) = kernel_env() else { return };
    let before = started_devices();
    let missing = format!("nbd+unix:///?socket={}", env.path("nobody.sock").display());
    let closed = format!("nbd://127.0.0.1:{}/", free_port());
    for uri in [&missing, &closed] {
        let err = run(env.nbdx(["attach", uri])).one_line_error();
        assert!(err.contains("cannot connect"), "{err}");
    }
    let sock = env.path("named.sock");
    let server = ServeProcess::start(&env, &["memory:16M", "-e", "disk", "-U", sock.to_str().unwrap()]);
    let unknown = server.uri.replace("/disk?", "/other?");
    let err = run(env.nbdx(["attach", &unknown])).one_line_error();
    assert!(err.contains("not found"), "{err}");
    assert_eq!(started_devices(), before, "no device left behind");

    // Over TCP, so that an unprivileged user reaches the server and only
    // the kernel refuses.
    let port = free_port().to_string();
    let tcp = ServeProcess::start(&env, &["memory:16M", "--ip", "127.0.0.1", "-p", &port]);
    let dev = run(env.nbdx(["attach", &tcp.uri])).ok();
    let err = run(env.nbdx(["attach", &tcp.uri, &dev])).one_line_error();
    assert!(err.contains("busy"), "{err}");
    let mut unprivileged = env.nbdx(["attach", &tcp.uri]);
    std::os::unix::process::CommandExt::uid(&mut unprivileged, 65534);
    let err = run(unprivileged).one_line_error();
    assert!(err.contains("permission denied; run as root"), "{err}");
    assert!(Direct::open(&dev, false).unwrap().read_at(0, 4096).is_ok(), "the busy device still works");
    run(env.nbdx(["detach", &dev])).ok();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let uri = format!("nbd://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let single = Server::new(vec![Export::new("", SingleConn(MemoryDevice::new(SIZE)))]).unwrap();
    runtime.spawn({
        let single = single.clone();
        async move { single.serve(listener).await }
    });
    let err = run(env.nbdx(["attach", "-C", "4", &uri])).one_line_error();
    assert!(err.contains("multi-conn"), "{err}");
    single.shutdown();
    assert_eq!(started_devices(), before, "no device left behind");
}

#[test]
fn the_ioctl_fallback_attaches_with_a_monitor_that_exits_on_detach() {
    let Some(env) = kernel_env() else { return };
    let sock = env.path("nbd.sock");
    let server = ServeProcess::start(&env, &["memory:16M", "-U", sock.to_str().unwrap()]);
    let mut attach = env.nbdx(["attach", &server.uri]);
    attach.env("NBDX_KERNEL_INTERFACE", "ioctl");
    let dev = run(attach).ok();
    let state = status(&env, &dev);
    assert_eq!((state["connected"].clone(), state["backend"].clone()), (true.into(), serde_json::Value::Null));
    let monitor = state["monitor"].as_u64().expect("a monitor holds NBD_DO_IT");
    let device = Direct::open(&dev, true).unwrap();
    device.write_at(0, &pattern(CHUNK, 5)).unwrap();
    assert_eq!(device.read_at(0, CHUNK).unwrap(), pattern(CHUNK, 5));
    drop(device);
    run(env.nbdx(["detach", &dev])).ok();
    assert_eq!(status(&env, &dev)["monitor"], serde_json::Value::Null, "monitor {monitor} exited");
    let log = std::fs::read_to_string(env.path(&format!("nbd{}.log", index_of(&dev)))).unwrap();
    assert!(log.contains("holding NBD_DO_IT") && log.contains("monitor exits"), "{log}");
}

#[test]
fn without_the_driver_attach_says_the_module_is_not_loaded() {
    if std::path::Path::new("/sys/module/nbd").exists() {
        skip("the nbd driver is loaded");
        return;
    }
    let mut attach = std::process::Command::new(nbdx_bin());
    attach.args(["attach", "nbd://127.0.0.1:1/"]);
    let err = run(attach).one_line_error();
    assert!(err.contains("nbd module not loaded") && err.contains("modprobe nbd"), "{err}");
}
