//! The drivers of a copy.
//!
//! * Both ends random access ([`run`]): `workers` tasks each take the next
//!   [`Work`] from the shared [`Planner`] (the one that finds it empty asks
//!   the source for the next window of its map), read into their own
//!   buffer, drop all-zero blocks, and write. Memory is bounded by
//!   `workers × request size`. The first error stops every worker.
//! * To a stream ([`to_stream`]: a pipe, socket or terminal, no seeking):
//!   reads are still pipelined (`workers` in flight, as tasks), but their
//!   data is written out in offset order; zero ranges become zero bytes.
//! * From a stream ([`from_stream`]): the input is cut into request-size
//!   chunks in order; up to `workers` chunks are written to the
//!   destination at once. The size is known only at the end of the input,
//!   so a destination that is too small is found when the input goes past
//!   its end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

use super::ends::{zeroes, Reader, Writer};
use super::plan::{runs, Planner, Work};
use super::{describe, EndError, EndResult, Progress};
use crate::device::run_blocking;

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

enum Pending {
    Read(u64, JoinHandle<EndResult<Vec<u8>>>),
    Zero(u64),
}

/// Random-access source → stream, in order.
pub(crate) async fn to_stream(job: Arc<Job>, mut out: File, workers: usize) -> EndResult<()> {
    let write_err = |e: std::io::Error| EndError::destination(describe(&e));
    let mut window: VecDeque<Pending> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut planned_all = false;
    loop {
        while !planned_all && window.len() < workers.max(1) {
            match job.next().await? {
                Some(Work::Data { offset, len }) => {
                    let (src, mut buf) = (job.src.clone(), spare.pop().unwrap_or_default());
                    buf.resize(len as usize, 0);
                    window.push_back(Pending::Read(len, tokio::spawn(async move { src.read(offset, buf).await })));
                }
                Some(Work::Zero { len, .. }) => window.push_back(Pending::Zero(len)),
                None => planned_all = true,
            }
        }
        let Some(next) = window.pop_front() else { break };
        let len = match next {
            Pending::Read(len, task) => {
                let data = task.await.map_err(|e| EndError::source(format!("read task failed: {e}")))??;
                run_blocking(|| out.write_all(&data)).map_err(write_err)?;
                spare.push(data);
                len
            }
            Pending::Zero(len) => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeroes().len() as u64) as usize;
                    run_blocking(|| out.write_all(&zeroes()[..n])).map_err(write_err)?;
                    left -= n as u64;
                }
                len
            }
        };
        job.sink.progress.add(len);
    }
    run_blocking(|| out.flush()).map_err(write_err)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Stream → random-access destination. Returns the bytes copied.
pub(crate) async fn from_stream(sink: Arc<Sink>, mut input: File, request: usize, workers: usize) -> EndResult<u64> {
    let read_err = |e: std::io::Error| EndError::source(describe(&e));
    let limit = sink.dst.size();
    let mut set: JoinSet<EndResult<Vec<u8>>> = JoinSet::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut buf = spare.pop().unwrap_or_default();
        buf.resize(request, 0);
        let n = run_blocking(|| fill(&mut input, &mut buf)).map_err(read_err)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if let Some(size) = limit.filter(|&size| offset + n as u64 > size) {
            return Err(EndError::too_small(offset + n as u64, size));
        }
        while set.len() >= workers.max(1) {
            spare.push(joined(set.join_next().await)?);
        }
        let sink = sink.clone();
        set.spawn(async move {
            sink.put(offset, &buf).await?;
            sink.progress.add(buf.len() as u64);
            Ok(buf)
        });
        offset += n as u64;
        if n < request {
            break;
        }
    }
    while !set.is_empty() {
        joined(set.join_next().await)?;
    }
    Ok(offset)
}

fn joined(r: Option<Result<EndResult<Vec<u8>>, tokio::task::JoinError>>) -> EndResult<Vec<u8>> {
    match r {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(EndError::destination(format!("write task failed: {e}"))),
        None => Ok(Vec::new()),
    }
}

/// Stream → stream: a plain copy.
pub(crate) async fn stream_to_stream(mut input: File, mut out: File, progress: &Progress) -> EndResult<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = run_blocking(|| fill(&mut input, &mut buf)).map_err(|e| EndError::source(describe(&e)))?;
        if n == 0 {
            break;
        }
        run_blocking(|| out.write_all(&buf[..n])).map_err(|e| EndError::destination(describe(&e)))?;
        total += n as u64;
        progress.add(n as u64);
    }
    run_blocking(|| out.flush()).map_err(|e| EndError::destination(describe(&e)))?;
    Ok(total)
}
