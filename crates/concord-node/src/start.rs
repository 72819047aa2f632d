//! The steps of starting a node, each on its own: reach NATS, open the region's log and
//! the mirrors of the other regions' logs, and build the engine and its limits from the
//! configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::ids::RegionId;
use concord_engine::{Engine, EngineConfig, StartAs};
use concord_storage::Store;
use concord_transport::backoff::{Backoff, GaveUp, retry};
use concord_transport::nats::NatsLog;
use tokio::sync::watch;

use crate::NodeConfig;
use crate::worker::Limits;

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// What a changeset may hold beyond its values and documents.
const CHANGESET_OVERHEAD_BYTES: usize = 64 * 1024;

/// Connect to the region's NATS, retrying until `nats_connect_timeout_ms`.
pub async fn connect(cfg: &NodeConfig, shutdown: &mut watch::Receiver<bool>) -> Result<async_nats::Client, StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.nats_connect_timeout_ms);
    let (urls, credentials) = cfg.nats_servers()?;
    let shown = concord_transport::address::redact(&cfg.nats_url);
    let attempt = || async {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &credentials {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if !cfg.nats_ca_file.is_empty() {
            options = options.add_root_certificates(cfg.nats_ca_file.clone().into()).require_tls(true);
        }
        let connect = options
            .name(format!("concord {}", cfg.node))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(urls.clone());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("connecting to {shown}: {e}")),
            Err(_) => Err(format!("connecting to {shown}: timed out")),
        }
    };
    match retry("reaching NATS", Backoff::network().until(deadline), shutdown, |_| true, attempt).await {
        Ok(client) => Ok(client),
        Err(GaveUp::Failed(e)) => Err(e.into()),
        Err(GaveUp::Stopped) => Err("stopped while reaching NATS".into()),
    }
}

/// The server must carry the largest changeset this node may write.
pub fn check_max_payload(cfg: &NodeConfig, client: &async_nats::Client) -> Result<usize, StartError> {
    let max_payload = client.server_info().max_payload;
    if max_payload < cfg.value_bytes_max + CHANGESET_OVERHEAD_BYTES {
        return Err(format!(
            "the NATS server's max_payload ({max_payload} bytes) is smaller than value_bytes_max ({}) plus overhead: raise max_payload",
            cfg.value_bytes_max
        )
        .into());
    }
    Ok(max_payload)
}

/// The region's log and one local mirror per other region, and, on the log, the
/// durable consumer that feeds each other region's mirror of it. Returns the mirrors by
/// stream name, with the region whose log each holds. Retried until
/// `nats_connect_timeout_ms`: a JetStream cluster that just started takes a moment to
/// elect its leader before it creates streams.
pub async fn open_streams(
    cfg: &NodeConfig,
    region: &RegionId,
    client: &async_nats::Client,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(Arc<NatsLog>, BTreeMap<String, RegionId>), StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.nats_connect_timeout_ms);
    let opened = retry(
        "opening the region's streams",
        Backoff::network().until(deadline),
        shutdown,
        |_| true,
        || open_streams_once(cfg, region, client),
    );
    match opened.await {
        Ok(opened) => Ok(opened),
        Err(GaveUp::Failed(e)) => Err(e.into()),
        Err(GaveUp::Stopped) => Err("stopped while opening the region's streams".into()),
    }
}

async fn open_streams_once(
    cfg: &NodeConfig,
    region: &RegionId,
    client: &async_nats::Client,
) -> Result<(Arc<NatsLog>, BTreeMap<String, RegionId>), concord_transport::LogError> {
    let log =
        Arc::new(NatsLog::open(client.clone(), region.as_str(), &cfg.node, cfg.retention(), cfg.nats_replicas).await?);
    let mut mirrors = BTreeMap::new();
    for remote in cfg.remote_regions() {
        // Whoever leads later needs it; creating it is idempotent.
        log.ensure_mirror_consumer(region.as_str(), remote.as_str()).await?;
        let name = log.ensure_mirror(region.as_str(), remote.as_str(), cfg.retention()).await?;
        mirrors.insert(name, remote);
    }
    Ok((log, mirrors))
}

/// The engine, as this node's store left it.
pub fn open_engine(
    cfg: &NodeConfig,
    region: &RegionId,
    store: &Store,
    own_stream: &str,
    mirrors: &BTreeMap<String, RegionId>,
    start: StartAs,
) -> Result<Engine, StartError> {
    let mut streams = mirrors.clone();
    streams.insert(own_stream.to_string(), region.clone());
    let mut engine_cfg = EngineConfig::new(region.clone(), own_stream.to_string(), streams);
    engine_cfg.manual_buckets = cfg.manual_buckets.iter().cloned().collect();
    engine_cfg.waiting_max = cfg.waiting_changesets_max;
    engine_cfg.waiting_bytes_max = cfg.waiting_bytes_max;
    engine_cfg.value_bytes_max = cfg.value_bytes_max;
    engine_cfg.appends_in_flight_max = cfg.appends_in_flight_max;
    #[cfg(feature = "mutations")]
    {
        engine_cfg.mutation = match cfg.test_mutation.as_str() {
            "" => None,
            "drop-changeset" => Some(concord_engine::Mutation::DropChangeset),
            other => return Err(format!("test_mutation: unknown mutation {other:?} (known: drop-changeset)").into()),
        };
        if engine_cfg.mutation.is_some() {
            tracing::warn!(mutation = %cfg.test_mutation, "THIS NODE RUNS A DELIBERATELY BROKEN RULE (test only)");
        }
    }
    #[cfg(not(feature = "mutations"))]
    if !cfg.test_mutation.is_empty() {
        return Err("test_mutation is set, but this binary was built without the `mutations` feature".into());
    }
    Ok(Engine::open(engine_cfg, store.durable()?, start)?)
}

/// The worker's bounds, from the configuration and the server's `max_payload`.
pub fn limits(cfg: &NodeConfig, max_payload: usize) -> Limits {
    Limits {
        batch_changes_max: cfg.batch_changes_max,
        pipeline_batch_min: cfg.pipeline_batch_min.min(cfg.batch_changes_max),
        batch_bytes_max: cfg.batch_bytes_max.min(max_payload.saturating_sub(CHANGESET_OVERHEAD_BYTES)).max(1),
        append_deadline: Duration::from_millis(cfg.write_timeout_ms / 2),
        inbound_entries_max: cfg.apply_batch_max,
        inbound_bytes_max: cfg.apply_batch_bytes_max,
        read_bytes_max: cfg.apply_batch_bytes_max,
    }
}
