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
//! connection ends unread), `sync_docs_per_connection_max` documents per connection,
//! and what a message may hold ([`checks`]). A client that does not read what it is sent
//! for `SEND_WAIT` is disconnected.
//!
//! `ephemeral` messages (presence, cursors: never stored) are relayed to the node's other
//! connections that sync the document, not to other nodes or regions.
//!
//! Not done: a sync state is not kept across connections (the peer metadata names no `storageId`), so a client that reconnects
//! starts its sync from its heads again.

mod checks;
pub mod doc_id;
mod session;
mod stored;
mod wire;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use concord_api::ErrorCode;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tracing::info;

use self::doc_id::DocId;
use self::session::Session;
use super::Reply;
use super::auth::{self, Access};
use crate::error::NodeError;
use crate::{Node, metrics};

/// Close codes: the message broke the protocol (1008), the server is going away (1001),
/// the server failed (1011).
const POLICY: u16 = 1008;
const GOING_AWAY: u16 = 1001;
/// Longest a message to a client may wait to be taken (a client that does not read is
/// disconnected rather than held in memory).
const SEND_WAIT: Duration = Duration::from_secs(30);

/// What a node's sync connections share: a permit each, and the ephemeral messages
/// their clients send (relayed to this node's other connections that sync the
/// document, as automerge-repo's servers do; not to other nodes).
pub struct Hub {
    pub connections: Arc<Semaphore>,
    relay: broadcast::Sender<Arc<Relayed>>,
    next_connection: AtomicU64,
}

/// An ephemeral message, the connection it came from and its document.
struct Relayed {
    from: u64,
    doc: DocId,
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

/// A client's sync message, decoded and checked ([`checks`]) before automerge reads it.
fn read_message(data: &[u8]) -> Result<automerge::sync::Message, String> {
    let message = automerge::sync::Message::decode(data).map_err(|e| e.to_string())?;
    checks::check(&message)?;
    Ok(message)
}

/// A frame as a connection reads it, up to automerge (for the fuzzers:
/// `concord_fuzz::sync_frame`): the document and checked sync message of a `sync` or
/// `request`; `None` for the other kinds; `Err` for what the connection refuses.
pub fn read_frame(frame: &[u8]) -> Result<Option<(DocId, automerge::sync::Message)>, String> {
    match wire::decode(frame)? {
        wire::Incoming::Sync { document, data, .. } => Ok(Some((DocId::parse(&document)?, read_message(&data)?))),
        wire::Incoming::Ephemeral(e) => DocId::parse(&e.document).map(|_| None),
        _ => Ok(None),
    }
}

/// Answer the upgrade (or why not), then run the connection until it ends.
pub async fn upgrade(node: Arc<Node>, req: Request) -> Response {
    // The token: `Authorization: Bearer`, or `?token=` (a browser's WebSocket cannot send
    // headers). The read token syncs read-only.
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

/// Why a connection ends: the message for the client, and the close code (1000: the
/// client left, nothing to say).
struct Refused(String, u16);

fn refuse(why: impl Into<String>) -> Refused {
    Refused(why.into(), POLICY)
}

async fn run(node: Arc<Node>, mut socket: WebSocket, _permit: OwnedSemaphorePermit, may_write: bool) {
    let mut feed = node.doc_feed.subscribe();
    let mut relayed = node.sync.relay.subscribe();
    let mut shutdown = node.shutdown.clone();
    let mut session = Session::new(node.clone(), may_write);
    let stopping_node = || Err(Refused("the node is stopping".into(), GOING_AWAY));
    info!(node = %node.cfg.node, "sync connection opened");
    loop {
        let step = tokio::select! {
            frame = socket.recv() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => Err(refuse(format!("the frame could not be read: {e}"))),
                Some(Ok(Message::Binary(bytes))) => {
                    metrics::inc(&node.metrics.sync_messages_received_total);
                    session.on_frame(&bytes).await
                }
                Some(Ok(Message::Text(_))) => Err(refuse("a text frame: messages are binary CBOR")),
                Some(Ok(_)) => Ok(Vec::new()),
            },
            changed = feed.recv() => match changed {
                Ok((_, key)) => match DocId::parse(&key) {
                    Ok(id) => session.generate(Some(&id)).await,
                    Err(_) => Ok(Vec::new()),
                },
                Err(RecvError::Lagged(_)) => session.generate(None).await,
                Err(RecvError::Closed) => stopping_node(),
            },
            relay = relayed.recv() => match relay {
                Ok(r) => Ok(session.relay(&r)),
                Err(RecvError::Lagged(_)) => Ok(Vec::new()),
                Err(RecvError::Closed) => stopping_node(),
            },
            _ = stopping(&mut shutdown) => stopping_node(),
        };
        match step {
            Ok(messages) => {
                for m in messages {
                    let sent = tokio::time::timeout(SEND_WAIT, socket.send(Message::Binary(Bytes::from(m)))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        info!(peer = ?session.peer, "sync connection dropped: the client does not take messages");
                        return;
                    }
                    metrics::inc(&node.metrics.sync_messages_sent_total);
                }
            }
            Err(Refused(why, code)) => {
                if code != 1000 {
                    metrics::inc(&node.metrics.sync_refused_total);
                    info!(peer = ?session.peer, why, "sync connection ended with an error");
                    let message = wire::encode(&wire::Outgoing::Error { message: why.clone() });
                    let _ = tokio::time::timeout(SEND_WAIT, socket.send(Message::Binary(Bytes::from(message)))).await;
                }
                let reason: String = why.chars().take(100).collect();
                let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                let _ = tokio::time::timeout(SEND_WAIT, socket.send(close)).await;
                break;
            }
        }
    }
    info!(node = %node.cfg.node, peer = ?session.peer, docs = session.docs.len(), "sync connection closed");
}

async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
