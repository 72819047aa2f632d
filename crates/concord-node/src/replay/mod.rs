//! Point-in-time restore: a store loaded from a backup is brought forward through the
//! region's log and every mirror, up to a point before a bad write, by the real engine,
//! and then stops there.
//!
//! Replication is no backup: a bad delete replicates everywhere, and a node restored
//! from a backup catches up to it too. [`replay`] opens a follower [`Engine`] over the
//! restored store (as a node would: the region's log `CONCORD_LOG_<REGION>` and one
//! mirror per other region, found in the region's JetStream) and applies every stream
//! from the backup's cursor to the point ([`cut`]), one bounded step at a time
//! (prepare → load → apply → commit), so the state is what a replica had applied
//! then: the same merges, conflict records and dead letters.
//!
//! What it guarantees:
//! - the point lies at or after the backup: a backup that holds a change at or after
//!   the point's time, or a log sequence at or past the bad write, is refused (it cannot
//!   be taken back to an earlier state), naming the backup's time and cursors;
//! - nothing is skipped silently: when a stream no longer holds what follows the
//!   backup's cursor (retention) or lacks a message in the middle, the replay stops with
//!   [`ReplayError::LogsTooShort`] before the state passes the gap; a message this
//!   build cannot read parks its stream and stops the replay;
//! - the directory is marked ([`marker`]) before the first commit and once the replay
//!   ended, so no node starts on it and catches up past the point unasked.
//!
//! Limits: each stream is read to where it ended when the replay started (what is
//! written meanwhile is after the point, or not yet in the logs); a mirror that lags its
//! upstream (a region cut off) lacks what it has not received, and the report says how
//! far behind it was; conflict records made during the replay carry the automatic rule
//! (a node's `manual_buckets` is not known here).

pub mod cut;
pub mod logs;
pub mod marker;
mod plan;
pub mod write_back;

use std::path::Path;

use concord_core::hlc::Hlc;
use concord_core::ids::RegionId;
use concord_core::vv::VersionVector;
use concord_engine::{Alert, Engine, EngineConfig, Entry, Gap, Output, StartAs};
use concord_storage::{Fsync, StorageError, Store};
pub use concord_transport::nats::stream_name;

pub use cut::{Cut, Point};
use logs::Logs;
use marker::Marker;

/// Most messages, and bytes, one engine step applies.
const STEP_ENTRIES_MAX: usize = 256;
const STEP_BYTES_MAX: usize = 8 << 20;
/// Dead letters a report describes one by one (the rest are counted).
pub const DEAD_LETTERS_SHOWN_MAX: usize = 100;

/// Why a replay stopped, grouped by what the operator does.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Fix the request: the point cannot be reached from this backup, or names nothing.
    #[error("{0}")]
    Refused(String),
    /// The logs no longer hold what the replay needs: use a newer backup (or restore
    /// without a point and recover what you can).
    #[error("{0}")]
    LogsTooShort(String),
    /// A stream holds a message this build cannot read: restore with a newer build.
    #[error("{0}")]
    Parked(String),
    /// NATS did not answer: retry (into an empty directory).
    #[error("{0}")]
    Unavailable(String),
    /// The local store failed or holds a corrupt record.
    #[error("local state: {0}")]
    Local(String),
}

impl From<StorageError> for ReplayError {
    fn from(e: StorageError) -> Self {
        ReplayError::Local(e.to_string())
    }
}

/// What to replay: the region whose backup the store holds, its NATS, the point.
#[derive(Debug, Clone)]
pub struct Request {
    pub region: RegionId,
    pub nats_url: String,
    pub point: Point,
}

/// One stream's replay, as it goes and when it ended.
#[derive(Debug, Clone)]
pub struct StreamReplay {
    pub stream: String,
    pub region: RegionId,
    /// The backup's cursor: the replay starts after it.
    pub from: u64,
    /// The last sequence this replay may read.
    pub through: u64,
    pub replayed: u64,
    /// The first message the point left out (`None`: the stream ended before the point).
    pub stopped_at: Option<u64>,
    /// Messages the mirror's upstream held that the mirror did not, when it started.
    pub upstream_lag: u64,
}

/// The messages a replay put in the dead-letter table: how many, and the first ones.
#[derive(Debug, Clone, Default)]
pub struct DeadLetters {
    pub total: u64,
    /// At most [`DEAD_LETTERS_SHOWN_MAX`], each "stream message seq: why".
    pub shown: Vec<String>,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Report {
    pub cut: Cut,
    /// The latest change the backup held (what the point must come after).
    pub backup_latest: Option<Hlc>,
    pub streams: Vec<StreamReplay>,
    pub applied: VersionVector,
    /// Messages the engine put in the dead-letter table, and why.
    pub dead_letters: DeadLetters,
    /// Origins whose changesets wait behind a gap after the replay.
    pub gaps: Vec<Gap>,
}

/// Replay `store` (a backup just loaded into `dir`) to `req.point`; `progress` hears of
/// every stream as it goes.
pub async fn replay(
    store: &Store,
    dir: &Path,
    req: &Request,
    progress: &mut dyn FnMut(&StreamReplay),
) -> Result<Report, ReplayError> {
    let logs = Logs::connect(&req.nats_url).await?;
    let own = stream_name(req.region.as_str());
    let mut streams = logs.mirrors().await?;
    streams.insert(own.clone(), req.region.clone());
    let durable = store.durable()?;
    plan::check_region(&durable.cursors, &own, &req.region)?;
    let cut = plan::resolve(&logs, &own, &durable.cursors, req.point).await?;
    let backup_latest = plan::backup_latest(&logs, store, &streams, &durable.cursors).await?;
    plan::check_before(&cut, backup_latest, &durable.cursors)?;
    let mut plans = Vec::new();
    for (stream, region) in &streams {
        let from = durable.cursors.get(stream).copied().unwrap_or(0);
        plans.push(plan::plan(&logs, stream, region, *stream == own, &cut, from).await?);
    }
    let mut mark = Marker::new(req.region.as_str(), req.point, cut);
    marker::write(dir, &mark).map_err(ReplayError::Local)?;
    let cfg = EngineConfig::new(req.region.clone(), own.clone(), streams);
    let mut engine = Engine::open(cfg, durable, StartAs::Follower).map_err(|e| ReplayError::Local(e.to_string()))?;
    let mut dead_letters = DeadLetters::default();
    for plan in &mut plans {
        progress(plan);
        engine =
            replay_stream(&logs, store, engine, plan, plan.stream == own, &cut, &mut dead_letters, progress).await?;
    }
    store.sync()?;
    let report = Report {
        cut,
        backup_latest,
        applied: engine.applied().clone(),
        gaps: engine.gaps(),
        dead_letters,
        streams: plans,
    };
    mark.state = marker::State::Complete;
    mark.applied = report.applied.iter().map(|(o, s)| (o.to_string(), s)).collect();
    mark.cursors = engine.cursors().clone();
    for s in &report.streams {
        mark.replayed.insert(s.stream.clone(), s.replayed);
        if let Some(at) = s.stopped_at {
            mark.stopped_at.insert(s.stream.clone(), at);
        }
    }
    marker::write(dir, &mark).map_err(ReplayError::Local)?;
    Ok(report)
}

/// Apply `plan.stream` from its cursor up to the point, in bounded steps.
#[allow(clippy::too_many_arguments)]
async fn replay_stream(
    logs: &Logs,
    store: &Store,
    mut engine: Engine,
    plan: &mut StreamReplay,
    own: bool,
    cut: &Cut,
    dead_letters: &mut DeadLetters,
    progress: &mut dyn FnMut(&StreamReplay),
) -> Result<Engine, ReplayError> {
    // The own log stops before the bad write (by sequence, whatever its time).
    let own_stop = cut.own_through.filter(|_| own).map(|through| through + 1);
    if plan.through <= plan.from {
        plan.stopped_at = own_stop;
        return Ok(engine);
    }
    let mut reader = logs.read_from(&plan.stream, plan.from + 1).await?;
    let (mut batch, mut bytes): (Vec<Entry>, usize) = (Vec::new(), 0);
    let mut next = plan.from + 1;
    while next <= plan.through {
        let (seq, payload) = reader.next().await?;
        if seq != next {
            return Err(ReplayError::LogsTooShort(format!(
                "{} lacks messages {next}..{} (deleted or removed by retention while reading): the replay stops \
                 rather than pass them",
                plan.stream,
                seq - 1
            )));
        }
        if !cut.admits(own, seq, &payload) {
            plan.stopped_at = Some(seq);
            break;
        }
        next += 1;
        bytes += payload.len();
        batch.push(Entry { seq, payload });
        if batch.len() >= STEP_ENTRIES_MAX || bytes >= STEP_BYTES_MAX {
            engine = step(engine, store, plan, std::mem::take(&mut batch), dead_letters).await?;
            bytes = 0;
            progress(plan);
        }
    }
    if !batch.is_empty() {
        engine = step(engine, store, plan, batch, dead_letters).await?;
    }
    plan.stopped_at = plan.stopped_at.or(own_stop);
    progress(plan);
    Ok(engine)
}

/// One engine step over `entries`, committed (deferred: the caller syncs at the end).
async fn step(
    mut engine: Engine,
    store: &Store,
    plan: &mut StreamReplay,
    entries: Vec<Entry>,
    dead_letters: &mut DeadLetters,
) -> Result<Engine, ReplayError> {
    let (store, stream, n) = (store.clone(), plan.stream.clone(), entries.len() as u64);
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let (engine, out) = tokio::task::spawn_blocking(move || -> Result<(Engine, Output), ReplayError> {
        let prepared = engine.prepare(&stream, entries, now_ms);
        let facts = store.load(prepared.needs())?;
        let out = engine.apply(prepared, &facts).map_err(|e| ReplayError::Local(e.to_string()))?;
        if let Some(batch) = &out.commit {
            store.commit_with(batch, Fsync::Deferred)?;
        }
        engine.validate().map_err(|e| ReplayError::Local(format!("an engine invariant broke: {e}")))?;
        Ok((engine, out))
    })
    .await
    .map_err(|e| ReplayError::Local(format!("a replay step panicked: {e}")))??;
    for alert in &out.alerts {
        if let Alert::DeadLettered { stream, stream_seq, reason } = alert {
            dead_letters.total += 1;
            if dead_letters.shown.len() < DEAD_LETTERS_SHOWN_MAX {
                dead_letters.shown.push(format!("{stream} message {stream_seq}: {reason}"));
            }
        }
    }
    if let Some(parked) = engine.parked().get(&plan.stream) {
        let what = if parked.for_room {
            "more changesets wait behind a gap than the engine keeps: the logs lack what they wait for"
        } else {
            "restore with a build that reads it"
        };
        return Err(ReplayError::Parked(format!(
            "{} parked at message {}: {} ({what})",
            plan.stream, parked.stream_seq, parked.reason
        )));
    }
    plan.replayed += n;
    Ok(engine)
}
