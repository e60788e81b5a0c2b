//! [`CowLayer`]: copy-on-write over a base device that is never written
//! (nbdkit's cow filter).

mod lock;
mod overlay;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use nbdx_proto::{AllocationFlags, BlockSize, Errno};

use self::lock::RangeLock;
use self::overlay::{Overlay, State, BLOCK_SIZE};
use super::LayerError;
use crate::device::{Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};

/// The most bytes one block status answer covers (65 536 blocks).
const MAX_EXTENTS_SPAN: u64 = 1 << 32;

/// Copy-on-write: writes go to a sparse overlay, reads come from the
/// overlay where it has the block and from the base otherwise. The base is
/// only ever read (open it read-only); the layer is writable even when the
/// base is not.
///
/// The overlay works in blocks of [`CowLayer::block_size`] (64 KiB). A
/// write that covers part of a block copies the rest of the block from the
/// base first (read-modify-write); changes to the same block are serialised
/// by a per-block lock, changes to different blocks run concurrently.
/// Trims and zeroes mark whole blocks as zero (so they read as zeroes even
/// where the base has data) and zero the covered part of partial blocks;
/// both are fast, and the overlay stores nothing for a zeroed block.
///
/// The overlay is in memory ([`CowLayer::new`]) or in a sparse file
/// ([`CowLayer::with_overlay_file`]) whose block map is saved on every
/// flush and when the layer is dropped, so it can be reopened later over
/// the same base. An overlay file is locked (`flock`) while in use: a
/// second layer on the same file is refused.
///
/// Block status: zeroed blocks are holes that read as zeroes, overlay data
/// is data, the rest is what the base reports (data if it reports nothing).
/// `NBD_CMD_FLAG_NO_HOLE` is not honoured as a provisioning guarantee: the
/// overlay is sparse and zeroed blocks take no space in it.
pub struct CowLayer {
    base: Arc<dyn Device>,
    base_caps: Caps,
    overlay: Overlay,
    locks: RangeLock,
}

/// A part of a request: one partial block, or a run of whole blocks.
enum Piece {
    Partial { block: u64, start: u64, end: u64 },
    Whole { first: u64, last: u64, start: u64, end: u64 },
}

impl CowLayer {
    /// Copy-on-write over `base` with an overlay in memory (lost when the
    /// layer is dropped).
    pub fn new(base: Arc<dyn Device>) -> Result<Self, LayerError> {
        let overlay = Overlay::in_memory(base.size())?;
        Ok(Self::with_overlay(base, overlay))
    }

    /// Copy-on-write over `base` with the overlay kept in the file at
    /// `path`: created when missing or empty, reopened otherwise. An
    /// existing file must be an overlay made for a base of the same size;
    /// anything else is refused, never overwritten.
    pub fn with_overlay_file(base: Arc<dyn Device>, path: impl AsRef<Path>) -> Result<Self, LayerError> {
        let overlay = Overlay::open_file(path.as_ref(), base.size())?;
        Ok(Self::with_overlay(base, overlay))
    }

    fn with_overlay(base: Arc<dyn Device>, overlay: Overlay) -> Self {
        Self { base_caps: base.caps(), base, overlay, locks: RangeLock::default() }
    }

    /// The unit of copy-up, in bytes.
    pub fn block_size(&self) -> u64 {
        BLOCK_SIZE
    }

    /// The device underneath, which this layer never writes.
    pub fn base(&self) -> &Arc<dyn Device> {
        &self.base
    }

    /// The end of `offset..offset + length`, if it lies within the device.
    fn end_of(&self, offset: u64, length: u64) -> DeviceResult<u64> {
        match offset.checked_add(length) {
            Some(end) if end <= self.base.size() => Ok(end),
            _ => Err(DeviceError::invalid("request beyond the end of the device")),
        }
    }

    /// Splits the non-empty range `offset..end` into at most a partial head
    /// block, a run of whole blocks and a partial tail block.
    fn pieces(&self, offset: u64, end: u64) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(3);
        let mut pos = offset;
        let (start, block_end) = self.overlay.block_span(offset / BLOCK_SIZE);
        if offset != start || end < block_end {
            pos = end.min(block_end);
            pieces.push(Piece::Partial { block: offset / BLOCK_SIZE, start: offset, end: pos });
        }
        // Whole blocks end at a block boundary, or at the device's end.
        let whole_end = if end == self.base.size() { end } else { end / BLOCK_SIZE * BLOCK_SIZE };
        if pos < whole_end {
            let (first, last) = (pos / BLOCK_SIZE, (whole_end - 1) / BLOCK_SIZE);
            pieces.push(Piece::Whole { first, last, start: pos, end: whole_end });
            pos = whole_end;
        }
        if pos < end {
            pieces.push(Piece::Partial { block: pos / BLOCK_SIZE, start: pos, end });
        }
        pieces
    }

    /// The current contents of block `b`.
    async fn load_block(&self, b: u64) -> DeviceResult<Vec<u8>> {
        let (start, end) = self.overlay.block_span(b);
        let mut block = vec![0; (end - start) as usize];
        match self.overlay.state(b) {
            State::Base => self.base.read(start, &mut block).await?,
            State::Data => self.overlay.read_data(start, &mut block)?,
            State::Zero => {}
        }
        Ok(block)
    }

    /// Sets bytes `start..end` of block `b` to `data`, or to zeroes. The
    /// caller holds the block's lock.
    async fn patch_block(&self, b: u64, start: u64, end: u64, data: Option<&[u8]>) -> DeviceResult<()> {
        match (self.overlay.state(b), data) {
            (State::Zero, None) => Ok(()),
            (State::Data, Some(data)) => self.overlay.write_data(start, data),
            (State::Data, None) => self.overlay.write_data(start, &vec![0; (end - start) as usize]),
            (State::Base | State::Zero, _) => {
                let mut block = self.load_block(b).await?;
                let block_start = self.overlay.block_span(b).0;
                let part = &mut block[(start - block_start) as usize..(end - block_start) as usize];
                match data {
                    Some(data) => part.copy_from_slice(data),
                    None => part.fill(0),
                }
                self.overlay.write_data(block_start, &block)?;
                self.overlay.set_state(b, b, State::Data);
                Ok(())
            }
        }
    }

    /// Zeroes a range: whole blocks become zero blocks, partial ones are
    /// patched.
    async fn zero(&self, offset: u64, length: u64) -> DeviceResult<()> {
        let end = self.end_of(offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let _locked = self.locks.lock(offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE).await;
        for piece in self.pieces(offset, end) {
            match piece {
                Piece::Partial { block, start, end } => self.patch_block(block, start, end, None).await?,
                Piece::Whole { first, last, .. } => self.overlay.set_state(first, last, State::Zero),
            }
        }
        Ok(())
    }

    /// Block status of the base for `start..end`, appended to `out`.
    /// Returns `false` when the base described less than the whole range
    /// (the caller then stops: extents must be contiguous).
    async fn base_extents(&self, start: u64, end: u64, out: &mut Vec<Extent>) -> DeviceResult<bool> {
        if !self.base_caps.extents {
            push_extent(out, end - start, AllocationFlags::empty());
            return Ok(true);
        }
        let list = match self.base.extents(start, end - start).await {
            Ok(list) => list,
            Err(e) if e.errno() == Errno::ENOTSUP => {
                vec![Extent { length: end - start, flags: AllocationFlags::empty() }]
            }
            Err(e) => return Err(e),
        };
        let mut at = start;
        for e in list {
            let n = e.length.min(end - at);
            if n > 0 {
                push_extent(out, n, e.flags);
                at += n;
            }
        }
        if at == start && out.is_empty() {
            // The base said nothing useful; data is always a safe answer.
            push_extent(out, end - start, AllocationFlags::empty());
            return Ok(true);
        }
        Ok(at == end)
    }
}

/// Appends an extent, merging it with the previous one of the same kind.
fn push_extent(out: &mut Vec<Extent>, length: u64, flags: AllocationFlags) {
    match out.last_mut() {
        Some(last) if last.flags == flags => last.length += length,
        _ => out.push(Extent { length, flags }),
    }
}

#[async_trait]
impl Device for CowLayer {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn caps(&self) -> Caps {
        let base = self.base_caps;
        let bs = base.block_size;
        // Writes of whole blocks avoid read-modify-write: prefer them.
        let preferred =
            if u64::from(bs.maximum) >= BLOCK_SIZE { bs.preferred.max(BLOCK_SIZE as u32) } else { bs.preferred };
        Caps {
            read_only: false,
            flush: true,
            fua: Support::Emulate,
            trim: true,
            zero: Support::Native,
            fast_zero: true,
            cache: if base.cache == Support::Native { Support::Native } else { Support::Emulate },
            multi_conn: true,
            rotational: base.rotational,
            extents: true,
            block_size: BlockSize { preferred, ..bs },
            immediate: false,
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let end = self.end_of(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        for run in self.overlay.runs(offset, end) {
            let part = &mut buf[(run.start - offset) as usize..(run.end - offset) as usize];
            match run.state {
                State::Base => self.base.read(run.start, part).await?,
                State::Data => self.overlay.read_data(run.start, part)?,
                State::Zero => part.fill(0),
            }
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        let end = self.end_of(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let _locked = self.locks.lock(offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE).await;
        for piece in self.pieces(offset, end) {
            match piece {
                Piece::Partial { block, start, end } => {
                    let part = &data[(start - offset) as usize..(end - offset) as usize];
                    self.patch_block(block, start, end, Some(part)).await?;
                }
                Piece::Whole { first, last, start, end } => {
                    self.overlay.write_data(start, &data[(start - offset) as usize..(end - offset) as usize])?;
                    self.overlay.set_state(first, last, State::Data);
                }
            }
        }
        Ok(())
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.overlay.flush().await
    }

    async fn trim(&self, offset: u64, length: u64, _fua: bool) -> DeviceResult<()> {
        self.zero(offset, length).await
    }

    async fn write_zeroes(&self, offset: u64, length: u64, _flags: ZeroFlags) -> DeviceResult<()> {
        self.zero(offset, length).await
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        self.base.cache(offset, length).await
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        // Bounded work per call: answering for less than asked is allowed.
        let end = offset.saturating_add(length.min(MAX_EXTENTS_SPAN)).min(self.base.size());
        if offset >= end {
            return Err(DeviceError::invalid("block status beyond the end of the device"));
        }
        let mut out = Vec::new();
        for run in self.overlay.runs(offset, end) {
            match run.state {
                State::Zero => {
                    push_extent(&mut out, run.end - run.start, AllocationFlags::HOLE | AllocationFlags::ZERO)
                }
                State::Data => push_extent(&mut out, run.end - run.start, AllocationFlags::empty()),
                State::Base => {
                    if !self.base_extents(run.start, run.end, &mut out).await? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}
