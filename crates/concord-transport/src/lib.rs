//! The region's log: where a leader appends changesets and replicas read them back.
//!
//! [`RegionLog`] is the narrow interface the node runtime uses; [`nats::NatsLog`] is
//! JetStream (file storage; the server runs with `sync_interval: always`, so an
//! acknowledged append is on disk), and [`memory::MemoryLog`] is an in-memory log for
//! deterministic tests of the runtime without NATS.
//!
//! Fencing lives in the log: every append names the sequence it expects to follow
//! (`expected_last`), so a deposed leader's appends are refused ([`LogError::Fenced`]).
//! Pipelined appends are fenced the same way, each naming the sequence its predecessor
//! will take. (Not by the predecessor's message id, `Nats-Expected-Last-Msg-Id`: on a
//! three-server JetStream cluster, NATS 2.15.1, one append refused for it leaves the
//! stream taking no more messages at all; `tests/nats_fencing.rs` shows it. What a
//! sequence alone lets through, a pipelined append stored right after another writer's
//! message, the engine recognizes: `concord_engine::classify`, "void".)
//! An append whose outcome is unknown (timeout, disconnect) is [`LogError::Indeterminate`]:
//! the caller must re-read the log before it appends again.

pub mod address;
pub mod backoff;
pub mod follow;
pub mod lease;
pub mod memory;
pub mod nats;

use std::future::Future;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The log moved on without us: another writer appended (or our own earlier append
    /// landed late). Re-read the log; if another origin wrote, stop writing.
    #[error("log fenced: expected last sequence {expected}, the log is elsewhere")]
    Fenced { expected: u64 },
    /// The append may or may not be stored. Re-read the log before appending again.
    #[error("append outcome unknown: {0}")]
    Indeterminate(String),
    /// The log cannot be reached now: retry with backoff.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The message is larger than the log accepts: fix the configuration or the input.
    #[error("message too large: {0}")]
    TooLarge(String),
}

pub type LogResult<T> = Result<T, LogError>;

/// One stored message of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub payload: bytes::Bytes,
    /// The subject it was published on, which names its publisher
    /// (`concord.log.<region>.<node>`; empty where unknown). NATS permits each node
    /// only its own: it is the publisher's identity.
    pub subject: String,
    /// Set by whoever checked the publisher against its origin (the node's identity
    /// check): why the entry is forged. `None`: not found forged (or not checked).
    pub forged: Option<String>,
}

/// What one bounded read returned: the messages it found, and how far it looked.
/// Sequences up to `through` that are not in `entries` were removed (retention).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    pub entries: Vec<LogEntry>,
    pub through: u64,
}

pub trait RegionLog: Send + Sync + 'static {
    /// The sequence of the last stored message (0 when empty).
    fn last_seq(&self) -> impl Future<Output = LogResult<u64>> + Send;

    /// How a sent append ends: the new message's sequence, or why it was not stored.
    type Sent: Future<Output = LogResult<u64>> + Send + 'static;

    /// Send an append: `payload`, to be stored if the log's last sequence is
    /// `expected_last`; `msg_id` dedupes a retry (on a JetStream cluster the duplicate's
    /// sequence comes back; a single server checks the expected sequence first and
    /// refuses the retry of a stored append as fenced). Appends reach the log in the
    /// order they were sent: a writer sends the next one once this returns, without
    /// waiting for the outcome.
    fn send_append(
        &self,
        payload: bytes::Bytes,
        msg_id: String,
        expected_last: u64,
    ) -> impl Future<Output = LogResult<Self::Sent>> + Send;

    /// Send an append and wait for its outcome.
    fn append(
        &self,
        payload: bytes::Bytes,
        msg_id: String,
        expected_last: u64,
    ) -> impl Future<Output = LogResult<u64>> + Send {
        async move { self.send_append(payload, msg_id, expected_last).await?.await }
    }

    /// The messages with sequences in `from..=to`, in order (messages removed by
    /// retention are not there), stopping early once they hold `bytes_max` bytes (at
    /// least one message is returned when there is one).
    fn read(&self, from: u64, to: u64, bytes_max: usize) -> impl Future<Output = LogResult<Chunk>> + Send;

    /// Allocate the next leader epoch of `region`, never the same one twice.
    fn next_epoch(&self, region: &str) -> impl Future<Output = LogResult<u64>> + Send;
}
