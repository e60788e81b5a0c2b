//! Reply tracking at the client: one [`PendingReply`] per request in flight
//! checks every chunk the server sends for it against the request and the
//! rules of "Structured reply chunk message" and the per-command text.
//!
//! The driver reads a header, looks the cookie up, asks
//! [`PendingReply::chunk_payload`] how to read the payload (data goes
//! straight into the caller's buffer at the range [`PendingReply::data`]
//! returns), and calls [`PendingReply::finish`] on the chunk flagged done.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::codec::reply::{ChunkHeader, ChunkPayload, Extent, ReplyMode};
use crate::consts::{Cmd, Errno, ReplyType};
use crate::error::ProtocolError;
use crate::flags::CmdFlags;
use crate::limits::{MAX_EXTENTS_ACCEPTED, MAX_STRING_LEN};

/// A request that failed at the server, with what the server said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}{}{}", if message.is_empty() { "" } else { ": " }, message)]
pub struct ReplyError {
    /// The error value (normalized).
    pub errno: Errno,
    /// The server's message, possibly empty.
    pub message: String,
    /// For `NBD_REPLY_TYPE_ERROR_OFFSET`, where it happened.
    pub offset: Option<u64>,
}

/// How to read the payload of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: read the 8-byte offset, then pass it to
    /// [`PendingReply::data`] with this many data bytes.
    Data {
        /// Data bytes after the offset.
        len: u64,
    },
    /// Read this many bytes and pass them to [`PendingReply::payload`].
    Payload {
        /// Payload length.
        len: usize,
    },
}

/// The reply to one request, as far as it has arrived.
#[derive(Debug, Clone)]
pub struct PendingReply {
    /// Command.
    pub cmd: Cmd,
    /// Request offset.
    pub offset: u64,
    /// Request length.
    pub length: u64,
    /// Request flags.
    pub flags: CmdFlags,
    mode: ReplyMode,
    contexts: Vec<u32>,
    seen_contexts: Vec<u32>,
    covered: BTreeMap<u64, u64>,
    covered_bytes: u64,
    content_chunks: u32,
    error: Option<ReplyError>,
    /// Extents received, per context id.
    pub extents: Vec<(u32, Vec<Extent>)>,
}

impl PendingReply {
    /// Tracks a request sent on a connection with reply layout `mode` and
    /// negotiated metadata context ids `contexts`.
    pub fn new(cmd: Cmd, offset: u64, length: u64, flags: CmdFlags, mode: ReplyMode, contexts: &[u32]) -> Self {
        Self {
            cmd,
            offset,
            length,
            flags,
            mode,
            contexts: contexts.to_vec(),
            seen_contexts: Vec::new(),
            covered: BTreeMap::new(),
            covered_bytes: 0,
            content_chunks: 0,
            error: None,
            extents: Vec::new(),
        }
    }

    /// A simple reply arrived: the request's result. For a successful read
    /// in [`ReplyMode::Simple`], the caller then reads `length` data bytes.
    ///
    /// "If structured replies have been negotiated, a simple reply MAY be
    /// used as a reply to any request other than `NBD_CMD_READ`, but only if
    /// the reply has no data payload. If extended headers have been
    /// negotiated, a simple reply MUST NOT be used." A successful
    /// `NBD_CMD_BLOCK_STATUS` "MUST be sent via reply chunks". Breaking
    /// these rules is a protocol error.
    pub fn simple(&self, error: u32) -> Result<Result<(), ReplyError>, ProtocolError> {
        match self.mode {
            ReplyMode::Simple => {}
            ReplyMode::Extended => return Err(ProtocolError::Violation("simple reply after extended headers")),
            ReplyMode::Structured if self.cmd == Cmd::READ => {
                return Err(ProtocolError::Violation("simple reply to NBD_CMD_READ with structured replies"))
            }
            ReplyMode::Structured if self.cmd == Cmd::BLOCK_STATUS && error == 0 => {
                return Err(ProtocolError::Violation("successful NBD_CMD_BLOCK_STATUS without reply chunks"))
            }
            ReplyMode::Structured => {}
        }
        if error == 0 {
            Ok(Ok(()))
        } else {
            Ok(Err(ReplyError { errno: Errno(error).normalize(), message: String::new(), offset: None }))
        }
    }

    /// Checks a chunk header against this request and says how to read
    /// its payload. Any violation ends the connection.
    pub fn chunk_payload(&self, h: &ChunkHeader) -> Result<ChunkOutcome, ProtocolError> {
        if self.mode == ReplyMode::Extended && h.offset != self.offset {
            return Err(ProtocolError::InvalidChunk("extended reply offset does not match the request"));
        }
        let unexpected = Err(ProtocolError::UnexpectedChunk { kind: h.kind, cmd: self.cmd });
        let max_small = match h.kind {
            ReplyType::NONE => 0,
            ReplyType::OFFSET_DATA if self.cmd == Cmd::READ => {
                if h.length <= 8 || h.length - 8 > self.length {
                    return Err(ProtocolError::InvalidChunk("data chunk length out of range"));
                }
                return Ok(ChunkOutcome::Data { len: h.length - 8 });
            }
            ReplyType::OFFSET_HOLE if self.cmd == Cmd::READ => 12,
            ReplyType::BLOCK_STATUS if self.cmd == Cmd::BLOCK_STATUS && self.mode != ReplyMode::Extended => {
                4 + 8 * MAX_EXTENTS_ACCEPTED
            }
            ReplyType::BLOCK_STATUS_EXT if self.cmd == Cmd::BLOCK_STATUS && self.mode == ReplyMode::Extended => {
                8 + 16 * MAX_EXTENTS_ACCEPTED
            }
            k if k.is_error() => 6 + MAX_STRING_LEN + 64,
            _ => return unexpected,
        };
        if h.length > max_small as u64 {
            return Err(ProtocolError::ReplyTooLarge(h.length));
        }
        Ok(ChunkOutcome::Payload { len: h.length as usize })
    }

    /// Records a data chunk at `data_offset` of `len` bytes; returns where
    /// it goes in the request's buffer.
    pub fn data(&mut self, data_offset: u64, len: u64) -> Result<Range<usize>, ProtocolError> {
        self.content(data_offset, len)
    }

    fn content(&mut self, at: u64, len: u64) -> Result<Range<usize>, ProtocolError> {
        let start =
            at.checked_sub(self.offset).ok_or(ProtocolError::InvalidChunk("content before the requested range"))?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.length)
            .ok_or(ProtocolError::InvalidChunk("content beyond the requested range"))?;
        if self.flags.contains(CmdFlags::DF) && self.content_chunks > 0 {
            return Err(ProtocolError::InvalidChunk("more than one content chunk despite NBD_CMD_FLAG_DF"));
        }
        // "MUST NOT send content chunks that overlap with any earlier content"
        if let Some((_, &prev_end)) = self.covered.range(..end).next_back() {
            if prev_end > start {
                return Err(ProtocolError::InvalidChunk("overlapping content chunks"));
            }
        }
        self.covered.insert(start, end);
        self.covered_bytes += len;
        self.content_chunks += 1;
        Ok(start as usize..end as usize)
    }

    /// Processes a non-data chunk payload. Returns the buffer range to fill
    /// with zeroes for a hole.
    pub fn payload(&mut self, h: &ChunkHeader, payload: &[u8]) -> Result<Option<Range<usize>>, ProtocolError> {
        let extended = self.mode == ReplyMode::Extended;
        match ChunkPayload::decode(h.kind, extended, payload)? {
            ChunkPayload::None => {
                if !h.done() {
                    return Err(ProtocolError::InvalidChunk("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE"));
                }
                Ok(None)
            }
            ChunkPayload::Hole { offset, length } => self.content(offset, length.into()).map(Some),
            ChunkPayload::BlockStatus { context_id, extents } => {
                if !self.contexts.contains(&context_id) || self.seen_contexts.contains(&context_id) {
                    return Err(ProtocolError::InvalidChunk("block status for an unknown or repeated context"));
                }
                if self.flags.contains(CmdFlags::REQ_ONE) && (extents.len() != 1 || extents[0].length > self.length) {
                    return Err(ProtocolError::InvalidChunk("NBD_CMD_FLAG_REQ_ONE answered with more than one extent"));
                }
                // "the sum of the length fields of the first N-1 extents (if
                // any) MUST be less than the requested length"; only the last
                // may reach beyond the request.
                if let Some((_, first)) = extents.split_last() {
                    let covered = first.iter().try_fold(0u64, |sum, e| sum.checked_add(e.length));
                    if !first.is_empty() && covered.is_none_or(|sum| sum >= self.length) {
                        return Err(ProtocolError::InvalidChunk("block status extents run past the request"));
                    }
                }
                self.seen_contexts.push(context_id);
                self.extents.push((context_id, extents));
                Ok(None)
            }
            ChunkPayload::Error { errno, message, offset } => {
                if let Some(off) = offset {
                    if off < self.offset || off - self.offset >= self.length.max(1) {
                        return Err(ProtocolError::InvalidChunk("error offset outside the request"));
                    }
                }
                // The first error is the one reported.
                self.error.get_or_insert(ReplyError { errno, message, offset });
                Ok(None)
            }
        }
    }

    /// Called after the chunk flagged done: the request's result.
    pub fn finish(&mut self) -> Result<Result<(), ReplyError>, ProtocolError> {
        if let Some(e) = self.error.take() {
            return Ok(Err(e));
        }
        match self.cmd {
            Cmd::READ if self.covered_bytes != self.length => {
                Err(ProtocolError::InvalidChunk("read reply did not cover the requested range"))
            }
            Cmd::BLOCK_STATUS if self.seen_contexts.len() != self.contexts.len() => {
                Err(ProtocolError::InvalidChunk("block status reply lacks a context"))
            }
            _ => Ok(Ok(())),
        }
    }
}
