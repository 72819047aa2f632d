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
//! - one that starts after the next expected sequence of its origin and was stored right
//!   after a message that is not its predecessor is **void** (a dead letter): see below;
//! - one that starts after the next expected sequence of its origin **waits** durably
//!   behind the gap (when the waiting table is full, the stream parks instead);
//! - one that continues its origin **applies**, and so does every waiting changeset it
//!   unblocks.
//!
//! So the applied vector only ever moves over contiguous, applied sequences.
//!
//! ## Void changesets
//!
//! A writer sends every append naming the log sequence it must follow: its last stored
//! changeset's, or, pipelined, the one its predecessor in flight will take. So a
//! changeset stored at sequence `s` (other than the first of its origin) was sent to
//! follow its predecessor at `s - 1`, and its predecessor can only ever be stored at
//! `s - 1`. When the message at `s - 1` is something else (a new leader's first
//! changeset took that place, and the log refused the predecessor there), the
//! predecessor is never stored anywhere, and the changeset can never apply: waiting for
//! it would hold its origin back for good. It is a dead letter instead, on every
//! replica alike (they read the same log; a mirror keeps its sequences). Its writers
//! were never acknowledged: they heard their write may still apply, and it does not.
//! The check needs the message at `s - 1`, which a replica knows when it consumed it just
//! before (in memory: [`Tail`]); when it does not (after a restart, or across a hole in a
//! mirror), the changeset waits, and a later delivery of `s - 1` and `s` decides (the
//! node's gap repair re-delivers them).

use std::collections::{BTreeMap, BTreeSet};

use concord_core::changeset::{ChangeBody, Changeset};
use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;
use concord_core::{CoreError, input};

use crate::engine::{Engine, Held, Tail};
use crate::marks::context_met;
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
    /// The entries consumed, as far as they were decoded, in the order consumed.
    pub tails: Vec<Tail>,
    /// Origins found void from a sequence on (see the module doc).
    pub voided: Vec<(Origin, u64)>,
    /// Origins whose applied sequence moves past a gap to here: a repair from a peer's
    /// state holds what the gap held ([`classify_lift`]).
    pub lifted: Vec<(Origin, u64)>,
}

/// What a changeset must satisfy before anything in it is applied: it comes from an
/// origin of the region whose log carried it, names valid buckets and keys, holds no
/// value larger than `value_bytes_max`, and its document changes decode.
fn check(cs: &Changeset, region: &RegionId, value_bytes_max: usize) -> Result<DocChanges, String> {
    if &cs.origin.region != region {
        return Err(format!("origin {} in the log of {region}", cs.origin));
    }
    for (i, c) in cs.changes.iter().enumerate() {
        if c.body.is_mark() {
            continue;
        }
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
    /// The entry consumed just before the one at hand, when known.
    prev: Option<Tail>,
    /// What the entry at hand is, once decoded.
    current: Option<Tail>,
    /// The engine's `void_from`, with what this walk found.
    void_from: BTreeMap<Origin, u64>,
    plan: Plan,
}

/// Classify `entries` of `stream` (see the module doc).
pub(crate) fn classify(
    engine: &Engine,
    stream: &str,
    entries: &[Entry],
    refused: &Refused,
    forged: &crate::apply::Forged,
    now_ms: u64,
) -> Plan {
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
        prev: None,
        current: None,
        void_from: engine.void_from.clone(),
        plan: Plan {
            items: Vec::new(),
            consumed_to: None,
            needs: Needs::default(),
            tails: Vec::new(),
            voided: Vec::new(),
            lifted: Vec::new(),
        },
    };
    if engine.parked.contains_key(stream) {
        return walk.plan;
    }
    for entry in entries {
        let seen_before = entry.seq <= engine.cursor(stream);
        let item = match forged.get(&entry.seq) {
            Some(why) => walk.forged(entry, why),
            None => walk.entry(entry, region),
        };
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
        walk.prev = walk.current.take();
        if let Some(t) = &walk.prev {
            walk.plan.tails.push(t.clone());
        }
        walk.drain_void();
        walk.drain_unblocked();
    }
    walk.plan
}

/// Plan a lift: each origin's applied sequence moves up to the sequence given (a repair
/// from a peer's state holds the effects of every change of it up to there), and the
/// changesets that waited behind the gap apply, with those they unblock. A lift never
/// moves an origin back, nor onto its void sequences (a void origin's sequences from
/// `void_from` on were never stored, so no peer can have applied them); the peer's
/// `void_from` is adopted first, and what waits from there on is dead-lettered.
pub(crate) fn classify_lift(
    engine: &Engine,
    through: &[(Origin, u64)],
    void_from: &[(Origin, u64)],
    refused: &Refused,
    now_ms: u64,
) -> Plan {
    let mut walk = Walk {
        engine,
        stream: LIFT_STREAM,
        now_ms,
        refused,
        applied: engine.applied.clone(),
        added: BTreeMap::new(),
        removed: BTreeSet::new(),
        waiting_count: engine.waiting_count(),
        waiting_bytes: engine.waiting_bytes,
        prev: None,
        current: None,
        void_from: engine.void_from.clone(),
        plan: Plan {
            items: Vec::new(),
            consumed_to: None,
            needs: Needs::default(),
            tails: Vec::new(),
            voided: Vec::new(),
            lifted: Vec::new(),
        },
    };
    let writing = engine.writing_origin();
    // A peer's judgement that an origin is void from a sequence on is the log's (the
    // changeset there was stored after a message that is not its predecessor): a replica
    // that never read that message (retention removed it) learns it only so. Not one that
    // contradicts what this replica applied, nor one about the origin it writes as.
    for (origin, from) in void_from {
        if *from <= engine.applied.get(origin) + 1 || writing.as_ref() == Some(origin) {
            continue;
        }
        let now = walk.void_from.entry(origin.clone()).or_insert(*from);
        if *from < *now {
            *now = *from;
        }
        if *now == *from && engine.void_from.get(origin) != Some(from) {
            walk.plan.voided.push((origin.clone(), *from));
        }
    }
    walk.drain_void();
    for (origin, seq) in through {
        // A writer learns of a later writer of its region from its log (its next append
        // is refused, it catches up and is deposed), never from a peer's state.
        if writing.as_ref().is_some_and(|w| origin.region == w.region && origin.epoch > w.epoch) {
            continue;
        }
        // Only past what this replica's stream has gone by: a changeset of the origin
        // waits here (behind a gap), or a later epoch of its region was read here (the
        // region's log holds an epoch's changesets before the next one's). Otherwise its
        // changesets may still arrive, and skipping them would skip their marks.
        let later_read = engine
            .applied
            .iter()
            .map(|(o, _)| o)
            .chain(engine.waiting.keys())
            .any(|o| o.region == origin.region && o.epoch > origin.epoch);
        if !engine.waiting.contains_key(origin) && !later_read {
            continue;
        }
        let cap = walk.void_from.get(origin).map_or(u64::MAX, |from| from.saturating_sub(2));
        // No further than the first changeset that waits here (behind a gap, or for a
        // mark's context): it applies as usual.
        let waits = engine.waiting.get(origin).and_then(|held| held.keys().next()).map_or(u64::MAX, |f| f - 1);
        let to = (*seq).min(cap).min(waits);
        if to > walk.applied.get(origin) {
            walk.applied.observe(origin, to);
            walk.plan.lifted.push((origin.clone(), to));
        }
    }
    walk.drain_unblocked();
    walk.plan
}

/// The stream a lift's dead letters name (they were read from their own streams long
/// before; the lift is what applies or refuses them).
pub(crate) const LIFT_STREAM: &str = "anti-entropy";

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

    /// An entry whose publisher may not write as its origin: a dead letter, whatever it
    /// holds (what it says of itself is named, when it decodes).
    fn forged(&mut self, entry: &Entry, why: &str) -> Item {
        let cs = Changeset::decode(&entry.payload).ok();
        // Not anyone's predecessor: it was never its origin's.
        self.current = Some(Tail { seq: entry.seq, changeset: None });
        let reason = format!("forged: {why}");
        let letter = DeadLetter { payload: entry.payload.to_vec(), ..self.letter(entry.seq, cs.as_ref(), reason) };
        Item::DeadLetter { letter, waited: None, refusal: false }
    }

    fn entry(&mut self, entry: &Entry, region: &RegionId) -> Item {
        self.current = Some(Tail { seq: entry.seq, changeset: None });
        let cs = match Changeset::decode(&entry.payload) {
            Ok(cs) => cs,
            // Only a newer format waits for a newer node; any other version is garbage.
            Err(CoreError::UnsupportedVersion { found, supported }) if found > supported => {
                let reason = format!("changeset format version {found}; this node reads up to {supported}: upgrade it");
                self.current = None;
                return Item::Park { stream_seq: entry.seq, reason, for_room: false };
            }
            Err(e) => {
                let letter =
                    DeadLetter { payload: entry.payload.to_vec(), ..self.letter(entry.seq, None, e.to_string()) };
                return Item::DeadLetter { letter, waited: None, refusal: false };
            }
        };
        self.current = Some(Tail { seq: entry.seq, changeset: Some((cs.origin.clone(), cs.last_seq())) });
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
        if cs.last_seq() <= have {
            return Item::Duplicate;
        }
        if cs.first_seq > have + 1
            && let Some(reason) = self.void(entry.seq, &cs, have)
        {
            let from = self.void_from.entry(cs.origin.clone()).or_insert(cs.first_seq);
            if cs.first_seq < *from {
                *from = cs.first_seq;
            }
            self.plan.voided.push((cs.origin.clone(), *from));
            let waited = self.forget_waiting(&cs.origin, cs.first_seq);
            let letter = DeadLetter { payload: entry.payload.to_vec(), ..self.letter(entry.seq, Some(&cs), reason) };
            // News even for an entry delivered before, when it waited until now.
            let refusal = waited.is_some();
            return Item::DeadLetter { letter, waited, refusal };
        }
        if self.is_waiting(&cs.origin, cs.first_seq) {
            return Item::Duplicate;
        }
        if cs.first_seq > have + 1 && !self.mutated_past_gaps() {
            return self.hold(entry, cs, have);
        }
        // A mark's context must be here before the changes that rely on it.
        if !context_met(&cs, &self.applied) {
            return self.hold(entry, cs, have);
        }
        self.apply(cs, have + 1, docs, false)
    }

    /// Why `cs`, stored at `seq` after a gap in its origin, is void, if the entry right
    /// before it is known and is not its predecessor (see the module doc).
    fn void(&self, seq: u64, cs: &Changeset, have: u64) -> Option<String> {
        if self.mutated_wait_behind_void() {
            return None;
        }
        if let Some(from) = self.void_from.get(&cs.origin).filter(|from| **from <= cs.first_seq) {
            return Some(format!(
                "void: {} {}..{} follows a void changeset of its origin (void from {from}): it never applies",
                cs.origin,
                cs.first_seq,
                cs.last_seq()
            ));
        }
        let before = |t: &&Tail| t.seq + 1 == seq;
        let known = self.engine.tails.get(self.stream).into_iter().flat_map(|t| [&t.latest, &t.highest]);
        let prev = self.prev.as_ref().filter(before).or_else(|| known.into_iter().find(before));
        let prev = prev?;
        let before = match &prev.changeset {
            Some((origin, last)) if *origin == cs.origin && *last + 1 == cs.first_seq => return None,
            Some((origin, last)) => format!("{origin} up to {last}"),
            None => "a message that is not a changeset".to_string(),
        };
        Some(format!(
            "void: {} {}..{} was stored after {before}, not after its predecessor ({} applied up to {have}): the log refused its predecessor there, which can be stored nowhere else, so it never applies",
            cs.origin,
            cs.first_seq,
            cs.last_seq(),
            cs.origin
        ))
    }

    #[cfg(feature = "mutations")]
    fn mutated_wait_behind_void(&self) -> bool {
        self.engine.cfg.mutated(crate::engine::Mutation::WaitBehindVoid)
    }

    #[cfg(not(feature = "mutations"))]
    fn mutated_wait_behind_void(&self) -> bool {
        false
    }

    /// Take a changeset out of the waiting ones (stored, or added by this walk); its key
    /// when it was waiting.
    fn forget_waiting(&mut self, origin: &Origin, first_seq: u64) -> Option<(Origin, u64)> {
        if !self.is_waiting(origin, first_seq) {
            return None;
        }
        let key = (origin.clone(), first_seq);
        let bytes = match self.added.get_mut(origin).and_then(|h| h.remove(&first_seq)) {
            Some(added) => added.meta.payload.len(),
            None => {
                self.removed.insert(key.clone());
                self.engine.waiting[origin][&first_seq].meta.payload.len()
            }
        };
        self.waiting_count -= 1;
        self.waiting_bytes -= bytes;
        Some(key)
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
                ChangeBody::Mark { .. } => continue,
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
        if next.meta.first_seq > self.applied.get(origin) + 1 || !context_met(&next.cs, &self.applied) {
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

    /// Dead-letter the waiting changesets of origins found void at or below them.
    fn drain_void(&mut self) {
        let stored = self.engine.waiting.iter().flat_map(|(o, h)| h.values().map(move |held| (o, held)));
        let added = self.added.iter().flat_map(|(o, h)| h.values().map(move |held| (o, held)));
        let void: Vec<Held> = stored
            .chain(added)
            .filter(|(o, held)| self.void_from.get(*o).is_some_and(|from| held.meta.first_seq >= *from))
            .filter(|(o, held)| self.is_waiting(o, held.meta.first_seq))
            .map(|(_, held)| held.clone())
            .collect();
        for held in void {
            let Some(key) = self.forget_waiting(&held.meta.origin, held.meta.first_seq) else { continue };
            let reason = format!(
                "void: {} {}..{} waited behind a void changeset of its origin (void from {}): it never applies",
                held.meta.origin, held.meta.first_seq, held.meta.last_seq, self.void_from[&held.meta.origin]
            );
            let mut letter = self.letter(held.meta.stream_seq, Some(&held.cs), reason);
            letter.stream = held.meta.stream.clone();
            letter.payload = held.meta.payload.to_vec();
            self.plan.items.push(Item::DeadLetter { letter, waited: Some(key), refusal: true });
        }
    }

    /// Apply every waiting changeset that the applied vector now reaches (and whose
    /// marks' context it holds), until none more is released: one origin's may be the
    /// context another's waited for.
    fn drain_unblocked(&mut self) {
        loop {
            let before = self.plan.items.len();
            self.drain_unblocked_once();
            if self.plan.items.len() == before {
                return;
            }
        }
    }

    fn drain_unblocked_once(&mut self) {
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
                    letter.stream = held.meta.stream.clone();
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
