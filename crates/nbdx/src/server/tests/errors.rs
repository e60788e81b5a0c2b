//! Invalid requests over the wire: each gets the errno `proto.md` names
//! ("Error values" and the per-command text), its payload is consumed, and
//! the connection lives on; lost framing closes it.

use nbdx_proto::{Cmd, CmdFlags, Errno};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::server::{ConnectionError, Server};
use crate::Export;

const MIB: u64 = 1 << 20;

/// One request, what it carries, and the errno it must get.
struct Bad {
    what: &'static str,
    cmd: Cmd,
    flags: CmdFlags,
    offset: u64,
    length: u64,
    payload: usize,
    errno: Errno,
}

const fn bad(what: &'static str, cmd: Cmd, flags: u16, offset: u64, length: u64, payload: usize, errno: Errno) -> Bad {
    Bad { what, cmd, flags: CmdFlags::from_bits_retain(flags), offset, length, payload, errno }
}

/// Requests every reply mode refuses the same way (the export is 1 MiB).
const COMMON: &[Bad] = &[
    bad("unknown command", Cmd(42), 0, 0, 0, 0, Errno::EINVAL),
    bad("resize was not negotiated", Cmd::RESIZE, 0, 0, MIB, 0, Errno::EINVAL),
    bad("unknown flag", Cmd::READ, 1 << 12, 0, 512, 0, Errno::EINVAL),
    bad("NO_HOLE on a read", Cmd::READ, 1 << 1, 0, 512, 0, Errno::EINVAL),
    bad("REQ_ONE on a read", Cmd::READ, 1 << 3, 0, 512, 0, Errno::EINVAL),
    bad("FAST_ZERO on a trim", Cmd::TRIM, 1 << 4, 0, 512, 0, Errno::EINVAL),
    bad("DF on a write", Cmd::WRITE, 1 << 2, 0, 4, 4, Errno::EINVAL),
    bad("offset + length overflows", Cmd::READ, 0, u64::MAX - 10, 512, 0, Errno::EINVAL),
    bad("write whose end overflows", Cmd::WRITE, 0, u64::MAX - 2, 4, 4, Errno::EINVAL),
    bad("trim whose end overflows", Cmd::TRIM, 0, u64::MAX, 2, 0, Errno::EINVAL),
    bad("2 GiB read", Cmd::READ, 0, 0, 1 << 31, 0, Errno::EINVAL),
    bad("read past the end", Cmd::READ, 0, MIB - 256, 512, 0, Errno::EINVAL),
    bad("write past the end", Cmd::WRITE, 0, MIB - 2, 4, 4, Errno::ENOSPC),
    bad("trim past the end", Cmd::TRIM, 0, MIB, 512, 0, Errno::EINVAL),
    bad("zero past the end", Cmd::WRITE_ZEROES, 0, MIB, 512, 0, Errno::ENOSPC),
    bad("cache past the end", Cmd::CACHE, 0, MIB, 512, 0, Errno::EINVAL),
    bad("flush with a length", Cmd::FLUSH, 0, 0, 512, 0, Errno::EINVAL),
];

/// In compact headers a write above the maximum payload is drained and
/// refused; with extended headers it is a hard disconnect (tested below).
const COMPACT_ONLY: &[Bad] =
    &[bad("write above the maximum payload", Cmd::WRITE, 0, 0, 33 << 20, 33 << 20, Errno::EINVAL)];

/// Sends `cases` one by one, checking each errno, then a good read.
async fn check(c: &mut Raw, cases: &[Bad], mode: &str) {
    for (i, b) in cases.iter().enumerate() {
        let payload = vec![0xa5; b.payload];
        let cookie = 1000 + i as u64;
        c.send(b.cmd, b.flags, cookie, b.offset, b.length, &payload).await;
        let (got_cookie, errno, ..) =
            c.reply(0).await.unwrap_or_else(|| panic!("{mode}, {}: connection closed", b.what));
        assert_eq!((got_cookie, errno), (cookie, b.errno), "{mode}, {}", b.what);
    }
    assert_eq!(c.read(1, 0, 8).await, (Errno(0), vec![0; 8]), "{mode}: the connection lives on");
}

#[tokio::test]
async fn invalid_requests_get_the_errno_the_spec_names_in_every_mode() {
    for (mode, name) in [(Mode::Simple, "simple"), (Mode::Structured, "structured"), (Mode::Extended, "extended")] {
        let (s, _task) = pipe(&server_for(TestDisk::new(MIB as usize)));
        let mut c = Raw::connect(s, mode).await;
        check(&mut c, COMMON, name).await;
        if !matches!(mode, Mode::Extended) {
            check(&mut c, COMPACT_ONLY, name).await;
        }
        if matches!(mode, Mode::Simple) {
            // No structured replies, so no metadata context could be set.
            let bs = [bad("block status without negotiation", Cmd::BLOCK_STATUS, 0, 0, 512, 0, Errno::EINVAL)];
            check(&mut c, &bs, name).await;
        }
    }
}

#[tokio::test]
async fn payload_length_misuse_is_einval_and_the_payload_is_consumed() {
    let (s, _task) = pipe(&server_for(TestDisk::new(MIB as usize)));
    let mut c = Raw::connect(s, Mode::Simple).await;
    // Compact headers: PAYLOAD_LEN MUST NOT be used; a write still carries its data.
    check(&mut c, &[bad("PAYLOAD_LEN, compact", Cmd::WRITE, 1 << 5, 0, 16, 16, Errno::EINVAL)], "compact").await;
    let (s, _task) = pipe(&server_for(TestDisk::new(MIB as usize)));
    let mut c = Raw::connect(s, Mode::Extended).await;
    // Extended: a read announcing a payload gets EINVAL after the payload is read.
    check(&mut c, &[bad("read with a payload", Cmd::READ, 1 << 5, 0, 16, 16, Errno::EINVAL)], "extended").await;
}

#[tokio::test]
async fn an_extended_payload_above_the_maximum_is_a_hard_disconnect() {
    let (s, task) = pipe(&server_for(TestDisk::new(MIB as usize)));
    let mut c = Raw::connect(s, Mode::Extended).await;
    c.send(Cmd::READ, CmdFlags::PAYLOAD_LEN, 1, 0, 1 << 40, &[]).await;
    assert!(c.reply(0).await.is_none());
    assert!(matches!(task.await.unwrap(), Err(ConnectionError::Protocol(_))));
}

#[tokio::test]
async fn writes_trims_and_zeroes_on_a_read_only_export_are_eperm() {
    let server = Server::new(vec![Export::from_arc("", TestDisk::new(MIB as usize)).with_read_only(true)]).unwrap();
    let (s, _task) = pipe(&server);
    let mut c = Raw::connect(s, Mode::Structured).await;
    let cases = [
        bad("write", Cmd::WRITE, 0, 0, 512, 512, Errno::EPERM),
        bad("trim", Cmd::TRIM, 0, 0, 512, 0, Errno::EPERM),
        bad("zero", Cmd::WRITE_ZEROES, 0, 0, 512, 0, Errno::EPERM),
        bad("write past the end", Cmd::WRITE, 0, MIB, 512, 512, Errno::EPERM),
    ];
    check(&mut c, &cases, "read-only").await;
}

#[tokio::test]
async fn a_request_in_the_other_header_layout_closes_the_connection() {
    for (mode, other) in
        [(Mode::Simple, nbdx_proto::HeaderMode::Extended), (Mode::Extended, nbdx_proto::HeaderMode::Compact)]
    {
        let (s, task) = pipe(&server_for(TestDisk::new(MIB as usize)));
        let mut c = Raw::connect(s, mode).await;
        let mut b = Vec::new();
        let h = nbdx_proto::RequestHeader { flags: CmdFlags::empty(), cmd: Cmd::READ, cookie: 1, offset: 0, length: 8 };
        h.encode(other, &mut b);
        // Pad so that the server has a whole header of its own layout to read.
        b.resize(40, 0);
        c.s.write_all(&b).await.unwrap();
        assert!(c.reply(0).await.is_none(), "framing is lost: close");
        assert!(matches!(task.await.unwrap(), Err(ConnectionError::Protocol(_))));
    }
}

#[tokio::test]
async fn a_zero_length_write_succeeds_without_touching_the_device_in_every_mode() {
    for mode in [Mode::Simple, Mode::Structured, Mode::Extended] {
        let disk = TestDisk::new(MIB as usize);
        let (s, _task) = pipe(&server_for(disk.clone()));
        let mut c = Raw::connect(s, mode).await;
        assert_eq!(c.write(1, 4096, &[]).await, Errno(0));
        c.send(Cmd::WRITE, CmdFlags::FUA, 2, 4096, 0, &[]).await;
        assert_eq!(c.reply(0).await.unwrap().1, Errno(0));
        assert_eq!(disk.flushes.load(std::sync::atomic::Ordering::SeqCst), 1, "FUA persisted earlier writes");
        assert_eq!(c.read(3, 4096, 4).await, (Errno(0), vec![0; 4]));
    }
}
