//! Keeping the conflict log: every merge that leaves concurrent versions opens (or
//! extends) a record; the write that supersedes them resolves it.
//!
//! Records are kept per replica, in the same transaction as the state change that
//! caused them (via the step's [`Overlay`]). Their ids converge across regions (see
//! `concord_core::conflict`), so every region that saw the competing versions holds the
//! same record. A region that never held two of the versions at once (it received the
//! superseding write first) has no record: the versions were history there.

use std::collections::HashSet;

use automerge::Automerge;
use chrono::Utc;
use concord_core::conflict::{CompetingVersion, ConflictRecord, Resolution, Rule};
use concord_core::doc;
use concord_core::lww::{Register, Version};
use concord_storage::{ConflictWrite, Store, open_key};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::error::NodeError;
use crate::replica::Overlay;

/// The open record of `bucket/key` (and `path`), as this step sees it.
fn open_record(
    store: &Store,
    overlay: &mut Overlay,
    bucket: &str,
    key: &str,
    path: Option<&[Json]>,
) -> Result<Option<ConflictRecord>, NodeError> {
    let k = open_key(bucket, key, path);
    if let Some(cached) = overlay.open_records.get(&k) {
        return Ok(cached.clone());
    }
    let found = store.open_conflict(bucket, key, path)?;
    overlay.open_records.insert(k, found.clone());
    Ok(found)
}

fn write(overlay: &mut Overlay, record: ConflictRecord, open: bool, replaces: Option<Uuid>) {
    let k = open_key(&record.bucket, &record.key, record.path.as_deref());
    overlay.open_records.insert(k, open.then(|| record.clone()));
    overlay.conflict_writes.push(ConflictWrite { record, open, replaces });
}

fn new_record(bucket: &str, key: &str, path: Option<Vec<Json>>, region: &str, rule: Rule) -> ConflictRecord {
    ConflictRecord {
        id: Uuid::nil(),
        bucket: bucket.into(),
        key: key.into(),
        path,
        detected_at: Utc::now(),
        detected_by: region.into(),
        rule,
        winner: String::new(),
        versions: Vec::new(),
        cut: Vec::new(),
        resolved: None,
    }
}

fn resolution(resolves: Option<Uuid>, version: String, region: &str) -> Resolution {
    Resolution {
        by: if resolves.is_some() { "resolve" } else { "write" }.into(),
        version,
        at: Utc::now(),
        region: region.into(),
    }
}

/// After a version went into the register of `bucket/key`.
#[allow(clippy::too_many_arguments)]
pub fn track_lww(
    store: &Store,
    overlay: &mut Overlay,
    region: &str,
    bucket: &str,
    key: &str,
    after: &Register,
    cut: &[Version],
    resolves: Option<Uuid>,
    manual: bool,
) -> Result<(), NodeError> {
    let open = open_record(store, overlay, bucket, key, None)?;
    if after.is_conflicted() {
        let rule = if manual { Rule::Manual } else { Rule::LwwHlc };
        let mut record = open.clone().unwrap_or_else(|| new_record(bucket, key, None, region, rule));
        let old_id = open.as_ref().map(|r| r.id);
        let versions = after.versions().iter().chain(cut).map(CompetingVersion::from_lww).collect();
        record.absorb(versions);
        record.cut.extend(cut.iter().map(Version::id).filter(|id| !record.cut.contains(id)).collect::<Vec<_>>());
        record.winner = after.winner().id();
        record.resolved = None;
        write(overlay, record, true, old_id);
    } else if let Some(mut record) = open {
        record.resolved = Some(resolution(resolves, after.winner().id(), region));
        write(overlay, record, false, None);
    }
    resolve_named(store, overlay, resolves, after.winner().id(), region)
}

/// A resolving write names its record: mark it resolved even if this replica's open
/// record for the key has another id (it saw a different subset of the versions).
fn resolve_named(
    store: &Store,
    overlay: &mut Overlay,
    resolves: Option<Uuid>,
    version: String,
    region: &str,
) -> Result<(), NodeError> {
    let Some(id) = resolves else { return Ok(()) };
    if overlay.conflict_writes.iter().any(|w| w.record.id == id && w.record.resolved.is_some()) {
        return Ok(());
    }
    if let Some(mut record) = store.get_conflict(&id)?
        && record.resolved.is_none()
    {
        record.resolved = Some(resolution(Some(id), version, region));
        write(overlay, record, false, None);
    }
    Ok(())
}

/// After a document changed: open or extend a record for every conflicted property,
/// resolve the open records whose property is no longer conflicted.
pub fn track_doc(
    store: &Store,
    overlay: &mut Overlay,
    region: &str,
    bucket: &str,
    key: &str,
    document: &Automerge,
    resolves: Option<Uuid>,
) -> Result<(), NodeError> {
    let found = doc::conflicts(document);
    let mut conflicted = HashSet::new();
    for c in found {
        conflicted.insert(Json::Array(c.path.clone()).to_string());
        let open = open_record(store, overlay, bucket, key, Some(&c.path))?;
        let mut record =
            open.clone().unwrap_or_else(|| new_record(bucket, key, Some(c.path.clone()), region, Rule::Automerge));
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
        record.winner = c.winner.clone();
        if changed {
            write(overlay, record, true, open.map(|r| r.id));
        }
    }
    let mut open_now: Vec<ConflictRecord> = store.open_conflicts_of(bucket, key)?;
    // Records this step opened are in the overlay, not yet in the store.
    for w in &overlay.conflict_writes {
        if w.open && w.record.bucket == bucket && w.record.key == key && !open_now.iter().any(|r| r.id == w.record.id) {
            open_now.push(w.record.clone());
        }
    }
    for mut record in open_now {
        let Some(path) = record.path.clone() else { continue };
        let still_open = overlay
            .open_records
            .get(&open_key(bucket, key, Some(&path)))
            .map(|r| r.as_ref().map(|r| r.id) == Some(record.id))
            .unwrap_or(true);
        if conflicted.contains(&Json::Array(path.clone()).to_string()) || !still_open {
            continue;
        }
        let version = current_op_id(document, &path).unwrap_or_default();
        record.resolved = Some(resolution(resolves, version, region));
        write(overlay, record, false, None);
    }
    if let Some(id) = resolves {
        resolve_named(store, overlay, Some(id), String::new(), region)?;
    }
    Ok(())
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
