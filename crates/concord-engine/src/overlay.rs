//! The working set of one step: what the step changed, over the [`Facts`] it was given.
//!
//! Reads go to the overlay first, then to the facts; nothing is read from anywhere
//! else. [`Overlay::into_batch`] turns the step's changes into the [`Batch`] the runtime
//! commits: it derives the documents' conflict records and saves the documents.

use std::collections::{BTreeMap, BTreeSet};

use automerge::Automerge;
use chrono::{DateTime, Utc};
use concord_core::conflict::ConflictRecord;
use concord_core::doc;
use concord_core::lww::Register;
use uuid::Uuid;

use crate::Fatal;
use crate::state::{Batch, ConflictWrite, DocKey, Facts};

pub(crate) struct Overlay<'f> {
    pub facts: &'f Facts,
    /// This replica's region (conflict records name who detected them).
    pub region: String,
    pub now_ms: u64,
    pub kv: BTreeMap<DocKey, Register>,
    /// Registers this step took out of the store (none is in `kv` too: a register set
    /// after its removal is in `kv` alone).
    kv_removed: BTreeSet<DocKey>,
    docs: BTreeMap<DocKey, Automerge>,
    pub dirty_docs: BTreeSet<DocKey>,
    /// Documents whose waiting changes changed (an empty list clears them).
    pub pending: BTreeMap<DocKey, Vec<Vec<u8>>>,
    /// Conflict-log changes of this step, in order.
    pub conflicts: Vec<ConflictWrite>,
    /// The open record per key (and path) as this step wrote it (`None`: it closed it).
    pub open_records: BTreeMap<Vec<u8>, Option<ConflictRecord>>,
    /// Documents changed by a resolving write: the record it resolves.
    pub doc_resolves: BTreeMap<DocKey, Uuid>,
}

impl<'f> Overlay<'f> {
    pub fn new(facts: &'f Facts, region: &str, now_ms: u64) -> Overlay<'f> {
        Overlay {
            facts,
            region: region.to_string(),
            now_ms,
            kv: BTreeMap::new(),
            kv_removed: BTreeSet::new(),
            docs: BTreeMap::new(),
            dirty_docs: BTreeSet::new(),
            pending: BTreeMap::new(),
            conflicts: Vec::new(),
            open_records: BTreeMap::new(),
            doc_resolves: BTreeMap::new(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(i64::try_from(self.now_ms).unwrap_or(i64::MAX)).unwrap_or_default()
    }

    /// The register of a key as this step sees it.
    pub fn register(&self, k: &DocKey) -> Option<Register> {
        match self.kv.get(k) {
            Some(r) => Some(r.clone()),
            None if self.kv_removed.contains(k) => None,
            None => self.facts.kv(k).register.clone(),
        }
    }

    /// Take the register of a key out of the store.
    pub fn remove_kv(&mut self, k: &DocKey) {
        self.kv.remove(k);
        self.kv_removed.insert(k.clone());
    }

    /// The document, loaded from the facts on first use (a new one when absent).
    pub fn doc_mut(&mut self, k: &DocKey) -> Result<&mut Automerge, Fatal> {
        if !self.docs.contains_key(k) {
            let doc = self.load_doc(k)?;
            self.docs.insert(k.clone(), doc);
        }
        Ok(self.docs.get_mut(k).expect("inserted above"))
    }

    /// Drop what this step did to a document: it is loaded again from the facts.
    pub fn reset_doc(&mut self, k: &DocKey) -> Result<&mut Automerge, Fatal> {
        self.docs.remove(k);
        self.doc_mut(k)
    }

    fn load_doc(&self, k: &DocKey) -> Result<Automerge, Fatal> {
        match &self.facts.doc(k).saved {
            Some(bytes) => doc::load_doc(bytes).map_err(|e| Fatal(format!("stored document {}/{}: {e}", k.0, k.1))),
            None => Ok(doc::new_doc()),
        }
    }

    /// The step's changes as one batch (applied vector and cursors are the caller's).
    pub fn into_batch(mut self) -> Result<Batch, Fatal> {
        let dirty: Vec<DocKey> = self.dirty_docs.iter().cloned().collect();
        for k in &dirty {
            let resolves = self.doc_resolves.get(k).copied();
            let document = self.docs.remove(k).expect("a dirty document is loaded");
            self.track_doc(k, &document, resolves);
            self.docs.insert(k.clone(), document);
        }
        let mut batch = Batch { conflicts: std::mem::take(&mut self.conflicts), ..Batch::default() };
        batch.kv_removed = self.kv_removed.iter().filter(|k| !self.kv.contains_key(*k)).cloned().collect();
        batch.kv = std::mem::take(&mut self.kv).into_iter().collect();
        for k in dirty {
            batch.docs.push((k.clone(), self.docs[&k].save()));
        }
        batch.pending = std::mem::take(&mut self.pending).into_iter().collect();
        Ok(batch)
    }
}
