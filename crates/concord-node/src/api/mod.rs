//! The operations of the API, once, for both front ends: HTTP ([`http`]) and NATS
//! request/reply ([`nats`]). Each takes raw request parts and returns a [`Reply`]
//! (status, content type, body), so both front ends answer byte for byte the same.
//! The bodies of the contract (errors, write acknowledgements, status) are the types of
//! `concord_api`; both front ends run every request under the same kind of
//! [`limits`] (concurrency, timeout), each with its own budget.

pub mod auth;
mod conflicts;
mod dead_letters;
pub mod deployment;
mod docs;
mod events;
pub mod http;
mod kv;
mod leader;
pub mod limits;
pub mod nats;
mod nats_op;
mod session;
mod snapshot;
mod status;
pub mod sync;
mod ui;
mod write;

pub use conflicts::{conflict_get, conflict_resolve, conflicts_list};
pub use dead_letters::dead_letters;
pub use docs::{doc_apply, doc_changes, doc_get};
pub use events::{CONFLICT_FEED_CAPACITY, CONFLICT_STREAMS_MAX, OpenStreams, conflict_events};
pub use kv::{kv_delete, kv_get, kv_list, kv_put};
pub use leader::leader_address;
pub use nats_op::Op;
pub use session::{SESSION_WAIT_MS_MAX, current_token};
pub use snapshot::{EXPORTS_MAX, snapshot_body};
pub use status::{scrape, status, status_body};
pub use write::{DURABILITY_WAIT_MS_MAX, Durability};

use bytes::Bytes;
use concord_api::ErrorCode;
use concord_core::input;
use serde::Serialize;

use crate::Node;
use crate::error::NodeError;
use limits::Deadline;

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

/// Count an answered request in `concord_requests_total`: its operation, and its
/// outcome (`ok`, `siblings` for a manual bucket's 300, or the error's code).
pub(crate) fn count(node: &Node, op: Op, result: &Result<Reply, NodeError>) {
    let outcome = match result {
        Ok(reply) if reply.status == 300 => "siblings",
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    node.metrics.requests.get_or_create(&[("op", op.name()), ("outcome", outcome)]).inc();
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
