//! Following streams: one supervised consumer per stream the engine reads (the region's
//! log for a follower, and a local mirror of every other region's log), all feeding
//! the worker through one bounded channel. The engine says which streams to follow and
//! from where ([`concord_engine::Output::follow`]); a parked stream is stopped
//! ([`concord_engine::Output::unfollow`]). A consumer that fails starts again from after
//! the stream's cursor as last committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_transport::LogEntry;
use concord_transport::nats::NatsLog;
use tokio::sync::{mpsc, watch};

use crate::identity::Identity;
use crate::supervisor::{Policy, Supervisor};

/// What the worker asks of whoever delivers streams.
pub trait StreamControl: Send {
    fn follow(&mut self, stream: &str, from: u64);
    fn unfollow(&mut self, stream: &str);
}

/// Streams are delivered by someone else (tests feed the worker's channel directly).
pub struct Manual;

impl StreamControl for Manual {
    fn follow(&mut self, _: &str, _: u64) {}
    fn unfollow(&mut self, _: &str) {}
}

/// Consumers of local JetStream streams.
pub struct StreamSet {
    log: Arc<NatsLog>,
    tx: mpsc::Sender<(String, LogEntry)>,
    supervisor: Supervisor,
    /// The cursors as last committed: where a restarted consumer resumes.
    cursors: watch::Receiver<BTreeMap<String, u64>>,
    running: BTreeMap<String, watch::Sender<bool>>,
    /// Mirror stream → the region whose log it mirrors (read instead while the mirror
    /// lags far behind: `concord_transport::follow`).
    origins: BTreeMap<String, String>,
    /// Who may have written each entry ([`crate::identity`]), and this region (whose log
    /// is the stream no mirror names).
    identity: Option<(Arc<Identity>, String)>,
}

impl StreamSet {
    pub fn new(
        log: Arc<NatsLog>,
        tx: mpsc::Sender<(String, LogEntry)>,
        supervisor: Supervisor,
        cursors: watch::Receiver<BTreeMap<String, u64>>,
        origins: BTreeMap<String, String>,
    ) -> StreamSet {
        StreamSet { log, tx, supervisor, cursors, running: BTreeMap::new(), origins, identity: None }
    }

    /// Check the publisher of every entry before the worker sees it.
    pub fn with_identity(mut self, identity: Arc<Identity>, own_region: String) -> Self {
        self.identity = Some((identity, own_region));
        self
    }
}

/// Entries checked at once on their way from a stream's consumer to the worker.
const SCREEN_QUEUE: usize = 256;

/// Pass `rx`'s entries to `tx` with the verdict on their publisher, in order; an entry
/// whose verdict cannot be had now (its region's lease history unreachable) holds the
/// stream back until it can.
async fn screen(
    identity: Arc<Identity>,
    region: String,
    mut rx: mpsc::Receiver<(String, LogEntry)>,
    tx: mpsc::Sender<(String, LogEntry)>,
) {
    while let Some((stream, mut entry)) = rx.recv().await {
        let mut backoff = concord_transport::backoff::Backoff::network();
        entry.forged = loop {
            match identity.verdict(&region, &entry).await {
                Ok(v) => break v,
                Err(why) => {
                    tracing::warn!(stream, why, "checking who wrote an entry failed; asking again");
                    backoff.wait().await;
                }
            }
        };
        if tx.send((stream, entry)).await.is_err() {
            return;
        }
    }
}

impl StreamControl for StreamSet {
    fn follow(&mut self, stream: &str, from: u64) {
        tracing::info!(stream, from, "following the stream");
        self.unfollow(stream);
        let (stop_tx, stop_rx) = watch::channel(false);
        self.running.insert(stream.to_string(), stop_tx);
        let (log, tx, cursors, name) = (self.log.clone(), self.tx.clone(), self.cursors.clone(), stream.to_string());
        let origin = self.origins.get(stream).cloned();
        let identity = self.identity.clone().map(|(id, own)| (id, origin.clone().unwrap_or(own)));
        self.supervisor.spawn(format!("follow {stream}"), Policy::Restart, move || {
            let resume = cursors.borrow().get(&name).map_or(0, |c| c + 1);
            let (log, tx, name, mut stop, origin, identity) =
                (log.clone(), tx.clone(), name.clone(), stop_rx.clone(), origin.clone(), identity.clone());
            async move {
                if *stop.borrow() {
                    return Ok(());
                }
                let Some((identity, region)) = identity else {
                    tokio::select! {
                        // `follow` returns only once the worker's channel closed: shutdown.
                        _ = log.follow(name, from.max(resume), origin, tx) => return Ok(()),
                        _ = stop.changed() => return Ok(()),
                    }
                };
                let (screen_tx, screen_rx) = mpsc::channel(SCREEN_QUEUE);
                tokio::select! {
                    _ = log.follow(name, from.max(resume), origin, screen_tx) => Ok(()),
                    _ = screen(identity, region, screen_rx, tx) => Ok(()),
                    _ = stop.changed() => Ok(()),
                }
            }
        });
    }

    fn unfollow(&mut self, stream: &str) {
        if let Some(stop) = self.running.remove(stream) {
            tracing::info!(stream, "no longer following the stream");
            let _ = stop.send(true);
        }
    }
}
