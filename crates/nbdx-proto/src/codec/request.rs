//! Transmission requests ("Request message"; extended form from the
//! `EXTENDED_HEADERS` extension).

use bytes::BufMut;

use super::Reader;
use crate::consts::{Cmd, EXTENDED_REQUEST_MAGIC, REQUEST_MAGIC};
use crate::error::ProtocolError;
use crate::flags::CmdFlags;

/// Which header layout both sides use in transmission, fixed by negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HeaderMode {
    /// 28-byte requests with a 32-bit length (`NBD_REQUEST_MAGIC`).
    #[default]
    Compact,
    /// 32-byte requests with a 64-bit length (`NBD_EXTENDED_REQUEST_MAGIC`),
    /// negotiated with `NBD_OPT_EXTENDED_HEADERS`.
    Extended,
}

/// A request header. `length` is 64 bits wide so that both layouts decode
/// to the same type; in compact mode it never exceeds `u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: CmdFlags,
    /// Command type.
    pub cmd: Cmd,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Offset into the export.
    pub offset: u64,
    /// Payload or effect length.
    pub length: u64,
}

impl RequestHeader {
    /// Length of a compact header.
    pub const COMPACT_LEN: usize = 28;
    /// Length of an extended header.
    pub const EXTENDED_LEN: usize = 32;

    /// Header length in `mode`.
    pub const fn len(mode: HeaderMode) -> usize {
        match mode {
            HeaderMode::Compact => Self::COMPACT_LEN,
            HeaderMode::Extended => Self::EXTENDED_LEN,
        }
    }

    /// Number of payload bytes that follow this header on the wire.
    ///
    /// Compact: only `NBD_CMD_WRITE` carries a payload, of `length` bytes.
    /// Extended: a payload follows exactly when `NBD_CMD_FLAG_PAYLOAD_LEN`
    /// is set ("the server SHOULD gracefully consume *length* bytes of
    /// payload" even for commands that do not expect one).
    pub fn payload_len(&self, mode: HeaderMode) -> u64 {
        match mode {
            HeaderMode::Compact if self.cmd == Cmd::WRITE => self.length,
            HeaderMode::Compact => 0,
            HeaderMode::Extended if self.flags.contains(CmdFlags::PAYLOAD_LEN) => self.length,
            HeaderMode::Extended => 0,
        }
    }

    /// Whether this header can be encoded in `mode` (compact lengths are 32 bits).
    pub fn fits(&self, mode: HeaderMode) -> bool {
        mode == HeaderMode::Extended || self.length <= u64::from(u32::MAX)
    }

    /// Appends the header. In compact mode the caller guarantees
    /// [`fits`](Self::fits); a longer length is clamped, never wrapped.
    pub fn encode(&self, mode: HeaderMode, buf: &mut impl BufMut) {
        match mode {
            HeaderMode::Compact => {
                debug_assert!(self.fits(mode), "compact request length exceeds 32 bits");
                buf.put_u32(REQUEST_MAGIC);
                buf.put_u16(self.flags.bits());
                buf.put_u16(self.cmd.0);
                buf.put_u64(self.cookie);
                buf.put_u64(self.offset);
                buf.put_u32(self.length.min(u64::from(u32::MAX)) as u32);
            }
            HeaderMode::Extended => {
                buf.put_u32(EXTENDED_REQUEST_MAGIC);
                buf.put_u16(self.flags.bits());
                buf.put_u16(self.cmd.0);
                buf.put_u64(self.cookie);
                buf.put_u64(self.offset);
                buf.put_u64(self.length);
            }
        }
    }

    /// Decodes a header of exactly [`len(mode)`](Self::len) bytes. A wrong
    /// magic (including the other mode's) means framing is lost.
    pub fn decode(mode: HeaderMode, buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        let expected = match mode {
            HeaderMode::Compact => REQUEST_MAGIC,
            HeaderMode::Extended => EXTENDED_REQUEST_MAGIC,
        };
        if magic != expected {
            return Err(ProtocolError::BadMagic { expected: expected.into(), found: magic.into() });
        }
        let flags = CmdFlags::from_bits_retain(r.u16()?);
        let cmd = Cmd(r.u16()?);
        let cookie = r.u64()?;
        let offset = r.u64()?;
        let length = match mode {
            HeaderMode::Compact => u64::from(r.u32()?),
            HeaderMode::Extended => r.u64()?,
        };
        r.finish()?;
        Ok(Self { flags, cmd, cookie, offset, length })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::assert_prefixes_fail;

    fn sample() -> RequestHeader {
        RequestHeader {
            flags: CmdFlags::FUA,
            cmd: Cmd::WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1000,
            length: 512,
        }
    }

    #[test]
    fn compact_request_has_golden_bytes() {
        let mut buf = Vec::new();
        sample().encode(HeaderMode::Compact, &mut buf);
        assert_eq!(
            buf,
            [0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0]
        );
    }

    #[test]
    fn extended_request_has_golden_bytes() {
        let mut buf = Vec::new();
        let mut h = sample();
        h.flags |= CmdFlags::PAYLOAD_LEN;
        h.length = 1 << 33;
        h.encode(HeaderMode::Extended, &mut buf);
        assert_eq!(&buf[..4], &[0x21, 0xe4, 0x1c, 0x71]);
        assert_eq!(&buf[4..6], &[0, 0x21]);
        assert_eq!(&buf[24..], &[0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn both_layouts_round_trip_and_refuse_every_prefix() {
        for mode in [HeaderMode::Compact, HeaderMode::Extended] {
            let h = sample();
            let mut buf = Vec::new();
            h.encode(mode, &mut buf);
            assert_eq!(buf.len(), RequestHeader::len(mode));
            assert_prefixes_fail(&buf, &h, |b| RequestHeader::decode(mode, b));
        }
    }

    #[test]
    fn a_header_of_the_other_mode_is_a_framing_error() {
        let mut buf = Vec::new();
        sample().encode(HeaderMode::Extended, &mut buf);
        assert!(matches!(RequestHeader::decode(HeaderMode::Compact, &buf[..28]), Err(ProtocolError::BadMagic { .. })));
    }

    #[test]
    fn payload_length_follows_the_mode_rules() {
        let mut h = sample();
        assert_eq!(h.payload_len(HeaderMode::Compact), 512);
        assert_eq!(h.payload_len(HeaderMode::Extended), 0);
        h.flags |= CmdFlags::PAYLOAD_LEN;
        assert_eq!(h.payload_len(HeaderMode::Extended), 512);
        h.cmd = Cmd::READ;
        assert_eq!(h.payload_len(HeaderMode::Compact), 0);
        assert_eq!(h.payload_len(HeaderMode::Extended), 512);
    }
}
