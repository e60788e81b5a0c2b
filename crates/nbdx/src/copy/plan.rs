//! What to do with each range of the source: the [`Planner`] turns the
//! allocation map, fetched window by window, into [`Work`] items (data
//! pieces of at most one request, cut on request-size boundaries, and zero
//! ranges), and [`runs`] splits the data that was read into runs of data
//! and of all-zero blocks.

use std::collections::VecDeque;

use super::ends::is_zero;
use crate::device::Extent;
use nbdx_proto::AllocationFlags;

/// Allocation map asked for at once.
pub(crate) const MAP_WINDOW: u64 = 1 << 30;

/// Largest zero range handed out as one item (keeps progress moving).
const MAX_ZERO_ITEM: u64 = 1 << 30;

/// One thing to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Read these bytes and write them.
    Data { offset: u64, len: u64 },
    /// These bytes read as zeroes: zero them at the destination.
    Zero { offset: u64, len: u64 },
}

impl Work {
    pub fn len(&self) -> u64 {
        match *self {
            Self::Data { len, .. } | Self::Zero { len, .. } => len,
        }
    }
}

/// Turns the source's allocation map into work, in offset order.
#[derive(Debug)]
pub(crate) struct Planner {
    /// End of what the map covers so far.
    mapped: u64,
    end: u64,
    /// Ranges mapped and not yet handed out: (offset, length, zero).
    pending: VecDeque<(u64, u64, bool)>,
    request: u64,
    align: u64,
}

impl Planner {
    /// Plans `0..end` in pieces of at most `request` bytes; zero ranges
    /// are shrunk to multiples of `align` (their edges become data).
    pub fn new(end: u64, request: u64, align: u64) -> Self {
        Self { mapped: 0, end, pending: VecDeque::new(), request: request.max(1), align: align.max(1) }
    }

    /// Plans without asking for the map: everything is data (zero
    /// detection still applies).
    pub fn without_map(mut self) -> Self {
        self.push(0, self.end, false);
        self.mapped = self.end;
        self
    }

    /// The next item, if the map covers it.
    pub fn pop(&mut self) -> Option<Work> {
        let (offset, len, zero) = self.pending.pop_front()?;
        let take = if zero {
            len.min(MAX_ZERO_ITEM)
        } else {
            let boundary = (offset / self.request + 1) * self.request;
            len.min(boundary - offset)
        };
        if take < len {
            self.pending.push_front((offset + take, len - take, zero));
        }
        Some(match zero {
            true => Work::Zero { offset, len: take },
            false => Work::Data { offset, len: take },
        })
    }

    /// Whether everything was handed out.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.mapped >= self.end
    }

    /// Where the map must be asked next, and for how much.
    pub fn window(&self) -> (u64, u64) {
        (self.mapped, (self.end - self.mapped).min(MAP_WINDOW))
    }

    /// Adds extents starting at [`window`](Self::window)'s offset (the
    /// last one may go past the end). Returns false if they cover nothing.
    pub fn feed(&mut self, extents: &[Extent]) -> bool {
        let before = self.mapped;
        for e in extents {
            if self.mapped >= self.end {
                break;
            }
            let len = e.length.min(self.end - self.mapped);
            self.add(self.mapped, len, e.flags.contains(AllocationFlags::ZERO));
            self.mapped += len;
        }
        self.mapped > before
    }

    fn add(&mut self, offset: u64, len: u64, zero: bool) {
        if len == 0 {
            return;
        }
        if zero {
            let (start, stop) = (offset.next_multiple_of(self.align), (offset + len) / self.align * self.align);
            if start < stop {
                self.push(offset, start - offset, false);
                self.push(start, stop - start, true);
                self.push(stop, offset + len - stop, false);
                return;
            }
        }
        self.push(offset, len, false);
    }

    /// Appends a range, merging it into the last one of the same kind.
    fn push(&mut self, offset: u64, len: u64, zero: bool) {
        if len == 0 {
            return;
        }
        match self.pending.back_mut() {
            Some((o, l, z)) if *z == zero && *o + *l == offset => *l += len,
            _ => self.pending.push_back((offset, len, zero)),
        }
    }
}

/// Splits `data`, read at `offset`, into runs `(start, end, all_zero)` of
/// indexes into `data`. Blocks are `block` bytes on absolute boundaries
/// (the first and last may be partial); `block == 0` gives one data run.
pub(crate) fn runs(offset: u64, data: &[u8], block: usize) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    if data.is_empty() {
        return out;
    }
    if block == 0 {
        out.push((0, data.len(), false));
        return out;
    }
    let mut at = 0;
    while at < data.len() {
        let into = ((offset + at as u64) % block as u64) as usize;
        let next = (at + block - into).min(data.len());
        let zero = is_zero(&data[at..next]);
        match out.last_mut() {
            Some((_, end, z)) if *z == zero => *end = next,
            _ => out.push((at, next, zero)),
        }
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(length: u64, zero: bool) -> Extent {
        let flags = if zero { AllocationFlags::HOLE | AllocationFlags::ZERO } else { AllocationFlags::empty() };
        Extent { length, flags }
    }

    fn drain(p: &mut Planner) -> Vec<Work> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    #[test]
    fn data_is_cut_on_request_boundaries_and_zero_ranges_stay_whole() {
        let mut p = Planner::new(10_000, 4096, 512);
        assert_eq!(p.window(), (0, 10_000));
        assert!(p.feed(&[ext(5000, false), ext(99_999, true)]));
        let work = drain(&mut p);
        assert_eq!(
            work,
            [
                Work::Data { offset: 0, len: 4096 },
                Work::Data { offset: 4096, len: 1024 },
                Work::Zero { offset: 5120, len: 4608 },
                Work::Data { offset: 9728, len: 272 },
            ]
        );
        assert_eq!(work.iter().map(Work::len).sum::<u64>(), 10_000);
        assert!(p.finished());
    }

    #[test]
    fn zero_ranges_smaller_than_the_alignment_are_copied_as_data() {
        let mut p = Planner::new(3000, 1 << 20, 4096);
        p.feed(&[ext(1000, false), ext(1000, true), ext(1000, false)]);
        assert_eq!(drain(&mut p), [Work::Data { offset: 0, len: 3000 }]);
    }

    #[test]
    fn the_map_is_asked_window_by_window_and_an_empty_answer_is_refused() {
        let mut p = Planner::new(3 * MAP_WINDOW, 1 << 20, 1);
        assert!(p.feed(&[ext(MAP_WINDOW, true)]));
        assert_eq!(p.window(), (MAP_WINDOW, MAP_WINDOW));
        assert!(!p.feed(&[]));
        assert_eq!(drain(&mut p), [Work::Zero { offset: 0, len: MAP_WINDOW }]);
        assert!(!p.finished());
    }

    #[test]
    fn runs_split_data_on_absolute_block_boundaries() {
        let mut data = vec![0u8; 10_000];
        data[5000] = 1;
        // Read at 1000: blocks end at 4096 - 1000, 8192 - 1000.
        assert_eq!(runs(1000, &data, 4096), [(0, 3096, true), (3096, 7192, false), (7192, 10_000, true)]);
        assert_eq!(runs(0, &data, 0), [(0, 10_000, false)]);
        assert_eq!(runs(0, &[0u8; 8192], 4096), [(0, 8192, true)]);
        assert!(runs(0, &[], 4096).is_empty());
    }
}
