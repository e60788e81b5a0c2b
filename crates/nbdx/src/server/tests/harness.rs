//! Test devices and a raw protocol client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use nbdx_proto::client::{ClientHandshake, Connected, OptionProgress};
use nbdx_proto::{
    ChunkPayload, Cmd, CmdFlags, Errno, HeaderMode, InfoRequest, InfoType, MetaContextRequest, OptReplyHeader,
    OptRequest, ReplyHeader, ReplyMode, ReplyType, RequestHeader,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

use crate::device::{Caps, Device, DeviceResult, Extent, Support, ZeroFlags};
use crate::server::Server;
use crate::Export;

/// A RAM disk with every feature, counting flushes; reads of the offset in
/// `gate` wait until the gate is opened.
pub(crate) struct TestDisk {
    pub data: Mutex<Vec<u8>>,
    pub caps: Caps,
    pub flushes: AtomicUsize,
    pub reads: AtomicUsize,
    pub gate: Mutex<Option<(u64, Arc<Notify>)>>,
}

impl TestDisk {
    pub fn new(size: usize) -> Arc<Self> {
        Self::with_caps(
            size,
            Caps {
                flush: true,
                fua: Support::Native,
                trim: true,
                zero: Support::Native,
                fast_zero: true,
                cache: Support::Native,
                multi_conn: true,
                extents: true,
                ..Caps::default()
            },
        )
    }

    pub fn with_caps(size: usize, caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; size]),
            caps,
            flushes: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            gate: Mutex::new(None),
        })
    }

    /// Makes reads and writes at `offset` wait until the returned notify fires.
    pub fn gate(&self, offset: u64) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        *self.gate.lock().unwrap() = Some((offset, n.clone()));
        n
    }

    async fn wait_gate(&self, offset: u64) {
        let g = self.gate.lock().unwrap().clone();
        if let Some((o, n)) = g {
            if o == offset {
                n.notified().await;
            }
        }
    }
}

#[async_trait]
impl Device for TestDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn caps(&self) -> Caps {
        self.caps
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.wait_gate(offset).await;
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        self.wait_gate(offset).await;
        self.data.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    async fn flush(&self) -> DeviceResult<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn trim(&self, offset: u64, length: u64, _fua: bool) -> DeviceResult<()> {
        self.data.lock().unwrap()[offset as usize..(offset + length) as usize].fill(0);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, length: u64, _f: ZeroFlags) -> DeviceResult<()> {
        self.trim(offset, length, false).await
    }
    async fn cache(&self, _offset: u64, _length: u64) -> DeviceResult<()> {
        Ok(())
    }
    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        // 4 KiB granularity: all-zero blocks are holes.
        let d = self.data.lock().unwrap();
        let mut out = Vec::new();
        let mut at = offset;
        let end = (offset + length).min(d.len() as u64);
        while at < end {
            let blk_end = ((at / 4096) + 1) * 4096;
            let e = blk_end.min(end);
            let zero = d[at as usize..e as usize].iter().all(|b| *b == 0);
            let flags = if zero {
                nbdx_proto::AllocationFlags::HOLE | nbdx_proto::AllocationFlags::ZERO
            } else {
                nbdx_proto::AllocationFlags::empty()
            };
            out.push(Extent { length: e - at, flags });
            at = e;
        }
        Ok(out)
    }
}

/// A raw client on one side of an in-memory stream.
pub(crate) struct Raw {
    pub s: DuplexStream,
    pub c: Connected,
    pub buf: BytesMut,
}

/// A server task serving `server` on the other end of the returned stream.
pub(crate) fn pipe(
    server: &Server,
) -> (DuplexStream, tokio::task::JoinHandle<Result<(), super::super::ConnectionError>>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = server.clone();
    let task = tokio::spawn(async move { server.serve_connection(b).await });
    (a, task)
}

pub(crate) fn server_for(device: Arc<TestDisk>) -> Server {
    Server::new(vec![Export::from_arc("", device)]).unwrap()
}

/// A server for `device` with `options`.
pub(crate) fn server_with(device: Arc<dyn Device>, options: crate::server::ServerOptions) -> Server {
    Server::builder().export(Export::from_arc("", device)).options(options).build().unwrap()
}

/// Negotiation options of [`Raw::connect`].
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    Simple,
    Structured,
    Extended,
}

impl Raw {
    pub async fn connect(mut s: DuplexStream, mode: Mode) -> Raw {
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        let (mut neg, flags) = ClientHandshake::new().receive_greeting(&greeting).unwrap();
        s.write_all(&flags).await.unwrap();
        let mut options = Vec::new();
        match mode {
            Mode::Simple => {}
            Mode::Structured => options.push(OptRequest::StructuredReply),
            Mode::Extended => options.push(OptRequest::ExtendedHeaders),
        }
        if !matches!(mode, Mode::Simple) {
            options.push(OptRequest::SetMetaContext(MetaContextRequest {
                export: String::new(),
                queries: vec!["base:allocation".into()],
            }));
        }
        options.push(OptRequest::Go(InfoRequest { name: String::new(), requests: vec![InfoType::BLOCK_SIZE] }));
        for opt in options {
            let (mut pending, bytes) = neg.send(opt);
            s.write_all(&bytes).await.unwrap();
            loop {
                let mut h = [0u8; 20];
                s.read_exact(&mut h).await.unwrap();
                let h = OptReplyHeader::decode(&h).unwrap();
                let mut payload = vec![0u8; pending.payload_len(&h).unwrap()];
                s.read_exact(&mut payload).await.unwrap();
                match pending.handle_reply(h, &payload).unwrap() {
                    OptionProgress::More(p) => pending = p,
                    OptionProgress::Done(n, r) => {
                        assert!(r.error.is_none(), "{r:?}");
                        neg = n;
                        break;
                    }
                    OptionProgress::Connected(c) => return Raw { s, c, buf: BytesMut::new() },
                    OptionProgress::StartTls(_) => panic!("no TLS here"),
                }
            }
        }
        unreachable!("GO never answered")
    }

    pub fn header_mode(&self) -> HeaderMode {
        self.c.mode.header_mode()
    }

    /// Sends one request (with `payload` for writes).
    pub async fn send(&mut self, cmd: Cmd, flags: CmdFlags, cookie: u64, offset: u64, length: u64, payload: &[u8]) {
        let mut b = BytesMut::new();
        let mut flags = flags;
        if self.c.mode == ReplyMode::Extended && cmd == Cmd::WRITE {
            flags |= CmdFlags::PAYLOAD_LEN;
        }
        RequestHeader { flags, cmd, cookie, offset, length }.encode(self.header_mode(), &mut b);
        b.put_slice(payload);
        self.s.write_all(&b).await.unwrap();
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if self.s.read_buf(&mut self.buf).await.unwrap() == 0 {
                return false;
            }
        }
        true
    }

    /// Reads one whole reply. For reads, `read_len` says how much data a
    /// simple reply carries. Returns the cookie, the error (0 for success),
    /// the data and the block status extents.
    pub async fn reply(&mut self, read_len: usize) -> Option<(u64, Errno, Vec<u8>, Vec<(u64, u64)>)> {
        let mut data = Vec::new();
        let mut extents = Vec::new();
        let mut error = Errno(0);
        loop {
            if !self.fill(4).await {
                return None;
            }
            let hdr = loop {
                match ReplyHeader::decode(self.c.mode, &self.buf).unwrap() {
                    Some(h) => break h,
                    None => assert!(self.fill(self.buf.len() + 1).await, "eof in header"),
                }
            };
            let (h, n) = hdr;
            let _ = self.buf.split_to(n);
            match h {
                ReplyHeader::Simple(r) => {
                    if r.error == 0 && read_len > 0 {
                        assert!(self.fill(read_len).await);
                        data = self.buf.split_to(read_len).to_vec();
                    }
                    return Some((r.cookie, Errno(r.error), data, extents));
                }
                ReplyHeader::Chunk(c) => {
                    let len = c.length as usize;
                    assert!(self.fill(len).await, "eof in chunk");
                    let payload = self.buf.split_to(len);
                    match c.kind {
                        ReplyType::OFFSET_DATA => data.extend_from_slice(&payload[8..]),
                        kind => match ChunkPayload::decode(kind, self.c.mode == ReplyMode::Extended, &payload).unwrap()
                        {
                            ChunkPayload::Error { errno, .. } => error = errno,
                            ChunkPayload::BlockStatus { extents: e, .. } => {
                                extents = e.iter().map(|x| (x.length, x.flags)).collect()
                            }
                            ChunkPayload::Hole { length, .. } => data.extend(std::iter::repeat_n(0, length as usize)),
                            ChunkPayload::None => {}
                        },
                    }
                    if c.done() {
                        return Some((c.cookie, error, data, extents));
                    }
                }
            }
        }
    }

    /// Write then read back through the connection.
    pub async fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> Errno {
        self.send(Cmd::WRITE, CmdFlags::empty(), cookie, offset, data.len() as u64, data).await;
        let (c, e, _, _) = self.reply(0).await.expect("reply");
        assert_eq!(c, cookie);
        e
    }

    pub async fn read(&mut self, cookie: u64, offset: u64, len: usize) -> (Errno, Vec<u8>) {
        self.send(Cmd::READ, CmdFlags::empty(), cookie, offset, len as u64, &[]).await;
        let (c, e, d, _) = self.reply(len).await.expect("reply");
        assert_eq!(c, cookie);
        (e, d)
    }
}
