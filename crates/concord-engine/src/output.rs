//! What a step asks the runtime to do, in this order: commit the batch (durably, in one
//! transaction), then send the replies, then issue the append (or drop the abandoned
//! ones), start the catch-up, follow or stop following streams; alerts and stats are
//! for logs and metrics.

use bytes::Bytes;
use concord_core::hlc::Hlc;
use concord_core::ids::Origin;

use crate::state::Batch;

/// The engine's answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub origin: Origin,
    /// The write's sequence in its origin; `None` when it changed nothing.
    pub seq: Option<u64>,
    pub hlc: Option<Hlc>,
    /// The region log's sequence of the changeset that holds it (what other regions'
    /// mirrors must reach for `remote` / `all` durability).
    pub log_seq: Option<u64>,
}

/// Why a write was not acknowledged, grouped by what the client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Fix the request: the document operation cannot apply.
    Invalid(String),
    /// The changeset is larger than the log accepts.
    TooLarge(String),
    /// The log did not confirm the append: the write may still apply. Retry.
    LogUnavailable(String),
    /// This replica does not take writes now (a follower, catching up, or deposed).
    NotLeader(String),
    /// This replica cannot read its region's log (a newer format): upgrade it.
    Parked(String),
}

/// An append the runtime must make to the region's log, then report with
/// [`crate::Engine::append_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub payload: Bytes,
    /// For the log's deduplication: a retried append is stored once.
    pub msg_id: String,
    /// The log's last sequence this append must follow (fencing).
    pub expected_last: u64,
    pub origin: Origin,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Which write got which origin sequence.
    pub seqs: Vec<(u64, u64)>,
}

/// How an append ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored {
        stream_seq: u64,
    },
    /// Refused for its size: nothing was stored.
    TooLarge(String),
    /// Refused because the log moved on (fenced), or the outcome is unknown: the writer
    /// reads the log to its end before it writes again, in a new epoch.
    Failed(String),
}

/// Something an operator should see in logs, status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// A stream stopped at a message this node cannot read, or for want of room.
    Parked {
        stream: String,
        stream_seq: u64,
        reason: String,
    },
    /// A stream parked for want of room goes on.
    Resumed {
        stream: String,
    },
    /// An origin's changesets started waiting behind a gap.
    GapOpened {
        origin: Origin,
        applied: u64,
        first_seq: u64,
    },
    GapClosed {
        origin: Origin,
        applied: u64,
    },
    /// A repair from a peer's state held what a gap of this origin lacked: its applied
    /// sequence moved from `from` to `to` (anti-entropy).
    Lifted {
        origin: Origin,
        from: u64,
        to: u64,
    },
    /// A repair brought a peer's document changes that the document refused: they were
    /// left out (the rest of the repair applied).
    RepairRefused {
        bucket: String,
        key: String,
        reason: String,
    },
    /// A message went to the dead-letter table.
    DeadLettered {
        stream: String,
        stream_seq: u64,
        reason: String,
    },
    /// Messages of a stream were removed before this replica read them.
    StreamGap {
        stream: String,
        from: u64,
        to: u64,
    },
    /// Another origin of this region wrote the log: this replica stopped writing.
    Deposed {
        origin: Origin,
        by: Origin,
    },
    /// The writer gave up its lease: it follows its region's log now.
    SteppedDown {
        origin: Option<Origin>,
    },
    /// This replica writes now.
    Leading {
        origin: Origin,
    },
}

/// Counts of one step, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub changesets_applied: u64,
    pub changesets_duplicate: u64,
    pub lww_conflicts: u64,
    pub changesets_published: u64,
    pub changes_published: u64,
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub writes_rejected: u64,
    /// Tombstones collected ([`crate::marks`]).
    pub tombstones_collected: u64,
    /// Marks this writer made.
    pub marks_made: u64,
    /// Values a repair dropped: the peer had applied and superseded them
    /// ([`crate::Repair`]).
    pub values_dropped: u64,
}

#[derive(Debug, Default)]
pub struct Output {
    /// Commit first: nothing below may be acted on before it is durable.
    pub commit: Option<Batch>,
    /// Write ids and their outcomes.
    pub replies: Vec<(u64, Result<Ack, WriteError>)>,
    pub append: Option<Append>,
    /// How many appends made before this step, still in flight, were abandoned: an
    /// earlier one failed, their writers are answered in `replies`, and the runtime drops
    /// them without reporting their outcomes (what of them the log stored, the catch-up
    /// reads).
    pub appends_abandoned: usize,
    /// Read the region's log to its end, as [`crate::Engine::catch_up_next`] says, then
    /// call [`crate::Engine::caught_up`].
    pub catch_up: bool,
    /// Start following these streams from these sequences.
    pub follow: Vec<(String, u64)>,
    /// Stop following these streams (parked).
    pub unfollow: Vec<String>,
    pub alerts: Vec<Alert>,
    pub stats: Stats,
}
