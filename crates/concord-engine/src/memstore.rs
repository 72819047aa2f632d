//! An in-memory store with the semantics of the node's redb store: it answers
//! [`Needs`] with [`Facts`], commits a [`Batch`] whole, and gives back [`Durable`]. The
//! simulator keeps each replica's durable state in one; a crash keeps what was committed.
//!
//! Ordered maps only, so iterating it (for the simulator's digest) is deterministic.

use std::collections::BTreeMap;

use concord_core::conflict::ConflictRecord;
use concord_core::ids::Origin;
use concord_core::lww::Register;
use concord_core::vv::VersionVector;
use uuid::Uuid;

use crate::conflicts::open_key;
use crate::state::{
    Batch, ConflictWrite, DeadLetter, DocFacts, DocKey, Durable, Facts, KvFacts, Mark, Needs, Waiting, WaitingWrite,
};

#[derive(Debug, Clone, Default)]
pub struct MemStore {
    pub kv: BTreeMap<DocKey, Register>,
    pub docs: BTreeMap<DocKey, Vec<u8>>,
    pub pending: BTreeMap<DocKey, Vec<Vec<u8>>>,
    pub applied: VersionVector,
    pub cursors: BTreeMap<String, u64>,
    pub waiting: BTreeMap<(Origin, u64), Waiting>,
    pub dead_letters: BTreeMap<u64, DeadLetter>,
    pub conflicts: BTreeMap<Uuid, ConflictRecord>,
    /// open key → id of the open record there.
    pub open: BTreeMap<Vec<u8>, Uuid>,
    pub void_from: BTreeMap<Origin, u64>,
    pub marks: BTreeMap<Origin, Mark>,
}

impl MemStore {
    pub fn load(&self, needs: &Needs) -> Facts {
        let mut facts = Facts::default();
        for k in &needs.kv {
            let open = self.open.get(&open_key(&k.0, &k.1, None)).and_then(|id| self.conflicts.get(id)).cloned();
            facts.kv.insert(k.clone(), KvFacts { register: self.kv.get(k).cloned(), open });
        }
        for k in &needs.docs {
            let doc = DocFacts {
                saved: self.docs.get(k).cloned(),
                pending: self.pending.get(k).cloned().unwrap_or_default(),
                open: self.open_doc_records(k),
            };
            facts.docs.insert(k.clone(), doc);
        }
        for id in &needs.records {
            facts.records.insert(*id, self.conflicts.get(id).cloned());
        }
        facts
    }

    fn open_doc_records(&self, k: &DocKey) -> Vec<ConflictRecord> {
        let prefix = open_key(&k.0, &k.1, None);
        self.open
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| key.len() > prefix.len())
            .filter_map(|(_, id)| self.conflicts.get(id).cloned())
            .collect()
    }

    pub fn commit(&mut self, batch: &Batch) {
        for (k, r) in &batch.kv {
            self.kv.insert(k.clone(), r.clone());
        }
        for k in &batch.kv_removed {
            self.kv.remove(k);
        }
        for (k, bytes) in &batch.docs {
            self.docs.insert(k.clone(), bytes.clone());
        }
        for (k, changes) in &batch.pending {
            if changes.is_empty() {
                self.pending.remove(k);
            } else {
                self.pending.insert(k.clone(), changes.clone());
            }
        }
        for w in &batch.conflicts {
            self.write_conflict(w);
        }
        for (origin, seq) in &batch.applied {
            assert!(*seq >= self.applied.get(origin), "the applied vector never goes back ({origin})");
            self.applied.observe(origin, *seq);
        }
        for (stream, seq) in &batch.cursors {
            self.cursors.insert(stream.clone(), *seq);
        }
        for w in &batch.waiting {
            match w {
                WaitingWrite::Put(meta) => {
                    self.waiting.insert((meta.origin.clone(), meta.first_seq), meta.clone());
                }
                WaitingWrite::Remove { origin, first_seq } => {
                    self.waiting.remove(&(origin.clone(), *first_seq));
                }
            }
        }
        for letter in &batch.dead_letters {
            self.dead_letters.insert(letter.id, letter.clone());
        }
        for (origin, seq) in &batch.void_from {
            let from = self.void_from.entry(origin.clone()).or_insert(*seq);
            *from = (*from).min(*seq);
        }
        for (origin, mark) in &batch.marks {
            let old = self.marks.get(origin).map_or(0, |m| m.seq);
            assert!(mark.seq > old, "marks only move on ({origin}: {old} -> {})", mark.seq);
            self.marks.insert(origin.clone(), mark.clone());
        }
    }

    fn write_conflict(&mut self, w: &ConflictWrite) {
        let r = &w.record;
        let ok = open_key(&r.bucket, &r.key, r.path.as_deref());
        if let Some(old) = w.replaces.filter(|old| *old != r.id) {
            self.conflicts.remove(&old);
        }
        self.conflicts.insert(r.id, r.clone());
        if w.open {
            self.open.insert(ok, r.id);
        } else if self.open.get(&ok) == Some(&r.id) {
            self.open.remove(&ok);
        }
    }

    pub fn durable(&self) -> Durable {
        Durable {
            applied: self.applied.clone(),
            cursors: self.cursors.clone(),
            waiting: self.waiting.values().cloned().collect(),
            dead_letters: self.dead_letters.keys().next_back().copied().unwrap_or(0),
            void_from: self.void_from.clone(),
            marks: self.marks.clone(),
        }
    }
}
