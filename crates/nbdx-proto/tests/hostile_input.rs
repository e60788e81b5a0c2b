//! Property tests: arbitrary bytes never make the state machines panic, and
//! every request header round-trips in both layouts.

use std::sync::Arc;

use bytes::BytesMut;
use nbdx_proto::client::PendingReply;
use nbdx_proto::server::{ExportMeta, ServerConfig, ServerHandshake, ServerStep};
use nbdx_proto::{Cmd, CmdFlags, HeaderMode, ReplyHeader, ReplyMode, RequestHeader};
use proptest::prelude::*;

fn server() -> ServerHandshake {
    let mut s = ServerHandshake::new(Arc::new(ServerConfig::new(vec![ExportMeta::new("a", 1 << 20)])));
    let _ = s.take_output();
    s
}

proptest! {
    #[test]
    fn random_bytes_after_valid_client_flags_never_panic_the_server(garbage in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut input = BytesMut::from(&[0u8, 0, 0, 3][..]);
        let mut s = server();
        // Feed in pieces, as a socket would deliver them.
        for chunk in garbage.chunks(7) {
            input.extend_from_slice(chunk);
            prop_assert!(input.len() <= 4 + garbage.len());
            match s.handle_input(&mut input) {
                Ok(ServerStep::NeedInput(next)) => s = next,
                _ => return Ok(()),
            }
        }
    }

    #[test]
    fn random_options_with_valid_framing_never_panic_the_server(
        opts in proptest::collection::vec((0u32..16, proptest::collection::vec(any::<u8>(), 0..64)), 1..40)
    ) {
        let mut input = BytesMut::from(&[0u8, 0, 0, 3][..]);
        for (opt, data) in &opts {
            input.extend_from_slice(b"IHAVEOPT");
            input.extend_from_slice(&opt.to_be_bytes());
            input.extend_from_slice(&(data.len() as u32).to_be_bytes());
            input.extend_from_slice(data);
        }
        let _ = server().handle_input(&mut input);
    }

    #[test]
    fn request_headers_round_trip_in_both_layouts(
        flags in any::<u16>(), cmd in any::<u16>(), cookie in any::<u64>(), offset in any::<u64>(), length in any::<u32>()
    ) {
        let h = RequestHeader { flags: CmdFlags::from_bits_retain(flags), cmd: Cmd(cmd), cookie, offset, length: length.into() };
        for mode in [HeaderMode::Compact, HeaderMode::Extended] {
            let mut buf = Vec::new();
            h.encode(mode, &mut buf);
            prop_assert_eq!(RequestHeader::decode(mode, &buf).unwrap(), h);
        }
    }

    #[test]
    fn random_reply_bytes_never_panic_the_client(bytes in proptest::collection::vec(any::<u8>(), 0..256), mode in 0u8..3) {
        let mode = [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended][mode as usize];
        if let Ok(Some((ReplyHeader::Chunk(h), n))) = ReplyHeader::decode(mode, &bytes) {
            let mut p = PendingReply::new(Cmd::BLOCK_STATUS, 0, 4096, CmdFlags::empty(), mode, &[1]);
            if p.chunk_payload(&h).is_ok() {
                let end = bytes.len().min(n + h.length as usize);
                let _ = p.payload(&h, &bytes[n..end]);
                let _ = p.finish();
            }
        }
    }
}
