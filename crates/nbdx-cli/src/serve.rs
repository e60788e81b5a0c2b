//! `nbdx serve`: serve one or more exports until SIGINT/SIGTERM, until a
//! captive command exits (`--run`), or to one client on stdin/stdout (`-s`).
//! The operational pieces live in `serve/`: listening endpoints and the
//! printed URI, socket activation, captive mode, single mode and
//! `--exit-with-parent`.

mod activation;
mod captive;
mod endpoint;
mod ops;
mod parent;
mod single;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nbdx::server::{Server, ServerOptions};
use nbdx::source::Source;
use nbdx::Export;

use self::ops::OpsArgs;
use crate::layers::LayerArgs;
use crate::limits::LimitArgs;
use crate::tls_args::TlsArgs;
use crate::util::{runtime, CliResult};

/// Arguments of `nbdx serve`.
#[derive(Debug, Args)]
#[command(after_long_help = ops::AFTER_HELP)]
pub(crate) struct ServeArgs {
    /// What to serve: memory:SIZE, null:SIZE, file:PATH or PATH (SIZE in
    /// bytes or with K/M/G/T). Default: memory:1G.
    #[arg(value_name = "SOURCE")]
    source: Option<Source>,
    /// Listen on this Unix socket instead of TCP; `-` picks a private
    /// socket in a new temporary directory, removed on exit.
    #[arg(short = 'U', long = "unix", value_name = "PATH")]
    unix: Option<PathBuf>,
    /// TCP port [default: 10809].
    #[arg(short, long, conflicts_with = "unix")]
    port: Option<u16>,
    /// Listen on this address only (default: all addresses).
    #[arg(short, long, value_name = "ADDR", conflicts_with = "unix")]
    ip: Option<IpAddr>,
    /// Name of the export made from SOURCE; only that name is served.
    #[arg(short = 'e', long = "export-name", value_name = "NAME")]
    export_name: Option<String>,
    /// Add an export (repeatable); the first export is the default.
    #[arg(long = "export", value_name = "NAME=SOURCE", value_parser = parse_export)]
    exports: Vec<(String, Source)>,
    /// Description shown to clients (nbdinfo, NBD_OPT_LIST).
    #[arg(short, long, value_name = "TEXT")]
    description: Option<String>,
    /// Refuse writes.
    #[arg(short, long)]
    read_only: bool,
    /// Write the process id here once connections are accepted.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    #[command(flatten)]
    layers: LayerArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `--export NAME=SOURCE`.
fn parse_export(s: &str) -> Result<(String, Source), String> {
    let (name, source) = s.split_once('=').ok_or_else(|| format!("expected NAME=SOURCE, got {s:?}"))?;
    Ok((name.to_owned(), Source::parse(source).map_err(|e| e.to_string())?))
}

/// The name and source of each export, the first being the default.
fn specs(args: &ServeArgs) -> Vec<(String, Source)> {
    let mut specs: Vec<(String, Source)> = Vec::new();
    if args.source.is_some() || args.exports.is_empty() {
        specs.push((args.export_name.clone().unwrap_or_default(), args.source.clone().unwrap_or_default()));
    }
    specs.extend(args.exports.iter().cloned());
    specs
}

/// The exports `args` describe, the first being the default, each with
/// the `--layer` stack on its device.
async fn exports(args: &ServeArgs) -> CliResult<Vec<Export>> {
    let specs = specs(args);
    if specs.len() > 1 && args.layers.uses_files() {
        return Err("--layer cow=FILE and log=FILE need a single export (each export would use the same file)".into());
    }
    let mut out = Vec::with_capacity(specs.len());
    for (name, source) in specs {
        let device = args.layers.open(&source, args.read_only).await?;
        let tls_only = args.tls.is_tls_only(&name);
        let mut export = Export::from_arc(name, device).with_read_only(args.read_only).with_tls_only(tls_only);
        if let Some(d) = &args.description {
            export = export.with_description(d.clone());
        }
        out.push(export);
    }
    Ok(out)
}

/// The server `args` describe.
async fn build_server(args: &ServeArgs) -> CliResult<Server> {
    let options = args.limits.apply(ServerOptions {
        // "-e NAME: only that name is served"; with --export the first
        // export is also the default.
        default_export: args.export_name.is_none() || !args.exports.is_empty(),
        ..ServerOptions::default()
    });
    let mut builder = exports(args).await?.into_iter().fold(Server::builder(), |b, e| b.export(e)).options(options);
    if let Some((mode, acceptor)) = args.tls.acceptor()? {
        builder = builder.tls(mode, acceptor);
    }
    builder.build().map_err(|e| e.to_string())
}

pub(crate) fn run(args: ServeArgs) -> CliResult<ExitCode> {
    // Before any thread exists: the environment is changed here.
    let activated = activation::take_sockets()?;
    let parent = parent::Parent::current();
    if activated.is_some() {
        if let Some(clash) = activation::clash(&args) {
            eprintln!("nbdx: socket activation (LISTEN_FDS) cannot be combined with {clash}");
            return Ok(ExitCode::from(2));
        }
    }
    let names: Vec<String> = specs(&args).into_iter().map(|(name, _)| name).collect();
    if let Some(misuse) = args.tls.misuse(&names) {
        eprintln!("nbdx: {misuse} (see 'nbdx serve --help')");
        return Ok(ExitCode::from(2));
    }
    let rt = runtime()?;
    // Devices open inside the runtime: some (s3://) talk to the network.
    let server = rt.block_on(build_server(&args))?;
    if args.ops.single {
        let served = rt.block_on(single::serve(&server, &args, parent));
        // A read of stdin may still be blocked in a thread that cannot be
        // cancelled: do not wait for it.
        rt.shutdown_background();
        return served.map(|()| ExitCode::SUCCESS);
    }
    let served = rt.block_on(ops::serve(server, &args, activated, parent));
    // Connections still running once the grace period is over are
    // abandoned: a device call stuck in the kernel must not delay the exit.
    rt.shutdown_timeout(EXIT_WAIT);
    served
}

/// How long the exit waits for tasks still running after the grace period.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
