//! Fixtures of the kernel tests: the real nbdx server on the kernel's side
//! of a socketpair, a RAM disk that counts what reaches it, direct I/O on
//! `/dev/nbdN`, and the skip rule.
//!
//! Each connection is negotiated by the nbdx client (`handover_over`), as
//! `nbdx attach` does, and then handed to the kernel; the server keeps a
//! clone of its end so a test can cut the connection like a crashed server.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nbdx::client::{handover_over, ClientOptions, Stream};
use nbdx::device::{Caps, Device, DeviceResult, ZeroFlags};
use nbdx::proto::client::Connected;
use nbdx::proto::BlockSize;
use nbdx::server::Server;
use nbdx::{Export, MemoryDevice};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Says why a test did not run, on the real stderr: the test harness
/// captures `println!`, but not writes to the stream itself, so the skip
/// shows in every `cargo test` run.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {} ({reason})", std::thread::current().name().unwrap_or("?"));
}

/// Serialises the kernel tests: they share the host's devices.
static KERNEL: Mutex<()> = Mutex::new(());

/// Whether the kernel tests can run here; prints why not.
pub fn nbd_available() -> Option<MutexGuard<'static, ()>> {
    if !Path::new("/sys/module/nbd").exists() {
        skip("no nbd driver (/sys/module/nbd does not exist)");
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root (the nbd driver needs CAP_SYS_ADMIN)");
        return None;
    }
    Some(KERNEL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// A RAM disk that counts the requests reaching it.
pub struct Disk {
    inner: MemoryDevice,
    block_size: Option<BlockSize>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
}

impl Disk {
    pub fn new(size: u64) -> Arc<Self> {
        Self::with_block_size(size, None)
    }

    /// A disk that advertises `NBD_INFO_BLOCK_SIZE`.
    pub fn with_block_size(size: u64, block_size: Option<BlockSize>) -> Arc<Self> {
        Arc::new(Disk {
            inner: MemoryDevice::new(size),
            block_size,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            trims: AtomicU64::new(0),
        })
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    /// Reads the RAM disk directly (not through the kernel).
    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        block_on_now(self.inner.read(offset, &mut buf)).unwrap();
        buf
    }

    /// Writes the RAM disk directly.
    pub fn poke(&self, offset: u64, data: &[u8]) {
        block_on_now(self.inner.write(offset, data, false)).unwrap();
    }
}

/// MemoryDevice completes at once; a throwaway runtime drives it.
fn block_on_now<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

#[async_trait]
impl Device for Disk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        let caps = self.inner.caps();
        Caps { block_size: self.block_size.unwrap_or(caps.block_size), ..caps }
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> DeviceResult<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        self.trims.fetch_add(1, Ordering::SeqCst);
        self.inner.trim(offset, length, fua).await
    }
    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_zeroes(offset, length, flags).await
    }
}

/// The nbdx server for one disk, on a runtime of its own.
pub struct Served {
    pub runtime: Runtime,
    pub server: Server,
    pub disk: Arc<Disk>,
}

/// One served connection: the socket for the kernel and the server's side.
pub struct Connection {
    /// The client end, negotiated, for the kernel.
    pub socket: OwnedFd,
    pub export: Connected,
    control: UnixStream,
    task: JoinHandle<()>,
}

impl Served {
    pub fn new(disk: Arc<Disk>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = Server::new(vec![Export::from_arc("", disk.clone() as Arc<dyn Device>)]).unwrap();
        Served { runtime, server, disk }
    }

    /// A negotiated connection to the server.
    pub fn connect(&self) -> Connection {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let control = theirs.try_clone().unwrap();
        let server = self.server.clone();
        let _enter = self.runtime.enter();
        theirs.set_nonblocking(true).unwrap();
        ours.set_nonblocking(true).unwrap();
        let theirs = tokio::net::UnixStream::from_std(theirs).unwrap();
        let task = self.runtime.spawn(async move {
            let _ = server.serve_connection(theirs).await;
        });
        let ours = tokio::net::UnixStream::from_std(ours).unwrap();
        let handover = self.runtime.block_on(handover_over(Stream::Unix(ours), &ClientOptions::new())).unwrap();
        Connection { socket: handover.socket.into_fd(), export: handover.export, control, task }
    }
}

impl Connection {
    /// Closes the client end (after the kernel took its reference) and
    /// keeps the server's side.
    pub fn release_socket(self) -> ServerSide {
        ServerSide { control: self.control, task: self.task }
    }
}

/// The server's side of a connection handed to the kernel.
pub struct ServerSide {
    control: UnixStream,
    task: JoinHandle<()>,
}

impl ServerSide {
    /// Waits (bounded) for the server to end the connection, as it does
    /// after `NBD_CMD_DISC`.
    pub fn join(self, served: &Served) {
        let task = self.task;
        let ended = served.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
        assert!(ended.is_ok(), "the server connection did not end within 30 s");
    }

    /// Cuts the connection under the kernel, as a crashed server would.
    pub fn kill(self, served: &Served) {
        self.control.shutdown(Shutdown::Both).unwrap();
        self.join(served);
    }
}

/// `/dev/nbdN` opened with `O_DIRECT`: every read and write reaches the server.
pub struct DirectDevice(File);

const ALIGN: usize = 4096;

impl DirectDevice {
    pub fn open(index: u32) -> io::Result<Self> {
        Self::open_path(&nbdx_netlink::device_path(index), true)
    }

    pub fn open_path(path: &Path, write: bool) -> io::Result<Self> {
        OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(path).map(DirectDevice)
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut buf = Aligned::new(data.len());
        buf.as_mut().copy_from_slice(data);
        self.0.write_all_at(buf.as_mut(), offset)
    }

    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Aligned::new(len);
        self.0.read_exact_at(buf.as_mut(), offset)?;
        Ok(buf.as_mut().to_vec())
    }

    /// fsync: the kernel sends `NBD_CMD_FLUSH` when the export has `NBD_FLAG_SEND_FLUSH`.
    pub fn sync(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

/// A buffer aligned for `O_DIRECT`.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let storage = vec![0; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Aligned { storage, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

/// Writes at `offset` through the device and reads back what the test puts
/// in the disk at `offset + len`, proving both directions reach the server.
pub fn check_io(dev: &DirectDevice, disk: &Disk, offset: u64, len: usize, seed: u32) {
    let written = pattern(len, seed);
    dev.write_at(offset, &written).unwrap();
    dev.sync().unwrap();
    assert_eq!(disk.peek(offset, len), written, "write through /dev/nbdN reached the server");
    let served = pattern(len, seed + 1000);
    disk.poke(offset + len as u64, &served);
    assert_eq!(dev.read_at(offset + len as u64, len).unwrap(), served, "read came from the server");
}

/// Polls `condition` until it holds, for at most `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// A sysfs attribute of the device, trimmed.
pub fn sysfs_attr(index: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/sys/block/nbd{index}/{name}")).unwrap().trim().to_owned()
}
