//! `GET /v1/status` (and NATS `status`): the node's [`StatusBody`].

use std::collections::BTreeMap;
use std::time::Duration;

use concord_api::{FollowerStatus, GapStatus, MirrorLag, ParkedStatus, StatusBody, StreamLag, StreamState};
use concord_core::ids::Origin;
use concord_engine::RoleView;

use prometheus_client::registry::Unit;

use super::{Reply, leader_address};
use crate::Node;
use crate::metrics::Scrape;
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
    let lag = lags(node, &view).await;
    let leading = node.writes_here();
    let (leader_name, leader_epoch) = if leading {
        (node.cfg.node.clone(), origin.epoch)
    } else {
        leader_address(node).await.map(|(n, _, epoch)| (n, epoch)).unwrap_or_default()
    };
    let followers = followers(node, leading).await;
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

/// Per region this node reads a log of (the other regions' mirrors; for a follower also
/// its own region's log): how far behind it is.
async fn lags(node: &Node, view: &EngineView) -> BTreeMap<String, StreamLag> {
    let mut lag = BTreeMap::new();
    for remote in node.cfg.remote_regions() {
        let mirror = concord_transport::nats::mirror_name(remote.as_str());
        lag.insert(remote.to_string(), stream_lag(node, view, &mirror).await);
    }
    if !node.writes_here() {
        // A follower also lags behind its own region's log.
        lag.insert(node.region.to_string(), stream_lag(node, view, node.log.stream()).await);
    }
    lag
}

/// A leader's live followers and how far each is behind its log (none on a follower:
/// every node collects its region's reports, only a leader lists them).
async fn followers(node: &Node, leading: bool) -> BTreeMap<String, FollowerStatus> {
    if !leading {
        return BTreeMap::new();
    }
    let log_last = node.log.position(node.log.stream()).await.map(|p| p.last_seq).unwrap_or(0);
    node.followers
        .live()
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
        .collect()
}

/// The gauges of one `/metrics` scrape: what the replica holds back, its lag behind each
/// origin region (messages and seconds; whether the mirror hears its upstream), a
/// leader's followers' lag, its epoch, the open conflicts and streams.
pub async fn scrape(node: &Node) -> Scrape {
    let view = node.view.borrow().clone();
    let mut scrape = Scrape::default();
    crate::metrics::view_gauges(&mut scrape, &view);
    let (_, _, origin) = role_of(node, &view.role);
    let leading = node.writes_here();
    scrape.gauge("leader", "1 while this node holds its region's lease and writes", u64::from(leading));
    scrape.gauge("epoch", "The epoch of this node's origin (0 for a follower)", origin.epoch);
    scrape.gauge(
        "conflict_streams_open",
        "GET /v1/conflicts/events streams open now",
        node.conflict_streams.count() as u64,
    );
    let open = node.cfg.sync_connections_max.saturating_sub(node.sync.connections.available_permits());
    scrape.gauge("sync_connections_open", "GET /v1/sync connections open now", open as u64);
    let region = |r: &str| vec![("origin_region".to_string(), r.to_string())];
    let (mut msgs, mut secs, mut connected) = (Vec::new(), Vec::new(), Vec::new());
    for (r, l) in lags(node, &view).await {
        let Some(m) = &l.mirror else { continue };
        msgs.push((region(&r), m.seq as f64));
        secs.push((region(&r), m.ms as f64 / 1000.0));
        if r != node.region.as_str() {
            connected.push((region(&r), if m.mirror_connected { 1.0 } else { 0.0 }));
        }
    }
    let lag_help = "Messages of an origin region's log this replica has not applied (its mirror's and not yet copied)";
    scrape.family("replication_lag_messages", lag_help, None, msgs);
    let age_help = "Age of the oldest message of an origin region's log this replica has not applied";
    scrape.family("replication_lag", age_help, Some(Unit::Seconds), secs);
    scrape.family(
        "mirror_connected",
        "1 while the mirror of an origin region heard from it in the last 5 s",
        None,
        connected,
    );
    let follower_lag = followers(node, leading)
        .await
        .into_iter()
        .map(|(name, f)| (vec![("follower".to_string(), name)], f.lag_seq as f64))
        .collect();
    scrape.family(
        "follower_lag_messages",
        "A leader's followers: messages of its log each has not applied",
        None,
        follower_lag,
    );
    let store = node.store.clone();
    let counts = tokio::task::spawn_blocking(move || {
        Ok::<_, concord_storage::StorageError>((store.pending_docs()?, store.open_conflicts_count()?))
    });
    if let Ok(Ok((docs, open))) = counts.await {
        scrape.gauge(
            "documents_waiting",
            "Documents holding changes that wait for a dependency from another origin",
            docs,
        );
        scrape.gauge("conflicts_open", "Conflict records not resolved yet", open);
    }
    scrape
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
