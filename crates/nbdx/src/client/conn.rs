//! One connection in transmission: requests are written under a lock by the
//! callers themselves; a reader task ([`super::reader`]) completes them from
//! the cookie table, in whatever order the server answers.
//!
//! A request is entered in the table before its header is written, so its
//! reply can never overtake the bookkeeping. Whatever kills the connection
//! (a protocol error, an I/O error, a timeout, a caller dropped half-way
//! through a write, the client being dropped) goes through [`Shared::kill`],
//! which fails every request in flight with the same error and stops the
//! reader: no waiter is left hanging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Buf;
use nbdx_proto::client::{Connected, PendingReply};
use nbdx_proto::{Cmd, CmdFlags, Extent, HeaderMode, ReplyMode, RequestHeader};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::error::{ClientError, ClientResult};
use super::target::{Stream, WriteHalf};

/// What a completed request yields.
#[derive(Debug)]
pub(crate) enum Done {
    /// No data.
    Ok,
    /// The data of a read.
    Data(Vec<u8>),
    /// Block status extents, per context id.
    Extents(Vec<(u32, Vec<Extent>)>),
}

/// A request in flight.
pub(crate) struct InFlight {
    pub reply: PendingReply,
    /// Destination of a read (its full length); empty otherwise.
    pub buf: Vec<u8>,
    pub tx: oneshot::Sender<ClientResult<Done>>,
}

impl InFlight {
    /// Sends the result to the waiter (who may have gone away).
    pub fn complete(mut self, result: ClientResult<()>) {
        let done = result.map(|()| match self.reply.cmd {
            Cmd::READ => Done::Data(std::mem::take(&mut self.buf)),
            Cmd::BLOCK_STATUS => Done::Extents(std::mem::take(&mut self.reply.extents)),
            _ => Done::Ok,
        });
        let _ = self.tx.send(done);
    }
}

enum State {
    Open,
    Closing,
    Dead(ClientError),
}

struct Table {
    map: HashMap<u64, InFlight>,
    next_cookie: u64,
    state: State,
}

/// State shared by the callers and the reader task.
pub(crate) struct Shared {
    table: Mutex<Table>,
    /// Requests registered and not yet completed.
    outstanding: watch::Sender<usize>,
    pub cancel: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(
        &self,
        reply: PendingReply,
        buf: Vec<u8>,
    ) -> ClientResult<(u64, oneshot::Receiver<ClientResult<Done>>)> {
        let mut t = self.lock();
        match &t.state {
            State::Open => {}
            State::Closing => return Err(ClientError::Closed),
            State::Dead(e) => return Err(e.clone()),
        }
        let cookie = t.next_cookie;
        t.next_cookie = t.next_cookie.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        t.map.insert(cookie, InFlight { reply, buf, tx });
        self.outstanding.send_modify(|n| *n += 1);
        Ok((cookie, rx))
    }

    /// Takes a request out of the table for the reader to work on.
    pub fn take(&self, cookie: u64) -> Option<InFlight> {
        self.lock().map.remove(&cookie)
    }

    /// Returns a request whose reply is not complete yet.
    pub fn put_back(&self, cookie: u64, f: InFlight) {
        self.lock().map.insert(cookie, f);
    }

    /// Completes a request taken with [`take`](Self::take).
    pub fn complete(&self, f: InFlight, result: ClientResult<()>) {
        f.complete(result);
        self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Whether a clean end of stream is expected now.
    pub fn closing_and_idle(&self) -> bool {
        matches!(self.lock().state, State::Closing) && *self.outstanding.borrow() == 0
    }

    /// Requests in flight.
    pub fn load(&self) -> usize {
        *self.outstanding.borrow()
    }

    /// Marks the connection dead (the first reason wins), fails every
    /// request in the table and stops the reader.
    pub fn kill(&self, error: ClientError) {
        let drained: Vec<InFlight> = {
            let mut t = self.lock();
            if !matches!(t.state, State::Dead(_)) {
                t.state = State::Dead(error);
            }
            t.map.drain().map(|(_, f)| f).collect()
        };
        let reason = self.death();
        for f in drained {
            let _ = f.tx.send(Err(reason.clone()));
        }
        self.outstanding.send_replace(0);
        self.cancel.cancel();
    }

    /// Why requests can no longer complete.
    pub fn death(&self) -> ClientError {
        match &self.lock().state {
            State::Dead(e) => e.clone(),
            _ => ClientError::Closed,
        }
    }
}

/// Waits for one request's reply.
pub(crate) struct Ticket {
    rx: oneshot::Receiver<ClientResult<Done>>,
    shared: Arc<Shared>,
    deadline: Option<(Instant, Duration)>,
}

impl Ticket {
    /// The result; past the deadline the connection is killed.
    pub async fn wait(self) -> ClientResult<Done> {
        let received = match self.deadline {
            None => self.rx.await,
            Some((at, after)) => match timeout_at(at, self.rx).await {
                Ok(r) => r,
                Err(_) => {
                    let e = ClientError::Timeout { waiting_for: "a reply from the server", after };
                    self.shared.kill(e.clone());
                    return Err(e);
                }
            },
        };
        received.unwrap_or_else(|_| Err(self.shared.death()))
    }
}

/// Takes a registered request back out of the table if its caller goes
/// away before the request was written: it will never be answered.
struct Unsent<'a> {
    shared: &'a Shared,
    cookie: Option<u64>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.cookie.and_then(|c| self.shared.take(c)) {
            self.shared.complete(f, Err(ClientError::Closed));
        }
    }
}

/// Kills the connection if a write is abandoned half-way (the caller's
/// future was dropped): the stream would otherwise be out of frame.
struct WriteGuard<'a>(Option<&'a Shared>);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.kill(ClientError::Closed);
        }
    }
}

/// One connection in transmission.
pub(crate) struct Conn {
    pub shared: Arc<Shared>,
    writer: tokio::sync::Mutex<WriteHalf>,
    reader: Mutex<Option<JoinHandle<()>>>,
    pub mode: ReplyMode,
    contexts: Vec<u32>,
    /// Id of `base:allocation` on this connection, if selected.
    pub base_allocation: Option<u32>,
    request_timeout: Option<Duration>,
}

impl Conn {
    /// Starts transmission on a negotiated stream (spawns the reader task).
    pub fn start(stream: Stream, connected: &Connected, request_timeout: Option<Duration>) -> Self {
        let mode = connected.mode;
        let (read, write) = stream.split();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table { map: HashMap::new(), next_cookie: 1, state: State::Open }),
            outstanding: watch::channel(0).0,
            cancel: CancellationToken::new(),
        });
        let reader = tokio::spawn(super::reader::run(super::reader::Owner(shared.clone()), read, mode));
        Self {
            shared,
            writer: tokio::sync::Mutex::new(write),
            reader: Mutex::new(Some(reader)),
            mode,
            contexts: connected.meta_contexts.iter().map(|(id, _)| *id).collect(),
            base_allocation: connected.base_allocation_id(),
            request_timeout,
        }
    }

    /// Registers and sends one request (already validated); the returned
    /// ticket waits for its reply. `buf` is the read destination.
    pub async fn submit(
        &self,
        cmd: Cmd,
        mut flags: CmdFlags,
        offset: u64,
        length: u64,
        payload: &[u8],
        buf: Vec<u8>,
    ) -> ClientResult<Ticket> {
        let header_mode = self.mode.header_mode();
        if header_mode == HeaderMode::Extended && !payload.is_empty() {
            flags |= CmdFlags::PAYLOAD_LEN;
        }
        let contexts = if cmd == Cmd::BLOCK_STATUS { self.contexts.as_slice() } else { &[] };
        let reply = PendingReply::new(cmd, offset, length, flags, self.mode, contexts);
        let (cookie, rx) = self.shared.register(reply, buf)?;
        let mut unsent = Unsent { shared: &self.shared, cookie: Some(cookie) };
        let header = RequestHeader { flags, cmd, cookie, offset, length };
        self.write(header_mode, header, payload).await?;
        unsent.cookie = None;
        let deadline = self.request_timeout.map(|t| (Instant::now() + t, t));
        Ok(Ticket { rx, shared: self.shared.clone(), deadline })
    }

    async fn write(&self, mode: HeaderMode, header: RequestHeader, payload: &[u8]) -> ClientResult<()> {
        let mut head = [0u8; RequestHeader::EXTENDED_LEN];
        let len = RequestHeader::len(mode);
        header.encode(mode, &mut &mut head[..len]);
        let mut w = self.writer.lock().await;
        if self.shared.cancel.is_cancelled() {
            return Err(self.shared.death());
        }
        let mut guard = WriteGuard(Some(&self.shared));
        let mut bufs = (&head[..len]).chain(payload);
        let written = async {
            w.write_all_buf(&mut bufs).await?;
            w.flush().await
        };
        let result = tokio::select! {
            r = written => r.map_err(ClientError::io),
            () = self.shared.cancel.cancelled() => Err(self.shared.death()),
        };
        guard.0 = None;
        if let Err(e) = &result {
            self.shared.kill(e.clone());
        }
        result
    }

    /// `NBD_CMD_DISC` once the requests in flight are answered (bounded by
    /// `timeout`), then waits for the server to close.
    pub async fn disconnect(&self, timeout: Duration) {
        {
            let mut t = self.shared.lock();
            if matches!(t.state, State::Open) {
                t.state = State::Closing;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut idle = self.shared.outstanding.subscribe();
        let _ = timeout_at(deadline, idle.wait_for(|n| *n == 0)).await;
        if !self.shared.cancel.is_cancelled() {
            let disc = RequestHeader { flags: CmdFlags::empty(), cmd: Cmd::DISC, cookie: 0, offset: 0, length: 0 };
            if self.write(self.mode.header_mode(), disc, &[]).await.is_ok() {
                let _ = timeout_at(deadline, async { self.writer.lock().await.shutdown().await }).await;
                let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(r) = reader {
                    let _ = timeout_at(deadline, r).await;
                }
            }
        }
        self.shared.kill(ClientError::Closed);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.kill(ClientError::Closed);
    }
}
