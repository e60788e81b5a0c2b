//! One read-write server per prefix: the lease object `PREFIX/nbdx-lease`.
//!
//! The lease names its holder (host, pid, a random id) and a wall-clock expiry. The holder
//! renews it every third of `lease-timeout`; a lease past its expiry may be taken over.
//!
//! **Conditional writes.** Where the store honours them, the lease is created with
//! `If-None-Match: *` ([`PutMode::Create`]) and renewed or taken over with `If-Match: ETAG`
//! ([`PutMode::Update`]), so two openers cannot both win. Garage (checked on 2.5.0) accepts
//! and *ignores* both headers on PutObject: a second conditional create returns 200 and
//! overwrites. Garage orders writes of one key by timestamp (last writer wins) and its
//! quorum reads see a completed write. So, on every store, acquisition also follows
//! Fischer's timed mutual exclusion: read the lease, write ours, and only if the read-to-
//! write-complete window took less than `lease-settle` (else start again), wait
//! `lease-settle` and read it back; we hold it only if our id is still there. Two openers
//! that both saw the lease free both wrote within `lease-settle` of their reads, so both
//! read back after both writes landed and agree on the last writer.
//!
//! **Fencing.** The holder counts its lease valid until `lease-timeout` after the start of
//! its last successful renewal (monotonic clock, which starts before the expiry the others
//! see). Past that, or once a renewal finds another holder, chunk writes fail with `NBD_EIO`
//! rather than overwrite a new holder's data. Wall clocks of the hosts sharing a prefix must
//! agree to well within `lease-timeout`.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use tokio_util::sync::CancellationToken;

use super::error::{format_utc, unix_millis};
use super::store::one_line;
use super::S3Error;
use crate::device::DeviceError;

/// The lease's object name under the prefix.
pub const LEASE_NAME: &str = "nbdx-lease";
const MAGIC: &str = "nbdx-s3-lease 1";

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    id: u64,
    expires_ms: u64,
}

impl Record {
    fn encode(&self) -> String {
        format!("{MAGIC}\nholder {}\nid {:016x}\nexpires {}\n", self.holder, self.id, self.expires_ms)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        (lines.next()? == MAGIC).then_some(())?;
        let (mut holder, mut id, mut expires_ms) = (None, None, None);
        for line in lines {
            match line.split_once(' ')? {
                ("holder", v) => holder = Some(v.to_string()),
                ("id", v) => id = u64::from_str_radix(v, 16).ok(),
                ("expires", v) => expires_ms = v.parse().ok(),
                _ => {}
            }
        }
        Some(Self { holder: holder?, id: id?, expires_ms: expires_ms? })
    }
}

/// The lease held by a read-write device, renewed in the background until dropped.
pub(crate) struct Lease {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    path: Path,
    name: String,
    holder: String,
    id: u64,
    timeout: Duration,
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
}

impl Lease {
    /// Takes the lease of `name` (an `s3://` name for messages) or says who holds it.
    pub(crate) async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: Path,
        name: String,
        timeout: Duration,
        settle: Duration,
    ) -> Result<Self, S3Error> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "unknown-host".into());
        let holder = format!("{} pid {}", host.trim(), std::process::id());
        let id = RandomState::new().hash_one((holder.as_str(), SystemTime::now()));
        let shared = Shared {
            store,
            path,
            name,
            holder,
            id,
            timeout,
            valid_until: Mutex::new(Instant::now()),
            lost: AtomicBool::new(false),
        };
        for _attempt in 0..5 {
            let start = Instant::now();
            let current = shared.read().await?;
            if let Some((record, _)) = current.as_ref().filter(|(r, _)| r.id != id) {
                if record.expires_ms > unix_millis(SystemTime::now()) {
                    return Err(shared.held_by(record));
                }
                tracing::info!(holder = %record.holder, "taking over an expired lease of {}", shared.name);
            }
            if !shared.write(current.map(|(_, v)| v)).await? || start.elapsed() >= settle {
                continue;
            }
            tokio::time::sleep(settle).await;
            match shared.read().await? {
                Some((record, _)) if record.id == id => {
                    *shared.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = start + timeout;
                    tracing::info!("took the lease of {} until {}", shared.name, format_utc(record.expires_ms));
                    let shared = Arc::new(shared);
                    let stop = CancellationToken::new();
                    tokio::spawn(renew(shared.clone(), stop.clone()));
                    return Ok(Self { shared, stop });
                }
                Some((record, _)) => return Err(shared.held_by(&record)),
                None => continue,
            }
        }
        Err(S3Error::Leased(format!("{}: could not settle the lease (contended or slow store)", shared.name)))
    }

    /// `Ok` while chunk writes are allowed.
    pub(crate) fn check(&self) -> Result<(), DeviceError> {
        self.shared.check()
    }

    /// Whether the lease is still held (not released, not lost).
    pub(crate) fn is_held(&self) -> bool {
        !self.shared.lost.load(Ordering::Acquire)
    }

    /// Deletes the lease (if still ours) and stops renewing it.
    pub(crate) async fn release(&self) {
        self.stop.cancel();
        if let Ok(Some((record, _))) = self.shared.read().await {
            if record.id == self.shared.id {
                if let Err(e) = self.shared.store.delete(&self.shared.path).await {
                    tracing::warn!(error = %one_line(&e), "could not release the lease of {}", self.shared.name);
                }
            }
        }
        self.shared.lost.store(true, Ordering::Release);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn check(&self) -> Result<(), DeviceError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(DeviceError::io(format!("{}: the lease was lost; writes are refused", self.name)));
        }
        if Instant::now() >= *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(DeviceError::io(format!("{}: the lease could not be renewed in time", self.name)));
        }
        Ok(())
    }

    fn held_by(&self, record: &Record) -> S3Error {
        S3Error::Leased(format!(
            "{} is in use by {} until {} (lease {}); open it read-only, or wait for the lease to expire",
            self.name,
            record.holder,
            format_utc(record.expires_ms),
            self.path
        ))
    }

    async fn read(&self) -> Result<Option<(Record, UpdateVersion)>, S3Error> {
        let failed = |e: object_store::Error| S3Error::Store(format!("reading {}: {}", self.path, one_line(&e)));
        let result = match self.store.get_opts(&self.path, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
        let bytes = result.bytes().await.map_err(failed)?;
        let record = std::str::from_utf8(&bytes).ok().and_then(Record::decode);
        let record = record.ok_or_else(|| S3Error::Store(format!("{} is not an nbdx lease", self.path)))?;
        Ok(Some((record, version)))
    }

    /// Writes our record, conditionally on `previous`; `false` when a precondition failed.
    async fn write(&self, previous: Option<UpdateVersion>) -> Result<bool, S3Error> {
        let expires_ms = unix_millis(SystemTime::now()) + self.timeout.as_millis() as u64;
        let record = Record { holder: self.holder.clone(), id: self.id, expires_ms };
        let payload = PutPayload::from(record.encode().into_bytes());
        let mode = previous.map_or(PutMode::Create, PutMode::Update);
        match self.store.put_opts(&self.path, payload.clone(), mode.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                self.store.put(&self.path, payload).await.map(|_| true).map_err(|e| self.write_error(e))
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: object_store::Error) -> S3Error {
        S3Error::Store(format!("writing {}: {}", self.path, one_line(&e)))
    }
}

/// Renews the lease every third of its timeout until stopped or lost.
async fn renew(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.timeout / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let start = Instant::now();
        let outcome = match shared.read().await {
            Ok(Some((record, _))) if record.id != shared.id => {
                tracing::error!(holder = %record.holder, "{}: the lease was taken over; writes are refused", shared.name);
                shared.lost.store(true, Ordering::Release);
                return;
            }
            Ok(current) => shared.write(current.map(|(_, v)| v)).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => {
                *shared.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = start + shared.timeout;
                tracing::debug!("renewed the lease of {}", shared.name);
            }
            Ok(false) => tracing::warn!("{}: lease renewal lost a race; retrying", shared.name),
            Err(e) => tracing::warn!(error = %e, "{}: lease renewal failed; retrying", shared.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_record_round_trips_and_garbage_is_refused() {
        let r = Record { holder: "host pid 7".into(), id: 0xabc, expires_ms: 12345 };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode("hello\nholder x\n"), None);
        assert_eq!(Record::decode("nbdx-s3-lease 1\nholder x\n"), None);
    }
}
