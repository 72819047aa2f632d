//! The key/value operations: write (put, delete), read, list.
//!
//! A read of one key runs on the async runtime, not in a blocking thread: it is a point
//! lookup in redb (a few B-tree pages, hot in memory or in the page cache), which takes
//! microseconds, less than handing it to a blocking thread and back (measured: that
//! hand-off was most of a read's CPU under load). A read never waits for a writer: redb
//! serves it from the last commit. Listing, which may scan many records, still runs in
//! a blocking thread.

use bytes::Bytes;
use concord_core::conflict::CompetingVersion;
use concord_engine::WriteOp;
use serde_json::json;

use super::session::await_session;
use super::write::write;
use super::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, OCTETS, Params, Reply, bucket, key, page_limit, value_fits};
use crate::Node;
use crate::error::NodeError;

pub async fn kv_put(
    node: &Node,
    bucket_raw: &str,
    key_raw: &[u8],
    body: Bytes,
    p: &Params,
) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    value_fits(node, &body)?;
    write(node, WriteOp::Put { bucket, key, value: body }, p).await
}

pub async fn kv_delete(node: &Node, bucket_raw: &str, key_raw: &[u8], p: &Params) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    write(node, WriteOp::Delete { bucket, key }, p).await
}

pub async fn kv_get(node: &Node, bucket_raw: &str, key_raw: &[u8], p: &Params) -> Result<Reply, NodeError> {
    let (bucket, key) = (bucket(bucket_raw)?, key(key_raw)?);
    await_session(node, p).await?;
    crate::metrics::inc(&node.metrics.reads_served_total);
    let Some(register) = node.store.get_kv(&bucket, &key)? else {
        return Err(NodeError::NotFound(format!("{bucket}/{key} does not exist")));
    };
    if p.format.as_deref() == Some("versions") {
        return Ok(Reply::json(200, versions_body(&register)));
    }
    if register.is_conflicted() && node.cfg.manual_buckets.contains(&bucket) {
        // A manual bucket shows every sibling until someone resolves them.
        let record = node.store.open_conflict(&bucket, &key, None)?;
        let siblings: Vec<CompetingVersion> = register.versions().iter().map(CompetingVersion::from_lww).collect();
        return Ok(Reply::json(
            300,
            json!({
                "conflict": record.map(|r| r.id),
                "winner": register.winner().id(),
                "siblings": siblings,
            }),
        ));
    }
    match &register.winner().value {
        Some(value) => {
            Ok(Reply { status: 200, content_type: OCTETS, body: Bytes::from(value.clone()), location: None })
        }
        None => Err(NodeError::NotFound(format!("{bucket}/{key} does not exist"))),
    }
}

/// `?format=versions`: every version the register keeps (the winner first; a delete
/// shows as `deleted`), each with the version vector it was written with, for tools
/// that check causality (the fault suite's checker).
fn versions_body(register: &concord_core::lww::Register) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = register
        .versions()
        .iter()
        .map(|v| {
            let mut shown = serde_json::to_value(CompetingVersion::from_lww(v)).expect("serializable");
            shown["vv"] = serde_json::to_value(&v.vv).expect("serializable");
            shown
        })
        .collect();
    json!({ "winner": register.winner().id(), "versions": versions })
}

pub async fn kv_list(node: &Node, bucket_raw: &str, p: &Params) -> Result<Reply, NodeError> {
    let bucket = bucket(bucket_raw)?;
    await_session(node, p).await?;
    crate::metrics::inc(&node.metrics.reads_served_total);
    let limit = page_limit(p, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?;
    let prefix = p.prefix.clone().unwrap_or_default();
    let after = p.after.clone();
    let store = node.store.clone();
    let keys = tokio::task::spawn_blocking(move || store.list_kv(&bucket, &prefix, after.as_deref(), limit + 1))
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??;
    let more = keys.len() > limit;
    let keys: Vec<String> = keys.into_iter().take(limit).collect();
    let next = if more { keys.last().cloned() } else { None };
    Ok(Reply::json(200, json!({ "keys": keys, "next": next })))
}
