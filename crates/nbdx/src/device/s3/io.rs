//! The [`Device`] operations of [`S3Device`]: requests split into chunk pieces that run
//! concurrently.

use async_trait::async_trait;
use futures::future::{join_all, try_join_all};
use nbdx_proto::AllocationFlags;

use super::background::{fetch_into_cache, is_sequential, read_ahead};
use super::cache::lock;
use super::S3Device;
use crate::device::{Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};

/// Small reads fetch the aligned window around them: a ranged GET of a few KiB costs the
/// store about as much as one of 256 KiB, and Garage (2.5.0, on Linux) answers small ranges
/// about 40 ms late (delayed ACK against a small second write), larger ones in a few ms.
const RANGE_WINDOW: usize = 256 << 10;

/// One chunk's share of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    index: u64,
    /// Offset within the chunk.
    within: usize,
    len: usize,
    /// Offset within the request.
    at: usize,
}

fn pieces(object_size: usize, offset: u64, len: u64) -> impl Iterator<Item = Piece> {
    let os = object_size as u64;
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let within = pos % os;
            let n = (os - within).min(end - pos);
            let piece =
                Piece { index: pos / os, within: within as usize, len: n as usize, at: (pos - offset) as usize };
            pos += n;
            piece
        })
    })
}

impl S3Device {
    fn writable(&self) -> DeviceResult<()> {
        if self.read_only {
            return Err(DeviceError::read_only());
        }
        Ok(())
    }

    async fn read_piece(&self, p: Piece, buf: &mut [u8], whole: bool) -> DeviceResult<()> {
        let chunks = &self.chunks;
        let entry = chunks.entry(p.index);
        let mut state = entry.state.lock().await;
        if let Some(data) = &state.data {
            buf.copy_from_slice(&data[p.within..p.within + p.len]);
            return Ok(());
        }
        if !chunks.is_allocated(p.index) {
            buf.fill(0);
            return Ok(());
        }
        // Sequential readers take whole chunks (evicting clean ones); random readers only
        // while the cache has room, then aligned windows.
        let permit = if whole { chunks.buffer(false).await } else { chunks.free_buffer() };
        {
            if let Some(permit) = permit {
                let data = chunks.fetch(p.index).await?;
                buf.copy_from_slice(&data[p.within..p.within + p.len]);
                chunks.cache_clean(p.index, &mut state, data, permit);
                return Ok(());
            }
        }
        drop(state);
        let _request = chunks.requests.acquire().await.map_err(|_| DeviceError::io("shutting down"))?;
        let os = chunks.object_size;
        let window = RANGE_WINDOW.min(os);
        let start = p.within / window * window;
        let end = (p.within + p.len).div_ceil(window) * window;
        match chunks.store.get_chunk_range(p.index, start as u64..end.min(os) as u64).await? {
            Some(data) => buf.copy_from_slice(&data[p.within - start..p.within - start + p.len]),
            None => buf.fill(0),
        }
        Ok(())
    }

    /// Stores the given chunks (for FUA).
    async fn store_now(&self, indices: impl Iterator<Item = u64>) -> DeviceResult<()> {
        try_join_all(indices.map(|i| self.chunks.write_back(i))).await.map(drop)
    }

    /// Stores every chunk dirty now.
    pub(super) async fn flush_all(&self) -> DeviceResult<()> {
        let dirty: Vec<u64> = lock(&self.chunks.dirty).keys().copied().collect();
        let results = join_all(dirty.iter().map(|&i| self.chunks.write_back(i))).await;
        let failed: Vec<&DeviceError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        match failed.first() {
            None => Ok(()),
            Some(first) => {
                Err(DeviceError::io(format!("flush: {} of {} chunks not stored: {first}", failed.len(), dirty.len())))
            }
        }
    }

    async fn zero_or_trim(
        &self,
        offset: u64,
        length: u64,
        write_partial: bool,
        fua: bool,
        no_hole: bool,
    ) -> DeviceResult<()> {
        self.writable()?;
        let os = self.chunks.object_size;
        let work = pieces(os, offset, length).map(|p| async move {
            if p.len == os && !no_hole {
                self.chunks.discard(p.index).await?;
            } else if write_partial && (no_hole || self.chunks.is_allocated(p.index)) {
                self.chunks.write(p.index, p.within, None, p.len).await?;
                if fua {
                    self.chunks.write_back(p.index).await?;
                }
            }
            Ok::<_, DeviceError>(())
        });
        try_join_all(work).await.map(drop)
    }
}

#[async_trait]
impl Device for S3Device {
    fn size(&self) -> u64 {
        self.manifest.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: self.read_only,
            flush: true,
            fua: Support::Native,
            trim: true,
            zero: Support::Native,
            fast_zero: true,
            cache: Support::Native,
            // One cache serves every connection: a flush on one covers writes from all.
            multi_conn: true,
            extents: true,
            ..Caps::default()
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let whole = is_sequential(&self.chunks, offset, buf.len() as u64);
        let mut parts = Vec::new();
        let mut rest = buf;
        let mut last = None;
        for p in pieces(self.chunks.object_size, offset, rest.len() as u64) {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(p.len);
            rest = tail;
            last = Some(p.index);
            parts.push(self.read_piece(p, piece, whole));
        }
        try_join_all(parts).await?;
        if let (true, Some(index)) = (whole && self.read_ahead > 0, last) {
            read_ahead(&self.chunks, index, self.read_ahead);
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.writable()?;
        let list: Vec<Piece> = pieces(self.chunks.object_size, offset, data.len() as u64).collect();
        let work = list.iter().map(|p| self.chunks.write(p.index, p.within, Some(&data[p.at..p.at + p.len]), p.len));
        try_join_all(work).await?;
        if fua {
            self.store_now(list.iter().map(|p| p.index)).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.writable()?;
        self.flush_all().await
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        // A trim is a hint: partial chunks are left as they are; whole ones are deleted.
        self.zero_or_trim(offset, length, false, fua, false).await
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.zero_or_trim(offset, length, true, flags.fua, flags.no_hole).await
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        let work = pieces(self.chunks.object_size, offset, length).map(|p| fetch_into_cache(&self.chunks, p.index));
        join_all(work).await;
        Ok(())
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        let end = offset.saturating_add(length).min(self.manifest.size);
        let mut out: Vec<Extent> = Vec::new();
        for p in pieces(self.chunks.object_size, offset, end.saturating_sub(offset)) {
            let flags = match self.chunks.is_allocated(p.index) {
                true => AllocationFlags::empty(),
                false => AllocationFlags::HOLE | AllocationFlags::ZERO,
            };
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += p.len as u64,
                _ => out.push(Extent { length: p.len as u64, flags }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_split_at_chunk_boundaries_with_offsets_into_the_buffer() {
        let got: Vec<Piece> = pieces(4096, 4000, 5000).collect();
        assert_eq!(
            got,
            vec![
                Piece { index: 0, within: 4000, len: 96, at: 0 },
                Piece { index: 1, within: 0, len: 4096, at: 96 },
                Piece { index: 2, within: 0, len: 808, at: 4192 },
            ]
        );
        assert_eq!(pieces(4096, 8192, 0).count(), 0);
    }
}
