//! Limits under abuse: clients that stop reading, pipeline without end,
//! stall mid-payload or dribble; the memory budget and the stall timeout
//! keep the server bounded, and every request still gets its reply.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use nbdx_proto::{AllocationFlags, Cmd, CmdFlags, HeaderMode, ReplyHeader, ReplyMode, RequestHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::device::{Caps, Device, DeviceResult, Extent};
use crate::server::{ConnectionError, ServerOptions};

const MIB: usize = 1 << 20;

/// Requests of `cmd` with cookies `0..n`, `length` bytes each, at offset 0.
fn requests(mode: HeaderMode, cmd: Cmd, n: u64, length: u64) -> BytesMut {
    let mut b = BytesMut::new();
    for cookie in 0..n {
        RequestHeader { flags: CmdFlags::empty(), cmd, cookie, offset: 0, length }.encode(mode, &mut b);
    }
    b
}

/// Reads `n` whole structured replies; returns the cookies of those that
/// succeeded. Panics on an error chunk or a short stream.
async fn successful_replies(rd: &mut (impl AsyncRead + Unpin), n: usize) -> HashSet<u64> {
    let mut buf = BytesMut::new();
    let mut done = HashSet::new();
    while done.len() < n {
        let (h, used) = loop {
            if let Some(h) = ReplyHeader::decode(ReplyMode::Structured, &buf).unwrap() {
                break h;
            }
            assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "end of stream after {} replies", done.len());
        };
        let ReplyHeader::Chunk(c) = h else { panic!("simple reply in structured mode") };
        assert!(!c.kind.is_error(), "request {} failed", c.cookie);
        buf.advance(used);
        let mut skip = c.length as usize;
        while skip > 0 {
            if buf.is_empty() {
                assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "end of stream in a chunk");
            }
            let n = skip.min(buf.len());
            buf.advance(n);
            skip -= n;
        }
        if c.done() {
            assert!(done.insert(c.cookie), "two final chunks for {}", c.cookie);
        }
    }
    done
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_replies_and_then_idles_is_dropped_at_the_stall_timeout() {
    let opts = ServerOptions { stall_timeout: Duration::from_secs(5), ..ServerOptions::default() };
    let server = server_with(TestDisk::new(4 * MIB), opts);
    let (s, task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Structured).await;
    for cookie in 0..8 {
        c.send(Cmd::READ, CmdFlags::empty(), cookie, 0, MIB as u64, &[]).await;
    }
    // The client neither reads nor sends any more: only the stall timeout
    // of the writer can end the connection.
    let r = tokio::time::timeout(Duration::from_secs(60), task).await.expect("still open a minute later").unwrap();
    assert!(matches!(&r, Err(ConnectionError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
    assert_eq!(server.budget_in_use(), 0, "budget released");
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_client_pipelining_reads_without_reading_replies_is_held_to_its_memory_budget() {
    // Both ways of running requests: a task each, and inline on the reader.
    for immediate in [false, true] {
        let caps = Caps { immediate, ..TestDisk::new(0).caps };
        let disk = TestDisk::with_caps(4 * MIB, caps);
        let opts = ServerOptions { max_in_flight: 10_000, connection_budget: 32 * MIB, ..ServerOptions::default() };
        let server = server_with(disk.clone(), opts);
        let (s, task) = pipe(&server);
        let c = Raw::connect(s, Mode::Structured).await;
        let (mut rd, mut wr) = tokio::io::split(c.s);
        let flood = requests(HeaderMode::Compact, Cmd::READ, 200, MIB as u64);
        let sender = tokio::spawn(async move {
            wr.write_all(&flood).await.unwrap();
            wr
        });
        // Let the server run until it blocks: with nothing read, it must stop
        // at its budget, not execute all 200 reads into memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let served = disk.reads.load(Ordering::SeqCst);
        assert!(served <= 32 + 2, "immediate {immediate}: {served} reads of 1 MiB executed with a 32 MiB budget");
        assert!(server.budget_in_use() <= 32 * MIB, "{} bytes reserved", server.budget_in_use());
        // Once the client reads, every request is answered.
        assert_eq!(successful_replies(&mut rd, 200).await.len(), 200);
        drop(sender.await.unwrap());
        drop(rd);
        task.await.unwrap().unwrap();
        assert_eq!(server.budget_in_use(), 0);
    }
}

/// A 1 GiB device whose every byte is an extent of its own, alternating
/// data and hole: a block status reply is as large as nbdx makes them.
struct Fragmented {
    calls: AtomicUsize,
}

#[async_trait]
impl Device for Fragmented {
    fn size(&self) -> u64 {
        1 << 30
    }
    fn caps(&self) -> Caps {
        Caps { extents: true, ..Caps::default() }
    }
    async fn read(&self, _offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        buf.fill(0);
        Ok(())
    }
    async fn extents(&self, _offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = length.min(70_000);
        Ok((0..n).map(|i| Extent { length: 1, flags: AllocationFlags::from_bits_retain((i % 2) as u32) }).collect())
    }
}

#[tokio::test(start_paused = true)]
async fn block_status_replies_waiting_to_be_sent_are_paid_from_the_global_budget() {
    let device = Arc::new(Fragmented { calls: AtomicUsize::new(0) });
    let opts = ServerOptions { global_budget: 32 * MIB, ..ServerOptions::default() };
    let server = server_with(device.clone(), opts);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (s, _task) = pipe(&server);
        let c = Raw::connect(s, Mode::Structured).await;
        let (rd, mut wr) = tokio::io::split(c.s);
        wr.write_all(&requests(HeaderMode::Compact, Cmd::BLOCK_STATUS, 100, 1 << 30)).await.unwrap();
        readers.push((rd, wr));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Each reply holds 65536 extents (512 KiB): 64 fit in 32 MiB; the
    // in-flight limits alone would have let 128 run.
    let calls = device.calls.load(Ordering::SeqCst);
    assert!(calls <= 64 + 4, "{calls} block status replies built with a 32 MiB global budget");
    assert!(server.budget_in_use() <= 32 * MIB);
    // Both clients read at once (the budget one waits for is held by the other).
    let [(mut a, _wa), (mut b, _wb)]: [_; 2] = readers.try_into().ok().unwrap();
    let (ra, rb) = tokio::join!(successful_replies(&mut a, 100), successful_replies(&mut b, 100));
    assert_eq!((ra.len(), rb.len()), (100, 100));
}

#[tokio::test(start_paused = true)]
async fn a_write_payload_that_never_arrives_is_released_at_the_stall_timeout() {
    let opts = ServerOptions { stall_timeout: Duration::from_secs(5), ..ServerOptions::default() };
    let server = server_with(TestDisk::new(4 * MIB), opts);
    let (s, task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Simple).await;
    c.send(Cmd::WRITE, CmdFlags::empty(), 1, 0, MIB as u64, &[7u8; 100]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.budget_in_use() >= MIB, "the write's buffer is paid for while it arrives");
    let r = tokio::time::timeout(Duration::from_secs(60), task).await.expect("still open a minute later").unwrap();
    assert!(matches!(&r, Err(ConnectionError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
    assert_eq!(server.budget_in_use(), 0);
    drop(c);
}

#[tokio::test]
async fn the_configured_discard_limit_decides_between_draining_and_closing() {
    let mut opts = ServerOptions::default();
    opts.limits.max_discard_payload = 8192;
    let export = crate::Export::from_arc("", TestDisk::new(MIB)).with_read_only(true);
    let server = crate::server::Server::builder().export(export).options(opts).build().unwrap();
    let (s, task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Simple).await;
    assert_eq!(c.write(1, 0, &[1u8; 8192]).await, nbdx_proto::Errno::EPERM, "drained and refused");
    c.send(Cmd::WRITE, CmdFlags::empty(), 2, 0, 8193, &[1u8; 8193]).await;
    assert!(c.reply(0).await.is_none(), "closed instead of draining 8193 bytes");
    assert!(matches!(task.await.unwrap(), Err(ConnectionError::Protocol(_))));
}

#[tokio::test]
async fn every_request_received_before_disc_gets_its_reply() {
    let disk = TestDisk::new(MIB);
    let (s, task) = pipe(&server_for(disk.clone()));
    let mut c = Raw::connect(s, Mode::Structured).await;
    let mut b = BytesMut::new();
    for cookie in 0..100u64 {
        // Reads, writes, and reads past the end that fail.
        let (cmd, offset, length) = match cookie % 3 {
            0 => (Cmd::READ, 8192, 512),
            1 => (Cmd::WRITE, cookie * 512, 512),
            _ => (Cmd::READ, MIB as u64, 512),
        };
        RequestHeader { flags: CmdFlags::empty(), cmd, cookie, offset, length }.encode(HeaderMode::Compact, &mut b);
        if cmd == Cmd::WRITE {
            b.put_bytes(cookie as u8, 512);
        }
    }
    RequestHeader { flags: CmdFlags::empty(), cmd: Cmd::DISC, cookie: 100, offset: 0, length: 0 }
        .encode(HeaderMode::Compact, &mut b);
    // All in one go: most requests are still in flight when DISC arrives.
    c.s.write_all(&b).await.unwrap();
    let mut seen = HashSet::new();
    while let Some((cookie, errno, ..)) = c.reply(512).await {
        let want = if cookie % 3 == 2 { nbdx_proto::Errno::EINVAL } else { nbdx_proto::Errno(0) };
        assert_eq!(errno, want, "request {cookie}");
        assert!(seen.insert(cookie));
    }
    assert_eq!(seen, (0..100).collect::<HashSet<u64>>(), "a reply is missing");
    task.await.unwrap().unwrap();
    assert_eq!(&disk.data.lock().unwrap()[512..1024], &[1u8; 512]);
}
