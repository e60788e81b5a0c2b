//! Device names and what the driver shows in sysfs:
//!
//! | file | content |
//! |---|---|
//! | `/sys/block/nbdN/size` | capacity in 512-byte sectors (0 until the device starts) |
//! | `/sys/block/nbdN/pid` | pid of the task that started it; exists only while started |
//! | `/sys/block/nbdN/backend` | `NBD_ATTR_BACKEND_IDENTIFIER`; exists only after a netlink CONNECT |
//!
//! [`wait_until_ready`] closes the gap between "the kernel accepted the
//! sockets" and "the block device is usable": the capacity is set and the
//! node `/dev/nbdN` opens (devtmpfs creates nodes itself; with udev the node
//! may appear a little later). It polls with a growing interval and a bound.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `/dev/nbdN`.
pub fn device_path(index: u32) -> PathBuf {
    Paths::system().device(index)
}

/// The index of `/dev/nbdN` or `nbdN` (partitions such as `nbd3p1` are not devices).
pub fn parse_device(name: &str) -> Result<u32> {
    let invalid = || Error::InvalidDeviceName(name.to_owned());
    let digits = name.strip_prefix("/dev/").unwrap_or(name).strip_prefix("nbd").ok_or_else(invalid)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(invalid());
    }
    digits.parse().map_err(|_| invalid())
}

/// Indices of all nbd devices, in ascending order.
pub fn list_devices() -> Result<Vec<u32>> {
    Paths::system().list()
}

/// Capacity in bytes as the block layer sees it (`size` × 512).
pub fn size_bytes(index: u32) -> Result<u64> {
    Paths::system().size_bytes(index)
}

/// The backend identifier given at CONNECT, if any.
pub fn backend(index: u32) -> Result<Option<String>> {
    Paths::system().backend(index)
}

/// Pid of the task that started the device, while it is started.
pub fn pid(index: u32) -> Result<Option<u32>> {
    Paths::system().pid(index)
}

/// Whether the block layer treats the device as read-only (`ro`).
pub fn read_only(index: u32) -> Result<bool> {
    Paths::system().read_only(index)
}

/// Caps the size of the requests the block layer sends (`queue/max_sectors_kb`)
/// at `maximum` bytes, when that is below the current cap.
pub fn limit_request_size(index: u32, maximum: u64) -> Result<()> {
    Paths::system().limit_request_size(index, maximum)
}

/// Waits until the device is no longer started (`pid` gone), or fails with
/// [`Error::Timeout`].
pub fn wait_until_stopped(index: u32, timeout: Duration) -> Result<()> {
    Paths::system().wait_until_stopped(index, timeout)
}

/// Waits until `/sys/block/nbdN/size` shows `size_bytes` (in whole sectors)
/// and `/dev/nbdN` can be opened, or fails with [`Error::Timeout`].
pub fn wait_until_ready(index: u32, size_bytes: u64, timeout: Duration) -> Result<()> {
    Paths::system().wait_until_ready(index, size_bytes, timeout)
}

/// Where sysfs and device nodes live; tests point it at a directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    sys_block: PathBuf,
    dev: PathBuf,
}

impl Paths {
    pub(crate) fn system() -> Self {
        Self { sys_block: "/sys/block".into(), dev: "/dev".into() }
    }

    pub(crate) fn device(&self, index: u32) -> PathBuf {
        self.dev.join(format!("nbd{index}"))
    }

    fn attr(&self, index: u32, name: &str) -> PathBuf {
        self.sys_block.join(format!("nbd{index}")).join(name)
    }

    /// Reads a sysfs attribute; `None` when the file does not exist.
    fn read_attr(&self, index: u32, name: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(self.attr(index, name)) {
            Ok(text) => Ok(Some(text.trim_end_matches('\n').to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn exists(&self, index: u32) -> bool {
        self.sys_block.join(format!("nbd{index}")).is_dir()
    }

    pub(crate) fn list(&self) -> Result<Vec<u32>> {
        let mut indices = Vec::new();
        for entry in std::fs::read_dir(&self.sys_block)? {
            if let Some(index) = entry?.file_name().to_str().and_then(|name| parse_device(name).ok()) {
                indices.push(index);
            }
        }
        indices.sort_unstable();
        Ok(indices)
    }

    pub(crate) fn size_bytes(&self, index: u32) -> Result<u64> {
        let no_device = || Error::NoSuchDevice { operation: "read /sys/block/nbdN/size".into(), index };
        let text = self.read_attr(index, "size")?.ok_or_else(no_device)?;
        let sectors: u64 = text.trim().parse().map_err(|_| {
            Error::Io(io::Error::new(io::ErrorKind::InvalidData, format!("sysfs size of nbd{index}: {text:?}")))
        })?;
        Ok(sectors.saturating_mul(512))
    }

    pub(crate) fn backend(&self, index: u32) -> Result<Option<String>> {
        // The kernel prints an empty line when CONNECT carried no identifier.
        Ok(self.read_attr(index, "backend")?.filter(|backend| !backend.is_empty()))
    }

    pub(crate) fn pid(&self, index: u32) -> Result<Option<u32>> {
        let Some(text) = self.read_attr(index, "pid")? else { return Ok(None) };
        // pid 0 is what the kernel shows between teardown steps: not started.
        Ok(text.trim().parse().ok().filter(|&pid| pid != 0))
    }

    pub(crate) fn read_only(&self, index: u32) -> Result<bool> {
        Ok(self.read_attr(index, "ro")?.is_some_and(|ro| ro.trim() == "1"))
    }

    pub(crate) fn limit_request_size(&self, index: u32, maximum: u64) -> Result<()> {
        let attr = self.attr(index, "queue/max_sectors_kb");
        let current: u64 = std::fs::read_to_string(&attr)?.trim().parse().unwrap_or(u64::MAX);
        let wanted = maximum / 1024;
        if wanted < current {
            std::fs::write(&attr, format!("{}\n", wanted.max(1)))?;
        }
        Ok(())
    }

    pub(crate) fn wait_until_stopped(&self, index: u32, timeout: Duration) -> Result<()> {
        poll(timeout, || match self.pid(index)? {
            None => Ok(None),
            Some(pid) => Ok(Some(format!("/dev/nbd{index} to stop (still started by pid {pid})"))),
        })
    }

    pub(crate) fn wait_until_ready(&self, index: u32, size_bytes: u64, timeout: Duration) -> Result<()> {
        let want = size_bytes / 512 * 512;
        poll(timeout, || {
            let missing = self.probe(index, want)?;
            Ok(missing.map(|m| format!("/dev/nbd{index} to become usable with {size_bytes} bytes ({m})")))
        })
    }

    /// `None` when ready, else what is still missing; hard errors end the wait.
    fn probe(&self, index: u32, want: u64) -> Result<Option<String>> {
        if !self.exists(index) {
            return Ok(Some("no /sys/block entry yet".into()));
        }
        let size = self.size_bytes(index)?;
        if size != want {
            return Ok(Some(format!("size is {size} bytes")));
        }
        match open_read_only(&self.device(index)) {
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound) || e.raw_os_error() == Some(libc::ENXIO) => {
                Ok(Some(format!("{} does not open yet: {e}", self.device(index).display())))
            }
            Err(e) => Err(Error::from_io("open", index, e)),
        }
    }
}

/// Polls `probe` with a growing interval (1 ms to 50 ms) until it returns
/// `None`, or fails with [`Error::Timeout`] naming the last thing awaited.
fn poll(timeout: Duration, mut probe: impl FnMut() -> Result<Option<String>>) -> Result<()> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        let Some(what) = probe()? else { return Ok(()) };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(Error::Timeout { what, after: timeout });
        }
        std::thread::sleep(interval.min(timeout - elapsed));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

fn open_read_only(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(size_sectors: Option<u64>, node: bool) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { sys_block: dir.path().join("sys"), dev: dir.path().join("dev") };
        std::fs::create_dir_all(paths.sys_block.join("nbd2")).unwrap();
        std::fs::create_dir_all(&paths.dev).unwrap();
        if let Some(sectors) = size_sectors {
            std::fs::write(paths.attr(2, "size"), format!("{sectors}\n")).unwrap();
        }
        if node {
            std::fs::write(paths.device(2), b"").unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn device_names_parse_to_their_index() {
        assert_eq!(parse_device("/dev/nbd3").unwrap(), 3);
        assert_eq!(parse_device("nbd15").unwrap(), 15);
        for bad in ["/dev/nbd", "/dev/nbd3p1", "/dev/sda", "nbd-1", "nbd03", "/dev/nbd99999999999"] {
            assert!(matches!(parse_device(bad), Err(Error::InvalidDeviceName(_))), "{bad}");
        }
    }

    #[test]
    fn device_path_is_under_dev() {
        assert_eq!(device_path(7), Path::new("/dev/nbd7"));
    }

    #[test]
    fn ready_when_size_matches_and_the_node_opens() {
        let (_dir, paths) = fake(Some(8), true);
        paths.wait_until_ready(2, 4096, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_size_that_never_appears_times_out_with_the_last_state() {
        let (_dir, paths) = fake(Some(0), true);
        let err = paths.wait_until_ready(2, 4096, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("size is 0 bytes"), "{err}");
    }

    #[test]
    fn a_device_that_keeps_its_pid_never_counts_as_stopped() {
        let (_dir, paths) = fake(Some(8), true);
        std::fs::write(paths.attr(2, "pid"), "77\n").unwrap();
        let err = paths.wait_until_stopped(2, Duration::from_millis(20)).unwrap_err();
        assert!(err.to_string().contains("still started by pid 77"), "{err}");
        std::fs::remove_file(paths.attr(2, "pid")).unwrap();
        paths.wait_until_stopped(2, Duration::from_millis(20)).unwrap();
    }

    #[test]
    fn the_request_size_is_only_ever_lowered() {
        let (_dir, paths) = fake(Some(8), true);
        std::fs::create_dir_all(paths.attr(2, "queue")).unwrap();
        let attr = paths.attr(2, "queue/max_sectors_kb");
        std::fs::write(&attr, "1280\n").unwrap();
        paths.limit_request_size(2, 32 << 20).unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1280\n");
        paths.limit_request_size(2, 64 << 10).unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "64\n");
        assert!(!paths.read_only(2).unwrap());
        std::fs::write(paths.attr(2, "ro"), "1\n").unwrap();
        assert!(paths.read_only(2).unwrap());
    }

    #[test]
    fn a_missing_node_is_waited_for_until_the_timeout() {
        let (_dir, paths) = fake(Some(8), false);
        let err = paths.wait_until_ready(2, 4096, Duration::from_millis(20)).unwrap_err();
        assert!(err.to_string().contains("does not open yet"), "{err}");
    }

    #[test]
    fn empty_backend_and_missing_pid_read_as_none() {
        let (_dir, paths) = fake(Some(8), true);
        assert_eq!(paths.pid(2).unwrap(), None);
        std::fs::write(paths.attr(2, "backend"), "\n").unwrap();
        assert_eq!(paths.backend(2).unwrap(), None);
        std::fs::write(paths.attr(2, "backend"), "nbd://host/export\n").unwrap();
        std::fs::write(paths.attr(2, "pid"), "1234\n").unwrap();
        assert_eq!(paths.backend(2).unwrap().as_deref(), Some("nbd://host/export"));
        assert_eq!(paths.pid(2).unwrap(), Some(1234));
    }

    #[test]
    fn listing_keeps_only_whole_devices_in_order() {
        let (_dir, paths) = fake(Some(8), true);
        for name in ["nbd10", "nbd1", "loop0", "nbd1p1"] {
            std::fs::create_dir_all(paths.sys_block.join(name)).unwrap();
        }
        assert_eq!(paths.list().unwrap(), vec![1, 2, 10]);
        assert_eq!(paths.size_bytes(2).unwrap(), 4096);
        assert!(matches!(paths.size_bytes(10), Err(Error::NoSuchDevice { index: 10, .. })));
    }
}
