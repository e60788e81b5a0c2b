//! [`S3Error`]: why an S3 disk could not be opened. Each variant is one clear line; I/O on an
//! open disk fails per request with `NBD_EIO` instead (see [`crate::device::DeviceError`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::ConfigError;
use super::store::one_line;

/// Why opening an `s3://` disk failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// The source string is malformed or carries credentials.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Credentials are missing, or the store refused them.
    #[error("{0}")]
    Credentials(String),
    /// The bucket does not exist.
    #[error("{0}")]
    NoSuchBucket(String),
    /// The endpoint could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// There is no disk at the prefix and nothing to create one with (no `size=`, or read-only).
    #[error("{0}")]
    NoDisk(String),
    /// The manifest disagrees with the parameters, or is not an nbdx manifest.
    #[error("{0}")]
    Manifest(String),
    /// Another read-write server holds the disk's lease.
    #[error("{0}")]
    Leased(String),
    /// Any other store failure.
    #[error("{0}")]
    Store(String),
}

impl S3Error {
    /// Classifies a failed first request to the bucket.
    pub(crate) fn from_probe(error: &object_store::Error, what: &str, endpoint: &str) -> Self {
        let detail = one_line(error);
        let lower = detail.to_ascii_lowercase();
        match error {
            object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
                Self::Credentials(format!("{what}: the store at {endpoint} refused the credentials ({detail})"))
            }
            object_store::Error::NotFound { .. } => {
                Self::NoSuchBucket(format!("{what}: the bucket does not exist at {endpoint} ({detail})"))
            }
            _ if lower.contains("nosuchbucket") => {
                Self::NoSuchBucket(format!("{what}: the bucket does not exist at {endpoint} ({detail})"))
            }
            _ if ["invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden"]
                .iter()
                .any(|m| lower.contains(m)) =>
            {
                Self::Credentials(format!("{what}: the store at {endpoint} refused the credentials ({detail})"))
            }
            _ if ["error sending request", "connect", "dns error", "timed out", "connection refused"]
                .iter()
                .any(|m| lower.contains(m)) =>
            {
                Self::Unreachable(format!("{what}: cannot reach the S3 endpoint {endpoint} ({detail})"))
            }
            _ => Self::Store(format!("{what}: {detail}")),
        }
    }
}

/// Milliseconds since the Unix epoch (lease expiry times are wall-clock).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// `2026-11-25 16:15:30 UTC` for a time in Unix milliseconds.
pub(crate) fn format_utc(millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_623_330_000), "2026-11-25 16:15:30 UTC");
    }
}
