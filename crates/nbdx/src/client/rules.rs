//! Client-side validation: what the server advertised decides what may be
//! sent ("Size constraints", "Transmission flags", "Request types"), and
//! large calls are split into requests the server accepts.
//!
//! A request that breaks a rule is refused with
//! [`ClientError::InvalidRequest`] and never sent.

use nbdx_proto::{Cmd, CmdFlags, TransmissionFlags};

use super::error::{ClientError, ClientResult};
use super::info::ExportInfo;

/// The limits one export imposes on requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    pub size: u64,
    flags: TransmissionFlags,
    /// Minimum block size: alignment of every offset and length.
    pub minimum: u64,
    /// Preferred block size: where split requests are cut.
    pub align: u64,
    /// Largest read or write payload, a multiple of the alignment.
    pub max_payload: u64,
    /// Largest effect length of trim, zero, cache and block status.
    pub max_effect: u64,
    block_status: Result<(), &'static str>,
}

fn invalid(msg: String) -> ClientError {
    ClientError::InvalidRequest(msg)
}

impl Rules {
    /// Rules for `info`; `block_status` says why `NBD_CMD_BLOCK_STATUS`
    /// cannot be used, if it cannot.
    pub fn new(info: &ExportInfo, block_status: Result<(), &'static str>, max_request: u32) -> Self {
        let b = info.effective_block_size();
        let minimum = u64::from(b.minimum.max(1));
        let align = u64::from(b.preferred).max(minimum);
        let cap = u64::from(b.maximum.min(max_request));
        let unit = if cap >= align { align } else { minimum };
        let max_payload = (cap / unit * unit).max(minimum);
        let max_effect = u64::from(u32::MAX) / align * align;
        Self { size: info.size, flags: info.flags, minimum, align, max_payload, max_effect, block_status }
    }

    /// Checks one request before it is sent.
    pub fn check(&self, cmd: Cmd, flags: CmdFlags, offset: u64, length: u64) -> ClientResult<()> {
        self.check_range(cmd, flags, offset, length)?;
        let max = if matches!(cmd, Cmd::READ | Cmd::WRITE) { self.max_payload } else { self.max_effect };
        if length > max {
            return Err(invalid(format!("{cmd} length {length} exceeds the maximum of {max}")));
        }
        Ok(())
    }

    /// Checks a call that may be split: everything but the length limit.
    pub fn check_range(&self, cmd: Cmd, flags: CmdFlags, offset: u64, length: u64) -> ClientResult<()> {
        let needs = |flag: TransmissionFlags, what: &str| {
            if self.flags.contains(flag) {
                Ok(())
            } else {
                Err(invalid(format!("{what} is not supported by the server ({flag:?} not advertised)")))
            }
        };
        let writes = matches!(cmd, Cmd::WRITE | Cmd::TRIM | Cmd::WRITE_ZEROES);
        if writes && self.flags.contains(TransmissionFlags::READ_ONLY) {
            return Err(invalid(format!("{cmd} on a read-only export")));
        }
        match cmd {
            Cmd::FLUSH => needs(TransmissionFlags::SEND_FLUSH, "NBD_CMD_FLUSH")?,
            Cmd::TRIM => needs(TransmissionFlags::SEND_TRIM, "NBD_CMD_TRIM")?,
            Cmd::WRITE_ZEROES => needs(TransmissionFlags::SEND_WRITE_ZEROES, "NBD_CMD_WRITE_ZEROES")?,
            Cmd::CACHE => needs(TransmissionFlags::SEND_CACHE, "NBD_CMD_CACHE")?,
            Cmd::BLOCK_STATUS => self.block_status.map_err(|why| ClientError::Unsupported(why.into()))?,
            _ => {}
        }
        if flags.contains(CmdFlags::FUA) {
            needs(TransmissionFlags::SEND_FUA, "NBD_CMD_FLAG_FUA")?;
        }
        if flags.contains(CmdFlags::FAST_ZERO) {
            needs(TransmissionFlags::SEND_FAST_ZERO, "NBD_CMD_FLAG_FAST_ZERO")?;
        }
        if flags.contains(CmdFlags::DF) {
            needs(TransmissionFlags::SEND_DF, "NBD_CMD_FLAG_DF")?;
        }
        if cmd == Cmd::FLUSH {
            return Ok(());
        }
        if offset % self.minimum != 0 || length % self.minimum != 0 {
            return Err(invalid(format!(
                "{cmd} at offset {offset} length {length} is not aligned to the minimum block size {}",
                self.minimum
            )));
        }
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(invalid(format!(
                "{cmd} at offset {offset} length {length} goes beyond the end of the export ({} bytes)",
                self.size
            )));
        }
        Ok(())
    }

    /// Cuts `offset..offset + length` into requests of at most `max` bytes
    /// whose boundaries fall on the preferred block size where possible.
    pub fn pieces(&self, offset: u64, length: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
        let (align, end) = (self.align, offset.saturating_add(length));
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let mut n = max.min(end - pos);
            if pos + n < end {
                let cut = (pos + n) / align * align;
                if cut > pos {
                    n = cut - pos;
                }
            }
            let piece = (pos, n);
            pos += n;
            Some(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use nbdx_proto::{BlockSize, ReplyMode};

    use super::*;

    fn rules(flags: TransmissionFlags, block_size: Option<BlockSize>) -> Rules {
        let info = ExportInfo {
            name: String::new(),
            canonical_name: None,
            description: None,
            size: 1 << 20,
            flags: flags | TransmissionFlags::HAS_FLAGS,
            block_size,
            mode: ReplyMode::Structured,
            contexts: Vec::new(),
            tls: false,
            fixed_newstyle: true,
        };
        Rules::new(&info, Err("no base:allocation"), 1 << 25)
    }

    fn reason(r: ClientResult<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn unadvertised_commands_and_flags_are_refused_with_the_flag_named() {
        let r = rules(TransmissionFlags::empty(), None);
        assert!(reason(r.check(Cmd::TRIM, CmdFlags::empty(), 0, 512)).contains("SEND_TRIM"));
        assert!(reason(r.check(Cmd::FLUSH, CmdFlags::empty(), 0, 0)).contains("SEND_FLUSH"));
        assert!(reason(r.check(Cmd::WRITE, CmdFlags::FUA, 0, 512)).contains("SEND_FUA"));
        assert!(reason(r.check(Cmd::BLOCK_STATUS, CmdFlags::empty(), 0, 512)).contains("base:allocation"));
        let ro = rules(TransmissionFlags::READ_ONLY | TransmissionFlags::SEND_TRIM, None);
        assert!(reason(ro.check(Cmd::TRIM, CmdFlags::empty(), 0, 512)).contains("read-only"));
        assert!(ro.check(Cmd::READ, CmdFlags::empty(), 0, 512).is_ok());
    }

    #[test]
    fn misaligned_or_out_of_range_requests_are_refused() {
        let r = rules(TransmissionFlags::empty(), Some(BlockSize { minimum: 512, preferred: 4096, maximum: 65536 }));
        assert!(reason(r.check(Cmd::READ, CmdFlags::empty(), 100, 512)).contains("minimum block size 512"));
        assert!(reason(r.check(Cmd::READ, CmdFlags::empty(), 0, 100)).contains("not aligned"));
        assert!(reason(r.check(Cmd::READ, CmdFlags::empty(), 1 << 20, 512)).contains("beyond the end"));
        assert!(reason(r.check(Cmd::READ, CmdFlags::empty(), u64::MAX - 511, 512)).contains("beyond the end"));
        assert!(reason(r.check(Cmd::WRITE, CmdFlags::empty(), 0, 131072)).contains("exceeds the maximum"));
        assert!(r.check(Cmd::READ, CmdFlags::empty(), 512, 65536).is_ok());
    }

    #[test]
    fn pieces_respect_the_maximum_and_cut_on_preferred_boundaries() {
        let r = rules(TransmissionFlags::empty(), Some(BlockSize { minimum: 512, preferred: 4096, maximum: 10000 }));
        assert_eq!(r.max_payload, 8192, "the maximum is rounded down to the preferred size");
        let p: Vec<_> = r.pieces(512, 20000, r.max_payload).collect();
        assert_eq!(p, [(512, 7680), (8192, 8192), (16384, 4128)]);
        assert_eq!(p.iter().map(|(_, n)| n).sum::<u64>(), 20000);
        assert_eq!(r.pieces(0, 0, 8192).count(), 0);
    }

    #[test]
    fn a_client_limit_smaller_than_the_server_maximum_wins() {
        let info_max = Some(BlockSize { minimum: 1, preferred: 4096, maximum: u32::MAX });
        let r = rules(TransmissionFlags::empty(), info_max);
        assert_eq!(r.max_payload, 1 << 25);
        assert_eq!(r.max_effect % 4096, 0);
        assert!(r.max_effect <= u64::from(u32::MAX));
    }
}
