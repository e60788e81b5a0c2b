use std::path::Path;
use std::sync::atomic::AtomicUsize;

use tempfile::NamedTempFile;

use super::*;
use crate::device::conformance::{device_conformance_tests, pattern, Profile};

const MIB: u64 = 1 << 20;

/// Stands in for a filesystem or device without fallocate, discard,
/// zero-out or `RWF_DSYNC`, counting how often it was asked.
#[derive(Debug, Default)]
struct Unsupported {
    calls: AtomicUsize,
}

impl Unsupported {
    fn refuse(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Syscalls for Unsupported {
    fn fallocate(&self, _: &File, _: libc::c_int, _: u64, _: u64) -> io::Result<()> {
        self.refuse()
    }
    fn block_range(&self, _: &File, _: u32, _: u64, _: u64) -> io::Result<()> {
        self.refuse()
    }
    fn pwrite_dsync(&self, _: &File, _: &[u8], _: u64) -> io::Result<()> {
        self.refuse()
    }
}

/// Fails every fallocate with one OS error.
#[derive(Debug)]
struct Failing(i32);

impl Syscalls for Failing {
    fn fallocate(&self, _: &File, _: libc::c_int, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(self.0))
    }
}

/// A sparse, already unlinked file of `size` bytes.
fn sparse_device(size: u64, sys: Arc<dyn Syscalls>) -> FileDevice {
    let file = tempfile::tempfile().expect("temporary file");
    file.set_len(size).expect("set_len");
    FileDevice::with_syscalls(file, false, sys).expect("file device")
}

fn sparse_file(size: u64) -> NamedTempFile {
    let tmp = NamedTempFile::new().expect("temporary file");
    tmp.as_file().set_len(size).expect("set_len");
    tmp
}

fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").blocks()
}

async fn read(dev: &FileDevice, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0xA5; len as usize];
    dev.read(offset, &mut buf).await.expect("read");
    buf
}

mod real {
    use super::*;
    device_conformance_tests!(
        |size| Arc::new(sparse_device(size, Arc::new(Os))),
        Profile { stores: true, punches_holes: true, fast_zero: true }
    );
}

mod without_fallocate {
    use super::*;
    device_conformance_tests!(
        |size| Arc::new(sparse_device(size, Arc::new(Unsupported::default()))),
        Profile { stores: true, punches_holes: false, fast_zero: false }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punching_a_hole_really_frees_the_files_blocks() {
    let tmp = sparse_file(16 * MIB);
    let dev = FileDevice::open(tmp.path(), false).unwrap();
    dev.write(0, &pattern(1, 8 * MIB as usize), false).await.unwrap();
    dev.flush().await.unwrap();
    let before = blocks(tmp.path());
    assert!(before >= 8 * MIB / 512, "data not allocated: {before} blocks");
    dev.trim(0, 8 * MIB, true).await.unwrap();
    assert!(blocks(tmp.path()) + 8 * MIB / 512 <= before, "trim freed nothing");
    assert_eq!(read(&dev, MIB, 4096).await, vec![0; 4096]);
}

#[tokio::test]
async fn a_sparse_file_stays_sparse_when_read_zeroed_and_trimmed() {
    let tmp = sparse_file(64 * MIB);
    let dev = FileDevice::open(tmp.path(), false).unwrap();
    assert_eq!(read(&dev, 0, 64 * MIB).await, vec![0; 64 * MIB as usize]);
    dev.write_zeroes(0, 64 * MIB, ZeroFlags::default()).await.unwrap();
    dev.trim(MIB, MIB, false).await.unwrap();
    assert_eq!(blocks(tmp.path()), 0);
    dev.write(3 * MIB, &pattern(2, MIB as usize), false).await.unwrap();
    dev.write_zeroes(3 * MIB, MIB, ZeroFlags::default()).await.unwrap();
    assert_eq!(blocks(tmp.path()), 0, "zeroing without NO_HOLE punched the data out");
}

#[tokio::test]
async fn no_hole_zeroing_provisions_the_range() {
    let tmp = sparse_file(8 * MIB);
    let dev = FileDevice::open(tmp.path(), false).unwrap();
    dev.write_zeroes(MIB, MIB, ZeroFlags { no_hole: true, ..ZeroFlags::default() }).await.unwrap();
    assert!(blocks(tmp.path()) >= MIB / 512, "NO_HOLE left the range unallocated");
    assert_eq!(read(&dev, MIB, MIB).await, vec![0; MIB as usize]);
}

#[tokio::test]
async fn extents_follow_seek_data_and_seek_hole() {
    let tmp = sparse_file(4 * MIB);
    tmp.as_file().write_all_at(&[1; 4096], 0).unwrap();
    tmp.as_file().write_all_at(&[2; 8192], MIB).unwrap();
    let dev = FileDevice::open(tmp.path(), true).unwrap();
    let (hole, data) = (AllocationFlags::HOLE | AllocationFlags::ZERO, AllocationFlags::empty());
    let ext = |length, flags| Extent { length, flags };
    let want = vec![ext(4096, data), ext(MIB - 4096, hole), ext(8192, data), ext(3 * MIB - 8192, hole)];
    assert_eq!(dev.extents(0, 4 * MIB).await.unwrap(), want);
    assert_eq!(dev.extents(10, 100).await.unwrap(), vec![ext(100, data)], "clipped to the request");
    assert_eq!(dev.extents(MIB - 5, 10).await.unwrap(), vec![ext(5, hole), ext(5, data)]);
}

#[tokio::test]
async fn a_read_only_file_refuses_writes_with_eperm_and_stays_unchanged() {
    let tmp = sparse_file(MIB);
    tmp.as_file().write_all_at(&[7; 512], 0).unwrap();
    let dev = FileDevice::open(tmp.path(), true).unwrap();
    let caps = dev.caps();
    assert!(caps.read_only && !caps.trim && caps.zero == Support::None && caps.fua == Support::None);
    assert_eq!(dev.write(0, &[1], false).await.unwrap_err().errno(), Errno::EPERM);
    assert_eq!(dev.trim(0, 512, false).await.unwrap_err().errno(), Errno::EPERM);
    assert_eq!(dev.write_zeroes(0, 512, ZeroFlags::default()).await.unwrap_err().errno(), Errno::EPERM);
    assert_eq!(read(&dev, 0, 512).await, vec![7; 512]);
}

#[tokio::test]
async fn zeroing_without_fallocate_writes_zeroes_and_stops_asking_the_kernel() {
    let sys = Arc::new(Unsupported::default());
    let tmp = sparse_file(4 * MIB);
    let dev =
        FileDevice::with_syscalls(File::options().write(true).read(true).open(tmp.path()).unwrap(), false, sys.clone())
            .unwrap();
    dev.write(0, &pattern(3, 2 * MIB as usize), false).await.unwrap();
    dev.write_zeroes(10, MIB, ZeroFlags::default()).await.unwrap();
    let asked = sys.calls();
    assert!(asked > 0);
    dev.write_zeroes(MIB, MIB, ZeroFlags { no_hole: true, ..ZeroFlags::default() }).await.unwrap();
    dev.trim(0, MIB, false).await.unwrap();
    assert_eq!(sys.calls(), asked, "an unsupported method was tried again");
    assert_eq!(read(&dev, 10, 2 * MIB - 10).await, vec![0; 2 * MIB as usize - 10]);
    assert!(blocks(tmp.path()) >= 2 * MIB / 512, "zeroes were not written");
}

#[tokio::test]
async fn without_fallocate_a_fast_zero_fails_with_enotsup_and_trim_keeps_the_data() {
    let dev = sparse_device(MIB, Arc::new(Unsupported::default()));
    dev.write(0, &[9; 4096], false).await.unwrap();
    let fast = ZeroFlags { fast: true, ..ZeroFlags::default() };
    assert_eq!(dev.write_zeroes(0, 4096, fast).await.unwrap_err().errno(), Errno::ENOTSUP);
    assert_eq!(dev.trim(0, 4096, true).await, Ok(()));
    assert_eq!(read(&dev, 0, 4096).await, vec![9; 4096]);
    assert!(dev.caps().trim && dev.caps().fast_zero, "trim is a hint; fast zero may fail fast");
}

#[tokio::test]
async fn fua_writes_fall_back_to_write_and_fdatasync() {
    let sys = Arc::new(Unsupported::default());
    let dev = sparse_device(MIB, sys.clone());
    dev.write(5, &[1, 2, 3], true).await.unwrap();
    dev.write(4096, &[4], true).await.unwrap();
    assert_eq!(sys.calls(), 1, "RWF_DSYNC asked once, then remembered");
    assert_eq!(read(&dev, 4, 5).await, vec![0, 1, 2, 3, 0]);
}

#[tokio::test]
async fn os_errors_reach_the_client_as_nbd_errnos() {
    let dev = sparse_device(MIB, Arc::new(Failing(libc::EDQUOT)));
    let e = dev.write_zeroes(0, 4096, ZeroFlags::default()).await.unwrap_err();
    assert_eq!(e.errno(), Errno::ENOSPC);
    assert!(e.message().starts_with("write zeroes: "), "{e}");
    let dev = sparse_device(MIB, Arc::new(Failing(libc::ENOENT)));
    assert_eq!(dev.trim(0, 4096, false).await.unwrap_err().errno(), Errno::EIO);
}

#[test]
fn only_regular_files_and_block_devices_can_be_opened() {
    let e = FileDevice::open("/dev/null", true).unwrap_err();
    assert_eq!(e.to_string(), "not a regular file or block device");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(FileDevice::open(dir.path(), true).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(FileDevice::open(dir.path().join("nope"), true).unwrap_err().kind(), io::ErrorKind::NotFound);
}

#[test]
fn a_descriptor_open_for_reading_cannot_be_served_writable() {
    let tmp = sparse_file(MIB);
    assert!(FileDevice::from_file(File::open(tmp.path()).unwrap(), false).is_err());
    assert!(FileDevice::from_file(File::open(tmp.path()).unwrap(), true).is_ok());
}

#[test]
fn a_file_has_its_length_as_size_and_is_not_rotational() {
    let tmp = sparse_file(12_345);
    let dev = FileDevice::open(tmp.path(), false).unwrap();
    assert_eq!(dev.size(), 12_345);
    assert!(!dev.is_block_device());
    let caps = dev.caps();
    assert!(caps.extents && caps.flush && caps.multi_conn && !caps.rotational);
    assert_eq!((caps.fua, caps.zero, caps.cache), (Support::Native, Support::Native, Support::Native));
}

/// Needs a scratch block device whose contents it destroys, e.g.
/// `NBDX_TEST_BLOCK_DEVICE=$(losetup -f --show img) cargo test -- --ignored`.
#[tokio::test]
#[ignore = "needs NBDX_TEST_BLOCK_DEVICE, a scratch block device"]
async fn a_block_device_zeroes_trims_and_writes_at_unaligned_offsets() {
    let path = std::env::var("NBDX_TEST_BLOCK_DEVICE").expect("NBDX_TEST_BLOCK_DEVICE");
    let dev = FileDevice::open(&path, false).unwrap();
    assert!(dev.is_block_device() && dev.size() >= 4 * MIB && !dev.caps().extents);
    let name = Path::new(&path).file_name().unwrap().to_str().unwrap().to_owned();
    let rotational = std::fs::read_to_string(format!("/sys/block/{name}/queue/rotational")).unwrap();
    assert_eq!(dev.caps().rotational, rotational.trim() == "1");
    dev.write(0, &pattern(4, 4 * MIB as usize), true).await.unwrap();
    for flags in [ZeroFlags::default(), ZeroFlags { no_hole: true, ..ZeroFlags::default() }] {
        dev.write_zeroes(100, MIB, flags).await.unwrap();
        assert_eq!(read(&dev, 100, MIB).await, vec![0; MIB as usize]);
        dev.write(0, &pattern(4, 2 * MIB as usize), false).await.unwrap();
    }
    match dev.write_zeroes(700, MIB, ZeroFlags { fast: true, ..ZeroFlags::default() }).await {
        Ok(()) => assert_eq!(read(&dev, 700, MIB).await, vec![0; MIB as usize]),
        Err(e) => assert_eq!((e.errno(), read(&dev, 0, 2 * MIB).await), (Errno::ENOTSUP, pattern(4, 2 * MIB as usize))),
    }
    dev.trim(3 * MIB + 1, MIB - 1, true).await.unwrap();
    assert_eq!(read(&dev, 2 * MIB, 10).await, pattern(4, 4 * MIB as usize)[2 * MIB as usize..][..10]);
    dev.flush().await.unwrap();
}
