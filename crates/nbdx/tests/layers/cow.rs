//! Copy-on-write with an overlay in memory: contents, zeroing, block status,
//! capabilities and concurrency.

use std::sync::Arc;

use nbdx::device::{Caps, Device, Extent, ZeroFlags};
use nbdx::layer::CowLayer;
use nbdx::proto::AllocationFlags;

use crate::ram::{pattern, RamDisk};

const BLOCK: u64 = 64 << 10;

pub async fn read_all(dev: &dyn Device) -> Vec<u8> {
    let mut buf = vec![0; dev.size() as usize];
    dev.read(0, &mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn writes_are_visible_through_the_layer_and_the_base_is_unchanged() {
    let base = RamDisk::patterned(1 << 20, 1);
    let before = base.bytes();
    let cow = CowLayer::new(base.clone()).unwrap();
    let mut model = before.clone();
    for (offset, len, byte) in
        [(0usize, 4096usize, 0xa1u8), (BLOCK as usize, BLOCK as usize * 3, 0xb2), (900_000, 1, 7)]
    {
        cow.write(offset as u64, &vec![byte; len], false).await.unwrap();
        model[offset..offset + len].fill(byte);
    }
    assert!(read_all(&cow).await == model, "the layer reads back what was written over the base");
    assert!(base.bytes() == before, "the base changed");
    assert_eq!(base.writes(), 0);
}

#[tokio::test]
async fn partial_block_writes_keep_the_neighbouring_base_bytes() {
    // An odd size: the last block is short.
    let size = 5 * BLOCK as usize + 3000;
    let base = RamDisk::patterned(size, 2);
    let cow = CowLayer::new(base.clone()).unwrap();
    let mut model = base.bytes();
    let writes: &[(usize, usize)] =
        &[(BLOCK as usize - 6, 100), (2 * BLOCK as usize + 512, 512), (3 * BLOCK as usize, 10), (size - 700, 700)];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = pattern(len, 100 + i as u64);
        cow.write(offset as u64, &data, false).await.unwrap();
        model[offset..offset + len].copy_from_slice(&data);
    }
    assert!(read_all(&cow).await == model);
    // A second partial write into a block already in the overlay.
    cow.write(BLOCK + 200, &[9; 50], false).await.unwrap();
    model[BLOCK as usize + 200..BLOCK as usize + 250].fill(9);
    assert!(read_all(&cow).await == model);
    assert_eq!(base.writes(), 0);
}

#[tokio::test]
async fn trim_and_zero_read_as_zeroes_even_where_the_base_has_data() {
    let base = RamDisk::patterned(1 << 20, 3);
    let cow = CowLayer::new(base.clone()).unwrap();
    let mut model = base.bytes();
    let zero = |model: &mut Vec<u8>, offset: u64, len: u64| model[offset as usize..(offset + len) as usize].fill(0);

    cow.trim(BLOCK, 2 * BLOCK, false).await.unwrap(); // whole blocks
    zero(&mut model, BLOCK, 2 * BLOCK);
    cow.write_zeroes(10, 5000, ZeroFlags::default()).await.unwrap(); // inside one block
    zero(&mut model, 10, 5000);
    let flags = ZeroFlags { no_hole: true, fast: true, fua: false };
    cow.write_zeroes(4 * BLOCK - 100, BLOCK + 300, flags).await.unwrap(); // partial, whole, partial
    zero(&mut model, 4 * BLOCK - 100, BLOCK + 300);
    cow.trim(900_000, (1 << 20) - 900_000, false).await.unwrap(); // to the end
    zero(&mut model, 900_000, (1 << 20) - 900_000);
    assert!(read_all(&cow).await == model);

    // Writing into a zeroed block keeps the rest of it zero.
    cow.write(BLOCK + 77, &[3; 33], false).await.unwrap();
    model[BLOCK as usize + 77..BLOCK as usize + 110].fill(3);
    assert!(read_all(&cow).await == model);
    assert_eq!(base.writes(), 0);
}

#[tokio::test]
async fn extents_report_overlay_zeroes_as_holes_overlay_data_as_data_and_the_rest_as_the_base_does() {
    // Base: data in blocks 0-1, zeroes from block 2 on.
    let mut data = vec![0u8; 6 * BLOCK as usize];
    data[..2 * BLOCK as usize].fill(0xee);
    let base = RamDisk::with(data, RamDisk::full_caps());
    let cow = CowLayer::new(base).unwrap();
    cow.write_zeroes(0, BLOCK, ZeroFlags::default()).await.unwrap();
    cow.write(3 * BLOCK, &[1; 100], false).await.unwrap();

    let hole = AllocationFlags::HOLE | AllocationFlags::ZERO;
    let data = AllocationFlags::empty();
    let ext = |length, flags| Extent { length, flags };
    assert_eq!(
        cow.extents(0, 6 * BLOCK).await.unwrap(),
        [ext(BLOCK, hole), ext(BLOCK, data), ext(BLOCK, hole), ext(BLOCK, data), ext(2 * BLOCK, hole)]
    );
    // From the middle of a block, and clipped to the device.
    assert_eq!(cow.extents(BLOCK - 10, 20).await.unwrap(), [ext(10, hole), ext(10, data)]);
    assert_eq!(cow.extents(5 * BLOCK, 1 << 40).await.unwrap(), [ext(BLOCK, hole)]);
}

#[tokio::test]
async fn a_base_without_block_status_is_reported_as_data() {
    let caps = Caps { extents: false, ..RamDisk::full_caps() };
    let cow = CowLayer::new(RamDisk::with(vec![0; 4 * BLOCK as usize], caps)).unwrap();
    cow.trim(2 * BLOCK, BLOCK, false).await.unwrap();
    let hole = AllocationFlags::HOLE | AllocationFlags::ZERO;
    let got = cow.extents(0, 4 * BLOCK).await.unwrap();
    let want = [(2 * BLOCK, AllocationFlags::empty()), (BLOCK, hole), (BLOCK, AllocationFlags::empty())];
    assert_eq!(got, want.map(|(length, flags)| Extent { length, flags }));
}

/// A large device of zeroes without block status.
struct Zeroes(u64);

#[async_trait::async_trait]
impl Device for Zeroes {
    fn size(&self) -> u64 {
        self.0
    }
    fn caps(&self) -> Caps {
        Caps { read_only: true, ..Caps::default() }
    }
    async fn read(&self, _offset: u64, buf: &mut [u8]) -> nbdx::device::DeviceResult<()> {
        buf.fill(0);
        Ok(())
    }
}

#[tokio::test]
async fn block_status_of_a_huge_range_answers_for_a_bounded_part_of_it() {
    let cow = CowLayer::new(Arc::new(Zeroes(64 << 30))).unwrap();
    cow.trim(8 << 30, 1 << 20, false).await.unwrap();
    let got = cow.extents(0, 64 << 30).await.unwrap();
    assert_eq!(got, [Extent { length: 4 << 30, flags: AllocationFlags::empty() }]);
    let got = cow.extents(8 << 30, 1 << 30).await.unwrap();
    let hole = AllocationFlags::HOLE | AllocationFlags::ZERO;
    assert_eq!(got[0], Extent { length: 1 << 20, flags: hole });
}

#[tokio::test]
async fn a_read_only_base_becomes_writable_with_fast_zeroes_and_multi_conn() {
    let caps = Caps { read_only: true, ..Caps::default() };
    let cow = CowLayer::new(RamDisk::with(vec![1; 1 << 20], caps)).unwrap();
    let c = cow.caps();
    assert!(!c.read_only && c.flush && c.trim && c.fast_zero && c.multi_conn && c.extents);
    assert!(c.zero.advertised() && c.fua.advertised());
    assert_eq!(c.block_size.preferred as u64, cow.block_size());
    assert!(c.block_size.validate().is_ok());
    cow.write(0, &[2; 512], true).await.unwrap();
    cow.flush().await.unwrap();
    let mut buf = [0u8; 1024];
    cow.read(0, &mut buf).await.unwrap();
    assert_eq!((buf[0], buf[511], buf[512]), (2, 2, 1));
}

#[tokio::test]
async fn requests_beyond_the_end_fail_with_einval_and_change_nothing() {
    let cow = CowLayer::new(RamDisk::new(1 << 20)).unwrap();
    let err = cow.write((1 << 20) - 10, &[1; 20], false).await.unwrap_err();
    assert_eq!(err.errno(), nbdx::proto::Errno::EINVAL);
    assert!(cow.trim(u64::MAX - 1, 10, false).await.is_err());
    assert!(read_all(&cow).await.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn a_copy_up_waiting_on_the_base_does_not_lose_a_write_to_another_part_of_the_block() {
    let base = RamDisk::patterned(4 * BLOCK as usize, 9);
    let mut model = base.bytes();
    let cow = CowLayer::new(base.clone()).unwrap();
    let gate = base.gate_reads();
    // The first write copies block 0 up from the base; its base read is
    // held at the gate while a second write to the same block arrives.
    let first = cow.write(100, &[1; 100], false);
    let second = async {
        while base.reads() == 0 {
            tokio::task::yield_now().await;
        }
        let release = async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            gate.notify_one();
        };
        tokio::join!(cow.write(1000, &[2; 100], false), release).0
    };
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    model[100..200].fill(1);
    model[1000..1100].fill(2);
    assert!(read_all(&cow).await == model, "one of two writes to the same block was lost");
}

/// Eight tasks own interleaved 512-byte sectors, so every block is shared
/// by all of them; each writes, zeroes and reads its own sectors at random
/// and checks them against its own model. A read-modify-write that lost a
/// neighbour's update would show up in the final comparison.
pub async fn hammer(cow: Arc<CowLayer>, base: &RamDisk) {
    const TASKS: u64 = 8;
    const SECTOR: u64 = 512;
    let size = cow.size();
    let initial = base.bytes();
    let start = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (cow, start) = (cow.clone(), start.clone());
        let mut model = initial.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            start.wait().await;
            for _ in 0..300 {
                let sector = rng.u64(0..size / SECTOR / TASKS) * TASKS + t;
                let (offset, range) = (sector * SECTOR, (sector * SECTOR) as usize..((sector + 1) * SECTOR) as usize);
                match rng.u8(0..4) {
                    0 | 1 => {
                        let data = pattern(SECTOR as usize, rng.u64(..));
                        cow.write(offset, &data, false).await.unwrap();
                        model[range].copy_from_slice(&data);
                    }
                    2 => {
                        cow.write_zeroes(offset, SECTOR, ZeroFlags::default()).await.unwrap();
                        model[range].fill(0);
                    }
                    _ => {
                        let mut buf = vec![0; SECTOR as usize];
                        cow.read(offset, &mut buf).await.unwrap();
                        assert!(buf == model[range], "task {t} read stale data at {offset}");
                    }
                }
            }
            model
        }));
    }
    let mut combined = initial;
    for (t, h) in handles.into_iter().enumerate() {
        let model = h.await.unwrap();
        for s in (t as u64..size / SECTOR).step_by(TASKS as usize) {
            let r = (s * SECTOR) as usize..((s + 1) * SECTOR) as usize;
            combined[r.clone()].copy_from_slice(&model[r]);
        }
    }
    assert!(read_all(&*cow).await == combined, "concurrent changes were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_zeroes_and_reads_to_shared_blocks_match_a_model() {
    let base = RamDisk::patterned(64 * BLOCK as usize, 4);
    let before = base.bytes();
    hammer(Arc::new(CowLayer::new(base.clone()).unwrap()), &base).await;
    assert!(base.bytes() == before);
}
