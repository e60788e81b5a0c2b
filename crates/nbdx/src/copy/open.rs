//! [`copy`]: opens both ends in the order that keeps the destination
//! untouched until every check passed, picks the driver (random access or
//! stream), then flushes and disconnects.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::ends::{NullWriter, Reader, Writer};
use super::engine::{self, Job, Sink};
use super::file::{classify, identity, FileReader, Opened, PendingFile};
use super::nbd::{connect, NbdReader, NbdWriter};
use super::plan::Planner;
use super::{describe, EndError, EndResult};
use super::{CopyError, CopyOptions, CopyReport, Endpoint, Progress};

/// The source, open.
enum Input {
    Random(Arc<dyn Reader>),
    Stream(File),
}

/// The destination, open and checked but not changed yet.
enum Output {
    Nbd(NbdWriter),
    File(PendingFile),
    Null,
    Stream(File),
}

/// The destination, ready for writing.
enum Ready {
    Random(Arc<dyn Writer>),
    Stream(File),
}

/// Copies `src` to `dst`. `progress` is updated as bytes are done.
///
/// Refused before anything is opened: `null:` as the source, and the same
/// file on both ends. Refused before anything is written: a destination
/// that is read-only or smaller than the source.
pub async fn copy(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyReport, CopyError> {
    let (src_name, dst_name) = (src.name(), dst.name());
    if matches!(src, Endpoint::Null) {
        return Err(CopyError::Invalid("null: can only be the destination".into()));
    }
    if let (Endpoint::File(a), Endpoint::File(b)) = (src, dst) {
        if identity(a).is_some_and(|id| Some(id) == identity(b)) {
            return Err(CopyError::Invalid(format!("{} and {} are the same file", a.display(), b.display())));
        }
    }
    run(src, dst, opts, progress).await.map_err(|e| e.named(&src_name, &dst_name))
}

async fn run(src: &Endpoint, dst: &Endpoint, opts: &CopyOptions, progress: Arc<Progress>) -> EndResult<CopyReport> {
    let conns = opts.connections.max(1);
    let input = open_input(src, conns).await?;
    let output = open_output(dst, conns).await?;
    let src_size = match &input {
        Input::Random(r) => Some(r.size()),
        Input::Stream(_) => None,
    };
    if let (Some(size), Some(limit)) = (src_size, output.limit()) {
        if limit < size {
            return Err(EndError::too_small(size, limit));
        }
    }
    let dst_conns = match &output {
        Output::Nbd(w) => w.client.connections(),
        _ => 1,
    };
    let ready = output.prepare(src_size, opts.destination_is_zero)?;
    let src_conns = match &input {
        Input::Random(r) => r.connections(),
        Input::Stream(_) => 1,
    };
    let per_side = |n: usize, nbd: bool| if nbd { n } else { conns };
    let src_is_nbd = matches!(src, Endpoint::Nbd { .. });
    let dst_is_nbd = matches!(dst, Endpoint::Nbd { .. });
    let workers = opts.requests.max(1) * per_side(src_conns, src_is_nbd).min(per_side(dst_conns, dst_is_nbd));
    let mut report =
        CopyReport { bytes: 0, data: 0, source_connections: src_conns, destination_connections: dst_conns, workers };
    if let Some(size) = src_size {
        progress.set_total(size);
    }
    let (reader, writer) = match (input, ready) {
        (Input::Random(reader), Ready::Random(writer)) => {
            let job = job(reader.clone(), writer.clone(), opts, progress);
            engine::run(job.clone(), workers).await?;
            (report.bytes, report.data) = (reader.size(), job.sink.data.load(Ordering::Relaxed));
            (Some(reader), Some(writer))
        }
        (Input::Random(reader), Ready::Stream(out)) => {
            let job = job(reader.clone(), Arc::new(NullWriter), opts, progress);
            let copied = tokio::spawn(engine::to_stream(job, out, workers));
            copied.await.map_err(|e| EndError::destination(format!("copy task failed: {e}")))??;
            (report.bytes, report.data) = (reader.size(), reader.size());
            (Some(reader), None)
        }
        (Input::Stream(input), Ready::Random(writer)) => {
            let sink = Arc::new(sink(writer.clone(), opts, progress));
            let request = request_size(opts, 1, writer.alignment()) as usize;
            let copied = tokio::spawn(engine::from_stream(sink.clone(), input, request, workers));
            report.bytes = copied.await.map_err(|e| EndError::source(format!("copy task failed: {e}")))??;
            report.data = sink.data.load(Ordering::Relaxed);
            writer.end(report.bytes).await?;
            (None, Some(writer))
        }
        (Input::Stream(input), Ready::Stream(out)) => {
            let copied = tokio::spawn(async move { engine::stream_to_stream(input, out, &progress).await });
            report.bytes = copied.await.map_err(|e| EndError::source(format!("copy task failed: {e}")))??;
            report.data = report.bytes;
            (None, None)
        }
    };
    if let Some(w) = &writer {
        w.flush().await?;
        w.close().await;
    }
    if let Some(r) = &reader {
        r.close().await;
    }
    Ok(report)
}

/// Request size: a multiple of both ends' alignment.
fn request_size(opts: &CopyOptions, src_align: u64, dst_align: u64) -> u64 {
    let align = src_align.max(dst_align).max(1);
    (opts.request_size as u64).max(align) / align * align
}

fn sink(dst: Arc<dyn Writer>, opts: &CopyOptions, progress: Arc<Progress>) -> Sink {
    let skip_zeroes = dst.known_zero() || opts.destination_is_zero;
    Sink { dst, progress, skip_zeroes, sparse: opts.sparse, data: AtomicU64::new(0) }
}

fn job(src: Arc<dyn Reader>, dst: Arc<dyn Writer>, opts: &CopyOptions, progress: Arc<Progress>) -> Arc<Job> {
    let (src_align, dst_align) = (src.alignment(), dst.alignment());
    let request = request_size(opts, src_align, dst_align);
    let planner = Planner::new(src.size(), request, src_align.max(dst_align));
    let planner = Mutex::new(if opts.extents { planner } else { planner.without_map() });
    Arc::new(Job { src, planner, sink: sink(dst, opts, progress) })
}

/// Standard input or output as a file of its own (the descriptor is duplicated).
fn std_file(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

async fn open_input(src: &Endpoint, conns: usize) -> EndResult<Input> {
    let err = |e: std::io::Error| EndError::source(describe(&e));
    let opened = match src {
        Endpoint::Nbd { uri, options } => {
            let client = connect(uri, options, conns).await.map_err(EndError::source)?;
            return Ok(Input::Random(Arc::new(NbdReader::new(client, true))));
        }
        Endpoint::File(path) => classify(File::open(path).map_err(err)?).map_err(err)?,
        Endpoint::Stdio => classify(std_file(std::io::stdin().as_fd()).map_err(err)?).map_err(err)?,
        Endpoint::Null => return Err(EndError::source("null: can only be the destination")),
    };
    match opened {
        Opened::Random(file) => Ok(Input::Random(Arc::new(FileReader::new(file)?))),
        Opened::Stream(file) => Ok(Input::Stream(file)),
    }
}

async fn open_output(dst: &Endpoint, conns: usize) -> EndResult<Output> {
    let err = |e: std::io::Error| EndError::destination(describe(&e));
    let opened = match dst {
        Endpoint::Nbd { uri, options } => {
            let client = connect(uri, options, conns).await.map_err(EndError::destination)?;
            return Ok(Output::Nbd(NbdWriter::new(client, false)?));
        }
        Endpoint::Null => return Ok(Output::Null),
        Endpoint::File(path) => PendingFile::open(path)?,
        Endpoint::Stdio => classify(std_file(std::io::stdout().as_fd()).map_err(err)?).map_err(err)?,
    };
    match opened {
        Opened::Random(file) => Ok(Output::File(PendingFile::new(file)?)),
        Opened::Stream(file) => Ok(Output::Stream(file)),
    }
}

impl Output {
    /// The most the destination can hold, if limited.
    fn limit(&self) -> Option<u64> {
        match self {
            Self::Nbd(w) => w.size(),
            Self::File(f) => f.limit(),
            Self::Null | Self::Stream(_) => None,
        }
    }

    /// Readies the destination for `len` bytes (the source size; `None`
    /// for a stream, of which a destination file takes the length).
    fn prepare(self, len: Option<u64>, assume_zero: bool) -> EndResult<Ready> {
        Ok(match self {
            Self::Nbd(mut w) => {
                w.known_zero = assume_zero;
                Ready::Random(Arc::new(w))
            }
            Self::File(f) => Ready::Random(f.prepare(len, assume_zero)?),
            Self::Null => Ready::Random(Arc::new(NullWriter)),
            Self::Stream(file) => Ready::Stream(file),
        })
    }
}
