//! The document operations: apply ops (one Automerge change), read as JSON or binary.

use bytes::Bytes;
use concord_api::ErrorCode;
use concord_core::doc;
use concord_engine::WriteOp;

use super::session::await_session;
use super::write::{write, write_resolving};
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

/// Most changes one `doc.changes` request may carry.
pub const DOC_CHANGES_MAX: usize = 10_000;

/// Automerge changes made elsewhere (a sync client's), written as they are, all or none.
/// The body is the changes, each a length-prefixed byte string ([`encode_changes`]).
pub async fn doc_changes(
    node: &Node,
    bucket_raw: &str,
    key_raw: &[u8],
    body: Bytes,
    p: &Params,
) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    let most = node.cfg.sync_message_bytes_max + (64 << 10);
    if body.len() > most {
        return Err(NodeError::TooLarge(format!(
            "body is {} bytes; the limit is {most} (sync_message_bytes_max and 64 KiB)",
            body.len()
        )));
    }
    let changes = decode_changes(&body).map_err(|e| NodeError::bad(ErrorCode::BadBody, e))?;
    Ok(Reply::json(200, write_resolving(node, WriteOp::DocChanges { bucket, key, changes }, None, p).await?))
}

pub fn encode_changes(changes: &[Vec<u8>]) -> Vec<u8> {
    let mut w = concord_core::codec::Writer::new();
    w.u64(changes.len() as u64);
    for c in changes {
        w.bytes(c);
    }
    w.finish()
}

fn decode_changes(body: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut r = concord_core::codec::Reader::new(body);
    let count = r.u64().map_err(|e| e.to_string())?;
    if count == 0 || count > DOC_CHANGES_MAX as u64 {
        return Err(format!("{count} changes; a request carries 1 to {DOC_CHANGES_MAX}"));
    }
    let mut changes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        changes.push(Bytes::copy_from_slice(r.bytes(body.len()).map_err(|e| e.to_string())?));
    }
    r.expect_end().map_err(|e| e.to_string())?;
    Ok(changes)
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
