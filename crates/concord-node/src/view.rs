//! What the rest of the node sees of the engine: after every step the worker publishes
//! the applied vector (sessions wait on it), the cursors (stream lag, consumer restarts)
//! and an [`EngineView`] (status), and turns the step's alerts and counts into logs and
//! metrics.

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::conflict::ConflictRecord;
use concord_core::token;
use concord_core::vv::VersionVector;
use concord_engine::{Alert, DocKey, Engine, Gap, Parked, RoleView, Stats};
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

use crate::metrics::{self, Metrics};

/// The engine's state as status shows it: one consistent snapshot, taken after a step.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineView {
    pub role: RoleView,
    pub applied: VersionVector,
    pub cursors: BTreeMap<String, u64>,
    pub parked: BTreeMap<String, Parked>,
    pub gaps: Vec<Gap>,
    /// Origins whose next changeset waits for a mark's context (not a gap).
    pub context_waits: usize,
    pub waiting: usize,
    /// Dead letters ever (ids given out).
    pub dead_letters: u64,
}

impl EngineView {
    pub fn of(engine: &Engine) -> EngineView {
        EngineView {
            role: engine.role(),
            applied: engine.applied().clone(),
            cursors: engine.cursors().clone(),
            parked: engine.parked().clone(),
            gaps: engine.gaps(),
            context_waits: engine.context_waits().len(),
            waiting: engine.waiting_count(),
            dead_letters: engine.dead_letters(),
        }
    }
}

/// The senders the worker publishes on.
pub struct Watches {
    pub applied: watch::Sender<VersionVector>,
    /// The session token of `applied`, encoded once per change (every answer carries
    /// it): ASCII.
    pub token: watch::Sender<Bytes>,
    pub cursors: watch::Sender<BTreeMap<String, u64>>,
    pub view: watch::Sender<EngineView>,
    /// Every conflict record this replica commits, as it commits it (for
    /// `GET /v1/conflicts/events`; a slow receiver lags, it never holds up the worker).
    pub conflicts: broadcast::Sender<ConflictRecord>,
    /// Every document of the sync bucket (`docs_bucket`) this replica commits a change of
    /// (`GET /v1/sync` pushes it to the clients that sync it; a slow receiver lags and
    /// syncs all its documents again).
    pub docs: broadcast::Sender<DocKey>,
    pub docs_bucket: String,
}

/// The receivers the API and other tasks read.
#[derive(Clone)]
pub struct Views {
    pub applied: watch::Receiver<VersionVector>,
    pub token: watch::Receiver<Bytes>,
    pub cursors: watch::Receiver<BTreeMap<String, u64>>,
    pub view: watch::Receiver<EngineView>,
    /// Subscribe to it for the records committed from then on.
    pub conflicts: broadcast::Sender<ConflictRecord>,
    /// Subscribe to it for the documents changed from then on.
    pub docs: broadcast::Sender<DocKey>,
}

/// Documents changed that a subscriber may fall behind by before it lags.
pub const DOC_FEED_CAPACITY: usize = 1024;

impl Watches {
    pub fn new(engine: &Engine, docs_bucket: &str) -> (Watches, Views) {
        let (applied, applied_rx) = watch::channel(engine.applied().clone());
        let (token, token_rx) = watch::channel(Bytes::from(token::encode(engine.applied())));
        let (cursors, cursors_rx) = watch::channel(engine.cursors().clone());
        let (view, view_rx) = watch::channel(EngineView::of(engine));
        let (conflicts, _) = broadcast::channel(crate::api::CONFLICT_FEED_CAPACITY);
        let (docs, _) = broadcast::channel(DOC_FEED_CAPACITY);
        let views = Views {
            applied: applied_rx,
            token: token_rx,
            cursors: cursors_rx,
            view: view_rx,
            conflicts: conflicts.clone(),
            docs: docs.clone(),
        };
        let docs_bucket = docs_bucket.to_string();
        (Watches { applied, token, cursors, view, conflicts, docs, docs_bucket }, views)
    }

    /// Publish what changed (the token with the applied vector, before anyone who waits
    /// on the vector can read the token).
    pub fn publish(&self, engine: &Engine) {
        if self.applied.borrow().ne(engine.applied()) {
            self.token.send_replace(Bytes::from(token::encode(engine.applied())));
            self.applied.send_replace(engine.applied().clone());
        }
        self.cursors.send_if_modified(|c| replace_if_changed(c, engine.cursors()));
        let view = EngineView::of(engine);
        self.view.send_if_modified(|v| replace_if_changed(v, &view));
    }
}

fn replace_if_changed<T: PartialEq + Clone>(slot: &mut T, new: &T) -> bool {
    if slot == new {
        return false;
    }
    *slot = new.clone();
    true
}

/// Log the alerts of a step and count them and its stats.
pub fn report(m: &Metrics, alerts: &[Alert], stats: &Stats) {
    metrics::add(&m.changesets_applied_total, stats.changesets_applied);
    metrics::add(&m.changesets_duplicate_total, stats.changesets_duplicate);
    metrics::add(&m.lww_conflicts_total, stats.lww_conflicts);
    metrics::add(&m.changesets_published_total, stats.changesets_published);
    metrics::add(&m.changes_published_total, stats.changes_published);
    metrics::add(&m.writes_acked_total, stats.writes_acked);
    metrics::add(&m.writes_failed_total, stats.writes_failed);
    metrics::add(&m.writes_rejected_total, stats.writes_rejected);
    metrics::add(&m.tombstones_collected_total, stats.tombstones_collected);
    metrics::add(&m.marks_written_total, stats.marks_made);
    metrics::add(&m.anti_entropy_values_dropped_total, stats.values_dropped);
    for alert in alerts {
        match alert {
            Alert::Parked { stream, stream_seq, reason } => {
                metrics::inc(&m.streams_parked_total);
                error!(
                    stream,
                    stream_seq,
                    reason,
                    "stream parked: nothing from here on is applied until a node that reads it runs"
                );
            }
            Alert::Resumed { stream } => info!(stream, "stream resumed: the waiting table has room again"),
            Alert::GapOpened { origin, applied, first_seq } => {
                metrics::inc(&m.log_gaps_total);
                warn!(%origin, applied, first_seq, "gap in an origin's sequence: later changesets wait");
            }
            Alert::GapClosed { origin, applied } => info!(%origin, applied, "gap closed"),
            Alert::Lifted { origin, from, to } => {
                metrics::inc(&m.anti_entropy_gaps_lifted_total);
                warn!(%origin, from, to, "gap lifted: a repair from a peer's state holds what its messages held");
            }
            Alert::RepairRefused { bucket, key, reason } => {
                metrics::inc(&m.anti_entropy_refused_total);
                error!(bucket, key, reason, "a peer's entry was left out of a repair");
            }
            Alert::DeadLettered { stream, stream_seq, reason } => {
                metrics::inc(&m.dead_letters_total);
                if reason.starts_with("forged:") {
                    metrics::inc(&m.forged_total);
                }
                error!(stream, stream_seq, reason, "a message went to the dead-letter table");
            }
            Alert::StreamGap { stream, from, to } => {
                metrics::add(&m.stream_messages_missing_total, to + 1 - from);
                warn!(stream, from, to, "messages were removed from the stream before they were read");
            }
            Alert::Deposed { origin, by } => error!(%origin, %by, "deposed: another origin of this region wrote later"),
            Alert::Leading { origin } => info!(%origin, "writing as a new origin"),
            Alert::SteppedDown { origin } => {
                warn!(origin = ?origin.as_ref().map(ToString::to_string), "stepped down: no lease; following the region's log")
            }
        }
    }
}
