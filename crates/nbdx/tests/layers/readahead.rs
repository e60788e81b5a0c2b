//! Readahead: fewer inner reads for sequential scans, never stale data.

use std::sync::Arc;
use std::time::Duration;

use nbdx::device::{Device, ZeroFlags};
use nbdx::layer::{DelayLayer, ReadaheadLayer};
use tokio::time::Instant;

use crate::ram::{pattern, RamDisk};

const CHUNK: usize = 64 << 10;

/// Reads `total` bytes from 0 in `CHUNK`s and checks them against `expect`.
async fn scan(dev: &dyn Device, total: usize, expect: &[u8]) {
    let mut buf = vec![0; CHUNK];
    for offset in (0..total).step_by(CHUNK) {
        dev.read(offset as u64, &mut buf).await.unwrap();
        assert!(buf[..] == expect[offset..offset + CHUNK], "wrong data at {offset}");
    }
}

#[tokio::test]
async fn a_sequential_scan_reaches_the_inner_device_far_less_often() {
    let base = RamDisk::patterned(32 << 20, 1);
    let expect = base.bytes();
    let ra = ReadaheadLayer::new(base.clone());
    scan(&ra, 16 << 20, &expect).await;
    let reads = base.reads();
    assert!(reads <= 16, "{reads} inner reads for 256 sequential reads");
    assert!(ra.cached_bytes() <= ReadaheadLayer::CACHE_LIMIT);
}

#[tokio::test(start_paused = true)]
async fn with_a_slow_device_underneath_a_sequential_scan_takes_a_fraction_of_the_time() {
    let base = RamDisk::patterned(32 << 20, 2);
    let expect = base.bytes();
    let slow = Arc::new(DelayLayer::new(base, Duration::from_millis(1), Duration::ZERO));

    let start = Instant::now();
    scan(&*slow, 16 << 20, &expect).await;
    let plain = start.elapsed();

    let ra = ReadaheadLayer::new(slow);
    let start = Instant::now();
    scan(&ra, 16 << 20, &expect).await;
    let ahead = start.elapsed();
    assert_eq!(plain, Duration::from_millis(256));
    assert!(ahead * 10 < plain, "readahead: {ahead:?}, without: {plain:?}");
}

#[tokio::test]
async fn writes_trims_and_zeroes_drop_the_cached_data_they_overlap() {
    let base = RamDisk::patterned(1 << 20, 3);
    let mut model = base.bytes();
    let ra = ReadaheadLayer::new(base.clone());
    let mut buf = vec![0; CHUNK];
    ra.read(0, &mut buf).await.unwrap(); // prefetches beyond 64 KiB
    assert_eq!(base.reads(), 1);
    assert!(ra.cached_bytes() > CHUNK);

    ra.write(100_000, &[0xab; 1000], false).await.unwrap();
    model[100_000..101_000].fill(0xab);
    ra.read(CHUNK as u64, &mut buf).await.unwrap();
    assert!(buf[..] == model[CHUNK..2 * CHUNK]);

    for (i, offset) in [2 * CHUNK, 3 * CHUNK].into_iter().enumerate() {
        ra.read(offset as u64, &mut buf).await.unwrap(); // cached now, or prefetched
        if i == 0 {
            ra.trim(offset as u64 + 10, 100, false).await.unwrap();
        } else {
            ra.write_zeroes(offset as u64 + 10, 100, ZeroFlags::default()).await.unwrap();
        }
        model[offset + 10..offset + 110].fill(0);
        ra.read(offset as u64, &mut buf).await.unwrap();
        assert!(buf[..] == model[offset..offset + CHUNK], "stale data after change {i}");
    }
}

#[tokio::test]
async fn a_prefetch_that_raced_a_write_is_not_cached() {
    let base = RamDisk::patterned(1 << 20, 4);
    let ra = ReadaheadLayer::new(base.clone());
    let gate = base.gate_reads();
    let mut buf = vec![0; CHUNK];
    // The prefetch takes old data from the disk, then the write lands,
    // then the prefetch completes.
    let prefetch = ra.read(0, &mut buf);
    let write = async {
        while base.reads() == 0 {
            tokio::task::yield_now().await;
        }
        ra.write(100_000, &[0xcd; 100], false).await.unwrap();
        gate.notify_one();
    };
    let (r, ()) = tokio::join!(prefetch, write);
    r.unwrap();
    let mut after = vec![0; 100];
    ra.read(100_000, &mut after).await.unwrap();
    assert_eq!(after, [0xcd; 100], "stale prefetched data was served");
}

#[tokio::test]
async fn random_reads_and_changes_stay_correct_and_the_cache_stays_bounded() {
    let size = 32 << 20;
    let base = RamDisk::patterned(size, 5);
    let mut model = base.bytes();
    let ra = ReadaheadLayer::new(base);
    let mut rng = fastrand::Rng::with_seed(5);
    let mut next = 0usize;
    for i in 0..3000 {
        let len = rng.usize(1..=64) * 512;
        // Half the reads continue the last one, so windows keep growing.
        let offset = if rng.bool() && next + len <= size { next } else { rng.usize(0..(size - len) / 512) * 512 };
        match rng.u8(0..10) {
            0 => {
                let data = pattern(len, i);
                ra.write(offset as u64, &data, false).await.unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            }
            1 => {
                ra.write_zeroes(offset as u64, len as u64, ZeroFlags::default()).await.unwrap();
                model[offset..offset + len].fill(0);
            }
            _ => {
                let mut buf = vec![0; len];
                ra.read(offset as u64, &mut buf).await.unwrap();
                assert!(buf[..] == model[offset..offset + len], "step {i}: wrong data at {offset}+{len}");
            }
        }
        next = offset + len;
        assert!(ra.cached_bytes() <= ReadaheadLayer::CACHE_LIMIT);
    }
}
