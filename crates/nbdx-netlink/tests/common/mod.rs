//! Fixtures of the kernel tests: a minimal NBD responder for the kernel's
//! side of a socketpair, direct I/O on `/dev/nbdN`, and the skip rule.
//!
//! The responder is a test fixture, not a server: there is no handshake (the
//! kernel only ever gets sockets after negotiation), and it answers the
//! transmission-phase requests the kernel sends with simple replies, one at a
//! time, on a RAM disk shared with the test.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nbdx_proto::consts::{REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
use nbdx_proto::Cmd;

/// `NBD_EINVAL` for requests outside the disk or of unknown type.
const NBD_EINVAL: u32 = 22;

/// Serialises the kernel tests: they share the host's devices.
static KERNEL: Mutex<()> = Mutex::new(());

/// Whether the kernel tests can run here; prints why not.
pub fn nbd_available() -> Option<MutexGuard<'static, ()>> {
    if !Path::new("/sys/module/nbd").exists() {
        println!("SKIP: no nbd driver (/sys/module/nbd does not exist)");
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: not root (the nbd driver needs CAP_SYS_ADMIN)");
        return None;
    }
    Some(KERNEL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// A RAM disk shared by the test and its responders.
#[derive(Clone)]
pub struct Disk(Arc<Mutex<Vec<u8>>>);

impl Disk {
    pub fn new(size: usize) -> Self {
        Disk(Arc::new(Mutex::new(vec![0; size])))
    }

    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        self.0.lock().unwrap()[offset..offset + len].to_vec()
    }

    pub fn write(&self, offset: usize, data: &[u8]) {
        self.0.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// What a responder saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    /// Whether it ended on `NBD_CMD_DISC` (else on end of stream).
    pub disc: bool,
}

/// A thread answering the kernel on one socket.
pub struct Responder {
    control: UnixStream,
    thread: JoinHandle<io::Result<Stats>>,
}

impl Responder {
    pub fn spawn(socket: UnixStream, disk: Disk) -> Self {
        let control = socket.try_clone().expect("clone responder socket");
        let thread = std::thread::spawn(move || serve(socket, &disk));
        Responder { control, thread }
    }

    /// Waits for the responder to end (`NBD_CMD_DISC` or end of stream).
    pub fn join(self) -> io::Result<Stats> {
        self.thread.join().expect("responder panicked")
    }

    /// Closes the connection under the kernel, as a crashed server would.
    pub fn kill(self) -> io::Result<Stats> {
        self.control.shutdown(Shutdown::Both)?;
        self.join()
    }
}

fn serve(mut socket: UnixStream, disk: &Disk) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let mut header = [0u8; 28];
    loop {
        if !read_or_eof(&mut socket, &mut header)? {
            return Ok(stats);
        }
        let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        if be32(0) != REQUEST_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request magic {:#x}", be32(0))));
        }
        let cmd = Cmd((be32(4) & 0xffff) as u16);
        let handle: [u8; 8] = header[8..16].try_into().unwrap();
        let offset = u64::from_be_bytes(header[16..24].try_into().unwrap()) as usize;
        let len = be32(24) as usize;
        let in_range = offset.checked_add(len).is_some_and(|end| end <= disk.0.lock().unwrap().len());
        let reply = |socket: &mut UnixStream, error: u32, data: &[u8]| -> io::Result<()> {
            let mut out = Vec::with_capacity(16 + data.len());
            out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&error.to_be_bytes());
            out.extend_from_slice(&handle);
            out.extend_from_slice(data);
            socket.write_all(&out)
        };
        match cmd {
            Cmd::DISC => {
                stats.disc = true;
                return Ok(stats);
            }
            Cmd::READ if in_range => {
                stats.reads += 1;
                reply(&mut socket, 0, &disk.read(offset, len))?;
            }
            Cmd::WRITE => {
                let mut data = vec![0; len];
                socket.read_exact(&mut data)?;
                stats.writes += 1;
                if in_range {
                    disk.write(offset, &data);
                }
                reply(&mut socket, if in_range { 0 } else { NBD_EINVAL }, &[])?;
            }
            Cmd::FLUSH => {
                stats.flushes += 1;
                reply(&mut socket, 0, &[])?;
            }
            _ => reply(&mut socket, NBD_EINVAL, &[])?,
        }
    }
}

/// Reads a whole header; `false` on a clean end of stream before its first byte.
fn read_or_eof(socket: &mut UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match socket.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `/dev/nbdN` opened with `O_DIRECT`: every read and write reaches the server.
pub struct DirectDevice(File);

const ALIGN: usize = 4096;

impl DirectDevice {
    pub fn open(index: u32) -> io::Result<Self> {
        let path = nbdx_netlink::device_path(index);
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).map(DirectDevice)
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
