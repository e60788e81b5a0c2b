//! The ioctl interface of `/dev/nbdN`, for kernels without the netlink family.
//!
//! ```text
//! open /dev/nbdN ─ NBD_SET_BLKSIZE ─ NBD_SET_SIZE ─ NBD_SET_FLAGS ─ NBD_SET_TIMEOUT
//!   ─ NBD_SET_SOCK × n ─ [thread] NBD_DO_IT ······ blocks while connected ······┐
//!                                                                             ▼
//! NBD_DISCONNECT (sends NBD_CMD_DISC; the server closes) ─► DO_IT returns ─ NBD_CLEAR_QUE ─ NBD_CLEAR_SOCK ─ close
//! ```
//!
//! The device is configured only while this process keeps `/dev/nbdN` open
//! and `NBD_DO_IT` runs, which is why [`IoctlConnection`] owns a thread. All
//! `NBD_SET_SOCK` calls must come from one task (the kernel remembers it).
//! Dead-connection timeouts, backend identifiers, client flags and
//! reconfiguration exist only in the netlink interface.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::consts::ioctl::*;
use crate::error::{libc_errno, Error, Result};
use crate::request::{whole_seconds, ConnectRequest};
use crate::sysfs;

/// An open `/dev/nbdN` and its NBD ioctls, one method each.
#[derive(Debug)]
pub struct IoctlDevice {
    file: File,
    index: u32,
}

impl IoctlDevice {
    /// Opens `/dev/nbdN` read-write.
    pub fn open(index: u32) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(sysfs::device_path(index))
            .map_err(|e| Error::from_io("open", index, e))?;
        Ok(Self { file, index })
    }

    /// The device index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `NBD_SET_SOCK`: adds a connected socket.
    pub fn set_sock(&self, socket: BorrowedFd<'_>) -> Result<()> {
        self.ioctl("NBD_SET_SOCK", NBD_SET_SOCK, socket.as_raw_fd().unsigned_abs().into())
    }

    /// `NBD_SET_BLKSIZE`: block size in bytes.
    pub fn set_blksize(&self, bytes: u64) -> Result<()> {
        self.ioctl("NBD_SET_BLKSIZE", NBD_SET_BLKSIZE, arg(bytes)?)
    }

    /// `NBD_SET_SIZE`: size in bytes.
    pub fn set_size(&self, bytes: u64) -> Result<()> {
        self.ioctl("NBD_SET_SIZE", NBD_SET_SIZE, arg(bytes)?)
    }

    /// `NBD_SET_FLAGS`: transmission flags.
    pub fn set_flags(&self, flags: u64) -> Result<()> {
        self.ioctl("NBD_SET_FLAGS", NBD_SET_FLAGS, arg(flags)?)
    }

    /// `NBD_SET_TIMEOUT`: per-request timeout in seconds (0: none).
    pub fn set_timeout(&self, seconds: u64) -> Result<()> {
        self.ioctl("NBD_SET_TIMEOUT", NBD_SET_TIMEOUT, arg(seconds)?)
    }

    /// `NBD_DO_IT`: starts the device and blocks until it disconnects.
    pub fn do_it(&self) -> Result<()> {
        self.ioctl("NBD_DO_IT", NBD_DO_IT, 0)
    }

    /// `NBD_CLEAR_SOCK`: shuts the sockets down and fails queued requests.
    pub fn clear_sock(&self) -> Result<()> {
        self.ioctl("NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0)
    }

    /// `NBD_CLEAR_QUE`: a no-op on current kernels, kept for old ones.
    pub fn clear_que(&self) -> Result<()> {
        self.ioctl("NBD_CLEAR_QUE", NBD_CLEAR_QUE, 0)
    }

    /// `NBD_DISCONNECT`: sends `NBD_CMD_DISC` on every socket.
    pub fn disconnect(&self) -> Result<()> {
        self.ioctl("NBD_DISCONNECT", NBD_DISCONNECT, 0)
    }

    fn ioctl(&self, name: &str, request: u32, arg: libc::c_ulong) -> Result<()> {
        // SAFETY: every NBD ioctl is `_IO` and takes its argument by value
        // (a number or a file descriptor), never as a pointer, and the
        // descriptor is open for the lifetime of `self`. `request` is at most
        // 0xab0a, so it fits `libc::Ioctl` (c_int on musl, c_ulong on glibc).
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), request as libc::Ioctl, arg) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc_errno::EINVAL) if name == "NBD_SET_SOCK" => Error::invalid(
                    name,
                    "not a socket that supports shutdown, or the device is controlled through netlink",
                ),
                _ => Error::from_io(name, self.index, err),
            });
        }
        Ok(())
    }
}

fn arg(value: u64) -> Result<libc::c_ulong> {
    libc::c_ulong::try_from(value)
        .map_err(|_| Error::invalid("ioctl", format!("{value} does not fit an ioctl argument")))
}

/// A device connected through ioctls; the `NBD_DO_IT` thread runs until the
/// device disconnects. Dropping it disconnects.
#[derive(Debug)]
pub struct IoctlConnection {
    device: Arc<IoctlDevice>,
    done: mpsc::Receiver<Result<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How long [`connect_ioctl`] waits for `NBD_DO_IT` to start the device.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a device with ioctls: the same request as netlink CONNECT, minus
/// what only netlink has (dead-connection timeout, backend, client flags).
///
/// With `index: None` the first device without a `pid` (not started) is
/// tried, then the next while they are busy. Returns once the kernel has
/// started the device.
pub fn connect_ioctl(request: &ConnectRequest<'_>) -> Result<IoctlConnection> {
    const OP: &str = "NBD_DO_IT";
    request.validate(OP)?;
    if request.dead_conn_timeout.is_some() || request.backend.is_some() || request.client_flags.bits() != 0 {
        return Err(Error::invalid(
            OP,
            "dead-connection timeout, backend identifier and client flags need the netlink interface",
        ));
    }
    let candidates = match request.index {
        Some(index) => vec![index],
        None => sysfs::list_devices()?.into_iter().filter(|&i| matches!(sysfs::pid(i), Ok(None))).collect(),
    };
    let mut last_busy = None;
    for index in candidates {
        match connect_index(index, request) {
            Err(err @ Error::DeviceBusy { .. }) if request.index.is_none() => last_busy = Some(err),
            other => return other,
        }
    }
    Err(last_busy.unwrap_or_else(|| Error::invalid(OP, "no free nbd device")))
}

fn connect_index(index: u32, request: &ConnectRequest<'_>) -> Result<IoctlConnection> {
    // A started device refuses most ioctls with a bare EINVAL (netlink) or
    // EBUSY (another task): say "busy" for both.
    if sysfs::pid(index)?.is_some() {
        return Err(Error::DeviceBusy { operation: "NBD_SET_SOCK".into(), index });
    }
    let device = Arc::new(IoctlDevice::open(index)?);
    let configure = || -> Result<()> {
        if let Some(block_size) = request.block_size {
            device.set_blksize(block_size)?;
        }
        device.set_size(request.size_bytes)?;
        device.set_flags(u64::from(request.server_flags.bits()))?;
        if let Some(timeout) = request.timeout {
            device.set_timeout(whole_seconds(timeout))?;
        }
        request.sockets.iter().try_for_each(|socket| device.set_sock(*socket))
    };
    if let Err(err) = configure() {
        // Releases sockets that were already added; the device stays free.
        let _ = device.clear_sock();
        return Err(err);
    }

    let (tx, done) = mpsc::channel();
    let worker = Arc::clone(&device);
    let thread = std::thread::Builder::new().name(format!("nbd{index}-do-it")).spawn(move || {
        let result = worker.do_it();
        // What nbd-client does after NBD_DO_IT; harmless when already clear.
        let _ = worker.clear_que();
        let _ = worker.clear_sock();
        let _ = tx.send(result);
    })?;
    let connection = IoctlConnection { device, done, thread: Some(thread) };
    connection.wait_started(index)?;
    Ok(connection)
}

impl IoctlConnection {
    /// The device index.
    pub fn index(&self) -> u32 {
        self.device.index
    }

    /// Whether `NBD_DO_IT` has returned (the server went away or a disconnect happened).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// `NBD_DISCONNECT`, then waits up to `grace` for the server to close;
    /// past that the sockets are shut down (`NBD_CLEAR_SOCK`). Returns what
    /// `NBD_DO_IT` returned.
    pub fn disconnect(mut self, grace: Duration) -> Result<()> {
        self.device.disconnect()?;
        self.finish(grace)
    }

    /// Waits for `NBD_DO_IT` to start the device: the kernel creates the
    /// `pid` attribute before it blocks. An early return of DO_IT is its error.
    fn wait_started(&self, index: u32) -> Result<()> {
        let start = Instant::now();
        let mut interval = Duration::from_millis(1);
        loop {
            match self.done.try_recv() {
                Ok(result) => return result.and(Err(Error::invalid("NBD_DO_IT", "returned at once"))),
                Err(mpsc::TryRecvError::Disconnected) => return Err(Error::Netlink("NBD_DO_IT thread died".into())),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if sysfs::pid(index)?.is_some() {
                return Ok(());
            }
            if start.elapsed() >= START_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("NBD_DO_IT to start /dev/nbd{index}"),
                    after: START_TIMEOUT,
                });
            }
            std::thread::sleep(interval);
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }

    fn finish(&mut self, grace: Duration) -> Result<()> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let result = match self.done.recv_timeout(grace) {
            Ok(result) => result,
            Err(_) => {
                let _ = self.device.clear_sock();
                match self.done.recv_timeout(grace) {
                    Ok(result) => result,
                    // The thread is left behind (detached) rather than waited for forever.
                    Err(_) => {
                        let what = format!("NBD_DO_IT on /dev/nbd{} to return", self.device.index);
                        return Err(Error::Timeout { what, after: grace * 2 });
                    }
                }
            }
        };
        let _ = thread.join();
        result
    }
}

impl Drop for IoctlConnection {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.device.disconnect();
            let _ = self.finish(Duration::from_secs(5));
        }
    }
}

/// Disconnects a device that some other process set up with ioctls (what
/// `nbd-client -d` does): `NBD_DISCONNECT`, then `NBD_CLEAR_SOCK`.
pub fn disconnect_ioctl(index: u32) -> Result<()> {
    let device = IoctlDevice::open(index)?;
    device.disconnect()?;
    device.clear_sock()
}
