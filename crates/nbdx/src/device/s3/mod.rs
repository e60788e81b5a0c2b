//! [`S3Device`]: a disk stored as fixed-size chunk objects in an S3-compatible object store
//! (Garage, Ceph RGW, MinIO, AWS), behind the cargo feature `s3`.
//!
//! Source syntax ([`S3Config::parse`]):
//!
//! ```text
//! s3://BUCKET/PREFIX?endpoint=URL&region=R&size=SIZE&object-size=SIZE
//!       [&cache-size=SIZE][&concurrency=N][&read-ahead=N][&read-only]
//!       [&lease-timeout=DUR][&lease-settle=DUR][&retry-timeout=DUR]
//! ```
//!
//! Credentials come only from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`
//! or `~/.aws/credentials` (`AWS_PROFILE`); an `http://` endpoint allows plain HTTP; requests
//! use path-style addressing (what Garage and MinIO want).
//!
//! **Layout.** `PREFIX/nbdx-manifest` (size, object size, format version, creator; written
//! when the disk is created with `size=`, checked on every open), `PREFIX/nbdx-lease`, and
//! one object per chunk, `PREFIX/data/%016x` (default 4 MiB). A chunk without an object
//! reads as zeros and is reported as a hole (`NBD_STATE_HOLE | NBD_STATE_ZERO`); trimming
//! or zeroing a whole chunk deletes its object. The present chunks are listed once at open
//! and then tracked in memory.
//!
//! **Durability.** Writes land in a write-back cache of whole chunks (partial writes read
//! the chunk first, under the chunk's lock). `FLUSH` returns once every chunk dirty at its
//! start has been stored (PUT acknowledged); a FUA write, trim or zero stores its chunks
//! before it returns. Dirty chunks are also stored in the background (see
//! [`background`]). Store errors fail the request with `NBD_EIO`; object_store retries
//! transient failures with exponential backoff for up to `retry-timeout` first.
//!
//! **Memory bound.** Chunk buffers (dirty or cached) never exceed `cache-size` (default
//! 256 MiB, at least two chunks), plus, transiently: one copy per chunk rewritten while its
//! PUT is in flight (at most `concurrency` chunks), and ranged-GET replies (at most
//! `concurrency` × 256 KiB, or the request size if larger). Writers that need a buffer when
//! all are dirty wait for write-back (back-pressure), at most twice `retry-timeout`, then
//! fail with `NBD_EIO`. The allocation bitmap costs one bit per chunk (32 KiB per TiB at
//! 4 MiB objects). So with the defaults: about 256 MiB + 32 × 4 MiB worst case.
//!
//! **Concurrency and reads.** At most `concurrency` (default 32) store requests are in
//! flight. A large (≥ 64 KiB) or sequential read fetches whole chunks into the clean cache
//! and reads `read-ahead` (default 8) chunks ahead. A small random read is served from the
//! cache, or fetches its whole chunk while the cache has free room, or else makes a ranged
//! GET of the aligned 256 KiB window around it (no 4 MiB GET per 4 KiB read). Clean chunks
//! are evicted least recently cached first; dirty ones only by write-back.
//!
//! **One writer.** A read-write open takes the lease ([`lease`]); a second read-write open
//! of the same prefix fails with [`S3Error::Leased`] naming the holder and expiry;
//! `read-only` opens take no lease.

mod background;
mod cache;
mod config;
mod error;
mod io;
mod lease;
mod manifest;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

pub use config::{parse_duration, parse_size, ConfigError, S3Config};
pub use config::{DEFAULT_CACHE_SIZE, DEFAULT_CONCURRENCY, DEFAULT_OBJECT_SIZE, DEFAULT_READ_AHEAD};
pub use error::S3Error;
pub use lease::LEASE_NAME;
pub use manifest::{Manifest, FORMAT_VERSION, MANIFEST_NAME};

use cache::Chunks;
use lease::Lease;
pub use store::S3Credentials;
use store::Store;

/// A disk in an object store. See the [module docs](self).
pub struct S3Device {
    chunks: Arc<Chunks>,
    manifest: Manifest,
    read_only: bool,
    read_ahead: usize,
    name: String,
    stop: CancellationToken,
}

impl S3Device {
    /// Parses `source` (`s3://…`) and opens the disk.
    pub async fn open_source(source: &str) -> Result<Self, S3Error> {
        Self::open(S3Config::parse(source)?).await
    }

    /// Opens (or, with `size`, creates) the disk described by `config`. Makes a first LIST
    /// so that bad credentials, a missing bucket or an unreachable endpoint each fail here
    /// with one clear error.
    pub async fn open(config: S3Config) -> Result<Self, S3Error> {
        Self::open_with_credentials(config, S3Credentials::from_environment()?).await
    }

    /// [`S3Device::open`] with credentials given by the program.
    pub async fn open_with_credentials(config: S3Config, credentials: S3Credentials) -> Result<Self, S3Error> {
        let store = Store::connect(&config, credentials)?;
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| "AWS S3".into());
        Self::open_store(store, config, &endpoint).await
    }

    /// Opens the disk under `config.prefix` in any [`ObjectStore`] (in memory, local files,
    /// GCS, Azure, …); `config.bucket` only names it in messages, and the endpoint, region
    /// and credentials parameters are not used.
    pub async fn open_object_store(store: Arc<dyn ObjectStore>, config: S3Config) -> Result<Self, S3Error> {
        let name = store.to_string();
        Self::open_store(Store::with_store(store, &config.prefix), config, &name).await
    }

    async fn open_store(mut store: Store, config: S3Config, endpoint: &str) -> Result<Self, S3Error> {
        let name = config.display_name();
        let what = format!("cannot open {name}");
        let root = store.path("");
        store.inner().list_with_delimiter(Some(&root)).await.map_err(|e| S3Error::from_probe(&e, &what, endpoint))?;
        let existing = manifest::read(&store, &config).await?;
        match (&existing, config.read_only, config.size) {
            (Some(_), ..) => {}
            (None, true, _) => {
                return Err(S3Error::NoDisk(format!("{what}: no disk there (no {MANIFEST_NAME}) to open read-only")))
            }
            (None, false, None) => {
                return Err(S3Error::NoDisk(format!(
                    "{what}: no disk there (no {MANIFEST_NAME}); give size= to create one"
                )))
            }
            (None, false, Some(_)) => {}
        }
        let lease = match config.read_only {
            true => None,
            false => Some(
                Lease::acquire(
                    store.inner().clone(),
                    store.path(LEASE_NAME),
                    name.clone(),
                    config.lease_timeout,
                    config.lease_settle,
                )
                .await?,
            ),
        };
        let opened = async {
            let manifest = match existing {
                Some(m) => m,
                None => manifest::create(&store, &config).await?,
            };
            store.set_object_size(manifest.object_size);
            let present =
                store.list_chunks().await.map_err(|e| S3Error::Store(format!("{what}: {}", store::one_line(&e))))?;
            Ok::<_, S3Error>((manifest, present))
        };
        let (manifest, present) = match (opened.await, &lease) {
            (Ok(done), _) => done,
            (Err(e), Some(lease)) => {
                lease.release().await;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        tracing::info!(
            "opened {name}{}: {} bytes, {} of {} chunks of {} bytes stored",
            if config.read_only { " read-only" } else { "" },
            manifest.size,
            present.len(),
            manifest.chunks(),
            manifest.object_size
        );
        let chunks = Arc::new(Chunks::new(store, manifest, &present, &config, lease));
        let stop = CancellationToken::new();
        if !config.read_only {
            tokio::spawn(background::write_back_loop(chunks.clone(), stop.clone()));
        }
        Ok(Self { chunks, manifest, read_only: config.read_only, read_ahead: config.read_ahead, name, stop })
    }

    /// What the manifest says.
    pub fn manifest(&self) -> Manifest {
        self.manifest
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object store client (for tools and tests that inspect the bucket).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.chunks.store.inner().clone()
    }

    /// Stores every dirty chunk, stops background work and releases the lease. Later
    /// writes fail.
    pub async fn close(&self) -> crate::device::DeviceResult<()> {
        let flushed = if self.read_only { Ok(()) } else { self.flush_all().await };
        self.stop.cancel();
        if let Some(lease) = &self.chunks.lease {
            lease.release().await;
        }
        flushed
    }
}

impl Drop for S3Device {
    /// Stops background work and releases the lease, so that the next read-write open need
    /// not wait for it to expire: on a multi-threaded runtime the worker waits for the
    /// DELETE (at most [`RELEASE_TIMEOUT`]), on a current-thread runtime it is spawned, and
    /// outside any runtime (a device dropped after its runtime) a small runtime makes it.
    fn drop(&mut self) {
        use tokio::runtime::{Builder, Handle, RuntimeFlavor};
        self.stop.cancel();
        let dirty = cache::lock(&self.chunks.dirty).len();
        if dirty > 0 {
            tracing::warn!("{}: closed with {dirty} chunks not stored (no flush)", self.name);
        }
        if !self.chunks.lease.as_ref().is_some_and(|l| l.is_held()) {
            return;
        }
        let chunks = self.chunks.clone();
        let release = async move {
            if let Some(lease) = &chunks.lease {
                let _ = tokio::time::timeout(RELEASE_TIMEOUT, lease.release()).await;
            }
        };
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(release));
            }
            Ok(handle) => drop(handle.spawn(release)),
            Err(_) => match Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(release),
                Err(e) => tracing::warn!("{}: cannot release the lease: {e}", self.name),
            },
        }
    }
}

/// How long dropping a device waits for its lease to be released.
pub const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
