//! The nbdx client against a server that negotiates correctly, then sends
//! the fuzz input as its transmission replies while seven requests are in
//! flight. Every request must end (with its data or an error), the client
//! must never panic or hang, and a read must never get more bytes than it
//! asked for (on a current-thread runtime with paused time, so the request
//! timeout resolves at once).
//!
//! Input: byte 0 chooses the reply layout (low two bits: 0 simple, 1
//! structured, 2 or 3 extended; bit 2 set: the server stays silent after its bytes instead of
//! closing); the rest is what the server sends after `NBD_OPT_GO`. The
//! requests get cookies 1 to 7 in this order: read 512 at 0, read 4096 at
//! 4096, block status 64 KiB at 0, write 512 at 8192, flush, trim 4096 at
//! 0, write zeroes 4096 at 12288.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nbdx::client::{ClientOptions, Negotiation, Stream};
use nbdx::device::ZeroFlags;
use nbdx::proto::server::{ExportMeta, ServerConfig, ServerHandshake, ServerStep};
use nbdx::proto::TransmissionFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SILENT: u8 = 1 << 2;

fn config(mode: u8) -> ServerConfig {
    let mut e = ExportMeta::new("", 1 << 20);
    e.flags |= TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_DF;
    let mut c = ServerConfig::new(vec![e]);
    c.structured_replies = mode >= 1;
    c.extended_headers = mode >= 2;
    c
}

/// Negotiates with the client, then sends `replies`; drains requests.
async fn fake_server(mut s: DuplexStream, mode: u8, silent: bool, replies: Vec<u8>) {
    let mut hs = ServerHandshake::new(Arc::new(config(mode)));
    let mut input = BytesMut::new();
    let out = hs.take_output();
    if s.write_all(&out).await.is_err() {
        return;
    }
    loop {
        match hs.handle_input(&mut input) {
            Ok(ServerStep::NeedInput(mut next)) => {
                let out = next.take_output();
                if s.write_all(&out).await.is_err() || !matches!(s.read_buf(&mut input).await, Ok(n) if n > 0) {
                    return;
                }
                hs = next;
            }
            Ok(ServerStep::Transmission(n)) => {
                if s.write_all(&n.output).await.is_err() {
                    return;
                }
                break;
            }
            _ => return,
        }
    }
    let (mut rd, mut wr) = tokio::io::split(s);
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    // Paused time advances only when every task waits: the client has sent
    // all its requests by then.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = wr.write_all(&replies).await;
    if silent {
        std::future::pending::<()>().await;
    }
    let _ = wr.shutdown().await;
    drain.abort();
}

async fn session(setup: u8, replies: &[u8]) {
    let mode = (setup & 3) % 3;
    let (c, s) = tokio::io::duplex(64 << 10);
    let server = tokio::spawn(fake_server(s, mode, setup & SILENT != 0, replies.to_vec()));
    let opts = ClientOptions::new()
        .structured_replies(mode >= 1)
        .extended_headers(mode >= 2)
        .timeout(Duration::from_secs(10))
        .request_timeout(Some(Duration::from_secs(30)));
    let neg = Negotiation::start_with_stream(Stream::other(c), &opts).await.expect("the handshake is valid");
    let client = neg.go().await.expect("the handshake is valid");
    let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 4096]);
    let zero = ZeroFlags { fua: false, no_hole: false, fast: false };
    let (ra, rb, bs, w, f, t, z) = tokio::join!(
        client.read(0, &mut a),
        client.read(4096, &mut b),
        client.block_status(0, 64 << 10),
        client.write(8192, &[0x5a; 512], false),
        client.flush(),
        client.trim(0, 4096, false),
        client.write_zeroes(12288, 4096, zero),
    );
    let _ = (ra, rb, w, f, t, z);
    if let Ok(extents) = bs {
        // At least one extent, and all but the last end inside the request
        // (proto.md: the final extent alone may reach beyond it).
        let (_, all_but_last) = extents.split_last().expect("block status returned no extent");
        let before = all_but_last.iter().fold(0u64, |sum, e| sum.saturating_add(e.length));
        assert!(before < 64 << 10, "extents before the last cover {before} bytes of a 64 KiB request");
        assert!(extents.iter().all(|e| e.length > 0), "an empty extent");
    }
    client.disconnect().await;
    server.abort();
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, replies)) = data.split_first() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    rt.block_on(async {
        let ended = tokio::time::timeout(Duration::from_secs(3600), session(setup, replies)).await;
        ended.expect("the client did not finish within an hour");
    });
});
