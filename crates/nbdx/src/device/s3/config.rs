//! `s3://BUCKET/PREFIX?param=value&…`: parsing and validation of the source string.
//!
//! Credentials are never part of it: parameters that look like credentials are refused
//! with an error that says where credentials come from.

use std::fmt;
use std::time::Duration;

/// The default chunk object size: 4 MiB.
pub const DEFAULT_OBJECT_SIZE: u64 = 4 << 20;
/// The default budget of chunk buffers (dirty and cached): 256 MiB.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;
/// Default number of chunk requests in flight to the store.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default number of chunks read ahead of a sequential reader.
pub const DEFAULT_READ_AHEAD: usize = 8;
/// Default lease lifetime without renewal.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a new lease is left to settle before it is read back.
pub const DEFAULT_LEASE_SETTLE: Duration = Duration::from_secs(1);
/// Default bound on retrying one failed store request.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// Parameters that would carry credentials on a command line.
const CREDENTIAL_PARAMS: &[&str] =
    &["access-key", "access-key-id", "secret-key", "secret-access-key", "session-token", "token", "password"];

/// A parsed `s3://` source. Build one with [`S3Config::parse`] or field by field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix of the disk, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint URL (`endpoint=`), e.g. `http://127.0.0.1:3900`; `None` for AWS, or
    /// `AWS_ENDPOINT_URL` from the environment.
    pub endpoint: Option<String>,
    /// Region (`region=`); else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Disk size in bytes (`size=`): required to create a disk, checked against the manifest.
    pub size: Option<u64>,
    /// Chunk object size (`object-size=`), checked against the manifest.
    pub object_size: Option<u64>,
    /// Memory for chunk buffers, dirty and cached (`cache-size=`).
    pub cache_size: u64,
    /// Store requests in flight (`concurrency=`).
    pub concurrency: usize,
    /// Chunks prefetched ahead of a sequential reader (`read-ahead=`, 0 disables).
    pub read_ahead: usize,
    /// Open without taking the lease; writes are refused (`read-only`).
    pub read_only: bool,
    /// Lease lifetime without renewal (`lease-timeout=`, seconds or `500ms`).
    pub lease_timeout: Duration,
    /// Wait before a new lease is read back to confirm it (`lease-settle=`).
    pub lease_settle: Duration,
    /// Bound on retries of one failed request (`retry-timeout=`).
    pub retry_timeout: Duration,
}

/// Why an `s3://` source string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

impl S3Config {
    /// A configuration with defaults for `bucket` and `prefix`.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            size: None,
            object_size: None,
            cache_size: DEFAULT_CACHE_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            read_ahead: DEFAULT_READ_AHEAD,
            read_only: false,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            lease_settle: DEFAULT_LEASE_SETTLE,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }

    /// Parses `s3://BUCKET[/PREFIX][?param=value&…]`.
    pub fn parse(source: &str) -> Result<Self, ConfigError> {
        let rest = source.strip_prefix("s3://").ok_or_else(|| err(format!("not an s3:// source: {source}")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(err("s3:// source without a bucket (s3://BUCKET/PREFIX)"));
        }
        let mut config = Self::new(bucket, percent_decode(prefix)?);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            config.set(key, &percent_decode(value)?)?;
        }
        Ok(config)
    }

    /// Sets one `key=value` parameter.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if CREDENTIAL_PARAMS.contains(&key) || key.starts_with("aws_") || key.contains("secret") {
            return Err(err(format!(
                "'{key}' is refused: S3 credentials are read only from the environment \
                 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or ~/.aws/credentials, \
                 never from a command line"
            )));
        }
        let need = |what: &str| if value.is_empty() { Err(err(format!("{key}= needs {what}"))) } else { Ok(()) };
        match key {
            "endpoint" => {
                need("a URL")?;
                if !value.starts_with("http://") && !value.starts_with("https://") {
                    return Err(err(format!("endpoint={value}: expected an http:// or https:// URL")));
                }
                self.endpoint = Some(value.trim_end_matches('/').to_string());
            }
            "region" => {
                need("a region name")?;
                self.region = Some(value.to_string());
            }
            "size" => self.size = Some(parse_size(key, value)?),
            "object-size" => {
                let size = parse_size(key, value)?;
                if !(4096..=(1 << 30)).contains(&size) || size % 4096 != 0 {
                    return Err(err(format!("object-size={value}: a multiple of 4 KiB from 4 KiB to 1 GiB expected")));
                }
                self.object_size = Some(size);
            }
            "cache-size" => self.cache_size = parse_size(key, value)?,
            "concurrency" => self.concurrency = parse_count(key, value, 1)?,
            "read-ahead" => self.read_ahead = parse_count(key, value, 0)?,
            "read-only" | "readonly" | "ro" => {
                self.read_only = match value {
                    "" | "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" => false,
                    _ => return Err(err(format!("{key}={value}: expected true or false"))),
                }
            }
            "lease-timeout" => self.lease_timeout = parse_duration(key, value)?,
            "lease-settle" => self.lease_settle = parse_duration(key, value)?,
            "retry-timeout" => self.retry_timeout = parse_duration(key, value)?,
            _ => {
                return Err(err(format!(
                    "unknown s3:// parameter '{key}' (known: endpoint, region, size, object-size, cache-size, \
                     concurrency, read-ahead, read-only, lease-timeout, lease-settle, retry-timeout)"
                )))
            }
        }
        Ok(())
    }

    /// `s3://BUCKET/PREFIX`, for messages.
    pub fn display_name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

impl fmt::Display for S3Config {
    /// The canonical source text: parameters that differ from the defaults, in a fixed
    /// order; it parses back to the same configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", encode(&self.bucket, "-._~"), encode(&self.prefix, "-._~/"))?;
        let mut params: Vec<(&str, String)> = Vec::new();
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let defaults = Self::new("", "");
        if let Some(e) = &self.endpoint {
            params.push(("endpoint", encode(e, "-._~:/")));
        }
        if let Some(r) = &self.region {
            params.push(("region", encode(r, "-._~")));
        }
        if let Some(size) = self.size {
            params.push(("size", size.to_string()));
        }
        if let Some(size) = self.object_size {
            params.push(("object-size", size.to_string()));
        }
        let numbers = [
            ("cache-size", self.cache_size, defaults.cache_size),
            ("concurrency", self.concurrency as u64, defaults.concurrency as u64),
            ("read-ahead", self.read_ahead as u64, defaults.read_ahead as u64),
        ];
        params.extend(numbers.iter().filter(|(_, v, d)| v != d).map(|(k, v, _)| (*k, v.to_string())));
        if self.read_only {
            params.push(("read-only", "true".into()));
        }
        let durations = [
            ("lease-timeout", self.lease_timeout, defaults.lease_timeout),
            ("lease-settle", self.lease_settle, defaults.lease_settle),
            ("retry-timeout", self.retry_timeout, defaults.retry_timeout),
        ];
        params.extend(durations.iter().filter(|(_, v, d)| v != d).map(|(k, v, _)| (*k, ms(*v))));
        for (i, (key, value)) in params.iter().enumerate() {
            write!(f, "{}{key}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Percent-encodes every byte but ASCII alphanumerics and `keep`.
fn encode(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `512`, `4k`, `4K`, `4KiB`, `1M`, `2G`, `1T` (powers of 1024).
pub fn parse_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let bad = || err(format!("{key}={value}: expected a size like 4M, 10G or a number of bytes"));
    let digits = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("iB").trim_end_matches('B').to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).filter(|&n| n > 0).ok_or_else(bad)
}

fn parse_count(key: &str, value: &str, min: usize) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n >= min && n <= 4096)
        .ok_or_else(|| err(format!("{key}={value}: expected a number from {min} to 4096")))
}

/// Parses `30` (seconds), `30s`, `500ms`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || err(format!("{key}={value}: expected a duration like 30, 30s or 500ms"));
    if let Some(ms) = value.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    let secs = value.strip_suffix('s').unwrap_or(value);
    secs.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(bad)
}

fn percent_decode(s: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| err(format!("bad percent-encoding in '{s}'")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err(format!("'{s}' is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_full_source_string_sets_every_field() {
        let c = S3Config::parse(
            "s3://disks/vm%201/root/?endpoint=http://127.0.0.1:3900/&region=garage&size=10G&object-size=1M\
             &cache-size=64M&concurrency=8&read-ahead=0&read-only&lease-timeout=500ms&lease-settle=0.2\
             &retry-timeout=3s",
        )
        .unwrap();
        assert_eq!(c.bucket, "disks");
        assert_eq!(c.prefix, "vm 1/root");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert_eq!(c.size, Some(10 << 30));
        assert_eq!(c.object_size, Some(1 << 20));
        assert_eq!(c.cache_size, 64 << 20);
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.read_ahead, 0);
        assert!(c.read_only);
        assert_eq!(c.lease_timeout, Duration::from_millis(500));
        assert_eq!(c.lease_settle, Duration::from_millis(200));
        assert_eq!(c.retry_timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_canonical_text_parses_back_to_the_same_configuration() {
        for text in [
            "s3://b",
            "s3://disks/vm%201/r%3Fo%26t?endpoint=http://127.0.0.1:3900&region=garage&size=1G",
            "s3://b/p?object-size=1M&cache-size=64M&concurrency=8&read-ahead=0&read-only\
             &lease-timeout=2s&lease-settle=0.25&retry-timeout=500ms",
        ] {
            let c = S3Config::parse(text).unwrap();
            let again = S3Config::parse(&c.to_string()).unwrap();
            assert_eq!(again, c, "{text} -> {c}");
        }
        assert_eq!(S3Config::parse("s3://b/p?size=4096").unwrap().to_string(), "s3://b/p?size=4096");
    }

    #[test]
    fn an_s3_source_parses_into_its_config_and_prints_back() {
        use crate::source::{Source, SourceError};
        let text = "s3://b/disk?endpoint=http://127.0.0.1:3900&region=garage&size=1G";
        let source = Source::parse(text).unwrap();
        assert_eq!(source, Source::S3(Box::new(S3Config::parse(text).unwrap())));
        assert_eq!(Source::parse(&source.to_string()).unwrap(), source);
        let refused = Source::parse("s3://b/p?secret-key=x").unwrap_err();
        assert!(matches!(refused, SourceError::S3(_)) && refused.to_string().contains("AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn opening_an_s3_source_outside_a_runtime_says_why_it_cannot() {
        let source = crate::source::Source::parse("s3://b/p?endpoint=http://127.0.0.1:9").unwrap();
        let e = source.open(false).err().expect("no runtime").to_string();
        assert!(e.contains("tokio runtime"), "{e}");
    }

    #[test]
    fn a_bare_bucket_has_an_empty_prefix_and_defaults() {
        let c = S3Config::parse("s3://b").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", ""));
        assert_eq!(c.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(c.object_size, None);
        assert!(!c.read_only);
    }

    #[test]
    fn credentials_in_the_source_are_refused_with_a_pointer_to_the_environment() {
        for key in ["access-key", "secret-key", "session-token", "aws_secret_access_key"] {
            let e = S3Config::parse(&format!("s3://b/p?{key}=x")).unwrap_err().to_string();
            assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_parameters_and_bad_values_are_refused() {
        assert!(S3Config::parse("s3://b/p?colour=red").unwrap_err().to_string().contains("unknown"));
        assert!(S3Config::parse("s3://b/p?size=ten").is_err());
        assert!(S3Config::parse("s3://b/p?size=0").is_err());
        assert!(S3Config::parse("s3://b/p?object-size=1000").is_err());
        assert!(S3Config::parse("s3://b/p?endpoint=ftp://x").is_err());
        assert!(S3Config::parse("s3://b/p?concurrency=0").is_err());
        assert!(S3Config::parse("s3:///p").is_err());
        assert!(S3Config::parse("file:///p").is_err());
    }

    #[test]
    fn sizes_accept_binary_suffixes_and_reject_overflow() {
        assert_eq!(parse_size("size", "4096").unwrap(), 4096);
        assert_eq!(parse_size("size", "4k").unwrap(), 4096);
        assert_eq!(parse_size("size", "4KiB").unwrap(), 4096);
        assert_eq!(parse_size("size", "2GB").unwrap(), 2 << 30);
        assert_eq!(parse_size("size", "1T").unwrap(), 1 << 40);
        assert!(parse_size("size", "99999999999P").is_err());
        assert!(parse_size("size", "4X").is_err());
    }
}
