//! What a node announces on NATS: its leader record, whenever it starts writing as a
//! new origin (so followers redirect writers to it and fetch snapshots from it), and the
//! conflict records it commits while it writes (`concord.conflicts.<region>`, for
//! subscribers; bounded: a slow NATS drops publications, counted, never the writer).

use std::sync::Arc;

use concord_api::LeaderRecord;
use concord_core::conflict::ConflictRecord;
use concord_engine::RoleView;
use concord_transport::backoff::{Backoff, retry};
use concord_transport::nats::NatsLog;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{info, warn};

use crate::view::Views;

/// Advertise this node in `concord_leaders` each time it starts writing as a new origin.
pub async fn announce_leadership(
    log: Arc<NatsLog>,
    region: String,
    record: LeaderRecord,
    views: Views,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut view = views.view.clone();
    let mut announced: Option<u64> = None;
    loop {
        let epoch = match &view.borrow_and_update().role {
            RoleView::Leader { origin } => Some(origin.epoch),
            _ => None,
        };
        if let Some(epoch) = epoch.filter(|e| announced != Some(*e)) {
            let record = LeaderRecord { epoch, ..record.clone() };
            let advertised = retry(
                "advertising the leader",
                Backoff::network(),
                &mut shutdown,
                |_| true,
                || log.advertise_leader(&region, &record),
            );
            if advertised.await.is_err() {
                return Ok(());
            }
            info!(node = %record.node, epoch, "advertised as the region's leader");
            announced = Some(epoch);
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Publish committed conflict records. The receiver is shared so that a restarted
/// task goes on with the same queue.
pub async fn publish_conflicts(
    client: async_nats::Client,
    subject: String,
    records: Arc<Mutex<mpsc::Receiver<ConflictRecord>>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut records = records.lock().await;
    loop {
        let record = tokio::select! {
            r = records.recv() => match r { Some(r) => r, None => return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        };
        let body = serde_json::to_vec(&record).expect("a record serializes");
        if let Err(e) = client.publish(subject.clone(), body.into()).await {
            warn!(error = %e, "could not publish a conflict record");
        }
    }
}
