//! Captive mode, `--run CMD`: once the server listens, CMD runs through
//! `/bin/sh -c` with the server's address in its environment; when it
//! exits, the server shuts down and nbdx exits with CMD's status (128 + N
//! if signal N killed it, as a shell reports). SIGINT and SIGTERM received
//! meanwhile are passed on to CMD, whose exit still ends the server.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::endpoint::Endpoint;
use crate::util::{CliResult, Signals};

/// The variables CMD finds, as nbdkit sets them: `uri` and `nbd` (the
/// same URI), `exportname`, and `port` or `unixsocket` (the other one
/// empty).
pub(crate) fn environment(endpoint: &Endpoint, uri: &str, export: &str) -> Vec<(&'static str, String)> {
    let (port, unixsocket) = match endpoint {
        Endpoint::Tcp { port, .. } => (port.to_string(), String::new()),
        Endpoint::Unix(path) => (String::new(), path.to_string_lossy().into_owned()),
    };
    vec![
        ("uri", uri.to_owned()),
        ("nbd", uri.to_owned()),
        ("exportname", export.to_owned()),
        ("port", port),
        ("unixsocket", unixsocket),
    ]
}

/// Runs `command` with `env` added to the environment and waits for it,
/// passing SIGINT/SIGTERM on. Returns the exit status nbdx exits with.
pub(crate) async fn run(command: &str, env: &[(&'static str, String)], signals: &mut Signals) -> CliResult<u8> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // If nbdx fails while CMD runs, CMD must not outlive the server.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("--run: cannot start /bin/sh: {e}"))?;
    tracing::info!(command, pid = child.id(), "running");
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| format!("--run: waiting for the command: {e}"))?,
            signal = signals.next() => {
                // Not yet reaped (wait has not returned), so the pid is
                // still the child's.
                if let Some(pid) = child.id() {
                    tracing::info!(signal, pid, "passing the signal on to the command");
                    // SAFETY: kill takes a pid and a signal number by value.
                    unsafe { libc::kill(pid as libc::pid_t, signal) };
                }
            }
        }
    };
    tracing::info!(%status, "the command exited");
    Ok(exit_code(status))
}

/// A shell's `$?` for `status`: the exit code, or 128 + the signal number.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_passed_on_and_signals_become_128_plus_their_number() {
        // wait(2) statuses: the code in the second byte, or the signal.
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(1 << 8)), 1);
        assert_eq!(exit_code(ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }

    #[test]
    fn the_command_finds_the_uri_and_either_the_port_or_the_socket() {
        let tcp = environment(&Endpoint::Tcp { host: "localhost".into(), port: 10809 }, "nbd://localhost:10809/", "");
        assert!(tcp.contains(&("port", "10809".into())) && tcp.contains(&("unixsocket", String::new())));
        let unix = environment(&Endpoint::Unix("/t/s".into()), "nbd+unix:///x?socket=/t/s", "x");
        assert!(unix.contains(&("unixsocket", "/t/s".into())) && unix.contains(&("port", String::new())));
        assert!(unix.contains(&("uri", "nbd+unix:///x?socket=/t/s".into())));
        assert!(unix.contains(&("nbd", "nbd+unix:///x?socket=/t/s".into())));
        assert!(unix.contains(&("exportname", "x".into())));
    }

    #[tokio::test]
    async fn the_command_runs_with_its_environment_and_its_status_is_returned() {
        let env = environment(&Endpoint::Unix("/t/s".into()), "nbd+unix:///?socket=/t/s", "");
        let mut signals = Signals::install();
        let ok = run(r#"test "$nbd" = "$uri" && test "$unixsocket" = /t/s && test -z "$port""#, &env, &mut signals);
        assert_eq!(ok.await.unwrap(), 0);
        assert_eq!(run("exit 7", &env, &mut signals).await.unwrap(), 7);
        assert_eq!(run("kill -9 $$", &env, &mut signals).await.unwrap(), 137);
    }
}
