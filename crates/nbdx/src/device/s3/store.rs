//! The object store under a disk: client construction (credentials from the environment or
//! `~/.aws/credentials` only), object names, and chunk-level requests with their errors.
//!
//! Layout under `PREFIX/`: `nbdx-manifest` (see [`super::manifest`]), `nbdx-lease` (see
//! [`super::lease`]) and `data/0000000000000000`, `data/0000000000000001`, … one object per
//! chunk, named by its index in 16 lower-case hex digits so that names sort by index.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::config::S3Config;
use super::S3Error;
use crate::device::DeviceError;

/// S3 credentials: from the environment or the shared credentials file
/// ([`S3Credentials::from_environment`]), or given by a program (never parsed from a source
/// string).
#[derive(Clone)]
pub struct S3Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// Explicit credentials.
    pub fn new(key_id: impl Into<String>, secret: impl Into<String>, token: Option<String>) -> Self {
        Self { key_id: key_id.into(), secret: secret.into(), token }
    }

    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the profile
    /// `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE` or
    /// `~/.aws/credentials`.
    pub fn from_environment() -> Result<Self, S3Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(key_id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Self { key_id, secret, token: var("AWS_SESSION_TOKEN") });
        }
        let file = var("AWS_SHARED_CREDENTIALS_FILE")
            .or_else(|| var("HOME").map(|h| format!("{h}/.aws/credentials")))
            .unwrap_or_default();
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        Self::from_ini(&text, &profile).ok_or_else(|| {
            S3Error::Credentials(format!(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile [{profile}] in {file}"
            ))
        })
    }

    fn from_ini(text: &str, profile: &str) -> Option<Self> {
        let (mut section, mut key_id, mut secret, mut token) = (String::new(), None, None, None);
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().trim_start_matches("profile ").to_string();
            } else if let (true, Some((k, v))) = (section == profile, line.split_once('=')) {
                let v = Some(v.trim().to_string());
                match k.trim() {
                    "aws_access_key_id" => key_id = v,
                    "aws_secret_access_key" => secret = v,
                    "aws_session_token" => token = v,
                    _ => {}
                }
            }
        }
        Some(Self { key_id: key_id?, secret: secret?, token })
    }
}

/// One disk's objects in one bucket.
pub(crate) struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    object_size: u64,
}

impl Store {
    /// A client for `config`'s bucket; no request is made yet.
    pub(crate) fn connect(config: &S3Config, credentials: S3Credentials) -> Result<Self, S3Error> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = config
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 8,
            retry_timeout: config.retry_timeout,
        };
        let endpoint = config.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
        let client = ClientOptions::new()
            .with_allow_http(endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60))
            .with_pool_max_idle_per_host(config.concurrency.max(8));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(region)
            .with_access_key_id(credentials.key_id)
            .with_secret_access_key(credentials.secret)
            .with_retry(retry);
        if let Some(token) = credentials.token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let inner = builder
            .with_client_options(client)
            .build()
            .map_err(|e| S3Error::Store(format!("cannot configure the S3 client: {e}")))?;
        Ok(Self::with_store(Arc::new(inner), &config.prefix))
    }

    /// The disk under `prefix` in any object store.
    pub(crate) fn with_store(inner: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Self { inner, prefix, object_size: 0 }
    }

    pub(crate) fn set_object_size(&mut self, object_size: u64) {
        self.object_size = object_size;
    }

    pub(crate) fn path(&self, name: &str) -> Path {
        Path::from(format!("{}{name}", self.prefix))
    }

    fn chunk_path(&self, index: u64) -> Path {
        self.path(&format!("data/{index:016x}"))
    }

    /// The chunks present in the store (one LIST of `PREFIX/data/`), checking their sizes.
    pub(crate) async fn list_chunks(&self) -> Result<Vec<u64>, object_store::Error> {
        let data = self.path("data");
        let mut found = Vec::new();
        let mut stream = self.inner.list(Some(&data));
        while let Some(meta) = stream.try_next().await? {
            let name = meta.location.filename().unwrap_or_default();
            let index = match u64::from_str_radix(name, 16) {
                Ok(index) if name.len() == 16 => index,
                _ => {
                    tracing::warn!(object = %meta.location, "ignoring an object that is not a chunk");
                    continue;
                }
            };
            if meta.size != self.object_size {
                return Err(object_store::Error::Generic {
                    store: "S3",
                    source: format!("chunk {} has {} bytes, expected {}", meta.location, meta.size, self.object_size)
                        .into(),
                });
            }
            found.push(index);
        }
        Ok(found)
    }

    /// A whole object, or `None` when it does not exist.
    pub(crate) async fn get(&self, path: &Path) -> Result<Option<Bytes>, object_store::Error> {
        match self.inner.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A whole chunk; a chunk of the wrong size is an error.
    pub(crate) async fn get_chunk(&self, index: u64) -> Result<Option<Bytes>, DeviceError> {
        let path = self.chunk_path(index);
        let start = std::time::Instant::now();
        let data = self.get(&path).await.map_err(|e| io_error("GET", &path, e))?;
        let bytes = data.as_ref().map_or(0, |d| d.len());
        tracing::debug!(chunk = index, object = %path, bytes, ms = start.elapsed().as_millis() as u64, "GET");
        match data {
            Some(d) if d.len() as u64 != self.object_size => {
                Err(DeviceError::io(format!("GET {path}: {} bytes, expected {}", d.len(), self.object_size)))
            }
            other => Ok(other),
        }
    }

    /// Part of a chunk (a ranged GET), or `None` when the chunk does not exist.
    pub(crate) async fn get_chunk_range(&self, index: u64, range: Range<u64>) -> Result<Option<Bytes>, DeviceError> {
        let path = self.chunk_path(index);
        let (expected, first, start) = (range.end - range.start, range.start, std::time::Instant::now());
        let result = self.inner.get_range(&path, range).await;
        let ms = start.elapsed().as_millis() as u64;
        tracing::debug!(chunk = index, object = %path, offset = first, bytes = expected, ms, "ranged GET");
        match result {
            Ok(d) if d.len() as u64 == expected => Ok(Some(d)),
            Ok(d) => Err(DeviceError::io(format!("GET {path}: {} bytes, expected {expected}", d.len()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error("GET", &path, e)),
        }
    }

    /// Stores a whole chunk; returns once the store acknowledged it.
    pub(crate) async fn put_chunk(&self, index: u64, data: Bytes) -> Result<(), DeviceError> {
        let path = self.chunk_path(index);
        let (bytes, start) = (data.len(), std::time::Instant::now());
        self.inner.put(&path, PutPayload::from(data)).await.map_err(|e| io_error("PUT", &path, e))?;
        tracing::debug!(chunk = index, object = %path, bytes, ms = start.elapsed().as_millis() as u64, "PUT");
        Ok(())
    }

    /// Deletes a chunk object (absent is fine).
    pub(crate) async fn delete_chunk(&self, index: u64) -> Result<(), DeviceError> {
        let path = self.chunk_path(index);
        tracing::debug!(chunk = index, object = %path, "DELETE");
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error("DELETE", &path, e)),
        }
    }

    /// The client, for the manifest and the lease.
    pub(crate) fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

/// A failed request as `NBD_EIO` naming the operation and object.
fn io_error(op: &str, path: &Path, e: object_store::Error) -> DeviceError {
    tracing::warn!(object = %path, error = %e, "{op} failed");
    DeviceError::io(format!("{op} {path}: {}", one_line(&e)))
}

/// An error and its sources on one line.
pub(crate) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_file_profile_is_read_and_other_profiles_are_not() {
        let ini = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\
                   [profile other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        let c = S3Credentials::from_ini(ini, "default").unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str(), c.token), ("A", "B", None));
        let c = S3Credentials::from_ini(ini, "other").unwrap();
        assert_eq!((c.key_id.as_str(), c.token.as_deref()), ("C", Some("E")));
        assert!(S3Credentials::from_ini(ini, "missing").is_none());
    }
}
