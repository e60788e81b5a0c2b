//! One-shot negotiation queries: connect, ask, `NBD_OPT_ABORT`.

use super::error::{ClientError, ClientResult};
use super::info::{ExportEntry, ExportInfo};
use super::negotiate::Negotiation;
use super::options::ClientOptions;
use super::target::Target;

/// The exports the server advertises (`NBD_OPT_LIST`).
pub async fn list_exports(target: &Target, opts: &ClientOptions) -> ClientResult<Vec<ExportEntry>> {
    let mut n = Negotiation::start(target, opts).await?;
    let result = n.list_exports().await;
    let _ = n.abort().await;
    result
}

/// Details of the export named in `opts` (`NBD_OPT_INFO`, with the
/// metadata contexts it lists). A server without `NBD_OPT_INFO` (or not
/// fixed newstyle) is asked by opening the export and closing it again.
pub async fn info(target: &Target, opts: &ClientOptions) -> ClientResult<ExportInfo> {
    let mut n = Negotiation::start(target, opts).await?;
    match n.info(opts.name()).await {
        Err(ClientError::Unsupported(why)) => {
            tracing::debug!(why, "no NBD_OPT_INFO; opening the export instead");
            let client = n.go().await?;
            let info = client.info().clone();
            client.disconnect().await;
            Ok(info)
        }
        result => {
            let _ = n.abort().await;
            result
        }
    }
}

/// The metadata contexts of the export named in `opts` that match
/// `queries` (all when empty), by `NBD_OPT_LIST_META_CONTEXT`.
pub async fn list_meta_contexts(target: &Target, opts: &ClientOptions, queries: &[&str]) -> ClientResult<Vec<String>> {
    let mut n = Negotiation::start(target, opts).await?;
    let result = n.list_meta_contexts(opts.name(), queries).await;
    let _ = n.abort().await;
    result
}
