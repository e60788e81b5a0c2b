//! The overlay of a copy-on-write layer: a block map saying where each
//! block's contents are (base, overlay data, or zeroes) and the overlay's
//! data, in memory or in a sparse file.
//!
//! # Overlay file format
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `NBDXCOW1` |
//! | 8 | 4 | format version, 1 |
//! | 12 | 4 | block size in bytes |
//! | 16 | 8 | device size in bytes |
//! | 24 | 8 | map offset (4096) |
//! | 32 | 8 | data offset: `map offset + blocks`, rounded up to a block |
//! | map offset | one byte per block | 0 = base, 1 = data in the overlay, 2 = zeroes |
//! | data offset | device size | block `i` at `data offset + i × block size` (sparse) |
//!
//! The map on disk changes only in [`Overlay::flush`] (and when the layer
//! is dropped), after the data it points to is durable: after a crash every
//! block reads as it did at the last flush or as written later, never as
//! data that was not written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::device::DeviceResult;
use crate::layer::{lock, LayerError};

/// Overlay block size: the unit of copy-up (nbdkit's cow filter default).
pub(super) const BLOCK_SIZE: u64 = 64 << 10;
/// Largest map (one byte per block): 2^32 blocks, 256 TiB of device.
const MAX_BLOCKS: u64 = 1 << 32;
const MAGIC: &[u8; 8] = b"NBDXCOW1";
const VERSION: u32 = 1;
const MAP_OFFSET: u64 = 4096;
const HEADER_LEN: usize = 40;
/// Memory overlay data is split over this many mutexes by block number.
const SHARDS: u64 = 16;

/// Where a block's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// In the base device: the overlay has nothing for it.
    Base = 0,
    /// In the overlay.
    Data = 1,
    /// Zeroes (trimmed or zeroed through the layer); nothing stored.
    Zero = 2,
}

impl State {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Data,
            2 => Self::Zero,
            _ => Self::Base,
        }
    }
}

/// Bytes `start..end` of the device, all of whose blocks are in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub state: State,
    pub start: u64,
    pub end: u64,
}

struct Map {
    states: Vec<u8>,
    /// Blocks changed since the map was last written to the file (inclusive).
    dirty: Option<(u64, u64)>,
}

/// Memory overlay blocks by number, one map per shard.
type Shard = Mutex<HashMap<u64, Box<[u8]>>>;

enum Store {
    Memory(Box<[Shard]>),
    File { file: File, path: PathBuf, data_offset: u64 },
}

pub(super) struct Overlay {
    size: u64,
    map: Mutex<Map>,
    store: Store,
    /// Serialises [`Overlay::flush`], so map snapshots reach the file in order.
    flush_lock: tokio::sync::Mutex<()>,
}

fn block_count(size: u64) -> Result<u64, LayerError> {
    let blocks = size.div_ceil(BLOCK_SIZE);
    if blocks > MAX_BLOCKS {
        let message = format!("a {size}-byte device needs more than {MAX_BLOCKS} overlay blocks");
        return Err(LayerError::Unsupported { layer: "cow", message });
    }
    Ok(blocks)
}

impl Overlay {
    /// An empty overlay in memory for a device of `size` bytes.
    pub(super) fn in_memory(size: u64) -> Result<Self, LayerError> {
        let blocks = block_count(size)?;
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Ok(Self::with_store(size, vec![0; blocks as usize], Store::Memory(shards)))
    }

    /// Opens the overlay file at `path`, creating it when it does not exist
    /// or is empty. An existing file must be an overlay for a device of
    /// exactly `size` bytes.
    pub(super) fn open_file(path: &Path, size: u64) -> Result<Self, LayerError> {
        let io_err = |source| LayerError::Io { layer: "cow", path: path.to_owned(), source };
        let bad = |message: String| LayerError::Overlay { path: path.to_owned(), message };
        let blocks = block_count(size)?;
        let data_offset = (MAP_OFFSET + blocks).next_multiple_of(BLOCK_SIZE);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err)?;
        lock_exclusively(&file).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => bad("in use by another copy-on-write layer (the file is locked)".into()),
            _ => io_err(e),
        })?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut states = vec![0; blocks as usize];
        if len == 0 {
            let mut header = [0u8; HEADER_LEN];
            header[..8].copy_from_slice(MAGIC);
            header[8..12].copy_from_slice(&VERSION.to_le_bytes());
            header[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
            header[16..24].copy_from_slice(&size.to_le_bytes());
            header[24..32].copy_from_slice(&MAP_OFFSET.to_le_bytes());
            header[32..40].copy_from_slice(&data_offset.to_le_bytes());
            file.set_len(data_offset + size).map_err(io_err)?;
            file.write_all_at(&header, 0).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        } else {
            let mut header = [0u8; HEADER_LEN];
            if len < HEADER_LEN as u64 || file.read_exact_at(&mut header, 0).is_err() || &header[..8] != MAGIC {
                return Err(bad("not an nbdx copy-on-write overlay (refusing to overwrite it)".into()));
            }
            let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or_default());
            let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
            if u32_at(8) != VERSION {
                return Err(bad(format!("format version {} is not supported (expected {VERSION})", u32_at(8))));
            }
            if u64_at(16) != size {
                return Err(bad(format!("made for a device of {} bytes, but the base has {size}", u64_at(16))));
            }
            if u64::from(u32_at(12)) != BLOCK_SIZE || u64_at(24) != MAP_OFFSET || u64_at(32) != data_offset {
                return Err(bad("damaged header (block size or layout does not match)".into()));
            }
            file.read_exact_at(&mut states, MAP_OFFSET).map_err(io_err)?;
            if let Some(i) = states.iter().position(|s| *s > State::Zero as u8) {
                return Err(bad(format!("damaged block map: block {i} has state {}", states[i])));
            }
            if len < data_offset + size {
                file.set_len(data_offset + size).map_err(io_err)?;
            }
        }
        Ok(Self::with_store(size, states, Store::File { file, path: path.to_owned(), data_offset }))
    }

    fn with_store(size: u64, states: Vec<u8>, store: Store) -> Self {
        Self { size, map: Mutex::new(Map { states, dirty: None }), store, flush_lock: tokio::sync::Mutex::new(()) }
    }

    /// The bytes of block `b`: `start..end`, the last block possibly short.
    pub(super) fn block_span(&self, b: u64) -> (u64, u64) {
        let start = b * BLOCK_SIZE;
        (start, (start + BLOCK_SIZE).min(self.size))
    }

    pub(super) fn state(&self, b: u64) -> State {
        State::from_byte(lock(&self.map).states[b as usize])
    }

    /// The bytes `start..end` (non-empty, within the device) split into
    /// runs of blocks in the same state, clipped to the range.
    pub(super) fn runs(&self, start: u64, end: u64) -> Vec<Run> {
        let map = lock(&self.map);
        let (first, last) = (start / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        let mut runs: Vec<Run> = Vec::new();
        for b in first..=last {
            let state = State::from_byte(map.states[b as usize]);
            let (s, e) = self.block_span(b);
            match runs.last_mut() {
                Some(run) if run.state == state => run.end = e.min(end),
                _ => runs.push(Run { state, start: s.max(start), end: e.min(end) }),
            }
        }
        runs
    }

    /// Records that blocks `first..=last` are now in `state`. Overlay data
    /// of blocks that become zeroes is released (memory overlay).
    pub(super) fn set_state(&self, first: u64, last: u64, state: State) {
        {
            let mut map = lock(&self.map);
            map.states[first as usize..=last as usize].fill(state as u8);
            map.dirty = Some(map.dirty.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
        }
        if let (State::Zero, Store::Memory(shards)) = (state, &self.store) {
            for (i, shard) in (0..SHARDS).zip(shards.iter()) {
                let mut shard = lock(shard);
                if (last - first) / SHARDS >= shard.len() as u64 {
                    shard.retain(|b, _| !(first..=last).contains(b));
                } else {
                    // The blocks of this shard in the range: b % SHARDS == i.
                    let start = first + (i + SHARDS - first % SHARDS) % SHARDS;
                    (start..=last).step_by(SHARDS as usize).for_each(|b| drop(shard.remove(&b)));
                }
            }
        }
    }

    /// Reads overlay data at device offset `offset`. Blocks never written
    /// to a memory overlay read as zeroes.
    pub(super) fn read_data(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        match &self.store {
            Store::File { file, data_offset, .. } => {
                Ok(crate::device::run_blocking(|| file.read_exact_at(buf, data_offset + offset))?)
            }
            Store::Memory(shards) => {
                self.for_each_block(offset, buf.len(), |b, within, at, n| {
                    let shard = lock(&shards[(b % SHARDS) as usize]);
                    match shard.get(&b) {
                        Some(block) => buf[at..at + n].copy_from_slice(&block[within..within + n]),
                        None => buf[at..at + n].fill(0),
                    }
                });
                Ok(())
            }
        }
    }

    /// Writes overlay data at device offset `offset`.
    pub(super) fn write_data(&self, offset: u64, data: &[u8]) -> DeviceResult<()> {
        match &self.store {
            Store::File { file, data_offset, .. } => {
                Ok(crate::device::run_blocking(|| file.write_all_at(data, data_offset + offset))?)
            }
            Store::Memory(shards) => {
                self.for_each_block(offset, data.len(), |b, within, at, n| {
                    let mut shard = lock(&shards[(b % SHARDS) as usize]);
                    let (s, e) = self.block_span(b);
                    let block = shard.entry(b).or_insert_with(|| vec![0; (e - s) as usize].into_boxed_slice());
                    block[within..within + n].copy_from_slice(&data[at..at + n]);
                });
                Ok(())
            }
        }
    }

    /// Calls `f(block, offset in block, offset in buffer, length)` for each
    /// block piece of `offset..offset + len`.
    fn for_each_block(&self, offset: u64, len: usize, mut f: impl FnMut(u64, usize, usize, usize)) {
        let mut at = 0;
        while at < len {
            let pos = offset + at as u64;
            let (b, within) = (pos / BLOCK_SIZE, (pos % BLOCK_SIZE) as usize);
            let n = (BLOCK_SIZE as usize - within).min(len - at);
            f(b, within, at, n);
            at += n;
        }
    }

    /// Makes the overlay durable: data first, then the block map. A no-op
    /// for a memory overlay.
    pub(super) async fn flush(&self) -> DeviceResult<()> {
        if matches!(self.store, Store::Memory(_)) {
            return Ok(());
        }
        let _serial = self.flush_lock.lock().await;
        Ok(crate::device::run_blocking(|| self.persist())?)
    }

    fn persist(&self) -> io::Result<()> {
        let Store::File { file, .. } = &self.store else { return Ok(()) };
        // Every block marked in this snapshot had its data written before
        // it was marked, so the first sync covers it.
        let snapshot = {
            let mut map = lock(&self.map);
            map.dirty.take().map(|(a, b)| (a, map.states[a as usize..=b as usize].to_vec()))
        };
        let result = file.sync_data().and_then(|()| match &snapshot {
            Some((first, states)) => file.write_all_at(states, MAP_OFFSET + first).and_then(|()| file.sync_data()),
            None => Ok(()),
        });
        if let (Err(_), Some((first, states))) = (&result, &snapshot) {
            let last = first + states.len() as u64 - 1;
            let mut map = lock(&self.map);
            map.dirty = Some(map.dirty.map_or((*first, last), |(a, b)| (a.min(*first), b.max(last))));
        }
        result
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Store::File { path, .. } = &self.store {
            if let Err(e) = self.persist() {
                tracing::warn!(path = %path.display(), error = %e, "cow overlay: saving the block map failed");
            }
        }
    }
}

/// Takes an exclusive advisory lock on the overlay file (released when it
/// is closed): two users of one overlay would overwrite each other's map.
fn lock_exclusively(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only takes a descriptor and flags; `file` keeps the
    // descriptor open for the duration of the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
