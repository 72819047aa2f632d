//! Finding the region's leader: where a write sent to a follower goes (307), from the
//! leader record in `concord_leaders`, cached briefly.

use std::time::Duration;

use concord_api::{ErrorCode, LeaderRecord};

use super::Params;

/// How long a look-up of the leader record is reused (a failover moves it).
const LEADER_CACHE: Duration = Duration::from_secs(1);
use crate::Node;
use crate::error::NodeError;

/// Where a write sent to a follower should go: 307 to the leader, same path and query.
pub(super) async fn redirect_to_leader(node: &Node, p: &Params) -> NodeError {
    match leader_address(node).await {
        // The record still names this node: it stepped down and no new leader has
        // announced itself yet. Never redirect to itself.
        Some((leader, _, _)) if leader == node.cfg.node => NodeError::unavailable(
            ErrorCode::NoLeader,
            format!("{} no longer leads {} and no new leader is known yet: retry shortly", node.cfg.node, node.region),
        ),
        Some((leader, url, _)) => NodeError::Redirect {
            message: format!("{} is a follower; writes go to the leader {leader}", node.cfg.node),
            location: format!("{url}{}", p.path_and_query.clone().unwrap_or_default()),
        },
        None => NodeError::unavailable(
            ErrorCode::NoLeader,
            format!("{} is a follower and no leader of {} is known", node.cfg.node, node.region),
        ),
    }
}

/// The region's leader (node, URL, epoch), from `concord_leaders`, cached briefly.
pub async fn leader_address(node: &Node) -> Option<(String, String, u64)> {
    if let Some((at, r)) = node.leader_cache.lock().expect("not poisoned").clone()
        && at.elapsed() < LEADER_CACHE
    {
        return Some((r.node, r.http, r.epoch));
    }
    let record: LeaderRecord =
        tokio::time::timeout(Duration::from_secs(2), node.log.leader_of(node.region.as_str())).await.ok()?.ok()??;
    *node.leader_cache.lock().expect("not poisoned") = Some((std::time::Instant::now(), record.clone()));
    Some((record.node, record.http, record.epoch))
}
