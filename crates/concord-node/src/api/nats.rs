//! The NATS request/reply front end: a NATS micro service named `concord`, so any
//! client discovers it with `$SRV.INFO` / `$SRV.STATS`.
//!
//! Subjects: `concord.api.<region>.<op>` with op one of `kv.put`, `kv.get`, `kv.del`,
//! `kv.list`, `doc.apply`, `doc.get`, `status`, `conflicts.list`, `conflicts.get`,
//! `conflicts.resolve` (the record's id in `Concord-Conflict-Id`; filters of the list
//! in `Concord-Bucket`, `Concord-Key`, `Concord-Since`, `Concord-Before`, `Concord-Limit`).
//! Every conflict record a region writes is also published on
//! `concord.conflicts.<region>` (JSON), for subscribers. The bucket and key travel in the
//! headers `Concord-Bucket` and `Concord-Key` (keys may hold any UTF-8, dots included),
//! the query parameters in `Concord-Durability`, `Concord-Prefix`, `Concord-After`,
//! `Concord-Limit`, `Concord-Format`. The request body and the response body are the
//! HTTP API's; the response headers carry `Concord-Status` (the HTTP status code),
//! `Concord-Token`, `Concord-Region` and `Content-Type`.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::service::{Request, ServiceExt};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::warn;

use super::{Params, Reply};
use crate::Node;
use crate::error::NodeError;

pub const OPS: [&str; 10] = [
    "kv.put",
    "kv.get",
    "kv.del",
    "kv.list",
    "doc.apply",
    "doc.get",
    "status",
    "conflicts.list",
    "conflicts.get",
    "conflicts.resolve",
];

/// Where a region publishes every conflict record it creates, extends or resolves.
pub fn conflicts_subject(region: &str) -> String {
    format!("concord.conflicts.{region}")
}

pub fn group(region: &str) -> String {
    format!("concord.api.{region}")
}

/// Start the service and serve requests until `shutdown`.
pub async fn serve(
    node: Arc<Node>,
    client: async_nats::Client,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), async_nats::Error> {
    let service = client
        .service_builder()
        .description(format!("Concord region {}", node.region))
        .start("concord", env!("CARGO_PKG_VERSION"))
        .await?;
    let group = service.group(group(node.region.as_str()));
    let mut tasks = Vec::new();
    for op in OPS {
        let mut endpoint = group.endpoint(op).await?;
        let node = node.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    r = endpoint.next() => match r { Some(r) => r, None => break },
                    _ = shutdown.changed() => break,
                };
                let node = node.clone();
                tokio::spawn(async move { handle(&node, op, req).await });
            }
        }));
    }
    let _ = shutdown.changed().await;
    for t in tasks {
        let _ = t.await;
    }
    let _ = service.stop().await;
    Ok(())
}

fn header(h: Option<&HeaderMap>, name: &str) -> Option<String> {
    h?.get(name).map(|v| v.as_str().to_string())
}

async fn handle(node: &Node, op: &str, req: Request) {
    let h = req.message.headers.as_ref();
    let bucket = header(h, "Concord-Bucket").unwrap_or_default();
    let key = header(h, "Concord-Key").unwrap_or_default();
    let p = Params {
        durability: header(h, "Concord-Durability"),
        prefix: header(h, "Concord-Prefix"),
        after: header(h, "Concord-After"),
        limit: header(h, "Concord-Limit"),
        format: header(h, "Concord-Format"),
        timeout_ms: header(h, "Concord-Timeout-Ms"),
        bucket: header(h, "Concord-Bucket"),
        key: header(h, "Concord-Key"),
        since: header(h, "Concord-Since"),
        before: header(h, "Concord-Before"),
        token: header(h, "Concord-Token"),
        wait_ms: header(h, "Concord-Wait-Ms"),
    };
    let body = req.message.payload.clone();
    let result: Result<Reply, NodeError> = match op {
        "kv.put" => super::kv_put(node, &bucket, key.as_bytes(), body, &p).await,
        "kv.get" => super::kv_get(node, &bucket, key.as_bytes(), &p).await,
        "kv.del" => super::kv_delete(node, &bucket, key.as_bytes(), &p).await,
        "kv.list" => super::kv_list(node, &bucket, &p).await,
        "doc.apply" => super::doc_apply(node, &bucket, key.as_bytes(), body, &p).await,
        "doc.get" => super::doc_get(node, &bucket, key.as_bytes(), &p).await,
        "conflicts.list" => super::conflicts_list(node, &p).await,
        "conflicts.get" => super::conflict_get(node, &header(h, "Concord-Conflict-Id").unwrap_or_default()).await,
        "conflicts.resolve" => {
            super::conflict_resolve(node, &header(h, "Concord-Conflict-Id").unwrap_or_default(), body, &p).await
        }
        _ => Ok(super::status(node).await),
    };
    let reply = Reply::from(result);
    let mut headers = HeaderMap::new();
    headers.insert("Concord-Status", reply.status.to_string().as_str());
    headers.insert("Concord-Token", super::current_token(node).as_str());
    headers.insert("Concord-Region", node.region.as_str());
    headers.insert("Content-Type", reply.content_type);
    if let Err(e) = req.respond_with_headers(Ok(reply.body), headers).await {
        warn!(op, error = %e, "could not answer a NATS request");
    }
}
