//! A RAM disk to stack layers on, counting what reaches it.

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
