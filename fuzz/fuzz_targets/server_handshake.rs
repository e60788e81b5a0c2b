//! The server handshake fed arbitrary bytes in arbitrary pieces, then the
//! transmission classifier on whatever follows GO: never panics, never
//! buffers more than the limits allow, and is independent of how the input
//! was split.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nbdx_proto::server::{ExportMeta, ServerConfig, ServerHandshake, ServerStep, TlsMode};
use nbdx_proto::{RequestHeader, TransmissionFlags};

fn run(data: &[u8], split: usize, tls: TlsMode) -> Option<(usize, Vec<u8>)> {
    let mut a = ExportMeta::new("", 1 << 20);
    a.flags |= TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_TRIM | TransmissionFlags::SEND_WRITE_ZEROES;
    let mut config = ServerConfig::new(vec![a, ExportMeta::new("b", 4096)]);
    config.tls = tls;
    let mut hs = ServerHandshake::new(Arc::new(config));
    let mut out = hs.take_output().to_vec();
    let mut input = BytesMut::new();
    for piece in data.chunks(split.max(1)) {
        input.extend_from_slice(piece);
        match hs.handle_input(&mut input) {
            Ok(ServerStep::NeedInput(mut next)) => {
                out.extend_from_slice(&next.take_output());
                assert!(input.len() <= data.len());
                hs = next;
            }
            Ok(ServerStep::StartTls(up)) => {
                // Pretend TLS came up: the rest continues encrypted.
                hs = up.established();
            }
            Ok(ServerStep::Transmission(n)) => {
                out.extend_from_slice(&n.output);
                let ctx = n.transmission();
                let hlen = RequestHeader::len(ctx.header_mode());
                let rest = &input[..];
                let mut at = 0;
                while rest.len() >= at + hlen {
                    let Ok(h) = RequestHeader::decode(ctx.header_mode(), &rest[at..at + hlen]) else { break };
                    let _ = ctx.classify(h);
                    at += hlen;
                }
                return Some((n.export_index, out));
            }
            Ok(ServerStep::Abort(o)) => {
                out.extend_from_slice(&o);
                return None;
            }
            Err(f) => {
                out.extend_from_slice(&f.output);
                return None;
            }
        }
    }
    None
}

fuzz_target!(|input: (u8, bool, &[u8])| {
    let (split, forced, data) = input;
    let tls = if forced { TlsMode::Require } else { TlsMode::Off };
    let whole = run(data, data.len(), tls);
    let pieces = run(data, usize::from(split % 17) + 1, tls);
    // Without STARTTLS in play the outcome cannot depend on the split.
    if !forced {
        assert_eq!(whole.map(|w| w.0), pieces.map(|p| p.0));
    }
});
