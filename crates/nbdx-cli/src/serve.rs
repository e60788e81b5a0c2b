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
}

/// `--export NAME=SOURCE`.
fn parse_export(s: &str) -> Result<(String, Source), String> {
    let (name, source) = s.split_once('=').ok_or_else(|| format!("expected NAME=SOURCE, got {s:?}"))?;
    Ok((name.to_owned(), Source::parse(source).map_err(|e| e.to_string())?))
}

/// The exports `args` describe, the first being the default, each with
/// the `--layer` stack on its device.
fn exports(args: &ServeArgs) -> CliResult<Vec<Export>> {
    let mut specs: Vec<(String, Source)> = Vec::new();
    if args.source.is_some() || args.exports.is_empty() {
        specs.push((args.export_name.clone().unwrap_or_default(), args.source.clone().unwrap_or_default()));
    }
    specs.extend(args.exports.iter().cloned());
    if specs.len() > 1 && args.layers.uses_files() {
        return Err("--layer cow=FILE and log=FILE need a single export (each export would use the same file)".into());
    }
    let mut out = Vec::with_capacity(specs.len());
    for (name, source) in specs {
        let device = args.layers.open(&source, args.read_only)?;
        let mut export = Export::from_arc(name, device).with_read_only(args.read_only);
        if let Some(d) = &args.description {
            export = export.with_description(d.clone());
        }
        out.push(export);
    }
    Ok(out)
}

/// The server `args` describe.
fn build_server(args: &ServeArgs) -> CliResult<Server> {
    let options = ServerOptions {
        // "-e NAME: only that name is served"; with --export the first
        // export is also the default.
        default_export: args.export_name.is_none() || !args.exports.is_empty(),
        ..ServerOptions::default()
    };
    exports(args)?
        .into_iter()
        .fold(Server::builder(), |b, e| b.export(e))
        .options(options)
        .build()
        .map_err(|e| e.to_string())
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
    let server = build_server(&args)?;
    let rt = runtime()?;
    if args.ops.single {
        let served = rt.block_on(single::serve(&server, &args, parent));
        // A read of stdin may still be blocked in a thread that cannot be
        // cancelled: do not wait for it.
        rt.shutdown_background();
        return served.map(|()| ExitCode::SUCCESS);
    }
    rt.block_on(ops::serve(server, &args, activated, parent))
}
