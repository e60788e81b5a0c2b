//! Client machine against a scripted (possibly malicious) server.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::handshake::{Greeting, InfoRequest, MetaContextRequest, OptRequest};
use crate::codec::option_reply::{Info, OptReply, OptReplyHeader};
use crate::codec::reply::{encode_chunk, encode_data_header, ChunkPayload, Extent, ReplyHeader, ReplyMode};
use crate::consts::{Cmd, Errno, OptType, RepType, ReplyType};
use crate::error::ProtocolError;
use crate::flags::{CmdFlags, HandshakeFlags, ReplyFlags, TransmissionFlags};

fn negotiating() -> Negotiating {
    let mut g = Vec::new();
    Greeting { flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES }.encode(&mut g);
    ClientHandshake::new().receive_greeting(&g).unwrap().0
}

/// Feeds scripted replies to an option; returns the final progress.
fn replies(req: OptRequest, script: &[(OptType, OptReply)]) -> Result<OptionProgress, ProtocolError> {
    let (mut p, _) = negotiating().send(req);
    for (i, (opt, r)) in script.iter().enumerate() {
        let mut b = BytesMut::new();
        r.encode(*opt, &mut b);
        let h = OptReplyHeader::decode(&b[..20])?;
        p.payload_len(&h)?;
        match p.handle_reply(h, &b[20..])? {
            OptionProgress::More(next) if i + 1 < script.len() => p = next,
            other => return Ok(other),
        }
    }
    panic!("script ended without a final reply")
}

fn go() -> OptRequest {
    OptRequest::Go(InfoRequest { name: "x".into(), requests: vec![] })
}

#[test]
fn greeting_flags_are_mirrored_in_the_client_flags() {
    let mut g = Vec::new();
    Greeting { flags: HandshakeFlags::FIXED_NEWSTYLE }.encode(&mut g);
    let (n, flags) = ClientHandshake::new().receive_greeting(&g).unwrap();
    assert_eq!(&flags[..], &[0, 0, 0, 1], "NO_ZEROES MUST NOT be set if the server did not offer it");
    assert!(n.fixed_newstyle());
}

#[test]
fn go_acked_with_export_info_connects() {
    let p = replies(
        go(),
        &[
            (OptType::GO, OptReply::Info(Info::Export { size: 9, flags: TransmissionFlags::HAS_FLAGS })),
            (OptType::GO, OptReply::Ack),
        ],
    )
    .unwrap();
    let OptionProgress::Connected(c) = p else { panic!() };
    assert_eq!((c.size, c.block_size), (9, None));
}

#[test]
fn go_acked_without_export_info_is_a_protocol_error() {
    assert_eq!(replies(go(), &[(OptType::GO, OptReply::Ack)]).unwrap_err(), ProtocolError::MissingExportInfo);
}

#[test]
fn a_reply_to_another_option_is_a_protocol_error() {
    let e = replies(go(), &[(OptType::LIST, OptReply::Ack)]).unwrap_err();
    assert!(matches!(e, ProtocolError::WrongOptionReply { .. }));
}

#[test]
fn a_reply_type_that_does_not_fit_the_option_is_a_protocol_error() {
    let e =
        replies(OptRequest::List, &[(OptType::LIST, OptReply::MetaContext { id: 1, name: "a:b".into() })]).unwrap_err();
    assert!(matches!(e, ProtocolError::UnexpectedReply { .. }));
}

#[test]
fn endless_list_replies_are_cut_off() {
    let (mut p, _) = negotiating().send(OptRequest::List);
    let server = OptReply::Server { name: "e".into(), details: String::new() };
    let mut b = BytesMut::new();
    server.encode(OptType::LIST, &mut b);
    let h = OptReplyHeader::decode(&b[..20]).unwrap();
    for _ in 0..crate::limits::MAX_OPTION_REPLIES {
        match p.handle_reply(h, &b[20..]).unwrap() {
            OptionProgress::More(next) => p = next,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.handle_reply(h, &b[20..]).unwrap_err(), ProtocolError::TooManyReplies);
}

#[test]
fn an_oversized_reply_is_refused_before_reading_it() {
    let (p, _) = negotiating().send(OptRequest::List);
    let h = OptReplyHeader { opt: OptType::LIST, rep: RepType::SERVER, len: u32::MAX };
    assert!(matches!(p.payload_len(&h), Err(ProtocolError::ReplyTooLarge(_))));
}

#[test]
fn errors_end_the_option_and_negotiation_goes_on() {
    let p =
        replies(go(), &[(OptType::GO, OptReply::Error { rep: RepType::ERR_UNSUP, message: String::new() })]).unwrap();
    let OptionProgress::Done(_, r) = p else { panic!() };
    assert_eq!(r.error.unwrap().0, RepType::ERR_UNSUP);
}

#[test]
fn meta_contexts_count_only_for_the_export_they_were_set_for() {
    let (p, _) = negotiating().send(OptRequest::StructuredReply);
    let mut b = BytesMut::new();
    OptReply::Ack.encode(OptType::STRUCTURED_REPLY, &mut b);
    let OptionProgress::Done(n, _) = p.handle_reply(OptReplyHeader::decode(&b[..20]).unwrap(), &[]).unwrap() else {
        panic!()
    };
    let (mut p, _) = n.send(OptRequest::SetMetaContext(MetaContextRequest {
        export: "other".into(),
        queries: vec!["base:allocation".into()],
    }));
    for r in [OptReply::MetaContext { id: 5, name: "base:allocation".into() }, OptReply::Ack] {
        let mut b = BytesMut::new();
        r.encode(OptType::SET_META_CONTEXT, &mut b);
        match p.handle_reply(OptReplyHeader::decode(&b[..20]).unwrap(), &b[20..]).unwrap() {
            OptionProgress::More(next) => p = next,
            OptionProgress::Done(n, _) => {
                assert_eq!(n.meta_contexts(), &[(5, "base:allocation".to_string())]);
                let (pe, _) = n.export_name("x");
                let c = pe.handle_reply(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]).unwrap();
                assert!(c.meta_contexts.is_empty());
                return;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn tls_established_forgets_negotiated_state() {
    let p = replies(OptRequest::StartTls, &[(OptType::STARTTLS, OptReply::Ack)]).unwrap();
    let OptionProgress::StartTls(t) = p else { panic!() };
    let n = t.established();
    assert!(n.is_tls());
    assert_eq!(n.mode(), ReplyMode::Simple);
}

fn chunk(mode: ReplyMode, cookie: u64, offset: u64, p: &ChunkPayload, done: bool) -> (ChunkHeader, Bytes) {
    let mut b = BytesMut::new();
    encode_chunk(mode, cookie, offset, p, done, &mut b);
    let (ReplyHeader::Chunk(h), n) = ReplyHeader::decode(mode, &b).unwrap().unwrap() else { panic!() };
    (h, b.split_off(n).freeze())
}

use crate::codec::reply::ChunkHeader;

#[test]
fn a_read_reassembled_from_data_and_hole_chunks_succeeds() {
    let mode = ReplyMode::Structured;
    let mut p = PendingReply::new(Cmd::READ, 1000, 100, CmdFlags::empty(), mode, &[]);
    let (h, payload) = chunk(mode, 1, 1000, &ChunkPayload::Hole { offset: 1050, length: 50 }, false);
    assert_eq!(p.chunk_payload(&h).unwrap(), ChunkOutcome::Payload { len: 12 });
    assert_eq!(p.payload(&h, &payload).unwrap(), Some(50..100));
    assert_eq!(p.data(1000, 50).unwrap(), 0..50);
    assert_eq!(p.finish().unwrap(), Ok(()));
}

#[test]
fn overlapping_content_chunks_are_a_protocol_error() {
    let mut p = PendingReply::new(Cmd::READ, 0, 100, CmdFlags::empty(), ReplyMode::Structured, &[]);
    p.data(0, 60).unwrap();
    assert!(p.data(50, 10).is_err());
    assert!(p.data(59, 2).is_err());
    p.data(60, 40).unwrap();
}

#[test]
fn content_outside_the_request_is_a_protocol_error() {
    let mut p = PendingReply::new(Cmd::READ, 100, 100, CmdFlags::empty(), ReplyMode::Structured, &[]);
    assert!(p.data(99, 1).is_err());
    assert!(p.data(150, 51).is_err());
    assert!(p.data(u64::MAX, 2).is_err());
}

#[test]
fn a_read_claimed_done_without_all_its_data_is_a_protocol_error() {
    let mut p = PendingReply::new(Cmd::READ, 0, 100, CmdFlags::empty(), ReplyMode::Structured, &[]);
    p.data(0, 99).unwrap();
    assert!(p.finish().is_err());
}

#[test]
fn df_reads_accept_only_one_content_chunk() {
    let mut p = PendingReply::new(Cmd::READ, 0, 100, CmdFlags::DF, ReplyMode::Structured, &[]);
    p.data(0, 50).unwrap();
    assert!(p.data(50, 50).is_err());
}

#[test]
fn an_oversized_data_chunk_is_refused_from_its_header() {
    let p = PendingReply::new(Cmd::READ, 0, 100, CmdFlags::empty(), ReplyMode::Structured, &[]);
    let mut b = BytesMut::new();
    encode_data_header(ReplyMode::Structured, 1, 0, 0, 1 << 30, true, &mut b);
    let (ReplyHeader::Chunk(h), _) = ReplyHeader::decode(ReplyMode::Structured, &b).unwrap().unwrap() else { panic!() };
    assert!(p.chunk_payload(&h).is_err());
}

#[test]
fn error_chunks_fail_the_request_but_not_the_connection() {
    let mode = ReplyMode::Structured;
    let mut p = PendingReply::new(Cmd::WRITE, 0, 10, CmdFlags::empty(), mode, &[]);
    let e = ChunkPayload::Error { errno: Errno::ENOSPC, message: "full".into(), offset: None };
    let (h, payload) = chunk(mode, 1, 0, &e, true);
    p.payload(&h, &payload).unwrap();
    let r = p.finish().unwrap().unwrap_err();
    assert_eq!((r.errno, r.message.as_str()), (Errno::ENOSPC, "full"));
}

#[test]
fn block_status_for_an_unknown_or_repeated_context_is_a_protocol_error() {
    let mode = ReplyMode::Structured;
    let mut p = PendingReply::new(Cmd::BLOCK_STATUS, 0, 4096, CmdFlags::empty(), mode, &[1]);
    let bs = |id| ChunkPayload::BlockStatus { context_id: id, extents: vec![Extent { length: 4096, flags: 3 }] };
    let (h, payload) = chunk(mode, 1, 0, &bs(2), false);
    assert!(p.payload(&h, &payload).is_err());
    let (h, payload) = chunk(mode, 1, 0, &bs(1), false);
    p.payload(&h, &payload).unwrap();
    assert!(p.payload(&h, &payload).is_err());
    assert_eq!(p.finish().unwrap(), Ok(()));
}

#[test]
fn block_status_extents_before_the_last_must_end_inside_the_request() {
    let mode = ReplyMode::Extended;
    let e = |lengths: &[u64]| ChunkPayload::BlockStatus {
        context_id: 1,
        extents: lengths.iter().map(|l| Extent { length: *l, flags: 0 }).collect(),
    };
    let accepts = |lengths: &[u64]| {
        let mut p = PendingReply::new(Cmd::BLOCK_STATUS, 0, 4096, CmdFlags::empty(), mode, &[1]);
        let (h, payload) = chunk(mode, 1, 0, &e(lengths), true);
        p.payload(&h, &payload).is_ok()
    };
    assert!(accepts(&[1 << 40]), "a single extent may reach beyond the request");
    assert!(accepts(&[4095, 1 << 40]), "so may the last");
    assert!(!accepts(&[4096, 1]), "the first extents already cover the request");
    assert!(!accepts(&[u64::MAX, 2, 1]), "a sum that overflows");
}

#[test]
fn block_status_lacking_a_context_is_a_protocol_error() {
    let mut p = PendingReply::new(Cmd::BLOCK_STATUS, 0, 4096, CmdFlags::empty(), ReplyMode::Structured, &[1, 2]);
    let (h, payload) = chunk(
        ReplyMode::Structured,
        1,
        0,
        &ChunkPayload::BlockStatus { context_id: 1, extents: vec![Extent { length: 1, flags: 0 }] },
        true,
    );
    p.payload(&h, &payload).unwrap();
    assert!(p.finish().is_err());
}

#[test]
fn chunks_that_do_not_fit_the_command_are_protocol_errors() {
    let mode = ReplyMode::Structured;
    let p = PendingReply::new(Cmd::WRITE, 0, 10, CmdFlags::empty(), mode, &[]);
    let h = ChunkHeader { flags: ReplyFlags::DONE, kind: ReplyType::OFFSET_DATA, cookie: 1, offset: 0, length: 20 };
    assert!(matches!(p.chunk_payload(&h), Err(ProtocolError::UnexpectedChunk { .. })));
}

#[test]
fn extended_chunks_must_echo_the_request_offset() {
    let mode = ReplyMode::Extended;
    let p = PendingReply::new(Cmd::FLUSH, 0, 0, CmdFlags::empty(), mode, &[]);
    let (h, _) = chunk(mode, 1, 4096, &ChunkPayload::None, true);
    assert!(p.chunk_payload(&h).is_err());
}

#[test]
fn simple_replies_follow_the_rules_of_the_negotiated_mode() {
    let req = |cmd, mode| PendingReply::new(cmd, 0, 512, CmdFlags::empty(), mode, &[1]);
    assert_eq!(req(Cmd::READ, ReplyMode::Simple).simple(0).unwrap(), Ok(()));
    let e = req(Cmd::WRITE, ReplyMode::Simple).simple(99).unwrap().unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL, "unknown error values are treated as NBD_EINVAL");
    assert_eq!(req(Cmd::FLUSH, ReplyMode::Structured).simple(0).unwrap(), Ok(()));
    assert!(req(Cmd::BLOCK_STATUS, ReplyMode::Structured).simple(Errno::EINVAL.0).unwrap().is_err());
    assert!(req(Cmd::READ, ReplyMode::Structured).simple(0).is_err());
    assert!(req(Cmd::READ, ReplyMode::Structured).simple(Errno::EIO.0).is_err());
    assert!(req(Cmd::BLOCK_STATUS, ReplyMode::Structured).simple(0).is_err());
    assert!(req(Cmd::FLUSH, ReplyMode::Extended).simple(0).is_err());
}
