//! The manifest object `PREFIX/nbdx-manifest`: what a disk is, written once on creation
//! and checked on every open.
//!
//! ```text
//! nbdx-s3-disk 1
//! size 10737418240
//! object-size 4194304
//! created-by nbdx 0.1.0
//! ```
//!
//! Line one names the format and its version; unknown keys are ignored (later versions
//! may add some), a missing `size` or `object-size` is an error.

use object_store::{PutMode, PutPayload};

use super::config::{S3Config, DEFAULT_OBJECT_SIZE};
use super::store::{one_line, Store};
use super::S3Error;

const MAGIC: &str = "nbdx-s3-disk";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's object name under the prefix.
pub const MANIFEST_NAME: &str = "nbdx-manifest";

/// What the manifest says about a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Disk size in bytes.
    pub size: u64,
    /// Chunk object size in bytes.
    pub object_size: u64,
}

impl Manifest {
    /// The manifest's text.
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC} {FORMAT_VERSION}\nsize {}\nobject-size {}\ncreated-by nbdx {}\n",
            self.size,
            self.object_size,
            env!("CARGO_PKG_VERSION")
        )
    }

    /// Parses a manifest; `name` is used in errors.
    pub fn decode(text: &str, name: &str) -> Result<Self, S3Error> {
        let bad = |why: &str| S3Error::Manifest(format!("{name}: {why}; is this an nbdx disk?"));
        let mut lines = text.lines();
        let version =
            lines.next().and_then(|l| l.strip_prefix(MAGIC)).map(str::trim).ok_or_else(|| bad("bad header"))?;
        match version.parse::<u32>() {
            Ok(FORMAT_VERSION) => {}
            Ok(v) => {
                return Err(S3Error::Manifest(format!(
                    "{name}: format version {v}, this nbdx reads version {FORMAT_VERSION}"
                )))
            }
            Err(_) => return Err(bad("bad version")),
        }
        let (mut size, mut object_size) = (None, None);
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "size" => size = value.parse::<u64>().ok().filter(|&s| s > 0),
                "object-size" => object_size = value.parse::<u64>().ok().filter(|&s| s >= 4096 && s % 4096 == 0),
                _ => {}
            }
        }
        match (size, object_size) {
            (Some(size), Some(object_size)) => Ok(Self { size, object_size }),
            _ => Err(bad("missing or bad size/object-size")),
        }
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.object_size)
    }

    /// Checks the parameters of an open against an existing disk.
    pub fn check(&self, config: &S3Config) -> Result<(), S3Error> {
        let name = config.display_name();
        if let Some(size) = config.size.filter(|&s| s != self.size) {
            return Err(S3Error::Manifest(format!(
                "{name}: size mismatch: the disk has {} bytes, size= asks for {size} \
                 (omit size= to open it as it is)",
                self.size
            )));
        }
        if let Some(object_size) = config.object_size.filter(|&s| s != self.object_size) {
            return Err(S3Error::Manifest(format!(
                "{name}: object-size mismatch: the disk has {}-byte objects, object-size= asks for {object_size}",
                self.object_size
            )));
        }
        Ok(())
    }
}

/// Reads the manifest, if there is one.
pub(crate) async fn read(store: &Store, config: &S3Config) -> Result<Option<Manifest>, S3Error> {
    let path = store.path(MANIFEST_NAME);
    let data = store.get(&path).await.map_err(|e| S3Error::Store(format!("reading {path}: {}", one_line(&e))))?;
    let Some(data) = data else { return Ok(None) };
    let text = std::str::from_utf8(&data).map_err(|_| S3Error::Manifest(format!("{path}: not text")))?;
    let manifest = Manifest::decode(text, &format!("{}/{MANIFEST_NAME}", config.display_name()))?;
    manifest.check(config)?;
    Ok(Some(manifest))
}

/// Writes the manifest of a new disk (with `If-None-Match: *` where the store honours it).
pub(crate) async fn create(store: &Store, config: &S3Config) -> Result<Manifest, S3Error> {
    let name = config.display_name();
    let size = config
        .size
        .ok_or_else(|| S3Error::NoDisk(format!("no disk at {name} (no {MANIFEST_NAME}); give size= to create one")))?;
    let manifest = Manifest { size, object_size: config.object_size.unwrap_or(DEFAULT_OBJECT_SIZE) };
    tracing::info!(
        "creating {name}: {} bytes in {} objects of {} bytes (sparse: a chunk is stored once written)",
        manifest.size,
        manifest.chunks(),
        manifest.object_size
    );
    let path = store.path(MANIFEST_NAME);
    let payload = PutPayload::from(manifest.encode().into_bytes());
    match store.inner().put_opts(&path, payload, PutMode::Create.into()).await {
        Ok(_) => {
            tracing::info!("created {name}: manifest written");
            Ok(manifest)
        }
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            read(store, config).await?.ok_or_else(|| S3Error::Store(format!("{path} appeared and vanished")))
        }
        Err(e) => Err(S3Error::Store(format!("writing {path}: {}", one_line(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_ignores_unknown_keys() {
        let m = Manifest { size: 10 << 30, object_size: 4 << 20 };
        assert_eq!(Manifest::decode(&m.encode(), "x").unwrap(), m);
        let text = format!("{}future-key 7\n", m.encode());
        assert_eq!(Manifest::decode(&text, "x").unwrap(), m);
        assert_eq!(m.chunks(), 2560);
    }

    #[test]
    fn foreign_or_newer_manifests_are_refused_clearly() {
        assert!(Manifest::decode("hello", "x").unwrap_err().to_string().contains("nbdx disk"));
        let e = Manifest::decode("nbdx-s3-disk 2\nsize 1\nobject-size 4096\n", "x").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(Manifest::decode("nbdx-s3-disk 1\nsize 4096\n", "x").is_err());
    }

    #[test]
    fn a_size_or_object_size_mismatch_names_both_values() {
        let m = Manifest { size: 1 << 30, object_size: 4 << 20 };
        let mut c = S3Config::new("b", "p");
        assert!(m.check(&c).is_ok());
        c.size = Some(2 << 30);
        let e = m.check(&c).unwrap_err().to_string();
        assert!(e.contains("size mismatch") && e.contains(&(1u64 << 30).to_string()), "{e}");
        c.size = None;
        c.object_size = Some(1 << 20);
        assert!(m.check(&c).unwrap_err().to_string().contains("object-size mismatch"));
    }
}
