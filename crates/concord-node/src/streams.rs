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
}

impl StreamSet {
    pub fn new(
        log: Arc<NatsLog>,
        tx: mpsc::Sender<(String, LogEntry)>,
        supervisor: Supervisor,
        cursors: watch::Receiver<BTreeMap<String, u64>>,
        origins: BTreeMap<String, String>,
    ) -> StreamSet {
        StreamSet { log, tx, supervisor, cursors, running: BTreeMap::new(), origins }
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
        self.supervisor.spawn(format!("follow {stream}"), Policy::Restart, move || {
            let resume = cursors.borrow().get(&name).map_or(0, |c| c + 1);
            let (log, tx, name, mut stop, origin) =
                (log.clone(), tx.clone(), name.clone(), stop_rx.clone(), origin.clone());
            async move {
                if *stop.borrow() {
                    return Ok(());
                }
                tokio::select! {
                    // `follow` returns only once the worker's channel closed: shutdown.
                    _ = log.follow(name, from.max(resume), origin, tx) => Ok(()),
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
