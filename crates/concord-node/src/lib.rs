//! Concord's node runtime.
//!
//! [`run`] starts one node: it opens local state, reaches the region's NATS, replays the
//! region's log from the stored cursor (so a crash between an append and its local
//! commit is repaired), takes a new epoch, and then serves the write path
//! ([`leader`]), the HTTP API and the NATS micro service ([`api`]) until shutdown,
//! when it stops taking requests, drains queued writes and exits.
//!
//! Other regions' changesets arrive through local JetStream mirrors of their logs (NATS
//! carries them, so a partition only delays them); the leader applies them in batches,
//! idempotently, in the same task that serves writes.
//!
//! Known limits of this phase: a leader only (followers, and with them `region`
//! durability, come later); the conflict log comes later (conflicts are counted and
//! logged).

pub mod api;
pub mod config;
pub mod conflicts;
pub mod error;
pub mod follower;
pub mod leader;
pub mod metrics;
pub mod replica;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;
use concord_storage::Store;
use concord_transport::nats::NatsLog;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::{NodeConfig, Role};
pub use error::NodeError;
use leader::{Leader, LeaderState, WriteRequest};
use metrics::Metrics;
use replica::Replica;

/// What the API needs of a running node.
pub struct Node {
    pub cfg: NodeConfig,
    pub region: RegionId,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub applied: watch::Receiver<VersionVector>,
    pub cursors: watch::Receiver<HashMap<String, u64>>,
    pub leader: watch::Receiver<LeaderState>,
    pub writes: mpsc::Sender<WriteRequest>,
    pub log: Arc<NatsLog>,
    /// For each other region: how much of this region's log it has stored (the last
    /// sequence of its mirror of us), as last seen.
    pub remote_stored: Vec<(RegionId, watch::Receiver<u64>)>,
    /// A leader's view of its region's followers (from their reports).
    pub followers: follower::Followers,
    /// A follower's last look-up of its region's leader: (when, node, URL).
    pub leader_cache: std::sync::Mutex<Option<(Instant, String, String)>>,
    /// Whether this node answers reads over NATS now (a follower always; a leader only
    /// while no follower is alive).
    pub serves_nats_reads: std::sync::atomic::AtomicBool,
}

/// How often a leader asks the other regions how much of its log they stored.
const REMOTE_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Keep `tx` at the last sequence of `remote`'s mirror of `region`'s log.
async fn poll_remote_stored(
    log: Arc<NatsLog>,
    region: RegionId,
    remote: RegionId,
    tx: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mirror = concord_transport::nats::mirror_name(region.as_str());
    loop {
        let asked = tokio::time::timeout(Duration::from_secs(2), log.remote_last_seq(remote.as_str(), &mirror)).await;
        if let Ok(Ok(seq)) = asked {
            tx.send_if_modified(|v| {
                let grew = seq > *v;
                *v = (*v).max(seq);
                grew
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(REMOTE_POLL_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long shutdown waits for queued writes and open requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

async fn connect(cfg: &NodeConfig) -> anyhow_lite::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_millis(cfg.nats_connect_timeout_ms);
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async_nats::ConnectOptions::new()
            .name(format!("concord {}", cfg.node))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(&cfg.nats_url);
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(format!("connecting to {}: {e}", cfg.nats_url).into());
            }
            Err(_) if Instant::now() >= deadline => {
                return Err(format!("connecting to {}: timed out", cfg.nats_url).into());
            }
            other => {
                warn!(url = %cfg.nats_url, error = ?other.err(), "NATS not reachable yet; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A tiny boxed error for start-up, so the library needs no `anyhow`.
mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

/// Run a node until `shutdown` becomes true.
pub async fn run(
    cfg: NodeConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let region = cfg.validate()?;
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&cfg.data_dir)?
        .with_conflict_retention(cfg.conflicts_max, Duration::from_secs(cfg.conflicts_max_age_s));
    let client = connect(&cfg).await?;
    let max_payload = client.server_info().max_payload;
    if max_payload < cfg.value_bytes_max + 64 * 1024 {
        return Err(format!(
            "the NATS server's max_payload ({max_payload} bytes) is smaller than value_bytes_max ({}) plus overhead: raise max_payload",
            cfg.value_bytes_max
        )
        .into());
    }
    let leading = cfg.role == Role::Leader;
    let log = Arc::new(NatsLog::open(client.clone(), region.as_str(), cfg.log_max_msgs).await?);
    let mut mirrors = HashMap::new();
    for remote in cfg.remote_regions() {
        if leading {
            log.ensure_mirror_consumer(region.as_str(), remote.as_str()).await?;
        }
        let name = log.ensure_mirror(region.as_str(), remote.as_str()).await?;
        mirrors.insert(name, remote);
    }
    if !leading {
        follower::bootstrap_if_needed(&cfg, &store, &log, &mirrors).await?;
    }
    let mut replica = Replica::open(store.clone(), region.clone(), log.stream().to_string(), metrics.clone())?;
    replica.manual_buckets = cfg.manual_buckets.iter().cloned().collect();
    // Conflict records go out on NATS for subscribers (bounded: a slow NATS drops
    // publications, counted, never stalls the writer; the log itself is durable).
    // Only the leader publishes, so a subscriber sees each record once per region.
    if leading {
        let (conflict_tx, mut conflict_rx) = mpsc::channel::<concord_core::conflict::ConflictRecord>(1024);
        replica.conflict_tx = Some(conflict_tx);
        let client = client.clone();
        let subject = api::nats::conflicts_subject(region.as_str());
        tokio::spawn(async move {
            while let Some(record) = conflict_rx.recv().await {
                let body = serde_json::to_vec(&record).expect("a record serializes");
                if let Err(e) = client.publish(subject.clone(), body.into()).await {
                    warn!(error = %e, "could not publish a conflict record");
                }
            }
        });
    }
    let log_last = if leading { replica.catch_up(log.as_ref()).await? } else { 0 };
    // Changesets from the streams: one task per stream, all feeding the one task that
    // owns the replica (bounded: a slow apply slows the readers, never memory). A leader
    // reads the other regions' mirrors; a follower also reads its region's own log.
    let (inbound_tx, inbound_rx) = mpsc::channel(4 * replica::CATCH_UP_CHUNK as usize);
    let mut streams = mirrors.clone();
    if !leading {
        streams.insert(log.stream().to_string(), region.clone());
    }
    for name in streams.keys() {
        let from = replica.cursor(name) + 1;
        let (log, name, tx) = (log.clone(), name.clone(), inbound_tx.clone());
        tokio::spawn(async move { log.follow(name, from, tx).await });
    }
    drop(inbound_tx);
    let mut remote_stored = Vec::new();
    if leading {
        for remote in cfg.remote_regions() {
            let (tx, rx) = watch::channel(0);
            tokio::spawn(poll_remote_stored(log.clone(), region.clone(), remote.clone(), tx, shutdown.clone()));
            remote_stored.push((remote, rx));
        }
    }
    let epoch =
        if leading { concord_transport::RegionLog::next_epoch(log.as_ref(), region.as_str()).await? } else { 0 };
    let origin = Origin::new(region.clone(), epoch);

    let (state_tx, state_rx) = watch::channel(LeaderState { origin: origin.clone(), fenced: false });
    let (writes_tx, writes_rx) = mpsc::channel(cfg.write_queue_max);
    let followers = follower::Followers::default();
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        region: region.clone(),
        store,
        metrics,
        applied: replica.watch_applied(),
        cursors: replica.watch_cursors(),
        leader: state_rx,
        writes: writes_tx,
        log: log.clone(),
        remote_stored,
        followers: followers.clone(),
        leader_cache: Default::default(),
        serves_nats_reads: std::sync::atomic::AtomicBool::new(!leading),
    });
    let mut worker = if leading {
        log.advertise_leader(
            region.as_str(),
            &concord_api::LeaderRecord { node: cfg.node.clone(), http: cfg.advertised_url(), epoch },
        )
        .await?;
        tokio::spawn(follower::track_followers(client.clone(), region.clone(), followers.clone(), shutdown.clone()));
        let leader = Leader {
            replica,
            log,
            origin: origin.clone(),
            next_seq: 1,
            log_last,
            batch_changes_max: cfg.batch_changes_max,
            batch_bytes_max: cfg.batch_bytes_max.min(max_payload.saturating_sub(64 * 1024)).max(1),
            append_deadline: Duration::from_millis(cfg.write_timeout_ms / 2),
            state_tx,
            mirrors,
        };
        info!(%origin, log_last, "leader ready");
        tokio::spawn(leader.run(writes_rx, inbound_rx, shutdown.clone()))
    } else {
        drop(writes_rx);
        info!(node = %cfg.node, "follower ready");
        tokio::spawn(follower::run(replica, streams, inbound_rx, client.clone(), cfg.node.clone(), shutdown.clone()))
    };

    let listener = tokio::net::TcpListener::bind(&cfg.http_listen).await?;
    info!(addr = %listener.local_addr()?, "HTTP API listening");
    let mut http_shutdown = shutdown.clone();
    let http = tokio::spawn(
        axum::serve(listener, api::http::router(node.clone()))
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .into_future(),
    );
    let nats_api = tokio::spawn(api::nats::serve(node.clone(), client.clone(), shutdown.clone()));

    let mut stop = shutdown.clone();
    tokio::select! {
        _ = stop.changed() => {}
        result = &mut worker => {
            // The worker only stops by itself on a fatal error (local state failed).
            let why = match result {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "the writer stopped".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(format!("stopping: {why}").into());
        }
    }
    info!("shutting down: draining writes and requests");
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        let w = worker.await;
        let _ = http.await;
        let _ = nats_api.await;
        w
    })
    .await;
    let _ = client.drain().await;
    match drained {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("drain deadline passed with work still running".into()),
    }
}
