//! One sync connection's state and what it does with each message: who the peer is, a
//! sync state per document it syncs, and the replies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use automerge::sync::{Message as SyncMessage, State};
use automerge::{Change, ChangeHash};

use super::doc_id::DocId;
use super::stored::{self, WRITE_WAIT, blocking};
use super::wire::{self, Incoming, Outgoing};
use super::{Refused, Relayed, read_message, refuse};
use crate::{Node, metrics};

pub struct Session {
    node: Arc<Node>,
    /// This server's peer id.
    me: String,
    pub peer: Option<String>,
    pub docs: HashMap<DocId, State>,
    /// False with the read token: the sync states are read-only (automerge takes none of
    /// the client's changes, and tells the client so).
    may_write: bool,
    /// This connection, among the node's (relayed messages name where they came from).
    id: u64,
}

impl Session {
    pub fn new(node: Arc<Node>, may_write: bool) -> Session {
        let me = format!("concord-{}-{}", node.region, node.cfg.node);
        let id = node.sync.next_connection.fetch_add(1, Ordering::Relaxed);
        Session { node, me, peer: None, docs: HashMap::new(), may_write, id }
    }

    /// What to answer a binary frame (`Err`: an error message, and the connection ends).
    pub async fn on_frame(&mut self, frame: &[u8]) -> Result<Vec<Vec<u8>>, Refused> {
        let incoming = wire::decode(frame).map_err(|e| refuse(format!("a malformed message: {e}")))?;
        if self.peer.is_none() && !matches!(incoming, Incoming::Join { .. } | Incoming::Leave) {
            return Err(refuse("a message before join"));
        }
        match incoming {
            Incoming::Join { sender, versions } => self.on_join(sender, &versions),
            Incoming::Sync { request, document, data } => {
                let id = DocId::parse(&document).map_err(refuse)?;
                let message = read_message(&data).map_err(|e| refuse(format!("an invalid sync message: {e}")))?;
                self.on_sync(id, request, message).await
            }
            Incoming::Ephemeral(mut message) => {
                let id = DocId::parse(&message.document).map_err(refuse)?;
                // As the server knows them: a client does not speak for another.
                message.sender = self.peer.clone().unwrap_or_default();
                message.document = id.as_str().to_string();
                if self.docs.contains_key(&id) {
                    let _ = self.node.sync.relay.send(Arc::new(Relayed { from: self.id, doc: id, message }));
                }
                Ok(Vec::new())
            }
            Incoming::Leave => Err(Refused(String::new(), 1000)),
            Incoming::Ignored => Ok(Vec::new()),
        }
    }

    fn on_join(&mut self, sender: String, versions: &[String]) -> Result<Vec<Vec<u8>>, Refused> {
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

    /// Another connection's ephemeral message, for this peer if it syncs the document.
    pub fn relay(&self, r: &Relayed) -> Vec<Vec<u8>> {
        match &self.peer {
            Some(peer) if r.from != self.id && self.docs.contains_key(&r.doc) => {
                vec![wire::encode(&Outgoing::Ephemeral { target: peer, message: &r.message })]
            }
            _ => Vec::new(),
        }
    }

    async fn on_sync(&mut self, id: DocId, request: bool, message: SyncMessage) -> Result<Vec<Vec<u8>>, Refused> {
        let most = self.node.cfg.sync_docs_per_connection_max;
        if !self.docs.contains_key(&id) && self.docs.len() >= most {
            return Err(refuse(format!(
                "this connection syncs {most} documents already (sync_docs_per_connection_max)"
            )));
        }
        let fresh = if self.may_write { State::new() } else { State::new_read_only() };
        let mut state = self.docs.remove(&id).unwrap_or(fresh);
        let (node, key) = (self.node.clone(), id.clone());
        let (state, received) = blocking(move || {
            let received = stored::receive(&node, &key, &mut state, request, message);
            (state, received)
        })
        .await?;
        self.docs.insert(id.clone(), state);
        let Some(new) = received? else {
            // The client has nothing and neither has this node: say so. The document is
            // pushed if it appears later (the state stays).
            let peer = self.peer.as_deref().unwrap_or_default();
            return Ok(vec![wire::encode(&Outgoing::DocUnavailable {
                sender: &self.me,
                target: peer,
                document: id.as_str(),
            })]);
        };
        if !new.is_empty() {
            if !self.may_write {
                return Err(refuse("the sync message carries changes, and this token may read, not write"));
            }
            self.store(&id, &new).await?;
        }
        self.generate(Some(&id)).await
    }

    /// Write the client's changes and wait until this node holds them (a follower: until
    /// its log brought them back), so the reply that acknowledges them is true.
    async fn store(&self, id: &DocId, new: &[Change]) -> Result<(), Refused> {
        stored::submit(&self.node, id, new).await.map_err(|e| refuse(format!("the changes were not stored: {e}")))?;
        metrics::add(&self.node.metrics.sync_changes_written_total, new.len() as u64);
        let hashes: Vec<ChangeHash> = new.iter().map(Change::hash).collect();
        let deadline = tokio::time::Instant::now() + WRITE_WAIT;
        let mut applied = self.node.applied.clone();
        loop {
            let (node, key, hashes) = (self.node.clone(), id.clone(), hashes.clone());
            if blocking(move || stored::holds(&node, &key, &hashes)).await?? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let why = format!("the changes are written but not held here within {} s", WRITE_WAIT.as_secs());
                return Err(Refused(why, 1011));
            }
            // Look again when this replica applied more (at most every 20 ms).
            let _ = tokio::time::timeout_at(deadline, applied.changed()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The messages the states of `key`'s document (`None`: of every document) have to
    /// send now, from the stored documents.
    pub async fn generate(&mut self, key: Option<&DocId>) -> Result<Vec<Vec<u8>>, Refused> {
        let ids: Vec<DocId> = self.docs.keys().filter(|id| key.is_none_or(|k| k == *id)).cloned().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut states: Vec<(DocId, State)> =
            ids.into_iter().map(|id| (id.clone(), self.docs.remove(&id).expect("listed above"))).collect();
        let node = self.node.clone();
        let (states, messages) = blocking(move || {
            let mut messages = Vec::new();
            for (id, state) in states.iter_mut() {
                match stored::next_message(&node, id, state) {
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
}
