//! The transmission phase of one connection: a reader that classifies
//! requests and starts them, tasks that run them concurrently, and the
//! single writer that sends their replies as they complete.
//!
//! ```text
//!  socket ─► FrameReader ─► classify ─► (payload → pooled Buf) ─► spawn(Executor::run) ─┐
//!              ▲   budget + in-flight slot acquired before reading/allocating           │
//!              └─ stops reading when either runs out (back-pressure)                    ▼
//!  socket ◄─────────────────────────── writer::run (batched, vectored) ◄──── mpsc<Reply>
//! ```

use std::sync::Arc;

use bytes::BytesMut;
use nbdx_proto::server::{Command, Negotiated, PayloadAction};
use nbdx_proto::{Errno, ProtocolError, RequestHeader};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::exec::Executor;
use super::io::{FrameReader, Stream};
use super::pool::Budget;
use super::writer::{self, Reply};
use super::{ConnectionError, Inner};
use crate::Export;

/// Why the reader stopped.
enum End {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection.
    Eof,
    /// Lame-duck shutdown finished or its grace period ran out.
    Shutdown,
    /// The peer broke framing or limits.
    Protocol(ProtocolError),
    /// Reading failed (reset, stall timeout).
    Io(std::io::Error),
    /// The writer gave up (the peer stopped reading replies): its error is
    /// the connection's.
    WriterGone,
}

/// Serves requests until the client disconnects, the connection fails or
/// the server shuts down. In-flight requests always finish and the device
/// is flushed before the connection closes.
pub(crate) async fn run<S: Stream>(
    inner: &Inner,
    stream: S,
    leftover: BytesMut,
    negotiated: Negotiated,
    export: &Export,
) -> Result<(), ConnectionError> {
    let opts = &inner.options;
    let mut ctx = negotiated.transmission();
    ctx.max_discard_payload = inner.config.limits.max_discard_payload;
    let mode = ctx.header_mode();
    let device = export.device().clone();
    let caps = device.caps();
    let exec = Arc::new(Executor { device: device.clone(), caps, ctx: ctx.clone(), pool: inner.pool.clone() });
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd, leftover, opts.stall_timeout);
    let (tx, rx) = mpsc::channel::<Reply>(opts.max_in_flight + 16);
    let writer = tokio::spawn(writer::run(wr, rx, opts.stall_timeout));
    let slots = Arc::new(Semaphore::new(opts.max_in_flight));
    let budget = Budget::new(opts.connection_budget, inner.global_budget.clone());
    let all_slots = opts.max_in_flight as u32;

    let mut lame_duck: Option<Instant> = None;
    let end = loop {
        let raw = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled(), if lame_duck.is_none() => {
                lame_duck = Some(Instant::now() + opts.grace_period);
                continue;
            }
            _ = async { drop(slots.acquire_many(all_slots).await) }, if lame_duck.is_some() && reader.buffered() == 0 => {
                break End::Shutdown;
            }
            _ = tokio::time::sleep_until(lame_duck.unwrap_or_else(Instant::now)), if lame_duck.is_some() => {
                break End::Shutdown;
            }
            // A client that stopped reading its replies is gone for good,
            // even if it now sits idle.
            _ = tx.closed() => break End::WriterGone,
            h = reader.header(RequestHeader::len(mode)) => h,
        };
        let raw = match raw {
            Ok(Some(raw)) => raw,
            Ok(None) => break End::Eof,
            Err(e) => break End::Io(e),
        };
        let header = match RequestHeader::decode(mode, &raw) {
            Ok(h) => h,
            // A bad magic means framing is lost: the stream must be closed.
            Err(e) => break End::Protocol(e),
        };
        let incoming = ctx.classify(header);
        tracing::debug!(cookie = header.cookie, cmd = %header.cmd, flags = ?header.flags, offset = header.offset, length = header.length, "request");
        let verdict = match (incoming.verdict, lame_duck.is_some()) {
            (Ok(Command::Disconnect), _) => break End::Disconnect,
            (Ok(_), true) => Err(Errno::ESHUTDOWN),
            (v, false) => v,
            (Err(e), true) => Err(e),
        };
        // Every request holds an in-flight slot until its reply is written.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break End::Shutdown;
        };
        let mut payload = None;
        let mut permit = None;
        let discard = match (incoming.payload, &verdict) {
            (PayloadAction::None, _) => 0,
            (PayloadAction::Close, _) => {
                break End::Protocol(ProtocolError::PayloadTooLarge { cmd: header.cmd, len: header.length })
            }
            (PayloadAction::Discard(n), _) => n,
            // A valid write refused only because the server is shutting down.
            (PayloadAction::Read(n), Err(_)) => u64::from(n),
            (PayloadAction::Read(n), Ok(_)) => {
                permit = Some(budget.acquire(n as usize).await);
                let mut buf = inner.pool.get(n as usize);
                if let Err(e) = reader.read_exact(&mut buf).await {
                    break End::Io(e);
                }
                payload = Some(buf);
                0
            }
        };
        if discard > 0 {
            if let Err(e) = reader.discard(discard).await {
                break End::Io(e);
            }
        }
        match verdict {
            Err(errno) => {
                let mut out = BytesMut::with_capacity(64);
                let message = if errno == Errno::ESHUTDOWN { "server is shutting down" } else { "request refused" };
                ctx.encode_error(&header, errno, message, &mut out);
                if tx.send(Reply::header(out).hold(None, Some(slot))).await.is_err() {
                    break End::Io(std::io::ErrorKind::BrokenPipe.into());
                }
            }
            Ok(cmd) => {
                let need = exec.reply_budget(&header, &cmd);
                if need > 0 {
                    permit = Some(budget.acquire(need).await);
                }
                if caps.immediate {
                    // In-memory devices: no task hand-off per request.
                    let reply = exec.run(header, cmd, payload).await;
                    if tx.send(reply.hold(permit, Some(slot))).await.is_err() {
                        break End::Io(std::io::ErrorKind::BrokenPipe.into());
                    }
                    continue;
                }
                let exec = exec.clone();
                let tx = tx.clone();
                tokio::spawn(
                    async move {
                        let reply = exec.run(header, cmd, payload).await;
                        // If the writer is gone the connection is closing anyway.
                        let _ = tx.send(reply.hold(permit, Some(slot))).await;
                    }
                    .in_current_span(),
                );
            }
        }
    };

    // Finish what was started, make it durable, then close.
    drop(slots.acquire_many(all_slots).await);
    if caps.flush && !export.is_read_only() {
        if let Err(e) = device.flush().await {
            tracing::warn!(error = %e, "flush at disconnect failed");
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
    match end {
        End::Disconnect | End::Eof | End::Shutdown | End::WriterGone => written.map_err(ConnectionError::Io),
        End::Protocol(e) => Err(ConnectionError::Protocol(e)),
        End::Io(e) => Err(ConnectionError::Io(e)),
    }
}
