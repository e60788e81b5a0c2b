//! Wire codec: one module per message family, layered below the state machines.
//!
//! Decoding takes fixed headers from byte slices of a known length and
//! variable payloads through [`Reader`], a borrowed cursor that checks every
//! length against what is left and refuses leftovers. Nothing here allocates a
//! length the peer claimed before checking it against a limit. Encoding is
//! infallible and sized: `encoded_len()` then `encode(&mut impl BufMut)`.

pub mod handshake;
pub mod option_reply;
pub mod reply;
pub mod request;

use crate::error::DecodeError;
use crate::limits::MAX_STRING_LEN;

/// A borrowed cursor over a message body that never reads past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { needed: n - self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A string of `len` bytes, checked against the spec's string rules.
    pub fn string(&mut self, len: usize) -> Result<String, DecodeError> {
        if len > MAX_STRING_LEN {
            return Err(DecodeError::StringTooLong(len));
        }
        let bytes = self.take(len)?;
        check_string(bytes).map(str::to_owned)
    }

    /// A string prefixed by its 32-bit length.
    pub fn string32(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        self.string(len)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Checks the "Conventions" rules for a string: UTF-8, no NUL, at most 4096
/// bytes.
pub fn check_string(bytes: &[u8]) -> Result<&str, DecodeError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(DecodeError::StringTooLong(bytes.len()));
    }
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::ContainsNul);
    }
    Ok(s)
}

/// Truncates `s` to at most the spec's string limit, on a character boundary,
/// so that an encoder never emits an over-long string.
pub fn clamp_string(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the codec tests.

    /// Asserts that decoding every strict prefix of `bytes` fails (or asks
    /// for more), and that the whole decodes to `expected`.
    pub fn assert_prefixes_fail<T: PartialEq + std::fmt::Debug, E>(
        bytes: &[u8],
        expected: &T,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) {
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n}/{} bytes decoded", bytes.len());
        }
        match decode(bytes) {
            Ok(v) => assert_eq!(&v, expected),
            Err(_) => panic!("full message did not decode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_to_read_past_the_end() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.u16(), Err(DecodeError::Truncated { needed: 1 }));
    }

    #[test]
    fn reader_finish_reports_trailing_bytes() {
        let mut r = Reader::new(&[0, 0, 0, 1, 9]);
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn strings_longer_than_4096_bytes_are_refused_before_reading() {
        let mut r = Reader::new(&[]);
        assert_eq!(r.string(4097), Err(DecodeError::StringTooLong(4097)));
    }

    #[test]
    fn strings_with_nul_or_bad_utf8_are_refused() {
        assert_eq!(check_string(b"a\0b"), Err(DecodeError::ContainsNul));
        assert_eq!(check_string(&[0xff, 0xfe]), Err(DecodeError::InvalidUtf8));
        assert_eq!(check_string("exp\u{e9}".as_bytes()), Ok("exp\u{e9}"));
    }

    #[test]
    fn clamp_string_cuts_on_a_character_boundary() {
        let s = "\u{e9}".repeat(3000); // 6000 bytes
        let c = clamp_string(&s);
        assert!(c.len() <= MAX_STRING_LEN);
        assert!(c.len() >= MAX_STRING_LEN - 1);
    }
}
