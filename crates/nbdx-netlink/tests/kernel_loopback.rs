//! `configure`, `loopback` and the reconnect `Supervisor` against the real
//! NBD driver (root and `/sys/module/nbd`, else each test prints `SKIP`).

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdx::device::Device;
use nbdx::proto::BlockSize;
use nbdx_netlink::*;

use common::{check_io, nbd_available, pattern, sysfs_attr, wait_for, DirectDevice, Disk, Served};

const SIZE: u64 = 8 << 20;
const CHUNK: usize = 64 << 10;
const READY: Duration = Duration::from_secs(30);

fn attached(index: u32) -> bool {
    pid(index).unwrap().is_some()
}

#[test]
fn configure_takes_size_flags_and_block_sizes_from_the_handshake() {
    let Some(_kernel) = nbd_available() else { return };
    // The maximum is below the kernel's default request size (128 KiB or more).
    let sizes = BlockSize { minimum: 4096, preferred: 4096, maximum: 64 << 10 };
    let served = Served::new(Disk::with_block_size(SIZE + 1000, Some(sizes)));
    let conn = served.connect();
    let options = ConfigureOptions { backend: Some("nbdx-test:configure".into()), ..ConfigureOptions::default() };
    let index = configure(&conn.export, &[conn.socket.as_fd()], &options).unwrap();
    let side = conn.release_socket();
    // Usable at once: no wait for udev.
    let dev = DirectDevice::open(index).unwrap();
    println!(
        "configured /dev/nbd{index}: size {}, logical block {}, max_sectors_kb {}",
        size_bytes(index).unwrap(),
        sysfs_attr(index, "queue/logical_block_size"),
        sysfs_attr(index, "queue/max_sectors_kb")
    );
    assert_eq!(size_bytes(index).unwrap(), SIZE, "rounded down to whole 4 KiB blocks");
    assert_eq!(sysfs_attr(index, "queue/logical_block_size"), "4096");
    assert_eq!(sysfs_attr(index, "queue/max_sectors_kb"), "64", "capped at the export's maximum");
    assert!(sysfs_attr(index, "queue/discard_max_bytes") != "0", "the RAM disk trims");
    assert!(!read_only(index).unwrap());
    check_io(&dev, &served.disk, 1 << 20, CHUNK, 1);
    drop(dev);
    NbdNetlink::open().unwrap().disconnect(index).unwrap();
    side.join(&served);
    wait_for("the device to stop", READY, || !attached(index));
}

#[test]
fn a_read_only_configuration_refuses_writes_before_the_server_sees_them() {
    let Some(_kernel) = nbd_available() else { return };
    let served = Served::new(Disk::new(SIZE));
    served.disk.poke(0, &pattern(CHUNK, 7));
    let conn = served.connect();
    let options = ConfigureOptions { read_only: true, ..ConfigureOptions::default() };
    let index = configure(&conn.export, &[conn.socket.as_fd()], &options).unwrap();
    let side = conn.release_socket();
    assert!(read_only(index).unwrap(), "/sys/block/nbd{index}/ro says 1");
    let writes_before = Disk::count(&served.disk.writes);
    let refused = DirectDevice::open(index).and_then(|dev| dev.write_at(0, &pattern(CHUNK, 8)));
    println!("writing to a read-only device: {refused:?}");
    assert!(refused.is_err(), "the write must fail");
    let dev = DirectDevice::open_path(&device_path(index), false).unwrap();
    assert_eq!(dev.read_at(0, CHUNK).unwrap(), pattern(CHUNK, 7), "reads still work");
    assert_eq!(Disk::count(&served.disk.writes), writes_before, "no write reached the server");
    drop(dev);
    NbdNetlink::open().unwrap().disconnect(index).unwrap();
    side.join(&served);
    wait_for("the device to stop", READY, || !attached(index));
}

#[test]
fn a_loopback_serves_an_in_process_device_and_detaches_when_dropped() {
    let Some(_kernel) = nbd_available() else { return };
    let disk = Disk::new(SIZE);
    let device: Arc<dyn Device> = disk.clone();
    let lo = loopback(device, None, LoopbackOptions::default()).unwrap();
    let index = lo.index();
    println!("loopback at {} ({} bytes), backend {:?}", lo.path().display(), lo.size(), backend(index).unwrap());
    assert_eq!(lo.size(), SIZE);
    assert_eq!(backend(index).unwrap().as_deref(), Some("nbdx loopback"));
    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &disk, 0, CHUNK, 20);
    check_io(&dev, &disk, SIZE - 2 * CHUNK as u64, CHUNK, 21);
    drop(dev);
    let flushes = Disk::count(&disk.flushes);
    drop(lo);
    assert!(!attached(index), "dropping the loopback detaches the device");
    assert!(Disk::count(&disk.flushes) > flushes, "the teardown flushes the device");
}

#[test]
fn a_loopback_with_four_connections_and_a_smaller_size_serves_all_of_them() {
    let Some(_kernel) = nbd_available() else { return };
    let disk = Disk::new(SIZE);
    let options = LoopbackOptions { connections: 4, ..LoopbackOptions::default() };
    let lo = loopback(disk.clone(), Some(SIZE / 2), options).unwrap();
    assert_eq!(size_bytes(lo.index()).unwrap(), SIZE / 2);
    let dev = DirectDevice::open(lo.index()).unwrap();
    // Parallel writers spread over the sockets.
    std::thread::scope(|scope| {
        for i in 0..8u32 {
            let dev = &dev;
            scope.spawn(move || dev.write_at(u64::from(i) * (256 << 10), &pattern(256 << 10, i)).unwrap());
        }
    });
    dev.sync().unwrap();
    for i in 0..8u32 {
        assert_eq!(disk.peek(u64::from(i) * (256 << 10), 256 << 10), pattern(256 << 10, i), "chunk {i}");
    }
    let beyond = dev.read_at(SIZE / 2, 4096);
    assert!(beyond.is_err() || beyond.unwrap().is_empty(), "nothing beyond the smaller size");
    drop(dev);
    lo.close().unwrap();
}

#[test]
fn a_loopback_over_the_ioctls_works_and_detaches_on_close() {
    let Some(_kernel) = nbd_available() else { return };
    let disk = Disk::new(SIZE);
    let options = LoopbackOptions { interface: Interface::Ioctl, ..LoopbackOptions::default() };
    let lo = loopback(disk.clone(), None, options).unwrap();
    let index = lo.index();
    assert_eq!(backend(index).unwrap(), None, "ioctls carry no backend identifier");
    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &disk, 4 << 20, CHUNK, 30);
    drop(dev);
    lo.close().unwrap();
    assert!(!attached(index));
}

#[test]
fn the_supervisor_reconnects_after_the_server_goes_away_and_stops_on_disconnect() {
    let Some(_kernel) = nbd_available() else { return };
    let served = Served::new(Disk::new(SIZE));
    let netlink = NbdNetlink::open().unwrap();
    let monitor = netlink.subscribe_link_dead().unwrap();
    let (a, b) = (served.connect(), served.connect());
    let options = ConfigureOptions {
        backend: Some("nbdx-test:supervisor".into()),
        dead_conn_timeout: Some(Duration::from_secs(60)),
        timeout: Some(Duration::from_secs(30)),
        ..ConfigureOptions::default()
    };
    let index = configure_with(&netlink, &a.export, &[a.socket.as_fd(), b.socket.as_fd()], &options).unwrap();
    let (a, b) = (a.release_socket(), b.release_socket());
    let dev = DirectDevice::open(index).unwrap();
    check_io(&dev, &served.disk, 0, CHUNK, 40);

    let (sides_tx, sides_rx) = std::sync::mpsc::channel();
    // Set when the test body ends, even by a panic, so the scope can end.
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _finish = SetOnDrop(&finished);
        let supervisor = scope.spawn(|| {
            let mut supervisor = Supervisor::new(&netlink, monitor, index, 2, options.backend.clone());
            supervisor.poll = Duration::from_millis(200);
            let reconnect = |n: usize| -> Result<Vec<OwnedFd>> {
                println!("supervisor asks for {n} new connections");
                let conns: Vec<_> = (0..n).map(|_| served.connect()).collect();
                let sockets = conns.iter().map(|c| c.socket.try_clone().unwrap()).collect();
                conns.into_iter().for_each(|c| sides_tx.send(c.release_socket()).unwrap());
                Ok(sockets)
            };
            supervisor.run(reconnect, || attached(index) && !finished.load(Ordering::SeqCst))
        });
        a.kill(&served);
        b.kill(&served);
        // Issued with both links dead: completes once the supervisor reconnected.
        check_io(&dev, &served.disk, 1 << 20, CHUNK, 41);
        drop(dev);
        netlink.disconnect(index).unwrap();
        supervisor.join().unwrap().unwrap();
    });
    let replaced: Vec<_> = sides_rx.try_iter().collect();
    println!("the supervisor opened {} replacement connections", replaced.len());
    assert!(!replaced.is_empty() && replaced.len() <= 2, "{} replacements", replaced.len());
    replaced.into_iter().for_each(|side| side.join(&served));
    wait_for("the device to stop", READY, || !attached(index));
}

/// Sets the flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
