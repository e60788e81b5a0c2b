//! The whole server, handshake and transmission, over an in-memory stream:
//! the fuzz input is what the client sends. The server must never panic
//! and every connection must end (on a current-thread runtime with paused
//! time, so handshake, stall and grace timeouts resolve at once).
//!
//! Input: byte 0 chooses the setup (bits below), byte 1 the size of the
//! pieces the client writes (1 << (b % 13) bytes), the rest is the
//! client's byte stream, starting with its 4 bytes of client flags.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use nbdx::device::{Caps, Device, DeviceError, DeviceResult, Extent, Support, ZeroFlags};
use nbdx::proto::{AllocationFlags, BlockSize};
use nbdx::server::{Server, ServerOptions};
use nbdx::Export;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Setup bits of byte 0.
const READ_ONLY: u8 = 1;
const EMULATE: u8 = 1 << 1;
const LARGE_BLOCKS: u8 = 1 << 2;
const SECOND_EXPORT: u8 = 1 << 3;
/// Never read what the server sends (its stall timeout must end it).
const DEAF: u8 = 1 << 4;
/// Shut the server down halfway through the input (lame duck).
const SHUTDOWN_MIDWAY: u8 = 1 << 5;
/// End by shutting the server down instead of closing the stream.
const SHUTDOWN_AT_END: u8 = 1 << 6;
/// Let the server run requests inline on the reader (`Caps::immediate`).
const IMMEDIATE: u8 = 1 << 7;

const SIZE: usize = 256 << 10;

/// A RAM disk whose extents are its 4 KiB blocks, zero or not.
struct Ram {
    data: Mutex<Vec<u8>>,
    caps: Caps,
}

impl Ram {
    fn range(&self, offset: u64, len: u64) -> DeviceResult<std::ops::Range<usize>> {
        let end = offset.checked_add(len).filter(|e| *e <= SIZE as u64);
        end.map(|e| offset as usize..e as usize).ok_or_else(|| DeviceError::invalid("out of range"))
    }
}

#[async_trait]
impl Device for Ram {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn caps(&self) -> Caps {
        self.caps
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DeviceResult<()> {
        let r = self.range(offset, data.len() as u64)?;
        self.data.lock().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
    async fn flush(&self) -> DeviceResult<()> {
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> DeviceResult<()> {
        let r = self.range(offset, len)?;
        self.data.lock().unwrap()[r].fill(0);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u64, _f: ZeroFlags) -> DeviceResult<()> {
        self.trim(offset, len, false).await
    }
    async fn cache(&self, offset: u64, len: u64) -> DeviceResult<()> {
        self.range(offset, len).map(drop)
    }
    async fn extents(&self, offset: u64, len: u64) -> DeviceResult<Vec<Extent>> {
        let r = self.range(offset, len)?;
        let d = self.data.lock().unwrap();
        let mut out = Vec::new();
        let mut at = r.start;
        while at < r.end {
            let end = ((at / 4096 + 1) * 4096).min(r.end);
            let zero = d[at..end].iter().all(|b| *b == 0);
            let flags = if zero { AllocationFlags::HOLE | AllocationFlags::ZERO } else { AllocationFlags::empty() };
            out.push(Extent { length: (end - at) as u64, flags });
            at = end;
        }
        Ok(out)
    }
}

fn device(setup: u8) -> Arc<Ram> {
    let level = if setup & EMULATE != 0 { Support::Emulate } else { Support::Native };
    let block_size = if setup & LARGE_BLOCKS != 0 {
        BlockSize { minimum: 512, preferred: 4096, maximum: 64 << 10 }
    } else {
        BlockSize::default()
    };
    let caps = Caps {
        flush: true,
        fua: level,
        trim: true,
        zero: level,
        fast_zero: level == Support::Native,
        cache: level,
        multi_conn: true,
        extents: true,
        immediate: setup & IMMEDIATE != 0,
        block_size,
        ..Caps::default()
    };
    Arc::new(Ram { data: Mutex::new(vec![0; SIZE]), caps })
}

async fn session(setup: u8, piece: usize, input: &[u8]) {
    let ram = device(setup);
    let mut builder = Server::builder()
        .export(Export::from_arc("", ram.clone()).with_read_only(setup & READ_ONLY != 0))
        .options(ServerOptions { max_in_flight: 16, ..ServerOptions::default() });
    if setup & SECOND_EXPORT != 0 {
        let export = Export::from_arc("b", ram).with_description("second");
        builder = builder.export(export.with_read_only(setup & READ_ONLY != 0));
    }
    let server = builder.build().expect("valid exports");
    let (client, server_end) = tokio::io::duplex(8 << 10);
    let conn = tokio::spawn({
        let server = server.clone();
        async move { server.serve_connection(server_end).await }
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    let drain = tokio::spawn(async move {
        if setup & DEAF != 0 {
            // Hold the stream open without reading until the server gives up.
            std::future::pending::<()>().await;
        }
        let mut buf = vec![0u8; 64 << 10];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut sent = 0;
    for chunk in input.chunks(piece) {
        if setup & SHUTDOWN_MIDWAY != 0 && sent >= input.len() / 2 {
            server.shutdown();
        }
        if wr.write_all(chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
        tokio::task::yield_now().await;
    }
    if setup & SHUTDOWN_AT_END != 0 {
        server.shutdown();
    } else {
        let _ = wr.shutdown().await;
    }
    // Handshake 10 s, stalls 30 s, grace 5 s: an hour is far beyond any of them.
    let ended = tokio::time::timeout(Duration::from_secs(3600), conn).await;
    let _ = ended.expect("the connection did not end within an hour").expect("the connection task panicked");
    drop(wr);
    drain.abort();
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (setup, piece) = (data[0], 1usize << (data[1] % 13));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    rt.block_on(session(setup, piece, &data[2..]));
});
