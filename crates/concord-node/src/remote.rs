//! How much of this region's log every other region has stored: a leader polls the
//! last sequence of each other region's mirror of its log (through that region's
//! JetStream domain), which is what `remote` and `all` durability wait for.

use std::sync::Arc;
use std::time::Duration;

use concord_core::ids::RegionId;
use concord_engine::RoleView;
use concord_transport::nats::NatsLog;
use tokio::sync::watch;

use crate::view::Views;

/// How often a leader asks the other regions how much of its log they stored.
const REMOTE_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one question may take.
const REMOTE_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// Keep `tx` at the last sequence of `remote`'s mirror of `region`'s log, while this
/// node writes, until shutdown.
pub async fn poll_remote_stored(
    log: Arc<NatsLog>,
    region: RegionId,
    remote: RegionId,
    tx: Arc<watch::Sender<u64>>,
    views: Views,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mirror = concord_transport::nats::mirror_name(region.as_str());
    let mut view = views.view.clone();
    loop {
        let leading = matches!(view.borrow().role, RoleView::Leader { .. } | RoleView::CatchingUp);
        if !leading {
            tokio::select! {
                _ = view.changed() => continue,
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let asked = tokio::time::timeout(REMOTE_POLL_TIMEOUT, log.remote_last_seq(remote.as_str(), &mirror)).await;
        if let Ok(Ok(seq)) = asked {
            tx.send_if_modified(|v| {
                let grew = seq > *v;
                *v = (*v).max(seq);
                grew
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(REMOTE_POLL_INTERVAL) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
