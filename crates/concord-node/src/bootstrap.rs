//! A follower whose store is empty while its region's log or a mirror no longer starts
//! at sequence 1 (retention trimmed it) starts from a snapshot of its region's leader
//! (`GET /v1/snapshot`), then follows the streams from the snapshot's cursors.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_core::ids::RegionId;
use concord_storage::Store;
use concord_transport::nats::NatsLog;
use tracing::info;

use crate::NodeConfig;

/// Start from the leader's snapshot when this store is empty and a stream no longer
/// holds its first messages.
pub async fn bootstrap_if_needed(
    cfg: &NodeConfig,
    store: &Store,
    log: &NatsLog,
    mirrors: &BTreeMap<String, RegionId>,
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
