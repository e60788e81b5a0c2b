//! Kernel loopback: a device served in this process becomes `/dev/nbdN`.
//!
//! ```sh
//! sudo modprobe nbd
//! cargo build -p nbdx-netlink --example loopback
//! sudo target/debug/examples/loopback 256M
//! # in another shell, while it waits:
//! sudo mkfs.ext4 /dev/nbd0 && sudo mount /dev/nbd0 /mnt
//! ```
//!
//! [`loopback`] serves the device with an nbdx server over socketpairs,
//! negotiates like any client and hands the sockets to the kernel (netlink,
//! or the ioctls on older kernels). [`Loopback::close`] (or dropping it)
//! detaches the device, lets in-flight requests finish and flushes. Needs
//! `CAP_SYS_ADMIN` and the `nbd` module.

use std::sync::Arc;

use nbdx::source::parse_size;
use nbdx::MemoryDevice;
use nbdx_netlink::{loopback, Loopback, LoopbackOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size = parse_size(&std::env::args().nth(1).unwrap_or_else(|| "64M".into()))?;
    // Any `Device` works: a file, a remote export, a stack of layers...
    let device = Arc::new(MemoryDevice::new(size));
    // Two connections share the requests; a RAM disk is multi-conn safe.
    let options = LoopbackOptions { connections: 2, ..LoopbackOptions::default() };
    let attached: Loopback = loopback(device, None, options)?;
    println!("{} is a {}-byte RAM disk served by this process", attached.path().display(), attached.size());
    println!("press Enter to detach");
    std::io::stdin().read_line(&mut String::new())?;
    attached.close()?;
    println!("detached");
    Ok(())
}
