//! A replica's state machine: local state plus the applied vector and log cursor.
//!
//! One task owns a [`Replica`] (the leader's writer, or a follower's applier), so every
//! merge reads and writes state without races. Applying is idempotent: a changeset whose
//! sequences the applied vector already covers is skipped, an LWW merge of a version
//! with itself is a no-op, and Automerge ignores changes it already has. Each apply step
//! commits values, documents, applied vector and cursor in one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use automerge::{Automerge, ReadDoc};
use concord_core::changeset::{ChangeBody, Changeset};
use concord_core::conflict::ConflictRecord;
use concord_core::hlc::Clock;
use concord_core::ids::RegionId;
use concord_core::lww::{Inserted, Register, Version};
use concord_core::vv::VersionVector;
use concord_core::{doc, input};
use concord_storage::{Batch, ConflictWrite, Store};
use concord_transport::{LogEntry, RegionLog};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::conflicts;
use crate::error::NodeError;
use crate::metrics::{self, Metrics};

/// Most log messages read and applied in one step of a catch-up.
pub const CATCH_UP_CHUNK: u64 = 1000;
/// Most entries arriving from streams applied in one step.
const INBOUND_BATCH_MAX: usize = 1000;

pub type DocKey = (String, String);

pub struct Replica {
    pub store: Store,
    pub region: RegionId,
    pub clock: Clock,
    applied: VersionVector,
    /// Per stream (the region's log, each remote region's mirror): the last stream
    /// sequence applied.
    cursors: HashMap<String, u64>,
    /// The region's own log.
    stream: String,
    applied_tx: watch::Sender<VersionVector>,
    cursors_tx: watch::Sender<HashMap<String, u64>>,
    pub metrics: Arc<Metrics>,
    /// Buckets whose conflicts wait for a person (siblings, 300 on read).
    pub manual_buckets: std::collections::HashSet<String>,
    /// Where committed conflict records go (published on NATS); full means dropped.
    pub conflict_tx: Option<mpsc::Sender<ConflictRecord>>,
}

/// Values and documents touched by one step, before they are committed.
#[derive(Default)]
pub struct Overlay {
    pub kv: HashMap<DocKey, Register>,
    pub docs: HashMap<DocKey, Automerge>,
    pub dirty_docs: std::collections::HashSet<DocKey>,
    /// Documents whose waiting changes changed (an empty list clears them).
    pub pending: Vec<(String, String, Vec<Vec<u8>>)>,
    /// Conflict-log changes of this step, in order.
    pub conflict_writes: Vec<ConflictWrite>,
    /// The open record per key (and path) as this step left it (`None`: none open).
    pub open_records: HashMap<Vec<u8>, Option<ConflictRecord>>,
    /// Documents changed by a resolving write: the record it resolves.
    pub doc_resolves: HashMap<DocKey, uuid::Uuid>,
}

impl Replica {
    pub fn open(store: Store, region: RegionId, stream: String, metrics: Arc<Metrics>) -> Result<Replica, NodeError> {
        let applied = store.applied()?;
        let cursors: HashMap<String, u64> = store.cursors()?.into_iter().collect();
        let (applied_tx, _) = watch::channel(applied.clone());
        let (cursors_tx, _) = watch::channel(cursors.clone());
        Ok(Replica {
            store,
            region,
            clock: Clock::default(),
            applied,
            cursors,
            stream,
            applied_tx,
            cursors_tx,
            metrics,
            manual_buckets: Default::default(),
            conflict_tx: None,
        })
    }

    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// The last applied sequence of `stream` (0 when none).
    pub fn cursor(&self, stream: &str) -> u64 {
        self.cursors.get(stream).copied().unwrap_or(0)
    }

    /// A receiver that sees the cursors after every commit.
    pub fn watch_cursors(&self) -> watch::Receiver<HashMap<String, u64>> {
        self.cursors_tx.subscribe()
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// A receiver that sees the applied vector after every commit.
    pub fn watch_applied(&self) -> watch::Receiver<VersionVector> {
        self.applied_tx.subscribe()
    }

    /// The current version of a key, from the overlay first.
    pub fn current_kv(&self, overlay: &Overlay, bucket: &str, key: &str) -> Result<Option<Register>, NodeError> {
        if let Some(v) = overlay.kv.get(&(bucket.to_string(), key.to_string())) {
            return Ok(Some(v.clone()));
        }
        Ok(self.store.get_kv(bucket, key)?)
    }

    /// The document, loaded into the overlay on first use (a new one when absent).
    pub fn doc_mut<'a>(
        &self,
        overlay: &'a mut Overlay,
        bucket: &str,
        key: &str,
    ) -> Result<&'a mut Automerge, NodeError> {
        let k = (bucket.to_string(), key.to_string());
        if !overlay.docs.contains_key(&k) {
            let doc = match self.store.get_doc(bucket, key)? {
                Some(bytes) => {
                    doc::load_doc(&bytes).map_err(|e| NodeError::Fatal(format!("document {bucket}/{key}: {e}")))?
                }
                None => doc::new_doc(),
            };
            overlay.docs.insert(k.clone(), doc);
        }
        Ok(overlay.docs.get_mut(&k).expect("inserted above"))
    }

    /// Commit the overlay with the new applied entries and cursor, then publish the
    /// applied vector. Saving documents is the expensive part, so it runs here once
    /// per step and per document.
    pub async fn commit(
        &mut self,
        overlay: Overlay,
        applied: VersionVector,
        stream: &str,
        cursor: u64,
    ) -> Result<(), NodeError> {
        let mut overlay = overlay;
        let dirty: Vec<DocKey> = overlay.dirty_docs.iter().cloned().collect();
        for k in &dirty {
            let resolves = overlay.doc_resolves.get(k).copied();
            let doc = overlay.docs.remove(k).expect("a dirty document is loaded");
            let tracked =
                conflicts::track_doc(&self.store, &mut overlay, self.region.as_str(), &k.0, &k.1, &doc, resolves);
            overlay.docs.insert(k.clone(), doc);
            tracked?;
        }
        let mut batch = Batch::default();
        for ((bucket, key), register) in overlay.kv {
            batch.kv.push((bucket, key, register));
        }
        for k in dirty {
            let doc = &overlay.docs[&k];
            batch.docs.push((k.0, k.1, doc.save()));
        }
        batch.conflicts = overlay.conflict_writes;
        for (origin, seq) in applied.iter() {
            if seq > self.applied.get(origin) {
                batch.applied.push((origin.clone(), seq));
            }
        }
        // A re-delivered old entry never moves a cursor back.
        let cursor = cursor.max(self.cursor(stream));
        batch.cursors.push((stream.to_string(), cursor));
        batch.pending = overlay.pending;
        let store = self.store.clone();
        let batch = tokio::task::spawn_blocking(move || store.commit(&batch).map(|()| batch))
            .await
            .map_err(|e| NodeError::Fatal(format!("commit task: {e}")))??;
        self.applied = applied;
        self.cursors.insert(stream.to_string(), cursor);
        self.applied_tx.send_replace(self.applied.clone());
        self.cursors_tx.send_replace(self.cursors.clone());
        if let Some(tx) = &self.conflict_tx {
            for w in &batch.conflicts {
                if tx.try_send(w.record.clone()).is_err() {
                    metrics::inc(&self.metrics.conflicts_unpublished_total);
                }
            }
        }
        metrics::add(&self.metrics.conflict_records_written_total, batch.conflicts.len() as u64);
        Ok(())
    }

    /// Apply entries of `stream` (decoded defensively) in one step. Every changeset in
    /// it must come from an origin of `region` (the region whose log the stream holds).
    pub async fn apply_entries(
        &mut self,
        stream: &str,
        region: &RegionId,
        entries: &[LogEntry],
    ) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut overlay = Overlay::default();
        let mut applied = self.applied.clone();
        let mut doc_changes: HashMap<DocKey, Vec<automerge::Change>> = HashMap::new();
        for entry in entries {
            let cs = match Changeset::decode(&entry.payload) {
                Ok(cs) => cs,
                Err(e) => {
                    metrics::inc(&self.metrics.changesets_rejected_total);
                    warn!(seq = entry.seq, error = %e, "skipping a changeset that does not decode");
                    continue;
                }
            };
            if let Err(why) = check(&cs, region) {
                metrics::inc(&self.metrics.changesets_rejected_total);
                warn!(seq = entry.seq, origin = %cs.origin, why, "skipping an invalid changeset");
                continue;
            }
            let have = applied.get(&cs.origin);
            if cs.last_seq() <= have {
                metrics::inc(&self.metrics.changesets_duplicate_total);
                continue;
            }
            if cs.first_seq > have + 1 {
                metrics::inc(&self.metrics.log_gaps_total);
                warn!(origin = %cs.origin, have, first = cs.first_seq, "gap in an origin's sequence");
            }
            for (i, change) in cs.changes.iter().enumerate() {
                let seq = cs.first_seq + i as u64;
                if seq <= have {
                    continue;
                }
                self.clock.observe(change.hlc);
                let k = (change.bucket.clone(), change.key.clone());
                let value = match &change.body {
                    ChangeBody::Put { value, vv } => (Some(value.clone()), vv),
                    ChangeBody::Delete { vv } => (None, vv),
                    ChangeBody::Doc { change: bytes } => {
                        if let Some(id) = change.resolves {
                            overlay.doc_resolves.insert(k.clone(), id);
                        }
                        match automerge::Change::from_bytes(bytes.clone()) {
                            Ok(c) => doc_changes.entry(k).or_default().push(c),
                            Err(e) => {
                                metrics::inc(&self.metrics.changesets_rejected_total);
                                warn!(origin = %cs.origin, seq, error = %e, "skipping a document change that does not decode");
                            }
                        }
                        continue;
                    }
                };
                let incoming =
                    Version { value: value.0, hlc: change.hlc, origin: cs.origin.clone(), vv: value.1.clone() };
                let (register, inserted) = match self.current_kv(&overlay, &k.0, &k.1)? {
                    None => (Register::new(incoming), Inserted { changed: true, cut: Vec::new() }),
                    Some(mut register) => {
                        let inserted = register.insert(incoming);
                        (register, inserted)
                    }
                };
                if !inserted.changed {
                    continue;
                }
                if register.is_conflicted() {
                    metrics::inc(&self.metrics.lww_conflicts_total);
                    info!(bucket = %k.0, key = %k.1, siblings = register.versions().len(), winner = %register.winner().origin, "concurrent LWW versions");
                }
                let manual = self.manual_buckets.contains(&k.0);
                conflicts::track_lww(
                    &self.store,
                    &mut overlay,
                    self.region.as_str(),
                    &k.0,
                    &k.1,
                    &register,
                    &inserted.cut,
                    change.resolves,
                    manual,
                )?;
                overlay.kv.insert(k, register);
            }
            applied.observe(&cs.origin, cs.last_seq());
            metrics::inc(&self.metrics.changesets_applied_total);
        }
        for (k, changes) in doc_changes {
            self.apply_doc_changes(&mut overlay, k, changes)?;
        }
        self.commit(overlay, applied, stream, last.seq).await
    }

    /// Apply a batch of Automerge changes to one document, together with the changes
    /// that were waiting for dependencies. Changes whose dependencies are still missing
    /// (another origin's change not yet delivered) are kept durably, not dropped.
    fn apply_doc_changes(
        &self,
        overlay: &mut Overlay,
        k: DocKey,
        mut changes: Vec<automerge::Change>,
    ) -> Result<(), NodeError> {
        let waiting = self.store.get_pending(&k.0, &k.1)?;
        let had_waiting = !waiting.is_empty();
        for bytes in waiting {
            match automerge::Change::from_bytes(bytes) {
                Ok(c) => changes.push(c),
                Err(e) => warn!(bucket = %k.0, key = %k.1, error = %e, "dropping a corrupt waiting change"),
            }
        }
        let doc = self.doc_mut(overlay, &k.0, &k.1)?;
        let mut hashes: Vec<_> = changes.iter().map(|c| c.hash()).collect();
        if let Err(e) = doc.apply_changes(changes.clone()) {
            metrics::inc(&self.metrics.changesets_rejected_total);
            warn!(bucket = %k.0, key = %k.1, error = %e, "document changes refused by automerge");
            return Ok(());
        }
        // What automerge queued instead of applying waits for its dependencies.
        hashes.retain(|h| doc.get_change_by_hash(h).is_none());
        let still_waiting: Vec<Vec<u8>> =
            changes.into_iter().filter(|c| hashes.contains(&c.hash())).map(|c| c.raw_bytes().to_vec()).collect();
        if !still_waiting.is_empty() {
            debug!(bucket = %k.0, key = %k.1, waiting = still_waiting.len(), "document changes wait for dependencies");
        }
        if had_waiting || !still_waiting.is_empty() {
            overlay.pending.push((k.0.clone(), k.1.clone(), still_waiting));
        }
        overlay.dirty_docs.insert(k);
        Ok(())
    }

    /// Apply `first` and whatever else has arrived on `inbound`, stream by stream;
    /// `streams` says whose log each stream holds. Entries at or below a stream's
    /// cursor were applied before (a consumer resumed) and are skipped.
    pub async fn apply_inbound(
        &mut self,
        first: (String, LogEntry),
        inbound: &mut mpsc::Receiver<(String, LogEntry)>,
        streams: &HashMap<String, RegionId>,
    ) -> Result<(), NodeError> {
        let mut by_stream: Vec<(String, Vec<LogEntry>)> = vec![(first.0, vec![first.1])];
        let mut n = 1;
        while n < INBOUND_BATCH_MAX {
            let Ok((stream, entry)) = inbound.try_recv() else { break };
            match by_stream.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, entries)) => entries.push(entry),
                None => by_stream.push((stream, vec![entry])),
            }
            n += 1;
        }
        for (stream, entries) in by_stream {
            let Some(region) = streams.get(&stream).cloned() else {
                warn!(stream, "entries from an unknown stream; ignored");
                continue;
            };
            let cursor = self.cursor(&stream);
            let fresh: Vec<LogEntry> = entries.into_iter().filter(|e| e.seq > cursor).collect();
            if !fresh.is_empty() {
                self.apply_entries(&stream, &region, &fresh).await?;
            }
        }
        Ok(())
    }

    /// Read and apply the region's own log from the cursor to its end.
    pub async fn catch_up<L: RegionLog>(&mut self, log: &L) -> Result<u64, NodeError> {
        let last = log.last_seq().await?;
        let stream = self.stream.clone();
        let region = self.region.clone();
        let start = self.cursor(&stream);
        while self.cursor(&stream) < last {
            let cursor = self.cursor(&stream);
            let to = (cursor + CATCH_UP_CHUNK).min(last);
            let entries = log.read(cursor + 1, to).await?;
            if entries.is_empty() {
                // Messages removed by retention: nothing to apply up to `to`.
                self.commit(Overlay::default(), self.applied.clone(), &stream, to).await?;
                continue;
            }
            self.apply_entries(&stream, &region, &entries).await?;
            debug!(cursor = self.cursor(&stream), last, "catching up");
        }
        if last > start {
            info!(from = start, to = last, "caught up with the region's log");
        }
        Ok(last)
    }
}

/// What a changeset must satisfy before anything in it is applied: it comes from an
/// origin of the region whose log carried it, and names valid buckets and keys.
fn check(cs: &Changeset, region: &RegionId) -> Result<(), &'static str> {
    if &cs.origin.region != region {
        return Err("origin from another region than the log that carried it");
    }
    for c in &cs.changes {
        if input::check_bucket(&c.bucket).is_err() || input::check_key(c.key.as_bytes()).is_err() {
            return Err("bad bucket or key");
        }
    }
    Ok(())
}
