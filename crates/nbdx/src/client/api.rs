//! [`Client`]: the operations of the transmission phase, over one
//! connection or several ([`MultiConn`](super::MultiConn)).
//!
//! Every call is validated against what the server advertised before
//! anything is sent, then split into requests of at most the maximum
//! payload, cut on preferred-block boundaries. Up to [`WINDOW`] requests of
//! one call (and at most [`READ_WINDOW_BYTES`] of read buffers) are in
//! flight at once; any number of calls may run concurrently (the client is
//! `Clone`, and `&self` methods).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdx_proto::client::Connected;
use nbdx_proto::{AllocationFlags, Cmd, CmdFlags, ProtocolError, ReplyMode};

use super::conn::{Conn, Done, Ticket};
use super::error::{ClientError, ClientResult};
use super::info::ExportInfo;
use super::negotiate::Negotiation;
use super::options::ClientOptions;
use super::rules::Rules;
use super::target::{Stream, Target};
use crate::device::{Extent, ZeroFlags};
use crate::uri::NbdUri;

/// Requests of one call in flight at once.
pub const WINDOW: usize = 16;

/// Read buffers one call may have in flight.
pub const READ_WINDOW_BYTES: u64 = 128 << 20;

/// A connected NBD client. Cloning is cheap and shares the connections;
/// dropping the last clone closes them (without `NBD_CMD_DISC`: call
/// [`disconnect`](Self::disconnect) for a clean close).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Vec<Conn>,
    info: ExportInfo,
    rules: Rules,
    next: AtomicUsize,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("info", &self.inner.info).field("connections", &self.connections()).finish()
    }
}

/// Why `NBD_CMD_BLOCK_STATUS` cannot be used on a connection, if it cannot.
fn block_status_support(c: &Connected) -> Result<(), &'static str> {
    if c.mode == ReplyMode::Simple {
        Err("block status needs structured replies, which were not negotiated")
    } else if c.base_allocation_id().is_none() {
        Err("block status: the server did not select the base:allocation context")
    } else {
        Ok(())
    }
}

impl Client {
    /// Connects to `target` and opens the export named in `opts`.
    pub async fn connect(target: &Target, opts: &ClientOptions) -> ClientResult<Self> {
        Negotiation::start(target, opts).await?.go().await
    }

    /// Connects to an NBD URI with default options.
    pub async fn connect_uri(uri: &str) -> ClientResult<Self> {
        let uri = NbdUri::parse(uri)?;
        Self::connect(&uri.target, &ClientOptions::from_uri(&uri)).await
    }

    pub(crate) fn from_stream(stream: Stream, info: ExportInfo, connected: &Connected, opts: &ClientOptions) -> Self {
        let conn = Conn::start(stream, connected, opts.request_timeout);
        Self::from_conns(vec![conn], info, block_status_support(connected), opts)
    }

    pub(crate) fn from_conns(
        conns: Vec<Conn>,
        info: ExportInfo,
        block_status: Result<(), &'static str>,
        opts: &ClientOptions,
    ) -> Self {
        let rules = Rules::new(&info, block_status, opts.max_request);
        Self { inner: Arc::new(Inner { conns, info, rules, next: AtomicUsize::new(0), timeout: opts.timeout }) }
    }

    /// Takes the connections of several single-connection clients (all to
    /// the same export; the first one's description is kept).
    pub(crate) fn merge(clients: Vec<Client>, opts: &ClientOptions) -> ClientResult<Self> {
        let mut conns = Vec::with_capacity(clients.len());
        let mut first: Option<(ExportInfo, Rules)> = None;
        for c in clients {
            let inner = Arc::try_unwrap(c.inner).map_err(|_| ClientError::Closed)?;
            if let Some((_, rules)) = &first {
                if *rules != inner.rules {
                    return Err(
                        ProtocolError::Violation("connections to one export disagree on its size or flags").into()
                    );
                }
            }
            first.get_or_insert((inner.info, inner.rules));
            conns.extend(inner.conns);
        }
        let (info, rules) = first.ok_or(ClientError::Closed)?;
        Ok(Self { inner: Arc::new(Inner { conns, info, rules, next: AtomicUsize::new(0), timeout: opts.timeout }) })
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    /// Number of connections.
    pub fn connections(&self) -> usize {
        self.inner.conns.len()
    }

    /// Requests in flight, over all connections.
    pub fn in_flight(&self) -> usize {
        self.inner.conns.iter().map(|c| c.shared.load()).sum()
    }

    /// Whether [`block_status`](Self::block_status) can be used.
    pub fn can_block_status(&self) -> bool {
        self.inner.rules.check_range(Cmd::BLOCK_STATUS, CmdFlags::empty(), 0, 0).is_ok()
    }

    /// Whether extended headers are in use.
    pub fn extended_headers(&self) -> bool {
        self.inner.info.mode == ReplyMode::Extended
    }

    /// The least loaded connection, ties broken round-robin.
    fn pick(&self) -> &Conn {
        let conns = &self.inner.conns;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..conns.len()).map(|i| &conns[(start + i) % conns.len()]).min_by_key(|c| c.shared.load()).unwrap_or(&conns[0])
    }

    /// Sends the pieces of one call with at most [`WINDOW`] in flight,
    /// handing each result to `done` in order.
    async fn pipeline<'d>(
        &self,
        cmd: Cmd,
        flags: CmdFlags,
        pieces: impl Iterator<Item = (u64, u64)>,
        payload: impl Fn(u64, u64) -> &'d [u8],
        mut done: impl FnMut(u64, Done),
    ) -> ClientResult<()> {
        let limit = match cmd {
            Cmd::READ => (READ_WINDOW_BYTES / self.inner.rules.max_payload).clamp(2, WINDOW as u64) as usize,
            _ => WINDOW,
        };
        let mut window: VecDeque<(u64, Ticket)> = VecDeque::with_capacity(limit);
        for (offset, len) in pieces {
            if window.len() == limit {
                if let Some((at, t)) = window.pop_front() {
                    done(at, t.wait().await?);
                }
            }
            let buf = if cmd == Cmd::READ { vec![0u8; len as usize] } else { Vec::new() };
            let t = self.pick().submit(cmd, flags, offset, len, payload(offset, len), buf).await?;
            window.push_back((offset, t));
        }
        while let Some((at, t)) = window.pop_front() {
            done(at, t.wait().await?);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (`NBD_CMD_READ`; holes read as zeroes).
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> ClientResult<()> {
        let (len, rules) = (buf.len() as u64, &self.inner.rules);
        rules.check_range(Cmd::READ, CmdFlags::empty(), offset, len)?;
        let pieces = rules.pieces(offset, len, rules.max_payload);
        self.pipeline(
            Cmd::READ,
            CmdFlags::empty(),
            pieces,
            |_, _| &[],
            |at, d| {
                if let Done::Data(data) = d {
                    let start = (at - offset) as usize;
                    buf[start..start + data.len()].copy_from_slice(&data);
                }
            },
        )
        .await
    }

    /// Reads `buf.len()` bytes at `offset` into `buf` and returns it. A
    /// buffer no larger than one request is filled straight from the socket
    /// (no copy), so a caller can recycle its buffers.
    pub async fn read_owned(&self, offset: u64, mut buf: Vec<u8>) -> ClientResult<Vec<u8>> {
        let (len, rules) = (buf.len() as u64, &self.inner.rules);
        if len == 0 || len > rules.max_payload {
            self.read(offset, &mut buf).await?;
            return Ok(buf);
        }
        rules.check(Cmd::READ, CmdFlags::empty(), offset, len)?;
        match self.pick().submit(Cmd::READ, CmdFlags::empty(), offset, len, &[], buf).await?.wait().await? {
            Done::Data(data) => Ok(data),
            _ => Err(ProtocolError::Violation("read completed without data").into()),
        }
    }

    /// Writes `data` at `offset` (`NBD_CMD_WRITE`), with `NBD_CMD_FLAG_FUA` if `fua`.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> ClientResult<()> {
        let (flags, rules) = (fua_flag(fua), &self.inner.rules);
        rules.check_range(Cmd::WRITE, flags, offset, data.len() as u64)?;
        let pieces = rules.pieces(offset, data.len() as u64, rules.max_payload);
        let slice = |at: u64, n: u64| &data[(at - offset) as usize..(at - offset + n) as usize];
        self.pipeline(Cmd::WRITE, flags, pieces, slice, |_, _| {}).await
    }

    /// `NBD_CMD_FLUSH`, on every connection.
    pub async fn flush(&self) -> ClientResult<()> {
        self.inner.rules.check(Cmd::FLUSH, CmdFlags::empty(), 0, 0)?;
        let mut tickets = Vec::with_capacity(self.inner.conns.len());
        for c in &self.inner.conns {
            tickets.push(c.submit(Cmd::FLUSH, CmdFlags::empty(), 0, 0, &[], Vec::new()).await?);
        }
        for t in tickets {
            t.wait().await?;
        }
        Ok(())
    }

    /// `NBD_CMD_TRIM`: the range may be discarded (contents unspecified).
    pub async fn trim(&self, offset: u64, len: u64, fua: bool) -> ClientResult<()> {
        self.effect(Cmd::TRIM, fua_flag(fua), offset, len).await
    }

    /// `NBD_CMD_WRITE_ZEROES`, with `NBD_CMD_FLAG_FUA`, `_NO_HOLE` and
    /// `_FAST_ZERO` as `flags` says. A fast request the server cannot do
    /// fast fails with `NBD_ENOTSUP` and changes nothing.
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> ClientResult<()> {
        let mut f = fua_flag(flags.fua);
        f.set(CmdFlags::NO_HOLE, flags.no_hole);
        f.set(CmdFlags::FAST_ZERO, flags.fast);
        self.effect(Cmd::WRITE_ZEROES, f, offset, len).await
    }

    /// `NBD_CMD_CACHE`: asks the server to prefetch the range.
    pub async fn cache(&self, offset: u64, len: u64) -> ClientResult<()> {
        self.effect(Cmd::CACHE, CmdFlags::empty(), offset, len).await
    }

    async fn effect(&self, cmd: Cmd, flags: CmdFlags, offset: u64, len: u64) -> ClientResult<()> {
        let rules = &self.inner.rules;
        rules.check_range(cmd, flags, offset, len)?;
        let max = if cmd == Cmd::CACHE { rules.max_payload } else { rules.max_effect };
        self.pipeline(cmd, flags, rules.pieces(offset, len, max), |_, _| &[], |_, _| {}).await
    }

    /// One `NBD_CMD_BLOCK_STATUS` for `base:allocation` from `offset`:
    /// the extents as the server sent them (at least one; they may end
    /// before `offset + len` or, for the last one, beyond it). `len` is a
    /// hint, clamped to the export and to what one request can carry.
    pub async fn block_status(&self, offset: u64, len: u64) -> ClientResult<Vec<Extent>> {
        let rules = &self.inner.rules;
        let len = len.min(rules.max_effect).min(rules.size.saturating_sub(offset));
        rules.check(Cmd::BLOCK_STATUS, CmdFlags::empty(), offset, len)?;
        if len == 0 {
            return Err(ClientError::InvalidRequest(format!("block status at offset {offset}: empty range")));
        }
        let conn = self.pick();
        let done =
            conn.submit(Cmd::BLOCK_STATUS, CmdFlags::empty(), offset, len, &[], Vec::new()).await?.wait().await?;
        let Done::Extents(all) = done else {
            return Err(ProtocolError::Violation("block status completed without extents").into());
        };
        let extents = all
            .into_iter()
            .find(|(id, _)| Some(*id) == conn.base_allocation)
            .map(|(_, e)| e)
            .filter(|e| !e.is_empty())
            .ok_or(ProtocolError::InvalidChunk("block status reply without base:allocation extents"))?;
        Ok(extents
            .into_iter()
            .map(|e| Extent { length: e.length, flags: AllocationFlags::from_bits_retain(e.flags as u32) })
            .collect())
    }

    /// The allocation map of `offset..offset + len` (clamped to the
    /// export): block status requests until the range is covered, extents
    /// clipped to it and neighbours with equal flags merged.
    pub async fn extents(&self, offset: u64, len: u64) -> ClientResult<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size());
        let mut map: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            for e in self.block_status(pos, end - pos).await? {
                let n = e.length.min(end - pos);
                match map.last_mut() {
                    Some(last) if last.flags == e.flags => last.length += n,
                    _ => map.push(Extent { length: n, flags: e.flags }),
                }
                pos += n;
                if pos >= end {
                    break;
                }
            }
        }
        Ok(map)
    }

    /// Soft disconnect: waits for the requests in flight, sends
    /// `NBD_CMD_DISC` on every connection and waits (bounded by the
    /// negotiation timeout) for the server to close. Later calls fail with
    /// [`ClientError::Closed`].
    pub async fn disconnect(&self) {
        for c in &self.inner.conns {
            c.disconnect(self.inner.timeout).await;
        }
    }
}

fn fua_flag(fua: bool) -> CmdFlags {
    if fua {
        CmdFlags::FUA
    } else {
        CmdFlags::empty()
    }
}
