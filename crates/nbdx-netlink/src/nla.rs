//! Netlink attributes (`struct nlattr`, `include/uapi/linux/netlink.h`): the
//! type-length-value layer under every NBD attribute enum.
//!
//! ```text
//!  0      2      4                 nla_len        NLA_ALIGN(nla_len)
//!  ┌──────┬──────┬───────────────────┬──────────────┐
//!  │ len  │ type │ value             │ pad to 4     │
//!  └──────┴──────┴───────────────────┴──────────────┘
//!  len = 4 + value length (without padding); integers in host byte order
//! ```
//!
//! Encoding is infallible and sized: [`Nla::value_len`] first, then
//! [`Nla::emit_value`]. Decoding borrows the input ([`NlaIter`]) and checks
//! every length against what is left before it looks at a byte.

use bytes::BufMut;

/// Size of `struct nlattr` (`NLA_HDRLEN`).
pub const NLA_HDRLEN: usize = 4;
/// Alignment of attributes (`NLA_ALIGNTO`).
pub const NLA_ALIGNTO: usize = 4;
/// Flag bit in `nla_type`: the value is a nested attribute set (`NLA_F_NESTED`).
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Flag bit in `nla_type`: the value is in network byte order (`NLA_F_NET_BYTEORDER`).
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// Mask of the attribute number in `nla_type` (`NLA_TYPE_MASK`).
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `NLA_ALIGN`: rounds a length up to the attribute alignment.
pub const fn nla_align(len: usize) -> usize {
    (len + NLA_ALIGNTO - 1) & !(NLA_ALIGNTO - 1)
}

/// A netlink message or attribute that does not match its layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a header or a declared length needs.
    #[error("truncated: {what} needs {needed} bytes, {available} available")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A fixed-size attribute with a value of the wrong size.
    #[error("attribute {name} has a {actual}-byte value, expected {expected}")]
    BadValueLength {
        /// Kernel name of the attribute.
        name: &'static str,
        /// Size its type requires.
        expected: usize,
        /// Size that arrived.
        actual: usize,
    },
    /// An `NLA_STRING` attribute that is not UTF-8.
    #[error("attribute {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A message or nested set without an attribute it must have.
    #[error("attribute {0} is missing")]
    MissingAttribute(&'static str),
}

/// One attribute of some nesting level: its `nla_type` and how to write its
/// value. Implemented by every attribute enum of this crate.
pub trait Nla: Sized {
    /// The `nla_type` field, attribute number and flag bits (`NLA_F_NESTED`).
    fn kind(&self) -> u16;
    /// Length of the value, without header and padding.
    fn value_len(&self) -> usize;
    /// Writes exactly [`Nla::value_len`] bytes of value.
    fn emit_value(&self, out: &mut dyn BufMut);
    /// Parses one attribute of this level from its `nla_type` and value.
    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError>;

    /// Length of the whole attribute with header and padding.
    fn encoded_len(&self) -> usize {
        nla_align(NLA_HDRLEN + self.value_len())
    }

    /// Writes header, value and padding ([`Nla::encoded_len`] bytes).
    fn emit(&self, out: &mut dyn BufMut) {
        let len = NLA_HDRLEN + self.value_len();
        // nla_len is 16 bits: the kernel cannot take a longer attribute either,
        // and no attribute of the nbd family comes near it.
        debug_assert!(len <= usize::from(u16::MAX), "attribute longer than nla_len can express");
        out.put_u16_ne(len as u16);
        out.put_u16_ne(self.kind());
        self.emit_value(out);
        out.put_bytes(0, nla_align(len) - len);
    }
}

/// Length of a list of attributes, as [`emit_all`] writes it.
pub fn encoded_len_all<A: Nla>(attrs: &[A]) -> usize {
    attrs.iter().map(Nla::encoded_len).sum()
}

/// Writes a list of attributes back to back.
pub fn emit_all<A: Nla>(attrs: &[A], out: &mut dyn BufMut) {
    for attr in attrs {
        attr.emit(out);
    }
}

/// Parses a buffer that holds nothing but attributes of one level.
pub fn parse_all<A: Nla>(buf: &[u8]) -> Result<Vec<A>, DecodeError> {
    NlaIter::new(buf).map(|raw| raw.and_then(|(kind, value)| A::parse(kind, value))).collect()
}

/// Iterator over the raw attributes `(nla_type, value)` of a buffer.
///
/// The last attribute may omit its padding (the kernel counts it, some
/// senders do not); any other shortfall is [`DecodeError::Truncated`], after
/// which the iterator ends.
#[derive(Debug, Clone)]
pub struct NlaIter<'a> {
    rest: &'a [u8],
}

impl<'a> NlaIter<'a> {
    /// Iterates over the attributes in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl<'a> Iterator for NlaIter<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let fail = |needed| DecodeError::Truncated { what: "nlattr", needed, available: self.rest.len() };
        let Some((header, _)) = self.rest.split_first_chunk::<NLA_HDRLEN>() else {
            let err = fail(NLA_HDRLEN);
            self.rest = &[];
            return Some(Err(err));
        };
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]);
        if len < NLA_HDRLEN || len > self.rest.len() {
            let err = fail(len.max(NLA_HDRLEN));
            self.rest = &[];
            return Some(Err(err));
        }
        let value = &self.rest[NLA_HDRLEN..len];
        self.rest = &self.rest[nla_align(len).min(self.rest.len())..];
        Some(Ok((kind, value)))
    }
}

/// Reads a fixed-size integer value, checking its size.
pub(crate) fn fixed<const N: usize>(name: &'static str, value: &[u8]) -> Result<[u8; N], DecodeError> {
    value.try_into().map_err(|_| DecodeError::BadValueLength { name, expected: N, actual: value.len() })
}

/// Reads a `u32` value (`NLA_U32`).
pub(crate) fn u32_value(name: &'static str, value: &[u8]) -> Result<u32, DecodeError> {
    fixed::<4>(name, value).map(u32::from_ne_bytes)
}

/// Reads a `u64` value (`NLA_U64`).
pub(crate) fn u64_value(name: &'static str, value: &[u8]) -> Result<u64, DecodeError> {
    fixed::<8>(name, value).map(u64::from_ne_bytes)
}

/// Reads a `u8` value (`NLA_U8`).
pub(crate) fn u8_value(name: &'static str, value: &[u8]) -> Result<u8, DecodeError> {
    fixed::<1>(name, value).map(|[b]| b)
}

/// Reads an `NLA_STRING` value: UTF-8, with or without the trailing NUL.
pub(crate) fn string_value(name: &'static str, value: &[u8]) -> Result<String, DecodeError> {
    let text = match value.iter().position(|&b| b == 0) {
        Some(nul) => &value[..nul],
        None => value,
    };
    String::from_utf8(text.to_vec()).map_err(|_| DecodeError::InvalidUtf8(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_rounds_up_to_four_bytes() {
        assert_eq!([0, 1, 4, 5, 7, 8].map(nla_align), [0, 4, 4, 8, 8, 8]);
    }

    #[test]
    fn iterator_yields_type_and_value_and_skips_padding() {
        let buf = [5, 0, 2, 0, 0xaa, 0, 0, 0, 8, 0, 3, 0, 1, 2, 3, 4];
        let items: Vec<_> = NlaIter::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(items, vec![(2, &[0xaa][..]), (3, &[1, 2, 3, 4][..])]);
    }

    #[test]
    fn last_attribute_without_padding_is_accepted() {
        let buf = [5, 0, 2, 0, 0xaa];
        assert_eq!(NlaIter::new(&buf).next(), Some(Ok((2, &[0xaa][..]))));
    }

    #[test]
    fn length_beyond_the_buffer_is_truncated_and_ends_iteration() {
        let buf = [12, 0, 2, 0, 1, 2, 3, 4];
        let mut it = NlaIter::new(&buf);
        assert_eq!(it.next(), Some(Err(DecodeError::Truncated { what: "nlattr", needed: 12, available: 8 })));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn length_shorter_than_the_header_is_rejected() {
        let buf = [2, 0, 2, 0];
        assert!(matches!(NlaIter::new(&buf).next(), Some(Err(DecodeError::Truncated { .. }))));
    }

    #[test]
    fn partial_header_is_truncated() {
        assert!(matches!(NlaIter::new(&[8, 0]).next(), Some(Err(DecodeError::Truncated { needed: 4, .. }))));
    }

    #[test]
    fn wrong_integer_size_names_the_attribute() {
        assert_eq!(
            u32_value("NBD_ATTR_INDEX", &[1, 2]),
            Err(DecodeError::BadValueLength { name: "NBD_ATTR_INDEX", expected: 4, actual: 2 })
        );
    }

    #[test]
    fn strings_stop_at_the_first_nul_and_need_not_have_one() {
        assert_eq!(string_value("s", b"ab\0\0").unwrap(), "ab");
        assert_eq!(string_value("s", b"ab").unwrap(), "ab");
        assert_eq!(string_value("s", &[0xff]), Err(DecodeError::InvalidUtf8("s")));
    }
}
