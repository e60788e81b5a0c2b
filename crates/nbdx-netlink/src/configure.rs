//! [`configure`]: from a negotiated connection (`NBD_OPT_GO` done) to a
//! usable `/dev/nbdN`.
//!
//! What the handshake said becomes the kernel's configuration:
//!
//! | handshake | kernel |
//! |---|---|
//! | export size | `NBD_ATTR_SIZE_BYTES`, rounded down to whole blocks |
//! | `NBD_INFO_BLOCK_SIZE` minimum | logical block size: max(512, minimum), at most the page size ([`kernel_block_size`]) |
//! | `NBD_INFO_BLOCK_SIZE` maximum | `queue/max_sectors_kb`, when smaller than the kernel's default |
//! | transmission flags | `NBD_ATTR_SERVER_FLAGS` (+ `NBD_FLAG_READ_ONLY` for a read-only attach) |
//!
//! The preferred block size is only a performance hint; the logical block
//! size is a hard rule for every request the kernel sends, so it follows the
//! minimum. The call returns once the block device is usable (size visible,
//! node openable); when that does not happen in time the device is
//! disconnected again, so a failure never leaves a half-configured device.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use nbdx::proto::client::Connected;
use nbdx::proto::TransmissionFlags;

use crate::error::{Error, Result};
use crate::ioctl::{connect_ioctl, IoctlConnection};
use crate::netlink::NbdNetlink;
use crate::request::{ClientFlags, ConnectRequest};
use crate::sysfs;

/// How long [`configure`] waits for the device to become usable by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which kernel interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Interface {
    /// Netlink when the family `nbd` exists, else ioctls if the driver is
    /// loaded (kernels before 4.12).
    #[default]
    Auto,
    /// The generic netlink family only.
    Netlink,
    /// The ioctls of `/dev/nbdN` only (the device lives as long as the
    /// returned [`IoctlConnection`]).
    Ioctl,
}

/// How to configure the device, beyond what the handshake says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigureOptions {
    /// The device to use; `None` for any free one.
    pub index: Option<u32>,
    /// Expose only the first `size` bytes of the export (`None`: all of it).
    pub size: Option<u64>,
    /// Mark the device read-only, whatever the export allows.
    pub read_only: bool,
    /// Per-request timeout (`None`: the kernel waits for ever).
    pub timeout: Option<Duration>,
    /// How long requests wait for a reconnect once every socket is dead
    /// (netlink only).
    pub dead_conn_timeout: Option<Duration>,
    /// Backend identifier shown in `/sys/block/nbdN/backend` (netlink only;
    /// dropped for ioctls).
    pub backend: Option<String>,
    /// `NBD_CFLAG_*` (netlink only).
    pub client_flags: ClientFlags,
    /// Bound on the wait for the device to become usable.
    pub ready_timeout: Duration,
}

impl Default for ConfigureOptions {
    fn default() -> Self {
        Self {
            index: None,
            size: None,
            read_only: false,
            timeout: None,
            dead_conn_timeout: None,
            backend: None,
            client_flags: ClientFlags::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

/// The page size of this machine: the kernel's largest logical block size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// The logical block size for the export: max(512, the export's minimum
/// block size). Fails when that exceeds the page size, the largest block
/// size the kernel can use.
pub fn kernel_block_size(export: &Connected) -> Result<u64> {
    let minimum = u64::from(export.block_size.map_or(1, |b| b.minimum));
    let block_size = minimum.max(512);
    let page = page_size();
    if block_size > page {
        return Err(Error::Unsupported(format!(
            "the export's minimum block size ({minimum} bytes) exceeds the page size ({page} bytes), \
             the largest block size the kernel can use"
        )));
    }
    Ok(block_size)
}

/// The `NBD_CMD_CONNECT` request for `export` over `sockets`.
pub fn connect_request<'fd>(
    export: &Connected,
    sockets: &[BorrowedFd<'fd>],
    options: &ConfigureOptions,
) -> Result<ConnectRequest<'fd>> {
    let block_size = kernel_block_size(export)?;
    let size = match options.size {
        Some(size) if size > export.size => {
            return Err(Error::Unsupported(format!("size {size} is larger than the export ({} bytes)", export.size)))
        }
        Some(size) => size,
        None => export.size,
    };
    let size_bytes = size / block_size * block_size;
    if size_bytes == 0 {
        return Err(Error::Unsupported(format!("the export ({size} bytes) is smaller than one block ({block_size})")));
    }
    let mut request = ConnectRequest::new(size_bytes, sockets.to_vec());
    request.index = options.index;
    request.block_size = Some(block_size);
    request.server_flags = export.flags | TransmissionFlags::HAS_FLAGS;
    if options.read_only {
        request.server_flags |= TransmissionFlags::READ_ONLY;
    }
    request.client_flags = options.client_flags;
    request.timeout = options.timeout;
    request.dead_conn_timeout = options.dead_conn_timeout;
    request.backend = options.backend.clone();
    Ok(request)
}

/// Hands `sockets` (negotiated to `export`, e.g. by
/// `nbdx::client::connect_for_handover`) to the kernel over netlink and
/// waits until `/dev/nbdN` is usable; returns N.
///
/// The caller may close its sockets afterwards: the kernel keeps its own
/// references. On failure nothing stays configured.
pub fn configure(export: &Connected, sockets: &[BorrowedFd<'_>], options: &ConfigureOptions) -> Result<u32> {
    configure_with(&NbdNetlink::open()?, export, sockets, options)
}

/// [`configure`] on a netlink handle the caller already has.
pub fn configure_with(
    netlink: &NbdNetlink,
    export: &Connected,
    sockets: &[BorrowedFd<'_>],
    options: &ConfigureOptions,
) -> Result<u32> {
    let request = connect_request(export, sockets, options)?;
    let index = netlink.connect(&request)?;
    if let Err(err) = finish(index, export, request.size_bytes, options) {
        let _ = netlink.disconnect(index);
        return Err(err);
    }
    Ok(index)
}

/// [`configure`] with the ioctls: the device lives as long as the returned
/// connection (its thread blocks in `NBD_DO_IT`). A dead-connection timeout
/// cannot be honoured and is refused; the backend identifier is dropped.
pub fn configure_ioctl(
    export: &Connected,
    sockets: &[BorrowedFd<'_>],
    options: &ConfigureOptions,
) -> Result<IoctlConnection> {
    if options.dead_conn_timeout.is_some() {
        return Err(Error::Unsupported(
            "a dead-connection timeout (reconnecting) needs the netlink interface of the nbd driver".into(),
        ));
    }
    let mut request = connect_request(export, sockets, options)?;
    request.backend = None;
    request.client_flags = ClientFlags::default();
    let connection = connect_ioctl(&request)?;
    // On failure, dropping the connection disconnects the device.
    finish(connection.index(), export, request.size_bytes, options)?;
    Ok(connection)
}

fn finish(index: u32, export: &Connected, size_bytes: u64, options: &ConfigureOptions) -> Result<()> {
    sysfs::wait_until_ready(index, size_bytes, options.ready_timeout)?;
    if let Some(maximum) = export.block_size.map(|b| u64::from(b.maximum)) {
        // Not fatal: most requests are far below any maximum a server sets.
        if let Err(err) = sysfs::limit_request_size(index, maximum) {
            tracing::warn!(index, maximum, %err, "cannot limit the request size of the device");
        }
    }
    Ok(())
}

/// Whether the nbd driver is loaded (as a module or built in).
pub fn driver_loaded() -> bool {
    Path::new("/sys/module/nbd").exists()
}

/// The kernel interface chosen by an [`Interface`], ready for use.
#[derive(Debug)]
pub enum Driver {
    /// The generic netlink family.
    Netlink(NbdNetlink),
    /// The ioctls.
    Ioctl,
}

impl Driver {
    /// Resolves `interface`; fails with [`Error::ModuleNotLoaded`] when the
    /// driver is missing.
    pub fn open(interface: Interface) -> Result<Self> {
        match interface {
            Interface::Ioctl if driver_loaded() => Ok(Self::Ioctl),
            Interface::Ioctl => Err(Error::ModuleNotLoaded),
            Interface::Netlink => NbdNetlink::open().map(Self::Netlink),
            Interface::Auto => match NbdNetlink::open() {
                Err(Error::ModuleNotLoaded) if driver_loaded() => Ok(Self::Ioctl),
                other => other.map(Self::Netlink),
            },
        }
    }

    /// [`configure_with`] or [`configure_ioctl`].
    pub fn configure(
        &self,
        export: &Connected,
        sockets: &[BorrowedFd<'_>],
        options: &ConfigureOptions,
    ) -> Result<Attachment> {
        match self {
            Self::Netlink(netlink) => configure_with(netlink, export, sockets, options).map(Attachment::Netlink),
            Self::Ioctl => configure_ioctl(export, sockets, options).map(Attachment::Ioctl),
        }
    }

    /// Disconnects `attachment` and waits (at most `grace`) until the
    /// kernel has let the device go.
    pub fn disconnect(&self, attachment: Attachment, grace: Duration) -> Result<()> {
        let index = attachment.index();
        match (self, attachment) {
            (Self::Netlink(netlink), Attachment::Netlink(index)) => netlink.disconnect(index)?,
            (_, Attachment::Ioctl(connection)) => connection.disconnect(grace)?,
            (Self::Ioctl, Attachment::Netlink(index)) => crate::ioctl::disconnect_ioctl(index)?,
        }
        sysfs::wait_until_stopped(index, grace)
    }
}

/// A device configured by [`Driver::configure`].
#[derive(Debug)]
pub enum Attachment {
    /// Through netlink: the kernel keeps it until DISCONNECT.
    Netlink(u32),
    /// Through ioctls: kept while the connection lives.
    Ioctl(IoctlConnection),
}

impl Attachment {
    /// The device index.
    pub fn index(&self) -> u32 {
        match self {
            Self::Netlink(index) => *index,
            Self::Ioctl(connection) => connection.index(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdx::proto::{BlockSize, ReplyMode};
    use std::os::fd::AsFd;

    fn export(size: u64, block_size: Option<BlockSize>, flags: TransmissionFlags) -> Connected {
        Connected {
            export_name: String::new(),
            canonical_name: None,
            description: None,
            size,
            flags,
            block_size,
            mode: ReplyMode::Simple,
            meta_contexts: Vec::new(),
            tls: false,
        }
    }

    fn sizes(minimum: u32) -> Option<BlockSize> {
        Some(BlockSize { minimum, preferred: minimum.max(4096), maximum: 32 << 20 })
    }

    #[test]
    fn block_size_is_the_minimum_but_at_least_512() {
        let flags = TransmissionFlags::HAS_FLAGS;
        assert_eq!(kernel_block_size(&export(1 << 20, None, flags)).unwrap(), 512);
        assert_eq!(kernel_block_size(&export(1 << 20, sizes(1), flags)).unwrap(), 512);
        assert_eq!(kernel_block_size(&export(1 << 20, sizes(1024), flags)).unwrap(), 1024);
        assert_eq!(kernel_block_size(&export(1 << 20, sizes(4096), flags)).unwrap(), 4096);
    }

    #[test]
    fn a_minimum_block_size_above_the_page_size_is_refused() {
        let err = kernel_block_size(&export(1 << 20, sizes(1 << 16), TransmissionFlags::HAS_FLAGS)).unwrap_err();
        assert!(err.to_string().contains("exceeds the page size"), "{err}");
    }

    #[test]
    fn the_request_rounds_the_size_down_to_blocks_and_adds_read_only() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
        let options = ConfigureOptions {
            read_only: true,
            backend: Some("nbd://h/e".into()),
            timeout: Some(Duration::from_secs(5)),
            ..ConfigureOptions::default()
        };
        let request = connect_request(&export(10_000, sizes(4096), flags), &[a.as_fd()], &options).unwrap();
        assert_eq!(request.size_bytes, 8192);
        assert_eq!(request.block_size, Some(4096));
        assert_eq!(request.server_flags, flags | TransmissionFlags::READ_ONLY);
        assert_eq!(request.backend.as_deref(), Some("nbd://h/e"));
        assert_eq!(request.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_smaller_size_is_honoured_and_a_larger_one_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let exp = export(1 << 20, None, TransmissionFlags::HAS_FLAGS);
        let mut options = ConfigureOptions { size: Some(4096), ..ConfigureOptions::default() };
        assert_eq!(connect_request(&exp, &[a.as_fd()], &options).unwrap().size_bytes, 4096);
        options.size = Some(2 << 20);
        assert!(connect_request(&exp, &[a.as_fd()], &options).is_err());
        options.size = Some(100);
        let err = connect_request(&exp, &[a.as_fd()], &options).unwrap_err();
        assert!(err.to_string().contains("smaller than one block"), "{err}");
    }

    #[test]
    fn ioctls_cannot_promise_reconnects() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let exp = export(1 << 20, None, TransmissionFlags::HAS_FLAGS);
        let options = ConfigureOptions { dead_conn_timeout: Some(Duration::from_secs(9)), ..Default::default() };
        let err = configure_ioctl(&exp, &[a.as_fd()], &options).unwrap_err();
        assert!(err.to_string().contains("netlink"), "{err}");
    }
}
