//! What a server says about its exports: [`ExportEntry`] from
//! `NBD_OPT_LIST`, [`ExportInfo`] from `NBD_OPT_INFO`/`NBD_OPT_GO`.

use nbdx_proto::client::Connected;
use nbdx_proto::{BlockSize, Info, OptReply, ReplyMode, TransmissionFlags};

/// One export of an `NBD_OPT_LIST` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// Export name.
    pub name: String,
    /// Description (empty when the server gave none).
    pub description: String,
}

/// Everything known about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name the client asked for.
    pub name: String,
    /// `NBD_INFO_NAME`, when the server sent it.
    pub canonical_name: Option<String>,
    /// `NBD_INFO_DESCRIPTION`, when the server sent it.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// `NBD_INFO_BLOCK_SIZE`, only when the server advertised it.
    pub block_size: Option<BlockSize>,
    /// Reply layout negotiated on the connection that asked.
    pub mode: ReplyMode,
    /// Metadata contexts: for [`info`](super::Negotiation::info), those the
    /// server lists for the export; for a connection, those selected.
    pub contexts: Vec<String>,
    /// Whether TLS was in use.
    pub tls: bool,
    /// Whether the server speaks fixed newstyle (nbdinfo's `newstyle-fixed`).
    pub fixed_newstyle: bool,
}

impl ExportInfo {
    pub(crate) fn from_connected(c: &Connected, fixed_newstyle: bool) -> Self {
        Self {
            name: c.export_name.clone(),
            canonical_name: c.canonical_name.clone(),
            description: c.description.clone(),
            size: c.size,
            flags: c.flags,
            block_size: c.block_size,
            mode: c.mode,
            contexts: c.meta_contexts.iter().map(|(_, n)| n.clone()).collect(),
            tls: c.tls,
            fixed_newstyle,
        }
    }

    /// From the `NBD_REP_INFO` replies of an `NBD_OPT_INFO`; `None` without
    /// `NBD_INFO_EXPORT`.
    pub(crate) fn from_replies(name: &str, replies: &[OptReply], mode: ReplyMode, tls: bool) -> Option<Self> {
        let mut info = None;
        let (mut canonical, mut description, mut block) = (None, None, None);
        for r in replies {
            match r {
                OptReply::Info(Info::Export { size, flags }) => info = Some((*size, *flags)),
                OptReply::Info(Info::Name(n)) => canonical = Some(n.clone()),
                OptReply::Info(Info::Description(d)) => description = Some(d.clone()),
                OptReply::Info(Info::BlockSize(b)) if b.validate().is_ok() => block = Some(*b),
                _ => {}
            }
        }
        let (size, flags) = info?;
        Some(Self {
            name: name.to_owned(),
            canonical_name: canonical,
            description,
            size,
            flags,
            block_size: block,
            mode,
            contexts: Vec::new(),
            tls,
            fixed_newstyle: true,
        })
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.flags.contains(f)
    }

    /// `NBD_FLAG_READ_ONLY`.
    pub fn is_read_only(&self) -> bool {
        self.has(TransmissionFlags::READ_ONLY)
    }
    /// `NBD_FLAG_ROTATIONAL`.
    pub fn is_rotational(&self) -> bool {
        self.has(TransmissionFlags::ROTATIONAL)
    }
    /// `NBD_FLAG_SEND_FLUSH`.
    pub fn can_flush(&self) -> bool {
        self.has(TransmissionFlags::SEND_FLUSH)
    }
    /// `NBD_FLAG_SEND_FUA`.
    pub fn can_fua(&self) -> bool {
        self.has(TransmissionFlags::SEND_FUA)
    }
    /// `NBD_FLAG_SEND_TRIM`.
    pub fn can_trim(&self) -> bool {
        self.has(TransmissionFlags::SEND_TRIM)
    }
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub fn can_zero(&self) -> bool {
        self.has(TransmissionFlags::SEND_WRITE_ZEROES)
    }
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub fn can_fast_zero(&self) -> bool {
        self.has(TransmissionFlags::SEND_FAST_ZERO)
    }
    /// `NBD_FLAG_SEND_DF`.
    pub fn can_df(&self) -> bool {
        self.has(TransmissionFlags::SEND_DF)
    }
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub fn can_multi_conn(&self) -> bool {
        self.has(TransmissionFlags::CAN_MULTI_CONN)
    }
    /// `NBD_FLAG_SEND_CACHE`.
    pub fn can_cache(&self) -> bool {
        self.has(TransmissionFlags::SEND_CACHE)
    }

    /// The constraints requests must obey: advertised ones, or the spec's
    /// defaults (minimum 1, preferred 4096, maximum 32 MiB).
    pub fn effective_block_size(&self) -> BlockSize {
        self.block_size.unwrap_or_default()
    }

    /// nbdinfo's `protocol` value.
    pub fn protocol(&self) -> &'static str {
        if self.fixed_newstyle {
            "newstyle-fixed"
        } else {
            "newstyle"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_replies_without_export_info_give_nothing_and_invalid_block_sizes_are_dropped() {
        let bad = BlockSize { minimum: 3, preferred: 4096, maximum: 1 << 20 };
        let replies = vec![OptReply::Info(Info::BlockSize(bad)), OptReply::Info(Info::Name("n".into()))];
        assert_eq!(ExportInfo::from_replies("x", &replies, ReplyMode::Simple, false), None);
        let mut replies = replies;
        replies.push(OptReply::Info(Info::Export { size: 7, flags: TransmissionFlags::HAS_FLAGS }));
        let info = ExportInfo::from_replies("x", &replies, ReplyMode::Simple, false).unwrap();
        assert_eq!((info.size, info.block_size, info.canonical_name.as_deref()), (7, None, Some("n")));
        assert_eq!(info.effective_block_size(), BlockSize::default());
    }
}
