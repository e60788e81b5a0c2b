//! The reader task of a connection: decodes reply headers, finds the
//! request by cookie and lets [`PendingReply`](nbdx_proto::client::PendingReply)
//! check every chunk. Read data goes from the socket straight into the
//! request's buffer, at the range the core returns; holes are zero-filled.
//!
//! Anything the server gets wrong ends the connection: the request being
//! processed fails with the error, then [`Shared::kill`] fails the rest.
//! Nothing is allocated from a length the server claims before the core
//! has checked it against the request or a limit.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use nbdx_proto::client::ChunkOutcome;
use nbdx_proto::codec::reply::ChunkHeader;
use nbdx_proto::{Cmd, ProtocolError, ReplyHeader, ReplyMode};
use tokio::io::AsyncReadExt;

use super::conn::{InFlight, Shared};
use super::error::{ClientError, ClientResult};
use super::target::ReadHalf;

/// Read-ahead for headers and small payloads. Small on purpose: the bytes
/// of a data payload that arrive with a header are copied out of this
/// buffer, the rest go straight into the request's buffer; 16 KiB still
/// holds hundreds of write replies per read.
const READ_AHEAD: usize = 16 * 1024;

/// Buffered reads that can also land in a caller's buffer directly.
struct FrameReader {
    inner: ReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    /// The next reply header, or `None` at a clean end of stream.
    async fn header(&mut self, mode: ReplyMode) -> ClientResult<Option<ReplyHeader>> {
        loop {
            if let Some((h, n)) = ReplyHeader::decode(mode, &self.buf)? {
                self.buf.advance(n);
                return Ok(Some(h));
            }
            if self.fill().await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(ClientError::Disconnected(" in the middle of a reply")),
                };
            }
        }
    }

    async fn fill(&mut self) -> ClientResult<usize> {
        self.buf.reserve(READ_AHEAD);
        self.inner.read_buf(&mut self.buf).await.map_err(ClientError::io)
    }

    /// Fills `dst`: buffered bytes first, then straight from the socket.
    async fn read_exact(&mut self, dst: &mut [u8]) -> ClientResult<()> {
        let n = dst.len().min(self.buf.len());
        self.buf.copy_to_slice(&mut dst[..n]);
        if n < dst.len() {
            self.inner.read_exact(&mut dst[n..]).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => ClientError::Disconnected(" in the middle of a reply"),
                _ => ClientError::io(e),
            })?;
        }
        Ok(())
    }
}

/// Runs until the connection ends; a clean end only after `NBD_CMD_DISC`.
/// `owner` kills the connection when the task ends, also when a runtime
/// drops the task, polled or not: nobody else would answer.
pub(crate) async fn run(owner: Owner, read: ReadHalf, mode: ReplyMode) {
    let shared = &owner.0;
    let mut reader = FrameReader { inner: read, buf: BytesMut::with_capacity(READ_AHEAD) };
    let result = tokio::select! {
        r = read_loop(shared, &mut reader, mode) => r,
        () = shared.cancel.cancelled() => return,
    };
    match result {
        Ok(()) => shared.kill(ClientError::Closed),
        Err(e) => {
            tracing::debug!(error = %e, "connection failed");
            shared.kill(e);
        }
    }
}

/// The reader task's hold on the connection.
pub(crate) struct Owner(pub Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.kill(ClientError::Closed);
    }
}

async fn read_loop(shared: &Shared, r: &mut FrameReader, mode: ReplyMode) -> ClientResult<()> {
    loop {
        let Some(header) = r.header(mode).await? else {
            return match shared.closing_and_idle() {
                true => Ok(()),
                false => Err(ClientError::Disconnected("")),
            };
        };
        let cookie = match header {
            ReplyHeader::Simple(s) => s.cookie,
            ReplyHeader::Chunk(c) => c.cookie,
        };
        let mut f = shared.take(cookie).ok_or(ProtocolError::UnknownCookie(cookie))?;
        let step = match header {
            ReplyHeader::Simple(s) => simple(r, &mut f, s.error).await.map(Some),
            ReplyHeader::Chunk(h) => chunk(r, &mut f, &h).await,
        };
        match step {
            Ok(Some(result)) => {
                let data = f.reply.cmd == Cmd::READ;
                shared.complete(f, result);
                if data {
                    tokio::task::yield_now().await;
                }
            }
            Ok(None) => shared.put_back(cookie, f),
            Err(e) => {
                shared.complete(f, Err(e.clone()));
                return Err(e);
            }
        }
    }
}

/// A simple reply: the request's result (read data follows a good read).
async fn simple(r: &mut FrameReader, f: &mut InFlight, error: u32) -> ClientResult<ClientResult<()>> {
    match f.reply.simple(error)? {
        Ok(()) => {
            if f.reply.cmd == Cmd::READ {
                r.read_exact(&mut f.buf).await?;
            }
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(e.into())),
    }
}

/// One chunk; `Some(result)` once the chunk flagged done has arrived.
async fn chunk(r: &mut FrameReader, f: &mut InFlight, h: &ChunkHeader) -> ClientResult<Option<ClientResult<()>>> {
    match f.reply.chunk_payload(h)? {
        ChunkOutcome::Data { len } => {
            let mut at = [0u8; 8];
            r.read_exact(&mut at).await?;
            let range = f.reply.data(u64::from_be_bytes(at), len)?;
            r.read_exact(&mut f.buf[range]).await?;
        }
        ChunkOutcome::Payload { len } => {
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await?;
            if let Some(hole) = f.reply.payload(h, &payload)? {
                f.buf[hole].fill(0);
            }
        }
    }
    if !h.done() {
        return Ok(None);
    }
    Ok(Some(f.reply.finish()?.map_err(ClientError::from)))
}
