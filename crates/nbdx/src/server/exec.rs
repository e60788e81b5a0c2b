//! Running one validated command against the device, emulating what the
//! device supports only at [`Support::Emulate`], and encoding the reply.

use std::sync::Arc;

use bytes::BytesMut;
use nbdx_proto::server::{Command, TransmissionContext};
use nbdx_proto::{Errno, RequestHeader};

use super::pool::{Buf, BufferPool};
use super::writer::Reply;
use crate::device::{Caps, Device, DeviceError, DeviceResult, Support, ZeroFlags};

/// Zeroes written per call when zeroing is emulated, and the largest
/// chunk read when caching is emulated.
const EMULATION_CHUNK: usize = 1 << 20;

static ZEROES: [u8; EMULATION_CHUNK] = [0; EMULATION_CHUNK];

/// What a connection needs to run commands.
pub(crate) struct Executor {
    pub(crate) device: Arc<dyn Device>,
    pub(crate) caps: Caps,
    pub(crate) ctx: TransmissionContext,
    pub(crate) pool: Arc<BufferPool>,
}

impl Executor {
    /// Bytes of memory `cmd` will hold for its reply beyond the fixed-size
    /// header (read data, block status extents, an emulated cache's scratch
    /// buffer): reserved from the budget before the command starts.
    pub(crate) fn reply_budget(&self, header: &RequestHeader, cmd: &Command) -> usize {
        match *cmd {
            Command::Read { length, .. } => length as usize,
            Command::BlockStatus { .. } => self.ctx.block_status_reply_bound(header),
            Command::Cache { length, .. } if self.caps.cache != Support::Native => {
                EMULATION_CHUNK.min(length.max(1) as usize)
            }
            _ => 0,
        }
    }

    /// Runs `cmd` (with its write payload, if any) and returns the reply.
    pub(crate) async fn run(&self, header: RequestHeader, cmd: Command, payload: Option<Buf>) -> Reply {
        let mut out = BytesMut::with_capacity(64);
        match self.execute(&header, cmd, payload, &mut out).await {
            Ok(Some(data)) => Reply::with_data(out, data),
            Ok(None) => Reply::header(out),
            Err(e) => {
                tracing::debug!(cookie = header.cookie, cmd = %header.cmd, error = %e, "request failed");
                out.clear();
                // "The server SHOULD NOT return NBD_ENOTSUP except as
                // documented in response to NBD_CMD_WRITE_ZEROES when
                // NBD_CMD_FLAG_FAST_ZERO is supported."
                let fast_zero = matches!(cmd, Command::WriteZeroes { fast: true, .. });
                let errno = if e.errno() == Errno::ENOTSUP && !fast_zero { Errno::EINVAL } else { e.errno() };
                self.ctx.encode_error(&header, errno, e.message(), &mut out);
                Reply::header(out)
            }
        }
    }

    async fn execute(
        &self,
        h: &RequestHeader,
        cmd: Command,
        payload: Option<Buf>,
        out: &mut BytesMut,
    ) -> DeviceResult<Option<Buf>> {
        let dev = &*self.device;
        match cmd {
            Command::Read { offset, length, .. } => {
                let mut buf = self.pool.get(length as usize);
                dev.read(offset, &mut buf).await?;
                self.ctx.encode_read_header(h, u64::from(length), out);
                return Ok(Some(buf));
            }
            // "the behavior of a server on such a request is unspecified
            // although the server SHOULD NOT disconnect": nothing to write,
            // but FUA still means what was written before is persisted.
            Command::Write { length: 0, fua, .. } => {
                if fua && self.caps.flush {
                    dev.flush().await?;
                }
            }
            Command::Write { offset, fua, .. } => {
                let data = payload.ok_or_else(|| DeviceError::io("write payload missing"))?;
                dev.write(offset, &data, fua && self.caps.fua == Support::Native).await?;
                self.emulated_fua(fua).await?;
            }
            Command::Flush => dev.flush().await?,
            Command::Trim { offset, length, fua } => {
                dev.trim(offset, length, fua && self.caps.fua == Support::Native).await?;
                self.emulated_fua(fua).await?;
            }
            Command::WriteZeroes { offset, length, fua, no_hole, fast } => {
                self.zero(offset, length, fua, no_hole, fast).await?;
                self.emulated_fua(fua).await?;
            }
            Command::Cache { offset, length } => self.cache(offset, length).await?,
            Command::BlockStatus { offset, length, .. } => {
                let extents = self.extents(offset, length).await?;
                self.ctx.encode_block_status(h, &extents, out);
                return Ok(None);
            }
            Command::Disconnect => return Err(DeviceError::invalid("disconnect is not executed")),
        }
        self.ctx.encode_ok(h, out);
        Ok(None)
    }

    async fn emulated_fua(&self, fua: bool) -> DeviceResult<()> {
        if fua && self.caps.fua == Support::Emulate {
            self.device.flush().await?;
        }
        Ok(())
    }

    async fn zero(&self, offset: u64, length: u64, fua: bool, no_hole: bool, fast: bool) -> DeviceResult<()> {
        match self.caps.zero {
            Support::Native if !fast || self.caps.fast_zero => {
                let flags = ZeroFlags { fua: fua && self.caps.fua == Support::Native, no_hole, fast };
                self.device.write_zeroes(offset, length, flags).await
            }
            // "MUST fail quickly with NBD_ENOTSUP unless the request can be
            // serviced in less time than a corresponding NBD_CMD_WRITE"
            _ if fast => Err(DeviceError::new(Errno::ENOTSUP, "zeroing is not faster than writing")),
            _ => {
                let mut at = offset;
                let end = offset + length;
                while at < end {
                    let n = (end - at).min(EMULATION_CHUNK as u64) as usize;
                    self.device.write(at, &ZEROES[..n], false).await?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        match self.caps.cache {
            Support::Native => self.device.cache(offset, length).await,
            _ => {
                let mut scratch = self.pool.get(EMULATION_CHUNK.min(length.max(1) as usize));
                let mut at = offset;
                let end = offset + length;
                while at < end {
                    let n = (end - at).min(scratch.len() as u64) as usize;
                    self.device.read(at, &mut scratch[..n]).await?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<(u64, u32)>> {
        if !self.caps.extents {
            // "a server MAY always safely report a status of 0 for any block"
            return Ok(vec![(length, 0)]);
        }
        match self.device.extents(offset, length).await {
            Ok(list) => Ok(list.into_iter().map(|e| (e.length, e.flags.bits())).collect()),
            // The spec lets a server answer a non-usage error with a single
            // descriptor covering the request; it beats failing a mapping.
            Err(e) if e.errno() == Errno::ENOTSUP => Ok(vec![(length, 0)]),
            Err(e) => Err(e),
        }
    }
}
