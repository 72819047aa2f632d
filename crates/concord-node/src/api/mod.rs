//! The operations of the API, once, for both front ends: HTTP ([`http`]) and NATS
//! request/reply ([`nats`]). Each takes raw request parts and returns a [`Reply`]
//! (status, content type, body), so both front ends answer byte for byte the same.
//! The bodies of the contract (errors, write acknowledgements, status) are the types of
//! `concord_api`; both front ends run every request under the same kind of
//! [`limits`] (concurrency, timeout), each with its own budget.

mod conflicts;
mod dead_letters;
pub mod http;
pub mod limits;
pub mod nats;
mod nats_op;
mod status;
mod write;

pub use conflicts::{conflict_get, conflict_resolve, conflicts_list};
pub use dead_letters::dead_letters;
pub use nats_op::Op;
pub use status::{status, status_body};
pub use write::{DURABILITY_WAIT_MS_MAX, Durability};

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use concord_api::{Behind, ErrorCode, LeaderRecord};
use concord_core::conflict::CompetingVersion;
use concord_core::{doc, input, token};
use serde::Serialize;
use serde_json::json;

use crate::Node;
use crate::error::NodeError;
use concord_engine::WriteOp;
use limits::{Deadline, cap};
use write::{write, write_resolving};

pub const JSON: &str = "application/json";
pub const OCTETS: &str = "application/octet-stream";
/// Keys listed per page when the request names no limit, and the most it may name.
pub const LIST_LIMIT_DEFAULT: usize = 100;
pub const LIST_LIMIT_MAX: usize = 10_000;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// For a redirect: where to.
    pub location: Option<String>,
}

impl Reply {
    pub fn json(status: u16, value: impl Serialize) -> Reply {
        let body = serde_json::to_vec(&value).expect("API bodies serialize: string keys, no failing Serialize");
        Reply { status, content_type: JSON, body: Bytes::from(body), location: None }
    }

    pub fn error(e: &NodeError) -> Reply {
        let mut reply = Reply::json(e.status(), e.body());
        if let NodeError::Redirect { location, .. } = e {
            reply.location = Some(location.clone());
        }
        reply
    }
}

impl From<Result<Reply, NodeError>> for Reply {
    fn from(r: Result<Reply, NodeError>) -> Reply {
        r.unwrap_or_else(|e| Reply::error(&e))
    }
}

/// The query parameters and headers an operation may use, whatever the front end.
#[derive(Debug, Default)]
pub struct Params {
    pub durability: Option<String>,
    pub prefix: Option<String>,
    pub after: Option<String>,
    pub limit: Option<String>,
    pub format: Option<String>,
    /// Overrides `durability_timeout_ms` for one write.
    pub timeout_ms: Option<String>,
    /// The request's path and query (for redirects).
    pub path_and_query: Option<String>,
    /// The session token a read must see applied (`Concord-Token`).
    pub token: Option<String>,
    /// How long a read waits for the token (`?wait_ms=` / `Concord-Wait-Ms`).
    pub wait_ms: Option<String>,
    /// Conflict-log filters and paging.
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub since: Option<String>,
    pub before: Option<String>,
    /// When the waits inside the request must end (set by the front end from
    /// `request_timeout_ms`; none: waits are not cut).
    pub deadline: Option<Deadline>,
}

fn bucket(raw: &str) -> Result<String, NodeError> {
    input::check_bucket(raw).map_err(|e| NodeError::bad(ErrorCode::BadBucket, e.to_string()))?;
    Ok(raw.to_string())
}

fn key(raw: &[u8]) -> Result<String, NodeError> {
    Ok(input::check_key(raw).map_err(|e| NodeError::bad(ErrorCode::BadKey, e.to_string()))?.to_string())
}

fn value_fits(node: &Node, body: &Bytes) -> Result<(), NodeError> {
    if body.len() > node.cfg.value_bytes_max {
        return Err(NodeError::TooLarge(format!(
            "body is {} bytes; the limit is {} (value_bytes_max)",
            body.len(),
            node.cfg.value_bytes_max
        )));
    }
    Ok(())
}

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
    let store = node.store.clone();
    let (b, k) = (bucket.clone(), key.clone());
    let found = tokio::task::spawn_blocking(move || store.get_kv(&b, &k))
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??;
    let Some(register) = found else {
        return Err(NodeError::NotFound(format!("{bucket}/{key} does not exist")));
    };
    if register.is_conflicted() && node.cfg.manual_buckets.contains(&bucket) {
        // A manual bucket shows every sibling until someone resolves them.
        let store = node.store.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let record = tokio::task::spawn_blocking(move || store.open_conflict(&b, &k, None))
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))??;
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

/// The `limit` of a paged request: `default` when absent, else 1..=`max`.
pub(crate) fn page_limit(p: &Params, default: usize, max: usize) -> Result<usize, NodeError> {
    match &p.limit {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| NodeError::bad(ErrorCode::BadLimit, format!("limit {l:?}: use 1 to {max}"))),
    }
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

/// Where a write sent to a follower should go: 307 to the leader, same path and query.
async fn redirect_to_leader(node: &Node, p: &Params) -> NodeError {
    match leader_address(node).await {
        Some((leader, url)) => NodeError::Redirect {
            message: format!("{} is a follower; writes go to the leader {leader}", node.cfg.node),
            location: format!("{url}{}", p.path_and_query.clone().unwrap_or_default()),
        },
        None => NodeError::unavailable(
            ErrorCode::NoLeader,
            format!("{} is a follower and no leader of {} is known", node.cfg.node, node.region),
        ),
    }
}

/// The region's leader (node, URL), from `concord_leaders`, cached for two seconds.
pub async fn leader_address(node: &Node) -> Option<(String, String)> {
    if let Some((at, name, url)) = node.leader_cache.lock().expect("not poisoned").clone()
        && at.elapsed() < Duration::from_secs(2)
    {
        return Some((name, url));
    }
    let record: LeaderRecord =
        tokio::time::timeout(Duration::from_secs(2), node.log.leader_of(node.region.as_str())).await.ok()?.ok()??;
    let LeaderRecord { node: name, http: url, .. } = record;
    *node.leader_cache.lock().expect("not poisoned") = Some((std::time::Instant::now(), name.clone(), url.clone()));
    Some((name, url))
}

/// `GET /v1/snapshot`: this replica's whole state, for a new replica to start from.
pub async fn snapshot(node: &Node) -> Result<Reply, NodeError> {
    let store = node.store.clone();
    let bytes = tokio::task::spawn_blocking(move || store.export_snapshot())
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??;
    Ok(Reply { status: 200, content_type: OCTETS, body: Bytes::from(bytes), location: None })
}

/// Most a read may wait for its session token.
pub const SESSION_WAIT_MS_MAX: u64 = 60_000;

/// Session guarantees: a read carrying a token waits (bounded) until this replica has
/// applied at least what the token names, so a client reads its own writes and never
/// sees time go backwards, in any region. Past the wait: 503 `session_lag`, naming
/// what is missing.
async fn await_session(node: &Node, p: &Params) -> Result<(), NodeError> {
    let Some(raw) = p.token.as_deref().filter(|t| !t.is_empty()) else { return Ok(()) };
    let needed = token::decode(raw).map_err(|e| NodeError::bad(ErrorCode::BadToken, e.to_string()))?;
    let asked = match &p.wait_ms {
        None => Duration::from_millis(node.cfg.session_wait_ms),
        Some(w) => {
            Duration::from_millis(w.parse::<u64>().ok().filter(|ms| *ms <= SESSION_WAIT_MS_MAX).ok_or_else(|| {
                NodeError::bad(ErrorCode::BadWait, format!("wait_ms {w:?}: use 0 to {SESSION_WAIT_MS_MAX}"))
            })?)
        }
    };
    let wait = cap(asked, p.deadline);
    let mut applied = node.applied.clone();
    let reached = tokio::time::timeout(wait, applied.wait_for(|vv| vv.dominates(&needed))).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let now = node.applied.borrow().clone();
    let behind: BTreeMap<String, Behind> = needed
        .iter()
        .filter(|(o, seq)| now.get(o) < *seq)
        .map(|(o, seq)| (o.to_string(), Behind { needed: seq, applied: now.get(o) }))
        .collect();
    let names: Vec<String> = behind.keys().cloned().collect();
    Err(NodeError::SessionLag {
        message: format!(
            "this replica has not applied your session's writes from {} after waiting {} ms: retry, or read elsewhere",
            names.join(", "),
            wait.as_millis()
        ),
        behind,
    })
}

/// The session token of this replica now.
pub fn current_token(node: &Node) -> String {
    token::encode(&node.applied.borrow())
}
