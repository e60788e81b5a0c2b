//! `nbdx detach DEVICE`: disconnect `/dev/nbdN` and wait until the kernel
//! and the attach monitor (if any) have let it go.
//!
//! Netlink `NBD_CMD_DISCONNECT` works for devices set up either way; with
//! the ioctl fallback it is `NBD_DISCONNECT` + `NBD_CLEAR_SOCK`. The kernel
//! sends `NBD_CMD_DISC` to the server on every connection.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nbdx_netlink::Driver;

use crate::attach::{interface, parse_device};
use crate::monitor::pid_file;
use crate::util::CliResult;

/// Bound on the wait for the kernel, then for the monitor, to let go.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `nbdx detach`.
#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// The device (/dev/nbdN or nbdN).
    #[arg(value_name = "DEVICE", value_parser = parse_device)]
    device: u32,
}

pub(crate) fn run(args: DetachArgs) -> CliResult<ExitCode> {
    let index = args.device;
    let path = nbdx_netlink::device_path(index);
    if !Path::new(&format!("/sys/block/nbd{index}")).exists() {
        return Err(format!("{}: no such device", path.display()));
    }
    if nbdx_netlink::pid(index).map_err(|e| e.to_string())?.is_none() {
        return Err(format!("{} is not attached", path.display()));
    }
    match Driver::open(interface()?).map_err(|e| e.to_string())? {
        Driver::Netlink(netlink) => netlink.disconnect(index),
        Driver::Ioctl => nbdx_netlink::disconnect_ioctl(index),
    }
    .map_err(|e| e.to_string())?;
    nbdx_netlink::wait_until_stopped(index, DETACH_TIMEOUT).map_err(|e| e.to_string())?;
    wait_for_monitor(&pid_file(index), DETACH_TIMEOUT).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// The pid in `pid_file` if that process is running (not a zombie, which
/// has exited but was not reaped yet).
pub(crate) fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
    (state != Some(Some('Z'))).then_some(pid)
}

/// Waits until no process named by `pid_file` runs: the monitor notices
/// the detach within its poll interval, exits and removes the file.
fn wait_for_monitor(pid_file: &Path, timeout: Duration) -> CliResult<()> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(5);
    while let Some(pid) = running_pid(pid_file) {
        if start.elapsed() >= timeout {
            return Err(format!("the device is detached, but its monitor (pid {pid}) did not exit within {timeout:?}"));
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_file_with(pid: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd0.pid");
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        (dir, path)
    }

    /// A child that has exited but is not reaped yet.
    fn zombie() -> std::process::Child {
        let child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let start = Instant::now();
        while !std::fs::read_to_string(&stat).unwrap().contains(") Z") {
            assert!(start.elapsed() < Duration::from_secs(10), "the child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_running_process_counts_and_a_missing_file_does_not() {
        let (dir, path) = pid_file_with(std::process::id());
        assert_eq!(running_pid(&path), Some(std::process::id()));
        assert_eq!(running_pid(&dir.path().join("nbd1.pid")), None);
    }

    #[test]
    fn an_exited_but_unreaped_monitor_is_not_waited_for() {
        let mut child = zombie();
        let (_dir, path) = pid_file_with(child.id());
        assert_eq!(running_pid(&path), None);
        wait_for_monitor(&path, Duration::from_millis(10)).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_monitor_that_keeps_running_is_reported_after_the_timeout() {
        let (_dir, path) = pid_file_with(std::process::id());
        let err = wait_for_monitor(&path, Duration::from_millis(20)).unwrap_err();
        assert!(err.contains(&format!("monitor (pid {}) did not exit", std::process::id())), "{err}");
    }

    #[test]
    fn detaching_a_device_that_does_not_exist_says_so() {
        let err = run(DetachArgs { device: 4000 }).unwrap_err();
        assert_eq!(err, "/dev/nbd4000: no such device");
    }
}
