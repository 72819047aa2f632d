//! Leases in a NATS key/value bucket (`concord_leases`, one key per region): reading a
//! key with its revision, and claiming it by compare-and-set on that revision, so that of
//! two claims on one revision exactly one wins. What a lease means (how long it lasts,
//! who may claim it when) is the node's business; this is only the atomic step.

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;

use crate::nats::NatsLog;
use crate::{LogError, LogResult};

const LEASES_BUCKET: &str = "concord_leases";

/// A lease key as read: its value (`None`: never written, or deleted) and revision (0
/// when never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub value: Option<Bytes>,
    pub revision: u64,
}

/// How a claim ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key now holds our value, at this revision.
    Won(u64),
    /// Someone wrote the key since the revision we named.
    Lost,
    /// The outcome is unknown (NATS unreachable, a timeout): read the key again.
    Failed(String),
}

pub struct Leases {
    kv: kv::Store,
}

impl NatsLog {
    /// The region's lease bucket (created on first use).
    pub async fn leases(&self) -> LogResult<Leases> {
        Ok(Leases { kv: self.bucket(LEASES_BUCKET).await? })
    }
}

impl Leases {
    pub async fn read(&self, key: &str) -> LogResult<Observed> {
        let entry = self.kv.entry(key).await.map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(match entry {
            None => Observed { value: None, revision: 0 },
            Some(e) if e.operation == Operation::Put => Observed { value: Some(e.value), revision: e.revision },
            Some(e) => Observed { value: None, revision: e.revision },
        })
    }

    /// Write `value` if the key is still at `revision` (0: never written).
    pub async fn claim(&self, key: &str, value: Bytes, revision: u64) -> Claim {
        match self.kv.update(key, value, revision).await {
            Ok(revision) => Claim::Won(revision),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Claim::Lost,
            Err(e) => Claim::Failed(e.to_string()),
        }
    }
}
