//! The region's log: where a leader appends changesets and replicas read them back.
//!
//! [`RegionLog`] is the narrow interface the node runtime uses; [`nats::NatsLog`] is
//! JetStream (file storage; the server runs with `sync_interval: always`, so an
//! acknowledged append is on disk), and [`memory::MemoryLog`] is an in-memory log for
//! deterministic tests of the runtime without NATS.
//!
//! Fencing lives in the log: every append names the sequence it expects to follow
//! (`expected_last`), so a deposed leader's appends are refused ([`LogError::Fenced`]).
//! An append whose outcome is unknown (timeout, disconnect) is [`LogError::Indeterminate`]:
//! the caller must re-read the log before it appends again.

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
}

pub trait RegionLog: Send + Sync + 'static {
    /// The sequence of the last stored message (0 when empty).
    fn last_seq(&self) -> impl Future<Output = LogResult<u64>> + Send;

    /// Append `payload` if the log's last sequence is `expected_last`; `msg_id` makes a
    /// retried append idempotent. Returns the new message's sequence.
    fn append(
        &self,
        payload: bytes::Bytes,
        msg_id: String,
        expected_last: u64,
    ) -> impl Future<Output = LogResult<u64>> + Send;

    /// The messages with sequences in `from..=to`, in order (gaps where messages were
    /// removed by retention are skipped).
    fn read(&self, from: u64, to: u64) -> impl Future<Output = LogResult<Vec<LogEntry>>> + Send;

    /// Allocate the next leader epoch of `region`, never the same one twice.
    fn next_epoch(&self, region: &str) -> impl Future<Output = LogResult<u64>> + Send;
}
