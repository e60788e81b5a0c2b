//! Safety of the S3 device against a real store: the lease, clear errors at open, the
//! manifest check, and a Garage node dying under I/O. Without `NBDX_S3_ENDPOINT` every
//! test prints SKIP (run `tests/s3/run.sh`).

mod s3_support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nbdx::device::s3::{S3Credentials, S3Device, S3Error, LEASE_NAME};
use nbdx::device::Device;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use s3_support::{config, fresh_reader, pattern, poll, stored_chunks, unique_prefix, OBJECT_SIZE};

fn one_clear_line(e: &S3Error) -> String {
    let text = e.to_string();
    assert!(!text.is_empty() && !text.contains('\n'), "not one line: {text:?}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_read_write_open_is_refused_naming_the_holder_while_read_only_opens_work() {
    let prefix = unique_prefix("lease");
    let Some(cfg) = config(&prefix) else { return };
    let first = S3Device::open(cfg.clone()).await.unwrap();
    first.write(0, &[1; 512], true).await.unwrap();

    let err = S3Device::open(cfg.clone()).await.err().expect("a second writer must be refused");
    let text = one_clear_line(&err);
    assert!(matches!(err, S3Error::Leased(_)), "{err:?}");
    let pid = format!("pid {}", std::process::id());
    assert!(text.contains(&pid) && text.contains("until") && text.contains("UTC"), "{text}");

    let reader = fresh_reader(&cfg).await;
    let mut buf = [0; 512];
    reader.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [1; 512]);
    assert!(reader.caps().read_only);
    assert!(reader.write(0, &[2; 512], false).await.is_err(), "a read-only device refuses writes");

    // Closing releases the lease at once: the next writer needs no expiry.
    first.close().await.unwrap();
    S3Device::open(cfg).await.expect("open after release").close().await.unwrap();
}

#[test]
fn a_device_dropped_after_its_runtime_releases_the_lease_so_a_restart_need_not_wait() {
    let prefix = unique_prefix("restart");
    let Some(cfg) = config(&prefix) else { return };
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // As a server would: open and write on its runtime, shut the runtime down, then drop.
    let first = runtime();
    let dev = first.block_on(async {
        let dev = S3Device::open(cfg.clone()).await.unwrap();
        dev.write(0, &[4; 4096], true).await.unwrap();
        dev
    });
    drop(first);
    drop(dev);
    let second = runtime();
    let again = second.block_on(S3Device::open(cfg));
    assert!(again.is_ok(), "the restarted writer was refused: {}", again.err().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_crashed_holder_is_taken_over_once_it_expires() {
    let prefix = unique_prefix("expiry");
    let Some(cfg) = config(&prefix) else { return };
    // Create the disk, then leave a lease as a holder that died would: never renewed.
    S3Device::open(cfg.clone()).await.unwrap().close().await.unwrap();
    let reader = fresh_reader(&cfg).await;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let ghost = format!("nbdx-s3-lease 1\nholder ghost-host pid 1\nid 00000000000000aa\nexpires {}\n", now_ms + 3000);
    let lease = Path::from(format!("{prefix}/{LEASE_NAME}"));
    reader.object_store().put(&lease, PutPayload::from(ghost.into_bytes())).await.unwrap();

    let err = S3Device::open(cfg.clone()).await.err().expect("refused while the ghost's lease lasts");
    assert!(one_clear_line(&err).contains("ghost-host pid 1"), "{err}");
    let taken = poll(Duration::from_secs(20), || {
        let cfg = cfg.clone();
        async move { S3Device::open(cfg).await.ok() }
    })
    .await
    .expect("the expired lease was not taken over within 20 s");
    taken.write(0, &[3; 4096], true).await.unwrap();
    taken.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_a_missing_bucket_and_an_unreachable_endpoint_each_fail_at_open_with_one_line() {
    let Some(cfg) = config(&unique_prefix("errors")) else { return };
    let bad = S3Credentials::new("GK00000000000000000000dead", "0".repeat(64), None);
    let err = S3Device::open_with_credentials(cfg.clone(), bad).await.err().expect("bad credentials");
    assert!(matches!(err, S3Error::Credentials(_)), "{err:?}");
    assert!(one_clear_line(&err).contains("credentials"));

    let mut no_bucket = cfg.clone();
    no_bucket.bucket = "nbdx-no-such-bucket".into();
    let err = S3Device::open(no_bucket).await.err().expect("missing bucket");
    assert!(matches!(err, S3Error::NoSuchBucket(_)), "{err:?}");
    assert!(one_clear_line(&err).contains("bucket does not exist"));

    let mut unreachable = cfg.clone();
    unreachable.endpoint = Some("http://127.0.0.1:9".into());
    unreachable.retry_timeout = Duration::from_secs(2);
    let err = S3Device::open(unreachable).await.err().expect("unreachable endpoint");
    assert!(matches!(err, S3Error::Unreachable(_)), "{err:?}");
    assert!(one_clear_line(&err).contains("http://127.0.0.1:9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_mismatch_or_a_missing_disk_is_refused_with_what_to_do() {
    let prefix = unique_prefix("manifest");
    let Some(cfg) = config(&prefix) else { return };
    let mut missing = cfg.clone();
    missing.size = None;
    let err = S3Device::open(missing.clone()).await.err().expect("no disk yet and no size");
    assert!(matches!(err, S3Error::NoDisk(_)) && one_clear_line(&err).contains("size="), "{err}");

    S3Device::open(cfg.clone()).await.unwrap().close().await.unwrap();
    let mut bigger = cfg.clone();
    bigger.size = Some(cfg.size.unwrap() * 2);
    let err = S3Device::open(bigger).await.err().expect("size mismatch");
    assert!(matches!(err, S3Error::Manifest(_)) && one_clear_line(&err).contains("size mismatch"), "{err}");
    let mut other_chunks = cfg.clone();
    other_chunks.object_size = Some(OBJECT_SIZE * 2);
    let err = S3Device::open(other_chunks).await.err().expect("object-size mismatch");
    assert!(one_clear_line(&err).contains("object-size mismatch"), "{err}");
    // Without size= an existing disk opens as it is.
    let dev = S3Device::open(missing).await.unwrap();
    assert_eq!(dev.size(), cfg.size.unwrap());
    dev.close().await.unwrap();
}

/// Restarts a killed Garage node when the test ends, even on failure.
struct Revive(u32);

impl Drop for Revive {
    fn drop(&mut self) {
        let _ = cluster_script(&["start-node", &self.0.to_string()]);
    }
}

fn cluster_script(args: &[&str]) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/s3/garage-cluster.sh");
    Command::new("bash").arg(script).args(args).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_goes_on_while_one_of_three_garage_nodes_is_killed() {
    let prefix = unique_prefix("node-down");
    let Some(cfg) = config(&prefix) else { return };
    if std::env::var_os("NBDX_GARAGE_DIR").is_none() {
        println!("SKIP: not a cluster from tests/s3/garage-cluster.sh (NBDX_GARAGE_DIR unset)");
        return;
    }
    let dev = S3Device::open(cfg.clone()).await.unwrap();
    let os = OBJECT_SIZE as usize;
    dev.write(0, &pattern(1, 0, 3 * os), false).await.unwrap();
    dev.flush().await.unwrap();

    assert!(cluster_script(&["kill-node", "3"]), "kill-node 3 failed");
    let _revive = Revive(3);
    // Reads of what was stored, new writes, trims and a flush all succeed on two nodes.
    let mut buf = vec![0; 3 * os];
    fresh_reader(&cfg).await.read(0, &mut buf).await.unwrap();
    assert!(buf == pattern(1, 0, 3 * os));
    dev.write(4 * OBJECT_SIZE, &pattern(2, 0, 2 * os), false).await.unwrap();
    dev.trim(OBJECT_SIZE, OBJECT_SIZE, false).await.unwrap();
    dev.flush().await.unwrap();
    assert_eq!(stored_chunks(&dev.object_store(), &prefix).await, vec![0, 2, 4, 5]);
    let mut buf = vec![0; 2 * os];
    fresh_reader(&cfg).await.read(4 * OBJECT_SIZE, &mut buf).await.unwrap();
    assert!(buf == pattern(2, 0, 2 * os));
    dev.close().await.unwrap();
}
