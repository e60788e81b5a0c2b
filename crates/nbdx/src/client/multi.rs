//! [`MultiConn`]: several connections to one export, for exports that
//! advertise `NBD_FLAG_CAN_MULTI_CONN` ("a flush on one connection is
//! visible on all").
//!
//! Requests go to the least loaded connection (ties round-robin); the
//! pieces of one large call are spread the same way; `flush` is sent on
//! every connection.

use std::ops::Deref;

use tokio::task::JoinSet;

use super::api::Client;
use super::error::{ClientError, ClientResult};
use super::options::ClientOptions;
use super::target::Target;

/// N connections to one export, used as one [`Client`] (through `Deref`).
#[derive(Debug, Clone)]
pub struct MultiConn {
    client: Client,
}

impl MultiConn {
    /// Opens `n` connections (at least one). Fails, closing what was
    /// opened, if the export does not advertise `NBD_FLAG_CAN_MULTI_CONN`
    /// (unless `n` is 1) or any connection fails.
    pub async fn connect(target: &Target, opts: &ClientOptions, n: usize) -> ClientResult<Self> {
        let first = Client::connect(target, opts).await?;
        if n > 1 && !first.info().can_multi_conn() {
            first.disconnect().await;
            return Err(ClientError::Unsupported(format!(
                "{n} connections: export '{}' does not advertise NBD_FLAG_CAN_MULTI_CONN",
                opts.name()
            )));
        }
        let mut set = JoinSet::new();
        for _ in 1..n {
            let (target, opts) = (target.clone(), opts.clone());
            set.spawn(async move { Client::connect(&target, &opts).await });
        }
        let mut clients = vec![first];
        let mut failure = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(c)) => clients.push(c),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(ClientError::Closed)),
            }
        }
        if let Some(e) = failure {
            for c in &clients {
                c.disconnect().await;
            }
            return Err(e);
        }
        Ok(Self { client: Client::merge(clients, opts)? })
    }

    /// The client over all connections.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client over all connections, by value.
    pub fn into_client(self) -> Client {
        self.client
    }
}

impl Deref for MultiConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl From<MultiConn> for Client {
    fn from(m: MultiConn) -> Client {
        m.client
    }
}
