//! Layers stacked on a RAM disk: copy-on-write, readahead, the request log,
//! and the `--layer` stack order.

#[path = "layers/cow.rs"]
mod cow;
#[path = "layers/cow_file.rs"]
mod cow_file;
#[path = "layers/log.rs"]
mod log;
#[path = "layers/readahead.rs"]
mod readahead;

use std::sync::Arc;

use nbdx::device::Device;
use nbdx::layer::{apply_layers, LayerError, LayerSpec};
use nbdx::proto::Errno;
use ram::RamDisk;

fn specs(list: &[&str]) -> Vec<LayerSpec> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn the_first_layer_listed_is_the_one_closest_to_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let log_spec = format!("log={}", log.display());
    let mut buf = [0u8; 512];

    // log first, so errors are injected above it: the log sees no request.
    let dev = apply_layers(RamDisk::new(1 << 20), &specs(&[&log_spec, "error=1:EPERM"])).unwrap();
    assert_eq!(dev.read(0, &mut buf).await.unwrap_err().errno(), Errno::EPERM);
    drop(dev);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Read"), "{text}");

    // error first, so the log sees the request and its injected failure.
    let dev = apply_layers(RamDisk::new(1 << 20), &specs(&["error=1:EPERM", &log_spec])).unwrap();
    assert_eq!(dev.read(0, &mut buf).await.unwrap_err().errno(), Errno::EPERM);
    drop(dev);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("...Read id=1 return=-1 (EPERM)"), "{text}");
}

#[tokio::test]
async fn a_full_stack_from_specs_reads_back_what_was_written() {
    let base = RamDisk::patterned(4 << 20, 11);
    let dev = apply_layers(base.clone(), &specs(&["cow", "readahead", "delay=0:0", "error=0"])).unwrap();
    let data = vec![0x5a; 3000];
    dev.write(70_000, &data, false).await.unwrap();
    let mut buf = vec![0; 3000];
    dev.read(70_000, &mut buf).await.unwrap();
    assert_eq!(buf, data);
    assert_eq!(base.writes(), 0, "cow keeps writes away from the base");
}

#[test]
fn applying_a_spec_that_needs_a_file_reports_the_file() {
    let base: Arc<dyn Device> = RamDisk::new(1 << 20);
    let spec: LayerSpec = "log=/nonexistent-dir/x.log".parse().unwrap();
    match spec.apply(base) {
        Err(e @ LayerError::Io { layer: "log", .. }) => assert!(e.to_string().contains("/nonexistent-dir/x.log")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a log in a missing directory was accepted"),
    }
}

/// A RAM disk to stack layers on, counting what reaches it.
pub mod ram {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use nbdx::device::{Caps, Device, DeviceResult, Extent, Support, ZeroFlags};
    use nbdx::proto::AllocationFlags;
    use tokio::sync::Notify;

    /// Every feature, extents at 4 KiB granularity (all-zero blocks are
    /// holes). Reads yield once after taking their data, so concurrent
    /// requests interleave.
    pub struct RamDisk {
        data: Mutex<Vec<u8>>,
        caps: Caps,
        reads: AtomicUsize,
        writes: AtomicUsize,
        read_gate: Mutex<Option<Arc<Notify>>>,
    }

    impl RamDisk {
        pub fn full_caps() -> Caps {
            Caps {
                flush: true,
                fua: Support::Native,
                trim: true,
                zero: Support::Native,
                fast_zero: true,
                multi_conn: true,
                extents: true,
                ..Caps::default()
            }
        }

        /// Zeroes, every feature.
        pub fn new(size: usize) -> Arc<Self> {
            Self::with(vec![0; size], Self::full_caps())
        }

        /// Seeded random bytes, every feature.
        pub fn patterned(size: usize, seed: u64) -> Arc<Self> {
            Self::with(pattern(size, seed), Self::full_caps())
        }

        pub fn with(data: Vec<u8>, caps: Caps) -> Arc<Self> {
            Arc::new(Self {
                data: Mutex::new(data),
                caps,
                reads: AtomicUsize::new(0),
                writes: AtomicUsize::new(0),
                read_gate: Mutex::new(None),
            })
        }

        /// A copy of the contents.
        pub fn bytes(&self) -> Vec<u8> {
            self.data.lock().unwrap().clone()
        }

        /// Reads that reached the disk.
        pub fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }

        /// Writes, trims and zeroes that reached the disk.
        pub fn writes(&self) -> usize {
            self.writes.load(Ordering::SeqCst)
        }

        /// Makes the next read wait, after taking its data, until the returned
        /// notify fires: its reply then carries data older than later writes.
        pub fn gate_reads(&self) -> Arc<Notify> {
            let gate = Arc::new(Notify::new());
            *self.read_gate.lock().unwrap() = Some(gate.clone());
            gate
        }

        fn change(&self, offset: u64, len: usize, f: impl FnOnce(&mut [u8])) {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut d = self.data.lock().unwrap();
            f(&mut d[offset as usize..offset as usize + len]);
        }
    }

    /// Seeded random bytes.
    pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..size).map(|_| rng.u8(..)).collect()
    }

    #[async_trait]
    impl Device for RamDisk {
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }

        fn caps(&self) -> Caps {
            self.caps
        }

        async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            buf.copy_from_slice(&self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()]);
            let gate = self.read_gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            tokio::task::yield_now().await;
            Ok(())
        }

        async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
            self.change(offset, data.len(), |d| d.copy_from_slice(data));
            Ok(())
        }

        async fn flush(&self) -> DeviceResult<()> {
            Ok(())
        }

        async fn trim(&self, offset: u64, length: u64, _fua: bool) -> DeviceResult<()> {
            self.change(offset, length as usize, |d| d.fill(0));
            Ok(())
        }

        async fn write_zeroes(&self, offset: u64, length: u64, _flags: ZeroFlags) -> DeviceResult<()> {
            self.change(offset, length as usize, |d| d.fill(0));
            Ok(())
        }

        async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
            let d = self.data.lock().unwrap();
            let end = (offset + length).min(d.len() as u64);
            let mut out: Vec<Extent> = Vec::new();
            let mut at = offset;
            while at < end {
                let e = ((at / 4096 + 1) * 4096).min(end);
                let zero = d[at as usize..e as usize].iter().all(|b| *b == 0);
                let flags = if zero { AllocationFlags::HOLE | AllocationFlags::ZERO } else { AllocationFlags::empty() };
                match out.last_mut() {
                    Some(last) if last.flags == flags => last.length += e - at,
                    _ => out.push(Extent { length: e - at, flags }),
                }
                at = e;
            }
            Ok(out)
        }
    }
}
