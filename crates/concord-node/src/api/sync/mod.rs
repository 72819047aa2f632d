//! `GET /v1/sync`: local-first clients sync documents with a node over automerge-repo's
//! WebSocket protocol (the `join`/`peer` handshake, then `request` and `sync` messages
//! carrying Automerge sync messages; [`wire`]). Any automerge-repo client
//! (`@automerge/automerge-repo`'s WebSocket adapter, samod) can use any node of any
//! region as its sync server.
//!
//! A document's automerge-repo id ([`doc_id`]) names a key of the sync bucket
//! (`sync_bucket`), so the same document is read and written through the document API.
//!
//! The server side is automerge's own sync state machine (`automerge::sync`), one state
//! per connection and document, with Concord's store in place of a repo's storage:
//!
//! - a client's sync message is received into a copy of the stored document; the changes
//!   it brought are written as they are ([`concord_engine::WriteOp::DocChange`]), by the
//!   region's leader (a follower forwards them over NATS, `doc.changes`); only once they
//!   are durable in the region's log, and applied on this node, is the reply generated
//!   from the stored document. The reply is what tells the client the server has them,
//!   so a change the client's sync state counts as delivered is never only in memory;
//! - every document this node commits (a local write, another region's change, another
//!   client's) is pushed to the connections that sync it ([`crate::Node::doc_feed`]);
//! - a frame that is not a message, a message the protocol does not allow here, or changes
//!   the store refuses end the connection with an `error` message: the client starts
//!   again from a fresh sync state, and nothing of the refused message is stored.
//!
//! Limits: `sync_connections_max` connections per node (503 beyond), at most
//! `sync_message_bytes_max` bytes per message (a larger one gets an `error` and the
//! connection ends unread), `sync_docs_per_connection_max` documents per connection.
//!
//! Not done: `ephemeral` messages are not relayed, and a sync state is not kept across
//! connections (the peer metadata names no `storageId`), so a client that reconnects
//! starts its sync from its heads again.

pub mod doc_id;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use automerge::Automerge;
use automerge::sync::{Message as SyncMessage, State, SyncDoc};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use concord_api::{ErrorCode, WriteAck};
use concord_core::doc;
use concord_core::ids::Origin;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info};

use self::doc_id::DocId;
use self::wire::{Incoming, Outgoing};
use super::{Params, Reply};
use crate::Node;
use crate::error::NodeError;

/// How long a sync message's changes may take to be written and applied here.
const WRITE_WAIT: Duration = Duration::from_secs(30);
/// Close codes: the message broke the protocol (1008), or the server is going away (1001).
const POLICY: u16 = 1008;
const GOING_AWAY: u16 = 1001;

/// Answer the upgrade (or why not), then run the connection until it ends.
pub async fn upgrade(node: Arc<Node>, req: Request) -> Response {
    if node.cfg.sync_bucket.is_empty() {
        return error(NodeError::NotFound("no sync endpoint on this node (sync_bucket is empty)".into()));
    }
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => {
            let why = format!("GET /v1/sync takes a WebSocket upgrade: {}", rejection.body_text());
            return error(NodeError::bad(ErrorCode::BadRequest, why));
        }
    };
    let Ok(permit) = node.sync_connections.clone().try_acquire_owned() else {
        let why = format!("{} sync connections are open (sync_connections_max)", node.cfg.sync_connections_max);
        return error(NodeError::unavailable(ErrorCode::Overloaded, why));
    };
    let max = node.cfg.sync_message_bytes_max;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| run(node, socket, permit))
}

fn error(e: NodeError) -> Response {
    let reply = Reply::error(&e);
    let status = axum::http::StatusCode::from_u16(reply.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    (status, [(axum::http::header::CONTENT_TYPE, reply.content_type)], reply.body).into_response()
}

/// Why a connection ends: the message for the client, and the close code.
struct Refused(String, u16);

fn refuse(why: impl Into<String>) -> Refused {
    Refused(why.into(), POLICY)
}

async fn run(node: Arc<Node>, mut socket: WebSocket, _permit: OwnedSemaphorePermit) {
    let mut feed = node.doc_feed.subscribe();
    let mut shutdown = node.shutdown.clone();
    let mut session = Session::new(node.clone());
    info!(node = %node.cfg.node, "sync connection opened");
    loop {
        let step = tokio::select! {
            frame = socket.recv() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => Err(Refused(format!("the frame could not be read: {e}"), close_code(&e))),
                Some(Ok(Message::Binary(bytes))) => session.on_frame(&bytes).await,
                Some(Ok(Message::Text(_))) => Err(refuse("a text frame: messages are binary CBOR")),
                Some(Ok(_)) => Ok(Vec::new()),
            },
            changed = feed.recv() => match changed {
                Ok((bucket, key)) if bucket == session.bucket => session.on_changed(Some(&key)),
                Ok(_) => Ok(Vec::new()),
                Err(RecvError::Lagged(_)) => session.on_changed(None),
                Err(RecvError::Closed) => Err(Refused("the node is stopping".into(), GOING_AWAY)),
            },
            _ = stopping(&mut shutdown) => Err(Refused("the node is stopping".into(), GOING_AWAY)),
        };
        match step {
            Ok(messages) => {
                for m in messages {
                    if socket.send(Message::Binary(Bytes::from(m))).await.is_err() {
                        return;
                    }
                }
            }
            Err(Refused(why, code)) => {
                debug!(peer = ?session.peer, why, "sync connection refused a message");
                let message = wire::encode(&Outgoing::Error { message: why.clone() });
                let _ = socket.send(Message::Binary(Bytes::from(message))).await;
                let reason: String = why.chars().take(100).collect();
                let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                break;
            }
        }
    }
    info!(node = %node.cfg.node, peer = ?session.peer, docs = session.docs.len(), "sync connection closed");
}

async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// 1009 for a message over the limit, else a protocol error.
fn close_code(e: &axum::Error) -> u16 {
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") { 1009 } else { POLICY }
}

/// Every chunk a sync message carries is a change or a document that decodes (checked
/// as defensively as a change from a log): automerge would skip a damaged chunk
/// silently, and the client would take the reply for an acknowledgement of it.
fn check_chunks(message: &SyncMessage) -> Result<(), Refused> {
    for (i, chunk) in message.changes.iter().enumerate() {
        let change = doc::decode_change(chunk.to_vec());
        if change.is_err() && doc::load_doc(chunk).is_err() {
            let why = change.err().map(|e| e.to_string()).unwrap_or_default();
            return Err(refuse(format!("an invalid sync message: its chunk {i} does not decode ({why})")));
        }
    }
    Ok(())
}

/// One connection's state: who the peer is, and a sync state per document it syncs.
struct Session {
    node: Arc<Node>,
    bucket: String,
    me: String,
    peer: Option<String>,
    docs: HashMap<DocId, State>,
}

impl Session {
    fn new(node: Arc<Node>) -> Session {
        let me = format!("concord-{}-{}", node.region, node.cfg.node);
        Session { bucket: node.cfg.sync_bucket.clone(), node, me, peer: None, docs: HashMap::new() }
    }

    async fn on_frame(&mut self, frame: &[u8]) -> Result<Vec<Vec<u8>>, Refused> {
        match wire::decode(frame).map_err(|e| refuse(format!("a malformed message: {e}")))? {
            Incoming::Join { sender, versions } => {
                if self.peer.is_some() {
                    return Err(refuse("a second join on one connection"));
                }
                if !versions.iter().any(|v| v == "1") {
                    return Err(refuse(format!("protocol versions {versions:?}: this server speaks \"1\"")));
                }
                let reply = wire::encode(&Outgoing::Peer { sender: &self.me, target: &sender });
                self.peer = Some(sender);
                Ok(vec![reply])
            }
            Incoming::Sync { request, document, data } => {
                if self.peer.is_none() {
                    return Err(refuse("a sync message before join"));
                }
                let id = DocId::parse(&document).map_err(refuse)?;
                let message =
                    SyncMessage::decode(&data).map_err(|e| refuse(format!("an invalid sync message: {e}")))?;
                check_chunks(&message)?;
                self.on_sync(id, request, message).await
            }
            Incoming::Leave => Err(Refused("the peer left".into(), 1000)),
            Incoming::Ignored => Ok(Vec::new()),
        }
    }

    async fn on_sync(&mut self, id: DocId, request: bool, message: SyncMessage) -> Result<Vec<Vec<u8>>, Refused> {
        let most = self.node.cfg.sync_docs_per_connection_max;
        if !self.docs.contains_key(&id) && self.docs.len() >= most {
            return Err(refuse(format!(
                "this connection syncs {most} documents already (sync_docs_per_connection_max)"
            )));
        }
        let stored = self.load(&id)?;
        let state = self.docs.entry(id.clone()).or_default();
        if stored.is_none() && request {
            // The client has nothing and neither has this node: say so. The document is
            // pushed if it appears later (the state stays).
            let peer = self.peer.as_deref().unwrap_or_default();
            return Ok(vec![wire::encode(&Outgoing::DocUnavailable {
                sender: &self.me,
                target: peer,
                document: id.as_str(),
            })]);
        }
        let mut copy = stored.unwrap_or_else(doc::new_doc);
        let before = copy.get_heads();
        let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            copy.receive_sync_message(state, message).map_err(|e| e.to_string())
        }));
        match received {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(refuse(format!("the sync message was refused: {e}"))),
            Err(_) => return Err(refuse("the sync message was refused: automerge failed on its changes")),
        }
        let new: Vec<Vec<u8>> = copy.get_changes(&before).into_iter().map(|c| c.raw_bytes().to_vec()).collect();
        if !new.is_empty() {
            let ack = submit(&self.node, &self.bucket, id.as_str(), new)
                .await
                .map_err(|e| refuse(format!("the changes were not stored: {e}")))?;
            self.applied_here(&ack).await?;
        }
        Ok(self.generate(&id)?.into_iter().collect())
    }

    /// After a document changed here (`None`: maybe any): what each of its connections'
    /// states has to send.
    fn on_changed(&mut self, key: Option<&str>) -> Result<Vec<Vec<u8>>, Refused> {
        let ids: Vec<DocId> = self.docs.keys().filter(|id| key.is_none_or(|k| k == id.as_str())).cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.generate(&id)?);
        }
        Ok(out)
    }

    /// The next sync message of `id` to the peer, from the stored document (an empty one
    /// while none is stored: the peer is asked for everything), if any.
    fn generate(&mut self, id: &DocId) -> Result<Option<Vec<u8>>, Refused> {
        let document = self.load(id)?.unwrap_or_else(doc::new_doc);
        let Some(state) = self.docs.get_mut(id) else { return Ok(None) };
        let Some(message) = document.generate_sync_message(state) else { return Ok(None) };
        let peer = self.peer.as_deref().unwrap_or_default();
        Ok(Some(wire::encode(&Outgoing::Sync {
            sender: &self.me,
            target: peer,
            document: id.as_str(),
            data: message.encode(),
        })))
    }

    fn load(&self, id: &DocId) -> Result<Option<Automerge>, Refused> {
        let unreadable = |e: String| Refused(format!("the document could not be read: {e}"), 1011);
        let Some(saved) = self.node.store.get_doc(&self.bucket, id.as_str()).map_err(|e| unreadable(e.to_string()))?
        else {
            return Ok(None);
        };
        doc::load_doc(&saved).map(Some).map_err(|e| unreadable(e.to_string()))
    }

    /// Wait until this node applied the write `ack` names (at once on the leader that
    /// wrote it; a follower waits for its log).
    async fn applied_here(&self, ack: &WriteAck) -> Result<(), Refused> {
        let Some(seq) = ack.seq else { return Ok(()) };
        let origin: Origin = ack.origin.parse().map_err(|e| refuse(format!("an acknowledgement's origin: {e}")))?;
        let mut applied = self.node.applied.clone();
        let reached = tokio::time::timeout(WRITE_WAIT, applied.wait_for(|vv| vv.get(&origin) >= seq)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Refused(
                format!("the changes are stored but not applied on this node within {} s", WRITE_WAIT.as_secs()),
                1011,
            )),
        }
    }
}

/// Write a client's changes: here when this node leads, else by the region's leader
/// (over NATS). The acknowledgement of the last one.
async fn submit(node: &Node, bucket: &str, key: &str, changes: Vec<Vec<u8>>) -> Result<WriteAck, NodeError> {
    let p = Params { deadline: Some(super::limits::Deadline::after(WRITE_WAIT)), ..Params::default() };
    if node.writes_here() {
        let ops = changes.into_iter().map(|c| concord_engine::WriteOp::DocChange {
            bucket: bucket.to_string(),
            key: key.to_string(),
            change: c.into(),
        });
        return super::write::write_all(node, ops.collect(), &p).await;
    }
    let subject = format!("{}.{}", super::nats::group(node.region.as_str()), super::Op::DocChanges.name());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Concord-Bucket", bucket);
    headers.insert("Concord-Key", key);
    let body = super::docs::encode_changes(&changes);
    let client = node.log.client();
    let asked = client.request_with_headers(subject, headers, body.into());
    let msg = tokio::time::timeout(WRITE_WAIT, asked)
        .await
        .map_err(|_| NodeError::Timeout(format!("the leader did not answer within {} s", WRITE_WAIT.as_secs())))?
        .map_err(|e| NodeError::unavailable(ErrorCode::NoLeader, format!("the region's leader: {e}")))?;
    let status = msg.headers.as_ref().and_then(|h| h.get("Concord-Status")).map(|v| v.as_str().to_string());
    if !matches!(status.as_deref(), None | Some("200")) {
        let why =
            format!("the leader answered {}: {}", status.unwrap_or_default(), String::from_utf8_lossy(&msg.payload));
        return Err(NodeError::unavailable(ErrorCode::NoLeader, why));
    }
    serde_json::from_slice(&msg.payload)
        .map_err(|e| NodeError::unavailable(ErrorCode::NoLeader, format!("the leader's acknowledgement: {e}")))
}
