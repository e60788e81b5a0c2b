//! Checks that any correct peer must pass, run by the fake-server tests, the
//! interop tests (nbdkit, qemu-nbd, nbd-server) and, later, against the nbdx
//! server. Each takes a connected client on a writable export of at least
//! 16 MiB whose contents start as zeroes.

use nbdx::client::Client;
use nbdx::device::{Extent, ZeroFlags};
use nbdx::proto::AllocationFlags;

/// A recognizable pattern: byte `i` of the export holds `f(i)`.
pub fn pattern(offset: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64).map(|i| ((offset + i) % 251) as u8 ^ seed).collect()
}

/// Writes (with and without FUA), reads back, flushes; a write larger than
/// one request is split and reassembled.
pub async fn read_write_round_trip(c: &Client) {
    let big = pattern(1 << 20, 5 << 20, 7);
    c.write(1 << 20, &big, false).await.expect("large write");
    let small = pattern(0, 4096, 9);
    c.write(0, &small, c.info().can_fua()).await.expect("small write");
    if c.info().can_flush() {
        c.flush().await.expect("flush");
    }
    let mut back = vec![0u8; big.len()];
    c.read(1 << 20, &mut back).await.expect("large read");
    assert!(back == big, "large read returned other data");
    let owned = c.read_owned(0, vec![0xAA; 4096]).await.expect("owned read");
    assert_eq!(owned, small);
}

/// Zeroing and trimming read back as zeroes where the peer guarantees it.
pub async fn zeroes_read_back_as_zeroes(c: &Client) {
    let at = 8u64 << 20;
    c.write(at, &pattern(at, 1 << 20, 3), false).await.expect("write");
    c.write_zeroes(at, 256 << 10, ZeroFlags::default()).await.expect("write_zeroes");
    c.write_zeroes(at + (256 << 10), 256 << 10, ZeroFlags { no_hole: true, fua: c.info().can_fua(), fast: false })
        .await
        .expect("write_zeroes no_hole");
    let mut back = vec![1u8; 512 << 10];
    c.read(at, &mut back).await.expect("read");
    assert!(back.iter().all(|b| *b == 0), "zeroed range reads back non-zero");
    if c.info().can_trim() {
        c.trim(at + (512 << 10), 512 << 10, false).await.expect("trim");
    }
    if c.info().can_fast_zero() {
        // Either fast success or a fast NBD_ENOTSUP: both are fine.
        if let Err(e) = c.write_zeroes(at, 4096, ZeroFlags { fast: true, ..Default::default() }).await {
            assert_eq!(e.errno(), Some(nbdx::proto::Errno::ENOTSUP), "{e}");
        }
    }
    if c.info().can_cache() {
        c.cache(0, 1 << 20).await.expect("cache");
    }
}

/// Data written at 12 MiB is reported as data; the untouched tail as zeroes.
pub async fn block_status_sees_data_and_zeroes(c: &Client) {
    let at = 12u64 << 20;
    c.write(at, &pattern(at, 64 << 10, 1), false).await.expect("write");
    let map = c.extents(at - (1 << 20), 3 << 20).await.expect("extents");
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 3 << 20, "map covers the range: {map:?}");
    let flags_at = |off: u64| flags_at(&map, off - (at - (1 << 20)));
    assert!(!flags_at(at).contains(AllocationFlags::ZERO), "written data reported as zero: {map:?}");
    assert!(flags_at(at + (1 << 20)).contains(AllocationFlags::ZERO), "untouched range not zero: {map:?}");
    let one = c.block_status(at, 4096).await.expect("block_status");
    assert!(!one.is_empty());
}

/// Flags of the extent covering `off` (relative to the map's start).
pub fn flags_at(map: &[Extent], off: u64) -> AllocationFlags {
    let mut pos = 0;
    for e in map {
        if off < pos + e.length {
            return e.flags;
        }
        pos += e.length;
    }
    panic!("offset {off} beyond the map {map:?}");
}

/// 64 concurrent requests on one client, all answered correctly.
pub async fn many_requests_in_flight(c: &Client) {
    let base = 14u64 << 20;
    let writes = (0..64u64).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.write(base + i * 4096, &pattern(base + i * 4096, 4096, 5), false).await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.expect("task").expect("write");
    }
    let reads = (0..64u64).map(|i| {
        let c = c.clone();
        tokio::spawn(async move {
            let mut b = vec![0u8; 4096];
            c.read(base + i * 4096, &mut b).await.map(|()| b)
        })
    });
    for (i, r) in reads.collect::<Vec<_>>().into_iter().enumerate() {
        let b = r.await.expect("task").expect("read");
        assert!(b == pattern(base + i as u64 * 4096, 4096, 5), "read {i} returned other data");
    }
}

/// Everything above.
pub async fn all(c: &Client) {
    read_write_round_trip(c).await;
    zeroes_read_back_as_zeroes(c).await;
    many_requests_in_flight(c).await;
    if c.can_block_status() {
        block_status_sees_data_and_zeroes(c).await;
    }
}
