//! Small pieces shared by the subcommands: error reporting, logging,
//! runtime, signals, URIs.

use std::process::ExitCode;

use clap::error::ErrorKind;

/// Errors of a subcommand: one line for the user.
pub(crate) type CliResult<T> = Result<T, String>;

/// Prints a clap error as one line (help and version as they are) and
/// returns the exit code: 0 for help/version, 2 for bad usage.
pub(crate) fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            eprintln!("nbdx: {first} (see 'nbdx --help')");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr: warnings by default, more with `-v`, `RUST_LOG` wins.
pub(crate) fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// The multi-threaded runtime every subcommand runs on.
pub(crate) fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("cannot start runtime: {e}"))
}

/// SIGINT and SIGTERM, caught from the moment [`Signals::install`] returns
/// (so that a signal is never lost between installing and waiting).
pub(crate) struct Signals {
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Catches SIGTERM and SIGINT from now on. Must run inside the runtime.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Self { streams: Some((term, int)) },
            // Without signal handlers there is nothing to wait for.
            _ => Self { streams: None },
        }
    }

    /// The next signal caught: `libc::SIGTERM` or `libc::SIGINT`.
    pub(crate) async fn next(&mut self) -> libc::c_int {
        let Some((term, int)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        }
    }
}

/// Percent-encodes an export name or socket path for a URI.
pub(crate) fn uri_escape(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SET: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'&')
        .add(b'=')
        .add(b'+');
    utf8_percent_encode(s, SET).to_string()
}
