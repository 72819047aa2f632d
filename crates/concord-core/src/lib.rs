//! Concord's core: everything that decides *what* the data is, and nothing that does I/O.
//!
//! - [`ids`]: regions and origins (`region.epoch`), validated at the edge.
//! - [`hlc`]: the hybrid logical clock that orders versions across regions.
//! - [`vv`]: version vectors over origins; they tell history from conflict.
//! - [`lww`]: last-writer-wins registers that keep concurrent siblings (a join-semilattice).
//! - [`conflict`]: conflict-log records and their convergent ids.
//! - [`changeset`]: the versioned binary encoding of what crosses the log.
//! - [`doc`]: Automerge document operations and their JSON view.
//! - [`merkle`]: the range-hash tree anti-entropy compares replicas' states with.
//! - [`token`]: session tokens (an applied vector, compact and header-safe).
//! - [`input`]: validation of keys, buckets and values at the API edge.
//!
//! Invariants: merges are deterministic, so every replica that applies the same set of
//! changes, in any order and with any duplication, holds the same state; decoding never
//! panics on bytes from the wire.

pub mod changeset;
pub mod codec;
pub mod conflict;
pub mod doc;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod input;
pub mod lww;
pub mod merkle;
pub mod token;
pub mod vv;

pub use error::{CoreError, CoreResult};
