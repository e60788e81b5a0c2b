//! The negotiation phase over a socket: [`Negotiation`] drives the sans-IO
//! [`nbdx_proto::client`] machine, with every wait bounded.
//!
//! ```text
//! start: connect ─► greeting ─► [STARTTLS ─► upgrade] ─► EXTENDED_HEADERS
//!                                   (ERR_UNSUP: STRUCTURED_REPLY) ─┐
//!   ┌──────────────────────────────────────────────────────────────┘
//!   ▼  Negotiation: list_exports / info / list_meta_contexts, any number
//!   ├─ go(): SET_META_CONTEXT ─► GO (ERR_UNSUP: EXPORT_NAME) ─► Client
//!   └─ abort(): NBD_OPT_ABORT
//! ```
//!
//! A server that is not fixed newstyle gets `NBD_OPT_EXPORT_NAME` and
//! nothing else.

use std::time::Duration;

use nbdx_proto::client::{ClientHandshake, Connected, Negotiating, OptionProgress, OptionResult};
use nbdx_proto::{InfoRequest, InfoType, MetaContextRequest, OptReply, OptReplyHeader, OptRequest, OptType, RepType};
use nbdx_proto::{ProtocolError, ReplyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::error::{ClientError, ClientResult};
use super::info::{ExportEntry, ExportInfo};
use super::options::{ClientOptions, TlsMode};
use super::target::{Stream, Target};

/// The handshake's socket, with the bound on each wait.
pub(crate) struct HsIo {
    pub(crate) stream: Stream,
    timeout: Duration,
}

impl HsIo {
    async fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> ClientResult<()> {
        match timeout_at(deadline, self.stream.read_exact(buf)).await {
            Err(_) => Err(ClientError::Timeout { waiting_for: "the server during negotiation", after: self.timeout }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(ClientError::Disconnected(" during negotiation"))
            }
            Ok(r) => r.map(drop).map_err(ClientError::io),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> ClientResult<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => Err(ClientError::Timeout { waiting_for: "the server to accept data", after: self.timeout }),
            Ok(r) => r.map_err(ClientError::io),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Sends one option and reads its replies up to the final one.
    async fn option(&mut self, neg: Negotiating, req: OptRequest) -> ClientResult<OptionProgress> {
        let (mut pending, bytes) = neg.send(req);
        self.write_all(&bytes).await?;
        let deadline = self.deadline();
        loop {
            let mut h = [0u8; OptReplyHeader::LEN];
            self.read_exact(&mut h, deadline).await?;
            let header = OptReplyHeader::decode(&h)?;
            let mut payload = vec![0u8; pending.payload_len(&header)?];
            self.read_exact(&mut payload, deadline).await?;
            match pending.handle_reply(header, &payload)? {
                OptionProgress::More(next) => pending = next,
                other => return Ok(other),
            }
        }
    }

    /// An option that must end in `Done` (anything but STARTTLS and GO).
    async fn plain_option(&mut self, neg: Negotiating, req: OptRequest) -> ClientResult<(Negotiating, OptionResult)> {
        match self.option(neg, req).await? {
            OptionProgress::Done(n, r) => Ok((n, r)),
            _ => Err(ProtocolError::Violation("option ended the negotiation unexpectedly").into()),
        }
    }
}

/// Maps an option's error reply to the error a user understands.
fn refusal(option: OptType, name: &str, (reply, message): (RepType, String)) -> ClientError {
    match reply {
        RepType::ERR_UNKNOWN => ClientError::ExportNotFound { name: name.to_owned(), message },
        RepType::ERR_TLS_REQD => ClientError::TlsRequired,
        _ => ClientError::Refused { option, reply, message },
    }
}

/// An open negotiation: options can be sent until [`go`](Self::go) or
/// [`abort`](Self::abort) consumes it. After a failed call that broke the
/// connection, later calls return [`ClientError::Closed`].
pub struct Negotiation {
    io: HsIo,
    neg: Option<Negotiating>,
    pub(crate) opts: ClientOptions,
    handover: bool,
}

impl std::fmt::Debug for Negotiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiation").field("neg", &self.neg).field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Negotiation {
    /// Connects to `target`, reads the greeting, upgrades to TLS when
    /// required, and negotiates extended headers or structured replies as
    /// `opts` asks.
    pub async fn start(target: &Target, opts: &ClientOptions) -> ClientResult<Self> {
        check_tls(opts)?;
        let stream = target.connect(opts.timeout).await?;
        let host = match target {
            Target::Tcp { host, .. } => host.clone(),
            _ => String::new(),
        };
        Self::begin(stream, opts, &host, false).await
    }

    /// Like [`start`](Self::start), over an already open stream.
    pub async fn start_with_stream(stream: Stream, opts: &ClientOptions) -> ClientResult<Self> {
        check_tls(opts)?;
        Self::begin(stream, opts, "", false).await
    }

    /// Negotiates over `stream` (TLS first when `opts` require it) up to
    /// transmission in the kernel's subset of the protocol.
    pub(crate) async fn handover(
        stream: Stream,
        opts: &ClientOptions,
        host: &str,
    ) -> ClientResult<(Stream, Connected)> {
        Self::begin(stream, opts, host, true).await?.finish().await
    }

    pub(crate) async fn begin(stream: Stream, opts: &ClientOptions, host: &str, handover: bool) -> ClientResult<Self> {
        let mut io = HsIo { stream, timeout: opts.timeout };
        let mut greeting = [0u8; ClientHandshake::GREETING_LEN];
        io.read_exact(&mut greeting, io.deadline()).await?;
        let (mut neg, flags) = ClientHandshake::with_limits(opts.limits.clone()).receive_greeting(&greeting)?;
        io.write_all(&flags).await?;
        tracing::debug!(fixed_newstyle = neg.fixed_newstyle(), "received greeting");
        if opts.tls == TlsMode::Require {
            (io, neg) = start_tls(io, neg, opts, host).await?;
        }
        let wants = opts.wants(handover);
        if neg.fixed_newstyle() && wants.structured {
            let mut done = false;
            if wants.extended {
                (neg, done) = acked(&mut io, neg, OptRequest::ExtendedHeaders).await?;
            }
            if !done {
                (neg, _) = acked(&mut io, neg, OptRequest::StructuredReply).await?;
            }
        }
        tracing::debug!(mode = ?neg.mode(), "negotiated reply mode");
        Ok(Self { io, neg: Some(neg), opts: opts.clone(), handover })
    }

    /// Whether the server speaks fixed newstyle (else only
    /// [`go`](Self::go) is possible).
    pub fn fixed_newstyle(&self) -> bool {
        self.neg.as_ref().is_some_and(Negotiating::fixed_newstyle)
    }

    /// The reply layout negotiated so far.
    pub fn mode(&self) -> ReplyMode {
        self.neg.as_ref().map_or(ReplyMode::Simple, Negotiating::mode)
    }

    fn take(&mut self, needs_fixed: bool) -> ClientResult<Negotiating> {
        match self.neg.take() {
            None => Err(ClientError::Closed),
            Some(n) if needs_fixed && !n.fixed_newstyle() => {
                self.neg = Some(n);
                Err(ClientError::Unsupported("options other than NBD_OPT_EXPORT_NAME (not fixed newstyle)".into()))
            }
            Some(n) => Ok(n),
        }
    }

    async fn run(&mut self, req: OptRequest, name: &str) -> ClientResult<Vec<OptReply>> {
        let opt = req.opt();
        let neg = self.take(true)?;
        let (neg, result) = self.io.plain_option(neg, req).await?;
        self.neg = Some(neg);
        match result.error {
            Some(e) => Err(refusal(opt, name, e)),
            None => Ok(result.replies),
        }
    }

    /// `NBD_OPT_LIST`: the exports the server advertises.
    pub async fn list_exports(&mut self) -> ClientResult<Vec<ExportEntry>> {
        let replies = self.run(OptRequest::List, "").await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                OptReply::Server { name, details } => Some(ExportEntry { name, description: details }),
                _ => None,
            })
            .collect())
    }

    /// `NBD_OPT_LIST_META_CONTEXT`: contexts of export `name` matching
    /// `queries` (all contexts when empty). Needs structured replies.
    pub async fn list_meta_contexts(&mut self, name: &str, queries: &[&str]) -> ClientResult<Vec<String>> {
        if !self.mode().chunks() {
            return Err(ClientError::Unsupported("metadata contexts (structured replies not negotiated)".into()));
        }
        let req =
            MetaContextRequest { export: name.to_owned(), queries: queries.iter().map(|q| q.to_string()).collect() };
        let replies = self.run(OptRequest::ListMetaContext(req), name).await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                OptReply::MetaContext { name, .. } => Some(name),
                _ => None,
            })
            .collect())
    }

    /// `NBD_OPT_INFO` on export `name`, with the contexts it lists when
    /// structured replies are negotiated. Negotiation continues.
    pub async fn info(&mut self, name: &str) -> ClientResult<ExportInfo> {
        let contexts = match self.list_meta_contexts(name, &[]).await {
            Ok(c) => c,
            Err(e) if !e.is_fatal() => Vec::new(),
            Err(e) => return Err(e),
        };
        let replies = self.run(OptRequest::Info(info_request(name)), name).await.map_err(|e| match e {
            ClientError::Refused { reply: RepType::ERR_UNSUP, .. } => ClientError::Unsupported("NBD_OPT_INFO".into()),
            e => e,
        })?;
        let tls = self.neg.as_ref().is_some_and(Negotiating::is_tls);
        let mut info = ExportInfo::from_replies(name, &replies, self.mode(), tls)
            .ok_or(ClientError::Protocol(ProtocolError::MissingExportInfo))?;
        info.contexts = contexts;
        Ok(info)
    }

    /// Ends negotiation and opens the export named in the options:
    /// `NBD_OPT_SET_META_CONTEXT`, then `NBD_OPT_GO` (or
    /// `NBD_OPT_EXPORT_NAME` when the server lacks it).
    pub async fn go(self) -> ClientResult<super::Client> {
        let fixed = self.fixed_newstyle();
        let opts = self.opts.clone();
        let (stream, connected) = self.finish().await?;
        Ok(super::Client::from_stream(stream, ExportInfo::from_connected(&connected, fixed), &connected, &opts))
    }

    /// Negotiates up to transmission and returns the raw stream.
    pub(crate) async fn finish(mut self) -> ClientResult<(Stream, Connected)> {
        let mut neg = self.take(false)?;
        let name = self.opts.export_name.clone();
        if !neg.fixed_newstyle() {
            return export_name(self.io, neg, &name).await;
        }
        let contexts = self.opts.wants(self.handover).contexts;
        if neg.mode().chunks() && !contexts.is_empty() {
            let req = MetaContextRequest { export: name.clone(), queries: contexts };
            let (n, r) = self.io.plain_option(neg, OptRequest::SetMetaContext(req)).await?;
            match r.error {
                Some((RepType::ERR_TLS_REQD, _)) => return Err(ClientError::TlsRequired),
                Some((rep, msg)) => tracing::debug!(%rep, msg, "NBD_OPT_SET_META_CONTEXT refused; no block status"),
                None => {}
            }
            neg = n;
        }
        match self.io.option(neg, OptRequest::Go(info_request(&name))).await? {
            OptionProgress::Connected(c) => Ok((self.io.stream, c)),
            OptionProgress::Done(n, r) => match r.error {
                Some((RepType::ERR_UNSUP, _)) if !n.extended() => export_name(self.io, n, &name).await,
                Some(e) => Err(refusal(OptType::GO, &name, e)),
                None => Err(ProtocolError::Violation("NBD_OPT_GO finished without entering transmission").into()),
            },
            _ => Err(ProtocolError::Violation("unexpected answer to NBD_OPT_GO").into()),
        }
    }

    /// Soft disconnect with `NBD_OPT_ABORT`; waits (bounded) for the
    /// server's acknowledgement so that it can close cleanly.
    pub async fn abort(mut self) -> ClientResult<()> {
        let neg = self.take(false)?;
        if neg.fixed_newstyle() {
            self.io.write_all(&neg.abort()).await?;
            let mut ack = [0u8; OptReplyHeader::LEN];
            let _ = self.io.read_exact(&mut ack, self.io.deadline()).await;
        }
        let _ = self.io.stream.shutdown().await;
        Ok(())
    }
}

/// Fails early when TLS is required but cannot be attempted (no
/// implementation, unreadable credentials).
pub(crate) fn check_tls(opts: &ClientOptions) -> ClientResult<()> {
    if opts.tls != TlsMode::Require {
        return Ok(());
    }
    match &opts.tls_upgrade {
        None => Err(ClientError::TlsUnsupported("no TLS implementation configured for an nbds:// connection")),
        Some(upgrade) => upgrade.check().map_err(|e| ClientError::Tls(e.to_string())),
    }
}

fn info_request(name: &str) -> InfoRequest {
    InfoRequest { name: name.to_owned(), requests: vec![InfoType::NAME, InfoType::DESCRIPTION, InfoType::BLOCK_SIZE] }
}

/// Sends an option that is either acknowledged or refused; a refusal other
/// than `NBD_REP_ERR_TLS_REQD` is not an error.
async fn acked(io: &mut HsIo, neg: Negotiating, req: OptRequest) -> ClientResult<(Negotiating, bool)> {
    let opt = req.opt();
    let (neg, r) = io.plain_option(neg, req).await?;
    match r.error {
        None => Ok((neg, true)),
        Some((RepType::ERR_TLS_REQD, _)) => Err(ClientError::TlsRequired),
        Some((rep, _)) => {
            tracing::debug!(%opt, %rep, "option refused");
            Ok((neg, false))
        }
    }
}

async fn start_tls(
    mut io: HsIo,
    neg: Negotiating,
    opts: &ClientOptions,
    host: &str,
) -> ClientResult<(HsIo, Negotiating)> {
    let upgrade = opts.tls_upgrade.clone().ok_or(ClientError::TlsUnsupported("no TLS implementation configured"))?;
    if !neg.fixed_newstyle() {
        return Err(ClientError::Tls("the server is not fixed newstyle, so it cannot do TLS".into()));
    }
    let pending = match io.option(neg, OptRequest::StartTls).await? {
        OptionProgress::StartTls(p) => p,
        // No downgrade: "a client which only wishes to use TLS SHOULD
        // terminate the session if the NBD_OPT_STARTTLS replies with an error".
        OptionProgress::Done(_, OptionResult { error: Some((rep, msg)), .. }) => {
            let msg = if msg.is_empty() { String::new() } else { format!(": {msg}") };
            return Err(ClientError::Tls(format!(
                "the server does not offer TLS (NBD_OPT_STARTTLS: {rep}{msg}); not continuing in plaintext"
            )));
        }
        _ => return Err(ProtocolError::Violation("unexpected answer to NBD_OPT_STARTTLS").into()),
    };
    let name = opts.tls_hostname.as_deref().unwrap_or(host);
    let stream = tokio::time::timeout(io.timeout, upgrade.upgrade(io.stream, name))
        .await
        .map_err(|_| ClientError::Timeout { waiting_for: "the TLS handshake", after: io.timeout })?
        .map_err(|e| ClientError::Tls(format!("handshake failed: {e}")))?;
    Ok((HsIo { stream, timeout: io.timeout }, pending.established()))
}

/// `NBD_OPT_EXPORT_NAME`: a server that refuses the name just closes.
async fn export_name(mut io: HsIo, neg: Negotiating, name: &str) -> ClientResult<(Stream, Connected)> {
    let (pending, bytes) = neg.export_name(name);
    io.write_all(&bytes).await?;
    let mut reply = vec![0u8; pending.reply_len()];
    match io.read_exact(&mut reply, io.deadline()).await {
        Err(ClientError::Disconnected(_)) => Err(ClientError::ExportNotFound {
            name: name.to_owned(),
            message: "server closed the connection after NBD_OPT_EXPORT_NAME".into(),
        }),
        r => r,
    }?;
    Ok((io.stream, pending.handle_reply(&reply)?))
}
