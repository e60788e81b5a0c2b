//! Shared by the copy tests: an in-process nbdx server over RAM disks,
//! files with data and holes, and a copy call with a time bound.

#![allow(dead_code)]

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nbdx::client::{Client, ClientOptions, Target};
use nbdx::copy::{copy, CopyError, CopyOptions, CopyReport, Endpoint, Progress};
use nbdx::device::{Caps, Device, DeviceResult, Extent, ZeroFlags};
use nbdx::server::Server;
use nbdx::uri::NbdUri;
use nbdx::{Export, MemoryDevice};

/// Bound on every copy: nothing may hang.
pub const BOUND: Duration = Duration::from_secs(30);

/// A server on a Unix socket in a temp dir; stops when dropped.
pub struct Running {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    /// The URI of export `name`.
    pub fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.path.display())
    }

    /// The endpoint of export `name`.
    pub fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint::parse(&self.uri(name)).expect("valid URI")
    }

    /// A client of export `name`.
    pub async fn client(&self, name: &str) -> Client {
        let uri = NbdUri::parse(&self.uri(name)).unwrap();
        Client::connect(&Target::Unix(self.path.clone()), &ClientOptions::from_uri(&uri)).await.unwrap()
    }
}

/// Serves `exports`.
pub fn serve(exports: Vec<Export>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbdx.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = Server::new(exports).unwrap();
    let task = tokio::spawn(async move { server.serve(listener).await });
    Running { path, _dir: dir, task }
}

/// Pseudo-random bytes (never a zero byte), different for each seed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed as usize * 7) % 251) as u8 + 1).collect()
}

/// A RAM disk of `size` bytes with `pieces` of data `(offset, len)`.
pub async fn ram_with(size: u64, pieces: &[(u64, usize)]) -> Arc<MemoryDevice> {
    let dev = Arc::new(MemoryDevice::new(size));
    for (i, &(offset, len)) in pieces.iter().enumerate() {
        dev.write(offset, &pattern(len, i as u8), false).await.unwrap();
    }
    dev
}

/// A sparse file of `size` bytes with `pieces` of data, as [`ram_with`].
pub fn file_with(path: &Path, size: u64, pieces: &[(u64, usize)]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(offset, len)) in pieces.iter().enumerate() {
        f.write_all_at(&pattern(len, i as u8), offset).unwrap();
    }
}

/// Everything a device holds.
pub async fn contents(dev: &dyn Device) -> Vec<u8> {
    let mut buf = vec![0u8; dev.size() as usize];
    dev.read(0, &mut buf).await.unwrap();
    buf
}

/// Bytes a file really uses on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Copies with a time bound.
pub async fn run_copy(src: &Endpoint, dst: &Endpoint, opts: &CopyOptions) -> Result<CopyReport, CopyError> {
    let progress = Arc::new(Progress::default());
    let result = tokio::time::timeout(BOUND, copy(src, dst, opts, progress.clone())).await.expect("copy hangs");
    if let Ok(report) = &result {
        assert_eq!(progress.done(), report.bytes, "progress must reach the number of bytes copied");
    }
    result
}

/// A RAM disk that does not advertise multi-conn.
#[derive(Debug)]
pub struct SingleConn(pub Arc<MemoryDevice>);

#[async_trait]
impl Device for SingleConn {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        Caps { multi_conn: false, ..self.0.caps() }
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.0.read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        self.0.write(offset, data, fua).await
    }
    async fn flush(&self) -> DeviceResult<()> {
        self.0.flush().await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceResult<()> {
        self.0.write_zeroes(offset, len, flags).await
    }
    async fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceResult<()> {
        self.0.trim(offset, len, fua).await
    }
    async fn extents(&self, offset: u64, len: u64) -> DeviceResult<Vec<Extent>> {
        self.0.extents(offset, len).await
    }
}
