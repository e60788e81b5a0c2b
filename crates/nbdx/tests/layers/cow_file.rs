//! Copy-on-write with the overlay in a file: persistence, refusal of
//! unusable files, crash behaviour.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use nbdx::device::{Device, ZeroFlags};
use nbdx::layer::{CowLayer, LayerError};

use crate::cow::{hammer, read_all};
use crate::ram::RamDisk;

const BLOCK: u64 = 64 << 10;

fn overlay_error(result: Result<CowLayer, LayerError>) -> String {
    match result {
        Err(e @ LayerError::Overlay { .. }) => e.to_string(),
        Err(e) => panic!("expected an overlay error, got {e}"),
        Ok(_) => panic!("an unusable overlay file was accepted"),
    }
}

/// Writes, zeroes and trims a few ranges through `cow`, mirroring them in `model`.
async fn scribble(cow: &CowLayer, model: &mut [u8], seed: u8) {
    cow.write(1000, &[seed; 3000], false).await.unwrap();
    model[1000..4000].fill(seed);
    cow.write(2 * BLOCK, &vec![seed ^ 0xff; BLOCK as usize], false).await.unwrap();
    model[2 * BLOCK as usize..3 * BLOCK as usize].fill(seed ^ 0xff);
    cow.write_zeroes(4 * BLOCK, 2 * BLOCK, ZeroFlags::default()).await.unwrap();
    model[4 * BLOCK as usize..6 * BLOCK as usize].fill(0);
    cow.trim(7 * BLOCK + 10, 20, false).await.unwrap();
    model[7 * BLOCK as usize + 10..7 * BLOCK as usize + 30].fill(0);
}

#[tokio::test]
async fn the_overlay_file_keeps_writes_and_zeroes_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.cow");
    let base = RamDisk::patterned(16 * BLOCK as usize, 5);
    let before = base.bytes();
    let mut model = before.clone();

    let cow = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    scribble(&cow, &mut model, 0x11).await;
    cow.flush().await.unwrap();
    drop(cow);

    let cow = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    assert!(read_all(&cow).await == model, "flushed overlay lost on reopen");
    // Dropping without a flush saves the map too.
    cow.write(9 * BLOCK, &[0x22; 512], false).await.unwrap();
    model[9 * BLOCK as usize..9 * BLOCK as usize + 512].fill(0x22);
    cow.trim(2 * BLOCK, BLOCK, false).await.unwrap();
    model[2 * BLOCK as usize..3 * BLOCK as usize].fill(0);
    drop(cow);

    let cow = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    assert!(read_all(&cow).await == model, "overlay not saved on drop");
    assert!(base.bytes() == before, "the base changed");
    assert_eq!(base.writes(), 0);
}

#[tokio::test]
async fn after_a_crash_unflushed_writes_are_lost_cleanly_and_flushed_ones_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.cow");
    let base = RamDisk::patterned(16 * BLOCK as usize, 6);
    let mut model = base.bytes();

    let cow = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    scribble(&cow, &mut model, 0x33).await;
    cow.flush().await.unwrap();
    // Unflushed: a new block, and zeroes over a flushed one.
    cow.write(12 * BLOCK, &[0x44; 4096], false).await.unwrap();
    cow.write_zeroes(2 * BLOCK, BLOCK, ZeroFlags::default()).await.unwrap();
    // The process dies now: the file is left as it is, nothing runs at drop.
    let crashed = dir.path().join("crashed.cow");
    std::fs::copy(&path, &crashed).unwrap();
    drop(cow);

    let cow = CowLayer::with_overlay_file(base.clone(), &crashed).unwrap();
    assert!(read_all(&cow).await == model, "the overlay does not read as at the last flush");
}

#[tokio::test]
async fn a_missing_or_empty_file_starts_an_empty_sparse_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.cow");
    std::fs::write(&path, b"").unwrap();
    let base = RamDisk::patterned(64 << 20, 7);
    let cow = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    let mut buf = vec![0; 4096];
    cow.read(50 << 20, &mut buf).await.unwrap();
    assert!(buf[..] == base.bytes()[50 << 20..(50 << 20) + 4096]);
    cow.write(0, &[1; 4096], false).await.unwrap();
    cow.flush().await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > 64 << 20, "the overlay spans the device");
    assert!(meta.blocks() * 512 < 4 << 20, "the overlay is not sparse: {} bytes allocated", meta.blocks() * 512);
}

#[tokio::test]
async fn an_overlay_made_for_another_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.cow");
    drop(CowLayer::with_overlay_file(RamDisk::new(1 << 20), &path).unwrap());
    let err = overlay_error(CowLayer::with_overlay_file(RamDisk::new(2 << 20), &path));
    assert!(err.contains("made for a device of 1048576 bytes, but the base has 2097152"), "{err}");
}

#[test]
fn a_second_layer_on_an_overlay_in_use_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.cow");
    let base = RamDisk::new(1 << 20);
    let first = CowLayer::with_overlay_file(base.clone(), &path).unwrap();
    let err = overlay_error(CowLayer::with_overlay_file(base.clone(), &path));
    assert!(err.contains("in use"), "{err}");
    drop(first);
    CowLayer::with_overlay_file(base, &path).unwrap();
}

#[test]
fn a_file_that_is_not_an_overlay_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.img");
    std::fs::write(&path, b"not an overlay, but somebody's data").unwrap();
    let err = overlay_error(CowLayer::with_overlay_file(RamDisk::new(1 << 20), &path));
    assert!(err.contains("not an nbdx copy-on-write overlay"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not an overlay, but somebody's data");
}

#[tokio::test]
async fn a_damaged_block_map_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.cow");
    let cow = CowLayer::with_overlay_file(RamDisk::new(1 << 20), &path).unwrap();
    cow.write(0, &[1; 512], false).await.unwrap();
    drop(cow);
    corrupt(&path, 4096 + 3, 9);
    let err = overlay_error(CowLayer::with_overlay_file(RamDisk::new(1 << 20), &path));
    assert!(err.contains("damaged block map: block 3 has state 9"), "{err}");
}

fn corrupt(path: &Path, offset: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[byte], offset).unwrap();
}

#[test]
fn an_overlay_in_a_missing_directory_reports_the_path() {
    match CowLayer::with_overlay_file(RamDisk::new(1 << 20), "/nonexistent-dir/disk.cow") {
        Err(e @ LayerError::Io { layer: "cow", .. }) => assert!(e.to_string().contains("/nonexistent-dir/disk.cow")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an overlay in a missing directory was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_to_shared_blocks_of_a_file_overlay_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = RamDisk::patterned(64 * BLOCK as usize, 8);
    let cow = Arc::new(CowLayer::with_overlay_file(base.clone(), dir.path().join("c.cow")).unwrap());
    hammer(cow.clone(), &base).await;
    cow.flush().await.unwrap();
}
