//! One error type for the kernel hook-up, with messages a user can act on.
//!
//! Kernel replies arrive as bare errnos; [`Error::from_errno`] turns them into
//! the cases a caller handles differently (busy, no device, no permission)
//! and keeps the errno and the operation for everything else.

use std::io;
use std::time::Duration;

use crate::nla::DecodeError;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while talking to the NBD driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The generic netlink family `nbd` is not registered.
    #[error("nbd module not loaded (no generic netlink family \"nbd\"); run `modprobe nbd`")]
    ModuleNotLoaded,
    /// EPERM or EACCES from the kernel.
    #[error("{operation}: permission denied; run as root (needs CAP_SYS_ADMIN)")]
    PermissionDenied {
        /// Kernel name of the command or ioctl, or the file that was opened.
        operation: String,
    },
    /// EBUSY: the device is connected or being set up by someone else.
    #[error("{operation}: /dev/nbd{index} is busy (already connected or being set up)")]
    DeviceBusy {
        /// Kernel name of the command or ioctl.
        operation: String,
        /// The device.
        index: u32,
    },
    /// No device with this index exists.
    #[error("{operation}: no such device /dev/nbd{index}")]
    NoSuchDevice {
        /// Kernel name of the command or ioctl, or the file that was opened.
        operation: String,
        /// The device.
        index: u32,
    },
    /// The device exists but has no configuration (nothing to reconfigure).
    #[error("{operation}: /dev/nbd{index} is not connected")]
    NotConnected {
        /// Kernel name of the command.
        operation: String,
        /// The device.
        index: u32,
    },
    /// The request was refused before or by the kernel as invalid.
    #[error("{operation}: invalid request: {reason}")]
    InvalidRequest {
        /// Kernel name of the command or ioctl.
        operation: String,
        /// What is wrong, or what the kernel checks that can fail here.
        reason: String,
    },
    /// Any other errno from the kernel.
    #[error("{operation} failed: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// Kernel name of the command or ioctl.
        operation: String,
        /// The (positive) errno.
        errno: i32,
    },
    /// A device name that is not `/dev/nbdN` or `nbdN`.
    #[error("not an nbd device name: {0:?} (expected /dev/nbdN)")]
    InvalidDeviceName(String),
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A reply from the kernel that does not parse.
    #[error("malformed netlink message from the kernel: {0}")]
    Malformed(#[from] DecodeError),
    /// The netlink transport failed other than with an errno.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Connecting to or negotiating with the NBD server failed.
    #[error(transparent)]
    Client(#[from] nbdx::client::ClientError),
    /// What the export asks for cannot be given to the kernel.
    #[error("{0}")]
    Unsupported(String),
    /// I/O on a socket, device node or sysfs file.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Maps a positive errno of `operation` on device `index` (when known).
    pub fn from_errno(operation: &str, index: Option<u32>, errno: i32) -> Self {
        let operation = operation.to_owned();
        match (errno, index) {
            (libc_errno::EPERM | libc_errno::EACCES, _) => Error::PermissionDenied { operation },
            (libc_errno::EBUSY, Some(index)) => Error::DeviceBusy { operation, index },
            (libc_errno::ENOENT | libc_errno::ENXIO | libc_errno::ENODEV, Some(index)) => {
                Error::NoSuchDevice { operation, index }
            }
            _ => Error::Kernel { operation, errno },
        }
    }

    /// The errno behind this error, when it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { .. } => Some(libc_errno::EPERM),
            Error::DeviceBusy { .. } => Some(libc_errno::EBUSY),
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Maps an OS error of `operation` on `/dev/nbdN`.
    pub(crate) fn from_io(operation: &str, index: u32, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => Error::from_errno(&format!("{operation} /dev/nbd{index}"), Some(index), errno),
            None => Error::Io(err),
        }
    }

    pub(crate) fn invalid(operation: &str, reason: impl Into<String>) -> Self {
        Error::InvalidRequest { operation: operation.to_owned(), reason: reason.into() }
    }
}

/// The errno values this module names. They are the same on every Linux
/// architecture (`include/uapi/asm-generic/errno-base.h`); spelled out so the
/// error type also exists where `libc` is not a dependency.
pub(crate) mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ENXIO: i32 = 6;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_tell_the_user_to_run_as_root() {
        let err = Error::from_errno("NBD_CMD_CONNECT", Some(0), 1);
        assert!(matches!(err, Error::PermissionDenied { .. }));
        assert_eq!(err.to_string(), "NBD_CMD_CONNECT: permission denied; run as root (needs CAP_SYS_ADMIN)");
        assert!(matches!(Error::from_errno("NBD_SET_SOCK", None, 13), Error::PermissionDenied { .. }));
    }

    #[test]
    fn ebusy_on_an_index_is_device_busy() {
        let err = Error::from_errno("NBD_CMD_CONNECT", Some(4), 16);
        assert_eq!(err.to_string(), "NBD_CMD_CONNECT: /dev/nbd4 is busy (already connected or being set up)");
        assert_eq!(err.errno(), Some(16));
    }

    #[test]
    fn enoent_on_an_index_is_no_such_device() {
        let err = Error::from_errno("open /dev/nbd9", Some(9), 2);
        assert_eq!(err.to_string(), "open /dev/nbd9: no such device /dev/nbd9");
    }

    #[test]
    fn other_errnos_keep_the_operation_and_the_system_message() {
        let err = Error::from_errno("NBD_CMD_STATUS", None, 12);
        assert!(matches!(err, Error::Kernel { errno: 12, .. }));
        assert!(err.to_string().starts_with("NBD_CMD_STATUS failed: "), "{err}");
    }

    #[test]
    fn module_not_loaded_says_how_to_load_it() {
        assert!(Error::ModuleNotLoaded.to_string().contains("modprobe nbd"));
    }
}
