//! The write path of the API: queue a write for the leader, wait for its
//! acknowledgement, then for the durability level the client chose (DESIGN.md,
//! "Guarantees" 4). Every wait is cut to end by the request's deadline
//! ([`super::limits`]), so a slow write answers with its own code.

use std::time::Duration;

use concord_api::{ErrorCode, WriteAck};

use super::leader::redirect_to_leader;
use super::limits::cap;
use super::{Params, Reply};
use crate::Node;
use crate::error::NodeError;
use crate::worker::WriteRequest;
use concord_engine::WriteOp;

/// Most a write may ask to wait for its durability level (`timeout_ms`).
pub const DURABILITY_WAIT_MS_MAX: u64 = 600_000;

/// Durability levels of a write (DESIGN.md, "Guarantees" 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Async,
    Region,
    Remote,
    All,
}

impl Durability {
    /// Every level, in the order of [`Durability::index`].
    pub const ALL: [Durability; 4] = [Durability::Async, Durability::Region, Durability::Remote, Durability::All];

    /// The name a request gives it (`?durability=`).
    pub fn name(self) -> &'static str {
        match self {
            Durability::Async => "async",
            Durability::Region => "region",
            Durability::Remote => "remote",
            Durability::All => "all",
        }
    }

    /// Its place in [`Durability::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

fn durability(p: &Params) -> Result<Durability, NodeError> {
    let asked = p.durability.as_deref().unwrap_or("async");
    Durability::ALL.into_iter().find(|d| d.name() == asked).ok_or_else(|| {
        NodeError::bad(ErrorCode::BadDurability, format!("durability {asked:?}: use async, region, remote or all"))
    })
}

/// How long the write waits for its durability level, as asked (`timeout_ms`).
fn durability_wait(node: &Node, p: &Params) -> Result<Duration, NodeError> {
    let ms = match &p.timeout_ms {
        None => node.cfg.durability_timeout_ms,
        Some(t) => t.parse::<u64>().ok().filter(|ms| (1..=DURABILITY_WAIT_MS_MAX).contains(ms)).ok_or_else(|| {
            NodeError::bad(ErrorCode::BadTimeout, format!("timeout_ms {t:?}: use 1 to {DURABILITY_WAIT_MS_MAX}"))
        })?,
    };
    Ok(Duration::from_millis(ms))
}

/// Queue a write for the leader and wait for its acknowledgement.
pub(super) async fn write(node: &Node, op: WriteOp, p: &Params) -> Result<Reply, NodeError> {
    Ok(Reply::json(200, write_resolving(node, op, None, p).await?))
}

/// Queue a write (resolving the conflict `resolves`, when given) and wait for it.
pub(super) async fn write_resolving(
    node: &Node,
    op: WriteOp,
    resolves: Option<uuid::Uuid>,
    p: &Params,
) -> Result<WriteAck, NodeError> {
    if !node.writes_here() {
        return Err(redirect_to_leader(node, p).await);
    }
    let started = std::time::Instant::now();
    let level = durability(p)?;
    match level {
        Durability::Region if node.followers.live().is_empty() => {
            return Err(NodeError::unavailable(
                ErrorCode::DurabilityUnavailable,
                format!(
                    "durability region needs a live follower in {}; none has reported in the last 5 s",
                    node.region
                ),
            ));
        }
        Durability::Remote if node.remote_stored.is_empty() => {
            return Err(NodeError::unavailable(
                ErrorCode::DurabilityUnavailable,
                "durability remote needs another region; this node's configuration names none (regions)",
            ));
        }
        _ => {}
    }
    let asked = durability_wait(node, p)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    node.writes.try_send(WriteRequest { op, resolves, reply: tx }).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => {
            NodeError::unavailable(ErrorCode::Overloaded, "the write queue is full; retry with backoff")
        }
        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
            NodeError::unavailable(ErrorCode::ShuttingDown, "this node is not accepting writes")
        }
    })?;
    let timeout = cap(Duration::from_millis(node.cfg.write_timeout_ms), p.deadline);
    let ack = tokio::time::timeout(timeout, rx)
        .await
        .map_err(|_| {
            NodeError::Timeout(format!(
                "no acknowledgement within {} ms; the write may still apply",
                timeout.as_millis()
            ))
        })?
        .map_err(|_| NodeError::unavailable(ErrorCode::ShuttingDown, "the writer stopped before acknowledging"))??;
    // The durability wait starts after the acknowledgement: cut it to what is left.
    let wait = cap(asked, p.deadline);
    let mut confirmed: Vec<String> = Vec::new();
    if let (Some(log_seq), Durability::Remote | Durability::All) = (ack.log_seq, level) {
        confirmed = wait_remote(node, log_seq, level, wait).await?;
    }
    if let (Some(seq), Durability::Region) = (ack.seq, level) {
        let mut reports = node.followers.watch_reports();
        let applied = reports.wait_for(|_| node.followers.applied_by_any(&ack.origin, seq));
        let reached = tokio::time::timeout(wait, applied).await;
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
    node.metrics.observe_write(level, started.elapsed());
    Ok(WriteAck {
        ok: true,
        origin: ack.origin.to_string(),
        seq: ack.seq,
        hlc: ack.hlc.map(|h| concord_api::Hlc { wall_ms: h.wall_ms, logical: h.logical }),
        confirmed_by: confirmed,
        resolved: None,
    })
}

/// Wait until other regions stored the log up to `log_seq`: any one for `remote`, all
/// for `all`. Returns the regions that confirmed; on timeout, 504 naming the others.
async fn wait_remote(node: &Node, log_seq: u64, level: Durability, wait: Duration) -> Result<Vec<String>, NodeError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut watches: Vec<_> = node.remote_stored.iter().map(|(r, rx)| (r.to_string(), rx.clone())).collect();
    node.remote_wanted.send_if_modified(|w| {
        let more = log_seq > *w;
        *w = (*w).max(log_seq);
        more
    });
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
