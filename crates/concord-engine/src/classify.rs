//! Deciding what each entry of a stream becomes, before any state is read.
//!
//! Walking the entries in stream order against a scratch copy of the applied vector and
//! of the waiting changesets, each entry becomes exactly one [`Item`]:
//!
//! - a changeset of a newer format **parks** the stream: it and everything after it stay
//!   unconsumed (the cursor stays before it), so a node that reads that format applies
//!   them; other streams go on;
//! - bytes that do not decode, a changeset from another region than the stream's, bad
//!   names, a value over `value_bytes_max`, a document change that does not decode, or
//!   a changeset the document refused (`refused`, found while applying) go to the
//!   **dead-letter** table;
//! - a changeset whose sequences are all applied (or already waiting) is a **duplicate**;
//! - one that starts after the next expected sequence of its origin **waits** durably
//!   behind the gap (when the waiting table is full, the stream parks instead);
//! - one that continues its origin **applies**, and so does every waiting changeset it
//!   unblocks.
//!
//! So the applied vector only ever moves over contiguous, applied sequences.

use std::collections::{BTreeMap, BTreeSet};

use concord_core::changeset::{ChangeBody, Changeset};
use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;
use concord_core::{CoreError, input};

use crate::engine::{Engine, Held};
use crate::state::{DeadLetter, Entry, Needs, Waiting};

/// Changesets the documents refused while applying: (origin, first sequence) → why.
pub(crate) type Refused = BTreeMap<(Origin, u64), String>;

/// The decoded Automerge changes of a changeset, by change index.
pub(crate) type DocChanges = Vec<(usize, automerge::Change)>;

pub(crate) enum Item {
    /// Apply the changes from sequence `from_seq` on (the earlier ones are applied).
    Apply {
        cs: Changeset,
        from_seq: u64,
        docs: DocChanges,
        waited: bool,
    },
    /// Keep durably until the gap before it closes.
    Wait(Box<Held>),
    /// A waiting changeset that an applied one covered entirely.
    Forget {
        origin: Origin,
        first_seq: u64,
    },
    Duplicate,
    /// `refusal`: a document refused it (found only now, so it is news even for an
    /// entry delivered before).
    DeadLetter {
        letter: DeadLetter,
        waited: Option<(Origin, u64)>,
        refusal: bool,
    },
    /// `for_room`: parked because the waiting table is full (it resumes once there is
    /// room), not for a newer format.
    Park {
        stream_seq: u64,
        reason: String,
        for_room: bool,
    },
}

pub(crate) struct Plan {
    pub items: Vec<Item>,
    /// The last stream sequence this plan consumes, if any.
    pub consumed_to: Option<u64>,
    pub needs: Needs,
}

/// What a changeset must satisfy before anything in it is applied: it comes from an
/// origin of the region whose log carried it, names valid buckets and keys, holds no
/// value larger than `value_bytes_max`, and its document changes decode.
fn check(cs: &Changeset, region: &RegionId, value_bytes_max: usize) -> Result<DocChanges, String> {
    if &cs.origin.region != region {
        return Err(format!("origin {} in the log of {region}", cs.origin));
    }
    for (i, c) in cs.changes.iter().enumerate() {
        if input::check_bucket(&c.bucket).is_err() || input::check_key(c.key.as_bytes()).is_err() {
            return Err(format!("bad bucket or key {:?}/{:?}", c.bucket, c.key));
        }
        if let ChangeBody::Put { value, .. } = &c.body
            && value.len() > value_bytes_max
        {
            return Err(format!(
                "the value of change {} is {} bytes; the limit is {value_bytes_max} (value_bytes_max)",
                cs.first_seq + i as u64,
                value.len()
            ));
        }
    }
    decode_docs(cs)
}

pub(crate) fn decode_docs(cs: &Changeset) -> Result<DocChanges, String> {
    let mut docs = Vec::new();
    for (i, c) in cs.changes.iter().enumerate() {
        if let ChangeBody::Doc { change } = &c.body {
            let decoded = concord_core::doc::decode_change(change.clone())
                .map_err(|e| format!("document change {} does not decode: {e}", cs.first_seq + i as u64))?;
            docs.push((i, decoded));
        }
    }
    Ok(docs)
}

struct Walk<'e> {
    engine: &'e Engine,
    stream: &'e str,
    now_ms: u64,
    refused: &'e Refused,
    applied: VersionVector,
    added: BTreeMap<Origin, BTreeMap<u64, Held>>,
    removed: BTreeSet<(Origin, u64)>,
    waiting_count: usize,
    waiting_bytes: usize,
    plan: Plan,
}

/// Classify `entries` of `stream` (see the module doc).
pub(crate) fn classify(engine: &Engine, stream: &str, entries: &[Entry], refused: &Refused, now_ms: u64) -> Plan {
    let region = engine.cfg.streams.get(stream).unwrap_or_else(|| panic!("{stream} is not a stream of this replica"));
    let mut walk = Walk {
        engine,
        stream,
        now_ms,
        refused,
        applied: engine.applied.clone(),
        added: BTreeMap::new(),
        removed: BTreeSet::new(),
        waiting_count: engine.waiting_count(),
        waiting_bytes: engine.waiting_bytes,
        plan: Plan { items: Vec::new(), consumed_to: None, needs: Needs::default() },
    };
    if engine.parked.contains_key(stream) {
        return walk.plan;
    }
    for entry in entries {
        let seen_before = entry.seq <= engine.cursor(stream);
        let item = walk.entry(entry, region);
        let parks = matches!(item, Item::Park { .. });
        match item {
            // Decided alike when it was first consumed; a redelivery only matters when
            // it fills a gap (or a document refuses it now).
            Item::DeadLetter { refusal: false, .. } | Item::Park { .. } if seen_before => {
                walk.plan.items.push(Item::Duplicate)
            }
            item => walk.plan.items.push(item),
        }
        if parks && !seen_before {
            break;
        }
        walk.plan.consumed_to = walk.plan.consumed_to.max(Some(entry.seq));
        walk.drain_unblocked();
    }
    walk.plan
}

impl Walk<'_> {
    fn letter(&self, seq: u64, cs: Option<&Changeset>, reason: String) -> DeadLetter {
        DeadLetter {
            id: 0,
            stream: self.stream.to_string(),
            stream_seq: seq,
            origin: cs.map(|c| c.origin.to_string()),
            first_seq: cs.map(|c| c.first_seq),
            last_seq: cs.map(Changeset::last_seq),
            reason,
            at_ms: self.now_ms,
            payload: Vec::new(),
        }
    }

    fn entry(&mut self, entry: &Entry, region: &RegionId) -> Item {
        let cs = match Changeset::decode(&entry.payload) {
            Ok(cs) => cs,
            // Only a newer format waits for a newer node; any other version is garbage.
            Err(CoreError::UnsupportedVersion { found, supported }) if found > supported => {
                let reason = format!("changeset format version {found}; this node reads up to {supported}: upgrade it");
                return Item::Park { stream_seq: entry.seq, reason, for_room: false };
            }
            Err(e) => {
                let letter =
                    DeadLetter { payload: entry.payload.to_vec(), ..self.letter(entry.seq, None, e.to_string()) };
                return Item::DeadLetter { letter, waited: None, refusal: false };
            }
        };
        let refused = self.refused.get(&(cs.origin.clone(), cs.first_seq)).cloned();
        let refusal = refused.is_some();
        let docs = match (check(&cs, region, self.engine.cfg.value_bytes_max), refused) {
            (Err(reason), _) | (Ok(_), Some(reason)) => {
                let letter =
                    DeadLetter { payload: entry.payload.to_vec(), ..self.letter(entry.seq, Some(&cs), reason) };
                return Item::DeadLetter { letter, waited: None, refusal };
            }
            (Ok(docs), None) => docs,
        };
        let have = self.applied.get(&cs.origin);
        if cs.last_seq() <= have || self.is_waiting(&cs.origin, cs.first_seq) {
            return Item::Duplicate;
        }
        if cs.first_seq > have + 1 && !self.mutated_past_gaps() {
            return self.hold(entry, cs, have);
        }
        self.apply(cs, have + 1, docs, false)
    }

    #[cfg(feature = "mutations")]
    fn mutated_past_gaps(&self) -> bool {
        self.engine.cfg.mutated(crate::engine::Mutation::ApplyPastGaps)
    }

    #[cfg(not(feature = "mutations"))]
    fn mutated_past_gaps(&self) -> bool {
        false
    }

    fn apply(&mut self, cs: Changeset, from_seq: u64, docs: DocChanges, waited: bool) -> Item {
        for (i, c) in cs.changes.iter().enumerate() {
            if cs.first_seq + (i as u64) < from_seq {
                continue;
            }
            let k = (c.bucket.clone(), c.key.clone());
            match c.body {
                ChangeBody::Doc { .. } => self.plan.needs.docs.insert(k),
                _ => self.plan.needs.kv.insert(k),
            };
            if let Some(id) = c.resolves {
                self.plan.needs.records.insert(id);
            }
        }
        self.applied.observe(&cs.origin, cs.last_seq());
        Item::Apply { cs, from_seq, docs, waited }
    }

    /// Keep a changeset that follows a gap, or park the stream when too many wait.
    fn hold(&mut self, entry: &Entry, cs: Changeset, have: u64) -> Item {
        let (max, bytes_max) = (self.engine.cfg.waiting_max, self.engine.cfg.waiting_bytes_max);
        if !self.engine.waiting_has_room(self.waiting_count, self.waiting_bytes, entry.payload.len()) {
            let reason = format!(
                "{} has a gap after sequence {have} and {} changesets ({} bytes) already wait (waiting_max {max}, waiting_bytes_max {bytes_max})",
                cs.origin, self.waiting_count, self.waiting_bytes
            );
            return Item::Park { stream_seq: entry.seq, reason, for_room: true };
        }
        let meta = Waiting {
            origin: cs.origin.clone(),
            first_seq: cs.first_seq,
            last_seq: cs.last_seq(),
            stream: self.stream.to_string(),
            stream_seq: entry.seq,
            payload: entry.payload.clone(),
        };
        self.waiting_count += 1;
        self.waiting_bytes += entry.payload.len();
        let held = Held { meta, cs };
        self.added.entry(held.meta.origin.clone()).or_default().insert(held.meta.first_seq, held.clone());
        Item::Wait(Box::new(held))
    }

    fn is_waiting(&self, origin: &Origin, first_seq: u64) -> bool {
        let stored = self.engine.waiting.get(origin).is_some_and(|h| h.contains_key(&first_seq));
        let stored = stored && !self.removed.contains(&(origin.clone(), first_seq));
        stored || self.added.get(origin).is_some_and(|h| h.contains_key(&first_seq))
    }

    /// The first changeset still waiting for `origin`, taken out of the scratch view.
    fn take_next_waiting(&mut self, origin: &Origin) -> Option<Held> {
        let stored = self.engine.waiting.get(origin).and_then(|h| {
            h.iter().find(|(first, _)| !self.removed.contains(&(origin.clone(), **first))).map(|(_, held)| held)
        });
        let added = self.added.get(origin).and_then(|h| h.values().next());
        let next = match (stored, added) {
            (Some(s), Some(a)) => Some(if s.meta.first_seq <= a.meta.first_seq { s } else { a }),
            (s, a) => s.or(a),
        }?
        .clone();
        if next.meta.first_seq > self.applied.get(origin) + 1 {
            return None;
        }
        if let Some(h) = self.added.get_mut(origin) {
            h.remove(&next.meta.first_seq);
        }
        self.removed.insert((origin.clone(), next.meta.first_seq));
        self.waiting_count -= 1;
        self.waiting_bytes -= next.meta.payload.len();
        Some(next)
    }

    /// Apply every waiting changeset that the applied vector now reaches.
    fn drain_unblocked(&mut self) {
        let origins: Vec<Origin> = self.engine.waiting.keys().chain(self.added.keys()).cloned().collect();
        for origin in origins {
            while let Some(held) = self.take_next_waiting(&origin) {
                let have = self.applied.get(&origin);
                let key = (origin.clone(), held.meta.first_seq);
                if held.cs.last_seq() <= have {
                    self.plan.items.push(Item::Forget { origin: key.0, first_seq: key.1 });
                    continue;
                }
                let docs = decode_docs(&held.cs);
                if let Some(reason) = self.refused.get(&key).cloned().or(docs.as_ref().err().cloned()) {
                    let mut letter = self.letter(held.meta.stream_seq, Some(&held.cs), reason);
                    letter.payload = held.meta.payload.to_vec();
                    self.plan.items.push(Item::DeadLetter { letter, waited: Some(key), refusal: true });
                    break;
                }
                let item = self.apply(held.cs, have + 1, docs.expect("checked above"), true);
                self.plan.items.push(item);
            }
        }
    }
}
