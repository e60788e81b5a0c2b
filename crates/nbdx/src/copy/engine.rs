//! The parallel copy between two random-access ends: `workers` tasks each
//! take the next [`Work`] from the shared [`Planner`] (the one that finds
//! it empty asks the source for the next window of its map), read into
//! their own buffer, drop all-zero blocks, and write. Memory is bounded by
//! `workers × request size`. The first error stops every worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::ends::{Reader, Writer};
use super::error::{EndError, EndResult};
use super::plan::{runs, Planner, Work};
use super::Progress;

/// The destination side of a copy: zero ranges and zero detection.
pub(crate) struct Sink {
    pub dst: Arc<dyn Writer>,
    pub progress: Arc<Progress>,
    /// Zero ranges need no request (the destination reads as zeroes).
    pub skip_zeroes: bool,
    /// Block size of zero detection in data (0: off).
    pub sparse: usize,
    /// Bytes written as data.
    pub data: AtomicU64,
}

/// What the workers share.
pub(crate) struct Job {
    pub src: Arc<dyn Reader>,
    pub planner: Mutex<Planner>,
    pub sink: Sink,
}

impl Job {
    /// The next item, fetching more of the map when needed.
    pub async fn next(&self) -> EndResult<Option<Work>> {
        let mut planner = self.planner.lock().await;
        loop {
            if let Some(w) = planner.pop() {
                return Ok(Some(w));
            }
            if planner.finished() {
                return Ok(None);
            }
            let (offset, len) = planner.window();
            let extents = self.src.extents(offset, len).await?;
            if !planner.feed(&extents) {
                return Err(EndError::source(format!("block status at offset {offset} described no bytes")));
            }
        }
    }

    /// Copies one item, reading into `buf` (returned for reuse).
    pub async fn run(&self, work: Work, mut buf: Vec<u8>) -> EndResult<Vec<u8>> {
        match work {
            Work::Zero { offset, len } => self.sink.zero(offset, len).await?,
            Work::Data { offset, len } => {
                buf.resize(len as usize, 0);
                buf = self.src.read(offset, buf).await?;
                self.sink.put(offset, &buf).await?;
            }
        }
        self.sink.progress.add(work.len());
        Ok(buf)
    }
}

impl Sink {
    /// Zeroes a range at the destination unless it already reads as zeroes.
    pub async fn zero(&self, offset: u64, len: u64) -> EndResult<()> {
        match self.skip_zeroes {
            true => Ok(()),
            false => self.dst.zero(offset, len).await,
        }
    }

    /// Writes data read at `offset`, its all-zero blocks as zero ranges.
    pub async fn put(&self, offset: u64, data: &[u8]) -> EndResult<()> {
        for (start, end, zero) in runs(offset, data, self.sparse) {
            let (at, len) = (offset + start as u64, (end - start) as u64);
            let align = self.dst.alignment();
            if zero && at % align == 0 && len % align == 0 {
                self.zero(at, len).await?;
            } else {
                self.dst.write(at, &data[start..end]).await?;
                self.data.fetch_add(len, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

async fn worker(job: Arc<Job>) -> EndResult<()> {
    let mut buf = Vec::new();
    while let Some(work) = job.next().await? {
        buf = job.run(work, buf).await?;
    }
    Ok(())
}

/// Runs `workers` workers to the end or to the first error.
pub(crate) async fn run(job: Arc<Job>, workers: usize) -> EndResult<()> {
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        set.spawn(worker(job.clone()));
    }
    while let Some(joined) = set.join_next().await {
        let result = joined.unwrap_or_else(|e| Err(EndError::source(format!("copy task failed: {e}"))));
        if let Err(e) = result {
            set.abort_all();
            return Err(e);
        }
    }
    Ok(())
}
