//! The device on an in-memory object store (object_store's `InMemory`, which honours
//! conditional writes): random operations checked against a byte-array model across
//! flushes and re-opens, cache pressure, and lease fencing. The same device against a real
//! Garage cluster is tested in `tests/s3_garage*.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::*;
use crate::device::{Device, ZeroFlags};

const OS: u64 = 64 << 10;
/// Not a multiple of the object size: the last chunk is short.
const SIZE: u64 = 24 * OS - 1000;

fn config() -> S3Config {
    let mut c = S3Config::new("memory", "disk");
    c.size = Some(SIZE);
    c.object_size = Some(OS);
    c.cache_size = 5 * OS;
    c.concurrency = 4;
    c.lease_settle = Duration::from_millis(1);
    c
}

async fn open(store: &Arc<dyn ObjectStore>, c: &S3Config) -> S3Device {
    S3Device::open_object_store(store.clone(), c.clone()).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn check_all(dev: &S3Device, model: &[u8], what: &str) {
    let mut buf = vec![0xa5; model.len()];
    dev.read(0, &mut buf).await.unwrap();
    let wrong = buf.iter().zip(model).position(|(a, b)| a != b);
    assert_eq!(wrong, None, "{what}: first wrong byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_a_byte_array_model_across_flushes_and_reopens() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let c = config();
    let mut dev = open(&store, &c).await;
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = fastrand::Rng::with_seed(20261125);
    for step in 0..600 {
        let off = rng.u64(0..SIZE);
        let len = rng.u64(1..=(SIZE - off).min(3 * OS));
        let range = off as usize..(off + len) as usize;
        match rng.u8(0..12) {
            0..=4 => {
                let data: Vec<u8> = (0..len).map(|_| rng.u8(1..)).collect();
                dev.write(off, &data, rng.bool()).await.unwrap();
                model[range].copy_from_slice(&data);
            }
            5 => {
                let flags = ZeroFlags { fua: rng.bool(), no_hole: rng.bool(), fast: false };
                dev.write_zeroes(off, len, flags).await.unwrap();
                model[range].fill(0);
            }
            6 => {
                // A trim deletes whole chunks only; partial chunks keep their data.
                dev.trim(off, len, false).await.unwrap();
                for chunk in off.div_ceil(OS)..(off + len) / OS {
                    model[(chunk * OS) as usize..((chunk + 1) * OS) as usize].fill(0);
                }
            }
            7 => dev.flush().await.unwrap(),
            8 => {
                dev.close().await.unwrap();
                dev = open(&store, &c).await;
            }
            _ => {
                let mut buf = vec![0xa5; len as usize];
                dev.read(off, &mut buf).await.unwrap();
                assert!(buf == model[range], "step {step}: read of {len} at {off} differs from the model");
            }
        }
    }
    dev.flush().await.unwrap();
    check_all(&dev, &model, "before close").await;
    dev.close().await.unwrap();
    let mut ro = c.clone();
    ro.read_only = true;
    let reader = open(&store, &ro).await;
    check_all(&reader, &model, "from the store").await;
    // Every chunk with a nonzero byte is reported as data.
    let mut at = 0;
    for extent in reader.extents(0, SIZE).await.unwrap() {
        let bytes = &model[at as usize..(at + extent.length) as usize];
        assert!(extent.flags.is_empty() || bytes.iter().all(|&b| b == 0), "hole over data at {at}");
        at += extent.length;
    }
    assert_eq!(at, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_under_cache_pressure_all_reach_the_store() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let c = config(); // 5 buffers for 24 chunks
    let dev = Arc::new(open(&store, &c).await);
    let mut tasks = Vec::new();
    for i in 0..96u64 {
        let dev = dev.clone();
        // Quarter chunks in a scattered order: every chunk is read-modify-written.
        let off = (i * 37 % 96) * (OS / 4);
        let len = (OS / 4).min(SIZE - off);
        tasks.push(tokio::spawn(async move { dev.write(off, &vec![(i % 251) as u8 + 1; len as usize], false).await }));
    }
    let mut model = vec![0u8; SIZE as usize];
    for (i, t) in tasks.into_iter().enumerate() {
        t.await.unwrap().unwrap();
        let off = (i as u64 * 37 % 96) * (OS / 4);
        let end = (off + OS / 4).min(SIZE);
        model[off as usize..end as usize].fill((i % 251) as u8 + 1);
    }
    dev.flush().await.unwrap();
    dev.close().await.unwrap();
    let mut ro = c.clone();
    ro.read_only = true;
    check_all(&open(&store, &ro).await, &model, "after concurrent writes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_was_taken_over_refuses_writes() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut c = config();
    c.lease_timeout = Duration::from_millis(300);
    let dev = open(&store, &c).await;
    let second = S3Device::open_object_store(store.clone(), c.clone()).await.err().expect("refused");
    assert!(matches!(second, S3Error::Leased(_)), "{second}");
    dev.write(0, &[1; 4096], true).await.unwrap();

    // Someone overwrites the lease (as a new holder would after an expiry).
    let ghost = "nbdx-s3-lease 1\nholder ghost pid 1\nid 00000000000000aa\nexpires 99999999999999\n";
    store.put(&Path::from(format!("disk/{LEASE_NAME}")), PutPayload::from(ghost.as_bytes().to_vec())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Err(e) = dev.write(0, &[2; 4096], true).await {
            assert!(e.message().contains("lease"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "writes still accepted 10 s after the lease was taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_device_releases_its_lease_for_the_next_writer() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let c = config(); // a 30 s lease: the next open must not wait for it to expire
    let dev = open(&store, &c).await;
    dev.write(0, &[7; 512], true).await.unwrap();
    drop(dev);
    let again = open(&store, &c).await;
    let mut buf = [0; 512];
    again.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [7; 512]);
}

#[test]
fn a_device_dropped_after_its_runtime_still_releases_its_lease() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let c = config();
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let first = runtime();
    let dev = first.block_on(open(&store, &c));
    drop(first);
    drop(dev);
    let second = runtime();
    let again = second.block_on(S3Device::open_object_store(store.clone(), c.clone()));
    assert!(again.is_ok(), "{:?}", again.err());
}
