//! Data path of the S3 device against a real store (a 3-node Garage cluster from
//! `tests/s3/garage-cluster.sh`; without `NBDX_S3_ENDPOINT` every test prints SKIP).

mod s3_support;

use std::sync::Arc;

use nbdx::device::s3::S3Device;
use nbdx::device::{Device, ZeroFlags};
use nbdx::proto::AllocationFlags;
use nbdx::source::Source;
use s3_support::{config, fresh_reader, pattern, stored_chunks, unique_prefix, OBJECT_SIZE, SIZE};

const OS: u64 = OBJECT_SIZE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_and_flushed_reads_back_from_the_store_through_a_fresh_device() {
    let prefix = unique_prefix("readback");
    let Some(cfg) = config(&prefix) else { return };
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    assert_eq!(dev.size(), SIZE);
    // Unaligned writes, one spanning three chunks, one at the very end of the disk.
    let writes = [(100, 5000), (OS - 7, 2 * OS + 14), (5 * OS + 4096, 4096), (SIZE - 3000, 3000)];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        dev.write(offset, &pattern(i as u8, offset, len as usize), false).await.unwrap();
    }
    dev.flush().await.unwrap();
    dev.close().await.unwrap();

    let reader = fresh_reader(&cfg).await;
    assert_eq!(reader.manifest().size, SIZE);
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let mut buf = vec![0; len as usize];
        reader.read(offset, &mut buf).await.unwrap();
        assert!(buf == pattern(i as u8, offset, len as usize), "write {i} at {offset} did not read back");
    }
    let mut gap = vec![1; 4096];
    reader.read(3 * OS + 100, &mut gap).await.unwrap();
    assert!(gap.iter().all(|&b| b == 0), "an unwritten range must read as zeros");
    // A large sequential read (whole chunks, read-ahead) agrees with small ranged reads.
    let mut big = vec![0; (4 * OS) as usize];
    reader.read(0, &mut big).await.unwrap();
    assert!(big[100..5100] == pattern(0, 100, 5000)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_source_opens_through_source_both_async_and_blocking() {
    let prefix = unique_prefix("source");
    let Some(cfg) = config(&prefix) else { return };
    let source = Source::parse(&cfg.to_string()).unwrap();
    let dev = source.open_async(false).await.unwrap();
    assert_eq!((dev.size(), dev.caps().read_only), (SIZE, false));
    dev.write(OS + 1, &[5; 100], true).await.unwrap();
    // The blocking open works on this runtime too; read-only takes no lease.
    let reader = tokio::task::spawn_blocking(move || source.open(true)).await.unwrap();
    let reader = reader.unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0; 100];
    reader.read(OS + 1, &mut buf).await.unwrap();
    assert_eq!(buf, [5; 100]);
    assert!(reader.caps().read_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_chunks_have_no_object_and_are_reported_as_holes() {
    let prefix = unique_prefix("sparse");
    let Some(cfg) = config(&prefix) else { return };
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    dev.write(2 * OS + 10, &[7; 100], false).await.unwrap();
    dev.write(5 * OS, &vec![8; OS as usize], false).await.unwrap();
    dev.flush().await.unwrap();
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, vec![2, 5]);

    let extents = dev.extents(0, 7 * OS).await.unwrap();
    let hole = AllocationFlags::HOLE | AllocationFlags::ZERO;
    let got: Vec<(u64, AllocationFlags)> = extents.iter().map(|e| (e.length, e.flags)).collect();
    let data = AllocationFlags::empty();
    assert_eq!(got, vec![(2 * OS, hole), (OS, data), (2 * OS, hole), (OS, data), (OS, hole)]);
    dev.close().await.unwrap();
    // A fresh device learns the same from one LIST.
    let reader = fresh_reader(&cfg).await;
    assert_eq!(reader.extents(0, 7 * OS).await.unwrap(), extents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_or_zeroing_whole_chunks_deletes_their_objects() {
    let prefix = unique_prefix("trim");
    let Some(cfg) = config(&prefix) else { return };
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    dev.write(0, &pattern(1, 0, (6 * OS) as usize), false).await.unwrap();
    dev.flush().await.unwrap();
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, vec![0, 1, 2, 3, 4, 5]);

    // Trim chunks 1 and 2 whole and part of 3: 1 and 2 go, 3 stays as it was.
    dev.trim(OS, 2 * OS + 100, false).await.unwrap();
    // Zero chunk 4 whole (a hole), and part of chunk 5 (written as zeros, kept).
    let flags = ZeroFlags::default();
    dev.write_zeroes(4 * OS, OS + 512, flags).await.unwrap();
    dev.flush().await.unwrap();
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, vec![0, 3, 5]);
    dev.close().await.unwrap();

    let reader = fresh_reader(&cfg).await;
    let mut buf = vec![1; (6 * OS) as usize];
    reader.read(0, &mut buf).await.unwrap();
    let expect = pattern(1, 0, (6 * OS) as usize);
    let os = OS as usize;
    assert!(buf[..os] == expect[..os]);
    assert!(buf[os..3 * os].iter().all(|&b| b == 0));
    assert!(buf[3 * os..4 * os] == expect[3 * os..4 * os]);
    assert!(buf[4 * os..5 * os + 512].iter().all(|&b| b == 0));
    assert!(buf[5 * os + 512..] == expect[5 * os + 512..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_writers_to_one_stored_chunk_all_land_by_read_modify_write() {
    let prefix = unique_prefix("rmw");
    let Some(cfg) = config(&prefix) else { return };
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    let base = pattern(3, OS, OS as usize);
    dev.write(OS, &base, false).await.unwrap();
    dev.close().await.unwrap();

    // A new instance has nothing cached: every partial write needs the stored chunk.
    let dev = Arc::new(S3Device::open(cfg.clone()).await.unwrap());
    let mut model = base.clone();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let offset = OS + i * 4000 + 17;
        let data = vec![i as u8 + 100; 700];
        let at = (offset - OS) as usize;
        model[at..at + 700].copy_from_slice(&data);
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move { dev.write(offset, &data, false).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    dev.flush().await.unwrap();
    dev.close().await.unwrap();

    let mut buf = vec![0; OS as usize];
    fresh_reader(&cfg).await.read(OS, &mut buf).await.unwrap();
    let wrong = buf.iter().zip(&model).position(|(a, b)| a != b);
    assert_eq!(wrong, None, "the stored chunk differs from the model at this byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fua_write_is_in_the_store_when_it_returns() {
    let prefix = unique_prefix("fua");
    let Some(cfg) = config(&prefix) else { return };
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    let data = pattern(9, 7 * OS + 300, 1000);
    dev.write(7 * OS + 300, &data, true).await.unwrap();
    // No flush: a reader (read-only, while the writer still holds the lease) sees it.
    let mut buf = vec![0; 1000];
    fresh_reader(&cfg).await.read(7 * OS + 300, &mut buf).await.unwrap();
    assert!(buf == data);
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, vec![7]);
    dev.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_cache_wait_for_write_back_and_all_reach_the_store() {
    let prefix = unique_prefix("pressure");
    let Some(mut cfg) = config(&prefix) else { return };
    cfg.cache_size = 2 * OS; // two buffers for a twelve-chunk write
    cfg.concurrency = 4;
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    let data = pattern(5, 0, (12 * OS) as usize);
    for (i, piece) in data.chunks(64 << 10).enumerate() {
        dev.write(i as u64 * (64 << 10), piece, false).await.unwrap();
    }
    dev.flush().await.unwrap();
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, (0..12).collect::<Vec<_>>());
    dev.close().await.unwrap();
    let mut buf = vec![0; data.len()];
    fresh_reader(&cfg).await.read(0, &mut buf).await.unwrap();
    assert!(buf == data);
}
