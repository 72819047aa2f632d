//! Followers' progress, both ends of it.
//!
//! A follower (any replica reading its region's log) reports what it has applied on
//! `concord.applied.<region>.<node>` after every change and every second. Its leader
//! collects the reports ([`Followers`]): they give `region` durability, per-follower
//! lag in status, and whether any follower is alive to serve reads over NATS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;
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
    /// How far it read the region's log (its cursor: for lag in status).
    pub log_seq: u64,
    /// Its session token (applied vector).
    pub token: String,
}

/// One follower's last report, with its applied vector decoded.
type Seen = (Report, VersionVector, Instant);

/// A leader's view of its followers.
#[derive(Clone)]
pub struct Followers {
    reports: Arc<Mutex<HashMap<String, Seen>>>,
    /// Bumped at every report, to wake whoever waits for a follower to apply something.
    reported_tx: Arc<watch::Sender<u64>>,
}

impl Default for Followers {
    fn default() -> Self {
        Followers { reports: Default::default(), reported_tx: Arc::new(watch::channel(0).0) }
    }
}

impl Followers {
    /// Take a report in; one whose token does not decode is ignored (and logged).
    pub fn record(&self, report: Report) {
        let applied = match concord_core::token::decode(&report.token) {
            Ok(vv) => vv,
            Err(e) => return warn!(node = %report.node, error = %e, "ignoring a follower report with a bad token"),
        };
        let node = report.node.clone();
        self.reports.lock().expect("not poisoned").insert(node, (report, applied, Instant::now()));
        self.reported_tx.send_modify(|n| *n += 1);
    }

    /// Whether a live follower has applied `origin`'s change `seq` (what `region`
    /// durability waits for: applied, not merely read past).
    pub fn applied_by_any(&self, origin: &Origin, seq: u64) -> bool {
        let reports = self.reports.lock().expect("not poisoned");
        reports.values().any(|(_, applied, at)| at.elapsed() < FOLLOWER_ALIVE && applied.get(origin) >= seq)
    }

    /// Changes at every report.
    pub fn watch_reports(&self) -> watch::Receiver<u64> {
        self.reported_tx.subscribe()
    }

    /// Live followers: (report, time since it arrived).
    pub fn live(&self) -> Vec<(Report, Duration)> {
        let reports = self.reports.lock().expect("not poisoned");
        let mut out: Vec<_> = reports
            .values()
            .filter(|(_, _, at)| at.elapsed() < FOLLOWER_ALIVE)
            .map(|(r, _, at)| (r.clone(), at.elapsed()))
            .collect();
        out.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `region` durability needs a follower that applied the write: its cursor having
    /// passed it (the changeset waits behind a gap, or was dead-lettered) is not enough.
    #[test]
    fn only_an_applied_write_counts() {
        let followers = Followers::default();
        let origin: Origin = "us-east.1".parse().unwrap();
        followers.record(Report { node: "us-east-2".into(), log_seq: 10, token: "v1:us-east.1=3".into() });
        assert!(followers.applied_by_any(&origin, 3));
        assert!(!followers.applied_by_any(&origin, 5), "read past, not applied");
        followers.record(Report { node: "us-east-3".into(), log_seq: 4, token: "v1:us-east.1=5".into() });
        assert!(followers.applied_by_any(&origin, 5));
        followers.record(Report { node: "us-east-4".into(), log_seq: 4, token: "garbage".into() });
        assert_eq!(followers.live().len(), 2, "a report with a bad token is ignored");
    }
}
