//! Layers: wrapper [`Device`]s stacked on any export, like nbdkit filters.
//!
//! Each layer owns an inner `Arc<dyn Device>`, changes what it is about and
//! passes everything else through, adjusting [`Caps`](crate::device::Caps)
//! honestly (a copy-on-write layer makes a read-only base writable; the
//! others advertise what their inner device does).
//!
//! | layer | CLI spelling | what it does |
//! |---|---|---|
//! | [`CowLayer`] | `cow`, `cow=FILE` | writes go to a sparse overlay (RAM, or a file that survives restarts); the base is never written |
//! | [`DelayLayer`] | `delay=READ_MS[:WRITE_MS]` | adds latency to reads, and to writes, trims and zeroes |
//! | [`ErrorLayer`] | `error=RATE[:ERRNO[:SEED]]` | fails a seeded, reproducible fraction of requests |
//! | [`LogLayer`] | `log=FILE` | one line per request and one per completion, nbdkit log filter style |
//! | [`ReadaheadLayer`] | `readahead` | detects sequential reads and prefetches a growing window |
//!
//! # Order
//!
//! Layers apply **in the order given, the first one closest to the
//! device**: `--layer cow --layer log=FILE` logs the requests as the client
//! sent them, while `--layer log=FILE --layer cow` logs only what reaches
//! the base (reads of blocks not in the overlay). This is the reverse of
//! nbdkit, whose first `--filter` is closest to the client; it matches
//! building the stack from the library, where each layer wraps the result
//! of the previous one:
//!
//! ```no_run
//! use std::sync::Arc;
//! use nbdx::device::Device;
//! use nbdx::layer::{apply_layers, LayerError, LayerSpec};
//!
//! fn stack(base: Arc<dyn Device>) -> Result<Arc<dyn Device>, LayerError> {
//!     let specs = ["cow", "delay=5:20", "log=/tmp/requests.log"]
//!         .iter()
//!         .map(|s| s.parse::<LayerSpec>())
//!         .collect::<Result<Vec<_>, _>>()?;
//!     // log(delay(cow(base))): the log sees every request with its delay.
//!     apply_layers(base, &specs)
//! }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::device::Device;

mod cow;
mod delay;
mod error;
mod log;
mod readahead;
mod spec;

pub use cow::CowLayer;
pub use delay::DelayLayer;
pub use error::ErrorLayer;
pub use log::LogLayer;
pub use readahead::ReadaheadLayer;
pub use spec::LayerSpec;

/// A layer could not be parsed or set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A `--layer` argument is malformed; the message says what was expected.
    #[error("invalid layer {spec:?}: {message}")]
    Parse {
        /// The argument as given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file a layer needs could not be opened, read or written.
    #[error("{layer} layer: {}: {source}", path.display())]
    Io {
        /// The layer's name (`cow`, `log`).
        layer: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A copy-on-write overlay file exists but cannot be used with this base
    /// (not an overlay, damaged, or made for a device of another size).
    #[error("cow overlay {}: {message}", path.display())]
    Overlay {
        /// The overlay file.
        path: PathBuf,
        /// Why it was refused.
        message: String,
    },
    /// The device cannot be wrapped (for example, too large for an
    /// in-memory overlay map).
    #[error("{layer} layer: {message}")]
    Unsupported {
        /// The layer's name.
        layer: &'static str,
        /// Why.
        message: String,
    },
}

/// Wraps `device` in each layer of `specs`, in order: the first spec ends up
/// closest to the device, the last one closest to the client (see the
/// [module docs](self)). This is what the CLI does with its `--layer`
/// arguments.
pub fn apply_layers(device: Arc<dyn Device>, specs: &[LayerSpec]) -> Result<Arc<dyn Device>, LayerError> {
    specs.iter().try_fold(device, |device, spec| spec.apply(device))
}

/// Locks a std mutex, ignoring poisoning: every critical section in the
/// layers leaves its data consistent before anything can panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
