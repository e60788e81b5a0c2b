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
use crate::monitor::monitor_pid;
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
    wait_for_monitor(index)?;
    Ok(ExitCode::SUCCESS)
}

/// The monitor notices the detach within its poll interval and exits.
fn wait_for_monitor(index: u32) -> CliResult<()> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(5);
    while let Some(pid) = monitor_pid(index) {
        if start.elapsed() >= DETACH_TIMEOUT {
            return Err(format!(
                "/dev/nbd{index} is detached, but its monitor (pid {pid}) did not exit within {DETACH_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(100));
    }
    Ok(())
}
