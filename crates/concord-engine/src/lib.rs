//! Concord's replication engine: a pure state machine.
//!
//! The engine decides everything that keeps Concord's promises (no acknowledged write
//! lost, no conflict silent, nothing skipped silently) and does no I/O: no disk, no
//! network, no clock, no threads. A runtime feeds it inputs and executes what it returns
//! ([`Output`]): the node runtime with redb, NATS and timers; the simulator
//! (`concord-sim`) with in-memory logs and storage, under faults, one seed at a time.
//!
//! ## Steps
//!
//! - **Stream entries** (a changeset read from a stream at a stream sequence):
//!   [`Engine::prepare`] classifies them and names what they need from local state
//!   ([`Needs`]); the runtime loads that ([`Facts`]); [`Engine::apply`] merges and
//!   returns a [`Batch`] to commit.
//! - **Local writes** (a leader's batch, with `now`): [`Engine::write_needs`], then
//!   [`Engine::write`] returns one [`Append`]; [`Engine::append_done`] with its outcome
//!   returns the batch to commit and the replies.
//! - **Catching up and epochs**: [`Engine::catch_up_next`], [`Engine::caught_up`],
//!   [`Engine::start_writing`] (see [`writer`]).
//! - A read of a stream through a sequence (what did not arrive was removed):
//!   [`Engine::read_through`].
//!
//! The runtime commits each batch in one transaction before it acts on anything else
//! of the output, so durable state and the engine agree after a crash (the engine is
//! rebuilt from [`Durable`]).
//!
//! ## Invariants ([`Engine::validate`])
//!
//! - The applied vector holds, per origin, the highest *contiguous* sequence applied: a
//!   changeset after a gap waits durably (bounded; beyond the bound its stream parks),
//!   and one that cannot be applied goes to the dead-letter table; neither is claimed.
//! - A stream's cursor never passes a message this node cannot read (a newer format):
//!   the stream parks there, other streams go on, and a node that reads the format
//!   resumes from the cursor.
//! - Merges are deterministic (LWW registers keep concurrent siblings; Automerge), so
//!   replicas that applied the same changes hold the same state, whatever the order.
//! - A writer writes only as an origin newer than every origin of its region it has
//!   applied, and only after reading its region's log to the end.
//!
//! ## Known limitations
//!
//! - A gap whose messages are gone from every stream is repaired only by anti-entropy
//!   (a later phase); until then its origin waits, visibly.
//! - A document change that waited for a dependency and is refused once the dependency
//!   arrives was already counted as applied; it goes to the dead-letter table alone.
//! - The engine does not know the region's epoch counter: a changeset in the region's
//!   own log from an epoch the counter never gave out (forged, or the counter was
//!   reset) applies, and deposes every promoted replica of the region
//!   ([`Engine::start_writing`]) until the counter passes that epoch.
//! - A peer's timestamp is refused only past the year 9999: one far ahead of the local
//!   clock applies, and the clocks that see it follow it.

mod apply;
mod classify;
mod conflicts;
mod engine;
pub mod marks;
mod output;
mod overlay;
mod repair;
mod state;
mod write;
pub mod writer;

pub mod memstore;

pub use apply::{Forged, Prepared};
pub use conflicts::open_key;
pub use engine::{
    APPENDS_IN_FLIGHT_MAX_DEFAULT, Engine, EngineConfig, Gap, Parked, StartAs, WAITING_BYTES_MAX_DEFAULT,
    WAITING_MAX_DEFAULT,
};
#[cfg(feature = "mutations")]
pub use engine::{DROPPED_SEQ, Mutation};
pub use marks::PreparedCollect;
pub use memstore::MemStore;
pub use output::{Ack, Alert, Append, AppendOutcome, Output, Stats, WriteError};
pub use repair::{CHANGES_PER_DOC_MAX, PreparedRepair, Repair, applied_by_peer, lifts};
pub use state::{
    Batch, ConflictWrite, DeadLetter, DocFacts, DocKey, Durable, Entry, Facts, KvFacts, Mark, Needs, Waiting,
    WaitingWrite,
};
pub use write::{WriteOp, WriteRequest};
pub use writer::{CatchUp, CaughtUp, RoleView};

/// Local state cannot be trusted (a stored record does not decode): the node stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "local state is corrupt: {}", self.0)
    }
}

impl std::error::Error for Fatal {}
