//! `nbdx serve`: serve one or more exports until SIGINT/SIGTERM.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use nbdx::server::{Listener, Server, ServerOptions};
use nbdx::source::Source;
use nbdx::Export;

use crate::tls_args::{TlsArgs, TlsArgsError};
use crate::util::{runtime, termination, uri_escape, CliResult};

/// Arguments of `nbdx serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// What to serve: memory:SIZE, null:SIZE, file:PATH or PATH (SIZE in
    /// bytes or with K/M/G/T). Default: memory:1G.
    #[arg(value_name = "SOURCE")]
    source: Option<Source>,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'U', long = "unix", value_name = "PATH")]
    unix: Option<PathBuf>,
    /// TCP port.
    #[arg(short, long, default_value_t = nbdx::proto::consts::DEFAULT_PORT, conflicts_with = "unix")]
    port: u16,
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
    tls: TlsArgs,
}

/// `--export NAME=SOURCE`.
fn parse_export(s: &str) -> Result<(String, Source), String> {
    let (name, source) = s.split_once('=').ok_or_else(|| format!("expected NAME=SOURCE, got {s:?}"))?;
    Ok((name.to_owned(), Source::parse(source).map_err(|e| e.to_string())?))
}

/// The exports `args` describe, the first being the default.
fn exports(args: &ServeArgs) -> CliResult<Vec<Export>> {
    let mut specs: Vec<(String, Source)> = Vec::new();
    if args.source.is_some() || args.exports.is_empty() {
        specs.push((args.export_name.clone().unwrap_or_default(), args.source.clone().unwrap_or_default()));
    }
    specs.extend(args.exports.iter().cloned());
    let mut out = Vec::with_capacity(specs.len());
    for (name, source) in specs {
        let device = source.open(args.read_only).map_err(|e| e.to_string())?;
        let tls_only = args.tls.is_tls_only(&name);
        let mut export = Export::from_arc(name, device).with_read_only(args.read_only).with_tls_only(tls_only);
        if let Some(d) = &args.description {
            export = export.with_description(d.clone());
        }
        out.push(export);
    }
    Ok(out)
}

/// Binds a Unix socket, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path) -> CliResult<Listener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err();
        if !stale {
            return Err(format!("{}: already exists", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Listener::Unix(l))
}

/// The URI a client uses to reach the default export.
fn uri(args: &ServeArgs, name: &str, port: u16) -> String {
    let scheme = args.tls.scheme(name);
    let name = uri_escape(name);
    match &args.unix {
        Some(path) => format!("{scheme}+unix:///{name}?socket={}", uri_escape(&path.to_string_lossy())),
        None => {
            let host = match args.ip {
                Some(IpAddr::V6(v6)) => format!("[{v6}]"),
                Some(ip) if !ip.is_unspecified() => ip.to_string(),
                _ => "localhost".to_owned(),
            };
            format!("{scheme}://{host}:{port}/{name}")
        }
    }
}

pub(crate) fn run(args: ServeArgs) -> CliResult<ExitCode> {
    let exports = exports(&args)?;
    let default_name = exports[0].name().to_owned();
    let names: Vec<&str> = exports.iter().map(Export::name).collect();
    let tls = match args.tls.acceptor(&names) {
        Ok(tls) => tls,
        Err(TlsArgsError::Credentials(e)) => return Err(e),
        Err(TlsArgsError::Usage(e)) => {
            eprintln!("nbdx: {e} (see 'nbdx serve --help')");
            return Ok(ExitCode::from(2));
        }
    };
    let options = ServerOptions {
        // "-e NAME: only that name is served"; with --export the first
        // export is also the default.
        default_export: args.export_name.is_none() || !args.exports.is_empty(),
        ..ServerOptions::default()
    };
    let mut builder = exports.into_iter().fold(Server::builder(), |b, e| b.export(e)).options(options);
    if let Some((mode, acceptor)) = tls {
        builder = builder.tls(mode, acceptor);
    }
    let server = builder.build().map_err(|e| e.to_string())?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = match &args.unix {
            Some(path) => bind_unix(path)?,
            None => Listener::bind_tcp(args.ip, args.port).map_err(|e| format!("port {}: {e}", args.port))?,
        };
        let port = listener.local_port().unwrap_or(args.port);
        if let Some(pidfile) = &args.pidfile {
            std::fs::write(pidfile, format!("{}\n", std::process::id()))
                .map_err(|e| format!("{}: {e}", pidfile.display()))?;
        }
        println!("{}", uri(&args, &default_name, port));
        let token = server.shutdown_token();
        tokio::spawn(async move {
            termination().await;
            tracing::info!("shutting down");
            token.cancel();
        });
        let served = server.serve(listener).await;
        if let Some(path) = &args.unix {
            let _ = std::fs::remove_file(path);
        }
        if let Some(pidfile) = &args.pidfile {
            let _ = std::fs::remove_file(pidfile);
        }
        served.map_err(|e| format!("serving failed: {e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}
