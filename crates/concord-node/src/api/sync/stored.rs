//! The sync endpoint's side of the store: a client's message received into a copy of the
//! stored document, the changes it brought written by the region's leader, the wait
//! until this node holds them, and the messages generated from the stored document.

use std::time::Duration;

use automerge::sync::{Message as SyncMessage, State, SyncDoc};
use automerge::{Automerge, Change, ChangeHash, ReadDoc};
use concord_api::{ErrorCode, WriteAck};
use concord_core::doc;
use concord_engine::WriteOp;

use super::doc_id::DocId;
use super::{Refused, refuse};
use crate::Node;
use crate::api::Params;
use crate::error::NodeError;

/// How long a message's changes may take to be written and held here.
pub const WRITE_WAIT: Duration = Duration::from_secs(30);
/// The changes of one write: at most this many, of at most this many bytes (unless one
/// change is larger). A message's changes take as many writes as they need, in order.
const WRITE_CHANGES_MAX: usize = 1000;
const WRITE_BYTES_MAX: usize = 512 << 10;

/// Automerge's work (loading, merging, generating: in proportion to the document) off
/// the runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refused> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Refused("the server failed on the message".into(), 1011))
}

/// Receive a client's sync message into a copy of the stored document: the changes it
/// brought that the document did not have (in causal order), or `None` when the client
/// asked (`request`) for a document this node does not have.
pub fn receive(
    node: &Node,
    id: &DocId,
    state: &mut State,
    request: bool,
    message: SyncMessage,
) -> Result<Option<Vec<Change>>, Refused> {
    let stored = load(node, id)?;
    if stored.is_none() && request {
        return Ok(None);
    }
    let mut copy = stored.unwrap_or_else(doc::new_doc);
    let before = copy.get_heads();
    let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        copy.receive_sync_message(state, message).map_err(|e| e.to_string())?;
        Ok::<_, String>(copy.get_changes(&before))
    }));
    match received {
        Ok(Ok(new)) => Ok(Some(new)),
        Ok(Err(e)) => Err(refuse(format!("the sync message was refused: {e}"))),
        Err(_) => Err(refuse("the sync message was refused: automerge failed on its changes")),
    }
}

/// The next sync message (encoded) of `id` to the peer, from the stored document (an
/// empty one while none is stored: the peer is asked for everything), if any.
pub fn next_message(node: &Node, id: &DocId, state: &mut State) -> Result<Option<Vec<u8>>, Refused> {
    let document = load(node, id)?.unwrap_or_else(doc::new_doc);
    Ok(document.generate_sync_message(state).map(SyncMessage::encode))
}

fn load(node: &Node, id: &DocId) -> Result<Option<Automerge>, Refused> {
    let unreadable = |e: String| Refused(format!("the document could not be read: {e}"), 1011);
    let saved = node.store.get_doc(&node.cfg.sync_bucket, id.as_str()).map_err(|e| unreadable(e.to_string()))?;
    saved.map(|s| doc::load_doc(&s).map_err(|e| unreadable(e.to_string()))).transpose()
}

/// Whether the stored document holds every change of `hashes`.
pub fn holds(node: &Node, id: &DocId, hashes: &[ChangeHash]) -> Result<bool, Refused> {
    let Some(document) = load(node, id)? else { return Ok(hashes.is_empty()) };
    Ok(hashes.iter().all(|h| document.get_change_by_hash(h).is_some()))
}

/// Write a client's changes, in order, in as many writes as they need: here when this
/// node leads, else by the region's leader (over NATS, `doc.changes`).
pub async fn submit(node: &Node, id: &DocId, changes: &[Change]) -> Result<(), NodeError> {
    let mut start = 0;
    while start < changes.len() {
        let mut end = start + 1;
        let mut bytes = changes[start].raw_bytes().len();
        while end < changes.len()
            && end - start < WRITE_CHANGES_MAX
            && bytes + changes[end].raw_bytes().len() <= WRITE_BYTES_MAX
        {
            bytes += changes[end].raw_bytes().len();
            end += 1;
        }
        let group: Vec<Vec<u8>> = changes[start..end].iter().map(|c| c.raw_bytes().to_vec()).collect();
        write(node, id, group).await?;
        start = end;
    }
    Ok(())
}

async fn write(node: &Node, id: &DocId, changes: Vec<Vec<u8>>) -> Result<WriteAck, NodeError> {
    let (bucket, key) = (node.cfg.sync_bucket.as_str(), id.as_str());
    if node.writes_here() {
        let changes = changes.into_iter().map(Into::into).collect();
        let op = WriteOp::DocChanges { bucket: bucket.to_string(), key: key.to_string(), changes };
        let p = Params { deadline: Some(crate::api::limits::Deadline::after(WRITE_WAIT)), ..Params::default() };
        return crate::api::write::write_resolving(node, op, None, &p).await;
    }
    let group = crate::api::nats::group(node.region.as_str());
    let subject = format!("{group}.{}", crate::api::Op::DocChanges.name());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Concord-Bucket", bucket);
    headers.insert("Concord-Key", key);
    let body = crate::api::docs::encode_changes(&changes);
    let client = node.log.client();
    let asked = client.request_with_headers(subject, headers, body.into());
    let unavailable = |why: String| NodeError::unavailable(ErrorCode::NoLeader, why);
    let msg = tokio::time::timeout(WRITE_WAIT, asked)
        .await
        .map_err(|_| NodeError::Timeout(format!("the leader did not answer within {} s", WRITE_WAIT.as_secs())))?
        .map_err(|e| unavailable(format!("the region's leader: {e}")))?;
    let status = msg.headers.as_ref().and_then(|h| h.get("Concord-Status")).map(|v| v.as_str().to_string());
    if !matches!(status.as_deref(), None | Some("200")) {
        let body = String::from_utf8_lossy(&msg.payload);
        return Err(unavailable(format!("the leader answered {}: {body}", status.unwrap_or_default())));
    }
    serde_json::from_slice(&msg.payload).map_err(|e| unavailable(format!("the leader's acknowledgement: {e}")))
}
