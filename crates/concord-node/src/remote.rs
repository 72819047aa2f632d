//! How much of this region's log every other region has stored: a leader polls the
//! last sequence of each other region's mirror of its log (through that region's
//! JetStream domain), which is what `remote` and `all` durability wait for. It asks
//! every 50 ms, and again at once while a writer waits for more than it last saw (so a
//! `remote` write waits for the replication, not for the next poll).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use concord_core::ids::RegionId;
use concord_engine::RoleView;
use concord_transport::nats::NatsLog;
use tokio::sync::watch;

use crate::view::Views;

/// How often a leader asks the other regions how much of its log they stored.
const REMOTE_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// While writers wait: the pause between questions, and how long after the last writer
/// asked for more the polls stay this quick.
const HOT_PAUSE: Duration = Duration::from_millis(1);
const HOT_FOR: Duration = Duration::from_secs(2);
/// How long one question may take.
const REMOTE_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a poll reports, and what writers wait for.
pub struct Stored {
    /// The last sequence of the remote region's mirror of this region's log, as seen.
    pub tx: Arc<watch::Sender<u64>>,
    /// The highest sequence a writer waits for.
    pub wanted: watch::Receiver<u64>,
}

/// Keep `stored.tx` at the last sequence of `remote`'s mirror of `region`'s log, while
/// this node writes, until shutdown.
pub async fn poll_remote_stored(
    log: Arc<NatsLog>,
    region: RegionId,
    remote: RegionId,
    stored: Stored,
    views: Views,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let Stored { tx, mut wanted } = stored;
    let mut hot_until = Instant::now();
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
        let answered = matches!(asked, Ok(Ok(_)));
        if let Ok(Ok(seq)) = asked {
            tx.send_if_modified(|v| {
                let grew = seq > *v;
                *v = (*v).max(seq);
                grew
            });
        }
        // A writer waits for more than the remote region had: ask again almost at once
        // (one question in flight per region), for as long as writers keep asking; after
        // a failed question, or once nobody asked for a while, the usual pause.
        if wanted.has_changed().unwrap_or(false) {
            hot_until = Instant::now() + HOT_FOR;
        }
        if answered && *wanted.borrow_and_update() > *tx.borrow() && Instant::now() < hot_until {
            tokio::time::sleep(HOT_PAUSE).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(REMOTE_POLL_INTERVAL) => {}
            _ = wanted.changed() => hot_until = Instant::now() + HOT_FOR,
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
