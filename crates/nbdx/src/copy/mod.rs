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
//! use std::sync::Arc;
//! use nbdx::copy::{copy, CopyOptions, Endpoint, Progress};
//! let src = Endpoint::parse("nbd://localhost/disk")?;
//! let dst = Endpoint::parse("disk.img")?;
//! let report = copy(&src, &dst, &CopyOptions::default(), Arc::new(Progress::default())).await?;
//! println!("{} bytes, {} written as data", report.bytes, report.data);
//! # Ok(()) }
//! ```

mod ends;
mod engine;
mod file;
mod nbd;
mod open;
mod plan;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use open::copy;

use crate::client::{ClientError, ClientOptions};
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

/// A failed copy. Every message is one line, fit for a terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source or destination text cannot be used (bad URI, `null:` as
    /// a source, the same file on both sides).
    #[error("{0}")]
    Invalid(String),
    /// Opening or reading the source failed.
    #[error("source {name}: {message}")]
    Source {
        /// The source as the user wrote it.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Opening, writing or flushing the destination failed.
    #[error("destination {name}: {message}")]
    Destination {
        /// The destination as the user wrote it.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The destination cannot hold the source. Found before any byte is
    /// written, except for a source streamed from standard input, whose
    /// size is known only at its end.
    #[error("destination {name} is smaller than the source ({destination_size} < {source_size} bytes)")]
    TooSmall {
        /// The destination as the user wrote it.
        name: String,
        /// Source size in bytes (for a stream: the bytes received so far).
        source_size: u64,
        /// Destination size in bytes.
        destination_size: u64,
    },
}

/// An error of one end, before it is given the names of the ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndError {
    Source(String),
    Destination(String),
    TooSmall { source: u64, destination: u64 },
}

impl EndError {
    pub fn source(message: impl ToString) -> Self {
        Self::Source(message.to_string())
    }

    pub fn destination(message: impl ToString) -> Self {
        Self::Destination(message.to_string())
    }

    pub fn too_small(source: u64, destination: u64) -> Self {
        Self::TooSmall { source, destination }
    }

    /// The error with the names of both ends.
    pub fn named(self, src: &str, dst: &str) -> CopyError {
        match self {
            Self::Source(message) => CopyError::Source { name: src.to_owned(), message },
            Self::Destination(message) => CopyError::Destination { name: dst.to_owned(), message },
            Self::TooSmall { source, destination } => {
                CopyError::TooSmall { name: dst.to_owned(), source_size: source, destination_size: destination }
            }
        }
    }
}

/// Results inside the engine.
pub(crate) type EndResult<T> = Result<T, EndError>;

/// An I/O error without the "(os error N)" suffix.
pub(crate) fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_owned(),
        None => text,
    }
}

pub(crate) fn src_client(e: ClientError) -> EndError {
    EndError::source(e)
}

pub(crate) fn dst_client(e: ClientError) -> EndError {
    EndError::destination(e)
}
