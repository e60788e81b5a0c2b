//! The request log: one line per request and per completion.

use std::path::Path;
use std::sync::Arc;

use nbdx::device::{Device, ZeroFlags};
use nbdx::layer::{ErrorLayer, LogLayer};
use nbdx::proto::Errno;

use crate::ram::RamDisk;

/// The log's lines without their timestamps, after checking the stamps'
/// shape (`YYYY-MM-DD HH:MM:SS.ffffff `).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let (date, rest) = line.split_at(27);
            let shape: String = date.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
            assert_eq!(shape, "9999-99-99 99:99:99.999999 ", "{line}");
            rest.to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_request_kind_is_logged_with_its_fields_and_completion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.log");
    let base = RamDisk::new(1 << 20);
    base.write(0x1000, &[1; 0x1000], false).await.unwrap();
    let log = LogLayer::new(base, &path).unwrap();

    let mut buf = vec![0; 0x200];
    log.read(0x400, &mut buf).await.unwrap();
    log.write(0x200, &[7; 0x200], true).await.unwrap();
    log.trim(0x10000, 0x20000, false).await.unwrap();
    log.write_zeroes(0x8000, 0x1000, ZeroFlags { no_hole: true, fua: false, fast: true }).await.unwrap();
    log.write_zeroes(0x9000, 0x1000, ZeroFlags::default()).await.unwrap();
    assert!(log.cache(0, 0x1000).await.is_err(), "the RAM disk does not cache");
    log.extents(0, 0x3000).await.unwrap();
    log.flush().await.unwrap();
    drop(log);

    assert_eq!(
        lines(&path),
        [
            "Open size=0x100000 read_only=0 flush=1 fua=native trim=1 zero=native fast_zero=1 cache=none extents=1 \
             multi_conn=1",
            "Read id=1 offset=0x400 count=0x200 ...",
            "...Read id=1 return=0 (Success)",
            "Write id=2 offset=0x200 count=0x200 fua=1 ...",
            "...Write id=2 return=0 (Success)",
            "Trim id=3 offset=0x10000 count=0x20000 fua=0 ...",
            "...Trim id=3 return=0 (Success)",
            "Zero id=4 offset=0x8000 count=0x1000 trim=0 fua=0 fast=1 ...",
            "...Zero id=4 return=0 (Success)",
            "Zero id=5 offset=0x9000 count=0x1000 trim=1 fua=0 fast=0 ...",
            "...Zero id=5 return=0 (Success)",
            "Cache id=6 offset=0x0 count=0x1000 ...",
            "...Cache id=6 return=-1 (ENOTSUP) error=\"operation not supported\"",
            "Extents id=7 offset=0x0 count=0x3000 ...",
            "...Extents id=7 extents=[{ length=0x2000, type=data }, { length=0x1000, type=hole,zero }] return=0 \
             (Success)",
            "Flush id=8 ...",
            "...Flush id=8 return=0 (Success)",
            "Close transactions=8",
        ]
    );
}

#[tokio::test]
async fn completion_lines_carry_the_nbd_error_of_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errors.log");
    let failing = Arc::new(ErrorLayer::new(RamDisk::new(1 << 20), 1.0, Errno::ENOSPC, 1));
    let log = LogLayer::new(failing, &path).unwrap();
    assert_eq!(log.write(0, &[0; 512], false).await.unwrap_err().errno(), Errno::ENOSPC);
    drop(log);
    let lines = lines(&path);
    assert_eq!(lines[1], "Write id=1 offset=0x0 count=0x200 fua=0 ...");
    assert_eq!(lines[2], "...Write id=1 return=-1 (ENOSPC) error=\"write: injected error (error layer)\"");
}

#[tokio::test]
async fn a_flush_writes_the_buffered_lines_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flushed.log");
    let log = LogLayer::new(RamDisk::new(1 << 20), &path).unwrap();
    let mut buf = [0u8; 512];
    log.read(0, &mut buf).await.unwrap();
    log.flush().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("...Read id=1 return=0 (Success)") && text.contains("...Flush id=2"), "{text}");
    assert!(!text.contains("Close"), "the layer is still open");
}

#[tokio::test]
async fn overlapping_requests_keep_their_ids_on_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlap.log");
    let base = RamDisk::new(1 << 20);
    let gate = base.gate_reads();
    let log = LogLayer::new(base, &path).unwrap();
    let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 512]);
    // The first read waits in the disk until the second one is done.
    let first = log.read(0, &mut a);
    let second = async {
        log.read(512, &mut b).await.unwrap();
        gate.notify_one();
    };
    let (r, ()) = tokio::join!(first, second);
    r.unwrap();
    drop(log);
    let lines = lines(&path);
    let order: Vec<&str> = lines[1..5].iter().map(|l| l.split(" offset").next().unwrap_or(l)).collect();
    assert_eq!(order, ["Read id=1", "Read id=2", "...Read id=2 return=0 (Success)", "...Read id=1 return=0 (Success)"]);
}
