//! Concord's node runtime: everything around the replication engine that does I/O.
//!
//! The rules (merges, conflicts, the applied vector, what to append and answer) are
//! `concord_engine`'s, a pure state machine. This crate executes what it decides:
//!
//! - [`worker`]: the one task that owns the engine: writes (batched, appended to the
//!   region's JetStream log pipelined with retries ([`pipeline`]), acknowledged after the
//!   commit), entries from streams, ticks, and a leader's catch-up ([`catch_up`]); local
//!   state in redb, off the async runtime, with commits deferred where the logs hold
//!   them ([`deferred`]);
//! - [`streams`]: a consumer per stream the engine reads (the region's log for a
//!   follower; a local mirror of every other region's log), restarted when it fails;
//! - [`view`]: what the API sees of the engine after each step; logs and metrics;
//! - [`followers`], [`remote`], [`publish`], [`bootstrap`]: follower progress, other
//!   regions' copies of the log, what a node announces on NATS, starting from a snapshot;
//! - [`api`]: the HTTP API and the NATS micro service, under concurrency limits;
//! - [`lease`]: the region's writer lease; a follower takes over when the leader dies,
//!   freezes or is cut off, and a leader that cannot renew stops writing first;
//! - [`supervisor`]: every long-running task is owned, obeys one shutdown signal, and
//!   is restarted after a failure or stops the node visibly.
//!
//! [`run`] starts a node and serves until shutdown, when it stops taking requests,
//! drains queued writes and exits.

pub mod anti_entropy;
pub mod api;
pub mod bootstrap;
mod catch_up;
pub mod clock;
pub mod collect;
pub mod config;
mod deferred;
pub mod error;
pub mod followers;
pub mod identity;
pub mod lease;
pub mod metrics;
mod pipeline;
pub mod publish;
pub mod remote;
pub mod repair;
pub mod replay;
mod start;
pub mod streams;
pub mod supervisor;
mod upkeep;
pub mod view;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_api::{LeaderRecord, LeaseRecord};
use concord_core::ids::RegionId;
use concord_core::vv::VersionVector;
use concord_engine::{RoleView, StartAs};
use concord_storage::Store;
use concord_transport::nats::NatsLog;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::{NodeConfig, Role};
pub use error::NodeError;
use metrics::Metrics;
use supervisor::{Policy, Supervisor};
use view::{EngineView, Views, Watches};
use worker::{Worker, WriteRequest};

/// Per other region, how much of this region's log it stored, as last seen.
pub type RemoteStored = Vec<(RegionId, watch::Receiver<u64>)>;

/// What the API needs of a running node.
pub struct Node {
    pub cfg: NodeConfig,
    pub region: RegionId,
    /// `region`, as the `Concord-Region` header every HTTP answer carries.
    pub region_header: axum::http::HeaderValue,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub applied: watch::Receiver<VersionVector>,
    /// The session token of `applied`.
    pub token: watch::Receiver<bytes::Bytes>,
    pub cursors: watch::Receiver<BTreeMap<String, u64>>,
    pub view: watch::Receiver<EngineView>,
    pub writes: mpsc::Sender<WriteRequest>,
    pub log: Arc<NatsLog>,
    /// For each other region: how much of this region's log it has stored (the last
    /// sequence of its mirror of us), as last seen.
    pub remote_stored: RemoteStored,
    /// The highest log sequence a writer waits for other regions to store (`remote` and
    /// `all` durability): while a region's stored sequence is below it, its poll runs
    /// again at once instead of every 50 ms.
    pub remote_wanted: Arc<watch::Sender<u64>>,
    /// A leader's view of its region's followers (from their reports).
    pub followers: followers::Followers,
    /// A follower's last look-up of its region's leader: (when, the record).
    pub leader_cache: std::sync::Mutex<Option<(Instant, LeaderRecord)>>,
    /// Whether this node answers reads over NATS now (a follower always; a leader only
    /// while no follower is alive).
    pub serves_nats_reads: std::sync::atomic::AtomicBool,
    /// The conflict records this node commits, as it commits them.
    pub conflict_feed: tokio::sync::broadcast::Sender<concord_core::conflict::ConflictRecord>,
    /// The `GET /v1/conflicts/events` streams open now.
    pub conflict_streams: api::OpenStreams,
    /// The documents this node commits, as it commits them (for `GET /v1/sync`).
    pub doc_feed: tokio::sync::broadcast::Sender<concord_engine::DocKey>,
    /// The `GET /v1/sync` connections: how many are open, and what they relay.
    pub sync: api::sync::Hub,
    /// True once the node is stopping (long-lived answers end then).
    pub shutdown: watch::Receiver<bool>,
    /// Who may use the HTTP API ([`api::auth`]).
    pub tokens: api::auth::Tokens,
}

impl Node {
    /// Whether this node takes writes now (it holds the lease: writing, catching up, or
    /// unable to read its log); otherwise writes go to the region's leader.
    pub fn writes_here(&self) -> bool {
        matches!(self.view.borrow().role, RoleView::Leader { .. } | RoleView::CatchingUp | RoleView::Stuck { .. })
    }
}

/// How long shutdown waits for queued writes and open requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Entries on their way from the stream consumers to the worker.
const INBOUND_QUEUE: usize = 4096;
/// Repairs on their way from anti-entropy to the worker (each waits for its commit).
const REPAIRS_QUEUE: usize = 4;
/// Conflict records on their way to NATS.
const CONFLICTS_QUEUE: usize = 1024;

/// Run a node until `shutdown` becomes true, or until a critical part fails (then the
/// error says which).
pub async fn run(cfg: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<(), start::StartError> {
    let region = cfg.validate()?;
    let tokens = cfg.tokens()?;
    replay::marker::refuse_to_serve(&cfg.data_dir)?;
    let store = Store::open_with_cache(&cfg.data_dir, cfg.cache_mib << 20)?
        .with_conflict_retention(cfg.conflicts_max, Duration::from_secs(cfg.conflicts_max_age_s));
    // The node's own stop signal: the caller's, or a critical failure.
    let stop_tx = Arc::new(watch::channel(false).0);
    let stop = stop_tx.subscribe();
    let forward = stop_tx.clone();
    let mut outer = shutdown;
    tokio::spawn(async move {
        let _ = outer.wait_for(|s| *s).await;
        let _ = forward.send(true);
    });
    let client = start::connect(&cfg, &mut stop.clone()).await?;
    let max_payload = start::check_max_payload(&cfg, &client)?;
    let (log, mirrors) = start::open_streams(&cfg, &region, &client, &mut stop.clone()).await?;
    if cfg.role == Role::Follower {
        bootstrap::bootstrap_if_needed(&cfg, &store, &log, &mirrors, &tokens).await?;
    }
    let leases = Arc::new(log.leases().await?);
    let me = LeaseRecord { node: cfg.node.clone(), http: cfg.advertised_url() };
    // A configured leader takes the lease if it is free (or was its own); otherwise it
    // starts as a follower, and the lease decides who leads from then on.
    let held = match cfg.role {
        Role::Leader => lease::claim_at_start(&leases, region.as_str(), &me).await,
        Role::Follower => None,
    };
    let start_as = if held.is_some() { StartAs::Leader } else { StartAs::Follower };
    let engine = start::open_engine(&cfg, &region, &store, log.stream(), &mirrors, start_as)?;
    let metrics = Arc::new(Metrics::default());
    let (sup, mut fatal) = Supervisor::new(stop.clone(), metrics.clone());
    let (watches, views) = Watches::new(&engine, &cfg.sync_bucket);
    let (writes_tx, writes_rx) = mpsc::channel(cfg.write_queue_max);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (lease_tx, lease_rx) = mpsc::channel(4);
    let timing = lease::Timing::of(&cfg);
    let (deadline_tx, deadline_rx) = watch::channel(held.map(|(_, sent)| sent + timing.deadline));
    let identity = Arc::new(identity::Identity::new(log.clone(), region.to_string()));
    spawn_gap_repair(&sup, &log, &region, &views, inbound_tx.clone(), &metrics, &identity);
    let origins = mirrors.iter().map(|(stream, region)| (stream.clone(), region.to_string())).collect();
    let streams = streams::StreamSet::new(log.clone(), inbound_tx, sup.clone(), views.cursors.clone(), origins)
        .with_identity(identity.clone(), region.to_string());
    let limits = start::limits(&cfg, max_payload);
    let clock = clock::WallClock::default();
    if !cfg.test_clock_skew_file.is_empty() {
        let path = std::path::PathBuf::from(&cfg.test_clock_skew_file);
        let follow = clock.clone().follow_skew_file(path, stop.clone());
        sup.spawn_once("clock skew (test only)", async move {
            follow.await;
            Ok(())
        });
    }
    let repairs = spawn_anti_entropy(&sup, &cfg, &region, &client, &store, &views, &metrics, max_payload);
    let worker = Worker::new(engine, store.clone(), log.clone(), streams, metrics.clone(), watches, limits)
        .with_conflict_publisher(spawn_conflict_publisher(&sup, &client, &region))
        .with_repairs(repairs)
        .with_identity(identity)
        .with_collection(spawn_collection(&sup, &cfg, &store, &metrics), Duration::from_secs(cfg.mark_interval_s))
        .with_lease(lease_rx, deadline_rx)
        .with_clock(clock);
    sup.spawn_once("worker", async move { worker.run(writes_rx, inbound_rx, stop).await.map_err(|e| e.to_string()) });
    let followers = followers::Followers::default();
    let task = lease::LeaseTask {
        leases,
        region: region.to_string(),
        me,
        timing,
        followers: followers.clone(),
        views: views.clone(),
        events: lease_tx,
        deadline: deadline_tx,
    };
    // Critical: a lease task that failed while holding could not stop the writer in time.
    sup.spawn_once("lease", task.run(held, sup.shutdown()));
    let (remote_stored, remote_wanted) = spawn_region_tasks(&sup, &cfg, &region, &client, &log, &views);
    let sync = api::sync::Hub::new(cfg.sync_connections_max);
    let node = Arc::new(Node {
        remote_stored,
        remote_wanted,
        followers,
        cfg,
        region_header: axum::http::HeaderValue::from_str(region.as_str()).expect("a region name is a valid header"),
        region,
        store,
        metrics,
        applied: views.applied.clone(),
        token: views.token.clone(),
        cursors: views.cursors.clone(),
        view: views.view.clone(),
        writes: writes_tx,
        log,
        leader_cache: Default::default(),
        serves_nats_reads: Default::default(),
        conflict_feed: views.conflicts.clone(),
        conflict_streams: Default::default(),
        doc_feed: views.docs.clone(),
        sync,
        shutdown: sup.shutdown(),
        tokens,
    });
    serve(node, sup, &mut fatal, &stop_tx, &client).await
}

/// Once the worker has caught up: serve the APIs until the stop signal or a critical
/// failure, then drain.
async fn serve(
    node: Arc<Node>,
    sup: Supervisor,
    fatal: &mut mpsc::Receiver<String>,
    stop_tx: &watch::Sender<bool>,
    client: &async_nats::Client,
) -> Result<(), start::StartError> {
    let mut stop = stop_tx.subscribe();
    let failure = tokio::select! {
        _ = wait_until_started(&node, &mut stop) => None,
        why = fatal.recv() => why,
    };
    if failure.is_none() {
        spawn_node_tasks(&sup, &node, client).await?;
        info!(node = %node.cfg.node, leads = node.writes_here(), "serving");
    }
    let failure = match failure {
        Some(why) => Some(why),
        None => tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            why = fatal.recv() => why,
        },
    };
    info!("shutting down: draining writes and requests");
    let _ = stop_tx.send(true);
    let drained = sup.drain(DRAIN_DEADLINE).await;
    let _ = client.drain().await;
    match (failure, drained) {
        (Some(why), _) => Err(format!("stopping: {why}").into()),
        (None, false) => Err("drain deadline passed with work still running".into()),
        (None, true) => Ok(()),
    }
}

/// A leader reads its region's log to the end before it serves (its status names its
/// epoch from the first answer); a follower starts at once.
async fn wait_until_started(node: &Node, stop: &mut watch::Receiver<bool>) {
    let mut view = node.view.clone();
    tokio::select! {
        _ = view.wait_for(|v| v.role != RoleView::CatchingUp) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

fn spawn_conflict_publisher(
    sup: &Supervisor,
    client: &async_nats::Client,
    region: &RegionId,
) -> mpsc::Sender<concord_core::conflict::ConflictRecord> {
    let (tx, rx) = mpsc::channel(CONFLICTS_QUEUE);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let (client, subject, stop) = (client.clone(), api::nats::conflicts_subject(region.as_str()), sup.shutdown());
    sup.spawn("conflict publisher", Policy::Restart, move || {
        publish::publish_conflicts(client.clone(), subject.clone(), rx.clone(), stop.clone())
    });
    tx
}

/// The anti-entropy of this replica: gaps that stand are filled from the origins' logs.
fn spawn_gap_repair(
    sup: &Supervisor,
    log: &Arc<NatsLog>,
    region: &RegionId,
    views: &Views,
    inbound: mpsc::Sender<(String, concord_transport::LogEntry)>,
    metrics: &Arc<Metrics>,
    identity: &Arc<identity::Identity>,
) {
    let (l, r, v, m, s) = (log.clone(), region.clone(), views.clone(), metrics.clone(), sup.shutdown());
    let i = identity.clone();
    sup.spawn("gap repair", Policy::Restart, move || {
        repair::repair_gaps(l.clone(), r.clone(), v.clone(), inbound.clone(), m.clone(), i.clone(), s.clone())
    });
}

/// Tombstone collection's sweeps (none when `gc_interval_s` is 0). Returns where the
/// candidates arrive for the worker.
fn spawn_collection(
    sup: &Supervisor,
    cfg: &NodeConfig,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> mpsc::Receiver<worker::CollectRequest> {
    let (tx, rx) = mpsc::channel(REPAIRS_QUEUE);
    if cfg.gc_interval_s > 0 {
        let (st, m, s, every) =
            (store.clone(), metrics.clone(), sup.shutdown(), Duration::from_secs(cfg.gc_interval_s));
        sup.spawn("tombstone collection", Policy::Restart, move || {
            collect::run(st.clone(), tx.clone(), every, m.clone(), s.clone())
        });
    }
    rx
}

/// Anti-entropy: the answers this node gives its peers, and its own rounds. Returns
/// where the rounds' repairs arrive for the worker.
#[allow(clippy::too_many_arguments)]
fn spawn_anti_entropy(
    sup: &Supervisor,
    cfg: &NodeConfig,
    region: &RegionId,
    client: &async_nats::Client,
    store: &Store,
    views: &Views,
    metrics: &Arc<Metrics>,
    max_payload: usize,
) -> mpsc::Receiver<anti_entropy::RepairRequest> {
    let responder =
        Arc::new(anti_entropy::serve::Responder::new(store.clone(), region.to_string(), cfg.node.clone(), max_payload));
    let (c, s) = (client.clone(), sup.shutdown());
    sup.spawn("anti-entropy answers", Policy::Restart, move || responder.clone().serve(c.clone(), s.clone()));
    let (tx, rx) = mpsc::channel(REPAIRS_QUEUE);
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let ctx = anti_entropy::Ctx {
        client: client.clone(),
        store: store.clone(),
        region: region.clone(),
        node: cfg.node.clone(),
        remote_regions: cfg.remote_regions(),
        views: views.clone(),
        repairs: tx,
        metrics: metrics.clone(),
        interval: secs(cfg.anti_entropy_interval_s),
        gap_after: secs(cfg.anti_entropy_gap_after_s),
    };
    let s = sup.shutdown();
    sup.spawn("anti-entropy", Policy::Restart, move || anti_entropy::run(ctx.clone(), s.clone()));
    rx
}

/// The tasks that talk to the rest of the region and to the other regions: progress
/// reports, the leader record, and (a leader) how much of its log the others stored.
fn spawn_region_tasks(
    sup: &Supervisor,
    cfg: &NodeConfig,
    region: &RegionId,
    client: &async_nats::Client,
    log: &Arc<NatsLog>,
    views: &Views,
) -> (RemoteStored, Arc<watch::Sender<u64>>) {
    let stop = sup.shutdown();
    let (c, r, n, v, s) = (client.clone(), region.clone(), cfg.node.clone(), views.clone(), stop.clone());
    sup.spawn("progress reports", Policy::Restart, move || {
        followers::report_progress(c.clone(), r.clone(), n.clone(), v.clone(), s.clone())
    });
    let record = LeaderRecord { node: cfg.node.clone(), http: cfg.advertised_url(), epoch: 0 };
    let (l, r, v, s) = (log.clone(), region.to_string(), views.clone(), stop.clone());
    sup.spawn("leader record", Policy::Restart, move || {
        publish::announce_leadership(l.clone(), r.clone(), record.clone(), v.clone(), s.clone())
    });
    let mut remote_stored = Vec::new();
    let wanted = Arc::new(watch::channel(0).0);
    for remote in cfg.remote_regions() {
        let (tx, rx) = watch::channel(0);
        let tx = Arc::new(tx);
        let (l, r, rr, v, s) = (log.clone(), region.clone(), remote.clone(), views.clone(), stop.clone());
        let w = wanted.subscribe();
        sup.spawn(format!("stored by {remote}"), Policy::Restart, move || {
            let stored = remote::Stored { tx: tx.clone(), wanted: w.clone() };
            remote::poll_remote_stored(l.clone(), r.clone(), rr.clone(), stored, v.clone(), s.clone())
        });
        remote_stored.push((remote, rx));
    }
    (remote_stored, wanted)
}

/// How long a starting node waits for its NATS API before it opens its HTTP API anyway.
const NATS_API_WAIT: Duration = Duration::from_secs(10);

/// The APIs, and a leader's collection of its followers' reports.
async fn spawn_node_tasks(
    sup: &Supervisor,
    node: &Arc<Node>,
    client: &async_nats::Client,
) -> Result<(), start::StartError> {
    let stop = sup.shutdown();
    // Every node collects its region's progress reports: a leader for `region`
    // durability and lag, a follower to know where it ranks for the lease.
    let (c, r, f, s) = (client.clone(), node.region.clone(), node.followers.clone(), stop.clone());
    sup.spawn("follower reports", Policy::Restart, move || {
        followers::track_followers(c.clone(), r.clone(), f.clone(), s.clone())
    });
    // The NATS API first: a node that answers over HTTP answers over NATS too (a client
    // that saw it up over one may use the other at once).
    let (serving_tx, mut serving) = watch::channel(false);
    let (n, c, s) = (node.clone(), client.clone(), stop.clone());
    sup.spawn("NATS API", Policy::Restart, move || {
        let (n, c, s, serving) = (n.clone(), c.clone(), s.clone(), serving_tx.clone());
        async move { api::nats::serve(n, c, s, serving).await.map_err(|e| e.to_string()) }
    });
    if tokio::time::timeout(NATS_API_WAIT, serving.wait_for(|up| *up)).await.is_err() {
        warn!(waited_s = NATS_API_WAIT.as_secs(), "the NATS API is not serving yet; opening the HTTP API anyway");
    }
    let listener = tokio::net::TcpListener::bind(&node.cfg.http_listen).await?;
    info!(addr = %listener.local_addr()?, "HTTP API listening");
    let mut http_stop = stop.clone();
    let deployment = api::deployment::spawn(sup, node, client);
    let http = axum::serve(listener, api::http::router(node.clone(), deployment)).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    sup.spawn_once("HTTP API", async move { http.await.map_err(|e| e.to_string()) });
    Ok(())
}
