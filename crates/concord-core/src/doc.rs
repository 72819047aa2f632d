//! Automerge documents: the operations the API accepts and the JSON view it returns.
//!
//! Operations (`{"ops": [...]}`) apply atomically: all in one Automerge transaction,
//! or none (any failure rolls the transaction back and names the failing op).
//!
//! | op | does |
//! |---|---|
//! | `set path value [immutable]` | put a JSON value (objects become maps, arrays lists, strings text); missing parent maps are created; whatever the property held is replaced |
//! | `inc path by` | increment a counter; an absent property becomes a counter at 0 first |
//! | `insert path value [immutable]` | insert into a list at the last path element (an index); an absent list is created for index 0 |
//! | `splice path pos del text` | edit a text object (positions in Unicode code points); an absent property becomes empty text first |
//! | `del path` | delete a map property or a list element |
//!
//! Strings are collaborative text, as in Automerge's JavaScript library: every JSON
//! string in a `set` or `insert` value, however deeply nested, becomes a text object
//! that `splice` can edit. With `"immutable": true` on the op, every string in its
//! value is written as an immutable string instead (a scalar: it is replaced whole,
//! never merged, and `splice` refuses it). A `set` of a string over text replaces the
//! text object, as assigning a string does in JavaScript: a concurrent `splice` into
//! the old object is lost, so edit text with `splice`, not by setting it again.
//!
//! The JSON view: maps are objects, lists arrays, text and immutable strings strings,
//! counters and integers numbers, bytes a base64 string, timestamps milliseconds.

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{
    ActorId, Automerge, Change, LoadOptions, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, TextEncoding, Value,
};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Number, Value as Json};

use crate::hlc::Hlc;
use crate::{CoreError, CoreResult};

/// Deepest path accepted, and deepest JSON value written.
pub const PATH_DEPTH_MAX: usize = 64;
/// Most ops in one request.
pub const OPS_MAX: usize = 1000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PathElem {
    Index(u64),
    Key(String),
}

/// One document op. `set` and `insert` come in two variants each, by what the strings
/// in their value become; `"immutable": true` in the JSON picks the `*Immutable` one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "WireOp")]
pub enum DocOp {
    /// Strings in `value` become text.
    Set {
        path: Vec<PathElem>,
        value: Json,
    },
    /// Strings in `value` become immutable strings.
    SetImmutable {
        path: Vec<PathElem>,
        value: Json,
    },
    Inc {
        path: Vec<PathElem>,
        by: i64,
    },
    /// Strings in `value` become text.
    Insert {
        path: Vec<PathElem>,
        value: Json,
    },
    /// Strings in `value` become immutable strings.
    InsertImmutable {
        path: Vec<PathElem>,
        value: Json,
    },
    Splice {
        path: Vec<PathElem>,
        pos: u64,
        del: u64,
        text: String,
    },
    Del {
        path: Vec<PathElem>,
    },
}

impl DocOp {
    /// Roughly how many bytes this op adds to an Automerge change: its path, its value
    /// or text, and a fixed overhead (for batch limits, not an exact size).
    pub fn bytes(&self) -> usize {
        let path_bytes = |path: &[PathElem]| -> usize {
            path.iter().map(|e| if let PathElem::Key(k) = e { k.len() } else { 8 }).sum()
        };
        64 + match self {
            DocOp::Set { path, value }
            | DocOp::SetImmutable { path, value }
            | DocOp::Insert { path, value }
            | DocOp::InsertImmutable { path, value } => path_bytes(path) + json_bytes(value),
            DocOp::Splice { path, text, .. } => path_bytes(path) + text.len(),
            DocOp::Inc { path, .. } | DocOp::Del { path } => path_bytes(path),
        }
    }
}

/// Roughly the encoded size of a JSON value (its text form, iteratively).
fn json_bytes(value: &Json) -> usize {
    let mut stack = vec![value];
    let mut bytes = 0;
    while let Some(v) = stack.pop() {
        bytes += match v {
            Json::Null | Json::Bool(_) => 4,
            Json::Number(_) => 8,
            Json::String(s) => s.len() + 2,
            Json::Array(items) => {
                stack.extend(items);
                2
            }
            Json::Object(map) => {
                stack.extend(map.values());
                map.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
        };
    }
    bytes
}

/// An op as JSON. Kept apart from [`DocOp`] so the flag stays a wire detail: code that
/// builds ops (conflict resolution, the simulation) names the variant it means.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum WireOp {
    Set {
        path: Vec<PathElem>,
        value: Json,
        #[serde(default)]
        immutable: bool,
    },
    Inc {
        path: Vec<PathElem>,
        by: i64,
    },
    Insert {
        path: Vec<PathElem>,
        value: Json,
        #[serde(default)]
        immutable: bool,
    },
    Splice {
        path: Vec<PathElem>,
        pos: u64,
        del: u64,
        #[serde(default)]
        text: String,
    },
    Del {
        path: Vec<PathElem>,
    },
}

impl From<WireOp> for DocOp {
    fn from(op: WireOp) -> Self {
        match op {
            WireOp::Set { path, value, immutable: false } => DocOp::Set { path, value },
            WireOp::Set { path, value, immutable: true } => DocOp::SetImmutable { path, value },
            WireOp::Inc { path, by } => DocOp::Inc { path, by },
            WireOp::Insert { path, value, immutable: false } => DocOp::Insert { path, value },
            WireOp::Insert { path, value, immutable: true } => DocOp::InsertImmutable { path, value },
            WireOp::Splice { path, pos, del, text } => DocOp::Splice { path, pos, del, text },
            WireOp::Del { path } => DocOp::Del { path },
        }
    }
}

/// What the JSON strings in a `set` or `insert` value become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strings {
    /// Text objects, which `splice` edits and concurrent edits merge into.
    Text,
    /// Scalar strings (`ScalarValue::Str`), replaced whole.
    Immutable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsRequest {
    ops: Vec<DocOp>,
}

/// Parse a request body `{"ops": [...]}`.
pub fn parse_ops(body: &[u8]) -> CoreResult<Vec<DocOp>> {
    let req: OpsRequest =
        serde_json::from_slice(body).map_err(|e| CoreError::InvalidOp(format!("request body: {e}")))?;
    if req.ops.is_empty() {
        return Err(CoreError::InvalidOp("ops is empty".into()));
    }
    if req.ops.len() > OPS_MAX {
        return Err(CoreError::InvalidOp(format!("{} ops; the limit is {OPS_MAX}", req.ops.len())));
    }
    Ok(req.ops)
}

pub fn new_doc() -> Automerge {
    Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint)
}

/// Load a saved document (from local state or a peer's snapshot): damaged bytes are
/// refused as [`CoreError::Corrupt`].
///
/// Bytes holding a chunk type Concord never writes are refused before Automerge parses
/// them: automerge 0.12 can take the machine's memory parsing a few bytes of those
/// (see `doc/chunks.rs`).
///
/// automerge 0.12 can panic on some damaged bytes instead of returning an error (an
/// `unwrap` in its column decoder, found by fuzzing: `crates/concord-fuzz`, target
/// `automerge_doc`). Loading builds a new document and touches nothing else, so such a
/// panic leaves no state behind: it is caught here and the bytes are refused like any
/// other corrupt document.
pub fn load_doc(bytes: &[u8]) -> CoreResult<Automerge> {
    chunks::check_saved(bytes)?;
    let load = || Automerge::load_with_options(bytes, LoadOptions::new().text_encoding(TextEncoding::UnicodeCodePoint));
    match std::panic::catch_unwind(load) {
        Ok(loaded) => loaded.map_err(|e| CoreError::Corrupt(format!("automerge document: {e}"))),
        Err(_) => Err(CoreError::Corrupt("automerge document: its decoder failed on damaged bytes".into())),
    }
}

/// Decode a document change from another replica, refusing damaged ones as
/// [`CoreError::Corrupt`].
///
/// automerge 0.12 decodes some damaged changes without error, then panics applying them,
/// or applies them and saves a document that no longer loads ("bad checksum"); found by
/// fuzzing (`crates/concord-fuzz`, targets `automerge_change` and `log_entry`). A change
/// Automerge encoded re-encodes to itself (the encoding is canonical): one whose ops,
/// expanded and encoded again, hash differently is damaged. Parsing it may panic too (an
/// `unwrap` of an object id's counter that does not fit a `u32`, in `types.rs`; found by
/// the `automerge_change` target in CI), and so may expanding it: both are caught and
/// refused the same way (they touch nothing but the change). Bytes
/// that are not one change chunk are refused before Automerge parses them: it can take
/// the machine's memory parsing a few bytes of another chunk type (see `doc/chunks.rs`).
pub fn decode_change(bytes: Vec<u8>) -> CoreResult<automerge::Change> {
    chunks::check_change(&bytes)?;
    let change = match std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| CoreError::Corrupt(format!("{e}")))?,
        Err(_) => return Err(CoreError::Corrupt("its decoder failed on damaged bytes".into())),
    };
    let again = std::panic::catch_unwind(|| automerge::Change::from(change.decode()).hash());
    match again {
        Ok(hash) if hash == change.hash() => Ok(change),
        Ok(_) => Err(CoreError::Corrupt("its ops do not encode back to it (a damaged change)".into())),
        Err(_) => Err(CoreError::Corrupt("its ops do not decode (a damaged change)".into())),
    }
}

/// Apply `ops` as one change by `actor`. Returns the change, or `None` when the ops
/// changed nothing. On error the document is unchanged.
///
/// The change carries the write's hybrid-logical-clock time in its message
/// (`hlc WALL.LOGICAL`), so the conflict log can show it for each competing value.
pub fn apply_ops(doc: &mut Automerge, actor: &[u8], hlc: Hlc, ops: &[DocOp]) -> CoreResult<Option<Change>> {
    doc.set_actor(ActorId::from(actor));
    let mut tx = doc.transaction();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = apply_op(&mut tx, op) {
            tx.rollback();
            return Err(CoreError::InvalidOp(format!("op {i}: {e}")));
        }
    }
    let options = CommitOptions::default()
        .with_message(format!("hlc {}.{}", hlc.wall_ms, hlc.logical))
        .with_time(i64::try_from(hlc.wall_ms / 1000).unwrap_or(i64::MAX));
    let (hash, _) = tx.commit_with(options);
    Ok(hash.and_then(|_| doc.get_last_local_change()))
}

type OpResult<T> = Result<T, String>;

fn split_path(path: &[PathElem]) -> OpResult<(&[PathElem], &PathElem)> {
    if path.len() > PATH_DEPTH_MAX {
        return Err(format!("path deeper than {PATH_DEPTH_MAX}"));
    }
    path.split_last().map(|(last, parent)| (parent, last)).ok_or_else(|| "path is empty".to_string())
}

fn am(e: automerge::AutomergeError) -> String {
    e.to_string()
}

fn index(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// Walk `path` from the root. With `create`, missing map properties become maps.
fn resolve(tx: &mut Transaction<'_>, path: &[PathElem], create: bool) -> OpResult<ObjId> {
    let mut obj = ROOT;
    for (depth, elem) in path.iter().enumerate() {
        let found = match elem {
            PathElem::Key(k) => tx.get(&obj, k.as_str()).map_err(am)?,
            PathElem::Index(i) => {
                if tx.object_type(&obj).map_err(am)? == ObjType::Map {
                    return Err(format!("path element {depth} is an index into a map"));
                }
                tx.get(&obj, index(*i)).map_err(am)?
            }
        };
        obj = match (found, elem) {
            (Some((Value::Object(_), id)), _) => id,
            (Some((Value::Scalar(_), _)), _) => {
                return Err(format!("path element {depth} is not an object"));
            }
            (None, PathElem::Key(k)) if create => tx.put_object(&obj, k.as_str(), ObjType::Map).map_err(am)?,
            (None, _) => return Err(format!("path element {depth} does not exist")),
        };
    }
    Ok(obj)
}

fn apply_op(tx: &mut Transaction<'_>, op: &DocOp) -> OpResult<()> {
    match op {
        DocOp::Set { path, value } => set(tx, path, value, Strings::Text),
        DocOp::SetImmutable { path, value } => set(tx, path, value, Strings::Immutable),
        DocOp::Inc { path, by } => inc(tx, path, *by),
        DocOp::Insert { path, value } => insert(tx, path, value, Strings::Text),
        DocOp::InsertImmutable { path, value } => insert(tx, path, value, Strings::Immutable),
        DocOp::Splice { path, pos, del, text } => splice(tx, path, *pos, *del, text),
        DocOp::Del { path } => del(tx, path),
    }
}

fn set(tx: &mut Transaction<'_>, path: &[PathElem], value: &Json, strings: Strings) -> OpResult<()> {
    let (parent, last) = split_path(path)?;
    let obj = resolve(tx, parent, true)?;
    set_value(tx, &obj, last, value, strings, 0)
}

fn inc(tx: &mut Transaction<'_>, path: &[PathElem], by: i64) -> OpResult<()> {
    let (parent, last) = split_path(path)?;
    let obj = resolve(tx, parent, true)?;
    let prop = map_key(last)?;
    match tx.get(&obj, prop).map_err(am)? {
        None => tx.put(&obj, prop, ScalarValue::counter(0)).map_err(am)?,
        Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {}
        Some(_) => return Err("inc: the property is not a counter".into()),
    }
    tx.increment(&obj, prop, by).map_err(am)
}

fn insert(tx: &mut Transaction<'_>, path: &[PathElem], value: &Json, strings: Strings) -> OpResult<()> {
    let (parent, last) = split_path(path)?;
    let PathElem::Index(i) = last else {
        return Err("insert: the last path element must be an index".into());
    };
    let list = list_at(tx, parent, *i == 0)?;
    if index(*i) > tx.length(&list) {
        return Err(format!("insert: index {i} is past the end of the list ({})", tx.length(&list)));
    }
    insert_value(tx, &list, index(*i), value, strings, 0)
}

fn splice(tx: &mut Transaction<'_>, path: &[PathElem], pos: u64, del: u64, text: &str) -> OpResult<()> {
    let (parent, last) = split_path(path)?;
    let obj = resolve(tx, parent, true)?;
    let text_obj = match tx.get(&obj, prop_of(last)).map_err(am)? {
        Some((Value::Object(ObjType::Text), id)) => id,
        None => match last {
            PathElem::Key(k) => tx.put_object(&obj, k.as_str(), ObjType::Text).map_err(am)?,
            PathElem::Index(_) => return Err("splice: no text at that index".into()),
        },
        Some((Value::Scalar(s), _)) if s.is_str() => {
            return Err("splice: the property is an immutable string, which is replaced whole, not edited; \
                        to make it text, set it again without \"immutable\": true"
                .into());
        }
        Some(_) => return Err("splice: the property is not text".into()),
    };
    // Lengths and positions count Unicode code points (`new_doc` and `load_doc`).
    let len = tx.length(&text_obj) as u64;
    if pos.checked_add(del).is_none_or(|end| end > len) {
        return Err(format!("splice: pos {pos} + del {del} is past the end of the text ({len})"));
    }
    let del = isize::try_from(del).map_err(|_| "splice: del too large".to_string())?;
    tx.splice_text(&text_obj, index(pos), del, text).map_err(am)
}

fn del(tx: &mut Transaction<'_>, path: &[PathElem]) -> OpResult<()> {
    let (parent, last) = split_path(path)?;
    let obj = resolve(tx, parent, false)?;
    if tx.get(&obj, prop_of(last)).map_err(am)?.is_none() {
        return Err("del: nothing at that path".into());
    }
    tx.delete(&obj, prop_of(last)).map_err(am)
}

fn map_key(elem: &PathElem) -> OpResult<&str> {
    match elem {
        PathElem::Key(k) => Ok(k.as_str()),
        PathElem::Index(_) => Err("expected a property name, not an index".into()),
    }
}

fn prop_of(elem: &PathElem) -> automerge::Prop {
    match elem {
        PathElem::Key(k) => automerge::Prop::Map(k.clone()),
        PathElem::Index(i) => automerge::Prop::Seq(index(*i)),
    }
}

fn list_at(tx: &mut Transaction<'_>, path: &[PathElem], create: bool) -> OpResult<ObjId> {
    let (parent, last) = split_path(path)?;
    let obj = resolve(tx, parent, true)?;
    match tx.get(&obj, prop_of(last)).map_err(am)? {
        Some((Value::Object(ObjType::List), id)) => Ok(id),
        Some(_) => Err("insert: the target is not a list".into()),
        None if create => match last {
            PathElem::Key(k) => tx.put_object(&obj, k.as_str(), ObjType::List).map_err(am),
            PathElem::Index(_) => Err("insert: no list at that index".into()),
        },
        None => Err("insert: no list at that path".into()),
    }
}

/// The scalar `value` is written as, or `None` when it becomes an object.
fn scalar(value: &Json, strings: Strings) -> Option<ScalarValue> {
    Some(match value {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, Some(f)) => ScalarValue::F64(f),
            _ => return None,
        },
        Json::String(s) if strings == Strings::Immutable => ScalarValue::Str(s.as_str().into()),
        Json::String(_) | Json::Array(_) | Json::Object(_) => return None,
    })
}

/// The object a non-scalar `value` is written as.
fn object_type(value: &Json) -> ObjType {
    match value {
        Json::String(_) => ObjType::Text,
        Json::Array(_) => ObjType::List,
        _ => ObjType::Map,
    }
}

fn set_value(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    at: &PathElem,
    value: &Json,
    strings: Strings,
    depth: usize,
) -> OpResult<()> {
    if depth > PATH_DEPTH_MAX {
        return Err(format!("value nested deeper than {PATH_DEPTH_MAX}"));
    }
    if let PathElem::Index(i) = at
        && index(*i) >= tx.length(obj)
    {
        return Err(format!("set: index {i} is past the end of the list"));
    }
    let prop = prop_of(at);
    if let Some(s) = scalar(value, strings) {
        return tx.put(obj, prop, s).map_err(am);
    }
    let child = tx.put_object(obj, prop, object_type(value)).map_err(am)?;
    fill(tx, &child, value, strings, depth + 1)
}

fn insert_value(
    tx: &mut Transaction<'_>,
    list: &ObjId,
    i: usize,
    value: &Json,
    strings: Strings,
    depth: usize,
) -> OpResult<()> {
    if depth > PATH_DEPTH_MAX {
        return Err(format!("value nested deeper than {PATH_DEPTH_MAX}"));
    }
    if let Some(s) = scalar(value, strings) {
        return tx.insert(list, i, s).map_err(am);
    }
    let child = tx.insert_object(list, i, object_type(value)).map_err(am)?;
    fill(tx, &child, value, strings, depth + 1)
}

/// Write the contents of `value` into the new, empty object `obj` made for it.
fn fill(tx: &mut Transaction<'_>, obj: &ObjId, value: &Json, strings: Strings, depth: usize) -> OpResult<()> {
    match value {
        Json::String(text) => tx.splice_text(obj, 0, 0, text).map_err(am)?,
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                insert_value(tx, obj, i, item, strings, depth)?;
            }
        }
        Json::Object(map) => {
            for (k, v) in map {
                set_value(tx, obj, &PathElem::Key(k.clone()), v, strings, depth)?;
            }
        }
        _ => unreachable!("fill is called for the values `scalar` leaves to objects"),
    }
    Ok(())
}

/// The document as JSON.
pub fn to_json(doc: &Automerge) -> Json {
    object_json(doc, &ROOT)
}

pub(crate) fn object_json(doc: &Automerge, obj: &ObjId) -> Json {
    match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => {
            let mut out = Map::new();
            for item in doc.map_range(obj, ..) {
                let id = item.id();
                out.insert(item.key.to_string(), value_json(doc, item.value, id));
            }
            Json::Object(out)
        }
        Ok(ObjType::List) => Json::Array(
            doc.list_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    value_json(doc, item.value, id)
                })
                .collect(),
        ),
        Ok(ObjType::Text) => Json::String(doc.text(obj).unwrap_or_default()),
        Err(_) => Json::Null,
    }
}

fn value_json(doc: &Automerge, value: automerge::ValueRef<'_>, id: ObjId) -> Json {
    match value.into_value() {
        Value::Object(_) => object_json(doc, &id),
        Value::Scalar(s) => scalar_json(&s),
    }
}

pub(crate) fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::Number((*i).into()),
        ScalarValue::Uint(u) => Json::Number((*u).into()),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::Number(i64::from(c).into()),
        ScalarValue::Timestamp(t) => Json::Number((*t).into()),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

pub mod chunks;
mod conflicts;
pub use conflicts::{DocConflict, DocVersion, conflicts};

#[cfg(test)]
mod tests;
