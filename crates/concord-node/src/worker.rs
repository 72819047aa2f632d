//! The worker: the one task that owns a node's [`Engine`] and executes what it decides.
//!
//! It serves, one step at a time: a batch of queued writes (load → `write` → send the
//! append to the region's log), the outcome of the oldest append in flight
//! (`append_done` → commit → replies), entries that arrived from streams (load → `apply`
//! → commit), a tick (a leader checks whether its log grew under it), and the catch-up a
//! leader does before it writes. Appends are pipelined ([`crate::pipeline`]): while up to
//! `appends_in_flight_max` are on their way, the next batch of writes is made and sent.
//! Every engine step runs with its loads and its commit in one blocking call off the
//! async runtime, and a step's replies, conflict publications, stream changes and
//! metrics follow only once its batch is committed. Stream entries are never applied
//! while an append is in flight (the engine requires it): when some arrive, the worker
//! sends no more appends until those in flight have ended, then applies them (the
//! writes queued meanwhile go out together in the next changeset). Stepping down and
//! ticks wait for the pipeline to drain too.
//!
//! Which commits are durable (DESIGN.md: "the log is the write-ahead log"): commits
//! are deferred (visible at once, on disk with the next durable commit, at most
//! [`SYNC_INTERVAL`] later), because everything they hold is in a log already: what a
//! writer acknowledged was stored by its region's log before the commit, and what any
//! replica applied is read again from its cursors. A crash loses the deferred commits
//! since the last durable one and nothing else, which is a crash before those commits:
//! the replica restarts from that state and re-reads the logs from its stored cursors
//! (a leader reads its own log to the end before it writes, in a new epoch, so no
//! origin sequence or Automerge actor is reused; epochs come from the log's counter,
//! not from here). Durable at once, always: a batch with conflict records (a writer
//! publishes them) or dead letters, and the shutdown.
//!
//! This holds for followers too (they used to commit every step durably): a follower's
//! progress report, which `region` durability waits for, says what it has applied and
//! serves; after a crash it serves from its last durable commit and applies the rest
//! again from the log, and a reader holding a session token waits until it has (the
//! token names what the reader saw). `region` does not promise more than that: the
//! write is durable in the region's log, which is what survives a node.
//!
//! A failure of local state (a commit that fails, a record that does not decode) ends
//! the worker with [`NodeError::Fatal`]: the node stops rather than diverge from its disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use concord_api::ErrorCode;
use concord_core::conflict::ConflictRecord;
use concord_engine::{Ack, Engine, Entry, Output, WriteError, WriteOp};
use concord_storage::{Batch, Fsync, Store};
use concord_transport::{LogEntry, RegionLog};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::anti_entropy::RepairRequest;
use crate::clock::WallClock;
pub use crate::deferred::SYNC_INTERVAL;
use crate::deferred::{Deferred, Persisted};
use crate::error::NodeError;
use crate::lease::LeaseEvent;
use crate::metrics::{self, Metrics};
use crate::pipeline::InFlight;
use crate::streams::StreamControl;
pub use crate::upkeep::CollectRequest;
use crate::upkeep::{next_collect, next_repair};
use crate::view::{self, Watches};

/// A write as the API queues it.
pub struct WriteRequest {
    pub op: WriteOp,
    /// The conflict-log record this write resolves (POST /v1/conflicts/{id}/resolve).
    pub resolves: Option<uuid::Uuid>,
    pub reply: oneshot::Sender<Result<Ack, NodeError>>,
}

/// Bounds on what one step takes in.
#[derive(Debug, Clone)]
pub struct Limits {
    pub batch_changes_max: usize,
    pub batch_bytes_max: usize,
    /// Writes that must wait before a changeset is made while appends are in flight.
    pub pipeline_batch_min: usize,
    /// How long an append is retried before its writers get 503 (outcome unknown).
    pub append_deadline: Duration,
    pub inbound_entries_max: usize,
    pub inbound_bytes_max: usize,
    /// Most bytes one catch-up read brings in.
    pub read_bytes_max: usize,
}

/// How often a leader checks whether its region's log grew under it.
const TICK: Duration = Duration::from_secs(1);
/// How often a writer marks unless configured ([`concord_engine::marks`]).
pub const MARK_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

pub struct Worker<L: RegionLog, S: StreamControl> {
    pub(crate) engine: Option<Engine>,
    pub(crate) store: Store,
    pub(crate) log: Arc<L>,
    pub(crate) streams: S,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) watches: Watches,
    /// Where a writer publishes the conflict records it commits (full: dropped, counted).
    pub(crate) conflicts: Option<mpsc::Sender<ConflictRecord>>,
    pub(crate) limits: Limits,
    pending: BTreeMap<u64, oneshot::Sender<Result<Ack, NodeError>>>,
    next_id: u64,
    followed: BTreeSet<String>,
    /// From the lease task: promote when acquired, step down when lost.
    lease: Option<mpsc::Receiver<LeaseEvent>>,
    /// Until when the lease lets this node write (checked before every write batch).
    lease_deadline: Option<crate::lease::Deadline>,
    /// The time written into versions.
    pub(crate) clock: WallClock,
    /// Commits that wait for a durable one, and the sync that makes them durable.
    deferred: Deferred,
    /// Appends on their way to the log, oldest first.
    pub(crate) inflight: InFlight,
    /// Repairs from anti-entropy ([`crate::anti_entropy`]).
    repairs: Option<mpsc::Receiver<RepairRequest>>,
    /// Checks who published what a catch-up reads ([`crate::identity`]).
    pub(crate) identity: Option<Arc<crate::identity::Identity>>,
    /// Candidates for tombstone collection ([`crate::collect`]).
    collects: Option<mpsc::Receiver<CollectRequest>>,
    /// A catch-up that waits for this replica to apply more of the other streams is
    /// tried again from then on ([`concord_engine::CaughtUp::Waiting`]).
    pub(crate) catch_up_after: Option<tokio::time::Instant>,
    /// How often a writer marks ([`concord_engine::marks`]).
    pub(crate) mark_interval_ms: u64,
}

impl<L: RegionLog, S: StreamControl> Worker<L, S> {
    pub fn new(
        engine: Engine,
        store: Store,
        log: Arc<L>,
        streams: S,
        metrics: Arc<Metrics>,
        watches: Watches,
        limits: Limits,
    ) -> Worker<L, S> {
        let mut worker = Worker {
            engine: Some(engine),
            store,
            log,
            streams,
            metrics,
            watches,
            conflicts: None,
            limits,
            pending: BTreeMap::new(),
            next_id: 0,
            followed: BTreeSet::new(),
            lease: None,
            lease_deadline: None,
            clock: WallClock::default(),
            deferred: Deferred::default(),
            inflight: InFlight::default(),
            repairs: None,
            identity: None,
            collects: None,
            catch_up_after: None,
            mark_interval_ms: MARK_INTERVAL_DEFAULT.as_millis() as u64,
        };
        for (stream, from) in worker.engine().streams_to_follow() {
            worker.streams.follow(&stream, from);
            worker.followed.insert(stream);
        }
        worker.publish();
        worker
    }

    pub fn with_conflict_publisher(mut self, tx: mpsc::Sender<ConflictRecord>) -> Self {
        self.conflicts = Some(tx);
        self
    }

    pub fn with_lease(mut self, events: mpsc::Receiver<LeaseEvent>, deadline: crate::lease::Deadline) -> Self {
        self.lease = Some(events);
        self.lease_deadline = Some(deadline);
        self
    }

    /// Take candidates for tombstone collection, and mark every `mark_interval`.
    pub fn with_collection(mut self, collects: mpsc::Receiver<CollectRequest>, mark_interval: Duration) -> Self {
        self.collects = Some(collects);
        self.mark_interval_ms = mark_interval.as_millis() as u64;
        self
    }

    /// Check who published what a catch-up reads.
    pub fn with_identity(mut self, identity: Arc<crate::identity::Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Take repairs from anti-entropy.
    pub fn with_repairs(mut self, repairs: mpsc::Receiver<RepairRequest>) -> Self {
        self.repairs = Some(repairs);
        self
    }

    /// Stamp versions with `clock` (a skewed one in fault tests).
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("the engine is back from its step")
    }

    /// Serve until `shutdown`; then answer what is queued and stop.
    pub async fn run(
        mut self,
        mut writes: mpsc::Receiver<WriteRequest>,
        mut inbound: mpsc::Receiver<(String, LogEntry)>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut carry: Option<WriteRequest> = None;
        loop {
            let catch_up_due = self.catch_up_after.is_none_or(|at| tokio::time::Instant::now() >= at);
            if self.inflight.is_empty() && catch_up_due && !self.catch_up(&mut shutdown).await? {
                break;
            }
            let room = self.room_for_writes(&writes, carry.is_some());
            tokio::select! {
                _ = shutdown.changed() => break,
                outcome = self.inflight.next() => self.append_ended(outcome).await?,
                first = next_write(&mut carry, &mut writes), if room => match first {
                    Some(first) => {
                        let batch = self.gather_writes(first, &mut writes, &mut carry);
                        self.write(batch).await?;
                    }
                    None => break,
                },
                Some(first) = inbound.recv() => {
                    self.drain_appends().await?;
                    self.apply_inbound(first, &mut inbound).await?;
                }
                Some(event) = next_lease_event(&mut self.lease) => self.on_lease(event).await?,
                Some(request) = next_repair(&mut self.repairs) => {
                    self.drain_appends().await?;
                    self.repair(request).await?;
                }
                Some(request) = next_collect(&mut self.collects) => {
                    self.drain_appends().await?;
                    self.collect(request).await?;
                }
                _ = tick.tick() => self.tick().await?,
                synced = self.deferred.next() => {
                    synced?;
                    self.deferred.start_if_older(&self.store, SYNC_INTERVAL);
                }
            }
        }
        self.drain(writes, carry).await
    }

    /// After shutdown: writes already queued are still answered (written, if this node
    /// writes); no new ones are taken.
    async fn drain(
        mut self,
        mut writes: mpsc::Receiver<WriteRequest>,
        mut carry: Option<WriteRequest>,
    ) -> Result<(), NodeError> {
        writes.close();
        while let Some(first) = next_write(&mut carry, &mut writes).await {
            if !self.engine().takes_writes() {
                let outcome = self.inflight.next().await;
                self.append_ended(outcome).await?;
            }
            let batch = self.gather_writes(first, &mut writes, &mut carry);
            self.write(batch).await?;
        }
        self.drain_appends().await?;
        self.deferred.sync_now(&self.store).await?;
        info!("worker drained and stopped");
        Ok(())
    }

    /// Whether to make the next changeset now: the engine has room for one more append,
    /// and either none is in flight or enough writes wait to fill a changeset of
    /// `pipeline_batch_min` (every changeset costs each replica an append, a stored
    /// message and an apply step, so while appends are in flight, writes gather into
    /// bigger changesets rather than many small ones).
    fn room_for_writes(&self, writes: &mpsc::Receiver<WriteRequest>, carried: bool) -> bool {
        if !self.engine().takes_writes() {
            return false;
        }
        self.inflight.is_empty() || writes.len() + usize::from(carried) >= self.limits.pipeline_batch_min
    }

    /// `first` and whatever else is queued, up to the batch limits.
    fn gather_writes(
        &mut self,
        first: WriteRequest,
        writes: &mut mpsc::Receiver<WriteRequest>,
        carry: &mut Option<WriteRequest>,
    ) -> Vec<WriteRequest> {
        let mut bytes = first.op.bytes();
        let mut batch = vec![first];
        while batch.len() < self.limits.batch_changes_max {
            match writes.try_recv() {
                Ok(r) if bytes + r.op.bytes() > self.limits.batch_bytes_max => {
                    *carry = Some(r);
                    break;
                }
                Ok(r) => {
                    bytes += r.op.bytes();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Make the batch's changeset and send it (its outcome comes later, in order).
    pub(crate) async fn write(&mut self, batch: Vec<WriteRequest>) -> Result<(), NodeError> {
        if self.lease_expired() && !self.engine().role_follows() {
            self.on_lease(LeaseEvent::Lost).await?;
        }
        let mut writes = Vec::with_capacity(batch.len());
        for r in batch {
            self.next_id += 1;
            self.pending.insert(self.next_id, r.reply);
            writes.push(concord_engine::WriteRequest { id: self.next_id, op: r.op, resolves: r.resolves });
        }
        let now = self.clock.now_ms();
        let mut out = self
            .step(move |e, s| {
                let facts = s.load(&e.write_needs(&writes))?;
                Ok(e.write(writes, &facts, now)?)
            })
            .await?;
        let append = out.append.take();
        self.after(out);
        if let Some(append) = append {
            self.send(append).await;
            // Deferred commits getting old are made durable while the log stores the
            // append, on a blocking thread: a durable commit in a step would hold up
            // that step's writers.
            self.deferred.start_if_older(&self.store, SYNC_INTERVAL / 2);
        }
        Ok(())
    }

    /// Apply `first` and whatever else arrived, up to the limits, stream by stream.
    /// Entries of streams this node no longer follows (parked, or its own log once it
    /// leads) are dropped: they are read again from the cursor when followed again.
    async fn apply_inbound(
        &mut self,
        first: (String, LogEntry),
        inbound: &mut mpsc::Receiver<(String, LogEntry)>,
    ) -> Result<(), NodeError> {
        let mut bytes = first.1.payload.len();
        let mut by_stream: Vec<(String, Vec<LogEntry>)> = Vec::new();
        let mut push = |(stream, e): (String, LogEntry)| match by_stream.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, entries)) => entries.push(e),
            None => by_stream.push((stream, vec![e])),
        };
        push(first);
        let mut n = 1;
        while n < self.limits.inbound_entries_max && bytes < self.limits.inbound_bytes_max {
            let Ok(next) = inbound.try_recv() else { break };
            bytes += next.1.payload.len();
            push(next);
            n += 1;
        }
        for (stream, entries) in by_stream {
            if self.followed.contains(&stream) {
                self.apply(stream, entries).await?;
            }
        }
        Ok(())
    }

    /// Apply entries of `stream` (those found forged are dead letters:
    /// [`crate::identity`]).
    pub(crate) async fn apply(&mut self, stream: String, entries: Vec<LogEntry>) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        let started = std::time::Instant::now();
        let forged: concord_engine::Forged =
            entries.iter().filter_map(|e| e.forged.clone().map(|why| (e.seq, why))).collect();
        let entries: Vec<Entry> = entries.into_iter().map(|e| Entry { seq: e.seq, payload: e.payload }).collect();
        let out = self
            .step(move |e, s| {
                let prepared = e.prepare_screened(&stream, entries, forged, now);
                let facts = s.load(prepared.needs())?;
                Ok(e.apply(prepared, &facts)?)
            })
            .await?;
        self.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
        self.after(out);
        Ok(())
    }

    /// The lease's deadline passed (or this node holds none) while it still writes.
    pub(crate) fn lease_expired(&self) -> bool {
        let Some(deadline) = &self.lease_deadline else { return false };
        deadline.borrow().is_none_or(|d| tokio::time::Instant::now() >= d)
    }

    /// Until when this node may write, if it runs under a lease (`now` when it holds none).
    pub(crate) fn lease_deadline_at(&self) -> Option<tokio::time::Instant> {
        let deadline = self.lease_deadline.as_ref()?;
        Some(deadline.borrow().unwrap_or_else(tokio::time::Instant::now))
    }

    /// The lease task's news: promote (the catch-up follows at the top of the loop), or
    /// stop writing now (once the appends in flight have ended: their deadlines end at
    /// the lease's).
    pub(crate) async fn on_lease(&mut self, event: LeaseEvent) -> Result<(), NodeError> {
        let out = match event {
            LeaseEvent::Acquired if self.engine().role_follows() => {
                let out = self.step(|e, _| Ok(e.promote())).await?;
                metrics::inc(&self.metrics.promotions_total);
                out
            }
            LeaseEvent::Acquired => return Ok(()),
            LeaseEvent::Lost => {
                self.drain_appends().await?;
                self.step(|e, _| Ok(e.step_down())).await?
            }
        };
        info!(?event, "lease");
        self.after(out);
        Ok(())
    }

    /// A leader checks whether its region's log grew under it (a deposed leader learns
    /// it this way even when it takes no writes).
    async fn tick(&mut self) -> Result<(), NodeError> {
        // A writer with appends in flight learns from their outcomes.
        if !matches!(self.engine().role(), concord_engine::RoleView::Leader { .. }) || !self.inflight.is_empty() {
            return Ok(());
        }
        self.mark_if_due().await?;
        if !self.inflight.is_empty() {
            return Ok(());
        }
        let Ok(Ok(last)) = tokio::time::timeout(Duration::from_secs(2), self.log.last_seq()).await else {
            return Ok(());
        };
        let out = self.step(move |e, _| Ok(e.tick(last))).await?;
        self.after(out);
        Ok(())
    }

    /// Run one engine step with its loads and its commit, off the async runtime.
    pub(crate) async fn step<F>(&mut self, f: F) -> Result<Output, NodeError>
    where
        F: FnOnce(&mut Engine, &Store) -> Result<Output, NodeError> + Send + 'static,
    {
        let mut engine = self.engine.take().expect("the engine is back from its step");
        let store = self.store.clone();
        let unsynced = self.deferred.waiting();
        let (engine, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut engine, &store).and_then(|out| {
                let persisted = persist(&store, out.commit.as_ref(), unsynced)?;
                Ok((out, persisted))
            });
            (engine, result)
        })
        .await
        .map_err(|e| NodeError::Fatal(format!("an engine step panicked: {e}")))?;
        debug_assert_eq!(engine.validate(), Ok(()), "the engine's invariants hold after every step");
        self.engine = Some(engine);
        let (out, persisted) = result?;
        self.deferred.committed(persisted);
        Ok(out)
    }

    /// What follows a step once its batch is committed (durable, or deferred as the module
    /// doc says).
    pub(crate) fn after(&mut self, out: Output) {
        if let Some(batch) = &out.commit {
            metrics::add(&self.metrics.conflict_records_written_total, batch.conflicts.len() as u64);
            for w in &batch.conflicts {
                let state = if w.record.resolved.is_some() { "resolved" } else { "open" };
                let rule = serde_json::to_value(w.record.rule).ok().and_then(|v| v.as_str().map(String::from));
                let labels =
                    vec![("rule".to_string(), rule.unwrap_or_default()), ("state".to_string(), state.to_string())];
                self.metrics.conflict_records.get_or_create(&labels).inc();
            }
            if self.watches.docs.receiver_count() > 0 {
                for (k, _) in batch.docs.iter().filter(|(k, _)| k.0 == self.watches.docs_bucket) {
                    let _ = self.watches.docs.send(k.clone());
                }
            }
            if self.watches.conflicts.receiver_count() > 0 {
                for w in &batch.conflicts {
                    let _ = self.watches.conflicts.send(w.record.clone());
                }
            }
            let writing = matches!(self.engine().role(), concord_engine::RoleView::Leader { .. });
            if let Some(tx) = self.conflicts.as_ref().filter(|_| writing) {
                for w in &batch.conflicts {
                    if tx.try_send(w.record.clone()).is_err() {
                        metrics::inc(&self.metrics.conflicts_unpublished_total);
                    }
                }
            }
        }
        for (stream, from) in out.follow {
            self.streams.follow(&stream, from);
            self.followed.insert(stream);
        }
        for stream in out.unfollow {
            self.streams.unfollow(&stream);
            self.followed.remove(&stream);
        }
        view::report(&self.metrics, &out.alerts, &out.stats);
        // Published before the replies: the API answers a write with the session token of
        // the applied vector as it is then, which must already hold the write (else a
        // read with that token may show an older value: read-your-writes broken).
        self.publish();
        for (id, result) in out.replies {
            if let Some(reply) = self.pending.remove(&id) {
                let _ = reply.send(result.map_err(write_error));
            }
        }
    }

    fn publish(&self) {
        self.watches.publish(self.engine());
    }
}

/// Commit a step's batch, deferred or durable as the module doc says; `unsynced`: whether
/// deferred commits wait (and whether they are due).
fn persist(store: &Store, batch: Option<&Batch>, unsynced: Option<bool>) -> Result<Persisted, NodeError> {
    let Some(batch) = batch else { return Ok(Persisted::Unchanged) };
    let defer = unsynced != Some(true) && batch.conflicts.is_empty() && batch.dead_letters.is_empty();
    if defer {
        store.commit_with(batch, Fsync::Deferred)?;
        Ok(Persisted::Deferred)
    } else {
        store.commit_with(batch, Fsync::Now)?;
        Ok(Persisted::Durable)
    }
}

async fn next_lease_event(lease: &mut Option<mpsc::Receiver<LeaseEvent>>) -> Option<LeaseEvent> {
    match lease {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_write(
    carry: &mut Option<WriteRequest>,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Option<WriteRequest> {
    match carry.take() {
        Some(r) => Some(r),
        None => writes.recv().await,
    }
}

/// What a client hears when the engine refused or failed its write.
fn write_error(e: WriteError) -> NodeError {
    match e {
        WriteError::Invalid(m) => NodeError::bad(ErrorCode::BadOp, m),
        WriteError::TooLarge(m) => NodeError::TooLarge(m),
        WriteError::LogUnavailable(m) => NodeError::unavailable(ErrorCode::LogUnavailable, m),
        WriteError::NotLeader(m) => NodeError::unavailable(ErrorCode::NotLeader, m),
        WriteError::Parked(m) => NodeError::unavailable(ErrorCode::Parked, m),
    }
}
