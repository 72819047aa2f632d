//! The document operations: apply ops (one Automerge change), read as JSON or binary.

use bytes::Bytes;
use concord_api::ErrorCode;
use concord_core::doc;
use concord_engine::WriteOp;

use super::session::await_session;
use super::write::write;
use super::{OCTETS, Params, Reply, bucket, key, value_fits};
use crate::Node;
use crate::error::NodeError;

pub async fn doc_apply(
    node: &Node,
    bucket_raw: &str,
    key_raw: &[u8],
    body: Bytes,
    p: &Params,
) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    value_fits(node, &body)?;
    let ops = doc::parse_ops(&body)?;
    write(node, WriteOp::Doc { bucket, key, ops }, p).await
}

pub async fn doc_get(node: &Node, bucket_raw: &str, key_raw: &[u8], p: &Params) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    await_session(node, p).await?;
    crate::metrics::inc(&node.metrics.reads_served_total);
    let binary = match p.format.as_deref() {
        None | Some("json") => false,
        Some("automerge") => true,
        Some(other) => {
            return Err(NodeError::bad(ErrorCode::BadFormat, format!("format {other:?}: use json or automerge")));
        }
    };
    let store = node.store.clone();
    let (b, k) = (bucket.clone(), key.clone());
    tokio::task::spawn_blocking(move || -> Result<Reply, NodeError> {
        let Some(bytes) = store.get_doc(&b, &k)? else {
            return Err(NodeError::NotFound(format!("document {b}/{k} does not exist")));
        };
        if binary {
            return Ok(Reply { status: 200, content_type: OCTETS, body: Bytes::from(bytes), location: None });
        }
        let doc = doc::load_doc(&bytes).map_err(|e| NodeError::Fatal(e.to_string()))?;
        Ok(Reply::json(200, doc::to_json(&doc)))
    })
    .await
    .map_err(|e| NodeError::Fatal(e.to_string()))?
}
