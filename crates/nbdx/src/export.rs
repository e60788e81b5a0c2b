//! [`Export`]: a named device with the policy it is served under.

use std::fmt;
use std::sync::Arc;

use nbdx_proto::server::ExportMeta;
use nbdx_proto::TransmissionFlags;

use crate::device::Device;

/// One export of a server: a name, a description and a device. The first
/// export of a server is its default (selected by the empty name).
#[derive(Clone)]
pub struct Export {
    name: String,
    description: String,
    device: Arc<dyn Device>,
    read_only: bool,
    tls_only: bool,
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .field("tls_only", &self.tls_only)
            .finish()
    }
}

impl Export {
    /// An export named `name` serving `device`.
    pub fn new(name: impl Into<String>, device: impl Device) -> Self {
        Self::from_arc(name, Arc::new(device))
    }

    /// An export serving a shared device.
    pub fn from_arc(name: impl Into<String>, device: Arc<dyn Device>) -> Self {
        Self { name: name.into(), description: String::new(), device, read_only: false, tls_only: false }
    }

    /// Sets the description shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Serves the device read-only, whatever it supports.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Under `--tls=on`, requires TLS for this export.
    pub fn with_tls_only(mut self, tls_only: bool) -> Self {
        self.tls_only = tls_only;
        self
    }

    /// The export name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.device.caps().read_only
    }

    /// What the handshake advertises for this export, derived from the
    /// device's capabilities. Reads nothing from the device.
    pub fn meta(&self) -> ExportMeta {
        let caps = self.device.caps();
        let mut f = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_DF;
        f.set(TransmissionFlags::READ_ONLY, self.is_read_only());
        f.set(TransmissionFlags::SEND_FLUSH, caps.flush);
        // FUA is emulated with a flush, so it needs one.
        let fua = caps.fua == crate::device::Support::Native || (caps.fua.advertised() && caps.flush);
        f.set(TransmissionFlags::SEND_FUA, fua);
        f.set(TransmissionFlags::ROTATIONAL, caps.rotational);
        f.set(TransmissionFlags::SEND_TRIM, caps.trim);
        f.set(TransmissionFlags::SEND_WRITE_ZEROES, caps.zero.advertised());
        // Advertised whenever zeroing is: requests the device cannot do fast
        // fail at once with NBD_ENOTSUP, which the spec counts as fast.
        f.set(TransmissionFlags::SEND_FAST_ZERO, caps.zero.advertised());
        f.set(TransmissionFlags::CAN_MULTI_CONN, caps.multi_conn);
        f.set(TransmissionFlags::SEND_CACHE, caps.cache.advertised());
        ExportMeta {
            name: self.name.clone(),
            description: self.description.clone(),
            size: self.device.size(),
            flags: f,
            block_size: caps.block_size,
            tls_only: self.tls_only,
        }
    }
}
