//! Layers stacked on a RAM disk: copy-on-write, readahead, the request log,
//! and the `--layer` stack order.

#[path = "layers/cow.rs"]
mod cow;
#[path = "layers/cow_file.rs"]
mod cow_file;
#[path = "layers/log.rs"]
mod log;
#[path = "layers/ram.rs"]
mod ram;
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
