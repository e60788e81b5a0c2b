//! The object store's own rate for chunk-sized objects: PUTs, then GETs, of `TOTAL` MiB in
//! objects of `OBJECT` MiB with `CONCURRENCY` requests in flight (object_store, the client
//! the S3 device uses). Used by `bench/s3.sh`. Credentials from the environment.
//!
//! ```sh
//! s3_rawbench ENDPOINT BUCKET REGION TOTAL_MIB OBJECT_MIB CONCURRENCY
//! ```
//! prints `put_mib_s=… get_mib_s=…`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, region, total, object, concurrency] = args.as_slice() else {
        eprintln!("usage: s3_rawbench ENDPOINT BUCKET REGION TOTAL_MIB OBJECT_MIB CONCURRENCY");
        return ExitCode::from(2);
    };
    let (Ok(total), Ok(object), Ok(concurrency)) = (total.parse::<u64>(), object.parse::<u64>(), concurrency.parse())
    else {
        eprintln!("s3_rawbench: TOTAL_MIB, OBJECT_MIB and CONCURRENCY are numbers");
        return ExitCode::from(2);
    };
    match run(endpoint, bucket, region, total, object, concurrency).await {
        Ok((put, get)) => {
            println!("put_mib_s={put:.1} get_mib_s={get:.1}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("s3_rawbench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    endpoint: &str,
    bucket: &str,
    region: &str,
    total_mib: u64,
    object_mib: u64,
    concurrency: usize,
) -> Result<(f64, f64), object_store::Error> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let client = ClientOptions::new().with_allow_http(endpoint.starts_with("http://"));
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region(region)
            .with_access_key_id(var("AWS_ACCESS_KEY_ID"))
            .with_secret_access_key(var("AWS_SECRET_ACCESS_KEY"))
            .with_client_options(client)
            .build()?,
    );
    let count = total_mib / object_mib;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..object_mib << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let data = Bytes::from(data);
    let prefix = format!("nbdx-rawbench/{}", std::process::id());
    let path = |i: u64| Path::from(format!("{prefix}/{i:016x}"));

    let start = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (store, data) = (store.clone(), data.clone());
            let p = path(i);
            async move { store.put(&p, PutPayload::from(data)).await }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let put = (count * object_mib) as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            let p = path(i);
            async move { store.get(&p).await?.bytes().await.map(|b| b.len()) }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let get = (count * object_mib) as f64 / start.elapsed().as_secs_f64();

    stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            let p = path(i);
            async move { store.delete(&p).await }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok((put, get))
}
