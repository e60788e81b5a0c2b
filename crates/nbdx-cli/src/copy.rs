//! `nbdx copy SOURCE DESTINATION`: like nbdcopy, over [`nbdx::copy`].

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use nbdx::copy::{copy, CopyOptions, Endpoint, Progress, DEFAULT_CONNECTIONS, DEFAULT_REQUESTS};
use nbdx::source::parse_size;
use tokio_util::sync::CancellationToken;

use crate::util::CliResult;

/// How often the progress display is updated.
const TICK: Duration = Duration::from_millis(200);

/// Arguments of `nbdx copy`.
#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// What to copy: an NBD URI (nbd://, nbd+unix://...), a file or block
    /// device, or - for standard input.
    #[arg(value_name = "SOURCE", value_parser = endpoint)]
    source: String,
    /// Where to: an NBD URI, a file (created if missing) or block device,
    /// - for standard output, or null: to discard.
    #[arg(value_name = "DESTINATION", value_parser = endpoint)]
    destination: String,
    /// Show progress on standard error: a bar on a terminal, else a
    /// percentage per line.
    #[arg(short, long)]
    progress: bool,
    /// Connections per NBD export (used if it advertises multi-conn).
    #[arg(short = 'C', long, value_name = "N", default_value_t = DEFAULT_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
    /// Requests in flight per connection.
    #[arg(short = 'R', long, value_name = "N", default_value_t = DEFAULT_REQUESTS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    requests: u32,
    /// Bytes per request (with K/M suffixes), at most 32M.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = parse_request_size)]
    request_size: usize,
    /// Blocks of SIZE bytes that are all zeroes are not written as data
    /// (0 turns detection off).
    #[arg(short = 'S', long, value_name = "SIZE", default_value = "4K", value_parser = parse_sparse)]
    sparse: usize,
    /// Do not ask the source for holes and zero ranges: read everything.
    #[arg(long)]
    no_extents: bool,
    /// Trust that the destination reads as zeroes already: skip zero ranges.
    #[arg(long, visible_alias = "target-is-zero")]
    destination_is_zero: bool,
    /// Accepted for nbdcopy compatibility: the destination is always flushed.
    #[arg(long)]
    flush: bool,
}

/// Checks SOURCE or DESTINATION at parse time (a bad one exits 2).
fn endpoint(s: &str) -> Result<String, String> {
    Endpoint::parse(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

fn parse_request_size(s: &str) -> Result<usize, String> {
    match parse_size(s).map_err(|e| e.to_string())? {
        n @ 512..=0x200_0000 => Ok(n as usize),
        n => Err(format!("request size {n} is out of range (512 bytes to 32M)")),
    }
}

fn parse_sparse(s: &str) -> Result<usize, String> {
    match parse_size(s).map_err(|e| e.to_string())? {
        n @ 0..=0x200_0000 => Ok(n as usize),
        n => Err(format!("sparse block size {n} is out of range (0 to 32M)")),
    }
}

/// Draws progress until `stop` is cancelled, then once more at the end.
async fn show_progress(progress: Arc<Progress>, stop: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let mut last_percent = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        let (done, total) = (progress.done(), progress.total());
        match &bar {
            Some(bar) => {
                bar.set_length(total.unwrap_or(done));
                bar.set_position(done);
            }
            None => {
                let percent = total.map(|t| (done * 100).checked_div(t).unwrap_or(100));
                if percent.is_some() && percent != last_percent {
                    eprintln!("{}%", percent.unwrap_or(0));
                    last_percent = percent;
                }
            }
        }
        if stopping {
            if let Some(bar) = bar {
                bar.finish();
            }
            return;
        }
    }
}

/// Request buffers come from the heap, not from a mapping of their own:
/// glibc maps every allocation above 128 KiB separately, and a copy
/// through hundreds of separately mapped 256 KiB buffers measured a fifth
/// more CPU than through heap memory (the kernel's copies into them, page
/// table walks). Raising the threshold is process-wide, which suits a
/// command that only copies.
fn heap_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator tunable; it is called
    // before the runtime threads start allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
    }
}

pub(crate) fn run(args: CopyArgs) -> CliResult<ExitCode> {
    heap_buffers();
    let opts = CopyOptions {
        connections: args.connections as usize,
        requests: args.requests as usize,
        request_size: args.request_size,
        sparse: args.sparse,
        extents: !args.no_extents,
        destination_is_zero: args.destination_is_zero,
    };
    // One worker thread per connection at least, as nbdcopy has one thread
    // per connection: on a busy machine each thread gets its share of CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(opts.connections))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(async {
        let progress = Arc::new(Progress::default());
        let stop = CancellationToken::new();
        let display = args.progress.then(|| tokio::spawn(show_progress(progress.clone(), stop.clone())));
        let (src, dst) = (Endpoint::parse(&args.source), Endpoint::parse(&args.destination));
        let (src, dst) = (src.map_err(|e| e.to_string())?, dst.map_err(|e| e.to_string())?);
        let result = copy(&src, &dst, &opts, progress).await;
        stop.cancel();
        if let Some(display) = display {
            let _ = display.await;
        }
        let report = result.map_err(|e| e.to_string())?;
        tracing::info!(?report, "copied");
        Ok(ExitCode::SUCCESS)
    })
}
