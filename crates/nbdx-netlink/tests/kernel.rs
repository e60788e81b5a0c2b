//! Tests against the real NBD driver. They need `/sys/module/nbd` and root;
//! without them each test prints `SKIP: ...` and returns. On a machine whose
//! kernel has no nbd driver, run them in a VM (`shared/vm/run-in-vm`).
//!
//! Each test serves the kernel's side of a socketpair with the real nbdx
//! server (negotiated by the nbdx client, then handed over) on a RAM disk,
//! and checks data on both sides: what the test writes through `/dev/nbdN`
//! (O_DIRECT) must arrive in the RAM disk, and what it puts in the RAM disk
//! must come back through `/dev/nbdN`.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use nbdx_netlink::*;
use nbdx_proto::TransmissionFlags;

use common::{nbd_available, pattern, wait_for, DirectDevice, Disk, Served};

const SIZE: u64 = 4 << 20;
const CHUNK: usize = 64 << 10;
const READY: Duration = Duration::from_secs(30);

fn request<'fd>(socket: &'fd impl AsFd, index: Option<u32>) -> ConnectRequest<'fd> {
    let mut req = ConnectRequest::new(SIZE, vec![socket.as_fd()]);
    req.index = index;
    req.block_size = Some(4096);
    req.server_flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
    req.timeout = Some(Duration::from_secs(60));
    req
}

/// A RAM disk of SIZE behind the nbdx server.
fn served() -> Served {
    Served::new(Disk::new(SIZE))
}

fn check_io(dev: &DirectDevice, disk: &Disk, offset: usize, seed: u32) {
    common::check_io(dev, disk, offset as u64, CHUNK, seed);
}

fn connected(nl: &NbdNetlink, index: u32) -> bool {
    nl.status(Some(index)).unwrap().iter().any(|d| d.index == index && d.connected)
}

#[test]
fn netlink_connect_serves_io_and_disconnect_clears_the_status() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let served = served();
    let conn = served.connect();
    assert_eq!(conn.export.size, SIZE);
    let mut req = request(&conn.socket, None);
    req.server_flags = conn.export.flags;
    req.backend = Some("nbdx-test:netlink".into());

    let index = nl.connect(&req).unwrap();
    let conn = conn.release_socket(); // the kernel holds its own reference to the socket
    wait_until_ready(index, SIZE, READY).unwrap();
    println!("connected /dev/nbd{index}, pid {:?}, backend {:?}", pid(index).unwrap(), backend(index).unwrap());
    assert_eq!(size_bytes(index).unwrap(), SIZE);
    assert_eq!(backend(index).unwrap().as_deref(), Some("nbdx-test:netlink"));
    assert!(pid(index).unwrap().is_some(), "a started device shows its pid");

    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &served.disk, 0, 1);
    check_io(&dev, &served.disk, 1 << 20, 2);
    drop(dev);

    assert_eq!(nl.status(Some(index)).unwrap(), vec![DeviceStatus { index, connected: true }]);
    assert!(nl.status(None).unwrap().contains(&DeviceStatus { index, connected: true }));

    nl.disconnect(index).unwrap();
    conn.join(&served);
    let (writes, flushes) = (Disk::count(&served.disk.writes), Disk::count(&served.disk.flushes));
    println!("server after NBD_CMD_DISCONNECT: {writes} writes, {flushes} flushes");
    assert!(writes >= 2 && flushes >= 2, "{writes} writes, {flushes} flushes");
    wait_for("status to show the device disconnected", READY, || !connected(&nl, index));
    assert_eq!(pid(index).unwrap(), None);
}

#[test]
fn ioctl_connect_serves_io_and_disconnect_releases_the_device() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let served = served();
    let conn = served.connect();
    let connection = connect_ioctl(&request(&conn.socket, None)).unwrap();
    let conn = conn.release_socket();
    let index = connection.index();
    wait_until_ready(index, SIZE, READY).unwrap();
    println!("ioctl-connected /dev/nbd{index}, pid {:?}", pid(index).unwrap());
    assert!(!connection.is_finished(), "NBD_DO_IT blocks while connected");
    assert_eq!(backend(index).unwrap(), None, "only netlink sets a backend");

    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &served.disk, 2 << 20, 3);
    drop(dev);
    assert!(connected(&nl, index), "STATUS sees an ioctl-configured device");

    connection.disconnect(Duration::from_secs(10)).unwrap();
    conn.join(&served);
    wait_for("status to show the device disconnected", READY, || !connected(&nl, index));
    assert_eq!(pid(index).unwrap(), None);
}

#[test]
fn connecting_to_a_busy_index_fails_with_device_busy() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let served = served();
    let conn = served.connect();
    let index = nl.connect(&request(&conn.socket, Some(2))).unwrap();
    assert_eq!(index, 2);

    let second = served.connect();
    let err = nl.connect(&request(&second.socket, Some(2))).unwrap_err();
    println!("second NBD_CMD_CONNECT: {err}");
    assert!(matches!(err, Error::DeviceBusy { index: 2, .. }), "{err:?}");
    let err = connect_ioctl(&request(&second.socket, Some(2))).unwrap_err();
    println!("ioctl connect: {err}");
    assert!(matches!(err, Error::DeviceBusy { index: 2, .. }), "{err:?}");
    let err = IoctlDevice::open(2).unwrap().set_size(SIZE).unwrap_err();
    println!("NBD_SET_SIZE on a netlink device: {err}");
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err:?}");

    nl.disconnect(index).unwrap();
    conn.release_socket().join(&served);
    wait_for("nbd2 to be free", READY, || !connected(&nl, index));
}

#[test]
fn reconfigure_after_the_server_closed_the_socket_keeps_io_working() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let mut monitor = nl.subscribe_link_dead().unwrap();
    let served = served();
    let first = served.connect();
    let mut req = request(&first.socket, Some(3));
    req.dead_conn_timeout = Some(Duration::from_secs(60));
    req.backend = Some("nbdx-test:reconnect".into());
    let index = nl.connect(&req).unwrap();
    let first = first.release_socket();
    wait_until_ready(index, SIZE, READY).unwrap();
    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &served.disk, 0, 4);
    assert_eq!(monitor.try_next_event().unwrap(), None, "no link died yet");
    let spare = served.connect();
    let mut offer = ReconfigureRequest::new(index, vec![spare.socket.as_fd()]);
    offer.backend = Some("nbdx-test:reconnect".into());
    nl.reconfigure(&offer).unwrap(); // no dead socket to replace: the kernel drops it
    check_io(&dev, &served.disk, 2 << 20, 6);

    first.kill(&served);
    let dead = monitor.next_event(Some(READY)).unwrap();
    println!("NBD_CMD_LINK_DEAD for {dead:?}");
    assert_eq!(dead, Some(index));
    assert!(connected(&nl, index), "a device with dead sockets keeps its configuration");

    // A read issued now waits for a live socket (dead-connection timeout).
    let waiting = std::thread::spawn(move || -> std::io::Result<(DirectDevice, Vec<u8>)> {
        let data = dev.read_at(0, CHUNK)?;
        Ok((dev, data))
    });
    let second = served.connect();
    let mut wrong = ReconfigureRequest::new(index, vec![second.socket.as_fd()]);
    wrong.backend = Some("another backend".into());
    let err = nl.reconfigure(&wrong).unwrap_err();
    println!("RECONFIGURE with another backend: {err}");
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");

    let mut reconnect = ReconfigureRequest::new(index, vec![second.socket.as_fd()]);
    reconnect.backend = Some("nbdx-test:reconnect".into());
    nl.reconfigure(&reconnect).unwrap();
    let second = second.release_socket();
    let (dev, data) = waiting.join().unwrap().unwrap();
    assert_eq!(data, pattern(CHUNK, 4), "a read issued while the link was dead, after the reconnect");
    check_io(&dev, &served.disk, 1 << 20, 5);
    drop(dev);

    let reads_before = Disk::count(&served.disk.reads);
    nl.disconnect(index).unwrap();
    second.join(&served);
    println!("server after NBD_CMD_DISCONNECT: {reads_before} reads");
    assert!(reads_before >= 2, "{reads_before} reads");
    wait_for("nbd3 to be free", READY, || !connected(&nl, index));
}

#[test]
fn unknown_and_unused_devices_are_reported_as_such() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let unused = *list_devices().unwrap().last().expect("the driver creates devices");
    assert_eq!(nl.status(Some(unused)).unwrap(), vec![DeviceStatus { index: unused, connected: false }]);
    assert_eq!(nl.status(Some(30_000)).unwrap(), vec![], "STATUS of a missing index is an empty list");

    let err = nl.disconnect(30_000).unwrap_err();
    println!("DISCONNECT of a missing index: {err}");
    assert!(matches!(err, Error::NoSuchDevice { index: 30_000, .. }), "{err:?}");
    let err = nl.reconfigure(&ReconfigureRequest::new(30_000, vec![])).unwrap_err();
    assert!(matches!(err, Error::NoSuchDevice { index: 30_000, .. }), "{err:?}");
    let err = nl.reconfigure(&ReconfigureRequest::new(unused, vec![])).unwrap_err();
    println!("RECONFIGURE of an unused device: {err}");
    assert!(matches!(err, Error::NotConnected { .. }), "{err:?}");

    // Opening /dev/nbdN gives it a configuration: STATUS then says connected.
    let open = std::fs::File::open(device_path(unused)).unwrap();
    let while_open = nl.status(Some(unused)).unwrap();
    println!("STATUS of unused nbd{unused} while it is open: {while_open:?}, pid {:?}", pid(unused).unwrap());
    assert_eq!(while_open, vec![DeviceStatus { index: unused, connected: true }]);
    assert_eq!(pid(unused).unwrap(), None, "an open but unconfigured device has no pid");
    drop(open);
    assert_eq!(nl.status(Some(unused)).unwrap(), vec![DeviceStatus { index: unused, connected: false }]);
}

#[test]
fn two_sockets_with_multi_conn_serve_one_device() {
    let Some(_kernel) = nbd_available() else { return };
    let nl = NbdNetlink::open().unwrap();
    let served = served();
    let (a, b) = (served.connect(), served.connect());
    assert!(a.export.flags.contains(TransmissionFlags::CAN_MULTI_CONN), "the RAM disk is multi-conn");
    let mut req = request(&a.socket, None);
    req.sockets.push(b.socket.as_fd());
    req.server_flags = a.export.flags;
    let index = nl.connect(&req).unwrap();
    let (a, b) = (a.release_socket(), b.release_socket());
    wait_until_ready(index, SIZE, READY).unwrap();
    let dev = DirectDevice::open(index).unwrap();
    for (i, offset) in [0, 1 << 20, 2 << 20, 3 << 20].into_iter().enumerate() {
        check_io(&dev, &served.disk, offset, 10 + i as u32);
    }
    drop(dev);
    nl.disconnect(index).unwrap();
    a.join(&served);
    b.join(&served);
    wait_for("the two-socket device to be free", READY, || !connected(&nl, index));
}

#[test]
fn without_the_driver_opening_the_family_reports_module_not_loaded() {
    if std::path::Path::new("/sys/module/nbd").exists() {
        common::skip("the nbd driver is present");
        return;
    }
    let err = NbdNetlink::open().unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
    assert!(err.to_string().contains("modprobe nbd"), "{err}");
}
