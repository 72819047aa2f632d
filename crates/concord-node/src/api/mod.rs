//! The operations of the API, once, for both front ends: HTTP ([`http`]) and NATS
//! request/reply ([`nats`]). Each takes raw request parts and returns a [`Reply`]
//! (status, content type, body), so both front ends answer byte for byte the same.

mod conflicts;
pub mod http;
pub mod nats;

pub use conflicts::{conflict_get, conflict_resolve, conflicts_list};

use std::time::Duration;

use bytes::Bytes;
use concord_core::conflict::CompetingVersion;
use concord_core::{doc, input, token};
use serde_json::json;

use crate::Node;
use crate::error::NodeError;
use crate::leader::{WriteOp, WriteRequest};

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
    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply { status, content_type: JSON, body: Bytes::from(value.to_string()), location: None }
    }

    pub fn error(e: &NodeError) -> Reply {
        let mut body = json!({ "error": e.to_string(), "code": e.code() });
        if let NodeError::DurabilityTimeout { unconfirmed, .. } = e {
            body["unconfirmed"] = json!(unconfirmed);
        }
        if let NodeError::SessionLag { behind, .. } = e {
            body["behind"] = behind.clone();
        }
        let mut reply = Reply::json(e.status(), body);
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
}

/// Durability levels of a write (DESIGN.md, "Guarantees" 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Async,
    Region,
    Remote,
    All,
}

fn durability(p: &Params) -> Result<Durability, NodeError> {
    match p.durability.as_deref().unwrap_or("async") {
        "async" => Ok(Durability::Async),
        "region" => Ok(Durability::Region),
        "remote" => Ok(Durability::Remote),
        "all" => Ok(Durability::All),
        other => {
            Err(NodeError::bad("bad_durability", format!("durability {other:?}: use async, region, remote or all")))
        }
    }
}

fn bucket(raw: &str) -> Result<String, NodeError> {
    input::check_bucket(raw).map_err(|e| NodeError::bad("bad_bucket", e.to_string()))?;
    Ok(raw.to_string())
}

fn key(raw: &[u8]) -> Result<String, NodeError> {
    Ok(input::check_key(raw).map_err(|e| NodeError::bad("bad_key", e.to_string()))?.to_string())
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

/// Queue a write for the leader and wait for its acknowledgement.
async fn write(node: &Node, op: WriteOp, p: &Params) -> Result<Reply, NodeError> {
    write_resolving(node, op, None, p).await
}

/// Queue a write (resolving the conflict `resolves`, when given) and wait for it.
async fn write_resolving(
    node: &Node,
    op: WriteOp,
    resolves: Option<uuid::Uuid>,
    p: &Params,
) -> Result<Reply, NodeError> {
    if node.cfg.role == crate::Role::Follower {
        return Err(redirect_to_leader(node, p).await);
    }
    let level = durability(p)?;
    match level {
        Durability::Region if node.followers.live().is_empty() => {
            return Err(NodeError::unavailable(
                "durability_unavailable",
                format!(
                    "durability region needs a live follower in {}; none has reported in the last 5 s",
                    node.region
                ),
            ));
        }
        Durability::Remote if node.remote_stored.is_empty() => {
            return Err(NodeError::unavailable(
                "durability_unavailable",
                "durability remote needs another region; this node's configuration names none (regions)",
            ));
        }
        _ => {}
    }
    let wait = match &p.timeout_ms {
        None => Duration::from_millis(node.cfg.durability_timeout_ms),
        Some(t) => Duration::from_millis(
            t.parse::<u64>()
                .ok()
                .filter(|ms| (1..=600_000).contains(ms))
                .ok_or_else(|| NodeError::bad("bad_timeout", format!("timeout_ms {t:?}: use 1 to 600000")))?,
        ),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    node.writes.try_send(WriteRequest { op, resolves, reply: tx }).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => {
            NodeError::unavailable("overloaded", "the write queue is full; retry with backoff")
        }
        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
            NodeError::unavailable("shutting_down", "this node is not accepting writes")
        }
    })?;
    let timeout = Duration::from_millis(node.cfg.write_timeout_ms);
    let ack = tokio::time::timeout(timeout, rx)
        .await
        .map_err(|_| {
            NodeError::Timeout(format!(
                "no acknowledgement within {} ms; the write may still apply",
                timeout.as_millis()
            ))
        })?
        .map_err(|_| NodeError::unavailable("shutting_down", "the writer stopped before acknowledging"))??;
    let mut confirmed: Vec<String> = Vec::new();
    if let (Some(log_seq), Durability::Remote | Durability::All) = (ack.log_seq, level) {
        confirmed = wait_remote(node, log_seq, level, wait).await?;
    }
    if let (Some(log_seq), Durability::Region) = (ack.log_seq, level) {
        let mut best = node.followers.watch_best();
        let reached = tokio::time::timeout(wait, best.wait_for(|seq| *seq >= log_seq)).await;
        if !matches!(reached, Ok(Ok(_))) {
            let name = format!("followers of {}", node.region);
            return Err(NodeError::DurabilityTimeout {
                message: format!(
                    "no follower of {} applied the write within {} ms; it is durable in the log and still replicates",
                    node.region,
                    wait.as_millis()
                ),
                unconfirmed: vec![name],
            });
        }
        confirmed.push(node.region.to_string());
    }
    Ok(Reply::json(
        200,
        json!({ "ok": true, "origin": ack.origin, "seq": ack.seq, "hlc": ack.hlc, "confirmed_by": confirmed }),
    ))
}

/// Wait until other regions stored the log up to `log_seq`: any one for `remote`, all
/// for `all`. Returns the regions that confirmed; on timeout, 504 naming the others.
async fn wait_remote(node: &Node, log_seq: u64, level: Durability, wait: Duration) -> Result<Vec<String>, NodeError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut watches: Vec<_> = node.remote_stored.iter().map(|(r, rx)| (r.to_string(), rx.clone())).collect();
    loop {
        let confirmed: Vec<String> =
            watches.iter().filter(|(_, rx)| *rx.borrow() >= log_seq).map(|(r, _)| r.clone()).collect();
        let enough = match level {
            Durability::Remote => !confirmed.is_empty(),
            _ => confirmed.len() == watches.len(),
        };
        if enough {
            return Ok(confirmed);
        }
        let changes = futures::future::select_all(watches.iter_mut().map(|(_, rx)| Box::pin(rx.changed())));
        if tokio::time::timeout_at(deadline, changes).await.is_err() {
            let missing: Vec<String> =
                watches.iter().filter(|(_, rx)| *rx.borrow() < log_seq).map(|(r, _)| r.clone()).collect();
            return Err(NodeError::DurabilityTimeout {
                message: format!(
                    "not confirmed within {} ms by {}; the write is durable in {} and still replicates",
                    wait.as_millis(),
                    missing.join(", "),
                    node.region
                ),
                unconfirmed: missing,
            });
        }
    }
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
            .ok_or_else(|| NodeError::bad("bad_limit", format!("limit {l:?}: use 1 to {max}"))),
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
            return Err(NodeError::bad("bad_format", format!("format {other:?}: use json or automerge")));
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

pub async fn status(node: &Node) -> Reply {
    let leader = node.leader.borrow().clone();
    let applied: serde_json::Map<String, serde_json::Value> =
        node.applied.borrow().iter().map(|(o, s)| (o.to_string(), json!(s))).collect();
    let role = if leader.fenced { "fenced".to_string() } else { node.cfg.role.to_string() };
    let mut lag = serde_json::Map::new();
    for remote in node.cfg.remote_regions() {
        let mirror = concord_transport::nats::mirror_name(remote.as_str());
        lag.insert(remote.to_string(), stream_lag(node, &mirror).await);
    }
    let leading = node.cfg.role == crate::Role::Leader;
    if !leading {
        // A follower also lags behind its own region's log.
        lag.insert(node.region.to_string(), stream_lag(node, node.log.stream()).await);
    }
    let leader_name =
        if leading { node.cfg.node.clone() } else { leader_address(node).await.map(|(n, _)| n).unwrap_or_default() };
    let log_last =
        if leading { node.log.position(node.log.stream()).await.map(|p| p.last_seq).unwrap_or(0) } else { 0 };
    let followers: serde_json::Map<String, serde_json::Value> = node
        .followers
        .live()
        .into_iter()
        .map(|(r, age)| {
            let info = json!({
                "applied_log_seq": r.log_seq,
                "lag_seq": log_last.saturating_sub(r.log_seq),
                "reported_ms_ago": age.as_millis() as u64,
                "token": r.token,
            });
            (r.node.clone(), info)
        })
        .collect();
    let stored: serde_json::Map<String, serde_json::Value> =
        node.remote_stored.iter().map(|(r, rx)| (r.to_string(), json!(*rx.borrow()))).collect();
    Reply::json(
        200,
        json!({
            "region": node.region.as_str(),
            "node": node.cfg.node,
            "role": role,
            "epoch": leader.origin.epoch,
            "origin": leader.origin.to_string(),
            "leader": leader_name,
            "applied": applied,
            "lag": lag,
            "followers": followers,
            "serves_nats_reads": node.serves_nats_reads.load(std::sync::atomic::Ordering::Relaxed),
            "remote_stored": stored,
        }),
    )
}

/// How far this replica is behind another region's log: `seq` messages (those its
/// mirror holds but this replica has not applied, plus those the mirror has not yet
/// copied), `ms` the age of the oldest unapplied message in the mirror, and the
/// mirror's own view of its upstream (`mirror_active_ms` grows while it is cut off).
async fn stream_lag(node: &Node, mirror: &str) -> serde_json::Value {
    let mirror = mirror.to_string();
    let cursor = node.cursors.borrow().get(&mirror).copied().unwrap_or(0);
    let pos = match tokio::time::timeout(Duration::from_secs(2), node.log.position(&mirror)).await {
        Ok(Ok(pos)) => pos,
        Ok(Err(e)) => return json!({ "error": e.to_string(), "applied_seq": cursor }),
        Err(_) => return json!({ "error": "the local mirror did not answer in 2 s", "applied_seq": cursor }),
    };
    let unapplied = pos.last_seq.saturating_sub(cursor);
    let mut ms = 0u64;
    if unapplied > 0
        && let Ok(Ok(Some(at))) =
            tokio::time::timeout(Duration::from_secs(2), node.log.stored_at(&mirror, cursor + 1)).await
    {
        ms = (chrono::Utc::now() - at).num_milliseconds().max(0) as u64;
    }
    json!({
        "seq": unapplied + pos.upstream_lag,
        "ms": ms,
        "applied_seq": cursor,
        "mirror_seq": pos.last_seq,
        "mirror_lag": pos.upstream_lag,
        "mirror_active_ms": pos.upstream_active.map(|d| d.as_millis() as u64),
        // The mirror heard from its upstream in the last 5 s (heartbeats come every
        // second); while cut off its `lag` cannot grow, so this is what to alert on.
        "mirror_connected": pos.upstream_active.is_some_and(|d| d < Duration::from_secs(5)),
    })
}

/// Where a write sent to a follower should go: 307 to the leader, same path and query.
async fn redirect_to_leader(node: &Node, p: &Params) -> NodeError {
    match leader_address(node).await {
        Some((leader, url)) => NodeError::Redirect {
            message: format!("{} is a follower; writes go to the leader {leader}", node.cfg.node),
            location: format!("{url}{}", p.path_and_query.clone().unwrap_or_default()),
        },
        None => NodeError::unavailable(
            "no_leader",
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
    let record =
        tokio::time::timeout(Duration::from_secs(2), node.log.leader_of(node.region.as_str())).await.ok()?.ok()??;
    let name = record["node"].as_str()?.to_string();
    let url = record["http"].as_str()?.to_string();
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
    let needed = token::decode(raw).map_err(|e| NodeError::bad("bad_token", e.to_string()))?;
    let wait = match &p.wait_ms {
        None => Duration::from_millis(node.cfg.session_wait_ms),
        Some(w) => Duration::from_millis(
            w.parse::<u64>()
                .ok()
                .filter(|ms| *ms <= SESSION_WAIT_MS_MAX)
                .ok_or_else(|| NodeError::bad("bad_wait", format!("wait_ms {w:?}: use 0 to {SESSION_WAIT_MS_MAX}")))?,
        ),
    };
    let mut applied = node.applied.clone();
    let reached = tokio::time::timeout(wait, applied.wait_for(|vv| vv.dominates(&needed))).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let now = node.applied.borrow().clone();
    let behind: serde_json::Map<String, serde_json::Value> = needed
        .iter()
        .filter(|(o, seq)| now.get(o) < *seq)
        .map(|(o, seq)| (o.to_string(), json!({ "needed": seq, "applied": now.get(o) })))
        .collect();
    let names: Vec<String> = behind.keys().cloned().collect();
    Err(NodeError::SessionLag {
        message: format!(
            "this replica has not applied your session's writes from {} after waiting {} ms: retry, or read elsewhere",
            names.join(", "),
            wait.as_millis()
        ),
        behind: serde_json::Value::Object(behind),
    })
}

/// The session token of this replica now.
pub fn current_token(node: &Node) -> String {
    token::encode(&node.applied.borrow())
}
