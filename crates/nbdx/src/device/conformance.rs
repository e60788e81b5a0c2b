//! The behaviour every [`Device`] must show, as one suite instantiated per
//! device with [`device_conformance_tests!`]. Each check compares the device
//! with a byte-for-byte model of what it should hold.

use std::sync::Arc;

use nbdx_proto::{AllocationFlags, Errno};

use super::{Device, ZeroFlags};

/// Size of every device under test: room for a 32 MiB write at an odd
/// offset, and an odd size so the last request ends unaligned.
pub(crate) const SIZE: u64 = 40 * MIB + 12_345;
const MIB: u64 = 1 << 20;

/// Makes a fresh, all-zero device of the given size.
pub(crate) type Make = fn(u64) -> Arc<dyn Device>;

/// What a device promises beyond the contract every device keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    /// Reads return what was written (the null device reads zeroes).
    pub stores: bool,
    /// Trimming or zeroing (without `NO_HOLE`) an aligned MiB frees it:
    /// it reads zero and is reported `HOLE | ZERO`, as is a fresh device.
    pub punches_holes: bool,
    /// A `FAST_ZERO` request succeeds (otherwise it fails with `NBD_ENOTSUP`).
    pub fast_zero: bool,
}

/// Instantiates the suite as `#[tokio::test]`s in a module `conformance`.
macro_rules! device_conformance_tests {
    ($make:expr, $profile:expr) => {
        mod conformance {
            use super::*;
            use $crate::device::conformance as suite;
            suite::device_conformance_tests!(@each $make, $profile;
                writes_read_back_at_odd_offsets_and_sizes_up_to_32_mib,
                writes_straddling_page_boundaries_leave_their_neighbours_intact,
                trim_touches_nothing_outside_its_range_and_frees_what_it_can,
                write_zeroes_reads_back_zeroes_with_and_without_no_hole,
                fast_zero_either_zeroes_or_fails_with_enotsup_leaving_data_unchanged,
                concurrent_writers_on_different_and_shared_pages_match_a_model,
                concurrent_writers_on_the_same_bytes_leave_one_writers_data,
                flush_and_fua_requests_succeed_and_keep_the_data,
                extents_cover_every_range_and_agree_with_the_data,
                requests_beyond_the_end_fail_without_touching_anything,
            );
        }
    };
    (@each $make:expr, $profile:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                suite::$name($make, $profile).await;
            }
        )*
    };
}
pub(crate) use device_conformance_tests;

/// Deterministic bytes, never zero, different for every `seed`.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 255 + 1) as u8
        })
        .collect()
}

/// The device under test next to the model of its contents.
pub(crate) struct Harness {
    pub dev: Arc<dyn Device>,
    pub model: Vec<u8>,
    pub profile: Profile,
}

impl Harness {
    pub fn new(make: Make, profile: Profile) -> Self {
        Self { dev: make(SIZE), model: vec![0; SIZE as usize], profile }
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) {
        self.dev.write(offset, data, false).await.expect("write");
        self.record(offset, data);
    }

    fn record(&mut self, offset: u64, data: &[u8]) {
        if self.profile.stores {
            self.model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
    }

    pub async fn zero(&mut self, offset: u64, length: u64, flags: ZeroFlags) {
        self.dev.write_zeroes(offset, length, flags).await.expect("write_zeroes");
        self.model[offset as usize..(offset + length) as usize].fill(0);
    }

    /// Fills the first `len` bytes with data.
    pub async fn fill(&mut self, len: u64) {
        for (i, offset) in (0..len).step_by(MIB as usize).enumerate() {
            self.write(offset, &pattern(1000 + i as u64, MIB.min(len - offset) as usize)).await;
        }
    }

    pub async fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0xA5; len as usize];
        self.dev.read(offset, &mut buf).await.expect("read");
        buf
    }

    /// Asserts that `offset..offset + len` holds what the model says.
    pub async fn verify(&self, offset: u64, len: u64) {
        let got = self.read(offset, len).await;
        let want = &self.model[offset as usize..(offset + len) as usize];
        if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
            panic!("byte {} differs: device has {:#04x}, model {:#04x}", offset + i as u64, got[i], want[i]);
        }
    }

    pub async fn verify_all(&self) {
        for offset in (0..SIZE).step_by(8 * MIB as usize) {
            self.verify(offset, (8 * MIB).min(SIZE - offset)).await;
        }
    }

    /// Walks `extents` from `offset` to the end in requests of `step` bytes
    /// and checks that they tile the range and that `ZERO` means zeroes.
    pub async fn verify_extents(&self, mut offset: u64, step: u64) {
        while offset < SIZE {
            let length = step.min(SIZE - offset);
            let extents = self.dev.extents(offset, length).await.expect("extents");
            assert!(!extents.is_empty(), "no extent at {offset}");
            for e in extents {
                assert!(e.length > 0, "empty extent at {offset}");
                let end = (offset + e.length).min(SIZE);
                if e.flags.contains(AllocationFlags::ZERO) {
                    let nonzero = self.model[offset as usize..end as usize].iter().position(|&b| b != 0);
                    assert_eq!(nonzero, None, "extent {offset}+{} claims zeroes over data", e.length);
                }
                offset = end;
            }
        }
    }

    /// The status reported for exactly `offset..offset + length`.
    pub async fn status(&self, offset: u64, length: u64) -> AllocationFlags {
        let extents = self.dev.extents(offset, length).await.expect("extents");
        assert!(extents[0].length >= length, "{offset}+{length} is not one run: {extents:?}");
        extents[0].flags
    }
}

pub(crate) async fn writes_read_back_at_odd_offsets_and_sizes_up_to_32_mib(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    let writes =
        [(0, 1), (1, 3), (4095, 2), (65_535, 65_538), (SIZE - 1, 1), (SIZE - 100_001, 100_000), (12_345_677, 777_777)];
    for (seed, (offset, len)) in writes.into_iter().enumerate() {
        h.write(offset, &pattern(seed as u64, len as usize)).await;
        h.verify(offset, len).await;
    }
    h.write(4097, &pattern(99, 32 * MIB as usize)).await;
    h.verify(4097, 32 * MIB).await;
    h.verify(3, 5).await;
    h.verify_all().await;
}

pub(crate) async fn writes_straddling_page_boundaries_leave_their_neighbours_intact(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.fill(MIB).await;
    for (seed, boundary) in [4096u64, 65_536, 131_072, 512 * 1024].into_iter().enumerate() {
        h.write(boundary - 3, &pattern(50 + seed as u64, 7)).await;
        h.verify(boundary - 4096, 8192).await;
    }
    h.write(65_536 - 1, &pattern(60, 65_538)).await;
    h.verify(0, 2 * MIB).await;
}

pub(crate) async fn trim_touches_nothing_outside_its_range_and_frees_what_it_can(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.fill(8 * MIB).await;
    h.dev.trim(MIB, 2 * MIB, false).await.expect("trim");
    h.dev.trim(5 * MIB + 100, MIB + 100, true).await.expect("trim with fua");
    for (offset, len) in [(0, MIB), (3 * MIB, 2 * MIB + 100), (6 * MIB + 200, 2 * MIB - 200)] {
        h.verify(offset, len).await;
    }
    if profile.punches_holes {
        assert!(h.read(MIB, 2 * MIB).await.iter().all(|&b| b == 0), "trimmed range does not read zero");
        assert_eq!(h.status(MIB, 2 * MIB).await, AllocationFlags::HOLE | AllocationFlags::ZERO);
        h.model[(MIB as usize)..(3 * MIB) as usize].fill(0);
    }
    // Elsewhere in the trimmed ranges contents are unspecified: extents may
    // only claim zeroes where the device really reads zero.
    let now = h.read(0, 8 * MIB).await;
    h.model[..8 * MIB as usize].copy_from_slice(&now);
    h.verify_extents(0, SIZE).await;
}

pub(crate) async fn write_zeroes_reads_back_zeroes_with_and_without_no_hole(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.fill(8 * MIB).await;
    h.zero(MIB, MIB, ZeroFlags::default()).await;
    h.zero(3 * MIB + 5, MIB + 2, ZeroFlags { no_hole: true, ..ZeroFlags::default() }).await;
    h.zero(6 * MIB - 7, 3, ZeroFlags { fua: true, ..ZeroFlags::default() }).await;
    h.verify(0, 8 * MIB + 1).await;
    if profile.punches_holes {
        assert_eq!(h.status(MIB, MIB).await, AllocationFlags::HOLE | AllocationFlags::ZERO);
    }
    h.verify_extents(0, SIZE).await;
}

pub(crate) async fn fast_zero_either_zeroes_or_fails_with_enotsup_leaving_data_unchanged(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.fill(4 * MIB).await;
    let fast = ZeroFlags { fast: true, ..ZeroFlags::default() };
    match h.dev.write_zeroes(MIB + 512, 2 * MIB, fast).await {
        Ok(()) => {
            assert!(profile.fast_zero, "fast zero succeeded on a device without fast zeroing");
            h.model[(MIB + 512) as usize..(3 * MIB + 512) as usize].fill(0);
        }
        Err(e) => {
            assert!(!profile.fast_zero, "fast zero failed: {e}");
            assert_eq!(e.errno(), Errno::ENOTSUP);
        }
    }
    h.verify(0, 5 * MIB).await;
}

pub(crate) async fn concurrent_writers_on_different_and_shared_pages_match_a_model(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    let tasks: Vec<_> = (0..32u64)
        .map(|i| {
            let dev = h.dev.clone();
            tokio::spawn(async move {
                // Own region (neighbours share its first and last pages),
                // then a 100-byte slot in one page every task writes to.
                let (own, shared) = (2 * MIB + i * 96 * 1024 + 1000, MIB + i * 100);
                dev.write(own, &pattern(i, 70_000), false).await.expect("write");
                dev.write(shared, &pattern(100 + i, 100), i % 2 == 0).await.expect("write");
                dev.write_zeroes(own + 10_000, 5_000, ZeroFlags::default()).await.expect("zero");
                dev.trim(own + 60_000, 0, false).await.expect("empty trim");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    for i in 0..32u64 {
        let (own, shared) = (2 * MIB + i * 96 * 1024 + 1000, MIB + i * 100);
        h.record(own, &pattern(i, 70_000));
        h.record(shared, &pattern(100 + i, 100));
        h.model[(own + 10_000) as usize..(own + 15_000) as usize].fill(0);
    }
    h.verify_all().await;
    h.verify_extents(0, SIZE).await;
}

pub(crate) async fn concurrent_writers_on_the_same_bytes_leave_one_writers_data(make: Make, profile: Profile) {
    let h = Harness::new(make, profile);
    let (offset, len) = (8 * MIB - 1000, 70_000);
    let tasks: Vec<_> = (1..=16u8)
        .map(|byte| {
            let dev = h.dev.clone();
            tokio::spawn(async move { dev.write(offset, &vec![byte; len], false).await.expect("write") })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let got = h.read(offset, len as u64).await;
    let valid = |b: u8| if profile.stores { (1..=16).contains(&b) } else { b == 0 };
    assert!(got.iter().all(|&b| valid(b)), "bytes that no writer wrote");
}

pub(crate) async fn flush_and_fua_requests_succeed_and_keep_the_data(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.dev.write(3, &pattern(7, 70_000), true).await.expect("fua write");
    h.record(3, &pattern(7, 70_000));
    h.dev.flush().await.expect("flush");
    h.zero(100, 10, ZeroFlags { fua: true, no_hole: true, ..ZeroFlags::default() }).await;
    h.dev.cache(0, SIZE).await.expect("cache");
    h.dev.flush().await.expect("flush");
    h.verify(0, MIB).await;
}

pub(crate) async fn extents_cover_every_range_and_agree_with_the_data(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    if profile.punches_holes {
        assert_eq!(h.status(0, SIZE).await, AllocationFlags::HOLE | AllocationFlags::ZERO);
    }
    h.write(5 * MIB + 3, &pattern(1, 3 * MIB as usize)).await;
    h.write(SIZE - 10, &pattern(2, 10)).await;
    h.zero(6 * MIB, MIB, ZeroFlags::default()).await;
    for (start, step) in [(0, SIZE), (1, 16_384), (7, 65_537), (SIZE - 1, 1), (MIB + 1, 3 * MIB)] {
        h.verify_extents(start, step).await;
    }
    for offset in [5 * MIB + 2, 5 * MIB + 3, 6 * MIB, SIZE - 11, SIZE - 1] {
        let one = h.dev.extents(offset, 1).await.expect("extents of one byte");
        assert!(one.first().is_some_and(|e| e.length > 0), "no extent for byte {offset}");
        let zero = h.model[offset as usize] == 0;
        assert!(zero || !one[0].flags.contains(AllocationFlags::ZERO), "byte {offset} holds data");
    }
}

pub(crate) async fn requests_beyond_the_end_fail_without_touching_anything(make: Make, profile: Profile) {
    let mut h = Harness::new(make, profile);
    h.fill(MIB).await;
    let mut buf = vec![0; 2];
    assert!(h.dev.read(SIZE - 1, &mut buf).await.is_err());
    assert!(h.dev.read(u64::MAX, &mut buf).await.is_err());
    assert!(h.dev.write(SIZE - 1, &[1, 2], false).await.is_err());
    assert!(h.dev.trim(SIZE - 1, 2, false).await.is_err());
    assert!(h.dev.write_zeroes(0, SIZE + 1, ZeroFlags::default()).await.is_err());
    assert!(h.dev.extents(SIZE, 1).await.is_err());
    assert!(h.dev.cache(u64::MAX - 1, 2).await.is_err());
    h.verify_all().await;
}
