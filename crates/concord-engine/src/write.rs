//! Local writes: a batch of requests becomes one changeset of the writer's origin
//! (group commit), appended to the region's log before anything is acknowledged.
//!
//! An LWW write's version vector joins every sibling's, and its hybrid-logical-clock
//! time follows theirs, so it supersedes them all (and resolves the key's open
//! conflict). A document write is one Automerge change by the origin's actor, carrying
//! its time in the change message. The step's state (registers, documents, conflict
//! records) is held with the append and committed only once the log stored it; a batch
//! made while appends are in flight is made over the state they leave (see
//! [`crate::writer`], "Pipelined appends").

use std::collections::HashSet;

use automerge::ReadDoc;
use bytes::Bytes;
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp};
use concord_core::hlc::Hlc;
use concord_core::ids::Origin;
use concord_core::lww::{Register, Version};
use concord_core::vv::VersionVector;
use uuid::Uuid;

use crate::Fatal;
use crate::apply::{apply_guarded, reloads};
use crate::engine::Engine;
use crate::output::{Ack, Append, Output, WriteError};
use crate::overlay::Overlay;
use crate::state::{DocKey, Facts, Mark, Needs};
use crate::writer::{Inflight, Writer};

#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Put {
        bucket: String,
        key: String,
        value: Bytes,
    },
    Delete {
        bucket: String,
        key: String,
    },
    Doc {
        bucket: String,
        key: String,
        ops: Vec<DocOp>,
    },
    /// Automerge changes made elsewhere (a local-first client's, synced to this node),
    /// applied to the document as they are, all or none, each kept as a change of its
    /// own in the changeset. Refused when one does not decode, depends on a change
    /// neither the document nor the list has, or the document refuses them; unchanged
    /// when the document has them all.
    DocChanges {
        bucket: String,
        key: String,
        changes: Vec<Bytes>,
    },
    /// A mark ([`crate::marks`]): the runtime asks for one every so often.
    Mark,
}

impl WriteOp {
    /// Roughly what the write adds to a changeset, for batch limits.
    pub fn bytes(&self) -> usize {
        match self {
            WriteOp::Put { value, key, .. } => value.len() + key.len() + 64,
            WriteOp::Delete { key, .. } => key.len() + 64,
            WriteOp::Doc { key, ops, .. } => key.len() + 64 + ops.iter().map(DocOp::bytes).sum::<usize>(),
            WriteOp::DocChanges { key, changes, .. } => key.len() + changes.iter().map(|c| c.len() + 64).sum::<usize>(),
            WriteOp::Mark => 1024,
        }
    }

    fn doc_key(&self) -> Option<DocKey> {
        match self {
            WriteOp::Put { bucket, key, .. }
            | WriteOp::Delete { bucket, key }
            | WriteOp::Doc { bucket, key, .. }
            | WriteOp::DocChanges { bucket, key, .. } => Some((bucket.clone(), key.clone())),
            WriteOp::Mark => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    /// Chosen by the runtime; replies name it.
    pub id: u64,
    pub op: WriteOp,
    /// The conflict-log record this write resolves (`POST /v1/conflicts/{id}/resolve`).
    pub resolves: Option<Uuid>,
}

/// One write of a batch as it was made.
enum Made {
    Rejected(WriteError),
    Unchanged,
    Change(Change),
    /// Several changes (in order), answered as the last.
    Changes(Vec<Change>),
}

impl Engine {
    /// What a batch of writes needs loaded.
    pub fn write_needs(&self, writes: &[WriteRequest]) -> Needs {
        let mut needs = Needs::default();
        for w in writes {
            match (&w.op, w.op.doc_key()) {
                (_, None) => false,
                (WriteOp::Doc { .. } | WriteOp::DocChanges { .. }, Some(k)) => needs.docs.insert(k),
                (_, Some(k)) => needs.kv.insert(k),
            };
            needs.records.extend(w.resolves);
        }
        needs
    }

    /// Turn a batch of writes into one append (see the module doc). Writes that cannot
    /// apply are answered at once; the others when the append ends.
    pub fn write(&mut self, writes: Vec<WriteRequest>, facts: &Facts, now_ms: u64) -> Result<Output, Fatal> {
        let mut out = Output::default();
        if let Some(e) = self.not_writing() {
            for w in writes {
                out.stats.writes_failed += 1;
                out.replies.push((w.id, Err(e.clone())));
            }
            return Ok(out);
        }
        let Writer::Writing { origin, next_seq, inflight } = &self.writer else { unreachable!("checked above") };
        assert!(inflight.len() < self.cfg.appends_in_flight_max, "a write batch while the pipeline is full");
        let origin = origin.clone();
        let first_seq = inflight.back().map_or(*next_seq, |f| f.last_seq + 1);
        let expected_last = self.cursor(&self.cfg.own_stream) + inflight.len() as u64;
        // Over the state the appends in flight leave, as if they were committed.
        let ahead: Facts;
        let facts = if inflight.is_empty() {
            facts
        } else {
            let mut f = facts.clone();
            for flight in inflight {
                f.with_batch(&flight.batch);
            }
            ahead = f;
            &ahead
        };
        let mut ov = Overlay::new(facts, self.cfg.region.as_str(), now_ms);
        let mut changes: Vec<Change> = Vec::new();
        let mut members = Vec::new();
        let mut marks = Vec::new();
        // An epoch begins with a mark once anything can be stable (this replica may have
        // collected tombstones as a follower): the context of everything it writes.
        if self.marked_at_ms.is_none() && self.stable().is_some() {
            changes.push(self.mark(&origin, first_seq, now_ms, &mut marks));
        }
        for w in writes {
            if w.op == WriteOp::Mark {
                let seq = first_seq + changes.len() as u64;
                let change = self.mark(&origin, seq, now_ms, &mut marks);
                members.push((w.id, Some((seq, change.hlc))));
                changes.push(change);
                continue;
            }
            let seq = first_seq + changes.len() as u64;
            match self.make(&mut ov, &origin, seq, w.op, w.resolves, now_ms)? {
                Made::Rejected(e) => {
                    out.stats.writes_rejected += 1;
                    out.replies.push((w.id, Err(e)));
                }
                Made::Unchanged => members.push((w.id, None)),
                Made::Change(change) => {
                    members.push((w.id, Some((seq, change.hlc))));
                    changes.push(change);
                }
                Made::Changes(made) => {
                    let last = made.last().expect("at least one change");
                    members.push((w.id, Some((seq + made.len() as u64 - 1, last.hlc))));
                    changes.extend(made);
                }
            }
        }
        if changes.is_empty() {
            let ack = Ack { origin, seq: None, hlc: None, log_seq: None };
            out.replies.extend(members.into_iter().map(|(id, _)| (id, Ok(ack.clone()))));
            return Ok(out);
        }
        let cs = Changeset { origin: origin.clone(), first_seq, changes };
        let seqs = members.iter().filter_map(|(id, made)| made.map(|(s, _)| (*id, s))).collect();
        out.append = Some(Append {
            payload: Bytes::from(cs.encode()),
            msg_id: cs.message_id(),
            expected_last,
            origin,
            first_seq,
            last_seq: cs.last_seq(),
            seqs,
        });
        out.stats.marks_made = marks.len() as u64;
        let mut batch = ov.into_batch()?;
        batch.marks = marks;
        let data_last = cs.changes.iter().rposition(|c| !c.body.is_mark()).map(|i| first_seq + i as u64);
        let flight = Inflight { first_seq, last_seq: cs.last_seq(), members, batch, data_last };
        if let Writer::Writing { inflight, .. } = &mut self.writer {
            inflight.push_back(flight);
        }
        Ok(out)
    }

    /// A mark of this writer at `seq` (kept in `marks` for when it is stored).
    fn mark(&mut self, origin: &Origin, seq: u64, now_ms: u64, marks: &mut Vec<(Origin, Mark)>) -> Change {
        let body = self.new_mark();
        let ChangeBody::Mark { floor, stable } = &body else { unreachable!("new_mark makes a mark") };
        marks.push((origin.clone(), Mark { seq, floor: floor.clone(), stable: stable.clone() }));
        self.marked_at_ms = Some(now_ms);
        Change { hlc: self.clock.tick(now_ms), bucket: String::new(), key: String::new(), body, resolves: None }
    }

    /// One write: its change, or why it has none.
    fn make(
        &mut self,
        ov: &mut Overlay<'_>,
        origin: &Origin,
        seq: u64,
        op: WriteOp,
        resolves: Option<Uuid>,
        now_ms: u64,
    ) -> Result<Made, Fatal> {
        let (bucket, key, value) = match op {
            WriteOp::Put { bucket, key, value } => (bucket, key, Some(value.to_vec())),
            WriteOp::Delete { bucket, key } => (bucket, key, None),
            WriteOp::Mark => unreachable!("marks are made by Engine::mark"),
            WriteOp::Doc { bucket, key, ops } => {
                return self.make_doc(ov, origin, (bucket, key), &ops, resolves, now_ms);
            }
            WriteOp::DocChanges { bucket, key, changes } => {
                return self.take_doc_changes(ov, (bucket, key), &changes, now_ms);
            }
        };
        let k = (bucket, key);
        let mut vv = VersionVector::new();
        if let Some(current) = ov.register(&k) {
            for v in current.versions() {
                self.clock.observe(v.hlc);
            }
            vv = current.vv();
        }
        let hlc = self.clock.tick(now_ms);
        vv.observe(origin, seq);
        let register = Register::new(Version { value: value.clone(), hlc, origin: origin.clone(), vv: vv.clone() });
        let manual = self.cfg.manual_buckets.contains(&k.0);
        ov.track_lww(&k, &register, &[], resolves, manual);
        ov.kv.insert(k.clone(), register);
        let body = match value {
            Some(value) => ChangeBody::Put { value, vv },
            None => ChangeBody::Delete { vv },
        };
        Ok(Made::Change(Change { hlc, bucket: k.0, key: k.1, body, resolves }))
    }

    fn make_doc(
        &mut self,
        ov: &mut Overlay<'_>,
        origin: &Origin,
        k: DocKey,
        ops: &[DocOp],
        resolves: Option<Uuid>,
        now_ms: u64,
    ) -> Result<Made, Fatal> {
        let hlc: Hlc = self.clock.tick(now_ms);
        let document = ov.doc_mut(&k)?;
        match doc::apply_ops(document, &origin.actor_bytes(), hlc, ops) {
            Err(concord_core::CoreError::InvalidOp(m)) => Ok(Made::Rejected(WriteError::Invalid(m))),
            Err(e) => Ok(Made::Rejected(WriteError::Invalid(e.to_string()))),
            Ok(None) => Ok(Made::Unchanged),
            Ok(Some(change)) => {
                ov.dirty_docs.insert(k.clone());
                if let Some(id) = resolves {
                    ov.doc_resolves.insert(k.clone(), id);
                }
                let body = ChangeBody::Doc { change: change.raw_bytes().to_vec() };
                Ok(Made::Change(Change { hlc, bucket: k.0, key: k.1, body, resolves }))
            }
        }
    }

    /// Changes made elsewhere, applied as they are, all or none (see
    /// [`WriteOp::DocChanges`]). They are tried on a copy, so refused changes leave this
    /// batch's earlier changes to the document in place.
    fn take_doc_changes(
        &mut self,
        ov: &mut Overlay<'_>,
        k: DocKey,
        changes: &[Bytes],
        now_ms: u64,
    ) -> Result<Made, Fatal> {
        let refused = |why: String| Ok(Made::Rejected(WriteError::Invalid(why)));
        let mut decoded = Vec::with_capacity(changes.len());
        for (i, bytes) in changes.iter().enumerate() {
            match doc::decode_change(bytes.to_vec()) {
                Ok(change) => decoded.push(change),
                Err(e) => return refused(format!("change {i} does not decode: {e}")),
            }
        }
        let document = ov.doc_mut(&k)?;
        let mut seen = HashSet::new();
        decoded.retain(|c| document.get_change_by_hash(&c.hash()).is_none() && seen.insert(c.hash()));
        if decoded.is_empty() {
            return Ok(Made::Unchanged);
        }
        let missing = decoded
            .iter()
            .flat_map(|c| c.deps())
            .find(|d| !seen.contains(*d) && document.get_change_by_hash(d).is_none());
        if let Some(missing) = missing {
            return refused(format!("the changes depend on {missing}, which {}/{} does not have", k.0, k.1));
        }
        let mut copy = document.clone();
        if let Err(why) = apply_guarded(&mut copy, decoded.clone()).and_then(|()| reloads(&copy)) {
            return refused(format!("the document refuses the changes: {why}"));
        }
        if decoded.iter().any(|c| copy.get_change_by_hash(&c.hash()).is_none()) {
            return refused("the document did not take every change".into());
        }
        *document = copy;
        ov.dirty_docs.insert(k.clone());
        let made = decoded.into_iter().map(|c| Change {
            hlc: self.clock.tick(now_ms),
            bucket: k.0.clone(),
            key: k.1.clone(),
            body: ChangeBody::Doc { change: c.raw_bytes().to_vec() },
            resolves: None,
        });
        Ok(Made::Changes(made.collect()))
    }
}
