//! Broken and malicious servers: every waiting request fails with a clear
//! error, none hangs, and nothing is allocated from a length the server
//! claims.

mod client_support;

use std::time::Duration;

use bytes::BytesMut;
use client_support::{bounded, export, opts, FakeServer, Tx};
use nbdx::client::{Client, ClientError};
use nbdx::proto::codec::reply::{ChunkHeader, ChunkPayload};
use nbdx::proto::server::ServerConfig;
use nbdx::proto::{Errno, ProtocolError, ReplyFlags, ReplyMode, ReplyType};

fn config(structured: bool) -> ServerConfig {
    let mut c = ServerConfig::new(vec![export("", 1 << 20)]);
    c.structured_replies = structured;
    c.extended_headers = false;
    c
}

/// Connects to a server whose transmission phase is `script`.
fn server<F, Fut>(structured: bool, script: F) -> FakeServer
where
    F: Fn(Tx) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    FakeServer::start(move |s| async move {
        if let Some(tx) = Tx::accept(s, config(structured)).await {
            script(tx).await;
        }
    })
}

async fn read(c: &Client, offset: u64) -> Result<Vec<u8>, ClientError> {
    let mut b = vec![0u8; 512];
    c.read(offset, &mut b).await.map(|()| b)
}

#[tokio::test]
async fn replies_that_arrive_out_of_order_complete_the_right_requests() {
    bounded(async {
        let server = server(true, |mut tx| async move {
            let mut reqs = Vec::new();
            for _ in 0..3 {
                reqs.push(tx.request().await.unwrap().0);
            }
            for h in reqs.iter().rev() {
                tx.read_reply(h, &[(h.offset / 512) as u8 + 1; 512]).await;
            }
            while tx.request().await.is_some() {}
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let (a, b, d) = tokio::join!(read(&c, 0), read(&c, 512), read(&c, 1024));
        assert_eq!((a.unwrap()[0], b.unwrap()[0], d.unwrap()[0]), (1, 2, 3));
    })
    .await;
}

#[tokio::test]
async fn a_read_is_reassembled_from_data_and_hole_chunks_in_any_order() {
    bounded(async {
        let server = server(true, |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            tx.data(&h, h.offset + 3072, &[9; 1024], false).await;
            tx.chunk(&h, ChunkPayload::Hole { offset: h.offset + 1024, length: 2048 }, false).await;
            tx.data(&h, h.offset, &[5; 1024], false).await;
            tx.chunk(&h, ChunkPayload::None, true).await;
            while tx.request().await.is_some() {}
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let got = c.read_owned(8192, vec![0xEE; 4096]).await.unwrap();
        assert!(got[..1024].iter().all(|b| *b == 5));
        assert!(got[1024..3072].iter().all(|b| *b == 0), "holes are zero-filled in a recycled buffer");
        assert!(got[3072..].iter().all(|b| *b == 9));
    })
    .await;
}

#[tokio::test]
async fn an_error_chunk_fails_only_its_request_and_the_connection_lives() {
    bounded(async {
        let server = server(true, |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            let e = ChunkPayload::Error { errno: Errno::EIO, message: "bad sector".into(), offset: Some(h.offset) };
            tx.chunk(&h, e, true).await;
            let (h, _) = tx.request().await.unwrap();
            tx.read_reply(&h, &[1; 512]).await;
            while tx.request().await.is_some() {}
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let e = read(&c, 0).await.unwrap_err();
        assert!(matches!(&e, ClientError::Server { errno: Errno::EIO, offset: Some(0), .. }), "{e}");
        assert!(e.to_string().contains("bad sector"));
        assert_eq!(read(&c, 512).await.unwrap(), vec![1; 512]);
    })
    .await;
}

/// Sends two reads, answers with `bad`, and checks that both fail with a
/// protocol error and that the connection is dead afterwards.
async fn both_fail<F, Fut>(script: F, check: impl Fn(&ProtocolError) -> bool)
where
    F: Fn(Tx) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server = server(true, script);
    let c = Client::connect(&server.target, &opts()).await.unwrap();
    let (a, b) = tokio::join!(read(&c, 0), read(&c, 512));
    for e in [a.unwrap_err(), b.unwrap_err()] {
        match &e {
            ClientError::Protocol(p) => assert!(check(p), "unexpected protocol error: {p}"),
            other => panic!("expected a protocol error, got: {other}"),
        }
        assert!(e.is_fatal());
    }
    assert!(matches!(read(&c, 0).await, Err(ClientError::Protocol(_))), "the connection stays dead");
}

#[tokio::test]
async fn a_reply_for_an_unknown_cookie_fails_every_pending_request() {
    bounded(both_fail(
        |mut tx| async move {
            tx.request().await.unwrap();
            tx.request().await.unwrap();
            tx.simple(0xdead_beef, 0, &[]).await;
            while tx.request().await.is_some() {}
        },
        |p| matches!(p, ProtocolError::UnknownCookie(0xdead_beef)),
    ))
    .await;
}

#[tokio::test]
async fn a_malformed_chunk_fails_every_pending_request() {
    bounded(both_fail(
        |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            tx.request().await.unwrap();
            // A hole chunk whose payload is 5 bytes instead of 12.
            let header = ChunkHeader {
                flags: ReplyFlags::DONE,
                kind: ReplyType::OFFSET_HOLE,
                cookie: h.cookie,
                offset: 0,
                length: 5,
            };
            let mut b = BytesMut::new();
            header.encode(ReplyMode::Structured, &mut b);
            b.extend_from_slice(&[0; 5]);
            tx.send(&b).await;
            while tx.request().await.is_some() {}
        },
        |p| matches!(p, ProtocolError::Malformed(_)),
    ))
    .await;
}

#[tokio::test]
async fn an_oversized_chunk_is_refused_from_its_header_alone() {
    bounded(both_fail(
        |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            tx.request().await.unwrap();
            // Claims 2 GiB of data for a 512-byte read; nothing follows.
            let header = ChunkHeader {
                flags: ReplyFlags::DONE,
                kind: ReplyType::OFFSET_DATA,
                cookie: h.cookie,
                offset: 0,
                length: 1 << 31,
            };
            let mut b = BytesMut::new();
            header.encode(ReplyMode::Structured, &mut b);
            tx.send(&b).await;
            while tx.request().await.is_some() {}
        },
        |p| matches!(p, ProtocolError::InvalidChunk(_)),
    ))
    .await;
}

#[tokio::test]
async fn an_error_chunk_claiming_a_huge_message_is_refused_from_its_header_alone() {
    bounded(both_fail(
        |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            tx.request().await.unwrap();
            let header = ChunkHeader {
                flags: ReplyFlags::DONE,
                kind: ReplyType::ERROR,
                cookie: h.cookie,
                offset: 0,
                length: u32::MAX.into(),
            };
            let mut b = BytesMut::new();
            header.encode(ReplyMode::Structured, &mut b);
            tx.send(&b).await;
            while tx.request().await.is_some() {}
        },
        |p| matches!(p, ProtocolError::ReplyTooLarge(_)),
    ))
    .await;
}

#[tokio::test]
async fn a_read_answered_with_less_data_than_requested_is_a_protocol_error() {
    bounded(both_fail(
        |mut tx| async move {
            let (h, _) = tx.request().await.unwrap();
            tx.request().await.unwrap();
            tx.data(&h, h.offset, &[1; 100], true).await;
            while tx.request().await.is_some() {}
        },
        |p| matches!(p, ProtocolError::InvalidChunk(_)),
    ))
    .await;
}

#[tokio::test]
async fn a_server_that_disconnects_with_requests_in_flight_fails_them_all() {
    bounded(async {
        let server = server(false, |mut tx| async move {
            for _ in 0..3 {
                tx.request().await.unwrap();
            }
            // Dropping tx closes the connection with three requests unanswered.
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let (a, b, d) = tokio::join!(read(&c, 0), read(&c, 512), c.write(1024, &[1; 512], false));
        for e in [a.unwrap_err(), b.unwrap_err(), d.unwrap_err()] {
            assert!(matches!(e, ClientError::Disconnected(_)), "{e}");
            assert_eq!(e.to_string(), "server closed the connection");
        }
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_answers_a_request_times_out_and_fails_all_requests() {
    bounded(async {
        let server = server(true, |mut tx| async move { while tx.request().await.is_some() {} });
        let o = opts().request_timeout(Some(Duration::from_millis(300)));
        let c = Client::connect(&server.target, &o).await.unwrap();
        let (a, b) = tokio::join!(read(&c, 0), read(&c, 512));
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        }
        assert!(read(&c, 0).await.is_err(), "the connection is dead after a timeout");
    })
    .await;
}

#[tokio::test]
async fn a_caller_that_gives_up_on_a_read_leaves_the_connection_usable() {
    bounded(async {
        let server = server(true, |mut tx| async move {
            let (orphan, _) = tx.request().await.unwrap();
            let (next, _) = tx.request().await.unwrap();
            tx.read_reply(&orphan, &[1; 512]).await;
            tx.read_reply(&next, &[2; 512]).await;
            while tx.request().await.is_some() {}
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let task = {
            let c = c.clone();
            tokio::spawn(async move { read(&c, 0).await })
        };
        while c.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(read(&c, 512).await.unwrap(), vec![2; 512], "the orphaned reply is dropped, the next one delivered");
        assert_eq!(c.in_flight(), 0);
    })
    .await;
}
