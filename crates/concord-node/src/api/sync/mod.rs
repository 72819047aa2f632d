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
//! `ephemeral` messages (presence, cursors: never stored) are relayed to the node's other
//! connections that sync the document, not to other nodes or regions.
//!
//! Not done: a sync state is not kept across connections (the peer metadata names no `storageId`), so a client that reconnects
//! starts its sync from its heads again.

pub mod doc_id;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tracing::info;

use self::doc_id::DocId;
use self::wire::{Incoming, Outgoing};
use super::auth::{self, Access};
use super::{Params, Reply};
use crate::error::NodeError;
use crate::{Node, metrics};

/// How long a sync message's changes may take to be written and applied here.
const WRITE_WAIT: Duration = Duration::from_secs(30);
/// Close codes: the message broke the protocol (1008), or the server is going away (1001).
const POLICY: u16 = 1008;
const GOING_AWAY: u16 = 1001;

/// What a node's sync connections share: a permit each, and the ephemeral messages
/// their clients send (relayed to this node's other connections that sync the
/// document, as automerge-repo's servers do; not to other nodes).
pub struct Hub {
    pub connections: Arc<Semaphore>,
    relay: broadcast::Sender<Arc<Relayed>>,
    next_connection: AtomicU64,
}

/// An ephemeral message and the connection it came from.
struct Relayed {
    from: u64,
    message: wire::Ephemeral,
}

/// Ephemeral messages a connection may fall behind by (then it misses some: they are
/// best effort).
const RELAY_CAPACITY: usize = 256;

impl Hub {
    pub fn new(connections_max: usize) -> Hub {
        Hub {
            connections: Arc::new(Semaphore::new(connections_max)),
            relay: broadcast::channel(RELAY_CAPACITY).0,
            next_connection: AtomicU64::new(0),
        }
    }
}

/// Answer the upgrade (or why not), then run the connection until it ends.
pub async fn upgrade(node: Arc<Node>, req: Request) -> Response {
    // The token: `Authorization: Bearer`, or `?token=` (a browser's WebSocket cannot send
    // headers). The read token syncs read-only: changes from the client are refused.
    let from_query = req.uri().query().and_then(query_token);
    let presented = auth::bearer(req.headers()).map(<[u8]>::to_vec).or(from_query);
    let may_write = match node.tokens.check_presented(presented.as_deref(), Access::Write) {
        Ok(()) => true,
        Err(NodeError::Forbidden(_)) => false,
        Err(e) => return error(e),
    };
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
    let Ok(permit) = node.sync.connections.clone().try_acquire_owned() else {
        let why = format!("{} sync connections are open (sync_connections_max)", node.cfg.sync_connections_max);
        return error(NodeError::unavailable(ErrorCode::Overloaded, why));
    };
    let max = node.cfg.sync_message_bytes_max;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| run(node, socket, permit, may_write))
}

/// The `token` parameter of a query, percent-decoded.
fn query_token(query: &str) -> Option<Vec<u8>> {
    let raw = query.split('&').find_map(|pair| pair.strip_prefix("token="))?;
    Some(super::http::percent_decode(raw))
}

fn error(e: NodeError) -> Response {
    let reply = Reply::error(&e);
    let status = axum::http::StatusCode::from_u16(reply.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let mut resp = (status, [(axum::http::header::CONTENT_TYPE, reply.content_type)], reply.body).into_response();
    if matches!(e, NodeError::Unauthorized(_)) {
        resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, auth::challenge());
    }
    resp
}

/// Why a connection ends: the message for the client, and the close code.
struct Refused(String, u16);

fn refuse(why: impl Into<String>) -> Refused {
    Refused(why.into(), POLICY)
}

async fn run(node: Arc<Node>, mut socket: WebSocket, _permit: OwnedSemaphorePermit, may_write: bool) {
    let mut feed = node.doc_feed.subscribe();
    let mut relayed = node.sync.relay.subscribe();
    let mut shutdown = node.shutdown.clone();
    let mut session = Session::new(node.clone(), may_write);
    info!(node = %node.cfg.node, "sync connection opened");
    loop {
        let step = tokio::select! {
            frame = socket.recv() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => Err(Refused(format!("the frame could not be read: {e}"), close_code(&e))),
                Some(Ok(Message::Binary(bytes))) => {
                    metrics::inc(&node.metrics.sync_messages_received_total);
                    session.on_frame(&bytes).await
                }
                Some(Ok(Message::Text(_))) => Err(refuse("a text frame: messages are binary CBOR")),
                Some(Ok(_)) => Ok(Vec::new()),
            },
            changed = feed.recv() => match changed {
                Ok((bucket, key)) if bucket == session.bucket => session.generate(Some(&key)).await,
                Ok(_) => Ok(Vec::new()),
                Err(RecvError::Lagged(_)) => session.generate(None).await,
                Err(RecvError::Closed) => Err(Refused("the node is stopping".into(), GOING_AWAY)),
            },
            relay = relayed.recv() => match relay {
                Ok(r) => Ok(session.relay(&r)),
                Err(RecvError::Lagged(_)) => Ok(Vec::new()),
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
                    metrics::inc(&node.metrics.sync_messages_sent_total);
                }
            }
            Err(Refused(why, code)) => {
                metrics::inc(&node.metrics.sync_refused_total);
                info!(peer = ?session.peer, why, "sync connection ended with an error");
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
    /// False with the read token: the client's changes are refused.
    may_write: bool,
    /// This connection, among the node's (relayed messages name where they came from).
    id: u64,
}

impl Session {
    fn new(node: Arc<Node>, may_write: bool) -> Session {
        let me = format!("concord-{}-{}", node.region, node.cfg.node);
        let id = node.sync.next_connection.fetch_add(1, Ordering::Relaxed);
        Session { bucket: node.cfg.sync_bucket.clone(), node, me, peer: None, docs: HashMap::new(), may_write, id }
    }

    /// Another connection's ephemeral message, for this peer if it syncs the document.
    fn relay(&self, r: &Relayed) -> Vec<Vec<u8>> {
        let (Some(peer), false) = (self.peer.as_deref(), r.from == self.id) else { return Vec::new() };
        if !self.docs.keys().any(|id| id.as_str() == r.message.document) {
            return Vec::new();
        }
        vec![wire::encode(&Outgoing::Ephemeral { target: peer, message: &r.message })]
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
            Incoming::Ephemeral(mut message) => {
                if self.peer.is_none() {
                    return Err(refuse("an ephemeral message before join"));
                }
                let id = DocId::parse(&message.document).map_err(refuse)?;
                message.document = id.as_str().to_string();
                if self.docs.contains_key(&id) {
                    let _ = self.node.sync.relay.send(Arc::new(Relayed { from: self.id, message }));
                }
                Ok(Vec::new())
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
        let (node, bucket, key) = (self.node.clone(), self.bucket.clone(), id.clone());
        let mut state = self.docs.remove(&id).unwrap_or_default();
        let (state, received) = blocking(move || {
            let received = receive(&node, &bucket, &key, &mut state, request, message);
            (state, received)
        })
        .await?;
        self.docs.insert(id.clone(), state);
        let new = match received? {
            // The client has nothing and neither has this node: say so. The document is
            // pushed if it appears later (the state stays).
            None => {
                let peer = self.peer.as_deref().unwrap_or_default();
                let unavailable = Outgoing::DocUnavailable { sender: &self.me, target: peer, document: id.as_str() };
                return Ok(vec![wire::encode(&unavailable)]);
            }
            Some(new) => new,
        };
        if !new.is_empty() && !self.may_write {
            return Err(refuse("the sync message carries changes, and this token may read, not write"));
        }
        if !new.is_empty() {
            let count = new.len() as u64;
            let ack = submit(&self.node, &self.bucket, id.as_str(), new)
                .await
                .map_err(|e| refuse(format!("the changes were not stored: {e}")))?;
            metrics::add(&self.node.metrics.sync_changes_written_total, count);
            self.applied_here(&ack).await?;
        }
        self.generate(Some(id.as_str())).await
    }

    /// After a document changed here (`None`: maybe any), or after a message: what the
    /// states of the documents it names have to send, from the stored documents.
    async fn generate(&mut self, key: Option<&str>) -> Result<Vec<Vec<u8>>, Refused> {
        let ids: Vec<DocId> = self.docs.keys().filter(|id| key.is_none_or(|k| k == id.as_str())).cloned().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut states: Vec<(DocId, State)> =
            ids.into_iter().map(|id| (id.clone(), self.docs.remove(&id).expect("listed above"))).collect();
        let (node, bucket) = (self.node.clone(), self.bucket.clone());
        let (states, messages) = blocking(move || {
            let mut messages = Vec::new();
            for (id, state) in states.iter_mut() {
                match generate(&node, &bucket, id, state) {
                    Ok(Some(m)) => messages.push((id.clone(), m)),
                    Ok(None) => {}
                    Err(e) => return (states, Err(e)),
                }
            }
            (states, Ok(messages))
        })
        .await?;
        self.docs.extend(states);
        let peer = self.peer.as_deref().unwrap_or_default();
        let encode = |(id, data): (DocId, Vec<u8>)| {
            wire::encode(&Outgoing::Sync { sender: &self.me, target: peer, document: id.as_str(), data })
        };
        Ok(messages?.into_iter().map(encode).collect())
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

/// Automerge's work (loading, merging, generating: proportional to the document) off
/// the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refused> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Refused("the server failed on the message".into(), 1011))
}

/// Receive a client's sync message into a copy of the stored document: the changes it
/// brought that the document did not have (in causal order), or `None` when the client
/// asked (`request`) for a document this node does not have.
fn receive(
    node: &Node,
    bucket: &str,
    id: &DocId,
    state: &mut State,
    request: bool,
    message: SyncMessage,
) -> Result<Option<Vec<Vec<u8>>>, Refused> {
    let stored = load(node, bucket, id)?;
    if stored.is_none() && request {
        return Ok(None);
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
    Ok(Some(copy.get_changes(&before).into_iter().map(|c| c.raw_bytes().to_vec()).collect()))
}

/// The next sync message (encoded) of `id` to the peer, from the stored document (an
/// empty one while none is stored: the peer is asked for everything), if any.
fn generate(node: &Node, bucket: &str, id: &DocId, state: &mut State) -> Result<Option<Vec<u8>>, Refused> {
    let document = load(node, bucket, id)?.unwrap_or_else(doc::new_doc);
    Ok(document.generate_sync_message(state).map(SyncMessage::encode))
}

fn load(node: &Node, bucket: &str, id: &DocId) -> Result<Option<Automerge>, Refused> {
    let unreadable = |e: String| Refused(format!("the document could not be read: {e}"), 1011);
    let Some(saved) = node.store.get_doc(bucket, id.as_str()).map_err(|e| unreadable(e.to_string()))? else {
        return Ok(None);
    };
    doc::load_doc(&saved).map(Some).map_err(|e| unreadable(e.to_string()))
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
