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

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nbdx_proto::Errno;

use crate::device::Device;

mod cow;
mod delay;
mod error;
mod log;
mod readahead;

pub use cow::CowLayer;
pub use delay::DelayLayer;
pub use error::ErrorLayer;
pub use log::LogLayer;
pub use readahead::ReadaheadLayer;

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

/// One layer as named on the command line. Parse with [`str::parse`];
/// [`Display`](fmt::Display) prints the canonical spelling back.
///
/// | spelling | layer |
/// |---|---|
/// | `cow` | [`CowLayer::new`]: overlay in memory |
/// | `cow=FILE` | [`CowLayer::with_overlay_file`]: overlay kept in `FILE` (created if missing or empty, reopened otherwise) |
/// | `delay=READ_MS[:WRITE_MS]` | [`DelayLayer::new`]; `WRITE_MS` defaults to `READ_MS` |
/// | `error=RATE[:ERRNO[:SEED]]` | [`ErrorLayer::new`]; `RATE` in `0..=1`, `ERRNO` one of the NBD errors by name (`EIO`, `ENOSPC`, `EPERM`, `EINVAL`, `ENOMEM`, `ENOTSUP`, `EOVERFLOW`, `ESHUTDOWN`, any case, `NBD_` prefix optional; default `EIO`), `SEED` a `u64` (default [`ErrorLayer::DEFAULT_SEED`]) |
/// | `log=FILE` | [`LogLayer::new`]; `FILE` is truncated |
/// | `readahead` | [`ReadaheadLayer::new`] |
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// Copy-on-write; the overlay lives in memory unless a file is given.
    Cow {
        /// Where the overlay is kept across restarts.
        overlay: Option<PathBuf>,
    },
    /// Added latency.
    Delay {
        /// Added to reads.
        read: Duration,
        /// Added to writes, trims and zeroes.
        write: Duration,
    },
    /// Injected errors.
    Error {
        /// Fraction of requests that fail, in `0..=1`.
        rate: f64,
        /// The error they fail with.
        errno: Errno,
        /// Seed of the generator that picks them.
        seed: u64,
    },
    /// Request log.
    Log {
        /// The log file.
        path: PathBuf,
    },
    /// Sequential read prefetching.
    Readahead,
}

impl LayerSpec {
    /// Wraps `device` in this layer. Fails only when a file cannot be opened
    /// or an overlay cannot be used.
    pub fn apply(&self, device: Arc<dyn Device>) -> Result<Arc<dyn Device>, LayerError> {
        Ok(match self {
            Self::Cow { overlay: None } => Arc::new(CowLayer::new(device)?),
            Self::Cow { overlay: Some(path) } => Arc::new(CowLayer::with_overlay_file(device, path)?),
            Self::Delay { read, write } => Arc::new(DelayLayer::new(device, *read, *write)),
            Self::Error { rate, errno, seed } => Arc::new(ErrorLayer::new(device, *rate, *errno, *seed)),
            Self::Log { path } => Arc::new(LogLayer::new(device, path)?),
            Self::Readahead => Arc::new(ReadaheadLayer::new(device)),
        })
    }
}

impl FromStr for LayerSpec {
    type Err = LayerError;

    fn from_str(s: &str) -> Result<Self, LayerError> {
        let fail = |message: String| LayerError::Parse { spec: s.to_owned(), message };
        let (name, value) = match s.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (s, None),
        };
        match (name, value) {
            ("cow", None) => Ok(Self::Cow { overlay: None }),
            ("cow", Some("")) => Err(fail("cow=FILE needs a file name (or use plain `cow` for a RAM overlay)".into())),
            ("cow", Some(file)) => Ok(Self::Cow { overlay: Some(file.into()) }),
            ("delay", None | Some("")) => Err(fail("expected delay=READ_MS[:WRITE_MS], e.g. delay=10:50".into())),
            ("delay", Some(v)) => parse_delay(v).map_err(fail),
            ("error", None | Some("")) => Err(fail("expected error=RATE[:ERRNO[:SEED]], e.g. error=0.1:EIO".into())),
            ("error", Some(v)) => parse_error(v).map_err(fail),
            ("log", None | Some("")) => Err(fail("expected log=FILE".into())),
            ("log", Some(file)) => Ok(Self::Log { path: file.into() }),
            ("readahead", None) => Ok(Self::Readahead),
            ("readahead", Some(_)) => Err(fail("readahead takes no value".into())),
            _ => Err(fail(format!("unknown layer {name:?}; known layers: cow, delay, error, log, readahead"))),
        }
    }
}

fn parse_delay(v: &str) -> Result<LayerSpec, String> {
    let ms = |field: &str, what: &str| {
        field.parse::<u64>().map(Duration::from_millis).map_err(|_| {
            format!("{what} must be a whole number of milliseconds, got {field:?} (expected delay=READ_MS[:WRITE_MS])")
        })
    };
    let (read, write) = match v.split_once(':') {
        Some((r, w)) => (ms(r, "READ_MS")?, ms(w, "WRITE_MS")?),
        None => {
            let d = ms(v, "READ_MS")?;
            (d, d)
        }
    };
    Ok(LayerSpec::Delay { read, write })
}

fn parse_error(v: &str) -> Result<LayerSpec, String> {
    let mut fields = v.split(':');
    let rate_field = fields.next().unwrap_or_default();
    let rate = rate_field
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("RATE must be a number from 0 to 1, got {rate_field:?}"))?;
    let errno = match fields.next() {
        None | Some("") => Errno::EIO,
        Some(name) => errno_by_name(name)?,
    };
    let seed = match fields.next() {
        None | Some("") => ErrorLayer::DEFAULT_SEED,
        Some(seed) => seed.parse().map_err(|_| format!("SEED must be an unsigned 64-bit integer, got {seed:?}"))?,
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?}: expected error=RATE[:ERRNO[:SEED]]"));
    }
    Ok(LayerSpec::Error { rate, errno, seed })
}

/// An NBD error by name: `EIO`, `eio` or `NBD_EIO`. Only the values the
/// NBD protocol defines are accepted.
fn errno_by_name(name: &str) -> Result<Errno, String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("NBD_").unwrap_or(&upper);
    Errno::KNOWN.iter().copied().find(|e| e.name().and_then(|n| n.strip_prefix("NBD_")) == Some(bare)).ok_or_else(
        || {
            let known: Vec<&str> = Errno::KNOWN.iter().filter_map(|e| e.name()?.strip_prefix("NBD_")).collect();
            format!("unknown NBD error {name:?}; expected one of {}", known.join(", "))
        },
    )
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cow { overlay: None } => f.write_str("cow"),
            Self::Cow { overlay: Some(path) } => write!(f, "cow={}", path.display()),
            Self::Delay { read, write } => write!(f, "delay={}:{}", read.as_millis(), write.as_millis()),
            Self::Error { rate, errno, seed } => {
                let name = errno.name().and_then(|n| n.strip_prefix("NBD_")).unwrap_or("EIO");
                write!(f, "error={rate}:{name}:{seed}")
            }
            Self::Log { path } => write!(f, "log={}", path.display()),
            Self::Readahead => f.write_str("readahead"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_documented_spelling_parses_to_its_layer() {
        let seed = ErrorLayer::DEFAULT_SEED;
        let table: &[(&str, LayerSpec)] = &[
            ("cow", LayerSpec::Cow { overlay: None }),
            ("cow=/tmp/o.cow", LayerSpec::Cow { overlay: Some("/tmp/o.cow".into()) }),
            ("cow=a=b", LayerSpec::Cow { overlay: Some("a=b".into()) }),
            ("delay=10", LayerSpec::Delay { read: ms(10), write: ms(10) }),
            ("delay=10:50", LayerSpec::Delay { read: ms(10), write: ms(50) }),
            ("delay=0:7", LayerSpec::Delay { read: ms(0), write: ms(7) }),
            ("error=0.25", LayerSpec::Error { rate: 0.25, errno: Errno::EIO, seed }),
            ("error=1:ENOSPC", LayerSpec::Error { rate: 1.0, errno: Errno::ENOSPC, seed }),
            ("error=0:nbd_eperm", LayerSpec::Error { rate: 0.0, errno: Errno::EPERM, seed }),
            ("error=0.5:EShutdown:42", LayerSpec::Error { rate: 0.5, errno: Errno::ESHUTDOWN, seed: 42 }),
            ("error=0.5::42", LayerSpec::Error { rate: 0.5, errno: Errno::EIO, seed: 42 }),
            ("log=requests.log", LayerSpec::Log { path: "requests.log".into() }),
            ("readahead", LayerSpec::Readahead),
        ];
        for (text, expected) in table {
            assert_eq!(&text.parse::<LayerSpec>().unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn malformed_spellings_are_refused_with_a_message_naming_the_problem() {
        let table: &[(&str, &str)] = &[
            ("", "unknown layer"),
            ("cowx", "unknown layer \"cowx\""),
            ("COW", "unknown layer"),
            ("cow=", "needs a file name"),
            ("delay", "delay=READ_MS[:WRITE_MS]"),
            ("delay=", "delay=READ_MS[:WRITE_MS]"),
            ("delay=fast", "READ_MS must be a whole number"),
            ("delay=1.5", "READ_MS must be a whole number"),
            ("delay=-1", "READ_MS must be a whole number"),
            ("delay=10:", "WRITE_MS must be a whole number"),
            ("delay=1:2:3", "WRITE_MS must be a whole number"),
            ("error", "error=RATE[:ERRNO[:SEED]]"),
            ("error=1.5", "RATE must be a number from 0 to 1"),
            ("error=-0.1", "RATE must be a number from 0 to 1"),
            ("error=NaN", "RATE must be a number from 0 to 1"),
            ("error=half", "RATE must be a number from 0 to 1"),
            ("error=0.1:ENOENT", "unknown NBD error \"ENOENT\"; expected one of EPERM, EIO"),
            ("error=0.1:5", "unknown NBD error"),
            ("error=0.1:EIO:x", "SEED must be an unsigned 64-bit integer"),
            ("error=0.1:EIO:1:2", "unexpected \"2\""),
            ("log", "expected log=FILE"),
            ("log=", "expected log=FILE"),
            ("readahead=1", "takes no value"),
        ];
        for (text, needle) in table {
            let err = text.parse::<LayerSpec>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
            assert!(err.contains(&format!("{text:?}")), "{text:?}: {err:?} does not quote the argument");
        }
    }

    #[test]
    fn the_displayed_spelling_parses_back_to_the_same_spec() {
        for text in ["cow", "cow=x.cow", "delay=3:4", "error=0.125:ENOTSUP:9", "log=a.log", "readahead"] {
            let spec: LayerSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<LayerSpec>().unwrap(), spec);
        }
        assert_eq!("delay=7".parse::<LayerSpec>().unwrap().to_string(), "delay=7:7");
    }
}
