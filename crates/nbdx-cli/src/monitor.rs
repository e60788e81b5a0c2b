//! The attach monitor: a detached process that keeps a device attached.
//!
//! `nbdx attach` starts it (the same binary, `attach ... --monitor -v`) for
//! `--dead-timeout` and for the ioctl fallback. It runs in a session of its
//! own (`setsid`), with stdin and stderr on `/dev/null` and stdout a pipe
//! to `nbdx attach`:
//!
//! 1. subscribe to `NBD_CMD_LINK_DEAD` (before CONNECT: no event is missed),
//!    negotiate, configure the device;
//! 2. report one line, `ok /dev/nbdN` or `error MESSAGE`, which `nbdx attach`
//!    prints (as the path, or as its error) before it exits;
//! 3. point stdout at `/dev/null` and stderr at the log
//!    `$NBDX_RUN_DIR/nbdN.log` (default `/run/nbdx`, appended, timestamped),
//!    write its pid to `nbdN.pid` there;
//! 4. watch: reconnect and RECONFIGURE when a link dies (netlink), or keep
//!    `NBD_DO_IT` running (ioctls); exit when the device is detached, and
//!    remove the pid file.
//!
//! So nothing holds the caller's stdout: `dev=$(nbdx attach ...)` returns.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use nbdx_netlink::{Driver, Interface, NbdNetlink, Supervisor};

use crate::attach::{borrow, configure_options, negotiate, reconnect, AttachArgs};
use crate::util::CliResult;

/// Bound on the whole attach done by the monitor (two handshakes and the
/// readiness wait each have their own 30 s bound).
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where monitors keep their pid files and logs.
pub(crate) fn run_dir() -> PathBuf {
    std::env::var_os("NBDX_RUN_DIR").map_or_else(|| PathBuf::from("/run/nbdx"), PathBuf::from)
}

/// The pid file of the monitor of `/dev/nbdN`.
pub(crate) fn pid_file(index: u32) -> PathBuf {
    run_dir().join(format!("nbd{index}.pid"))
}

/// The log of the monitor of `/dev/nbdN`.
pub(crate) fn log_file(index: u32) -> PathBuf {
    run_dir().join(format!("nbd{index}.log"))
}

/// The pid of a running monitor of `/dev/nbdN`, from its pid file.
pub(crate) fn monitor_pid(index: u32) -> Option<u32> {
    crate::detach::running_pid(&pid_file(index))
}

/// The monitor's command line: the same attach, with the URI as parsed
/// (relative socket paths made absolute), plus `--monitor -v`.
fn monitor_args(args: &AttachArgs) -> Vec<String> {
    let mut out = vec!["attach".to_owned(), args.uri.to_string()];
    out.extend(args.device.map(|index| format!("/dev/nbd{index}")));
    if args.read_only {
        out.push("--read-only".into());
    }
    out.extend(["--connections".into(), args.connections.to_string()]);
    for (flag, value) in [("--timeout", args.timeout), ("--dead-timeout", args.dead_timeout)] {
        if let Some(value) = value {
            out.extend([flag.to_owned(), value.as_secs_f64().to_string()]);
        }
    }
    out.extend(["--monitor".into(), "-v".into()]);
    out
}

/// Starts the monitor, prints the device path it reports and returns.
pub(crate) fn spawn(args: &AttachArgs) -> CliResult<ExitCode> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the nbdx executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args(monitor_args(args));
    // In `/`, so that the monitor keeps no file system busy.
    command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; it only fails if the child already leads a process group,
    // which a freshly forked child does not.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start the monitor: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(REPORT_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the monitor did not attach the device within {REPORT_TIMEOUT:?}"));
        }
    };
    if let Some(path) = line.strip_prefix("ok ") {
        println!("{}", path.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait().map_err(|e| format!("waiting for the monitor: {e}"))?;
    match line.strip_prefix("error ") {
        Some(message) => Err(message.trim_end().to_owned()),
        None => Err(format!("the monitor exited ({status}) without attaching the device")),
    }
}

/// The monitor itself (`attach --monitor`).
pub(crate) fn run(args: AttachArgs, interface: Interface) -> CliResult<ExitCode> {
    let attached = match Driver::open(interface).map_err(|e| e.to_string()) {
        Ok(Driver::Netlink(netlink)) => attach_netlink(&args, netlink),
        Ok(Driver::Ioctl) => attach_ioctl(&args),
        Err(e) => Err(e),
    };
    if let Err(message) = attached {
        println!("error {message}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn attach_netlink(args: &AttachArgs, netlink: NbdNetlink) -> CliResult<()> {
    let monitor = netlink.subscribe_link_dead().map_err(|e| e.to_string())?;
    let (export, sockets) = negotiate(args)?;
    let options = configure_options(args);
    let index =
        nbdx_netlink::configure_with(&netlink, &export, &borrow(&sockets), &options).map_err(|e| e.to_string())?;
    drop(sockets);
    let started_by = nbdx_netlink::pid(index).ok().flatten();
    let _pid_file = detach_from_caller(index);
    tracing::info!(device = index, uri = %args.uri, connections = args.connections, "attached; monitoring");
    let connections = usize::from(args.connections);
    let mut supervisor = Supervisor::new(&netlink, monitor, index, connections, options.backend.clone());
    let size = export.size;
    let result = supervisor.run(
        |n| reconnect(args, n, size),
        || nbdx_netlink::pid(index).ok().flatten().is_some_and(|pid| Some(pid) == started_by),
    );
    match &result {
        Ok(()) => tracing::info!(device = index, "device detached; monitor exits"),
        Err(err) => tracing::error!(device = index, %err, "monitor failed"),
    }
    result.map_err(|e| e.to_string())
}

fn attach_ioctl(args: &AttachArgs) -> CliResult<()> {
    let (export, sockets) = negotiate(args)?;
    let connection = nbdx_netlink::configure_ioctl(&export, &borrow(&sockets), &configure_options(args))
        .map_err(|e| e.to_string())?;
    drop(sockets);
    let index = connection.index();
    let _pid_file = detach_from_caller(index);
    tracing::info!(device = index, uri = %args.uri, "attached through ioctls; holding NBD_DO_IT");
    // NBD_DO_IT returns when the device is disconnected (nbdx detach) or the
    // server goes away; there is nothing to reconnect with ioctls.
    while !connection.is_finished() && nbdx_netlink::pid(index).ok().flatten().is_some() {
        std::thread::sleep(Duration::from_millis(500));
    }
    tracing::info!(device = index, "device detached; monitor exits");
    drop(connection);
    Ok(())
}

/// Reports success, then moves stdout to `/dev/null`, stderr to the log,
/// and writes the pid file (removed when the guard drops).
fn detach_from_caller(index: u32) -> PidFile {
    let dir = run_dir();
    let prepared = std::fs::create_dir_all(&dir)
        .and_then(|()| OpenOptions::new().create(true).append(true).open(log_file(index)))
        .and_then(|log| Ok((log, File::options().write(true).open("/dev/null")?)));
    let device = nbdx_netlink::device_path(index);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "ok {}", device.display());
    let _ = stdout.flush();
    drop(stdout);
    match prepared {
        Ok((log, null)) => {
            redirect(&null, libc::STDOUT_FILENO);
            redirect(&log, libc::STDERR_FILENO);
        }
        // Still detach from the caller's pipe; the monitor then runs without a log.
        Err(e) => {
            if let Ok(null) = File::options().write(true).open("/dev/null") {
                redirect(&null, libc::STDOUT_FILENO);
            }
            tracing::warn!(dir = %dir.display(), %e, "no monitor log");
        }
    }
    let path = pid_file(index);
    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
        tracing::warn!(path = %path.display(), %e, "cannot write the pid file");
    }
    PidFile(path)
}

/// Makes `target` (a standard descriptor) refer to `file`.
fn redirect(file: &File, target: libc::c_int) {
    // SAFETY: dup2 on a descriptor we own and a standard descriptor number;
    // it atomically replaces what `target` referred to and touches no memory.
    unsafe { libc::dup2(file.as_raw_fd(), target) };
}

/// Removes the monitor's pid file when the monitor ends.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
        #[arg(short, action = clap::ArgAction::Count, global = true)]
        verbose: u8,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Attach(AttachArgs),
    }

    #[test]
    fn the_monitor_gets_the_same_attach_with_an_absolute_socket() {
        let parse = |argv: Vec<String>| match Cli::parse_from(std::iter::once("nbdx".to_owned()).chain(argv)).command {
            Sub::Attach(args) => args,
        };
        let cwd = std::env::current_dir().unwrap();
        let args = parse(
            ["attach", "nbd+unix:///disk?socket=s.sock", "nbd3", "-r", "-C", "2", "--dead-timeout", "1.5"]
                .map(String::from)
                .to_vec(),
        );
        let argv = monitor_args(&args);
        assert_eq!(argv[1], format!("nbd+unix:///disk?socket={}/s.sock", cwd.display()));
        let again = parse(argv);
        assert!(again.monitor && again.read_only);
        assert_eq!((again.device, again.connections), (Some(3), 2));
        assert_eq!(again.dead_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(again.timeout, None);
        assert_eq!(again.uri, args.uri);
    }
}
