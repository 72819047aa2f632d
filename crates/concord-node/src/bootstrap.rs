//! A follower whose store is empty while its region's log or a mirror no longer starts
//! at sequence 1 (retention trimmed it) starts from a snapshot of its region's leader
//! (`GET /v1/snapshot`), then follows the streams from the snapshot's cursors. The
//! snapshot is streamed to a file in the data directory, then loaded from it in one
//! transaction (nothing of it stays if it fails part way), with progress in the log
//! while each runs; the file is removed after.
//!
//! A replica that is not empty and falls behind retention needs no snapshot: what it
//! missed shows as a gap, which anti-entropy repairs from a peer's state
//! ([`crate::anti_entropy`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord_core::ids::RegionId;
use concord_storage::Store;
use concord_transport::nats::NatsLog;
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::NodeConfig;

/// Start from the leader's snapshot when this store is empty and a stream no longer
/// holds its first messages.
pub async fn bootstrap_if_needed(
    cfg: &NodeConfig,
    store: &Store,
    log: &NatsLog,
    mirrors: &BTreeMap<String, RegionId>,
    tokens: &crate::api::auth::Tokens,
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
    let file = cfg.data_dir.join("bootstrap.snapshot.partial");
    let token = tokens.write_token().map(|t| t.expose().to_string());
    let result = load(&url, &file, store, token.as_deref()).await;
    let _ = std::fs::remove_file(&file);
    result
}

/// How often a long download or load says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Download the snapshot at `url` to `file` (streamed: never in memory whole), then load
/// it into `store`, saying how far each is every [`PROGRESS_EVERY`].
async fn load(
    url: &str,
    file: &std::path::Path,
    store: &Store,
    token: Option<&str>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut req = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let mut resp = req.send().await?;
    if !resp.status().is_success() {
        return Err(format!("snapshot from {url}: {}", resp.status()).into());
    }
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(file).await?);
    let (started, mut shown, mut bytes) = (Instant::now(), Instant::now(), 0u64);
    // Each piece must come within the read timeout (a stalled peer is an error, not a hang).
    while let Some(chunk) =
        tokio::time::timeout(READ_TIMEOUT, resp.chunk()).await.map_err(|_| "the snapshot stalled")??
    {
        out.write_all(&chunk).await?;
        bytes += chunk.len() as u64;
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            info!(mib = bytes >> 20, secs = started.elapsed().as_secs(), "downloading the leader's snapshot");
        }
    }
    out.flush().await?;
    drop(out);
    info!(bytes, secs = started.elapsed().as_secs_f64(), "snapshot downloaded; loading it");
    let (store, file) = (store.clone(), file.to_path_buf());
    let total = bytes.max(1);
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::new(std::fs::File::open(&file)?);
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut input, &mut head).map_err(|_| "the snapshot is too short")?;
        concord_storage::check_snapshot_header(&head)?;
        let mut input = std::io::Read::chain(&head[..], input);
        let mut shown = Instant::now();
        let mut progress = |read: u64| {
            if shown.elapsed() >= PROGRESS_EVERY {
                shown = Instant::now();
                info!(percent = read * 100 / total, mib = read >> 20, "loading the leader's snapshot");
            }
        };
        store.import_snapshot_from(&mut input, &mut progress)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await??;
    info!(bytes, secs = started.elapsed().as_secs_f64(), "snapshot loaded");
    Ok(())
}

/// The longest a snapshot's download may wait for its next piece.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
