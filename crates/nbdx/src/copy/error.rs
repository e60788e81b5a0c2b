//! [`CopyError`]: why a copy failed, as one line that names the side at
//! fault.

use crate::client::ClientError;

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
