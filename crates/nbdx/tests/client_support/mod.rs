//! Scripted in-process NBD servers for the client tests, built from
//! nbdx-proto's `ServerHandshake` and hand-written transmission replies.
//!
//! [`FakeServer::start`] listens on a Unix socket in a temporary directory
//! and runs a script for every connection; [`memory`] is a well-behaved
//! script serving a shared buffer, [`Tx`] lets a script misbehave.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use nbdx::client::{ClientOptions, Target};
use nbdx::proto::codec::reply::{encode_chunk, encode_data_header, ChunkPayload, SimpleReply};
use nbdx::proto::server::{ExportMeta, Negotiated, ServerConfig, ServerHandshake, ServerStep, TransmissionContext};
use nbdx::proto::{Cmd, CmdFlags, HeaderMode, ReplyMode, RequestHeader, TransmissionFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

pub mod suite;

/// Bound on every test: nothing may hang.
pub const BOUND: Duration = Duration::from_secs(20);

/// Runs a test body with [`BOUND`].
pub async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("test exceeded its time bound: something hangs")
}

/// A server on a Unix socket; stops when dropped.
pub struct FakeServer {
    pub target: Target,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Runs `script` for every connection.
    pub fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(UnixStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(script(s));
            }
        });
        Self { target: Target::Unix(path), _dir: dir, task }
    }
}

/// Options with short timeouts for tests.
pub fn opts() -> ClientOptions {
    ClientOptions::new().timeout(Duration::from_secs(5)).request_timeout(Some(Duration::from_secs(5)))
}

/// An export of `size` bytes with every optional feature.
pub fn export(name: &str, size: u64) -> ExportMeta {
    let mut e = ExportMeta::new(name, size);
    e.flags |= TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_CACHE
        | TransmissionFlags::SEND_DF;
    e
}

/// Runs nbdx-proto's server handshake (STARTTLS is acknowledged and the
/// session goes on in plaintext: a stand-in for TLS). `None` if the
/// client aborted or failed.
pub async fn handshake(s: &mut UnixStream, config: ServerConfig) -> Option<(Negotiated, BytesMut)> {
    let mut hs = ServerHandshake::new(Arc::new(config));
    let mut input = BytesMut::new();
    loop {
        s.write_all(&hs.take_output()).await.ok()?;
        if s.read_buf(&mut input).await.ok()? == 0 {
            return None;
        }
        loop {
            match hs.handle_input(&mut input) {
                Ok(ServerStep::NeedInput(h)) => {
                    hs = h;
                    break;
                }
                Ok(ServerStep::StartTls(mut t)) => {
                    s.write_all(&t.take_output()).await.ok()?;
                    hs = t.established();
                }
                Ok(ServerStep::Transmission(n)) => {
                    s.write_all(&n.output).await.ok()?;
                    return Some((n, input));
                }
                Ok(ServerStep::Abort(bytes)) => {
                    let _ = s.write_all(&bytes).await;
                    return None;
                }
                Err(f) => {
                    let _ = s.write_all(&f.output).await;
                    return None;
                }
            }
        }
    }
}

/// The transmission phase of a scripted server.
pub struct Tx {
    pub s: UnixStream,
    pub ctx: TransmissionContext,
    input: BytesMut,
}

impl Tx {
    /// Handshake with `config`, then transmission.
    pub async fn accept(mut s: UnixStream, config: ServerConfig) -> Option<Self> {
        let (n, input) = handshake(&mut s, config).await?;
        Some(Self { s, ctx: n.transmission(), input })
    }

    pub fn mode(&self) -> ReplyMode {
        self.ctx.mode
    }

    async fn fill(&mut self, n: usize) -> Option<()> {
        while self.input.len() < n {
            if self.s.read_buf(&mut self.input).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    }

    /// The next request and its payload; `None` at end of stream.
    pub async fn request(&mut self) -> Option<(RequestHeader, Vec<u8>)> {
        let mode = self.ctx.header_mode();
        let len = RequestHeader::len(mode);
        self.fill(len).await?;
        let h = RequestHeader::decode(mode, &self.input.split_to(len)).expect("client sent a bad header");
        let n = h.payload_len(mode) as usize;
        self.fill(n).await?;
        Some((h, self.input.split_to(n).to_vec()))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    pub async fn ok(&mut self, h: &RequestHeader) {
        let mut b = BytesMut::new();
        self.ctx.encode_ok(h, &mut b);
        self.send(&b).await;
    }

    pub async fn simple(&mut self, cookie: u64, error: u32, data: &[u8]) {
        let mut b = BytesMut::new();
        SimpleReply { error, cookie }.encode(&mut b);
        b.extend_from_slice(data);
        self.send(&b).await;
    }

    pub async fn chunk(&mut self, h: &RequestHeader, p: ChunkPayload, done: bool) {
        let mut b = BytesMut::new();
        encode_chunk(self.mode(), h.cookie, h.offset, &p, done, &mut b);
        self.send(&b).await;
    }

    pub async fn data(&mut self, h: &RequestHeader, at: u64, data: &[u8], done: bool) {
        let mut b = BytesMut::new();
        encode_data_header(self.mode(), h.cookie, h.offset, at, data.len() as u64, done, &mut b);
        b.extend_from_slice(data);
        self.send(&b).await;
    }

    /// A complete, correct read reply.
    pub async fn read_reply(&mut self, h: &RequestHeader, data: &[u8]) {
        let mut b = BytesMut::new();
        self.ctx.encode_read_header(h, data.len() as u64, &mut b);
        b.extend_from_slice(data);
        self.send(&b).await;
    }
}

/// What [`memory`] saw, for assertions.
#[derive(Debug, Default)]
pub struct Log {
    pub requests: Vec<(Cmd, CmdFlags, u64, u64)>,
}

/// Serves `disk` correctly until the client disconnects, recording requests.
pub async fn memory(mut tx: Tx, disk: Arc<Mutex<Vec<u8>>>, log: Arc<Mutex<Log>>) {
    while let Some((h, payload)) = tx.request().await {
        log.lock().unwrap().requests.push((h.cmd, h.flags, h.offset, h.length));
        if tx.mode() == ReplyMode::Extended && h.cmd == Cmd::WRITE {
            assert!(h.flags.contains(CmdFlags::PAYLOAD_LEN), "extended writes carry NBD_CMD_FLAG_PAYLOAD_LEN");
        }
        let (off, len) = (h.offset as usize, h.length as usize);
        match h.cmd {
            Cmd::DISC => return,
            Cmd::READ => {
                let data = disk.lock().unwrap()[off..off + len].to_vec();
                tx.read_reply(&h, &data).await;
            }
            Cmd::WRITE => {
                disk.lock().unwrap()[off..off + len].copy_from_slice(&payload);
                tx.ok(&h).await;
            }
            Cmd::WRITE_ZEROES | Cmd::TRIM => {
                disk.lock().unwrap()[off..off + len].fill(0);
                tx.ok(&h).await;
            }
            Cmd::BLOCK_STATUS => {
                let extents = allocation(&disk.lock().unwrap(), off, len);
                let mut b = BytesMut::new();
                tx.ctx.encode_block_status(&h, &extents, &mut b);
                tx.send(&b).await;
            }
            _ => tx.ok(&h).await,
        }
    }
}

/// 4 KiB blocks of zeroes are holes, the rest data.
pub fn allocation(disk: &[u8], off: usize, len: usize) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut pos = off;
    while pos < (off + len).min(disk.len()) {
        let end = ((pos / 4096 + 1) * 4096).min(disk.len());
        let flags = if disk[pos..end].iter().all(|b| *b == 0) { 3 } else { 0 };
        match out.last_mut() {
            Some((l, f)) if *f == flags => *l += (end - pos) as u64,
            _ => out.push(((end - pos) as u64, flags)),
        }
        pos = end;
    }
    out
}

/// A [`memory`] server over one shared disk for every connection.
pub fn memory_server(config: ServerConfig, disk: Arc<Mutex<Vec<u8>>>, log: Arc<Mutex<Log>>) -> FakeServer {
    let config = Arc::new(config);
    FakeServer::start(move |s| {
        let (config, disk, log) = (config.clone(), disk.clone(), log.clone());
        async move {
            if let Some(tx) = Tx::accept(s, (*config).clone()).await {
                memory(tx, disk, log).await;
            }
        }
    })
}

/// Reads one compact request header from a raw socket (for hand-written
/// handshakes that skip `ServerHandshake`).
pub fn decode_compact(buf: &mut BytesMut) -> RequestHeader {
    let h = RequestHeader::decode(HeaderMode::Compact, &buf[..28]).expect("request header");
    buf.advance(28);
    h
}
