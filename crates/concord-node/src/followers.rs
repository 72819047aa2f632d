//! Followers' progress, both ends of it.
//!
//! A follower (any replica reading its region's log) reports what it has applied on
//! `concord.applied.<region>.<node>` after every change and every second. Its leader
//! collects the reports ([`Followers`]): they give `region` durability, per-follower
//! lag in status, and whether any follower is alive to serve reads over NATS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::ids::RegionId;
use concord_engine::RoleView;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::view::Views;

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

/// Leader side: collect the followers' reports until shutdown.
pub async fn track_followers(
    client: async_nats::Client,
    region: RegionId,
    followers: Followers,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    use futures::StreamExt;
    let mut sub = client
        .subscribe(format!("concord.applied.{region}.*"))
        .await
        .map_err(|e| format!("subscribing to follower reports: {e}"))?;
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => match serde_json::from_slice::<Report>(&msg.payload) {
                    Ok(report) => followers.record(report),
                    Err(e) => warn!(error = %e, "ignoring a malformed follower report"),
                },
                None => return Err("the report subscription ended".into()),
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Follower side: report what this replica applied after every change, and every
/// [`REPORT_INTERVAL`] anyway (so the leader knows it is alive), until shutdown. Only
/// while it reads its region's log (a follower, or a deposed leader).
pub async fn report_progress(
    client: async_nats::Client,
    region: RegionId,
    node: String,
    views: Views,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let subject = report_subject(region.as_str(), &node);
    let own = concord_transport::nats::stream_name(region.as_str());
    let mut applied = views.applied.clone();
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return Ok(()) },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let reads_own_log = matches!(views.view.borrow().role, RoleView::Follower | RoleView::Deposed { .. });
        if !reads_own_log {
            continue;
        }
        let log_seq = views.cursors.borrow().get(&own).copied().unwrap_or(0);
        let token = concord_core::token::encode(&views.applied.borrow());
        let report = Report { node: node.clone(), log_seq, token };
        let body = serde_json::to_vec(&report).expect("a report serializes");
        if let Err(e) = client.publish(subject.clone(), body.into()).await {
            warn!(error = %e, "could not publish a progress report");
        }
    }
}
