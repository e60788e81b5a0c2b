//! Request headers of both layouts, classified against arbitrary
//! negotiated state: never panics, and the verdict respects the export.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nbdx_proto::server::{Command, ContextKind, MetaContext, PayloadAction, TransmissionContext};
use nbdx_proto::{BlockSize, HeaderMode, ReplyMode, RequestHeader, TransmissionFlags};

#[derive(Debug, Arbitrary)]
struct Input {
    size: u64,
    flags: u16,
    mode: u8,
    min_shift: u8,
    contexts: bool,
    header: [u8; 32],
}

fuzz_target!(|i: Input| {
    let mode = [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended][(i.mode % 3) as usize];
    let minimum = 1u32 << (i.min_shift % 17);
    let ctx = TransmissionContext {
        size: i.size,
        flags: TransmissionFlags::from_bits_retain(i.flags),
        mode,
        block_size: BlockSize { minimum, preferred: minimum.max(4096), maximum: 1 << 25 },
        meta_contexts: if i.contexts { vec![MetaContext { id: 1, kind: ContextKind::BaseAllocation }] } else { vec![] },
        max_discard_payload: 1 << 26,
    };
    let hmode = mode.header_mode();
    let Ok(h) = RequestHeader::decode(hmode, &i.header[..RequestHeader::len(hmode)]) else { return };
    let inc = ctx.classify(h);
    if let PayloadAction::Read(n) = inc.payload {
        assert!(u64::from(n) <= u64::from(ctx.block_size.maximum));
    }
    match inc.verdict {
        Ok(Command::Read { offset, length, .. }) | Ok(Command::Write { offset, length, .. }) => {
            assert!(offset + u64::from(length) <= ctx.size);
            assert!(length <= ctx.block_size.maximum);
        }
        Ok(Command::Trim { offset, length, .. })
        | Ok(Command::Cache { offset, length })
        | Ok(Command::WriteZeroes { offset, length, .. })
        | Ok(Command::BlockStatus { offset, length, .. }) => {
            assert!(offset.checked_add(length).is_some_and(|e| e <= ctx.size));
            if matches!(inc.verdict, Ok(Command::Trim { .. }) | Ok(Command::WriteZeroes { .. })) {
                assert!(!ctx.flags.contains(TransmissionFlags::READ_ONLY));
            }
        }
        _ => {}
    }
    let mut out = Vec::new();
    ctx.encode_error(&h, nbdx_proto::Errno::EINVAL, "x", &mut out);
    let _ = HeaderMode::Compact;
});
