//! Session guarantees on reads: a read carrying a token waits until this replica
//! applied what the token names.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_api::{Behind, ErrorCode};
use concord_core::token;

use super::Params;
use super::limits::cap;
use crate::Node;
use crate::error::NodeError;

/// Most a read may wait for its session token.
pub const SESSION_WAIT_MS_MAX: u64 = 60_000;

/// Session guarantees: a read carrying a token waits (bounded) until this replica has
/// applied at least what the token names, so a client reads its own writes and never
/// sees time go backwards, in any region. Past the wait: 503 `session_lag`, naming
/// what is missing.
pub(super) async fn await_session(node: &Node, p: &Params) -> Result<(), NodeError> {
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

/// The session token of this replica now (encoded by the worker once per change).
pub fn current_token(node: &Node) -> bytes::Bytes {
    node.token.borrow().clone()
}
