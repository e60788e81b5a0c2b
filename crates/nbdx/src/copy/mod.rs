//! Copying disk images between NBD exports, files, block devices and
//! streams: the engine behind `nbdx copy`.
//!
//! ```text
//!  Endpoint::parse: NBD URI │ PATH │ - (stdin/stdout) │ null: (destination only)
//!        │
//!  open: connect (N connections if the export can multi-conn), size check
//!        │ (a destination smaller than the source fails here, before any
//!        │ byte moves), size or truncate a destination file
//!        ▼
//!  random access on both ends (engine.rs):
//!     Planner ◄── allocation map, window by window (block status, SEEK_DATA)
//!        │ Data pieces (≤ request size) and Zero ranges
//!        ▼
//!     connections × requests workers: read ─► all-zero blocks? ─► write │ zero │ skip
//!  a stream on one end (stream.rs): the same, in offset order
//!        ▼
//!  flush the destination, disconnect
//! ```
//!
//! Holes and zero ranges of the source are never sent as data: they are
//! skipped when the destination is known to read as zeroes (`null:`, a
//! regular file that was created, extended or truncated for the copy, or
//! [`CopyOptions::destination_is_zero`]), punched in a file, and sent as
//! `NBD_CMD_WRITE_ZEROES` to an NBD export. Blocks of data that are all
//! zeroes ([`CopyOptions::sparse`]) are treated the same way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nbdx::copy::CopyError> {
//! //! use nbdx::copy::{copy, CopyOptions, Endpoint, Progress};
//! let src = Endpoint::parse("nbd://localhost/disk")?;
//! let dst = Endpoint::parse("disk.img")?;
//! let report = copy(&src, &dst, &CopyOptions::default(), Arc::new(Progress::default())).await?;
//! println!("{} bytes, {} written as data", report.bytes, report.data);
//! # Ok(()) }
//! ```

mod ends;
mod engine;
mod error;
mod file;
mod nbd;
mod open;
mod plan;
mod stream;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use error::CopyError;
pub use open::copy;

use crate::client::ClientOptions;
use crate::uri::NbdUri;

/// Default number of connections per NBD end (used when the export
/// advertises `NBD_FLAG_CAN_MULTI_CONN`; otherwise one).
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Default number of requests in flight per connection.
pub const DEFAULT_REQUESTS: usize = 64;
/// Default size of one read or write request.
pub const DEFAULT_REQUEST_SIZE: usize = 256 << 10;
/// Default block size of zero detection in data.
pub const DEFAULT_SPARSE: usize = 4096;

/// One end of a copy.
#[derive(Debug, Clone)]
#[non_exhaustive]
// Two of these exist per copy: boxing the URI would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Endpoint {
    /// An NBD export, with the options to connect with.
    Nbd {
        /// The URI.
        uri: NbdUri,
        /// Export name, TLS and timeouts.
        options: ClientOptions,
    },
    /// A regular file (created if missing when it is the destination), a
    /// block device, or a pipe or character device (used as a stream).
    File(PathBuf),
    /// `-`: standard input as the source, standard output as the
    /// destination. A regular file there (a shell redirection) is used as
    /// a file, anything else as a stream.
    Stdio,
    /// `null:`: a destination that discards everything.
    Null,
}

impl Endpoint {
    /// Parses `-`, `null:`, an NBD URI (`nbd://`, `nbds://`, `nbd+unix://`,
    /// `nbds+unix://`) or a path. Another `scheme://` is refused rather than
    /// taken for a path.
    pub fn parse(text: &str) -> Result<Self, CopyError> {
        if text == "-" {
            return Ok(Self::Stdio);
        }
        if text == "null:" {
            return Ok(Self::Null);
        }
        if text.is_empty() {
            return Err(CopyError::Invalid("empty source or destination".into()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if is_scheme {
                let uri = NbdUri::parse(text).map_err(|e| CopyError::Invalid(e.to_string()))?;
                let options = ClientOptions::from_uri(&uri);
                return Ok(Self::Nbd { uri, options });
            }
        }
        Ok(Self::File(PathBuf::from(text)))
    }

    /// How messages name this end.
    pub fn name(&self) -> String {
        match self {
            Self::Nbd { uri, .. } => uri.to_string(),
            Self::File(path) => path.display().to_string(),
            Self::Stdio => "-".into(),
            Self::Null => "null:".into(),
        }
    }
}

impl FromStr for Endpoint {
    type Err = CopyError;

    fn from_str(text: &str) -> Result<Self, CopyError> {
        Self::parse(text)
    }
}

/// How to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Connections per NBD end, if the export advertises multi-conn.
    pub connections: usize,
    /// Requests in flight per connection.
    pub requests: usize,
    /// Bytes per read or write request.
    pub request_size: usize,
    /// Blocks of this many bytes that are all zeroes are not written as
    /// data (0: no detection).
    pub sparse: usize,
    /// Whether to ask the source for its allocation map.
    pub extents: bool,
    /// Trust that the destination already reads as zeroes everywhere.
    pub destination_is_zero: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            connections: DEFAULT_CONNECTIONS,
            requests: DEFAULT_REQUESTS,
            request_size: DEFAULT_REQUEST_SIZE,
            sparse: DEFAULT_SPARSE,
            extents: true,
            destination_is_zero: false,
        }
    }
}

/// How far a copy is, readable from another task or thread while it runs.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self { done: AtomicU64::new(0), total: AtomicU64::new(u64::MAX) }
    }
}

impl Progress {
    /// Bytes of the source copied so far (data, zeroes and holes).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Size of the source, once known (never for a stream).
    pub fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&t| t != u64::MAX)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
}

/// What a finished copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyReport {
    /// Bytes copied (the source size, or what the input stream held).
    pub bytes: u64,
    /// Bytes written as data; the rest were zeroed, punched or skipped.
    pub data: u64,
    /// Connections to the source (1 for a file or stream).
    pub source_connections: usize,
    /// Connections to the destination (1 for a file, stream or `null:`).
    pub destination_connections: usize,
    /// Copy tasks that ran at once.
    pub workers: usize,
}
