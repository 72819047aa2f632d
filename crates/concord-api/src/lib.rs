//! Concord's contract with its clients and with itself, as types: what crosses the HTTP
//! and NATS APIs (error codes and bodies, the write acknowledgement, `GET /v1/status`),
//! what `concord cluster up` writes to `DIR/cluster.json`, and the leader record in the
//! NATS KV bucket `concord_leaders`. No I/O here: whoever writes one of these and
//! whoever reads it share the one struct, so the two cannot drift apart.
//!
//! The JSON shapes are those of DESIGN.md ("Interfaces") and README.md. Compatibility
//! rules, because regions may run mixed versions during a rollout: readers ignore
//! fields they do not know; fields added after the first version are `Option` or have
//! a serde default, so a body from an older or a newer peer still parses; a field's
//! name and meaning never change.

mod cluster;
mod error;
mod leader;
mod status;
mod write;

#[cfg(test)]
mod readme;

pub use cluster::{ClusterJson, ClusterNode, ClusterRegion, Role};
pub use error::{Behind, ErrorBody, ErrorCode, UnknownErrorCode};
pub use leader::{LeaderRecord, LeaseRecord};
pub use status::{
    DeadLetterEntry, DeadLettersBody, FollowerStatus, GapStatus, MirrorLag, ParkedStatus, StatusBody, StreamLag,
    StreamState,
};
pub use write::{Hlc, WriteAck};
