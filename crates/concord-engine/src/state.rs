//! What crosses the engine's boundary with storage: what a step needs loaded
//! ([`Needs`]), what the runtime loaded for it ([`Facts`]), and what the step decided to
//! write ([`Batch`]), committed in one transaction by the runtime.
//!
//! Every collection here is ordered (`BTreeMap`, `Vec` in decision order), so the same
//! step always produces the same batch, byte for byte: the simulator relies on it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use concord_core::conflict::ConflictRecord;
use concord_core::ids::Origin;
use concord_core::lww::Register;
use concord_core::vv::VersionVector;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conflicts::open_key;

/// `(bucket, key)`.
pub type DocKey = (String, String);

/// One message of a stream, as a consumer or a read delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream sequence (a mirror keeps its origin log's sequences).
    pub seq: u64,
    pub payload: Bytes,
}

/// What a step reads from local state. The runtime loads exactly this into [`Facts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// LWW registers, with the open conflict record of each key.
    pub kv: BTreeSet<DocKey>,
    /// Documents, with their waiting changes and every open record of the document.
    pub docs: BTreeSet<DocKey>,
    /// Conflict records named by resolving writes.
    pub records: BTreeSet<Uuid>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty() && self.docs.is_empty() && self.records.is_empty()
    }
}

/// The stored state of one LWW key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvFacts {
    pub register: Option<Register>,
    /// The unresolved record of the key (`path` is `None`), if any.
    pub open: Option<ConflictRecord>,
}

/// The stored state of one document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocFacts {
    /// The saved Automerge document.
    pub saved: Option<Vec<u8>>,
    /// Changes that arrived before a change they depend on.
    pub pending: Vec<Vec<u8>>,
    /// Every unresolved record of the document (each with a `path`).
    pub open: Vec<ConflictRecord>,
}

/// What the runtime loaded for a step's [`Needs`]: an entry for every needed item, so
/// "absent" and "not loaded" never mix (the engine panics on an item it did not ask for:
/// a bug, which the simulator finds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub kv: BTreeMap<DocKey, KvFacts>,
    pub docs: BTreeMap<DocKey, DocFacts>,
    pub records: BTreeMap<Uuid, Option<ConflictRecord>>,
}

impl Facts {
    pub(crate) fn kv(&self, k: &DocKey) -> &KvFacts {
        self.kv.get(k).unwrap_or_else(|| panic!("register {k:?} was not loaded for this step"))
    }

    pub(crate) fn doc(&self, k: &DocKey) -> &DocFacts {
        self.docs.get(k).unwrap_or_else(|| panic!("document {k:?} was not loaded for this step"))
    }

    pub(crate) fn record(&self, id: &Uuid) -> Option<&ConflictRecord> {
        self.records.get(id).unwrap_or_else(|| panic!("conflict record {id} was not loaded for this step")).as_ref()
    }

    /// The facts as they would be loaded once `batch` is committed: what the store does
    /// with a batch ([`crate::MemStore::commit`]), for the items loaded here. A writer
    /// makes a batch over the ones still in flight with it.
    pub(crate) fn with_batch(&mut self, batch: &Batch) {
        for (k, register) in &batch.kv {
            if let Some(f) = self.kv.get_mut(k) {
                f.register = Some(register.clone());
            }
        }
        for (k, saved) in &batch.docs {
            if let Some(f) = self.docs.get_mut(k) {
                f.saved = Some(saved.clone());
            }
        }
        for (k, changes) in &batch.pending {
            if let Some(f) = self.docs.get_mut(k) {
                f.pending = changes.clone();
            }
        }
        for w in &batch.conflicts {
            self.with_conflict(w);
        }
    }

    /// One conflict-log write: the record is stored (replacing `replaces`, which is gone
    /// from wherever it was open), and it is the open record of its key and path if it
    /// is open; if not, its key and path have no open record once it was that one.
    fn with_conflict(&mut self, w: &ConflictWrite) {
        let r = &w.record;
        if let Some(old) = w.replaces.filter(|old| *old != r.id) {
            for f in self.kv.values_mut() {
                f.open = f.open.take().filter(|o| o.id != old);
            }
            for f in self.docs.values_mut() {
                f.open.retain(|o| o.id != old);
            }
            if let Some(known) = self.records.get_mut(&old) {
                *known = None;
            }
        }
        if let Some(known) = self.records.get_mut(&r.id) {
            *known = Some(r.clone());
        }
        let k = (r.bucket.clone(), r.key.clone());
        match &r.path {
            None => {
                if let Some(f) = self.kv.get_mut(&k) {
                    if w.open {
                        f.open = Some(r.clone());
                    } else if f.open.as_ref().is_some_and(|o| o.id == r.id) {
                        f.open = None;
                    }
                }
            }
            Some(path) => {
                if let Some(f) = self.docs.get_mut(&k) {
                    let same_path = |o: &ConflictRecord| o.path.as_ref() == Some(path);
                    if w.open {
                        f.open.retain(|o| !same_path(o));
                        f.open.push(r.clone());
                        // In the order the store lists them (by their open-index key).
                        f.open.sort_by_cached_key(|o| open_key(&o.bucket, &o.key, o.path.as_deref()));
                    } else {
                        f.open.retain(|o| !(same_path(o) && o.id == r.id));
                    }
                }
            }
        }
    }
}

/// A change to the conflict log, committed with the state change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictWrite {
    pub record: ConflictRecord,
    /// Still unresolved: indexed as the open record of its key (and path).
    pub open: bool,
    /// A record this one replaces (a further concurrent version joined it).
    pub replaces: Option<Uuid>,
}

/// A changeset that arrived after a gap in its origin's sequence: kept durably until the
/// changesets before it arrive, never applied past the gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub origin: Origin,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Where it came from.
    pub stream: String,
    pub stream_seq: u64,
    /// The changeset as it was on the wire.
    pub payload: Bytes,
}

/// A message that cannot be applied: kept durably with where it came from and why.
/// The applied vector never claims it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Assigned in order by the engine: 1, 2, ...
    pub id: u64,
    /// The stream and sequence it arrived at (a document's waiting change that the
    /// document later refused: `pending:<bucket>/<key>` and 0).
    pub stream: String,
    pub stream_seq: u64,
    /// The origin and sequences it claims, when it decoded that far.
    pub origin: Option<String>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub reason: String,
    pub at_ms: u64,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// A change to the table of waiting changesets; applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingWrite {
    Put(Waiting),
    Remove { origin: Origin, first_seq: u64 },
}

/// Everything one step writes, committed atomically by the runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub kv: Vec<(DocKey, Register)>,
    pub docs: Vec<(DocKey, Vec<u8>)>,
    /// Documents' waiting changes; an empty list clears the record.
    pub pending: Vec<(DocKey, Vec<Vec<u8>>)>,
    pub conflicts: Vec<ConflictWrite>,
    /// New highest contiguous sequences (only ever raised).
    pub applied: Vec<(Origin, u64)>,
    /// New stream positions (only ever raised).
    pub cursors: Vec<(String, u64)>,
    pub waiting: Vec<WaitingWrite>,
    pub dead_letters: Vec<DeadLetter>,
    /// Origins found void from a sequence on (only ever lowered): see
    /// [`Durable::void_from`].
    pub void_from: Vec<(Origin, u64)>,
    /// Each origin's latest mark applied (only ever later ones).
    pub marks: Vec<(Origin, Mark)>,
    /// Registers collected (their keys leave the store): `crate::collect`.
    pub kv_removed: Vec<DocKey>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.docs.is_empty()
            && self.pending.is_empty()
            && self.conflicts.is_empty()
            && self.applied.is_empty()
            && self.cursors.is_empty()
            && self.waiting.is_empty()
            && self.dead_letters.is_empty()
            && self.void_from.is_empty()
            && self.marks.is_empty()
            && self.kv_removed.is_empty()
    }
}

/// What the engine keeps between steps, as the runtime loads it at start.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    pub applied: VersionVector,
    pub cursors: BTreeMap<String, u64>,
    pub waiting: Vec<Waiting>,
    pub dead_letters: u64,
    /// Per origin, the first sequence from which its changesets are void: its
    /// changeset there was stored after a message that is not its predecessor, so the
    /// sequences before it (after the applied ones) were never stored, and nothing of
    /// the origin from there on can apply (`classify`, "void").
    pub void_from: BTreeMap<Origin, u64>,
    /// Each origin's latest mark applied: see [`Mark`].
    pub marks: BTreeMap<Origin, Mark>,
}

/// A writer's mark, as a replica applied it (`concord_core::changeset::ChangeBody::Mark`):
/// at origin sequence `seq`, its writer had applied `floor`, and knew every region to
/// have applied `stable`. The latest mark of an origin is the context of its later
/// changes, and the latest floor of every region says what is stable
/// ([`crate::marks`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    pub seq: u64,
    pub floor: VersionVector,
    pub stable: VersionVector,
}
