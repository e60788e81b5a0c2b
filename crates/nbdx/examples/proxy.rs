//! A proxy: any NBD server's export, served again by nbdx, here behind a
//! copy-on-write layer so that clients may write while the remote export
//! is never changed.
//!
//! ```sh
//! nbdkit -U /tmp/remote.sock memory 64M &          # or any NBD server
//! cargo run -p nbdx --example proxy -- 'nbd+unix:///?socket=/tmp/remote.sock' /tmp/proxy.sock
//! qemu-io -f raw -c 'write -P 7 0 1M' 'nbd+unix:///?socket=/tmp/proxy.sock'
//! ```
//!
//! [`RemoteDevice`] turns a connected [`Client`] into a [`Device`]: the
//! remote's capabilities (flush, FUA, trim, zero, block status, block
//! sizes) become the device's. Layers from [`nbdx::layer`] stack on it like
//! on any device. Arguments: the remote's URI, then a Unix socket path or
//! `HOST:PORT` to listen on (default `127.0.0.1:10810`).
//!
//! [`Device`]: nbdx::device::Device

use std::sync::Arc;

use nbdx::client::{Client, RemoteDevice};
use nbdx::layer::{apply_layers, LayerSpec};
use nbdx::server::{Listener, Server};
use nbdx::Export;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let remote = args.next().ok_or("usage: proxy NBD-URI [LISTEN-ADDRESS]")?;
    let address = args.next().unwrap_or_else(|| "127.0.0.1:10810".into());

    let client = Client::connect_uri(&remote).await?;
    eprintln!("connected to {remote}: {} bytes", client.size());
    let device = apply_layers(Arc::new(RemoteDevice::new(client)), &["cow".parse::<LayerSpec>()?])?;

    let server = Server::new(vec![Export::from_arc("", device)])?;
    let listener = Listener::bind(&address).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
    eprintln!("serving a copy-on-write view of {remote} on {address}");
    server.serve(listener).await?;
    if address.contains('/') {
        let _ = std::fs::remove_file(&address);
    }
    Ok(())
}
