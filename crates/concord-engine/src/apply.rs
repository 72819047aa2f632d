//! Applying what a stream delivered: [`Engine::prepare`] classifies the entries and says
//! what to load; [`Engine::apply`] merges them into the loaded state and returns the
//! batch to commit.
//!
//! LWW changes merge into registers one by one (conflicts recorded as they appear);
//! document changes are applied in one batch per document (Automerge applies a batch
//! far faster than change by change), together with the changes that waited for their
//! dependencies. When a document refuses a batch, its changes are tried one by one to
//! find the culprits; the changesets holding them go to the dead-letter table, and the
//! whole step is planned and applied again without them (so their origin's later
//! changesets wait behind them instead of being applied past them).

use std::collections::BTreeMap;

use automerge::ReadDoc;
use concord_core::changeset::{Change, ChangeBody};
use concord_core::hlc::Hlc;
use concord_core::ids::Origin;
use concord_core::lww::{Inserted, Register, Version};
use concord_core::vv::VersionVector;

use crate::Fatal;
use crate::classify::{Item, Plan, Refused, classify};
use crate::engine::{Engine, Parked};
use crate::output::{Alert, Output, Stats};
use crate::overlay::Overlay;
use crate::state::{Batch, DeadLetter, DocKey, Entry, Facts, Mark, Needs, WaitingWrite};

/// Entries of one stream, classified, waiting for their facts.
pub struct Prepared {
    stream: String,
    entries: Vec<Entry>,
    now_ms: u64,
    plan: Plan,
    forged: Forged,
}

/// Entries found forged, by stream sequence, with why.
pub type Forged = BTreeMap<u64, String>;

impl Prepared {
    /// What to load before [`Engine::apply`].
    pub fn needs(&self) -> &Needs {
        &self.plan.needs
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }
}

/// A changeset's identity: (origin, first sequence).
pub(crate) type ChangesetRef = (Origin, u64);

/// What one attempt at applying a plan produced.
pub(crate) struct Applied {
    batch: Batch,
    hlc_max: Hlc,
    stats: Stats,
    dropped: Vec<DeadLetter>,
    /// The latest mark applied of each origin in this step.
    marks: BTreeMap<Origin, Mark>,
    /// The latest sequence holding data applied of each origin in this step.
    data_seq: BTreeMap<Origin, u64>,
}

/// What a step merged so far: LWW changes are in the overlay; document changes wait
/// here, per document, to be applied in one batch each.
#[derive(Default)]
pub(crate) struct Merged {
    pub stats: Stats,
    pub hlc_max: Hlc,
    pub docs: BTreeMap<DocKey, Vec<(ChangesetRef, automerge::Change)>>,
    /// The latest mark of each origin merged so far (the context of its later changes).
    pub marks: BTreeMap<Origin, Mark>,
    /// The latest sequence of each origin merged that holds data.
    pub data_seq: BTreeMap<Origin, u64>,
}

impl Engine {
    /// Classify `entries` of `stream` (in stream order) and say what they need loaded.
    pub fn prepare(&self, stream: &str, entries: Vec<Entry>, now_ms: u64) -> Prepared {
        self.prepare_screened(stream, entries, Forged::new(), now_ms)
    }

    /// [`Engine::prepare`], with the entries the runtime found forged (by stream
    /// sequence, with why: a publisher that is not who its origin's epoch belongs to):
    /// they are dead letters, whatever they hold.
    pub fn prepare_screened(&self, stream: &str, entries: Vec<Entry>, forged: Forged, now_ms: u64) -> Prepared {
        let plan = classify(self, stream, &entries, &Refused::new(), &forged, now_ms);
        Prepared { stream: stream.to_string(), entries, now_ms, plan, forged }
    }

    /// Apply prepared entries with the facts their [`Prepared::needs`] named.
    ///
    /// Never while an append is in flight: the append's batch holds state read before
    /// it, and committing it after this step would undo this step's changes to the same
    /// keys. (Pipelined appends would have to re-apply their changes at commit.)
    pub fn apply(&mut self, prepared: Prepared, facts: &Facts) -> Result<Output, Fatal> {
        assert!(!self.append_in_flight(), "stream entries applied while an append is in flight");
        let Prepared { stream, entries, now_ms, mut plan, forged } = prepared;
        let mut refused = Refused::new();
        loop {
            match self.attempt(&plan, facts, now_ms)? {
                Ok(applied) => return Ok(self.finish(&stream, plan, applied)),
                Err(more) => {
                    // Each round dead-letters at least one more changeset: it ends.
                    assert!(more.keys().all(|k| !refused.contains_key(k)), "a refusal repeats");
                    refused.extend(more);
                    plan = classify(self, &stream, &entries, &refused, &forged, now_ms);
                }
            }
        }
    }

    /// The runtime read `stream` through `to` (and applied what it got): whatever of it
    /// did not arrive was removed (retention) before this replica read it, so its
    /// position moves past it. What those messages held is missing from their origins'
    /// sequences, so the applied vector cannot pass them (later changesets wait).
    pub fn read_through(&mut self, stream: &str, to: u64) -> Output {
        assert!(!self.append_in_flight(), "a stream moved while an append is in flight");
        let mut out = Output::default();
        if self.parked.contains_key(stream) {
            return out;
        }
        self.caught_up_through(stream, to);
        if to <= self.cursor(stream) {
            return out;
        }
        out.alerts.push(Alert::StreamGap { stream: stream.to_string(), from: self.cursor(stream) + 1, to });
        // What came before the next entry is not known.
        self.tails.remove(stream);
        self.cursors.insert(stream.to_string(), to);
        out.commit = Some(Batch { cursors: vec![(stream.to_string(), to)], ..Batch::default() });
        out
    }

    fn attempt(&self, plan: &Plan, facts: &Facts, now_ms: u64) -> Result<Result<Applied, Refused>, Fatal> {
        let mut ov = Overlay::new(facts, self.cfg.region.as_str(), now_ms);
        let mut merged = Merged::default();
        self.merge_plan(plan, &mut ov, &mut merged);
        self.finish_attempt(ov, merged)
    }

    /// Merge the changes of a plan's applied changesets into the step's state: LWW
    /// changes at once, document changes gathered per document (see [`Self::finish_attempt`]).
    pub(crate) fn merge_plan(&self, plan: &Plan, ov: &mut Overlay<'_>, merged: &mut Merged) {
        for item in &plan.items {
            let Item::Apply { cs, from_seq, docs: decoded, .. } = item else { continue };
            if self.drops(cs) {
                merged.stats.changesets_applied += 1;
                continue;
            }
            for (i, change) in cs.changes.iter().enumerate() {
                let seq = cs.first_seq + i as u64;
                if seq < *from_seq {
                    continue;
                }
                merged.hlc_max = merged.hlc_max.max(change.hlc);
                if let ChangeBody::Mark { floor, stable } = &change.body {
                    let mark = Mark { seq, floor: floor.clone(), stable: stable.clone() };
                    merged.marks.insert(cs.origin.clone(), mark);
                    continue;
                }
                let last = merged.data_seq.entry(cs.origin.clone()).or_insert(0);
                *last = (*last).max(seq);
                let context = merged.marks.get(&cs.origin).map(|m| &m.stable).or(self.context_of(&cs.origin));
                self.merge(ov, &cs.origin, change, context, &mut merged.stats);
            }
            for (i, am) in decoded.iter().filter(|(i, _)| cs.first_seq + *i as u64 >= *from_seq) {
                let c = &cs.changes[*i];
                merged
                    .docs
                    .entry((c.bucket.clone(), c.key.clone()))
                    .or_default()
                    .push(((cs.origin.clone(), cs.first_seq), am.clone()));
            }
            merged.stats.changesets_applied += 1;
        }
    }

    /// Apply the gathered document changes, one batch per document, and build the
    /// step's batch; `Err` names the changesets a document refused.
    pub(crate) fn finish_attempt(
        &self,
        mut ov: Overlay<'_>,
        merged: Merged,
    ) -> Result<Result<Applied, Refused>, Fatal> {
        let Merged { stats, hlc_max, docs, marks, data_seq } = merged;
        let mut refused = Refused::new();
        let mut dropped = Vec::new();
        for (k, changes) in docs {
            match apply_doc(&mut ov, &k, changes, &mut dropped)? {
                Ok(()) => {}
                Err(r) => refused.extend(r),
            }
        }
        if !refused.is_empty() {
            return Ok(Err(refused));
        }
        Ok(Ok(Applied { batch: ov.into_batch()?, hlc_max, stats, dropped, marks, data_seq }))
    }

    /// Merge one change into the step's state: an LWW version into its register, in
    /// its origin's `context` (a document change is applied per document afterwards).
    fn merge(
        &self,
        ov: &mut Overlay<'_>,
        origin: &Origin,
        change: &Change,
        context: Option<&VersionVector>,
        stats: &mut Stats,
    ) {
        let (value, vv) = match &change.body {
            ChangeBody::Put { value, vv } => (Some(value.clone()), vv),
            ChangeBody::Delete { vv } => (None, vv),
            ChangeBody::Mark { .. } => return,
            ChangeBody::Doc { .. } => {
                if let Some(id) = change.resolves {
                    ov.doc_resolves.insert((change.bucket.clone(), change.key.clone()), id);
                }
                return;
            }
        };
        let k = (change.bucket.clone(), change.key.clone());
        let incoming = Version { value, hlc: change.hlc, origin: origin.clone(), vv: vv.clone() };
        self.merge_version(ov, k, incoming, change.resolves, context, stats);
    }

    /// Merge one LWW version into its key's register, recording what it does to the
    /// conflict log.
    pub(crate) fn merge_version(
        &self,
        ov: &mut Overlay<'_>,
        k: DocKey,
        incoming: Version,
        resolves: Option<uuid::Uuid>,
        context: Option<&VersionVector>,
        stats: &mut Stats,
    ) {
        let (register, inserted) = match ov.register(&k) {
            None => (Register::new(incoming), Inserted { changed: true, cut: Vec::new() }),
            Some(mut register) => {
                let inserted = self.insert(&mut register, incoming, context);
                (register, inserted)
            }
        };
        if !inserted.changed {
            return;
        }
        if register.is_conflicted() {
            stats.lww_conflicts += 1;
        }
        let manual = self.cfg.manual_buckets.contains(&k.0);
        ov.track_lww(&k, &register, &inserted.cut, resolves, manual);
        ov.kv.insert(k, register);
    }

    #[cfg(feature = "mutations")]
    fn insert(&self, register: &mut Register, incoming: Version, context: Option<&VersionVector>) -> Inserted {
        if !self.cfg.mutated(crate::engine::Mutation::IgnoreVersionVector) {
            return register.insert_in_context(incoming, context.unwrap_or(&VersionVector::new()));
        }
        let w = register.winner();
        if (incoming.hlc, &incoming.origin) <= (w.hlc, &w.origin) {
            return Inserted::default();
        }
        *register = Register::new(incoming);
        Inserted { changed: true, cut: Vec::new() }
    }

    #[cfg(feature = "mutations")]
    fn drops(&self, cs: &concord_core::changeset::Changeset) -> bool {
        let seq = crate::engine::DROPPED_SEQ;
        self.cfg.mutated(crate::engine::Mutation::DropChangeset)
            && cs.origin.region != self.cfg.region
            && cs.first_seq <= seq
            && seq < cs.first_seq + cs.changes.len() as u64
    }

    #[cfg(not(feature = "mutations"))]
    fn drops(&self, _cs: &concord_core::changeset::Changeset) -> bool {
        false
    }

    #[cfg(not(feature = "mutations"))]
    fn insert(&self, register: &mut Register, incoming: Version, context: Option<&VersionVector>) -> Inserted {
        match context {
            Some(context) => register.insert_in_context(incoming, context),
            None => register.insert(incoming),
        }
    }

    /// Take the applied plan into the engine's state and build the step's output.
    pub(crate) fn finish(&mut self, stream: &str, mut plan: Plan, applied: Applied) -> Output {
        let Applied { mut batch, hlc_max, stats, dropped, marks, data_seq } = applied;
        for (origin, seq) in data_seq {
            let last = self.data_seq.entry(origin).or_insert(0);
            *last = (*last).max(seq);
        }
        let mut out = Output { stats, ..Output::default() };
        let gaps_before: Vec<Origin> = self.waiting.keys().cloned().collect();
        let before = self.applied.clone();
        for (origin, to) in std::mem::take(&mut plan.lifted) {
            // What a lift brings is data this writer's next mark must cover.
            let last = self.data_seq.entry(origin.clone()).or_insert(0);
            *last = (*last).max(to);
            out.alerts.push(Alert::Lifted { from: self.applied.get(&origin), to, origin: origin.clone() });
            self.applied.observe(&origin, to);
        }
        for item in plan.items {
            self.take_item(stream, item, &mut batch, &mut out);
        }
        for letter in dropped {
            self.dead_letter(letter, &mut batch, &mut out);
        }
        for (origin, seq) in self.applied.iter() {
            if seq > before.get(origin) {
                batch.applied.push((origin.clone(), seq));
            }
        }
        for (origin, mark) in marks {
            if mark.seq > self.marks.get(&origin).map_or(0, |m| m.seq) {
                self.marks.insert(origin.clone(), mark.clone());
                batch.marks.push((origin, mark));
            }
        }
        for (origin, from) in std::mem::take(&mut plan.voided) {
            let now = self.void_from.entry(origin.clone()).or_insert(from);
            *now = (*now).min(from);
            batch.void_from.push((origin, *now));
        }
        for t in std::mem::take(&mut plan.tails) {
            let old = self.tails.remove(stream);
            self.tails.insert(stream.to_string(), crate::engine::Tails::consumed(old, t));
        }
        if let Some(to) = plan.consumed_to {
            self.caught_up_through(stream, to);
            if to > self.cursor(stream) {
                self.cursors.insert(stream.to_string(), to);
                batch.cursors.push((stream.to_string(), to));
            }
        }
        self.clock.observe(hlc_max);
        for origin in gaps_before.into_iter().filter(|o| !self.waiting.contains_key(o)) {
            out.alerts.push(Alert::GapClosed { applied: self.applied.get(&origin), origin });
        }
        self.resume_for_room(&mut out);
        out.commit = (!batch.is_empty()).then_some(batch);
        out
    }

    /// Streams parked because the waiting table was full resume once it has room again
    /// (gaps of other streams' origins closed): they are followed from their cursors.
    fn resume_for_room(&mut self, out: &mut Output) {
        if !self.waiting_has_room(self.waiting_count(), self.waiting_bytes, 0) {
            return;
        }
        let resumed: Vec<String> = self.parked.iter().filter(|(_, p)| p.for_room).map(|(s, _)| s.clone()).collect();
        for stream in resumed {
            self.parked.remove(&stream);
            out.alerts.push(Alert::Resumed { stream: stream.clone() });
            if stream != self.cfg.own_stream || self.writer.follows_own_log() {
                out.follow.push((stream.clone(), self.cursor(&stream) + 1));
            }
            if stream == self.cfg.own_stream && matches!(self.writer, crate::writer::Writer::Stuck { .. }) {
                self.begin_catch_up(None);
                out.catch_up = true;
            }
        }
    }

    fn take_item(&mut self, stream: &str, item: Item, batch: &mut Batch, out: &mut Output) {
        match item {
            Item::Apply { cs, waited, .. } => {
                self.applied.observe(&cs.origin, cs.last_seq());
                if waited {
                    self.unwait(&cs.origin, cs.first_seq, batch);
                }
            }
            Item::Wait(held) => {
                if !self.waiting.contains_key(&held.meta.origin) {
                    let applied = self.applied.get(&held.meta.origin);
                    let first_seq = held.meta.first_seq;
                    out.alerts.push(Alert::GapOpened { origin: held.meta.origin.clone(), applied, first_seq });
                }
                batch.waiting.push(WaitingWrite::Put(held.meta.clone()));
                self.waiting_bytes += held.meta.payload.len();
                self.waiting.entry(held.meta.origin.clone()).or_default().insert(held.meta.first_seq, *held);
            }
            Item::Forget { origin, first_seq } => self.unwait(&origin, first_seq, batch),
            Item::Duplicate => out.stats.changesets_duplicate += 1,
            Item::DeadLetter { letter, waited, .. } => {
                if let Some((origin, first_seq)) = waited {
                    self.unwait(&origin, first_seq, batch);
                }
                self.dead_letter(letter, batch, out);
            }
            Item::Park { stream_seq, reason, for_room } => {
                out.alerts.push(Alert::Parked { stream: stream.to_string(), stream_seq, reason: reason.clone() });
                out.unfollow.push(stream.to_string());
                self.parked.insert(stream.to_string(), Parked { stream_seq, reason, for_room });
            }
        }
    }

    fn unwait(&mut self, origin: &Origin, first_seq: u64, batch: &mut Batch) {
        let held = self.waiting.get_mut(origin).and_then(|h| h.remove(&first_seq));
        let held = held.unwrap_or_else(|| panic!("{origin}:{first_seq} was not waiting"));
        self.waiting_bytes -= held.meta.payload.len();
        if self.waiting.get(origin).is_some_and(|h| h.is_empty()) {
            self.waiting.remove(origin);
        }
        batch.waiting.push(WaitingWrite::Remove { origin: origin.clone(), first_seq });
    }

    fn dead_letter(&mut self, mut letter: DeadLetter, batch: &mut Batch, out: &mut Output) {
        self.dead_letters += 1;
        letter.id = self.dead_letters;
        out.alerts.push(Alert::DeadLettered {
            stream: letter.stream.clone(),
            stream_seq: letter.stream_seq,
            reason: letter.reason.clone(),
        });
        batch.dead_letters.push(letter);
    }
}

/// Apply a document's incoming changes, with the changes that waited for their
/// dependencies. `Err` names the changesets whose changes the document refuses.
fn apply_doc(
    ov: &mut Overlay<'_>,
    k: &DocKey,
    incoming: Vec<(ChangesetRef, automerge::Change)>,
    dropped: &mut Vec<DeadLetter>,
) -> Result<Result<(), Refused>, Fatal> {
    let stored = ov.facts.doc(k).pending.clone();
    let had_waiting = !stored.is_empty();
    let mut waiting = Vec::new();
    for bytes in stored {
        // Local state, but a peer's snapshot brings it too: decoded as defensively as
        // a change from the log.
        match concord_core::doc::decode_change(bytes.clone()) {
            Ok(c) => waiting.push(c),
            Err(e) => {
                dropped.push(pending_letter(ov, k, bytes, format!("a stored waiting change does not decode: {e}")))
            }
        }
    }
    let mut all: Vec<automerge::Change> =
        incoming.iter().map(|(_, c)| c.clone()).chain(waiting.iter().cloned()).collect();
    let doc = ov.doc_mut(k)?;
    if apply_guarded(doc, all.clone()).and_then(|()| reloads(doc)).is_err() {
        let (refused, rejected) = find_refused(ov, k, &incoming, waiting)?;
        if !refused.is_empty() {
            return Ok(Err(refused));
        }
        all.retain(|c| !rejected.iter().any(|(r, _)| r.hash() == c.hash()));
        for (change, why) in rejected {
            dropped.push(pending_letter(ov, k, change.raw_bytes().to_vec(), why));
        }
    }
    let doc = ov.doc_mut(k)?;
    let still: Vec<Vec<u8>> =
        all.iter().filter(|c| doc.get_change_by_hash(&c.hash()).is_none()).map(|c| c.raw_bytes().to_vec()).collect();
    if had_waiting || !still.is_empty() {
        ov.pending.insert(k.clone(), still);
    }
    ov.dirty_docs.insert(k.clone());
    Ok(Ok(()))
}

/// Apply `changes` to `doc`, taking a panic of Automerge for a refusal.
///
/// automerge 0.12 panics on some damaged changes instead of refusing them (an `unwrap`
/// on `None` in its op-set collector, an assertion in its change graph; found by
/// fuzzing, `crates/concord-fuzz`). Uncaught, the engine step would panic and stop the
/// node, and every restart would read the same message again. A document that panicked
/// may be half-changed: the callers never keep it ([`find_refused`] starts again from the
/// stored state, and tries each change on a copy).
/// Some damaged changes are even accepted, and the panic comes when the document is
/// asked for them: each change is looked up here, under the same guard.
pub(crate) fn apply_guarded(doc: &mut automerge::Automerge, changes: Vec<automerge::Change>) -> Result<(), String> {
    let hashes: Vec<automerge::ChangeHash> = changes.iter().map(|c| c.hash()).collect();
    let apply = || {
        doc.apply_changes(changes)?;
        for h in &hashes {
            doc.get_change_by_hash(h);
        }
        Ok::<(), automerge::AutomergeError>(())
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(apply)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("automerge failed on it (a damaged change)".into()),
    }
}

/// The document saves to bytes that load again. automerge 0.12 accepts some damaged
/// changes and then saves a document that does not load ("bad checksum"; found by
/// fuzzing): stored, it would stop the node the next time the document is read. So a
/// document that took changes from another replica is saved and loaded once before it
/// is kept (a cost paid on documents changed by other regions only: local writes build
/// their changes with Automerge itself).
pub(crate) fn reloads(doc: &automerge::Automerge) -> Result<(), String> {
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.save()))
        .map_err(|_| "automerge failed saving the document with it (a damaged change)".to_string())?;
    concord_core::doc::load_doc(&saved)
        .map(|_| ())
        .map_err(|e| format!("the document with it does not load again: {e}"))
}

/// After a document refused a batch: start again from its stored state and apply the
/// changes one by one, keeping those it accepts. Refused incoming changes name their
/// changesets; refused waiting changes (already counted as applied when they arrived)
/// come back on their own, to be dead-lettered.
fn find_refused(
    ov: &mut Overlay<'_>,
    k: &DocKey,
    incoming: &[(ChangesetRef, automerge::Change)],
    waiting: Vec<automerge::Change>,
) -> Result<(Refused, Vec<(automerge::Change, String)>), Fatal> {
    let mut refused = Refused::new();
    let mut rejected_waiting = Vec::new();
    let doc = ov.reset_doc(k)?;
    let tries = incoming.iter().map(|(r, c)| (Some(r), c.clone())).chain(waiting.into_iter().map(|c| (None, c)));
    for (from, change) in tries {
        let mut trial = doc.clone();
        match apply_guarded(&mut trial, vec![change.clone()]).and_then(|()| reloads(&trial)) {
            Ok(()) => *doc = trial,
            Err(e) => {
                let why = format!("the document {}/{} refused change {}: {e}", k.0, k.1, change.hash());
                match from {
                    Some(r) => {
                        refused.insert(r.clone(), why);
                    }
                    None => rejected_waiting.push((change, why)),
                }
            }
        }
    }
    Ok((refused, rejected_waiting))
}

fn pending_letter(ov: &Overlay<'_>, k: &DocKey, payload: Vec<u8>, reason: String) -> DeadLetter {
    DeadLetter {
        id: 0,
        stream: format!("pending:{}/{}", k.0, k.1),
        stream_seq: 0,
        origin: None,
        first_seq: None,
        last_seq: None,
        reason,
        at_ms: ov.now_ms,
        payload,
    }
}
