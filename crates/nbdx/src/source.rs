//! SOURCE: the device a CLI subcommand serves, written the same way
//! everywhere.
//!
//! | text | device |
//! |---|---|
//! | `memory:SIZE` | [`MemoryDevice`]: sparse RAM disk |
//! | `null:SIZE` | [`NullDevice`]: reads zeroes, discards writes |
//! | `file:PATH` | [`FileDevice`]: regular file or block device |
//! | `PATH` | the same as `file:PATH` |
//! | `s3://BUCKET/PREFIX?…` | [`S3Device`](crate::device::s3::S3Device) (feature `s3`): see [`S3Config`](crate::device::s3::S3Config) |
//!
//! The default is [`DEFAULT_SOURCE`], `memory:1G`. SIZE is parsed by
//! [`parse_size`]. Prefixes are lowercase; any other `scheme://...` is
//! refused rather than taken for a path, so that new kinds of source can be
//! added later. To serve a file named like a source, write `file:memory:1G`
//! or `./memory:1G`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::device::{Device, FileDevice, MemoryDevice, NullDevice};

/// The source used when none is given.
pub const DEFAULT_SOURCE: &str = "memory:1G";

/// Units of [`parse_size`], largest first: IEC, 1K = 1024.
const UNITS: [(char, u32); 5] = [('P', 50), ('T', 40), ('G', 30), ('M', 20), ('K', 10)];

/// A parsed SOURCE. [`Display`](fmt::Display) gives its canonical text,
/// which parses back to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// `memory:SIZE`: a [`MemoryDevice`] of `size` bytes.
    Memory {
        /// Size in bytes.
        size: u64,
    },
    /// `null:SIZE`: a [`NullDevice`] of `size` bytes.
    Null {
        /// Size in bytes.
        size: u64,
    },
    /// `file:PATH` or `PATH`: a [`FileDevice`].
    File {
        /// The regular file or block device.
        path: PathBuf,
    },
    /// `s3://BUCKET/PREFIX?…`: a disk in an S3-compatible object store.
    #[cfg(feature = "s3")]
    S3(Box<crate::device::s3::S3Config>),
}

/// Why a SOURCE could not be parsed or opened. Each message is one line
/// that names the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The text is empty.
    #[error("empty source: expected memory:SIZE, null:SIZE, file:PATH or PATH")]
    Empty,
    /// The SIZE of `memory:` or `null:` is invalid.
    #[error("{text}: {error}")]
    Size {
        /// The source as given.
        text: String,
        /// What is wrong with the size.
        error: SizeError,
    },
    /// `file:` without a path.
    #[error("{text}: missing path after `file:`")]
    MissingPath {
        /// The source as given.
        text: String,
    },
    /// A `scheme://` that nbdx does not know.
    #[error("{text}: unknown source type `{scheme}://` (expected memory:SIZE, null:SIZE, file:PATH or PATH)")]
    UnknownScheme {
        /// The source as given.
        text: String,
        /// The scheme before `://`.
        scheme: String,
    },
    /// An `s3://` source is malformed or could not be opened.
    #[cfg(feature = "s3")]
    #[error("{0}")]
    S3(#[from] crate::device::s3::S3Error),
    /// The device could not be opened.
    #[error("{source_text}: {}", describe(.error))]
    Open {
        /// The source, in canonical form.
        source_text: String,
        /// The OS error (already part of the message, so not a `source()`).
        error: io::Error,
    },
}

/// Why a SIZE is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size: expected bytes, or a number with a K, M, G, T or P suffix")]
    Empty,
    /// A minus sign.
    #[error("size `{0}` is negative")]
    Negative(String),
    /// Not a whole number of bytes followed by letters.
    #[error("invalid size `{0}`: expected bytes, or a whole number with a K, M, G, T or P suffix")]
    Invalid(String),
    /// Letters that are not a unit.
    #[error(
        "invalid size `{text}`: unknown unit `{unit}` (expected B, K, M, G, T or P, optionally followed by B or iB)"
    )]
    UnknownUnit {
        /// The size as given.
        text: String,
        /// The letters after the number.
        unit: String,
    },
    /// More than 2^63 - 1 bytes, the largest offset a file can have.
    #[error("size `{0}` is too large: at most 2^63 - 1 bytes")]
    TooLarge(String),
}

/// Parses a size: a whole number of bytes, optionally followed by `B` or by
/// one of `K`, `M`, `G`, `T`, `P` (any case; powers of 1024) and then an
/// optional `B` or `iB`: `512`, `64M`, `1GiB`, `2tb`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    if text.starts_with('-') {
        return Err(SizeError::Negative(text.to_owned()));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(SizeError::Invalid(text.to_owned()));
    }
    let shift =
        unit_shift(unit).ok_or_else(|| SizeError::UnknownUnit { text: text.to_owned(), unit: unit.to_owned() })?;
    let too_large = || SizeError::TooLarge(text.to_owned());
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    let bytes = number.checked_mul(1 << shift).ok_or_else(too_large)?;
    if bytes > i64::MAX as u64 {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The power of two a unit stands for: `""`/`B` → 0, `K`/`KB`/`KiB` → 10...
fn unit_shift(unit: &str) -> Option<u32> {
    let unit = unit.to_ascii_uppercase();
    if unit.is_empty() || unit == "B" {
        return Some(0);
    }
    let mut chars = unit.chars();
    let letter = chars.next()?;
    let (_, shift) = UNITS.iter().find(|(u, _)| *u == letter)?;
    matches!(chars.as_str(), "" | "B" | "IB").then_some(*shift)
}

/// Formats a size in the largest unit that divides it: `1G`, `1536M`, `512`.
pub fn format_size(bytes: u64) -> String {
    match UNITS.iter().find(|(_, shift)| bytes != 0 && bytes % (1 << shift) == 0) {
        Some((unit, shift)) => format!("{}{unit}", bytes >> shift),
        None => bytes.to_string(),
    }
}

/// `describe` for [`io::Error`]: the OS message without "(os error N)".
fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_owned(),
        None => text,
    }
}

/// Whether `s` is a URI scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl Source {
    /// Parses SOURCE text; see the [module docs](self).
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let size = |rest: &str| parse_size(rest).map_err(|error| SourceError::Size { text: text.to_owned(), error });
        if text.is_empty() {
            Err(SourceError::Empty)
        } else if let Some(rest) = text.strip_prefix("memory:") {
            Ok(Self::Memory { size: size(rest)? })
        } else if let Some(rest) = text.strip_prefix("null:") {
            Ok(Self::Null { size: size(rest)? })
        } else if let Some(path) = text.strip_prefix("file:") {
            match path.is_empty() {
                true => Err(SourceError::MissingPath { text: text.to_owned() }),
                false => Ok(Self::File { path: path.into() }),
            }
        } else if cfg!(feature = "s3") && text.starts_with("s3://") {
            Self::parse_s3(text)
        } else if let Some((scheme, _)) = text.split_once("://").filter(|(scheme, _)| is_scheme(scheme)) {
            Err(SourceError::UnknownScheme { text: text.to_owned(), scheme: scheme.to_owned() })
        } else {
            Ok(Self::File { path: text.into() })
        }
    }

    #[cfg(feature = "s3")]
    fn parse_s3(text: &str) -> Result<Self, SourceError> {
        let config = crate::device::s3::S3Config::parse(text).map_err(crate::device::s3::S3Error::from)?;
        Ok(Self::S3(Box::new(config)))
    }

    #[cfg(not(feature = "s3"))]
    fn parse_s3(_: &str) -> Result<Self, SourceError> {
        unreachable!("s3:// is only recognised with the s3 feature")
    }

    /// Opens the device, refusing writes if `read_only`.
    ///
    /// An `s3://` source must be opened on a multi-threaded tokio runtime (its background
    /// tasks run there): from async code prefer [`Source::open_async`]; this blocks the
    /// worker thread meanwhile, and outside a runtime it fails with a clear error.
    pub fn open(&self, read_only: bool) -> Result<Arc<dyn Device>, SourceError> {
        Ok(match self {
            Self::Memory { size } => Arc::new(MemoryDevice::new(*size).with_read_only(read_only)),
            Self::Null { size } => Arc::new(NullDevice::new(*size).with_read_only(read_only)),
            Self::File { path } => Arc::new(
                FileDevice::open(path, read_only)
                    .map_err(|error| SourceError::Open { source_text: self.to_string(), error })?,
            ),
            #[cfg(feature = "s3")]
            Self::S3(config) => {
                use tokio::runtime::{Handle, RuntimeFlavor};
                let in_runtime =
                    Handle::try_current().ok().filter(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
                let Some(handle) = in_runtime else {
                    return Err(SourceError::Open {
                        source_text: config.display_name(),
                        error: io::Error::other("s3:// sources are opened on a multi-threaded tokio runtime"),
                    });
                };
                tokio::task::block_in_place(|| handle.block_on(Self::open_s3(config, read_only)))?
            }
        })
    }

    /// Opens the device, refusing writes if `read_only`; the way to open from async code.
    pub async fn open_async(&self, read_only: bool) -> Result<Arc<dyn Device>, SourceError> {
        match self {
            #[cfg(feature = "s3")]
            Self::S3(config) => Self::open_s3(config, read_only).await,
            _ => self.open(read_only),
        }
    }

    /// `read_only` opens without the lease (see [`crate::device::s3`]).
    #[cfg(feature = "s3")]
    async fn open_s3(config: &crate::device::s3::S3Config, read_only: bool) -> Result<Arc<dyn Device>, SourceError> {
        let mut config = config.clone();
        config.read_only |= read_only;
        Ok(Arc::new(crate::device::s3::S3Device::open(config).await?))
    }
}

impl Default for Source {
    /// [`DEFAULT_SOURCE`]: a 1 GiB RAM disk.
    fn default() -> Self {
        Self::Memory { size: 1 << 30 }
    }
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(text: &str) -> Result<Self, SourceError> {
        Self::parse(text)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory { size } => write!(f, "memory:{}", format_size(*size)),
            Self::Null { size } => write!(f, "null:{}", format_size(*size)),
            Self::File { path } => write!(f, "file:{}", path.display()),
            #[cfg(feature = "s3")]
            Self::S3(config) => write!(f, "{config}"),
        }
    }
}

#[cfg(test)]
mod tests;
