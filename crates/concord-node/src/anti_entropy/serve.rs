//! The peer's side of anti-entropy: every node answers, on
//! `concord.ae.<region>.<node>.tree` and `.entries` (core NATS, so across regions), with
//! its tree and applied vector, and with the entries of the leaves it is asked for.
//!
//! A tree is a scan of the whole store: one is built at a time, and one built less than
//! [`TREE_REUSE`] ago is answered again. A page of entries is bounded by the request's
//! `bytes_max` and by what a NATS message may carry. A request that cannot be answered
//! (it does not decode, the store failed) gets `Concord-Status: 400` or `500` and the
//! reason as its body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use concord_core::merkle::{EntriesRequest, TreeReply};
use concord_storage::Store;
use futures::StreamExt;
use tokio::sync::{Mutex, watch};
use tracing::warn;

use super::subject;

/// How long a built tree is answered again.
pub const TREE_REUSE: Duration = Duration::from_secs(5);
/// What a reply leaves free of the NATS server's `max_payload` (headers, framing).
const REPLY_MARGIN_BYTES: usize = 64 << 10;

/// What answers a peer.
pub struct Responder {
    pub store: Store,
    pub region: String,
    pub node: String,
    /// The NATS server's `max_payload`.
    pub max_payload: usize,
    /// The last tree built: when, and its reply.
    last_tree: Mutex<Option<(Instant, TreeReply)>>,
}

impl Responder {
    pub fn new(store: Store, region: String, node: String, max_payload: usize) -> Responder {
        Responder { store, region, node, max_payload, last_tree: Mutex::new(None) }
    }

    /// Answer requests until shutdown (an error when the subscription ends before).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut sub = client.subscribe(subject(&self.region, &self.node, "*")).await.map_err(|e| e.to_string())?;
        loop {
            let msg = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
                msg = sub.next() => msg.ok_or("the anti-entropy subscription ended")?,
            };
            let Some(reply_to) = msg.reply.clone() else { continue };
            let op = msg.subject.rsplit('.').next().unwrap_or_default().to_string();
            let (status, body) = match self.answer(&op, &msg.payload).await {
                Ok(body) => ("200", body),
                Err((status, why)) => {
                    warn!(op, why, "an anti-entropy request was not answered");
                    (status, Bytes::from(why))
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert("Concord-Status", status);
            if let Err(e) = client.publish_with_headers(reply_to, headers, body).await {
                warn!(error = %e, "an anti-entropy reply was not sent");
            }
        }
    }

    async fn answer(&self, op: &str, payload: &[u8]) -> Result<Bytes, (&'static str, String)> {
        match op {
            // A body asks for the void judgements (a requester that predates them sends
            // none, and would refuse a reply that carries them).
            "tree" => {
                let mut reply = self.tree().await.map_err(|e| ("500", e))?;
                if payload.first() != Some(&super::TREE_WITH_VOID) {
                    reply.void_from = None;
                }
                Ok(Bytes::from(reply.encode()))
            }
            "entries" => {
                let mut req = EntriesRequest::decode(payload).map_err(|e| ("400", e.to_string()))?;
                req.bytes_max = req.bytes_max.min(self.max_payload.saturating_sub(REPLY_MARGIN_BYTES) as u64 / 2);
                let store = self.store.clone();
                let with_applied = req.with_applied;
                let mut page = tokio::task::spawn_blocking(move || store.entries_in(&req))
                    .await
                    .map_err(|e| ("500", e.to_string()))?
                    .map_err(|e| ("500", e.to_string()))?;
                if !with_applied {
                    page.applied = None;
                }
                let page = page.encode();
                if page.len() + REPLY_MARGIN_BYTES > self.max_payload {
                    return Err(("500", format!("an entry of {} bytes does not fit in a NATS message", page.len())));
                }
                Ok(Bytes::from(page))
            }
            other => Err(("400", format!("unknown anti-entropy operation {other:?}"))),
        }
    }

    async fn tree(&self) -> Result<TreeReply, String> {
        let mut last = self.last_tree.lock().await;
        if let Some((at, reply)) = last.as_ref()
            && at.elapsed() < TREE_REUSE
        {
            return Ok(reply.clone());
        }
        let store = self.store.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<_, concord_storage::StorageError> {
            let (tree, applied) = store.digest()?;
            Ok((tree, applied, store.void_from()?))
        });
        let (tree, applied, void) = built.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        let reply = TreeReply { node: self.node.clone(), applied, tree, void_from: Some(void.into_iter().collect()) };
        *last = Some((Instant::now(), reply.clone()));
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::merkle::{EntriesReply, LEAVES};

    /// A requester that predates the void judgements and the pages' vectors sends an
    /// empty tree request and an entries request without the option: it gets replies it
    /// decodes (no trailing fields); a current one asks and gets them.
    #[tokio::test]
    async fn an_older_requester_gets_the_older_replies_and_a_current_one_the_fields_it_asks_for() {
        let dir = std::env::temp_dir().join(format!("concord-ae-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let r = Responder::new(store, "us-east".into(), "us-east-1".into(), 1 << 20);
        let old = r.answer("tree", &[]).await.unwrap();
        assert_eq!(TreeReply::decode(&old).unwrap().void_from, None);
        let current = r.answer("tree", &[super::super::TREE_WITH_VOID]).await.unwrap();
        assert_eq!(TreeReply::decode(&current).unwrap().void_from, Some(Default::default()));
        for with_applied in [false, true] {
            let req = EntriesRequest { leaves: (0..LEAVES).collect(), after: None, bytes_max: 1 << 16, with_applied };
            let page = EntriesReply::decode(&r.answer("entries", &req.encode()).await.unwrap()).unwrap();
            assert_eq!(page.applied.is_some(), with_applied);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
