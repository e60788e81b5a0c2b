//! Transmission against well-behaved in-process servers: every reply mode,
//! splitting, validation, multi-conn, disconnect.

mod client_support;

use std::sync::{Arc, Mutex};

use client_support::{bounded, export, memory_server, opts, suite, Log, Tx};
use nbdx::client::{Client, ClientError, MultiConn};
use nbdx::proto::server::ServerConfig;
use nbdx::proto::{BlockSize, Cmd, CmdFlags, ReplyMode, TransmissionFlags};

const MIB: u64 = 1 << 20;

fn disk(size: u64) -> Arc<Mutex<Vec<u8>>> {
    Arc::new(Mutex::new(vec![0; size as usize]))
}

fn config(structured: bool, extended: bool) -> ServerConfig {
    let mut c = ServerConfig::new(vec![export("", 16 * MIB)]);
    c.structured_replies = structured;
    c.extended_headers = extended;
    c
}

async fn suite_in_mode(structured: bool, extended: bool, expected: ReplyMode) {
    let log = Arc::new(Mutex::new(Log::default()));
    let server = memory_server(config(structured, extended), disk(16 * MIB), log.clone());
    let c = Client::connect(&server.target, &opts()).await.expect("connect");
    assert_eq!(c.info().mode, expected);
    assert_eq!(c.extended_headers(), expected == ReplyMode::Extended);
    suite::read_write_round_trip(&c).await;
    suite::zeroes_read_back_as_zeroes(&c).await;
    suite::many_requests_in_flight(&c).await;
    if expected == ReplyMode::Simple {
        let e = c.block_status(0, 4096).await.unwrap_err();
        assert!(matches!(e, ClientError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("structured replies"), "{e}");
    } else {
        suite::block_status_sees_data_and_zeroes(&c).await;
    }
    c.disconnect().await;
    assert_eq!(log.lock().unwrap().requests.last().map(|r| r.0), Some(Cmd::DISC));
}

#[tokio::test]
async fn extended_headers_are_negotiated_and_used_end_to_end() {
    bounded(suite_in_mode(true, true, ReplyMode::Extended)).await;
}

#[tokio::test]
async fn a_server_without_extended_headers_gets_structured_replies() {
    bounded(suite_in_mode(true, false, ReplyMode::Structured)).await;
}

#[tokio::test]
async fn a_server_without_structured_replies_gets_simple_replies_and_no_block_status() {
    bounded(suite_in_mode(false, false, ReplyMode::Simple)).await;
}

#[tokio::test]
async fn large_reads_and_writes_are_split_at_the_maximum_payload_on_preferred_boundaries() {
    bounded(async {
        let mut cfg = config(true, true);
        cfg.exports[0].block_size = BlockSize { minimum: 512, preferred: 4096, maximum: 65536 + 512 };
        let log = Arc::new(Mutex::new(Log::default()));
        let server = memory_server(cfg, disk(16 * MIB), log.clone());
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let data = suite::pattern(512, 200_000 - 200_000 % 512, 1);
        c.write(512, &data, false).await.unwrap();
        let mut back = vec![0; data.len()];
        c.read(512, &mut back).await.unwrap();
        assert!(back == data);
        let reqs = log.lock().unwrap().requests.clone();
        assert!(reqs.iter().all(|r| r.3 <= 65536), "a request exceeded the maximum payload: {reqs:?}");
        let writes: Vec<_> = reqs.iter().filter(|r| r.0 == Cmd::WRITE).collect();
        assert!(writes.len() >= 4);
        assert!(writes[1..].iter().all(|r| r.2 % 4096 == 0), "pieces after the first start on preferred boundaries");
    })
    .await;
}

#[tokio::test]
async fn requests_that_break_the_advertised_rules_are_refused_without_being_sent() {
    bounded(async {
        let mut cfg = config(true, true);
        let e = &mut cfg.exports[0];
        e.block_size = BlockSize { minimum: 512, preferred: 4096, maximum: MIB as u32 };
        e.flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY;
        let log = Arc::new(Mutex::new(Log::default()));
        let server = memory_server(cfg, disk(16 * MIB), log.clone());
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let mut buf = vec![0u8; 1000];
        let refused = [
            c.read(0, &mut buf).await.unwrap_err(),
            c.read(100, &mut buf[..512]).await.unwrap_err(),
            c.read(16 * MIB, &mut buf[..512]).await.unwrap_err(),
            c.write(0, &buf[..512], false).await.unwrap_err(),
            c.flush().await.unwrap_err(),
            c.trim(0, 512, false).await.unwrap_err(),
            c.cache(0, 512).await.unwrap_err(),
        ];
        for e in &refused {
            assert!(matches!(e, ClientError::InvalidRequest(_)), "{e}");
            assert!(!e.is_fatal());
        }
        c.read(4096, &mut buf[..512]).await.expect("a valid read still works");
        let reqs = log.lock().unwrap().requests.clone();
        assert_eq!(reqs, [(Cmd::READ, CmdFlags::empty(), 4096, 512)], "only the valid request reached the server");
    })
    .await;
}

#[tokio::test]
async fn multi_conn_spreads_requests_over_all_connections_and_flushes_each() {
    bounded(async {
        let mut cfg = config(true, true);
        cfg.exports[0].flags |= TransmissionFlags::CAN_MULTI_CONN;
        let log = Arc::new(Mutex::new(Log::default()));
        let server = memory_server(cfg, disk(16 * MIB), log.clone());
        let m = MultiConn::connect(&server.target, &opts(), 4).await.expect("multi-conn");
        assert_eq!(m.connections(), 4);
        suite::all(&m).await;
        log.lock().unwrap().requests.clear();
        m.flush().await.unwrap();
        let flushes = log.lock().unwrap().requests.iter().filter(|r| r.0 == Cmd::FLUSH).count();
        assert_eq!(flushes, 4, "flush goes to every connection");
        m.disconnect().await;
        assert!(matches!(m.flush().await, Err(ClientError::Closed)));
    })
    .await;
}

#[tokio::test]
async fn multi_conn_is_refused_when_the_export_does_not_advertise_it() {
    bounded(async {
        let server = memory_server(config(true, true), disk(MIB), Arc::default());
        let e = MultiConn::connect(&server.target, &opts(), 2).await.unwrap_err();
        assert!(e.to_string().contains("NBD_FLAG_CAN_MULTI_CONN"), "{e}");
        let one = MultiConn::connect(&server.target, &opts(), 1).await.expect("one connection is always fine");
        assert_eq!(one.connections(), 1);
    })
    .await;
}

#[tokio::test]
async fn disconnect_waits_for_requests_in_flight_then_sends_nbd_cmd_disc() {
    bounded(async {
        let server = client_support::FakeServer::start(|s| async move {
            let mut tx = Tx::accept(s, config(true, false)).await.unwrap();
            let (read, _) = tx.request().await.unwrap();
            // The client is disconnecting now; DISC must not come before this reply.
            tx.read_reply(&read, &[7; 512]).await;
            let (disc, _) = tx.request().await.unwrap();
            assert_eq!(disc.cmd, Cmd::DISC);
        });
        let c = Client::connect(&server.target, &opts()).await.unwrap();
        let reader = c.clone();
        let read = tokio::spawn(async move {
            let mut b = vec![0u8; 512];
            reader.read(0, &mut b).await.map(|()| b)
        });
        while c.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        c.disconnect().await;
        assert_eq!(read.await.unwrap().unwrap(), vec![7; 512]);
        assert!(matches!(c.read(0, &mut [0; 512]).await, Err(ClientError::Closed)));
    })
    .await;
}

#[test]
fn a_client_whose_runtime_is_gone_fails_instead_of_hanging() {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let server = server_rt.block_on(async { memory_server(config(true, false), disk(MIB), Arc::default()) });
    let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let c = first.block_on(Client::connect(&server.target, &opts())).unwrap();
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = second.block_on(bounded(c.read(0, &mut [0; 512]))).unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e}");
}
