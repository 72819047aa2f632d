//! Keeping the conflict log: every merge that leaves concurrent versions opens (or
//! extends) a record; the write that supersedes them resolves it.
//!
//! Records change in the same batch as the state change that caused them. Their ids
//! converge across regions (see `concord_core::conflict`), so every region that saw the
//! competing versions holds the same record. A region that never held two of the
//! versions at once (it received the superseding write first) has no record: the
//! versions were history there, and the superseding write dominates them all.

use std::collections::BTreeSet;

use automerge::Automerge;
use concord_core::conflict::{CompetingVersion, ConflictRecord, Resolution, Rule};
use concord_core::doc;
use concord_core::lww::{Register, Version};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::overlay::Overlay;
use crate::state::{ConflictWrite, DocKey};

/// The key of the open-record index: `bucket NUL key NUL path-as-JSON`.
pub fn open_key(bucket: &str, key: &str, path: Option<&[Json]>) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + key.len() + 2);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    if let Some(p) = path {
        k.extend_from_slice(Json::Array(p.to_vec()).to_string().as_bytes());
    }
    k
}

fn new_record(o: &Overlay<'_>, k: &DocKey, path: Option<Vec<Json>>, rule: Rule) -> ConflictRecord {
    ConflictRecord {
        id: Uuid::nil(),
        bucket: k.0.clone(),
        key: k.1.clone(),
        path,
        detected_at: o.now(),
        detected_by: o.region.clone(),
        rule,
        winner: String::new(),
        versions: Vec::new(),
        cut: Vec::new(),
        resolved: None,
    }
}

fn resolution(o: &Overlay<'_>, resolves: Option<Uuid>, version: String) -> Resolution {
    Resolution {
        by: if resolves.is_some() { "resolve" } else { "write" }.into(),
        version,
        at: o.now(),
        region: o.region.clone(),
    }
}

impl Overlay<'_> {
    /// The open record of `k` (and `path`), as this step sees it: as this step wrote it,
    /// else as loaded. (Only writes are kept in `open_records`: most keys have no record,
    /// and this runs for every change.)
    fn open_record(&mut self, k: &DocKey, path: Option<&[Json]>) -> Option<ConflictRecord> {
        if !self.open_records.is_empty()
            && let Some(written) = self.open_records.get(&open_key(&k.0, &k.1, path))
        {
            return written.clone();
        }
        match path {
            None => self.facts.kv(k).open.clone(),
            Some(p) => self.facts.doc(k).open.iter().find(|r| r.path.as_deref() == Some(p)).cloned(),
        }
    }

    fn write_record(&mut self, record: ConflictRecord, open: bool, replaces: Option<Uuid>) {
        let ok = open_key(&record.bucket, &record.key, record.path.as_deref());
        self.open_records.insert(ok, open.then(|| record.clone()));
        self.conflicts.push(ConflictWrite { record, open, replaces });
    }

    /// After a version went into the register of `k` (`after`), with `cut` the
    /// versions that fell beyond the sibling bound.
    pub fn track_lww(&mut self, k: &DocKey, after: &Register, cut: &[Version], resolves: Option<Uuid>, manual: bool) {
        let open = self.open_record(k, None);
        if after.is_conflicted() {
            let rule = if manual { Rule::Manual } else { Rule::LwwHlc };
            let mut record = open.clone().unwrap_or_else(|| new_record(self, k, None, rule));
            let versions = after.versions().iter().chain(cut).map(CompetingVersion::from_lww).collect();
            record.absorb(versions);
            let newly_cut: Vec<String> = cut.iter().map(Version::id).filter(|id| !record.cut.contains(id)).collect();
            record.cut.extend(newly_cut);
            record.winner = after.winner().id();
            record.resolved = None;
            self.write_record(record, true, open.map(|r| r.id));
        } else if let Some(mut record) = open {
            record.resolved = Some(resolution(self, resolves, after.winner().id()));
            self.write_record(record, false, None);
        }
        self.resolve_named(resolves, after.winner().id());
    }

    /// After anti-entropy dropped versions of `k` that a peer had superseded (by a delete
    /// collected there since), leaving one version or none: its open record is resolved,
    /// by `anti-entropy`, with no version to name (the delete is gone).
    pub fn resolve_by_anti_entropy(&mut self, k: &DocKey) {
        if let Some(mut record) = self.open_record(k, None) {
            record.resolved = Some(Resolution {
                by: "anti-entropy".into(),
                version: String::new(),
                at: self.now(),
                region: self.region.clone(),
            });
            self.write_record(record, false, None);
        }
    }

    /// A resolving write names its record: mark it resolved even if this replica's open
    /// record for the key has another id (it saw a different subset of the versions).
    fn resolve_named(&mut self, resolves: Option<Uuid>, version: String) {
        let Some(id) = resolves else { return };
        if self.conflicts.iter().any(|w| w.record.id == id && w.record.resolved.is_some()) {
            return;
        }
        let latest = self.conflicts.iter().rev().find(|w| w.record.id == id).map(|w| w.record.clone());
        if let Some(mut record) = latest.or_else(|| self.facts.record(&id).cloned())
            && record.resolved.is_none()
        {
            record.resolved = Some(resolution(self, Some(id), version));
            self.write_record(record, false, None);
        }
    }

    /// After a document changed: open or extend a record for every conflicted property,
    /// resolve the open records whose property is no longer conflicted.
    pub fn track_doc(&mut self, k: &DocKey, document: &Automerge, resolves: Option<Uuid>) {
        let mut conflicted = BTreeSet::new();
        for c in doc::conflicts(document) {
            conflicted.insert(Json::Array(c.path.clone()).to_string());
            self.record_doc_conflict(k, c);
        }
        for mut record in self.open_doc_records(k) {
            let Some(path) = record.path.clone() else { continue };
            let still_open = self
                .open_records
                .get(&open_key(&k.0, &k.1, Some(&path)))
                .map(|r| r.as_ref().map(|r| r.id) == Some(record.id))
                .unwrap_or(true);
            if conflicted.contains(&Json::Array(path.clone()).to_string()) || !still_open {
                continue;
            }
            let version = current_op_id(document, &path).unwrap_or_default();
            record.resolved = Some(resolution(self, resolves, version));
            self.write_record(record, false, None);
        }
        if resolves.is_some() {
            self.resolve_named(resolves, String::new());
        }
    }

    fn record_doc_conflict(&mut self, k: &DocKey, c: doc::DocConflict) {
        let open = self.open_record(k, Some(&c.path));
        let mut record = open.clone().unwrap_or_else(|| new_record(self, k, Some(c.path.clone()), Rule::Automerge));
        let versions: Vec<CompetingVersion> = c
            .versions
            .iter()
            .map(|v| CompetingVersion {
                id: v.id.clone(),
                value: v.value.clone(),
                encoding: "json".into(),
                deleted: false,
                origin: v.origin.clone(),
                hlc: v.hlc,
            })
            .collect();
        let before = record.versions.len();
        record.absorb(versions);
        let changed = open.is_none() || record.versions.len() != before || record.winner != c.winner;
        record.winner = c.winner;
        if changed {
            self.write_record(record, true, open.map(|r| r.id));
        }
    }

    /// The document's open records: the stored ones, and those this step opened.
    fn open_doc_records(&self, k: &DocKey) -> Vec<ConflictRecord> {
        let mut out: Vec<ConflictRecord> = self.facts.doc(k).open.clone();
        for w in &self.conflicts {
            let r = &w.record;
            if w.open && r.bucket == k.0 && r.key == k.1 && r.path.is_some() && !out.iter().any(|x| x.id == r.id) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// The operation id of the value at `path` now.
fn current_op_id(document: &Automerge, path: &[Json]) -> Option<String> {
    use automerge::ReadDoc;
    let mut obj = automerge::ROOT;
    let mut last = None;
    for elem in path {
        let prop = match elem {
            Json::String(k) => automerge::Prop::Map(k.clone()),
            other => automerge::Prop::Seq(other.as_u64()? as usize),
        };
        let (_, id) = document.get(&obj, prop).ok()??;
        last = Some(id.to_string());
        obj = id;
    }
    last
}
