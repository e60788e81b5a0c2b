//! Device errors: an NBD errno (the only thing that reaches the wire) and a
//! message for logs and structured-reply error chunks.

use std::fmt;
use std::io;

use nbdx_proto::Errno;

/// Result of a device operation.
pub type DeviceResult<T> = Result<T, DeviceError>;

/// A failed device operation. Converting from [`io::Error`] maps the OS
/// error to the NBD set with [`Errno::from_os_error`]; anything else becomes
/// `NBD_EIO`. A raw OS errno is never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    errno: Errno,
    message: String,
}

impl DeviceError {
    /// An error with an explicit errno and message.
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        Self { errno: errno.normalize_for_wire(), message: message.into() }
    }

    /// `NBD_ENOTSUP`: the operation is not supported.
    pub fn unsupported() -> Self {
        Self::new(Errno::ENOTSUP, "operation not supported")
    }

    /// `NBD_EIO` with a message.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(Errno::EIO, message)
    }

    /// `NBD_EPERM`: the device is read-only.
    pub fn read_only() -> Self {
        Self::new(Errno::EPERM, "device is read-only")
    }

    /// `NBD_EINVAL` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Errno::EINVAL, message)
    }

    /// The NBD error value for the wire.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Only the NBD-defined values may go on the wire.
trait WireErrno {
    fn normalize_for_wire(self) -> Errno;
}

impl WireErrno for Errno {
    fn normalize_for_wire(self) -> Errno {
        if self.is_known() {
            self
        } else {
            Errno::EIO
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.errno.description())
        } else {
            write!(f, "{}: {}", self.errno.description(), self.message)
        }
    }
}

impl std::error::Error for DeviceError {}

impl From<io::Error> for DeviceError {
    fn from(e: io::Error) -> Self {
        let errno = match e.raw_os_error() {
            Some(code) => Errno::from_os_error(code),
            None => match e.kind() {
                io::ErrorKind::PermissionDenied => Errno::EPERM,
                io::ErrorKind::InvalidInput => Errno::EINVAL,
                io::ErrorKind::Unsupported => Errno::ENOTSUP,
                io::ErrorKind::OutOfMemory => Errno::ENOMEM,
                _ => Errno::EIO,
            },
        };
        Self::new(errno, e.to_string())
    }
}

impl From<Errno> for DeviceError {
    fn from(errno: Errno) -> Self {
        Self::new(errno, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_the_nbd_set_and_unknown_ones_to_eio() {
        let e: DeviceError = io::Error::from_raw_os_error(libc::EDQUOT).into();
        assert_eq!(e.errno(), Errno::ENOSPC);
        let e: DeviceError = io::Error::from_raw_os_error(libc::ENOENT).into();
        assert_eq!(e.errno(), Errno::EIO);
        let e: DeviceError = io::Error::from_raw_os_error(libc::EROFS).into();
        assert_eq!(e.errno(), Errno::EPERM);
    }

    #[test]
    fn an_errno_outside_the_nbd_set_never_reaches_the_wire() {
        assert_eq!(DeviceError::new(Errno(2), "x").errno(), Errno::EIO);
    }
}
