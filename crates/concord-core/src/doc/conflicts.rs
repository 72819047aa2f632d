//! The document conflict walk: every property that concurrent writes left with several
//! values, each value with the operation, origin and hybrid-logical-clock time that
//! wrote it (what the conflict log records for documents).

use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, Value};
use serde_json::Value as Json;

use super::{PATH_DEPTH_MAX, object_json, scalar_json};
use crate::hlc::Hlc;

/// One property that concurrent writes left with several values.
#[derive(Debug, Clone, PartialEq)]
pub struct DocConflict {
    /// From the root: property names and list indices.
    pub path: Vec<Json>,
    /// The operation id of the value reads see (Automerge's deterministic winner).
    pub winner: String,
    pub versions: Vec<DocVersion>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocVersion {
    /// The Automerge operation id (`counter@actor`).
    pub id: String,
    pub value: Json,
    /// The origin whose actor wrote it.
    pub origin: String,
    pub hlc: Hlc,
}

/// Every conflicted property of the document (walking the values reads see).
pub fn conflicts(doc: &Automerge) -> Vec<DocConflict> {
    let mut out = Vec::new();
    walk_conflicts(doc, &ROOT, &mut Vec::new(), &mut out, 0);
    out
}

fn walk_conflicts(doc: &Automerge, obj: &ObjId, path: &mut Vec<Json>, out: &mut Vec<DocConflict>, depth: usize) {
    if depth > PATH_DEPTH_MAX {
        return;
    }
    let mut children: Vec<(Json, ObjId, bool)> = Vec::new();
    match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => {
            for item in doc.map_range(obj, ..) {
                let id = item.id();
                children.push((Json::String(item.key.to_string()), id, item.conflict));
            }
        }
        Ok(ObjType::List) => {
            for item in doc.list_range(obj, ..) {
                let id = item.id();
                children.push((Json::from(item.index as u64), id, item.conflict));
            }
        }
        _ => return,
    }
    for (elem, id, conflicted) in children {
        let prop = match &elem {
            Json::String(k) => automerge::Prop::Map(k.clone()),
            other => automerge::Prop::Seq(other.as_u64().unwrap_or(0) as usize),
        };
        path.push(elem);
        if conflicted {
            out.push(property_conflict(doc, obj, prop, path));
        }
        if matches!(doc.object_type(&id), Ok(ObjType::Map | ObjType::Table | ObjType::List)) {
            walk_conflicts(doc, &id, path, out, depth + 1);
        }
        path.pop();
    }
}

fn property_conflict(doc: &Automerge, obj: &ObjId, prop: automerge::Prop, path: &[Json]) -> DocConflict {
    let winner = doc.get(obj, prop.clone()).ok().flatten().map(|(_, id)| id.to_string()).unwrap_or_default();
    let versions = doc
        .get_all(obj, prop)
        .unwrap_or_default()
        .into_iter()
        .map(|(value, id)| {
            let json = match &value {
                Value::Object(_) => object_json(doc, &id),
                Value::Scalar(s) => scalar_json(s),
            };
            DocVersion { id: id.to_string(), value: json, origin: op_origin(&id), hlc: op_hlc(doc, &id) }
        })
        .collect();
    DocConflict { path: path.to_vec(), winner, versions }
}

/// The origin of an operation: its actor is the origin's text (`Origin::actor_bytes`).
fn op_origin(id: &ObjId) -> String {
    let text = id.to_string();
    let hex = text.split_once('@').map(|(_, a)| a).unwrap_or("");
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    bytes.and_then(|b| String::from_utf8(b).ok()).unwrap_or_else(|| hex.to_string())
}

/// The HLC time of the change that made an operation (from its `hlc` message, else its
/// timestamp).
fn op_hlc(doc: &Automerge, id: &ObjId) -> Hlc {
    let change = doc.hash_for_opid(id).and_then(|h| doc.get_change_by_hash(&h));
    let parsed = change.as_ref().and_then(|c| c.message()).and_then(|m| m.strip_prefix("hlc ")).and_then(|t| {
        let (w, l) = t.split_once('.')?;
        Some(Hlc { wall_ms: w.parse().ok()?, logical: l.parse().ok()? })
    });
    // A change made outside Concord (a sync client's) has no HLC: its own timestamp,
    // when it has a plausible one (milliseconds up to the year 9999).
    let stamped = || {
        let ms = change.as_ref()?.timestamp();
        (1..=253_402_300_799_999).contains(&ms).then_some(Hlc { wall_ms: ms as u64, logical: 0 })
    };
    parsed.or_else(stamped).unwrap_or(Hlc::ZERO)
}
