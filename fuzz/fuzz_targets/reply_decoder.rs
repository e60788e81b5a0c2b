//! Reply headers and chunk payloads in every mode, fed to a reply tracker
//! as a client would: never panics, never accepts data outside the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdx_proto::client::{ChunkOutcome, PendingReply};
use nbdx_proto::{Cmd, CmdFlags, ReplyHeader, ReplyMode};

fuzz_target!(|input: (u8, u8, u16, u32, &[u8])| {
    let (mode, cmd, flags, len, mut bytes) = input;
    let mode = [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended][(mode % 3) as usize];
    let cmd = Cmd(u16::from(cmd % 9));
    let length = u64::from(len % (1 << 20));
    let mut p = PendingReply::new(cmd, 4096, length, CmdFlags::from_bits_retain(flags), mode, &[1, 2]);
    while let Ok(Some((h, n))) = ReplyHeader::decode(mode, bytes) {
        bytes = &bytes[n..];
        let ReplyHeader::Chunk(c) = h else { continue };
        match p.chunk_payload(&c) {
            Ok(ChunkOutcome::Data { len }) => {
                if bytes.len() < 8 {
                    return;
                }
                let off = u64::from_be_bytes(bytes[..8].try_into().unwrap());
                if let Ok(range) = p.data(off, len) {
                    assert!(range.end as u64 <= length);
                }
                bytes = &bytes[(8 + len as usize).min(bytes.len())..];
            }
            Ok(ChunkOutcome::Payload { len }) => {
                let take = len.min(bytes.len());
                if let Ok(Some(range)) = p.payload(&c, &bytes[..take]) {
                    assert!(range.end as u64 <= length);
                }
                bytes = &bytes[take..];
            }
            Err(_) => return,
        }
        if c.done() {
            let _ = p.finish();
            return;
        }
    }
});
