//! `GET /v1/status` (and NATS `status`): the node's [`StatusBody`].

use std::collections::BTreeMap;
use std::time::Duration;

use concord_api::{FollowerStatus, GapStatus, MirrorLag, ParkedStatus, StatusBody, StreamLag, StreamState};
use concord_core::ids::Origin;
use concord_engine::RoleView;

use super::{Reply, leader_address};
use crate::Node;
use crate::view::EngineView;

pub async fn status(node: &Node) -> Reply {
    Reply::json(200, status_body(node).await)
}

/// The role status shows, what the writer does, and this node's origin.
fn role_of(node: &Node, role: &RoleView) -> (&'static str, &'static str, Origin) {
    let none = Origin::new(node.region.clone(), 0);
    match role {
        RoleView::Follower => ("follower", "following", none),
        RoleView::CatchingUp => ("leader", "catching_up", none),
        RoleView::Leader { origin } => ("leader", "writing", origin.clone()),
        // Fenced by the log (another origin wrote later): it follows its log now.
        RoleView::Deposed { origin, .. } => ("follower", "deposed", origin.clone()),
        RoleView::Stuck { .. } => ("leader", "parked", none),
    }
}

/// Every stream this replica applies: its position, and whether it is parked.
fn streams(node: &Node, view: &EngineView) -> BTreeMap<String, StreamState> {
    let names = std::iter::once(node.log.stream().to_string())
        .chain(node.cfg.remote_regions().into_iter().map(|r| concord_transport::nats::mirror_name(r.as_str())));
    names
        .map(|name| {
            let parked = view.parked.get(&name).map(|p| ParkedStatus { seq: p.stream_seq, reason: p.reason.clone() });
            let cursor = view.cursors.get(&name).copied().unwrap_or(0);
            (name, StreamState { cursor, parked })
        })
        .collect()
}

/// The body, from one snapshot of the engine (so it never shows a step's effects without
/// those of the steps before it); the NATS measures are taken after it.
pub async fn status_body(node: &Node) -> StatusBody {
    let view = node.view.borrow().clone();
    let applied: BTreeMap<String, u64> = view.applied.iter().map(|(o, s)| (o.to_string(), s)).collect();
    let (role, writer, origin) = role_of(node, &view.role);
    let mut lag = BTreeMap::new();
    for remote in node.cfg.remote_regions() {
        let mirror = concord_transport::nats::mirror_name(remote.as_str());
        lag.insert(remote.to_string(), stream_lag(node, &view, &mirror).await);
    }
    let leading = node.writes_here();
    if !leading {
        // A follower also lags behind its own region's log.
        lag.insert(node.region.to_string(), stream_lag(node, &view, node.log.stream()).await);
    }
    let (leader_name, leader_epoch) = if leading {
        (node.cfg.node.clone(), origin.epoch)
    } else {
        leader_address(node).await.map(|(n, _, epoch)| (n, epoch)).unwrap_or_default()
    };
    let log_last =
        if leading { node.log.position(node.log.stream()).await.map(|p| p.last_seq).unwrap_or(0) } else { 0 };
    // Every node collects its region's reports; only a leader lists them as its followers.
    let reports = if leading { node.followers.live() } else { Vec::new() };
    let followers = reports
        .into_iter()
        .map(|(r, age)| {
            let info = FollowerStatus {
                applied_log_seq: r.log_seq,
                lag_seq: log_last.saturating_sub(r.log_seq),
                reported_ms_ago: age.as_millis() as u64,
                token: r.token,
            };
            (r.node, info)
        })
        .collect();
    let remote_stored = node.remote_stored.iter().map(|(r, rx)| (r.to_string(), *rx.borrow())).collect();
    let gaps = view
        .gaps
        .iter()
        .map(|g| GapStatus {
            origin: g.origin.to_string(),
            applied: g.applied,
            next_waiting: g.next_waiting,
            waiting: g.waiting as u64,
        })
        .collect();
    StatusBody {
        region: node.region.to_string(),
        node: node.cfg.node.clone(),
        role: role.to_string(),
        epoch: origin.epoch,
        origin: origin.to_string(),
        leader: leader_name,
        leader_epoch,
        applied,
        lag,
        followers,
        serves_nats_reads: node.serves_nats_reads.load(std::sync::atomic::Ordering::Relaxed),
        remote_stored,
        writer: writer.to_string(),
        streams: streams(node, &view),
        gaps,
        waiting: view.waiting as u64,
        dead_letters: view.dead_letters,
        open_conflicts: open_conflicts(node).await,
    }
}

/// The unresolved records of this replica's conflict log (0 if the store fails to say:
/// status answers regardless, and the failure shows in the node's log).
async fn open_conflicts(node: &Node) -> u64 {
    let store = node.store.clone();
    match tokio::task::spawn_blocking(move || store.open_conflicts_count()).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not count open conflicts");
            0
        }
        Err(_) => 0,
    }
}

/// How far this replica is behind another region's log: `seq` messages (those its
/// mirror holds but this replica has not applied, plus those the mirror has not yet
/// copied), `ms` the age of the oldest unapplied message in the mirror, and the
/// mirror's own view of its upstream (`mirror_active_ms` grows while it is cut off).
async fn stream_lag(node: &Node, view: &EngineView, mirror: &str) -> StreamLag {
    let mirror = mirror.to_string();
    let cursor = view.cursors.get(&mirror).copied().unwrap_or(0);
    let failed = |error: String| StreamLag { applied_seq: cursor, error: Some(error), mirror: None };
    let pos = match tokio::time::timeout(Duration::from_secs(2), node.log.position(&mirror)).await {
        Ok(Ok(pos)) => pos,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("the local mirror did not answer in 2 s".to_string()),
    };
    let unapplied = pos.last_seq.saturating_sub(cursor);
    let mut ms = 0u64;
    if unapplied > 0
        && let Ok(Ok(Some(at))) =
            tokio::time::timeout(Duration::from_secs(2), node.log.stored_at(&mirror, cursor + 1)).await
    {
        ms = (chrono::Utc::now() - at).num_milliseconds().max(0) as u64;
    }
    StreamLag {
        applied_seq: cursor,
        error: None,
        mirror: Some(MirrorLag {
            seq: unapplied + pos.upstream_lag,
            ms,
            mirror_seq: pos.last_seq,
            mirror_lag: pos.upstream_lag,
            mirror_active_ms: pos.upstream_active.map(|d| d.as_millis() as u64),
            // The mirror heard from its upstream in the last 5 s (heartbeats come every
            // second); while cut off its `lag` cannot grow, so this is what to alert on.
            mirror_connected: pos.upstream_active.is_some_and(|d| d < Duration::from_secs(5)),
        }),
    }
}
