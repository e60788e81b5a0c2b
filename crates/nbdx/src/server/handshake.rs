//! Drives the sans-IO [`ServerHandshake`] over a stream: writes what it
//! queues, reads what it needs, upgrades to TLS at `NBD_OPT_STARTTLS`.

use bytes::BytesMut;
use nbdx_proto::server::{Negotiated, ServerHandshake, ServerStep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::{MaybeTls, Stream};
use super::{ConnectionError, Inner};

/// How negotiation ended.
pub(crate) enum Outcome<S> {
    /// Enter transmission on `stream`; `leftover` holds bytes the client
    /// already sent after its final option.
    Transmission { stream: MaybeTls<S>, negotiated: Negotiated, leftover: BytesMut },
    /// The client aborted or went away.
    Closed,
}

/// Largest read while negotiating: options are at most 64 KiB.
const MAX_READ: usize = 64 * 1024;

async fn send<S: Stream>(stream: &mut MaybeTls<S>, bytes: &[u8]) -> std::io::Result<()> {
    if !bytes.is_empty() {
        stream.write_all(bytes).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// Runs the handshake (without the time limit, which the caller applies).
pub(crate) async fn negotiate<S: Stream>(inner: &Inner, stream: S) -> Result<Outcome<S>, ConnectionError> {
    let mut stream = MaybeTls::Plain(stream);
    let mut hs = ServerHandshake::new(inner.config.clone());
    let mut input = BytesMut::with_capacity(4096);
    loop {
        if inner.shutdown.is_cancelled() {
            hs.begin_shutdown();
        }
        let greeting = hs.take_output();
        send(&mut stream, &greeting).await?;
        match hs.handle_input(&mut input) {
            Err(failure) => {
                // Best effort: the peer may already be gone.
                let _ = send(&mut stream, &failure.output).await;
                return Err(ConnectionError::Protocol(failure.error));
            }
            Ok(ServerStep::NeedInput(mut next)) => {
                let out = next.take_output();
                send(&mut stream, &out).await?;
                input.reserve(next.wants().clamp(16, MAX_READ));
                let n = tokio::select! {
                    r = stream.read_buf(&mut input) => r?,
                    _ = inner.shutdown.cancelled(), if !inner.shutdown.is_cancelled() => {
                        hs = next;
                        continue;
                    }
                };
                if n == 0 {
                    return Ok(Outcome::Closed);
                }
                hs = next;
            }
            Ok(ServerStep::StartTls(mut upgrade)) => {
                let ack = upgrade.take_output();
                send(&mut stream, &ack).await?;
                let (Some(tls), MaybeTls::Plain(plain)) = (&inner.tls, stream) else {
                    return Err(ConnectionError::Tls("STARTTLS acknowledged without a TLS acceptor".into()));
                };
                let upgraded = tls.accept(Box::new(plain)).await.map_err(|e| ConnectionError::Tls(e.to_string()))?;
                stream = MaybeTls::Tls(upgraded);
                hs = upgrade.established();
            }
            Ok(ServerStep::Transmission(negotiated)) => {
                send(&mut stream, &negotiated.output).await?;
                return Ok(Outcome::Transmission { stream, negotiated, leftover: input });
            }
            Ok(ServerStep::Abort(ack)) => {
                let _ = send(&mut stream, &ack).await;
                let _ = stream.shutdown().await;
                return Ok(Outcome::Closed);
            }
        }
    }
}
