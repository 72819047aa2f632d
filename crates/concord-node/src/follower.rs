//! Followers: read-only replicas of a region.
//!
//! A follower reads every stream from its region's NATS (the region's own log and the
//! mirrors of the other regions' logs), applies them like the leader does (same
//! idempotent, batched apply), and serves reads. It reports what it has applied on
//! `concord.applied.<region>.<node>` (after every step and every second), which gives
//! the leader `region` durability, per-follower lag, and whether any follower serves
//! reads. Writes sent to a follower over HTTP are redirected to the leader (307, the
//! leader's address from `concord_leaders`); over NATS only the leader serves them.
//!
//! A follower whose store is empty while the log no longer starts at 1 (retention)
//! starts from a snapshot of the leader (`GET /v1/snapshot`) and then follows the log
//! from the snapshot's cursors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::ids::RegionId;
use concord_storage::Store;
use concord_transport::LogEntry;
use concord_transport::nats::NatsLog;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::NodeConfig;
use crate::error::NodeError;
use crate::replica::Replica;

/// How often an idle follower reports, and how long a silent one still counts.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
pub const FOLLOWER_ALIVE: Duration = Duration::from_secs(5);

pub fn report_subject(region: &str, node: &str) -> String {
    format!("concord.applied.{region}.{node}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    /// The last sequence of the region's log this follower applied.
    pub log_seq: u64,
    /// Its session token (applied vector).
    pub token: String,
}

/// A leader's view of its followers.
#[derive(Clone)]
pub struct Followers {
    reports: Arc<Mutex<HashMap<String, (Report, Instant)>>>,
    /// The highest log sequence any live follower applied.
    best_tx: Arc<watch::Sender<u64>>,
}

impl Default for Followers {
    fn default() -> Self {
        Followers { reports: Default::default(), best_tx: Arc::new(watch::channel(0).0) }
    }
}

impl Followers {
    pub fn record(&self, report: Report) {
        let mut reports = self.reports.lock().expect("not poisoned");
        reports.insert(report.node.clone(), (report, Instant::now()));
        let best = reports.values().filter(|(_, at)| at.elapsed() < FOLLOWER_ALIVE).map(|(r, _)| r.log_seq).max();
        if let Some(best) = best {
            self.best_tx.send_if_modified(|v| {
                let grew = best > *v;
                *v = (*v).max(best);
                grew
            });
        }
    }

    /// Live followers: (report, time since it arrived).
    pub fn live(&self) -> Vec<(Report, Duration)> {
        let reports = self.reports.lock().expect("not poisoned");
        let mut out: Vec<_> = reports
            .values()
            .filter(|(_, at)| at.elapsed() < FOLLOWER_ALIVE)
            .map(|(r, at)| (r.clone(), at.elapsed()))
            .collect();
        out.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        out
    }

    pub fn watch_best(&self) -> watch::Receiver<u64> {
        self.best_tx.subscribe()
    }
}

/// Leader side: collect the followers' reports.
pub async fn track_followers(
    client: async_nats::Client,
    region: RegionId,
    followers: Followers,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures::StreamExt;
    let mut sub = match client.subscribe(format!("concord.applied.{region}.*")).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to follower reports; region durability will time out");
            return;
        }
    };
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => match serde_json::from_slice::<Report>(&msg.payload) {
                    Ok(report) => followers.record(report),
                    Err(e) => warn!(error = %e, "ignoring a malformed follower report"),
                },
                None => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Follower side: apply the streams, report progress, until shutdown.
pub async fn run(
    mut replica: Replica,
    streams: HashMap<String, RegionId>,
    mut inbound: mpsc::Receiver<(String, LogEntry)>,
    client: async_nats::Client,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let own = replica.stream().to_string();
    let subject = report_subject(replica.region.as_str(), &node);
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    loop {
        tokio::select! {
            entry = inbound.recv() => match entry {
                Some(first) => replica.apply_inbound(first, &mut inbound, &streams).await?,
                None => return Ok(()),
            },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let report = Report {
            node: node.clone(),
            log_seq: replica.cursor(&own),
            token: concord_core::token::encode(replica.applied()),
        };
        let _ = client.publish(subject.clone(), serde_json::to_vec(&report).expect("JSON").into()).await;
    }
}

/// Start from the leader's snapshot when this store is empty and a stream no longer
/// holds its first messages.
pub async fn bootstrap_if_needed(
    cfg: &NodeConfig,
    store: &Store,
    log: &NatsLog,
    mirrors: &HashMap<String, RegionId>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !store.applied()?.is_empty() {
        return Ok(());
    }
    let mut trimmed = Vec::new();
    for stream in std::iter::once(log.stream().to_string()).chain(mirrors.keys().cloned()) {
        let pos = log.position(&stream).await?;
        if pos.first_seq > 1 {
            trimmed.push(format!("{stream} starts at {}", pos.first_seq));
        }
    }
    if trimmed.is_empty() {
        return Ok(());
    }
    let leader: concord_api::LeaderRecord = log
        .leader_of(&cfg.region)
        .await?
        .ok_or("the log was trimmed and no leader is advertised to take a snapshot from")?;
    let url = format!("{}/v1/snapshot", leader.http);
    info!(%url, trimmed = ?trimmed, "the log no longer holds everything: starting from the leader's snapshot");
    let resp = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?.get(&url).send().await?;
    if !resp.status().is_success() {
        return Err(format!("snapshot from {url}: {}", resp.status()).into());
    }
    let bytes = resp.bytes().await?;
    concord_storage::check_snapshot_header(&bytes)?;
    let store = store.clone();
    let n = bytes.len();
    tokio::task::spawn_blocking(move || store.import_snapshot(&bytes)).await??;
    info!(bytes = n, "snapshot loaded");
    Ok(())
}
