//! Request validation and reply encoding, one rule per test.

use super::*;
use crate::codec::reply::ReplyHeader;

fn ctx() -> TransmissionContext {
    TransmissionContext {
        size: 1 << 20,
        flags: TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES
            | TransmissionFlags::SEND_FAST_ZERO
            | TransmissionFlags::SEND_CACHE
            | TransmissionFlags::SEND_DF,
        mode: ReplyMode::Structured,
        block_size: BlockSize::default(),
        meta_contexts: vec![MetaContext { id: 1, kind: ContextKind::BaseAllocation }],
        max_discard_payload: crate::limits::MAX_DISCARD_PAYLOAD,
    }
}

fn req(cmd: Cmd, flags: CmdFlags, offset: u64, length: u64) -> RequestHeader {
    RequestHeader { flags, cmd, cookie: 42, offset, length }
}

fn verdict(c: &TransmissionContext, cmd: Cmd, flags: CmdFlags, offset: u64, length: u64) -> Result<Command, Errno> {
    c.classify(req(cmd, flags, offset, length)).verdict
}

#[test]
fn a_read_inside_the_export_is_accepted() {
    assert_eq!(
        verdict(&ctx(), Cmd::READ, CmdFlags::empty(), 512, 4096),
        Ok(Command::Read { offset: 512, length: 4096, df: false })
    );
}

#[test]
fn writes_past_the_end_get_enospc_and_reads_past_the_end_get_einval() {
    let c = ctx();
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::empty(), (1 << 20) - 1, 2), Err(Errno::ENOSPC));
    assert_eq!(verdict(&c, Cmd::WRITE_ZEROES, CmdFlags::empty(), 1 << 20, 1), Err(Errno::ENOSPC));
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::empty(), 1 << 20, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::TRIM, CmdFlags::empty(), 0, (1 << 20) + 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::BLOCK_STATUS, CmdFlags::empty(), 1 << 20, 1), Err(Errno::EINVAL));
}

#[test]
fn offset_plus_length_overflow_is_einval() {
    assert_eq!(verdict(&ctx(), Cmd::TRIM, CmdFlags::empty(), u64::MAX, 2), Err(Errno::EINVAL));
}

#[test]
fn unknown_commands_and_resize_are_einval() {
    assert_eq!(verdict(&ctx(), Cmd(99), CmdFlags::empty(), 0, 0), Err(Errno::EINVAL));
    assert_eq!(verdict(&ctx(), Cmd::RESIZE, CmdFlags::empty(), 0, 0), Err(Errno::EINVAL));
}

#[test]
fn unknown_or_misplaced_flags_are_einval() {
    let c = ctx();
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::from_bits_retain(1 << 9), 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::NO_HOLE, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::DF, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::REQ_ONE, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::TRIM, CmdFlags::FAST_ZERO, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::PAYLOAD_LEN, 0, 1), Err(Errno::EINVAL));
    // FUA is valid on every command once advertised.
    assert!(verdict(&c, Cmd::READ, CmdFlags::FUA, 0, 1).is_ok());
}

#[test]
fn flags_that_were_not_advertised_are_einval() {
    let mut c = ctx();
    c.flags.remove(TransmissionFlags::SEND_FUA | TransmissionFlags::SEND_DF | TransmissionFlags::SEND_FAST_ZERO);
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::FUA, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::DF, 0, 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::WRITE_ZEROES, CmdFlags::FAST_ZERO, 0, 1), Err(Errno::EINVAL));
}

#[test]
fn commands_that_were_not_advertised_are_einval() {
    let mut c = ctx();
    c.flags = TransmissionFlags::HAS_FLAGS;
    c.meta_contexts.clear();
    for cmd in [Cmd::FLUSH, Cmd::TRIM, Cmd::WRITE_ZEROES, Cmd::CACHE, Cmd::BLOCK_STATUS] {
        assert_eq!(verdict(&c, cmd, CmdFlags::empty(), 0, 0), Err(Errno::EINVAL), "{cmd}");
    }
}

#[test]
fn block_status_needs_chunks_even_with_contexts() {
    let mut c = ctx();
    c.mode = ReplyMode::Simple;
    assert_eq!(verdict(&c, Cmd::BLOCK_STATUS, CmdFlags::empty(), 0, 1), Err(Errno::EINVAL));
}

#[test]
fn write_trim_and_zero_on_a_read_only_export_are_eperm() {
    let mut c = ctx();
    c.flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY;
    for cmd in [Cmd::WRITE, Cmd::TRIM, Cmd::WRITE_ZEROES] {
        assert_eq!(verdict(&c, cmd, CmdFlags::empty(), 0, 512), Err(Errno::EPERM), "{cmd}");
    }
    assert!(verdict(&c, Cmd::READ, CmdFlags::empty(), 0, 512).is_ok());
}

#[test]
fn requests_misaligned_to_the_minimum_block_size_are_einval() {
    let mut c = ctx();
    c.block_size.minimum = 512;
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::empty(), 1, 512), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::empty(), 0, 100), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::TRIM, CmdFlags::empty(), 512, 513), Err(Errno::EINVAL));
    assert!(verdict(&c, Cmd::READ, CmdFlags::empty(), 1024, 512).is_ok());
    // A block status length is only a hint.
    assert!(verdict(&c, Cmd::BLOCK_STATUS, CmdFlags::empty(), 512, 7).is_ok());
}

#[test]
fn a_short_final_block_at_the_end_of_an_unaligned_export_is_allowed() {
    let mut c = ctx();
    c.block_size.minimum = 512;
    c.size = 1000;
    assert!(verdict(&c, Cmd::READ, CmdFlags::empty(), 512, 488).is_ok());
}

#[test]
fn reads_and_writes_above_the_maximum_payload_are_einval() {
    let mut c = ctx();
    c.size = 1 << 30;
    let max = u64::from(c.block_size.maximum);
    assert_eq!(verdict(&c, Cmd::READ, CmdFlags::empty(), 0, max + 1), Err(Errno::EINVAL));
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::empty(), 0, max + 1), Err(Errno::EINVAL));
    assert!(verdict(&c, Cmd::WRITE, CmdFlags::empty(), 0, max).is_ok());
    // Effect lengths may exceed it.
    assert!(verdict(&c, Cmd::TRIM, CmdFlags::empty(), 0, max + 1).is_ok());
}

#[test]
fn a_rejected_write_payload_is_discarded_unless_it_is_huge() {
    let mut c = ctx();
    c.flags.insert(TransmissionFlags::READ_ONLY);
    let i = c.classify(req(Cmd::WRITE, CmdFlags::empty(), 0, 4096));
    assert_eq!(i.payload, PayloadAction::Discard(4096));
    let i = c.classify(req(Cmd::WRITE, CmdFlags::empty(), 0, u64::from(u32::MAX)));
    assert_eq!(i.payload, PayloadAction::Close);
    let i = ctx().classify(req(Cmd::WRITE, CmdFlags::empty(), 0, 4096));
    assert_eq!(i.payload, PayloadAction::Read(4096));
}

#[test]
fn flush_with_a_nonzero_offset_or_length_is_einval() {
    assert_eq!(verdict(&ctx(), Cmd::FLUSH, CmdFlags::empty(), 1, 0), Err(Errno::EINVAL));
    assert_eq!(verdict(&ctx(), Cmd::FLUSH, CmdFlags::empty(), 0, 0), Ok(Command::Flush));
}

#[test]
fn disc_is_a_disconnect_whatever_else_it_carries() {
    assert_eq!(verdict(&ctx(), Cmd::DISC, CmdFlags::from_bits_retain(0xff), 9, 9), Ok(Command::Disconnect));
}

#[test]
fn extended_writes_must_carry_the_payload_length_flag() {
    let mut c = ctx();
    c.mode = ReplyMode::Extended;
    assert_eq!(verdict(&c, Cmd::WRITE, CmdFlags::empty(), 0, 512), Err(Errno::EINVAL));
    let i = c.classify(req(Cmd::WRITE, CmdFlags::PAYLOAD_LEN, 0, 512));
    assert_eq!(i.payload, PayloadAction::Read(512));
    // A payload on another command is consumed, then refused.
    let i = c.classify(req(Cmd::BLOCK_STATUS, CmdFlags::PAYLOAD_LEN, 0, 12));
    assert_eq!((i.payload, i.verdict), (PayloadAction::Discard(12), Err(Errno::EINVAL)));
    // Above the maximum payload the connection ends.
    let i = c.classify(req(Cmd::WRITE, CmdFlags::PAYLOAD_LEN, 0, 1 << 26));
    assert_eq!(i.payload, PayloadAction::Close);
}

#[test]
fn extended_effect_lengths_above_32_bits_are_checked_against_the_size() {
    let mut c = ctx();
    c.mode = ReplyMode::Extended;
    c.size = 1 << 40;
    assert!(verdict(&c, Cmd::TRIM, CmdFlags::empty(), 0, 1 << 35).is_ok());
    assert_eq!(verdict(&c, Cmd::TRIM, CmdFlags::empty(), 0, (1 << 40) + 1), Err(Errno::EINVAL));
}

#[test]
fn block_status_reply_has_one_chunk_per_context_and_the_last_is_done() {
    let mut c = ctx();
    c.meta_contexts.push(MetaContext { id: 9, kind: ContextKind::BaseAllocation });
    let mut buf = Vec::new();
    c.encode_block_status(&req(Cmd::BLOCK_STATUS, CmdFlags::empty(), 0, 4096), &[(4096, 3)], &mut buf);
    let (h1, n1) = ReplyHeader::decode(c.mode, &buf).unwrap().unwrap();
    let ReplyHeader::Chunk(h1) = h1 else { panic!() };
    assert!(!h1.done());
    let rest = &buf[n1 + h1.length as usize..];
    let (h2, _) = ReplyHeader::decode(c.mode, rest).unwrap().unwrap();
    let ReplyHeader::Chunk(h2) = h2 else { panic!() };
    assert!(h2.done());
}

#[test]
fn errors_are_simple_replies_or_error_chunks_by_mode() {
    let mut c = ctx();
    let h = req(Cmd::READ, CmdFlags::empty(), 0, 1);
    let mut buf = Vec::new();
    c.encode_error(&h, Errno::EIO, "boom", &mut buf);
    let (ReplyHeader::Chunk(ch), n) = ReplyHeader::decode(c.mode, &buf).unwrap().unwrap() else { panic!() };
    assert_eq!(ch.kind, crate::consts::ReplyType::ERROR);
    let p = ChunkPayload::decode(ch.kind, false, &buf[n..]).unwrap();
    assert_eq!(p, ChunkPayload::Error { errno: Errno::EIO, message: "boom".into(), offset: None });
    c.mode = ReplyMode::Simple;
    buf.clear();
    c.encode_error(&h, Errno::EIO, "boom", &mut buf);
    assert_eq!(buf.len(), 16);
}
