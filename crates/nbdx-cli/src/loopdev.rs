//! `nbdx loop [SOURCE] [--size SIZE] [--run CMD]`: serve SOURCE in this
//! process and attach it as `/dev/nbdN` (over socketpairs, no network).
//!
//! Prints the device path once it is usable. Without `--run` it serves in
//! the foreground until SIGINT or SIGTERM, then detaches. With `--run`, CMD
//! runs through `sh -c` with `$dev` set to the device path; the device is
//! detached after CMD exits and the exit status is CMD's (128 + N when a
//! signal N ended it). On SIGINT/SIGTERM, CMD gets SIGTERM first.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

use clap::Args;
use nbdx::source::{parse_size, Source};
use nbdx_netlink::{ConfigureOptions, LoopbackOptions};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::attach::interface;
use crate::util::{runtime, CliResult};

/// Arguments of `nbdx loop`.
#[derive(Debug, Args)]
pub(crate) struct LoopArgs {
    /// What to serve: memory:SIZE, null:SIZE, file:PATH or PATH.
    /// Default: memory:1G.
    #[arg(value_name = "SOURCE")]
    source: Option<Source>,
    /// Size of the device: replaces the SIZE of memory: and null:; a file is
    /// created (sparse) or grown to SIZE if smaller, and only its first SIZE
    /// bytes are used.
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
    size: Option<u64>,
    /// Run CMD with $dev set to the device, then detach; exit with its status.
    #[arg(long, value_name = "CMD")]
    run: Option<String>,
    /// Connections (socketpairs) between the kernel and the server.
    #[arg(short = 'C', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: u16,
    /// Make the device read-only.
    #[arg(short, long)]
    read_only: bool,
}

/// SIGINT and SIGTERM, caught from the start so that neither can kill the
/// process while the device is attached.
struct Termination {
    interrupt: Signal,
    terminate: Signal,
}

impl Termination {
    fn install() -> CliResult<Self> {
        let err = |e: std::io::Error| format!("cannot catch signals: {e}");
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(err)?,
            terminate: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The source with `--size` applied; a file is created or grown first.
fn sized_source(args: &LoopArgs) -> CliResult<Source> {
    let source = args.source.clone().unwrap_or_default();
    let Some(size) = args.size else { return Ok(source) };
    Ok(match source {
        Source::Memory { .. } => Source::Memory { size },
        Source::Null { .. } => Source::Null { size },
        Source::File { path } => {
            let is_regular = std::fs::metadata(&path).map_or(true, |m| m.is_file());
            if is_regular && !args.read_only {
                let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path);
                let grown = file.and_then(|f| match f.metadata()?.len() < size {
                    true => f.set_len(size),
                    false => Ok(()),
                });
                grown.map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Source::File { path }
        }
        other => other,
    })
}

pub(crate) fn run(args: LoopArgs) -> CliResult<ExitCode> {
    let interface = interface()?;
    let source = sized_source(&args)?;
    let device = source.open(args.read_only).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let mut termination = rt.block_on(async { Termination::install() })?;
    let options = LoopbackOptions {
        connections: usize::from(args.connections),
        configure: ConfigureOptions {
            read_only: args.read_only,
            backend: Some(format!("nbdx loop {source}")),
            ..ConfigureOptions::default()
        },
        interface,
        // The loopback's own runtime: its threads are marked PR_SET_IO_FLUSHER,
        // so reclaim never waits on writeback to the device they serve.
        runtime: None,
        ..LoopbackOptions::default()
    };
    let lo = nbdx_netlink::loopback(device, args.size, options).map_err(|e| e.to_string())?;
    let path = lo.path();
    println!("{}", path.display());
    let _ = std::io::stdout().flush();

    let status = match &args.run {
        None => {
            rt.block_on(termination.recv());
            tracing::info!("detaching");
            None
        }
        Some(command) => Some(rt.block_on(run_command(command, &path, &mut termination))),
    };
    let closed = lo.close().map_err(|e| format!("detaching {}: {e}", path.display()));
    match status {
        None => closed.map(|()| ExitCode::SUCCESS),
        Some(Err(e)) => Err(e),
        Some(Ok(status)) => {
            let code = exit_code(status);
            match closed {
                Err(e) if code == 0 => Err(e),
                Err(e) => {
                    eprintln!("nbdx: {e}");
                    Ok(ExitCode::from(code))
                }
                Ok(()) => Ok(ExitCode::from(code)),
            }
        }
    }
}

/// Runs `sh -c COMMAND` with `$dev`; on SIGINT/SIGTERM sends it SIGTERM
/// and waits for it.
async fn run_command(command: &str, dev: &std::path::Path, termination: &mut Termination) -> CliResult<ExitStatus> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("dev", dev)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let waited = tokio::select! {
        status = child.wait() => status,
        () = termination.recv() => {
            if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
                // SAFETY: kill with a pid of our own child (not yet reaped,
                // so the pid cannot have been reused) and a valid signal.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            child.wait().await
        }
    };
    waited.map_err(|e| format!("waiting for the command: {e}"))
}

/// The exit status to pass on: the code, or 128 + the signal number.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: &str, size: Option<u64>) -> LoopArgs {
        LoopArgs { source: Some(source.parse().unwrap()), size, run: None, connections: 1, read_only: false }
    }

    #[test]
    fn size_replaces_the_size_of_memory_and_null_sources() {
        assert_eq!(sized_source(&args("memory:1G", Some(4096))).unwrap(), Source::Memory { size: 4096 });
        assert_eq!(sized_source(&args("null:1G", Some(8192))).unwrap(), Source::Null { size: 8192 });
        assert_eq!(sized_source(&args("memory:1G", None)).unwrap(), Source::Memory { size: 1 << 30 });
    }

    #[test]
    fn size_creates_a_missing_file_and_grows_a_smaller_one_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let text = path.to_str().unwrap().to_owned();
        sized_source(&args(&text, Some(1 << 20))).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        sized_source(&args(&text, Some(4096))).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20, "never shrunk");
    }

    #[test]
    fn exit_codes_pass_through_and_signals_become_128_plus_n() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
