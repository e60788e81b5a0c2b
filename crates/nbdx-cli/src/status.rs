//! `nbdx status [DEVICE] [--json]`: what each `/dev/nbdN` is attached to.
//!
//! Everything comes from sysfs, so no privilege is needed. "Connected"
//! means started: `/sys/block/nbdN/pid` exists exactly from CONNECT (or
//! `NBD_DO_IT`) to the disconnect. Netlink `NBD_CMD_STATUS` is not used: it
//! also says "connected" while any process merely has the node open.
//!
//! JSON: one object for a named device, an array of them for all devices:
//!
//! ```json
//! {"device": "/dev/nbd0", "connected": true, "size": 1073741824,
//!  "backend": "nbd://localhost/disk", "read_only": false, "pid": 812, "monitor": 813}
//! ```
//!
//! `backend` (the export URI given to `nbdx attach`), `pid` (the process that
//! started the device) and `monitor` (the attach monitor's pid) are `null`
//! when unknown.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

use crate::attach::parse_device;
use crate::monitor::monitor_pid;
use crate::util::CliResult;

/// Arguments of `nbdx status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// One device (/dev/nbdN or nbdN); default: all of them.
    #[arg(value_name = "DEVICE", value_parser = parse_device)]
    device: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What sysfs says about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceState {
    index: u32,
    connected: bool,
    size: u64,
    backend: Option<String>,
    read_only: bool,
    pid: Option<u32>,
    monitor: Option<u32>,
}

impl DeviceState {
    fn read(index: u32) -> CliResult<Self> {
        let err = |e: nbdx_netlink::Error| format!("/dev/nbd{index}: {e}");
        let pid = nbdx_netlink::pid(index).map_err(err)?;
        let connected = pid.is_some();
        Ok(Self {
            index,
            connected,
            size: nbdx_netlink::size_bytes(index).map_err(err)?,
            backend: if connected { nbdx_netlink::backend(index).map_err(err)? } else { None },
            read_only: nbdx_netlink::read_only(index).map_err(err)?,
            pid,
            monitor: monitor_pid(index),
        })
    }

    fn json(&self) -> Value {
        json!({
            "device": format!("/dev/nbd{}", self.index),
            "connected": self.connected,
            "size": self.size,
            "backend": self.backend,
            "read_only": self.read_only,
            "pid": self.pid,
            "monitor": self.monitor,
        })
    }

    fn line(&self) -> String {
        let device = format!("/dev/nbd{}", self.index);
        if !self.connected {
            return format!("{device}\tdisconnected");
        }
        let mut notes = Vec::new();
        if self.read_only {
            notes.push("read-only".to_owned());
        }
        if let Some(pid) = self.monitor {
            notes.push(format!("monitor pid {pid}"));
        }
        let backend = self.backend.as_deref().unwrap_or("(unknown backend)");
        let size = nbdx::source::format_size(self.size);
        match notes.is_empty() {
            true => format!("{device}\tconnected\t{size}\t{backend}"),
            false => format!("{device}\tconnected\t{size}\t{backend}\t({})", notes.join(", ")),
        }
    }
}

pub(crate) fn run(args: StatusArgs) -> CliResult<ExitCode> {
    match args.device {
        Some(index) => {
            if !Path::new(&format!("/sys/block/nbd{index}")).exists() {
                return Err(format!("/dev/nbd{index}: no such device"));
            }
            let state = DeviceState::read(index)?;
            println!("{}", if args.json { state.json().to_string() } else { state.line() });
        }
        None => {
            if !Path::new("/sys/module/nbd").exists() {
                return Err(nbdx_netlink::Error::ModuleNotLoaded.to_string());
            }
            let indices = nbdx_netlink::list_devices().map_err(|e| format!("/sys/block: {e}"))?;
            let states = indices.into_iter().map(DeviceState::read).collect::<CliResult<Vec<_>>>()?;
            if args.json {
                println!("{}", Value::Array(states.iter().map(DeviceState::json).collect()));
            } else {
                states.iter().for_each(|state| println!("{}", state.line()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(connected: bool) -> DeviceState {
        DeviceState {
            index: 2,
            connected,
            size: if connected { 64 << 20 } else { 0 },
            backend: connected.then(|| "nbd://localhost/disk".to_owned()),
            read_only: connected,
            pid: connected.then_some(10),
            monitor: None,
        }
    }

    #[test]
    fn json_has_the_device_its_state_size_and_backend() {
        let value = state(true).json();
        assert_eq!(value["device"], "/dev/nbd2");
        assert_eq!(value["connected"], true);
        assert_eq!(value["size"], 64 << 20);
        assert_eq!(value["backend"], "nbd://localhost/disk");
        assert_eq!(value["monitor"], Value::Null);
        let value = state(false).json();
        assert_eq!((value["connected"].clone(), value["backend"].clone()), (json!(false), Value::Null));
    }

    #[test]
    fn lines_say_connected_or_disconnected() {
        assert_eq!(state(false).line(), "/dev/nbd2\tdisconnected");
        assert_eq!(state(true).line(), "/dev/nbd2\tconnected\t64M\tnbd://localhost/disk\t(read-only)");
    }
}
