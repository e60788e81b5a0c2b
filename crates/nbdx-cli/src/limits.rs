//! The resource limits of `nbdx serve` (`--max-connections`,
//! `--max-in-flight`, `--handshake-timeout`, `--stall-timeout`,
//! `--shutdown-grace`), each defaulting to [`ServerOptions::default`].
//!
//! nbdkit has no flags for these (its closest is the `limit` filter's
//! `limit=N` for connections; qemu-nbd has `--shared=N`), so the names say
//! what they bound. Times are in seconds and may be fractional.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Args;
use nbdx::server::ServerOptions;

/// A time in seconds on the command line (`10`, `0.5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
        if secs.is_nan() || secs < 0.0 {
            return Err(format!("{s:?}: a time cannot be negative"));
        }
        Duration::try_from_secs_f64(secs).map(Self).map_err(|_| format!("{s:?}: too many seconds"))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A time limit: more than zero seconds.
fn timeout(s: &str) -> Result<Seconds, String> {
    let t: Seconds = s.parse()?;
    if t.0.is_zero() {
        return Err(format!("{s:?}: a time limit must be more than 0 seconds"));
    }
    Ok(t)
}

fn defaults() -> ServerOptions {
    ServerOptions::default()
}

/// Limits that protect the server from clients (see docs/security.md).
#[derive(Debug, Clone, Args)]
pub(crate) struct LimitArgs {
    /// Clients served at once; clients beyond it are disconnected at once.
    #[arg(long, value_name = "N", default_value_t = defaults().max_connections,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,
    /// Requests one client may have in flight; more wait (the server stops
    /// reading until replies are sent).
    #[arg(long, value_name = "N", default_value_t = defaults().max_in_flight,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_in_flight: usize,
    /// Seconds a client may take for the whole handshake.
    #[arg(long, value_name = "SECS", default_value_t = Seconds(defaults().handshake_timeout), value_parser = timeout)]
    pub handshake_timeout: Seconds,
    /// Seconds a client may stall in the middle of a request, or without
    /// reading its replies, before it is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = Seconds(defaults().stall_timeout), value_parser = timeout)]
    pub stall_timeout: Seconds,
    /// Seconds requests in flight get to finish after SIGTERM or SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = Seconds(defaults().grace_period))]
    pub shutdown_grace: Seconds,
}

impl LimitArgs {
    /// `base` with these limits.
    pub(crate) fn apply(&self, base: ServerOptions) -> ServerOptions {
        ServerOptions {
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            handshake_timeout: self.handshake_timeout.0,
            stall_timeout: self.stall_timeout.0,
            grace_period: self.shutdown_grace.0,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn options(args: &[&str]) -> Result<ServerOptions, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("nbdx").chain(args.iter().copied()))?;
        Ok(cli.limits.apply(ServerOptions::default()))
    }

    #[test]
    fn without_flags_the_library_defaults_apply() {
        let (got, want) = (options(&[]).unwrap(), ServerOptions::default());
        assert_eq!(got.max_connections, want.max_connections);
        assert_eq!(got.max_in_flight, want.max_in_flight);
        assert_eq!(got.handshake_timeout, want.handshake_timeout);
        assert_eq!(got.stall_timeout, want.stall_timeout);
        assert_eq!(got.grace_period, want.grace_period);
    }

    #[test]
    fn every_flag_reaches_the_server_options() {
        let o = options(&[
            "--max-connections=3",
            "--max-in-flight",
            "7",
            "--handshake-timeout=1.5",
            "--stall-timeout=2",
            "--shutdown-grace=0",
        ])
        .unwrap();
        assert_eq!((o.max_connections, o.max_in_flight), (3, 7));
        assert_eq!(o.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(o.stall_timeout, Duration::from_secs(2));
        assert_eq!(o.grace_period, Duration::ZERO);
    }

    #[test]
    fn zero_negative_and_malformed_limits_are_refused() {
        for bad in [
            &["--max-connections=0"][..],
            &["--max-in-flight=0"],
            &["--max-in-flight=-1"],
            &["--handshake-timeout=0"],
            &["--stall-timeout=-2"],
            &["--stall-timeout=NaN"],
            &["--shutdown-grace=-1"],
            &["--shutdown-grace=soon"],
            &["--handshake-timeout=1e30"],
        ] {
            assert!(options(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_help_shows_each_default() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        for flag in
            ["--max-connections", "--max-in-flight", "--handshake-timeout", "--stall-timeout", "--shutdown-grace"]
        {
            let at = help.find(flag).unwrap_or_else(|| panic!("{flag} is not in the help"));
            let entry = help[at + flag.len()..].split("\n  ").take_while(|l| !l.trim_start().starts_with('-'));
            let entry: String = entry.collect();
            assert!(entry.contains("[default: "), "{flag}: {entry}");
        }
    }
}
