//! Requests over an in-memory connection: concurrency, errors, replies.

use std::sync::atomic::Ordering;

use nbdx_proto::{AllocationFlags, Cmd, CmdFlags, Errno, TransmissionFlags};

use super::*;
use crate::device::{Caps, Support};
use crate::server::Server;
use crate::Export;

const MIB: usize = 1 << 20;

#[tokio::test]
async fn a_write_reads_back_in_every_reply_mode() {
    for mode in [Mode::Simple, Mode::Structured, Mode::Extended] {
        let disk = TestDisk::new(MIB);
        let (s, _task) = pipe(&server_for(disk));
        let mut c = Raw::connect(s, mode).await;
        assert_eq!(c.write(1, 4095, b"hello world").await, Errno(0));
        assert_eq!(c.read(2, 4095, 11).await, (Errno(0), b"hello world".to_vec()));
    }
}

#[tokio::test]
async fn replies_leave_in_completion_order_not_request_order() {
    let disk = TestDisk::new(MIB);
    let gate = disk.gate(0);
    let (s, _task) = pipe(&server_for(disk));
    let mut c = Raw::connect(s, Mode::Structured).await;
    c.send(Cmd::READ, CmdFlags::empty(), 10, 0, 512, &[]).await;
    c.send(Cmd::READ, CmdFlags::empty(), 11, 4096, 512, &[]).await;
    let (first, ..) = c.reply(512).await.unwrap();
    assert_eq!(first, 11, "the second request finished first");
    gate.notify_one();
    let (second, ..) = c.reply(512).await.unwrap();
    assert_eq!(second, 10);
}

#[tokio::test]
async fn disc_waits_for_in_flight_requests_then_flushes_and_closes() {
    let disk = TestDisk::new(MIB);
    let gate = disk.gate(8192);
    let (s, task) = pipe(&server_for(disk.clone()));
    let mut c = Raw::connect(s, Mode::Structured).await;
    c.send(Cmd::WRITE, CmdFlags::empty(), 1, 8192, 3, b"abc").await;
    c.send(Cmd::DISC, CmdFlags::empty(), 2, 0, 0, &[]).await;
    tokio::task::yield_now().await;
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 0, "flushed before the write finished");
    gate.notify_one();
    let (cookie, e, ..) = c.reply(0).await.expect("the write is answered");
    assert_eq!((cookie, e), (1, Errno(0)));
    assert!(c.reply(0).await.is_none(), "connection closed after DISC");
    task.await.unwrap().unwrap();
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(&disk.data.lock().unwrap()[8192..8195], b"abc");
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_lives() {
    let (s, _task) = pipe(&server_for(TestDisk::new(MIB)));
    let mut c = Raw::connect(s, Mode::Structured).await;
    assert_eq!(c.read(1, MIB as u64, 1).await.0, Errno::EINVAL);
    assert_eq!(c.write(2, MIB as u64 - 1, b"xy").await, Errno::ENOSPC);
    c.send(Cmd(42), CmdFlags::empty(), 3, 0, 0, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno::EINVAL);
    c.send(Cmd::READ, CmdFlags::from_bits_retain(1 << 12), 4, 0, 1, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno::EINVAL);
    assert_eq!(c.read(5, 0, 4).await, (Errno(0), vec![0; 4]));
}

#[tokio::test]
async fn a_bad_request_magic_closes_the_connection() {
    let (s, task) = pipe(&server_for(TestDisk::new(MIB)));
    let mut c = Raw::connect(s, Mode::Simple).await;
    use tokio::io::AsyncWriteExt;
    c.s.write_all(&[0xde; 28]).await.unwrap();
    assert!(c.reply(0).await.is_none());
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn writes_of_the_maximum_payload_round_trip() {
    let (s, _task) = pipe(&server_for(TestDisk::new(64 * MIB)));
    let mut c = Raw::connect(s, Mode::Structured).await;
    let data: Vec<u8> = (0..32 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(c.write(1, 3 * MIB as u64, &data).await, Errno(0));
    let (e, back) = c.read(2, 3 * MIB as u64, 32 * MIB).await;
    assert_eq!(e, Errno(0));
    assert!(back == data, "32 MiB read back differs");
}

#[tokio::test]
async fn a_rejected_write_payload_is_consumed_and_the_next_request_works() {
    let server = Server::new(vec![Export::from_arc("", TestDisk::new(MIB)).with_read_only(true)]).unwrap();
    let (s, _task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Simple).await;
    assert!(c.c.flags.contains(TransmissionFlags::READ_ONLY));
    assert_eq!(c.write(1, 0, &[1u8; 70_000]).await, Errno::EPERM);
    assert_eq!(c.read(2, 0, 8).await, (Errno(0), vec![0; 8]));
}

#[tokio::test]
async fn block_status_reports_data_and_holes_after_writes_trims_and_zeroes() {
    for mode in [Mode::Structured, Mode::Extended] {
        let (s, _task) = pipe(&server_for(TestDisk::new(MIB)));
        let mut c = Raw::connect(s, mode).await;
        assert_eq!(c.write(1, 4096, &[9u8; 8192]).await, Errno(0));
        c.send(Cmd::TRIM, CmdFlags::empty(), 2, 8192, 4096, &[]).await;
        assert_eq!(c.reply(0).await.unwrap().1, Errno(0));
        c.send(Cmd::BLOCK_STATUS, CmdFlags::empty(), 3, 0, 16384, &[]).await;
        let (_, e, _, extents) = c.reply(0).await.unwrap();
        assert_eq!(e, Errno(0));
        let hz = u64::from((AllocationFlags::HOLE | AllocationFlags::ZERO).bits());
        assert_eq!(extents, vec![(4096, hz), (4096, 0), (8192, hz)]);
        c.send(Cmd::BLOCK_STATUS, CmdFlags::REQ_ONE, 4, 4096, 100, &[]).await;
        assert_eq!(c.reply(0).await.unwrap().3, vec![(100, 0)]);
    }
}

#[tokio::test]
async fn block_status_without_negotiated_contexts_is_einval() {
    let (s, _task) = pipe(&server_for(TestDisk::new(MIB)));
    let mut c = Raw::connect(s, Mode::Simple).await;
    c.send(Cmd::BLOCK_STATUS, CmdFlags::empty(), 1, 0, 512, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno::EINVAL);
}

fn emulating() -> Caps {
    Caps { flush: true, fua: Support::Emulate, zero: Support::Emulate, cache: Support::Emulate, ..Caps::default() }
}

#[tokio::test]
async fn emulated_zeroing_writes_zeroes_and_refuses_fast_zero() {
    let disk = TestDisk::with_caps(4 * MIB, emulating());
    disk.data.lock().unwrap().fill(0xff);
    let (s, _task) = pipe(&server_for(disk.clone()));
    let mut c = Raw::connect(s, Mode::Structured).await;
    assert!(c.c.flags.contains(TransmissionFlags::SEND_FAST_ZERO));
    c.send(Cmd::WRITE_ZEROES, CmdFlags::FAST_ZERO, 1, 0, 4096, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno::ENOTSUP);
    assert!(disk.data.lock().unwrap()[..4096].iter().all(|b| *b == 0xff), "fast zero changed data");
    c.send(Cmd::WRITE_ZEROES, CmdFlags::empty(), 2, 1000, 3 * MIB as u64, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno(0));
    let d = disk.data.lock().unwrap();
    assert!(d[1000..1000 + 3 * MIB].iter().all(|b| *b == 0));
    assert_eq!((d[999], d[1000 + 3 * MIB]), (0xff, 0xff));
}

#[tokio::test]
async fn emulated_fua_flushes_after_the_write() {
    let disk = TestDisk::with_caps(MIB, emulating());
    let (s, _task) = pipe(&server_for(disk.clone()));
    let mut c = Raw::connect(s, Mode::Structured).await;
    c.send(Cmd::WRITE, CmdFlags::FUA, 1, 0, 2, b"ok").await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno(0));
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    c.send(Cmd::CACHE, CmdFlags::empty(), 2, 0, 2 * 4096, &[]).await;
    assert_eq!(c.reply(0).await.unwrap().1, Errno(0));
}

#[tokio::test]
async fn unadvertised_commands_are_refused_with_einval() {
    let disk = TestDisk::with_caps(MIB, Caps::default());
    let (s, _task) = pipe(&server_for(disk));
    let mut c = Raw::connect(s, Mode::Structured).await;
    for (cookie, cmd) in [(1, Cmd::FLUSH), (2, Cmd::TRIM), (3, Cmd::WRITE_ZEROES), (4, Cmd::CACHE)] {
        c.send(cmd, CmdFlags::empty(), cookie, 0, if cmd == Cmd::FLUSH { 0 } else { 512 }, &[]).await;
        assert_eq!(c.reply(0).await.unwrap().1, Errno::EINVAL, "{cmd}");
    }
}

#[tokio::test]
async fn many_pipelined_requests_all_get_their_reply() {
    let disk = TestDisk::new(MIB);
    let (s, _task) = pipe(&server_for(disk));
    let mut c = Raw::connect(s, Mode::Structured).await;
    for i in 0..200u64 {
        let byte = [i as u8; 512];
        c.send(Cmd::WRITE, CmdFlags::empty(), i, i * 512, 512, &byte).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let (cookie, e, ..) = c.reply(0).await.unwrap();
        assert_eq!(e, Errno(0));
        assert!(seen.insert(cookie));
    }
    for i in [0u64, 77, 199] {
        assert_eq!(c.read(1000 + i, i * 512, 512).await.1, vec![i as u8; 512]);
    }
}
