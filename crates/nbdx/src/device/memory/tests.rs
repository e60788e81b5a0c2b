use std::sync::Arc;

use super::*;
use crate::device::conformance::{device_conformance_tests, pattern, Profile};

const PAGE_BYTES: usize = MemoryDevice::PAGE_SIZE;
const PAGE: u64 = PAGE_BYTES as u64;
const HOLE: AllocationFlags = AllocationFlags::HOLE.union(AllocationFlags::ZERO);
const DATA: AllocationFlags = AllocationFlags::empty();

device_conformance_tests!(
    |size| Arc::new(MemoryDevice::new(size)),
    Profile { stores: true, punches_holes: true, fast_zero: true }
);

fn ext(length: u64, flags: AllocationFlags) -> Extent {
    Extent { length, flags }
}

#[tokio::test]
async fn writing_zeroes_to_unallocated_pages_allocates_nothing() {
    let dev = MemoryDevice::new(64 << 20);
    dev.write(12_345, &vec![0; 32 << 20], false).await.unwrap();
    dev.write_zeroes(0, 64 << 20, ZeroFlags { no_hole: true, ..ZeroFlags::default() }).await.unwrap();
    assert_eq!(dev.allocated_pages(), 0);
    assert_eq!(dev.extents(0, 64 << 20).await.unwrap(), vec![ext(64 << 20, HOLE)]);
}

#[tokio::test]
async fn an_unaligned_32_mib_write_allocates_exactly_the_pages_it_touches() {
    let dev = MemoryDevice::new(64 << 20);
    dev.write(PAGE + 1, &pattern(1, 32 << 20), false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 513);
}

#[tokio::test]
async fn trim_frees_every_page_it_covers() {
    let dev = MemoryDevice::new(64 << 20);
    dev.write(0, &pattern(1, 16 << 20), false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 256);
    dev.trim(0, 16 << 20, false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 0);
    let mut buf = vec![1; 4096];
    dev.read(8 << 20, &mut buf).await.unwrap();
    assert!(is_zero(&buf));
}

#[tokio::test]
async fn a_page_is_kept_until_its_last_nonzero_byte_is_zeroed() {
    let dev = MemoryDevice::new(4 * PAGE);
    dev.write(PAGE + 100, &[1, 2, 3], false).await.unwrap();
    dev.write(2 * PAGE - 1, &[4], false).await.unwrap();
    dev.trim(PAGE + 100, 3, false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 1, "one byte still holds data");
    dev.write(2 * PAGE - 1, &[0], false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 0, "overwriting the last byte with zero frees the page");
}

#[tokio::test]
async fn zeroing_straddling_a_boundary_frees_both_pages_once_empty() {
    let dev = MemoryDevice::new(4 * PAGE);
    dev.write(PAGE - 10, &pattern(2, 20), false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 2);
    dev.write_zeroes(PAGE - 10, 20, ZeroFlags::default()).await.unwrap();
    assert_eq!(dev.allocated_pages(), 0);
}

#[tokio::test]
async fn no_hole_zeroing_keeps_allocated_pages_allocated() {
    // Few pages are visited one by one, many shard by shard: check both.
    for pages in [4, 100] {
        let dev = MemoryDevice::new(2 * pages * PAGE);
        dev.write(0, &pattern(3, (pages * PAGE) as usize), false).await.unwrap();
        dev.write_zeroes(10, (pages - 1) * PAGE, ZeroFlags { no_hole: true, ..ZeroFlags::default() }).await.unwrap();
        assert_eq!(dev.allocated_pages(), pages);
        let mut buf = vec![1; ((pages - 1) * PAGE) as usize];
        dev.read(10, &mut buf).await.unwrap();
        assert!(is_zero(&buf));
        let want = vec![ext(pages * PAGE, DATA), ext(pages * PAGE, HOLE)];
        assert_eq!(dev.extents(0, 2 * pages * PAGE).await.unwrap(), want);
        dev.write_zeroes(10, (pages - 1) * PAGE, ZeroFlags::default()).await.unwrap();
        assert_eq!(dev.allocated_pages(), 2, "only the first and last pages keep data");
    }
}

#[tokio::test]
async fn extents_are_clipped_to_the_request_and_merge_neighbouring_pages() {
    let dev = MemoryDevice::new(10 * PAGE);
    dev.write(2 * PAGE, &pattern(4, 2 * PAGE_BYTES), false).await.unwrap();
    dev.write(7 * PAGE + 5, &[9], false).await.unwrap();
    let got = dev.extents(PAGE + 3, 7 * PAGE).await.unwrap();
    assert_eq!(got, vec![ext(PAGE - 3, HOLE), ext(2 * PAGE, DATA), ext(3 * PAGE, HOLE), ext(PAGE, DATA), ext(3, HOLE)]);
    assert_eq!(dev.extents(2 * PAGE + 1, 1).await.unwrap(), vec![ext(1, DATA)]);
    assert_eq!(dev.extents(0, 0).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_petabyte_sparse_device_reports_its_holes_in_few_extents() {
    let size = 1u64 << 50;
    let dev = MemoryDevice::new(size);
    assert_eq!(dev.extents(0, size).await.unwrap(), vec![ext(size, HOLE)]);
    let far = size / 2 + 12_345;
    dev.write(far, &[1], false).await.unwrap();
    let page = far / PAGE * PAGE;
    assert_eq!(
        dev.extents(0, size).await.unwrap(),
        vec![ext(page, HOLE), ext(PAGE, DATA), ext(size - page - PAGE, HOLE)]
    );
    dev.write_zeroes(0, size, ZeroFlags::default()).await.unwrap();
    dev.trim(0, size, false).await.unwrap();
    assert_eq!(dev.allocated_pages(), 0);
}

#[tokio::test]
async fn a_read_only_device_refuses_changes_with_eperm() {
    let dev = MemoryDevice::new(PAGE).with_read_only(true);
    let caps = dev.caps();
    assert!(caps.read_only && !caps.trim && caps.zero == Support::None && caps.fua == Support::None);
    assert_eq!(dev.write(0, &[1], false).await.unwrap_err().errno(), Errno::EPERM);
    assert_eq!(dev.trim(0, 1, false).await.unwrap_err().errno(), Errno::EPERM);
    assert_eq!(dev.write_zeroes(0, 1, ZeroFlags::default()).await.unwrap_err().errno(), Errno::EPERM);
    let mut buf = [1u8; 8];
    dev.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [0; 8]);
}

#[test]
fn a_writable_device_advertises_native_fua_zero_cache_and_fast_zero() {
    let caps = MemoryDevice::new(PAGE).caps();
    assert!(caps.flush && caps.trim && caps.fast_zero && caps.multi_conn && caps.extents && !caps.read_only);
    assert_eq!((caps.fua, caps.zero, caps.cache), (Support::Native, Support::Native, Support::Native));
}

#[test]
fn zero_detection_finds_a_single_nonzero_byte_anywhere() {
    assert!(is_zero(&[]));
    assert!(is_zero(&[0; 200]));
    for i in 0..200 {
        let mut buf = [0u8; 200];
        buf[i] = 0x80;
        assert!(!is_zero(&buf), "missed byte {i}");
    }
}

#[test]
fn segments_split_requests_at_chunk_boundaries() {
    let c = CHUNK as u64;
    let got: Vec<_> = segments(c - 2, c + 4).collect();
    assert_eq!(got, vec![(0, CHUNK - 2, 2, 0), (1, 0, CHUNK, 2), (2, 0, 2, CHUNK + 2)]);
    assert_eq!(segments(5, 0).count(), 0);
}

#[tokio::test]
async fn a_chunk_left_without_data_is_unmapped() {
    let dev = MemoryDevice::new(8 << 20);
    dev.write(3 << 20, &[1u8; 4096], false).await.unwrap();
    assert_eq!(dev.map().len(), 1);
    dev.trim(2 << 20, 2 << 20, false).await.unwrap();
    assert_eq!(dev.map().len(), 0);
    dev.write(3 << 20, &[1u8; 4096], false).await.unwrap();
    dev.write(3 << 20, &[0u8; 4096], false).await.unwrap();
    assert_eq!(dev.map().len(), 0, "zeroing the last data unmaps the chunk");
}
