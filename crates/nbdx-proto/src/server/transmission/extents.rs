//! Block status replies: what the device reported, normalized to what the
//! spec allows, and how large the encoded reply can get.

use super::TransmissionContext;
use crate::codec::reply::{Extent, ReplyMode};
use crate::codec::request::RequestHeader;
use crate::flags::CmdFlags;
use crate::limits::MAX_EXTENTS_PER_CHUNK;

/// Bytes of one block status chunk besides its extents: the chunk header
/// (at most 32 bytes, extended) and the context id (plus the extent count,
/// extended).
const CHUNK_OVERHEAD: usize = 32 + 8;

impl TransmissionContext {
    /// Upper bound, in bytes, of the encoded reply to the block status
    /// request `h`: what the server reserves from its memory budget before
    /// running it. At most [`MAX_EXTENTS_PER_CHUNK`] extents per context,
    /// and no more than the request can hold at the minimum block size.
    pub fn block_status_reply_bound(&self, h: &RequestHeader) -> usize {
        let min = u64::from(self.block_size.minimum.max(1));
        let extents = if h.flags.contains(CmdFlags::REQ_ONE) {
            1
        } else {
            // Extents are aligned to the minimum block size, so the request
            // holds at most one per block, plus one straddling its end.
            h.length.max(1).div_ceil(min).saturating_add(1).min(MAX_EXTENTS_PER_CHUNK as u64) as usize
        };
        let per_extent = if self.mode == ReplyMode::Extended { 16 } else { 8 };
        self.meta_contexts.len() * (CHUNK_OVERHEAD + extents * per_extent)
    }

    /// Merges equal neighbours, aligns to the minimum block size, clamps to
    /// the export end and to 32 bits in compact mode, honours
    /// `NBD_CMD_FLAG_REQ_ONE`, stops once the requested length is covered
    /// and returns between one and [`MAX_EXTENTS_PER_CHUNK`] extents.
    pub fn normalize_extents(&self, offset: u64, length: u64, extents: &[(u64, u32)], req_one: bool) -> Vec<Extent> {
        let min = u64::from(self.block_size.minimum.max(1));
        let avail = self.size.saturating_sub(offset);
        let want = length.clamp(1, avail.max(1));
        let cap = if self.mode == ReplyMode::Extended { u64::MAX } else { u64::from(u32::MAX) / min * min };
        // Absolute (relative to `offset`) spans, clipped to the export.
        let mut spans: Vec<(u64, u64, u64)> = Vec::new();
        let mut at = 0u64;
        for &(len, flags) in extents {
            if at >= avail || at >= want.saturating_add(min) || spans.len() > MAX_EXTENTS_PER_CHUNK {
                break;
            }
            let end = at.saturating_add(len).min(avail);
            if end > at {
                spans.push((at, end, u64::from(flags)));
            }
            at = end;
        }
        let mut out: Vec<Extent> = Vec::new();
        let (mut pos, mut i) = (0u64, 0usize);
        while i < spans.len() && pos < want && out.len() < MAX_EXTENTS_PER_CHUNK {
            let (_, span_end, mut flags) = spans[i];
            let mut end = span_end;
            if end % min != 0 && end < avail {
                // A block straddles two spans: report it once, with the
                // flags both agree on (a partly allocated block is data).
                let target = end.div_ceil(min) * min;
                let mut j = i + 1;
                while j < spans.len() && spans[j].0 < target {
                    flags &= spans[j].2;
                    if spans[j].1 > target {
                        break;
                    }
                    j += 1;
                }
                end = target.min(avail);
            }
            push_extent(&mut out, end - pos, flags);
            pos = end;
            while i < spans.len() && spans[i].1 <= pos {
                i += 1;
            }
            if req_one {
                break;
            }
        }
        finalize(out, want, cap, req_one)
    }
}

fn push_extent(out: &mut Vec<Extent>, length: u64, flags: u64) {
    if length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.flags == flags => last.length += length,
        _ => out.push(Extent { length, flags }),
    }
}

/// Applies the per-reply rules that do not depend on alignment.
fn finalize(mut out: Vec<Extent>, want: u64, cap: u64, req_one: bool) -> Vec<Extent> {
    if out.is_empty() {
        // The device said nothing useful: "a server MAY always safely
        // report a status of 0 for any block".
        out.push(Extent { length: want, flags: 0 });
    }
    let mut covered = 0u64;
    let mut keep = 0;
    for e in out.iter_mut() {
        if e.length > cap {
            e.length = cap;
        }
        keep += 1;
        covered = covered.saturating_add(e.length);
        if covered >= want || e.length == cap || keep == MAX_EXTENTS_PER_CHUNK {
            break;
        }
    }
    out.truncate(keep);
    if req_one {
        out.truncate(1);
        out[0].length = out[0].length.min(want);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::option_reply::BlockSize;
    use crate::consts::Cmd;
    use crate::flags::TransmissionFlags;
    use crate::server::{ContextKind, MetaContext};

    fn ctx() -> TransmissionContext {
        TransmissionContext {
            size: 1 << 20,
            flags: TransmissionFlags::HAS_FLAGS,
            mode: ReplyMode::Structured,
            block_size: BlockSize::default(),
            meta_contexts: vec![MetaContext { id: 1, kind: ContextKind::BaseAllocation }],
            max_discard_payload: crate::limits::MAX_DISCARD_PAYLOAD,
        }
    }

    fn extents(c: &TransmissionContext, offset: u64, length: u64, e: &[(u64, u32)], one: bool) -> Vec<(u64, u64)> {
        c.normalize_extents(offset, length, e, one).iter().map(|x| (x.length, x.flags)).collect()
    }

    #[test]
    fn extents_merge_equal_neighbours_and_stop_once_the_request_is_covered() {
        let c = ctx();
        assert_eq!(extents(&c, 0, 8192, &[(4096, 3), (4096, 3), (4096, 0)], false), vec![(8192, 3)]);
        assert_eq!(extents(&c, 0, 4097, &[(4096, 3), (4096, 0), (4096, 3)], false), vec![(4096, 3), (4096, 0)]);
    }

    #[test]
    fn extents_with_req_one_give_one_extent_no_longer_than_the_request() {
        let c = ctx();
        assert_eq!(extents(&c, 0, 100, &[(4096, 3)], true), vec![(100, 3)]);
    }

    #[test]
    fn extents_are_clipped_to_the_export_end() {
        let c = ctx();
        assert_eq!(extents(&c, (1 << 20) - 512, 512, &[(1 << 30, 0)], false), vec![(512, 0)]);
    }

    #[test]
    fn no_extents_from_the_device_means_one_allocated_extent() {
        let c = ctx();
        assert_eq!(extents(&c, 0, 4096, &[], false), vec![(4096, 0)]);
    }

    #[test]
    fn compact_extents_are_capped_at_32_bits() {
        let mut c = ctx();
        c.size = 1 << 40;
        assert_eq!(extents(&c, 0, 1 << 31, &[(1 << 35, 3)], false), vec![(u64::from(u32::MAX), 3)]);
        c.mode = ReplyMode::Extended;
        assert_eq!(extents(&c, 0, 1 << 31, &[(1 << 35, 3)], false), vec![(1 << 35, 3)]);
    }

    #[test]
    fn extents_are_aligned_to_the_minimum_block_and_a_split_block_counts_as_data() {
        let mut c = ctx();
        c.block_size.minimum = 512;
        let e = extents(&c, 0, 4096, &[(100, 3), (412, 0), (3584, 3)], false);
        assert_eq!(e, vec![(512, 0), (3584, 3)]);
        assert!(e.iter().all(|(l, _)| l % 512 == 0));
    }

    #[test]
    fn the_reply_bound_covers_the_largest_encoded_block_status_reply() {
        for mode in [ReplyMode::Structured, ReplyMode::Extended] {
            let mut c = ctx();
            c.mode = mode;
            c.size = 1 << 40;
            c.meta_contexts.push(MetaContext { id: 2, kind: ContextKind::BaseAllocation });
            // Alternating one-byte extents: nothing merges.
            let device: Vec<(u64, u32)> =
                (0..(MAX_EXTENTS_PER_CHUNK as u64 + 10)).map(|i| (1, (i % 2) as u32)).collect();
            for (length, flags) in
                [(1u64 << 32, CmdFlags::empty()), (100, CmdFlags::empty()), (1 << 32, CmdFlags::REQ_ONE)]
            {
                let h = RequestHeader { flags, cmd: Cmd::BLOCK_STATUS, cookie: 1, offset: 0, length };
                let mut buf = Vec::new();
                c.encode_block_status(&h, &device, &mut buf);
                let bound = c.block_status_reply_bound(&h);
                assert!(buf.len() <= bound, "{mode:?} {length}: {} > {bound}", buf.len());
                assert!(bound <= 2 * (40 + 16 * MAX_EXTENTS_PER_CHUNK), "bound {bound} is not tight");
            }
        }
    }
}
