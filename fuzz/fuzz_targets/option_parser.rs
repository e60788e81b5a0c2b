//! Option payloads: decoding never panics, and whatever decodes re-encodes
//! to bytes that decode to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdx_proto::codec::handshake::OptionHeader;
use nbdx_proto::{OptReply, OptReplyHeader, OptRequest, OptType, RepType};

fuzz_target!(|input: (u32, u32, &[u8])| {
    let (opt, rep, payload) = input;
    if let Ok(req) = OptRequest::decode(OptType(opt), payload) {
        let mut buf = Vec::new();
        req.encode(&mut buf);
        let h = OptionHeader::decode(&buf[..OptionHeader::LEN]).expect("own header decodes");
        let again = OptRequest::decode(h.opt, &buf[OptionHeader::LEN..]).expect("own encoding decodes");
        // ABORT drops its data; everything else must survive unchanged.
        if req != OptRequest::Abort {
            assert_eq!(again, req);
        }
    }
    if let Ok(reply) = OptReply::decode(RepType(rep), payload) {
        let mut buf = Vec::new();
        reply.encode(OptType(opt), &mut buf);
        let h = OptReplyHeader::decode(&buf[..OptReplyHeader::LEN]).expect("own header decodes");
        let _ = OptReply::decode(h.rep, &buf[OptReplyHeader::LEN..]).expect("own encoding decodes");
    }
});
