//! Shared helpers of the S3 tests: the cluster from the environment that
//! `tests/s3/garage-cluster.sh env` prints, unique prefixes, listing objects.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use nbdx::device::s3::{S3Config, S3Device};
use object_store::path::Path;
use object_store::ObjectStore;

/// Small chunks keep the tests fast; the default (4 MiB) is exercised by the benchmark.
pub const OBJECT_SIZE: u64 = 256 << 10;
/// Disk size of the test disks.
pub const SIZE: u64 = 16 << 20;

/// The S3 endpoint to test against, or `None` after printing why the test is skipped.
pub fn cluster() -> Option<(String, String, String)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("NBDX_S3_ENDPOINT"), var("NBDX_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => Some((endpoint, bucket, var("NBDX_S3_REGION").unwrap_or("garage".into()))),
        _ => {
            println!("SKIP: no S3 endpoint (run tests/s3/garage-cluster.sh)");
            None
        }
    }
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("nbdx-tests/{name}-{nanos:x}")
}

/// A configuration for a new test disk under `prefix`.
pub fn config(prefix: &str) -> Option<S3Config> {
    let (endpoint, bucket, region) = cluster()?;
    let mut c = S3Config::new(bucket, prefix);
    c.endpoint = Some(endpoint);
    c.region = Some(region);
    c.size = Some(SIZE);
    c.object_size = Some(OBJECT_SIZE);
    c.lease_settle = Duration::from_millis(200);
    c.retry_timeout = Duration::from_secs(10);
    Some(c)
}

/// The same disk opened read-only, so every read comes from the store.
pub async fn fresh_reader(config: &S3Config) -> S3Device {
    let mut c = config.clone();
    c.read_only = true;
    c.size = None;
    S3Device::open(c).await.expect("read-only open")
}

/// The chunk indices stored under the device's prefix, sorted.
pub async fn stored_chunks(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<u64> {
    let data = Path::from(format!("{prefix}/data"));
    let metas: Vec<_> = store.list(Some(&data)).try_collect().await.expect("list");
    let mut chunks: Vec<u64> =
        metas.iter().map(|m| u64::from_str_radix(m.location.filename().unwrap(), 16).unwrap()).collect();
    chunks.sort_unstable();
    chunks
}

/// A recognisable pattern: byte i of the disk is a function of (seed, i).
pub fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((offset + i) as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
