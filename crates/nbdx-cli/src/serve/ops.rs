//! The operational options of `nbdx serve` and the life of a listening
//! server: bind (or take the sockets of socket activation), write the
//! pidfile, print the URI, serve until a signal or until the captive
//! command exits, clean up.
//!
//! The URI is printed on stdout by default, as soon as connections are
//! accepted (the contract scripts rely on). With `--run`, stdout belongs
//! to the command, and with socket activation the caller chose the
//! address: the URI is then printed only with `--print-uri`. With `-s`,
//! stdout carries the NBD session and nothing else is printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use nbdx::server::Server;
use socket2::Socket;
use tokio::task::JoinSet;

use super::activation::{self, Activated};
use super::endpoint::{self, Bound};
use super::parent::Parent;
use super::{captive, single, ServeArgs};
use crate::util::{CliResult, Signals};

/// The end of `nbdx serve --help` and of nbdx-serve(1).
pub(crate) const AFTER_HELP: &str = "\
Modes:
  By default nbdx listens (TCP port 10809, or -U PATH), prints the URI of the first export on \
stdout once connections are accepted, and serves until SIGINT or SIGTERM. With --run or socket \
activation the URI is printed only with --print-uri.
  --run CMD (captive): CMD runs through /bin/sh -c once the server listens, with $uri and $nbd \
(the URI), $exportname, and $port or $unixsocket (the other empty). When CMD exits the server \
stops and nbdx exits with CMD's status (128+N if signal N killed it); SIGINT/SIGTERM are passed \
on to CMD. Use -U - for a private socket.
  -s (single): one NBD session on stdin/stdout (inetd, ssh, systemd Accept=yes), then exit. \
Nothing else is written to stdout.
  Socket activation: when LISTEN_PID is nbdx's pid, the LISTEN_FDS sockets from fd 3 on are \
served (-U, -p, -i, -s and --run are then refused). A passed connected socket is served as one \
client. See contrib/nbdx.socket and contrib/nbdx.service.
  --exit-with-parent: SIGTERM when the parent exits (Linux prctl PR_SET_PDEATHSIG). The kernel \
ties this to the parent's thread that started nbdx: start nbdx from a long-lived thread.

Layers (--layer, repeatable) stack on every export, the first closest to the device: \
--layer cow --layer log=FILE logs what clients send. With cow the source is opened read-only.
  cow                    writes go to a sparse overlay in memory; the source is never written
  cow=FILE               the same, with the overlay kept in FILE (reopened next time)
  delay=READ_MS[:WRITE]  added latency to reads (and to writes, trims, zeroes)
  error=RATE[:ERRNO[:SEED]]  fail RATE (0..1) of the requests with ERRNO (default EIO)
  log=FILE               one line per request and completion (nbdkit log filter style)
  readahead              prefetch ahead of sequential reads

Logs go to stderr: -v (info: connections, exports opened with the negotiated options), -vv \
(debug: every request), -vvv (trace); RUST_LOG (e.g. RUST_LOG=nbdx=debug) overrides.";

/// Options for running the server from scripts, supervisors and services.
#[derive(Debug, Args)]
#[command(next_help_heading = "Operation")]
pub(crate) struct OpsArgs {
    /// Captive mode: once listening, run CMD with `sh -c` (with $uri, $nbd,
    /// $exportname and $port or $unixsocket set), then stop and exit with
    /// its status. With `-U -` the socket is private.
    #[arg(long, value_name = "CMD")]
    pub(crate) run: Option<String>,
    /// Serve one client on stdin/stdout (inetd, ssh), then exit.
    #[arg(short, long, conflicts_with_all = ["unix", "port", "ip", "run"])]
    pub(crate) single: bool,
    /// Exit when the parent process exits (Linux; tied to the parent's
    /// thread that started nbdx).
    #[arg(long)]
    pub(crate) exit_with_parent: bool,
    /// Print the URI on stdout also with --run or socket activation
    /// (otherwise it is always printed).
    #[arg(long, conflicts_with = "single")]
    pub(crate) print_uri: bool,
}

/// A pidfile, removed when dropped.
#[derive(Debug)]
pub(crate) struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Writes this process's id to `path`, if given.
    pub(crate) fn write(path: Option<&Path>) -> CliResult<Self> {
        if let Some(path) = path {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Self(path.map(Path::to_owned)))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves on the sockets passed by socket activation or on what `-U`,
/// `-i`, `-p` ask for, until SIGINT/SIGTERM (or the end of the captive
/// command).
pub(crate) async fn serve(
    server: Server,
    args: &ServeArgs,
    activated: Option<Vec<Socket>>,
    parent: Parent,
) -> CliResult<ExitCode> {
    let mut signals = Signals::install();
    if args.ops.exit_with_parent && !parent.exit_with()? {
        tracing::info!("the parent process has already exited");
        return Ok(ExitCode::SUCCESS);
    }
    // Printed when nbdx chose the address itself and stdout is not the
    // captive command's: a service manager knows where it listens.
    let print_uri = args.ops.print_uri || (args.ops.run.is_none() && activated.is_none());
    let bound = match activated {
        Some(sockets) => match activation::adopt_all(sockets)? {
            Activated::Listeners(bound) => bound,
            Activated::Connection(stream) => {
                let _pidfile = PidFile::write(args.pidfile.as_deref())?;
                single::serve_stream(&server, stream, "activated", signals).await?;
                return Ok(ExitCode::SUCCESS);
            }
        },
        None => vec![endpoint::bind(args.unix.as_deref(), args.ip, args.port)?],
    };
    let export = server.exports()[0].name().to_owned();
    let endpoint = bound[0].endpoint.clone();
    let uri = args.tls.uri(endpoint.uri(&export), &export);
    let _pidfile = PidFile::write(args.pidfile.as_deref())?;
    if print_uri {
        println!("{uri}");
    }

    let mut cleanups = Vec::with_capacity(bound.len());
    let mut serving = JoinSet::new();
    for Bound { listener, cleanup, .. } in bound {
        cleanups.push(cleanup);
        let server = server.clone();
        serving.spawn(async move { server.serve(listener).await });
    }
    let until = async {
        match &args.ops.run {
            Some(command) => {
                let env = captive::environment(&endpoint, &uri, &export);
                captive::run(command, &env, &mut signals).await
            }
            None => {
                signals.next().await;
                tracing::info!("shutting down");
                Ok(0)
            }
        }
    };
    // Serving only ends early when accepting fails for good.
    let (code, failed) = tokio::select! {
        code = until => (code?, None),
        Some(ended) = serving.join_next() => (1, Some(ended)),
    };
    server.shutdown();
    let mut ended: Vec<_> = failed.into_iter().collect();
    while let Some(result) = serving.join_next().await {
        ended.push(result);
    }
    let error = ended.into_iter().find_map(|result| match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("serving failed: {e}")),
        Err(e) => Some(format!("serving failed: {e}")),
    });
    drop(cleanups);
    match error {
        // The command's failure is the one to report; it was its own.
        Some(e) if code == 0 || args.ops.run.is_none() => Err(e),
        Some(e) => {
            eprintln!("nbdx: {e}");
            Ok(ExitCode::from(code))
        }
        None => Ok(ExitCode::from(code)),
    }
}
