//! Serving a device of your own: implement [`Device`] (size, capabilities,
//! read; writes and the rest are optional) and hand it to a [`Server`].
//!
//! This one is read-only and computes its contents: every 512-byte sector
//! repeats the label `sector N` padded to 16 bytes.
//!
//! ```sh
//! cargo run -p nbdx --example custom_device -- /tmp/sectors.sock
//! nbdinfo 'nbd+unix:///sectors?socket=/tmp/sectors.sock'
//! nbdcopy 'nbd+unix:///sectors?socket=/tmp/sectors.sock' - | head -c 48
//! ```
//!
//! The argument is a Unix socket path or `HOST:PORT` (default
//! `127.0.0.1:10809`). Ctrl-C stops the server.

use nbdx::async_trait;
use nbdx::device::{Caps, Device, DeviceResult};
use nbdx::server::{Listener, Server};
use nbdx::Export;

/// A read-only device whose contents are computed from the offset.
struct Sectors {
    size: u64,
}

impl Sectors {
    /// The byte at `pos`: a character of the 16-byte label of its sector.
    fn byte_at(pos: u64) -> u8 {
        let label = format!("sector {:<8}\n", pos / 512);
        label.as_bytes()[(pos % 512 % 16) as usize]
    }
}

#[async_trait]
impl Device for Sectors {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        // Everything else (flush, trim, zero, block status...) unsupported.
        Caps { read_only: true, multi_conn: true, ..Caps::default() }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        // The server has checked the range; requests run concurrently.
        for (pos, byte) in (offset..).zip(buf.iter_mut()) {
            *byte = Self::byte_at(pos);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:10809".into());
    let export = Export::new("sectors", Sectors { size: 64 << 20 }).with_description("computed sectors");
    let server = Server::new(vec![export])?;
    let listener = Listener::bind(&address).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
    eprintln!("serving export \"sectors\" on {address}");
    server.serve(listener).await?;
    if address.contains('/') {
        let _ = std::fs::remove_file(&address);
    }
    Ok(())
}
