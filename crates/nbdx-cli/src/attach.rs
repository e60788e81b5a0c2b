//! `nbdx attach URI [DEVICE]`: negotiate with an NBD server and hand the
//! connections to the kernel, so the export appears as `/dev/nbdN`.
//!
//! The handshake runs here (the kernel only speaks the transmission phase),
//! then `NBD_CMD_CONNECT` over netlink gives the kernel the sockets; the
//! device path is printed once the block device is usable and the command
//! exits. The backend identifier is the export's canonical URI, which
//! `nbdx status` shows.
//!
//! Two cases need a process that outlives the command, the monitor (see
//! `monitor.rs`): `--dead-timeout` (reconnect when the server comes back)
//! and the ioctl fallback (a thread must stay in `NBD_DO_IT`). The monitor
//! then does the whole attach and reports back; the command prints what it
//! reported and exits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nbdx::client::{connect_for_handover, ClientOptions, Target};
use nbdx::proto::client::Connected;
use nbdx::proto::TransmissionFlags;
use nbdx::uri::NbdUri;
use nbdx_netlink::{ConfigureOptions, Driver, Interface};

use crate::monitor;
use crate::util::CliResult;

/// Per-request timeout used with `--dead-timeout` when `--timeout` is not given.
pub(crate) const DEFAULT_TIMEOUT_WITH_RECONNECT: Duration = Duration::from_secs(30);

/// Arguments of `nbdx attach`.
#[derive(Debug, Clone, Args)]
pub(crate) struct AttachArgs {
    /// The export: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(value_name = "URI", value_parser = parse_uri)]
    pub(crate) uri: NbdUri,
    /// The device to use (/dev/nbdN or nbdN); default: the first free one.
    #[arg(value_name = "DEVICE", value_parser = parse_device)]
    pub(crate) device: Option<u32>,
    /// Make the device read-only.
    #[arg(short, long)]
    pub(crate) read_only: bool,
    /// Open N connections (the export must advertise multi-conn).
    #[arg(short = 'C', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) connections: u16,
    /// Fail a request the server has not answered in S seconds (default:
    /// wait for ever; 30 with --dead-timeout). With --dead-timeout a timed
    /// out connection is replaced instead.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,
    /// Survive server restarts: requests wait up to S seconds for a new
    /// connection, and a monitor process reconnects when the server is back
    /// (log: /run/nbdx/nbdN.log).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub(crate) dead_timeout: Option<Duration>,
    /// Internal: act as the monitor (attach, report on stdout, keep watching).
    #[arg(long, hide = true)]
    pub(crate) monitor: bool,
}

/// Parses the URI; a relative socket path is made absolute, so that the
/// monitor (which runs in `/`) reconnects to the same socket and the
/// backend identifier names it unambiguously.
fn parse_uri(s: &str) -> Result<NbdUri, String> {
    let mut uri = NbdUri::parse(s).map_err(|e| e.to_string())?;
    if uri.tls {
        return Err(format!("{s}: the kernel's NBD driver cannot use TLS connections"));
    }
    if let Target::Unix(path) = &mut uri.target {
        if path.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            *path = cwd.join(&*path);
        }
    }
    Ok(uri)
}

/// `/dev/nbdN` or `nbdN` → N.
pub(crate) fn parse_device(s: &str) -> Result<u32, String> {
    nbdx_netlink::parse_device(s).map_err(|e| e.to_string())
}

/// Whole or fractional seconds; the kernel rounds up to whole seconds.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s.parse().map_err(|_| format!("invalid number of seconds `{s}`"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid number of seconds `{s}`"))
}

/// The kernel interface: `NBDX_KERNEL_INTERFACE` = auto (default), netlink
/// or ioctl. A switch for tests and old kernels, not a user option.
pub(crate) fn interface() -> CliResult<Interface> {
    match std::env::var("NBDX_KERNEL_INTERFACE").as_deref() {
        Err(_) | Ok("" | "auto") => Ok(Interface::Auto),
        Ok("netlink") => Ok(Interface::Netlink),
        Ok("ioctl") => Ok(Interface::Ioctl),
        Ok(other) => Err(format!("NBDX_KERNEL_INTERFACE={other}: expected auto, netlink or ioctl")),
    }
}

/// Fails unless `index` is free (not started); a device that does not
/// exist yet is free (netlink creates it).
pub(crate) fn check_free(index: u32) -> CliResult<()> {
    match nbdx_netlink::pid(index) {
        Ok(None) => Ok(()),
        Ok(Some(pid)) => {
            let backend = nbdx_netlink::backend(index).ok().flatten();
            let by = backend.map_or_else(|| format!("started by pid {pid}"), |b| format!("attached to {b}"));
            Err(format!("/dev/nbd{index} is busy ({by})"))
        }
        Err(e) => Err(format!("/dev/nbd{index}: {e}")),
    }
}

pub(crate) fn run(args: AttachArgs) -> CliResult<ExitCode> {
    let interface = interface()?;
    if args.monitor {
        return monitor::run(args, interface);
    }
    let driver = Driver::open(interface).map_err(|e| e.to_string())?;
    if let Some(index) = args.device {
        check_free(index)?;
    }
    if args.dead_timeout.is_some() || matches!(driver, Driver::Ioctl) {
        if args.dead_timeout.is_some() && matches!(driver, Driver::Ioctl) {
            return Err("--dead-timeout needs the netlink interface of the nbd driver".into());
        }
        drop(driver);
        return monitor::spawn(&args);
    }
    let Driver::Netlink(netlink) = driver else { unreachable!("handled above") };
    let (export, sockets) = negotiate(&args)?;
    let index = nbdx_netlink::configure_with(&netlink, &export, &borrow(&sockets), &configure_options(&args))
        .map_err(|e| e.to_string())?;
    println!("{}", nbdx_netlink::device_path(index).display());
    Ok(ExitCode::SUCCESS)
}

/// What the kernel is told besides the handshake.
pub(crate) fn configure_options(args: &AttachArgs) -> ConfigureOptions {
    let timeout = match (args.timeout, args.dead_timeout) {
        (Some(t), _) if t.is_zero() => None,
        (Some(t), _) => Some(t),
        (None, Some(_)) => Some(DEFAULT_TIMEOUT_WITH_RECONNECT),
        (None, None) => None,
    };
    ConfigureOptions {
        index: args.device,
        read_only: args.read_only,
        timeout,
        dead_conn_timeout: args.dead_timeout.filter(|t| !t.is_zero()),
        backend: Some(args.uri.to_string()),
        ..ConfigureOptions::default()
    }
}

pub(crate) fn borrow(sockets: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    sockets.iter().map(AsFd::as_fd).collect()
}

/// Opens and negotiates `--connections` connections for the kernel.
pub(crate) fn negotiate(args: &AttachArgs) -> CliResult<(Connected, Vec<OwnedFd>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let wanted = usize::from(args.connections);
    let options = ClientOptions::from_uri(&args.uri);
    runtime.block_on(async {
        let first = connect_for_handover(&args.uri.target, &options).await.map_err(|e| e.to_string())?;
        let export = first.export;
        if wanted > 1 && !export.flags.contains(TransmissionFlags::CAN_MULTI_CONN) {
            return Err(format!(
                "{}: the export does not advertise multi-conn (NBD_FLAG_CAN_MULTI_CONN), so -C {wanted} is refused",
                args.uri
            ));
        }
        let mut sockets = vec![first.socket.into_fd()];
        while sockets.len() < wanted {
            let next = connect_for_handover(&args.uri.target, &options).await.map_err(|e| e.to_string())?;
            sockets.push(next.socket.into_fd());
        }
        Ok((export, sockets))
    })
}

/// Opens `n` more connections to the same export, for a reconnect; the
/// export must still have `size` bytes.
pub(crate) fn reconnect(args: &AttachArgs, n: usize, size: u64) -> nbdx_netlink::Result<Vec<OwnedFd>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let options = ClientOptions::from_uri(&args.uri).timeout(Duration::from_secs(10));
    runtime.block_on(async {
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            let handover = connect_for_handover(&args.uri.target, &options).await?;
            if handover.export.size != size {
                return Err(nbdx_netlink::Error::Unsupported(format!(
                    "the export now has {} bytes instead of {size}; not reconnecting",
                    handover.export.size
                )));
            }
            sockets.push(handover.socket.into_fd());
        }
        Ok(sockets)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_may_be_fractional_but_not_negative() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn tls_uris_are_refused_because_the_kernel_cannot_use_them() {
        let err = parse_uri("nbds://localhost/x").unwrap_err();
        assert!(err.contains("TLS"), "{err}");
        assert!(parse_uri("nbd+unix:///x?socket=/tmp/s").is_ok());
    }

    #[test]
    fn a_relative_socket_path_becomes_absolute() {
        let uri = parse_uri("nbd+unix:///x?socket=run/s.sock").unwrap();
        let expected = std::env::current_dir().unwrap().join("run/s.sock");
        assert_eq!(uri.target, Target::Unix(expected));
    }

    #[test]
    fn a_dead_timeout_brings_a_default_request_timeout_and_the_uri_is_the_backend() {
        let mut args = AttachArgs {
            uri: parse_uri("nbd://localhost:10810/disk").unwrap(),
            device: Some(3),
            read_only: true,
            connections: 1,
            timeout: None,
            dead_timeout: Some(Duration::from_secs(60)),
            monitor: false,
        };
        let options = configure_options(&args);
        assert_eq!(options.timeout, Some(DEFAULT_TIMEOUT_WITH_RECONNECT));
        assert_eq!(options.backend.as_deref(), Some("nbd://localhost:10810/disk"));
        assert_eq!((options.index, options.read_only), (Some(3), true));
        args.timeout = Some(Duration::ZERO);
        args.dead_timeout = None;
        let options = configure_options(&args);
        assert_eq!((options.timeout, options.dead_conn_timeout), (None, None));
    }
}
