//! The conflict-log operations of the API: list, get, resolve.

use bytes::Bytes;
use concord_api::{ErrorCode, WriteAck};
use concord_core::conflict::ConflictRecord;
use concord_core::doc;
use serde_json::json;

use super::session::await_session;
use super::write::write_resolving;
use super::{Params, Reply, page_limit};
use crate::Node;
use crate::error::NodeError;
use concord_engine::WriteOp;

/// Most records in one page of `GET /v1/conflicts`, and the default.
pub const CONFLICTS_LIMIT_MAX: usize = 1000;
pub const CONFLICTS_LIMIT_DEFAULT: usize = 50;

/// `GET /v1/conflicts?bucket=&key=&since=&limit=&before=`: newest first.
pub async fn conflicts_list(node: &Node, p: &Params) -> Result<Reply, NodeError> {
    await_session(node, p).await?;
    let limit = page_limit(p, CONFLICTS_LIMIT_DEFAULT, CONFLICTS_LIMIT_MAX)?;
    let since = match &p.since {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    NodeError::bad(ErrorCode::BadSince, format!("since {t:?}: an RFC 3339 time please ({e})"))
                })?
                .with_timezone(&chrono::Utc),
        ),
    };
    if let Some(b) = &p.before
        && (b.len() != 48 || !b.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(NodeError::bad(ErrorCode::BadCursor, format!("before {b:?} is not a cursor this API gave out")));
    }
    let q = concord_storage::ConflictQuery {
        bucket: p.bucket.clone(),
        key: p.key.clone(),
        since,
        before: p.before.clone(),
        limit,
    };
    let store = node.store.clone();
    let (records, next) = tokio::task::spawn_blocking(move || store.list_conflicts(&q))
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??;
    Ok(Reply::json(200, json!({ "conflicts": records, "next": next })))
}

fn conflict_id(raw: &str) -> Result<uuid::Uuid, NodeError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| NodeError::bad(ErrorCode::BadConflictId, format!("{raw:?} is not a conflict id")))
}

async fn load_conflict(node: &Node, id: uuid::Uuid) -> Result<ConflictRecord, NodeError> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.get_conflict(&id))
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??
        .ok_or_else(|| NodeError::NotFound(format!("no conflict {id} in this region's log")))
}

/// `GET /v1/conflicts/{id}`.
pub async fn conflict_get(node: &Node, id_raw: &str) -> Result<Reply, NodeError> {
    let record = load_conflict(node, conflict_id(id_raw)?).await?;
    Ok(Reply::json(200, json!(record)))
}

/// `POST /v1/conflicts/{id}/resolve` with `{"value": ...}` or `{"pick": "<version id>"}`:
/// a write that supersedes every competing version (its vector joins all of theirs),
/// marked as resolving the record, in every region that applies it.
pub async fn conflict_resolve(node: &Node, id_raw: &str, body: Bytes, p: &Params) -> Result<Reply, NodeError> {
    let id = conflict_id(id_raw)?;
    let req: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
        NodeError::bad(
            ErrorCode::BadResolution,
            format!("body: {e}; send {{\"value\": ...}} or {{\"pick\": \"<version id>\"}}"),
        )
    })?;
    let record = load_conflict(node, id).await?;
    if let Some(r) = &record.resolved {
        return Err(NodeError::Conflict(format!("conflict {id} is already resolved (by {} with {})", r.by, r.version)));
    }
    let chosen: Option<serde_json::Value> = match (req.get("value"), req.get("pick")) {
        (Some(v), None) => Some(v.clone()),
        (None, Some(serde_json::Value::String(pick))) => {
            let v = record.versions.iter().find(|v| v.id == *pick).ok_or_else(|| {
                let ids: Vec<&str> = record.versions.iter().map(|v| v.id.as_str()).collect();
                NodeError::bad(ErrorCode::BadResolution, format!("pick {pick:?} is none of the versions {ids:?}"))
            })?;
            match &record.path {
                Some(_) => Some(v.value.clone()),
                None => {
                    let op = match v.bytes() {
                        Some(bytes) => WriteOp::Put {
                            bucket: record.bucket.clone(),
                            key: record.key.clone(),
                            value: Bytes::from(bytes),
                        },
                        None => WriteOp::Delete { bucket: record.bucket.clone(), key: record.key.clone() },
                    };
                    return resolved_reply(write_resolving(node, op, Some(id), p).await?, id);
                }
            }
        }
        _ => {
            return Err(NodeError::bad(
                ErrorCode::BadResolution,
                "send exactly one of {\"value\": ...} or {\"pick\": \"<version id>\"}",
            ));
        }
    };
    let value = chosen.expect("set above");
    let op = match &record.path {
        Some(path) => {
            let path: Vec<doc::PathElem> = serde_json::from_value(serde_json::Value::Array(path.clone()))
                .map_err(|e| NodeError::Fatal(format!("stored path: {e}")))?;
            WriteOp::Doc {
                bucket: record.bucket.clone(),
                key: record.key.clone(),
                ops: vec![doc::DocOp::Set { path, value }],
            }
        }
        None => match value {
            serde_json::Value::Null => WriteOp::Delete { bucket: record.bucket.clone(), key: record.key.clone() },
            serde_json::Value::String(s) => {
                WriteOp::Put { bucket: record.bucket.clone(), key: record.key.clone(), value: Bytes::from(s) }
            }
            other => WriteOp::Put {
                bucket: record.bucket.clone(),
                key: record.key.clone(),
                value: Bytes::from(other.to_string()),
            },
        },
    };
    resolved_reply(write_resolving(node, op, Some(id), p).await?, id)
}

/// The write's acknowledgement, naming the record it resolved.
fn resolved_reply(ack: WriteAck, id: uuid::Uuid) -> Result<Reply, NodeError> {
    Ok(Reply::json(200, WriteAck { resolved: Some(id.to_string()), ..ack }))
}
