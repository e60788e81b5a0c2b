//! In-memory client↔server handshake tests: the server machine driven by
//! the client machine (or by raw bytes, for misbehaving clients).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::*;
use crate::client::{ClientHandshake, Connected, Negotiating, OptionProgress, OptionResult};
use crate::codec::handshake::{InfoRequest, MetaContextRequest, OptRequest, OptionHeader};
use crate::codec::option_reply::{Info, OptReply, OptReplyHeader};
use crate::consts::{InfoType, OptType, RepType};
use crate::flags::TransmissionFlags;

fn config() -> ServerConfig {
    let mut a = ExportMeta::new("a", 1 << 20);
    a.description = "first disk".into();
    a.flags |= TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_DF | TransmissionFlags::SEND_WRITE_ZEROES;
    let b = ExportMeta::new("b", 4096);
    ServerConfig::new(vec![a, b])
}

/// Server and client after greeting and client flags.
fn start(config: ServerConfig) -> (ServerHandshake, Negotiating) {
    let mut server = ServerHandshake::new(Arc::new(config));
    let greeting = server.take_output();
    let (neg, flags) = ClientHandshake::new().receive_greeting(&greeting).unwrap();
    let mut input = BytesMut::from(&flags[..]);
    match server.handle_input(&mut input).unwrap() {
        ServerStep::NeedInput(s) => (s, neg),
        other => panic!("unexpected {other:?}"),
    }
}

/// What the client machine made of the server's answer.
#[derive(Debug)]
enum Client {
    Done(Negotiating, OptionResult),
    Connected(Connected),
    StartTls,
}

/// Sends one option from the client machine and runs the server on it.
fn exchange(
    server: ServerHandshake,
    neg: Negotiating,
    req: OptRequest,
) -> (Result<ServerStep, HandshakeFailure>, Client) {
    let (mut pending, bytes) = neg.send(req);
    let mut input = BytesMut::from(&bytes[..]);
    let step = server.handle_input(&mut input);
    let mut out = BytesMut::new();
    let (step, output) = match step {
        Ok(ServerStep::NeedInput(mut s)) => {
            let o = s.take_output();
            (Ok(ServerStep::NeedInput(s)), o)
        }
        Ok(ServerStep::StartTls(mut t)) => {
            let o = t.take_output();
            (Ok(ServerStep::StartTls(t)), o)
        }
        Ok(ServerStep::Transmission(n)) => {
            let o = n.output.clone();
            (Ok(ServerStep::Transmission(n)), o)
        }
        Ok(ServerStep::Abort(o)) => (Ok(ServerStep::Abort(o.clone())), o),
        Err(f) => {
            let o = f.output.clone();
            (Err(f), o)
        }
    };
    out.extend_from_slice(&output);
    loop {
        let h = OptReplyHeader::decode(&out.split_to(OptReplyHeader::LEN)).expect("reply header");
        let len = pending.payload_len(&h).expect("reply length");
        let payload = out.split_to(len);
        match pending.handle_reply(h, &payload).expect("valid reply") {
            OptionProgress::More(p) => pending = p,
            OptionProgress::Done(n, r) => return (step, Client::Done(n, r)),
            OptionProgress::Connected(c) => return (step, Client::Connected(c)),
            OptionProgress::StartTls(_) => return (step, Client::StartTls),
        }
    }
}

fn continue_with(step: Result<ServerStep, HandshakeFailure>) -> ServerHandshake {
    match step {
        Ok(ServerStep::NeedInput(s)) => s,
        other => panic!("negotiation ended: {other:?}"),
    }
}

fn done(c: Client) -> (Negotiating, OptionResult) {
    match c {
        Client::Done(n, r) => (n, r),
        other => panic!("not done: {other:?}"),
    }
}

fn go(name: &str) -> OptRequest {
    OptRequest::Go(InfoRequest {
        name: name.into(),
        requests: vec![InfoType::NAME, InfoType::DESCRIPTION, InfoType::BLOCK_SIZE],
    })
}

fn meta(export: &str, queries: &[&str]) -> MetaContextRequest {
    MetaContextRequest { export: export.into(), queries: queries.iter().map(|q| q.to_string()).collect() }
}

/// Feeds raw option bytes (header + payload) to the server.
fn raw_option(server: ServerHandshake, opt: OptType, payload: &[u8]) -> Result<ServerStep, HandshakeFailure> {
    let mut input = BytesMut::new();
    OptionHeader { opt, len: payload.len() as u32 }.encode(&mut input);
    input.put_slice(payload);
    server.handle_input(&mut input)
}

fn first_reply(output: &[u8]) -> (OptReplyHeader, OptReply) {
    let h = OptReplyHeader::decode(&output[..20]).unwrap();
    let r = OptReply::decode(h.rep, &output[20..20 + h.len as usize]).unwrap();
    (h, r)
}

#[test]
fn go_on_the_default_export_enters_transmission_with_its_details() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, go(""));
    let Ok(ServerStep::Transmission(neg)) = step else { panic!("{step:?}") };
    assert_eq!(neg.export_index, 0);
    assert_eq!(neg.mode, ReplyMode::Simple);
    assert!(neg.block_size_requested);
    let Client::Connected(c) = client else { panic!() };
    assert_eq!(c.size, 1 << 20);
    assert_eq!(c.canonical_name.as_deref(), Some("a"));
    assert_eq!(c.description.as_deref(), Some("first disk"));
    assert_eq!(c.block_size, Some(BlockSize::default()));
    assert!(c.flags.contains(TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH));
    assert!(!c.flags.contains(TransmissionFlags::SEND_DF), "DF needs structured replies");
}

#[test]
fn go_on_an_unknown_export_replies_err_unknown_and_negotiation_continues() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, go("nope"));
    let s = continue_with(step);
    let (n, r) = done(client);
    assert_eq!(r.error.unwrap().0, RepType::ERR_UNKNOWN);
    let (step, _) = exchange(s, n, go("b"));
    assert!(matches!(step, Ok(ServerStep::Transmission(n)) if n.export_index == 1));
}

#[test]
fn without_a_default_the_empty_name_is_unknown() {
    let mut c = config();
    c.default_export = false;
    let (s, n) = start(c);
    let (_, client) = exchange(s, n, go(""));
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_UNKNOWN);
}

#[test]
fn unknown_option_replies_err_unsup_and_the_handshake_continues() {
    let (s, n) = start(config());
    let (step, client) =
        exchange(s, n, OptRequest::Other { opt: OptType(4242), data: bytes::Bytes::from_static(b"junk") });
    let s = continue_with(step);
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_UNSUP);
    let (n2, _) = ClientHandshake::new().receive_greeting(&greeting()).unwrap();
    let (step, _) = exchange(s, n2, OptRequest::List);
    continue_with(step);
}

fn greeting() -> Vec<u8> {
    let mut v = Vec::new();
    crate::codec::handshake::Greeting {
        flags: crate::flags::HandshakeFlags::FIXED_NEWSTYLE | crate::flags::HandshakeFlags::NO_ZEROES,
    }
    .encode(&mut v);
    v
}

#[test]
fn list_returns_every_export_with_its_description_then_ack() {
    let (s, n) = start(config());
    let (_, client) = exchange(s, n, OptRequest::List);
    let (_, r) = done(client);
    assert!(r.error.is_none());
    assert_eq!(
        r.replies,
        vec![
            OptReply::Server { name: "a".into(), details: "first disk".into() },
            OptReply::Server { name: "b".into(), details: String::new() },
        ]
    );
}

#[test]
fn list_with_data_is_answered_err_invalid() {
    let (s, _) = start(config());
    let mut s = continue_with(raw_option(s, OptType::LIST, b"x"));
    let (_, r) = first_reply(&s.take_output());
    assert_eq!(r.rep(), RepType::ERR_INVALID);
}

#[test]
fn info_describes_an_export_without_ending_negotiation() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::Info(InfoRequest { name: "b".into(), requests: vec![] }));
    continue_with(step);
    let (_, r) = done(client);
    assert!(r.replies.contains(&OptReply::Info(Info::Export { size: 4096, flags: TransmissionFlags::HAS_FLAGS })));
}

#[test]
fn export_name_with_no_zeroes_enters_transmission_with_ten_bytes() {
    let (s, n) = start(config());
    let (pending, bytes) = n.export_name("b");
    let mut input = BytesMut::from(&bytes[..]);
    let Ok(ServerStep::Transmission(neg)) = s.handle_input(&mut input) else { panic!() };
    assert_eq!(neg.output.len(), 10);
    let c = pending.handle_reply(&neg.output).unwrap();
    assert_eq!(c.size, 4096);
}

#[test]
fn export_name_without_no_zeroes_sends_124_zero_bytes() {
    let mut s = ServerHandshake::new(Arc::new(config()));
    let _ = s.take_output();
    let mut input = BytesMut::from(&[0u8, 0, 0, 1][..]);
    let s = continue_with(s.handle_input(&mut input));
    let Ok(ServerStep::Transmission(neg)) = raw_option(s, OptType::EXPORT_NAME, b"a") else { panic!() };
    assert_eq!(neg.output.len(), 134);
    assert!(neg.output[10..].iter().all(|b| *b == 0));
}

#[test]
fn export_name_for_an_unknown_export_ends_the_session() {
    let (s, _) = start(config());
    let r = raw_option(s, OptType::EXPORT_NAME, b"zzz");
    assert!(matches!(r, Err(HandshakeFailure { error: ProtocolError::ExportNameRefused(..), .. })));
}

#[test]
fn starttls_without_tls_configured_replies_err_policy() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::StartTls);
    continue_with(step);
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_POLICY);
}

fn forced() -> ServerConfig {
    let mut c = config();
    c.tls = TlsMode::Require;
    c
}

#[test]
fn forced_tls_refuses_every_option_but_starttls_and_abort_and_reveals_nothing() {
    for req in [
        OptRequest::List,
        go("a"),
        go("does-not-exist"),
        OptRequest::Info(InfoRequest::default()),
        OptRequest::StructuredReply,
        OptRequest::SetMetaContext(meta("a", &["base:allocation"])),
        OptRequest::Other { opt: OptType(99), data: bytes::Bytes::new() },
    ] {
        let (s, n) = start(forced());
        let (step, client) = exchange(s, n, req.clone());
        continue_with(step);
        let (_, r) = done(client);
        assert!(r.replies.is_empty(), "{req:?} revealed {:?}", r.replies);
        assert_eq!(r.error.unwrap().0, RepType::ERR_TLS_REQD, "{req:?}");
    }
}

#[test]
fn forced_tls_ends_the_session_on_plaintext_export_name() {
    let (s, _) = start(forced());
    assert!(raw_option(s, OptType::EXPORT_NAME, b"a").is_err());
}

#[test]
fn starttls_then_fresh_negotiation_reaches_the_export() {
    let (s, n) = start(forced());
    let (step, client) = exchange(s, n, OptRequest::StartTls);
    let Ok(ServerStep::StartTls(up)) = step else { panic!() };
    assert!(matches!(client, Client::StartTls));
    let s = up.established();
    assert!(s.is_tls());
    let (n, _) = ClientHandshake::new().receive_greeting(&greeting()).unwrap();
    let (step, _) = exchange(s, n, go("a"));
    assert!(matches!(step, Ok(ServerStep::Transmission(neg)) if neg.tls));
}

#[test]
fn starttls_with_plaintext_queued_behind_it_is_a_protocol_violation() {
    let (s, _) = start(forced());
    let mut input = BytesMut::new();
    OptRequest::StartTls.encode(&mut input);
    // An attacker's injected option, sent before the TLS handshake.
    go("a").encode(&mut input);
    let r = s.handle_input(&mut input);
    let Err(f) = r else { panic!("processed injected data") };
    assert_eq!(f.error, ProtocolError::DataAfterStartTls);
    assert!(f.output.is_empty(), "nothing may be answered");
}

#[test]
fn starttls_again_under_tls_is_invalid() {
    let (s, n) = start(forced());
    let (step, _) = exchange(s, n, OptRequest::StartTls);
    let Ok(ServerStep::StartTls(up)) = step else { panic!() };
    let s = up.established();
    let mut s = continue_with(raw_option(s, OptType::STARTTLS, b""));
    assert_eq!(first_reply(&s.take_output()).1.rep(), RepType::ERR_INVALID);
}

#[test]
fn starttls_resets_structured_replies_and_meta_contexts() {
    let mut c = config();
    c.tls = TlsMode::On;
    let (s, n) = start(c);
    let (step, client) = exchange(s, n, OptRequest::StructuredReply);
    let (n, _) = done(client);
    let (step, client) = exchange(continue_with(step), n, OptRequest::SetMetaContext(meta("a", &["base:allocation"])));
    let (n, _) = done(client);
    let (step, _) = exchange(continue_with(step), n, OptRequest::StartTls);
    let Ok(ServerStep::StartTls(up)) = step else { panic!() };
    let (n, _) = ClientHandshake::new().receive_greeting(&greeting()).unwrap();
    let (step, _) = exchange(up.established(), n, go("a"));
    let Ok(ServerStep::Transmission(neg)) = step else { panic!() };
    assert_eq!(neg.mode, ReplyMode::Simple);
    assert!(neg.meta_contexts.is_empty());
}

#[test]
fn selective_tls_hides_tls_only_exports_until_tls_is_up() {
    let mut c = config();
    c.tls = TlsMode::On;
    c.exports[1].tls_only = true;
    let (s, n) = start(c);
    let (step, client) = exchange(s, n, OptRequest::List);
    let (n, r) = done(client);
    assert_eq!(r.replies.len(), 1, "tls-only export listed in plaintext");
    let (_, client) = exchange(continue_with(step), n, go("b"));
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_TLS_REQD);
}

#[test]
fn set_meta_context_requires_structured_replies() {
    let (s, n) = start(config());
    let (_, client) = exchange(s, n, OptRequest::SetMetaContext(meta("a", &["base:allocation"])));
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_INVALID);
}

#[test]
fn set_meta_context_selects_base_allocation_for_block_status() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::StructuredReply);
    let (n, _) = done(client);
    let req = meta("a", &["base:allocation", "qemu:dirty-bitmap:x", "base:", "base:allocation"]);
    let (step, client) = exchange(continue_with(step), n, OptRequest::SetMetaContext(req));
    let (n, r) = done(client);
    assert_eq!(r.replies.len(), 1, "one context, no duplicates: {:?}", r.replies);
    let (step, client) = exchange(continue_with(step), n, go("a"));
    let Ok(ServerStep::Transmission(neg)) = step else { panic!() };
    assert_eq!(neg.mode, ReplyMode::Structured);
    assert_eq!(neg.meta_contexts.len(), 1);
    assert!(neg.flags.contains(TransmissionFlags::SEND_DF));
    let Client::Connected(c) = client else { panic!() };
    assert_eq!(c.base_allocation_id(), Some(neg.meta_contexts[0].id));
}

#[test]
fn list_meta_context_with_no_query_or_the_base_wildcard_lists_base_allocation() {
    for queries in [&[][..], &["base:"][..]] {
        let (s, n) = start(config());
        let (step, client) = exchange(s, n, OptRequest::StructuredReply);
        let (n, _) = done(client);
        let (_, client) = exchange(continue_with(step), n, OptRequest::ListMetaContext(meta("", queries)));
        let (_, r) = done(client);
        assert_eq!(r.replies, vec![OptReply::MetaContext { id: 0, name: "base:allocation".into() }]);
    }
}

#[test]
fn meta_context_query_without_a_namespace_is_invalid() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::StructuredReply);
    let (n, _) = done(client);
    let (_, client) = exchange(continue_with(step), n, OptRequest::SetMetaContext(meta("a", &["allocation"])));
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_INVALID);
}

#[test]
fn meta_contexts_selected_for_another_export_are_not_usable() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::StructuredReply);
    let (n, _) = done(client);
    let (step, client) = exchange(continue_with(step), n, OptRequest::SetMetaContext(meta("b", &["base:allocation"])));
    let (n, _) = done(client);
    let (step, _) = exchange(continue_with(step), n, go("a"));
    let Ok(ServerStep::Transmission(neg)) = step else { panic!() };
    assert!(neg.meta_contexts.is_empty());
}

#[test]
fn extended_headers_select_the_extended_layout() {
    let (s, n) = start(config());
    let (step, client) = exchange(s, n, OptRequest::ExtendedHeaders);
    let (n, _) = done(client);
    assert!(n.extended());
    let (step, client) = exchange(continue_with(step), n, OptRequest::StructuredReply);
    assert_eq!(done(client).1.error.unwrap().0, RepType::ERR_EXT_HEADER_REQD);
    let (n, _) = ClientHandshake::new().receive_greeting(&greeting()).unwrap();
    let (step, _) = exchange(continue_with(step), n, go("a"));
    assert!(matches!(step, Ok(ServerStep::Transmission(neg)) if neg.mode == ReplyMode::Extended));
}

#[test]
fn export_name_after_extended_headers_ends_the_session() {
    let (s, n) = start(config());
    let (step, _) = exchange(s, n, OptRequest::ExtendedHeaders);
    assert!(raw_option(continue_with(step), OptType::EXPORT_NAME, b"a").is_err());
}

#[test]
fn unknown_client_flags_drop_the_connection() {
    let mut s = ServerHandshake::new(Arc::new(config()));
    let _ = s.take_output();
    let mut input = BytesMut::from(&[0u8, 0, 0, 5][..]);
    let r = s.handle_input(&mut input);
    assert!(matches!(r, Err(HandshakeFailure { error: ProtocolError::BadClientFlags(5), .. })));
}

#[test]
fn a_bad_option_magic_drops_the_connection() {
    let (s, _) = start(config());
    let mut input = BytesMut::from(&b"IHAVEOPX\0\0\0\x03\0\0\0\0"[..]);
    assert!(matches!(s.handle_input(&mut input), Err(HandshakeFailure { error: ProtocolError::BadMagic { .. }, .. })));
}

#[test]
fn an_oversized_option_is_skipped_and_answered_err_too_big() {
    let (s, _) = start(config());
    let big = vec![7u8; crate::limits::MAX_OPTION_LEN as usize + 1];
    let mut s = continue_with(raw_option(s, OptType::LIST, &big));
    let (_, r) = first_reply(&s.take_output());
    assert_eq!(r.rep(), RepType::ERR_TOO_BIG);
    let mut s = continue_with(raw_option(s, OptType::LIST, b""));
    assert!(!s.take_output().is_empty());
}

#[test]
fn an_option_beyond_the_discard_limit_closes_without_reading_it() {
    let (s, _) = start(config());
    let mut input = BytesMut::new();
    OptionHeader { opt: OptType::LIST, len: u32::MAX }.encode(&mut input);
    assert!(matches!(
        s.handle_input(&mut input),
        Err(HandshakeFailure { error: ProtocolError::OptionTooLong { .. }, .. })
    ));
}

#[test]
fn too_many_failed_options_in_a_row_end_the_session() {
    let (mut s, _) = start(config());
    for i in 0..=crate::limits::MAX_FAILED_OPTIONS_IN_ROW {
        match raw_option(s, OptType(1000), b"") {
            Ok(ServerStep::NeedInput(next)) => s = next,
            Err(f) => {
                assert_eq!(i, crate::limits::MAX_FAILED_OPTIONS_IN_ROW);
                assert!(matches!(f.error, ProtocolError::TooManyOptions(_)));
                return;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("never refused");
}

#[test]
fn more_options_than_the_per_handshake_limit_end_the_session_even_when_they_succeed() {
    let (mut s, _) = start(config());
    for i in 1..=crate::limits::MAX_OPTIONS_PER_HANDSHAKE + 1 {
        match raw_option(s, OptType::LIST, b"") {
            Ok(ServerStep::NeedInput(mut next)) => {
                assert!(!next.take_output().is_empty(), "option {i} was answered");
                s = next;
            }
            Err(f) => {
                assert_eq!(i, crate::limits::MAX_OPTIONS_PER_HANDSHAKE + 1);
                assert!(matches!(f.error, ProtocolError::TooManyOptions(_)));
                return;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("never refused");
}

#[test]
fn a_shutting_down_server_answers_err_shutdown_but_accepts_abort() {
    let (mut s, _) = start(config());
    s.begin_shutdown();
    let mut s = continue_with(raw_option(s, OptType::LIST, b""));
    assert_eq!(first_reply(&s.take_output()).1.rep(), RepType::ERR_SHUTDOWN);
    let Ok(ServerStep::Abort(out)) = raw_option(s, OptType::ABORT, b"") else { panic!() };
    assert_eq!(first_reply(&out).1, OptReply::Ack);
}

#[test]
fn input_fed_one_byte_at_a_time_gives_the_same_result() {
    let (mut s, n) = start(config());
    let (_, bytes) = n.send(go("b"));
    let mut input = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        input.put_u8(*b);
        match s.handle_input(&mut input).unwrap() {
            ServerStep::NeedInput(next) => s = next,
            ServerStep::Transmission(neg) => {
                assert_eq!(i, bytes.len() - 1);
                assert_eq!(neg.export_index, 1);
                return;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("never entered transmission");
}

#[test]
fn requests_pipelined_after_go_stay_in_the_input() {
    let (s, n) = start(config());
    let (_, bytes) = n.send(go("a"));
    let mut input = BytesMut::from(&bytes[..]);
    input.put_slice(b"request bytes");
    let Ok(ServerStep::Transmission(_)) = s.handle_input(&mut input) else { panic!() };
    assert_eq!(&input[..], b"request bytes");
}

#[test]
fn read_only_exports_advertise_no_way_to_write() {
    let mut e = ExportMeta::new("r", 512);
    e.flags = TransmissionFlags::READ_ONLY
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_FLUSH;
    let f = e.transmission_flags(true);
    assert_eq!(f, TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY | TransmissionFlags::SEND_FLUSH);
}
