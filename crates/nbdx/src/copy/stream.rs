//! Copies where one end is a stream (a pipe, socket or terminal on
//! standard input or output): no seeking, so bytes move in order.
//!
//! * To a stream: reads are still pipelined (`workers` in flight, as
//!   tasks), but their data is written out in offset order; zero ranges
//!   become zero bytes.
//! * From a stream: the input is cut into request-size chunks in order;
//!   up to `workers` chunks are written to the destination at once. The
//!   size is known only at the end of the input, so a destination that is
//!   too small is found when the input goes past its end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use tokio::task::{JoinHandle, JoinSet};

use super::ends::zeroes;
use super::engine::{Job, Sink};
use super::error::{describe, EndError, EndResult};
use super::plan::Work;
use super::Progress;
use crate::device::run_blocking;

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
