//! Repairing gaps from the origin's log: the anti-entropy of a replica whose stream
//! lost messages.
//!
//! A changeset that arrives after a gap in its origin's sequence waits durably (the
//! engine never applies past a gap). Normally the gap closes by itself: the missing
//! changesets are on their way. But a region's mirror of another region's log can be
//! left with a hole: the fault suite saw one after a partition of a region whose leader
//! was killed twice (seed 3; the mirror reached the origin's last sequence with no lag,
//! without 51 messages in the middle). Nothing delivers them again, so without repair
//! that origin's later changesets wait for ever.
//!
//! A mirror keeps the origin log's sequence numbers, so what is missing lies below the
//! first waiting changeset's stream sequence. Once a gap has stood for
//! [`REPAIR_AFTER`], this task walks that stream back from there, message by message
//! (direct gets, [`READS_MAX`] per attempt), and each message the local stream does
//! not hold is read from the origin region's log through its JetStream domain. The
//! walk stops at the changeset the applied vector already covers (or an earlier
//! epoch). What it found goes to the worker as entries of the stream, in stream order,
//! like a redelivery: the engine classifies them as always (a changeset that fills the
//! gap applies, and so do those that waited behind it; garbage is not recorded twice).
//!
//! Only messages the local stream lacks are taken. One it holds was delivered: if the
//! engine did not apply it, it refused it (a dead letter), and the gap behind it is by
//! design (an origin's later changesets wait behind a refused one); feeding it again
//! would only refuse it again. So a walk can find nothing; attempts then back off, to
//! [`RETRY_MAX`]. When it finds nothing, the message right before the first waiting
//! changeset and that changeset are handed over again, together: the engine tells
//! from the pair whether the changeset is void (stored after a message that is not its
//! predecessor: `concord_engine::classify`), which it cannot when it did not see the
//! message before (it restarted in between, or that message came late through a
//! hole); if it is, it becomes a dead letter and the gap closes. An origin's log that lost the messages too (retention) cannot repair
//! the gap either: it stays in status (`gaps`) and in the `origin_gaps` gauge.
//!
//! Known limits: a walk that does not reach the applied changeset within [`READS_MAX`]
//! messages hands over what it found (those changesets wait, and the next attempt
//! starts below them); gaps in the region's own log are not repaired here (the log is
//! the only copy: a follower missing part of it bootstraps from a snapshot).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::changeset::Changeset;
use concord_core::ids::{Origin, RegionId};
use concord_engine::Gap;
use concord_transport::nats::{NatsLog, RawMessage};
use concord_transport::{LogEntry, LogResult};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{self, Metrics};
use crate::view::Views;

/// How long a gap stands before its stream is walked back: long enough for messages
/// that are merely late (a mirror resuming after a partition) to arrive by themselves.
pub const REPAIR_AFTER: Duration = Duration::from_secs(3);
/// The longest wait between two attempts at the same gap.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Most messages one attempt reads.
pub const READS_MAX: u64 = 1000;
/// How often the gaps are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one message may take to read (the origin may be cut off).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the walk does with a message found below a gap.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// It holds missing changes: take it, and go on.
    Take,
    /// It holds the change right after the applied ones: take it, and stop.
    TakeLast,
    /// Not part of the gap (another origin, waiting already, undecodable): go on.
    Skip,
    /// At or before what is applied: the gap starts above it.
    Stop,
}

/// Decide about the message `payload`, read below `gap` from its stream. Pure.
pub fn judge(gap: &Gap, payload: &[u8]) -> Step {
    let Ok(cs) = Changeset::decode(payload) else { return Step::Skip };
    let (origin, ours) = (&cs.origin, &gap.origin);
    if origin.region != ours.region || origin.epoch > ours.epoch {
        return Step::Skip;
    }
    if origin.epoch < ours.epoch || cs.last_seq() <= gap.applied {
        return Step::Stop;
    }
    if cs.first_seq >= gap.next_waiting {
        return Step::Skip;
    }
    if cs.first_seq <= gap.applied + 1 { Step::TakeLast } else { Step::Take }
}

/// Where the messages of a gap's stream are read.
pub trait Source {
    /// The message `seq` of the local stream `stream`, if it holds it.
    fn local(&self, stream: &str, seq: u64) -> impl Future<Output = LogResult<Option<RawMessage>>> + Send;
    /// The message `seq` of `region`'s log, read in that region's domain.
    fn origin(&self, region: &RegionId, seq: u64) -> impl Future<Output = LogResult<Option<RawMessage>>> + Send;
}

impl Source for NatsLog {
    async fn local(&self, stream: &str, seq: u64) -> LogResult<Option<RawMessage>> {
        timed(self.message(None, stream, seq)).await
    }

    async fn origin(&self, region: &RegionId, seq: u64) -> LogResult<Option<RawMessage>> {
        let stream = concord_transport::nats::stream_name(region.as_str());
        timed(self.message(Some(region.as_str()), &stream, seq)).await
    }
}

async fn timed(read: impl Future<Output = LogResult<Option<RawMessage>>>) -> LogResult<Option<RawMessage>> {
    tokio::time::timeout(READ_TIMEOUT, read).await.unwrap_or_else(|_| {
        Err(concord_transport::LogError::Unavailable(format!("no answer within {} s", READ_TIMEOUT.as_secs())))
    })
}

/// What one walk found: the entries to hand over, in stream order, and whether it
/// reached the applied changeset (the gap closes once they are applied).
#[derive(Debug, Default)]
pub struct Found {
    pub entries: Vec<LogEntry>,
    pub complete: bool,
    pub reads: u64,
    /// The local stream's message right before the first waiting changeset, when it
    /// holds it.
    pub before: Option<LogEntry>,
}

/// Walk `gap`'s stream back from its first waiting changeset. Messages of the region's
/// own log are never read from elsewhere (`own`).
pub async fn walk<S: Source>(source: &S, own: &RegionId, gap: &Gap) -> LogResult<Found> {
    let mut found = Found::default();
    let lowest = gap.stream_seq.saturating_sub(READS_MAX).max(1);
    for seq in (lowest..gap.stream_seq).rev() {
        found.reads += 1;
        let (msg, missing_here) = match source.local(&gap.stream, seq).await? {
            Some(m) => {
                if seq + 1 == gap.stream_seq {
                    found.before =
                        Some(LogEntry { seq, payload: m.payload.clone(), subject: m.subject.clone(), forged: None });
                }
                (m, false)
            }
            None if gap.origin.region == *own => continue,
            None => match source.origin(&gap.origin.region, seq).await? {
                Some(p) => (p, true),
                None => continue,
            },
        };
        let step = judge(gap, &msg.payload);
        if missing_here && matches!(step, Step::Take | Step::TakeLast) {
            found.entries.push(LogEntry { seq, payload: msg.payload, subject: msg.subject, forged: None });
        }
        if matches!(step, Step::Stop | Step::TakeLast) {
            found.complete = true;
            break;
        }
    }
    found.entries.reverse();
    Ok(found)
}

/// When to try a gap next.
struct Attempts {
    next_at: Instant,
    wait: Duration,
}

/// Watch the engine's gaps until shutdown; walk back those that stand, and hand what
/// is found to the worker through `inbound` (the channel the streams feed).
pub async fn repair_gaps(
    log: Arc<NatsLog>,
    own: RegionId,
    views: Views,
    inbound: mpsc::Sender<(String, LogEntry)>,
    metrics: Arc<Metrics>,
    identity: Arc<crate::identity::Identity>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut attempts: BTreeMap<(Origin, u64), Attempts> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let gaps = views.view.borrow().gaps.clone();
        attempts.retain(|(origin, applied), _| gaps.iter().any(|g| g.origin == *origin && g.applied == *applied));
        for gap in gaps {
            let now = Instant::now();
            let key = (gap.origin.clone(), gap.applied);
            let due = attempts.entry(key).or_insert(Attempts { next_at: now + REPAIR_AFTER, wait: REPAIR_AFTER });
            if now < due.next_at {
                continue;
            }
            let walked = match walk(log.as_ref(), &own, &gap).await {
                Ok(mut found) => screen(&identity, &gap, &mut found).await.map(|()| found),
                Err(e) => Err(e.to_string()),
            };
            let handed = match walked {
                Ok(found) => hand_over(log.as_ref(), &gap, found, &inbound, &metrics).await?,
                Err(e) => {
                    warn!(origin = %gap.origin, error = %e, "repairing a gap: reading the logs failed; trying again later");
                    false
                }
            };
            due.wait = if handed { REPAIR_AFTER } else { (due.wait * 2).min(RETRY_MAX) };
            due.next_at = Instant::now() + due.wait;
        }
    }
}

/// Check who published what a walk found ([`crate::identity`]).
async fn screen(identity: &crate::identity::Identity, gap: &Gap, found: &mut Found) -> Result<(), String> {
    let region = gap.origin.region.as_str();
    for e in found.entries.iter_mut().chain(found.before.iter_mut()) {
        e.forged = identity.verdict(region, e).await?;
    }
    Ok(())
}

/// Give the worker what a walk found. False when it found nothing.
async fn hand_over<S: Source>(
    source: &S,
    gap: &Gap,
    found: Found,
    inbound: &mpsc::Sender<(String, LogEntry)>,
    metrics: &Metrics,
) -> Result<bool, String> {
    if found.entries.is_empty() {
        info!(origin = %gap.origin, applied = gap.applied, stream = gap.stream, reads = found.reads,
            "a gap stands, and its stream lacks nothing that its origin's log holds (a refused changeset, a void one, or messages gone)");
        for entry in recheck(source, gap, found.before).await {
            inbound.send((gap.stream.clone(), entry)).await.map_err(|_| "the worker stopped".to_string())?;
        }
        return Ok(false);
    }
    warn!(origin = %gap.origin, applied = gap.applied, next_waiting = gap.next_waiting, stream = gap.stream,
        messages = found.entries.len(), complete = found.complete,
        "repairing a gap: messages missing from the stream were read from the origin's log");
    metrics::add(&metrics.gap_repair_messages_total, found.entries.len() as u64);
    for entry in found.entries {
        inbound.send((gap.stream.clone(), entry)).await.map_err(|_| "the worker stopped".to_string())?;
    }
    Ok(true)
}

/// The pair the engine checks a waiting changeset's voidness with: the message right
/// before it, and itself (both from the local stream; nothing when either is missing).
pub async fn recheck<S: Source>(source: &S, gap: &Gap, before: Option<LogEntry>) -> Vec<LogEntry> {
    let Some(before) = before else { return Vec::new() };
    match source.local(&gap.stream, gap.stream_seq).await {
        Ok(Some(m)) => {
            vec![before, LogEntry { seq: gap.stream_seq, payload: m.payload, subject: m.subject, forged: None }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
