//! Tombstone collection, the runtime's side: every `gc_interval_s` a sweep walks the
//! store's registers in pages, and hands those holding a tombstone to the worker, which
//! lets the engine decide with fresh facts what is stable and goes
//! (`concord_engine::marks`). Each page and each hand-over is bounded; a sweep that
//! finds the worker gone ends the task (the node is stopping).

use std::sync::Arc;
use std::time::Duration;

use concord_storage::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};

use crate::metrics::{self, Metrics};
use crate::worker::CollectRequest;

/// Registers one page of a sweep reads.
const SCAN_MAX: usize = 10_000;
/// Candidates one engine step looks at.
const KEYS_PER_STEP: usize = 512;

/// Sweep every `interval` until shutdown.
pub async fn run(
    store: Store,
    collects: mpsc::Sender<CollectRequest>,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        let collected = sweep(&store, &collects).await?;
        metrics::inc(&metrics.gc_sweeps_total);
        if collected > 0 {
            info!(collected, "tombstones collected (every region had applied them)");
        } else {
            debug!("a collection sweep found nothing stable to collect");
        }
    }
}

/// One sweep over the whole store: how many tombstones went.
pub async fn sweep(store: &Store, collects: &mpsc::Sender<CollectRequest>) -> Result<u64, String> {
    let mut after: Option<Vec<u8>> = None;
    let mut collected = 0;
    loop {
        let (s, from) = (store.clone(), after.clone());
        let (keys, next) = tokio::task::spawn_blocking(move || s.tombstone_candidates(from.as_deref(), SCAN_MAX))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for chunk in keys.chunks(KEYS_PER_STEP) {
            let (reply, answer) = oneshot::channel();
            collects.send(CollectRequest { keys: chunk.to_vec(), reply }).await.map_err(|_| "the worker stopped")?;
            collected += answer.await.map_err(|_| "the worker stopped".to_string())?.map_err(|e| e.to_string())?;
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(collected),
        }
    }
}
