//! `GET /v1/dead-letters?limit=&before=`: the messages this replica could not apply
//! (undecodable, from another region's origin, bad names, or refused by a document),
//! newest first, each with where it came from, why, and its bytes (base64). The applied
//! vector never counts them; an origin with one waits behind it (see `/v1/status`).

use base64::Engine as _;
use concord_api::{DeadLetterEntry, DeadLettersBody, ErrorCode};

use super::{Params, Reply, page_limit};
use crate::Node;
use crate::error::NodeError;

pub const DEAD_LETTERS_LIMIT_DEFAULT: usize = 20;
pub const DEAD_LETTERS_LIMIT_MAX: usize = 100;

pub async fn dead_letters(node: &Node, p: &Params) -> Result<Reply, NodeError> {
    let limit = page_limit(p, DEAD_LETTERS_LIMIT_DEFAULT, DEAD_LETTERS_LIMIT_MAX)?;
    let before = match &p.before {
        None => None,
        Some(b) => Some(b.parse::<u64>().map_err(|_| {
            NodeError::bad(ErrorCode::BadCursor, format!("before {b:?} is not a cursor this API gave out"))
        })?),
    };
    let store = node.store.clone();
    let letters = tokio::task::spawn_blocking(move || store.dead_letters(before, limit + 1))
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))??;
    let more = letters.len() > limit;
    let dead_letters: Vec<DeadLetterEntry> = letters
        .into_iter()
        .take(limit)
        .map(|d| DeadLetterEntry {
            id: d.id,
            stream: d.stream,
            seq: d.stream_seq,
            origin: d.origin,
            first_seq: d.first_seq,
            last_seq: d.last_seq,
            reason: d.reason,
            at_ms: d.at_ms,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&d.payload),
        })
        .collect();
    let next = if more { dead_letters.last().map(|d| d.id) } else { None };
    Ok(Reply::json(200, DeadLettersBody { dead_letters, next }))
}
