//! Automerge documents: the operations the API accepts and the JSON view it returns.
//!
//! Operations (`{"ops": [...]}`) apply atomically: all in one Automerge transaction,
//! or none (any failure rolls the transaction back and names the failing op).
//!
//! | op | does |
//! |---|---|
//! | `set path value` | put a JSON value (objects become maps, arrays lists); missing parent maps are created |
//! | `inc path by` | increment a counter; an absent property becomes a counter at 0 first |
//! | `insert path value` | insert into a list at the last path element (an index); an absent list is created for index 0 |
//! | `splice path pos del text` | edit a text object (positions in Unicode code points); an absent property becomes empty text first |
//! | `del path` | delete a map property or a list element |
//!
//! The JSON view: maps are objects, lists arrays, text a string, counters and integers
//! numbers, bytes a base64 string, timestamps milliseconds.

use automerge::transaction::{Transactable, Transaction};
use automerge::{
    ActorId, Automerge, Change, LoadOptions, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, TextEncoding, Value,
};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Number, Value as Json};

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum DocOp {
    Set {
        path: Vec<PathElem>,
        value: Json,
    },
    Inc {
        path: Vec<PathElem>,
        by: i64,
    },
    Insert {
        path: Vec<PathElem>,
        value: Json,
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

pub fn load_doc(bytes: &[u8]) -> CoreResult<Automerge> {
    Automerge::load_with_options(bytes, LoadOptions::new().text_encoding(TextEncoding::UnicodeCodePoint))
        .map_err(|e| CoreError::Corrupt(format!("automerge document: {e}")))
}

/// Apply `ops` as one change by `actor`. Returns the change, or `None` when the ops
/// changed nothing. On error the document is unchanged.
pub fn apply_ops(doc: &mut Automerge, actor: &[u8], ops: &[DocOp]) -> CoreResult<Option<Change>> {
    doc.set_actor(ActorId::from(actor));
    let mut tx = doc.transaction();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = apply_op(&mut tx, op) {
            tx.rollback();
            return Err(CoreError::InvalidOp(format!("op {i}: {e}")));
        }
    }
    let (hash, _) = tx.commit();
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
        DocOp::Set { path, value } => {
            let (parent, last) = split_path(path)?;
            let obj = resolve(tx, parent, true)?;
            set_value(tx, &obj, last, value, 0)
        }
        DocOp::Inc { path, by } => {
            let (parent, last) = split_path(path)?;
            let obj = resolve(tx, parent, true)?;
            let prop = map_key(last)?;
            match tx.get(&obj, prop).map_err(am)? {
                None => tx.put(&obj, prop, ScalarValue::counter(0)).map_err(am)?,
                Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {}
                Some(_) => return Err("inc: the property is not a counter".into()),
            }
            tx.increment(&obj, prop, *by).map_err(am)
        }
        DocOp::Insert { path, value } => {
            let (parent, last) = split_path(path)?;
            let PathElem::Index(i) = last else {
                return Err("insert: the last path element must be an index".into());
            };
            let list = list_at(tx, parent, *i == 0)?;
            if index(*i) > tx.length(&list) {
                return Err(format!("insert: index {i} is past the end of the list ({})", tx.length(&list)));
            }
            insert_value(tx, &list, index(*i), value, 0)
        }
        DocOp::Splice { path, pos, del, text } => {
            let (parent, last) = split_path(path)?;
            let obj = resolve(tx, parent, true)?;
            let text_obj = match tx.get(&obj, prop_of(last)).map_err(am)? {
                Some((Value::Object(ObjType::Text), id)) => id,
                None => match last {
                    PathElem::Key(k) => tx.put_object(&obj, k.as_str(), ObjType::Text).map_err(am)?,
                    PathElem::Index(_) => return Err("splice: no text at that index".into()),
                },
                Some(_) => return Err("splice: the property is not text".into()),
            };
            let len = tx.length(&text_obj) as u64;
            if pos.checked_add(*del).is_none_or(|end| end > len) {
                return Err(format!("splice: pos {pos} + del {del} is past the end of the text ({len})"));
            }
            let del = isize::try_from(*del).map_err(|_| "splice: del too large".to_string())?;
            tx.splice_text(&text_obj, index(*pos), del, text).map_err(am)
        }
        DocOp::Del { path } => {
            let (parent, last) = split_path(path)?;
            let obj = resolve(tx, parent, false)?;
            if tx.get(&obj, prop_of(last)).map_err(am)?.is_none() {
                return Err("del: nothing at that path".into());
            }
            tx.delete(&obj, prop_of(last)).map_err(am)
        }
    }
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

fn scalar(value: &Json) -> Option<ScalarValue> {
    Some(match value {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, Some(f)) => ScalarValue::F64(f),
            _ => return None,
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => return None,
    })
}

fn set_value(tx: &mut Transaction<'_>, obj: &ObjId, at: &PathElem, value: &Json, depth: usize) -> OpResult<()> {
    if depth > PATH_DEPTH_MAX {
        return Err(format!("value nested deeper than {PATH_DEPTH_MAX}"));
    }
    if let PathElem::Index(i) = at
        && index(*i) >= tx.length(obj)
    {
        return Err(format!("set: index {i} is past the end of the list"));
    }
    let prop = prop_of(at);
    if let Some(s) = scalar(value) {
        return tx.put(obj, prop, s).map_err(am);
    }
    let child = match value {
        Json::Array(_) => tx.put_object(obj, prop, ObjType::List).map_err(am)?,
        _ => tx.put_object(obj, prop, ObjType::Map).map_err(am)?,
    };
    fill(tx, &child, value, depth + 1)
}

fn insert_value(tx: &mut Transaction<'_>, list: &ObjId, i: usize, value: &Json, depth: usize) -> OpResult<()> {
    if depth > PATH_DEPTH_MAX {
        return Err(format!("value nested deeper than {PATH_DEPTH_MAX}"));
    }
    if let Some(s) = scalar(value) {
        return tx.insert(list, i, s).map_err(am);
    }
    let child = match value {
        Json::Array(_) => tx.insert_object(list, i, ObjType::List).map_err(am)?,
        _ => tx.insert_object(list, i, ObjType::Map).map_err(am)?,
    };
    fill(tx, &child, value, depth + 1)
}

fn fill(tx: &mut Transaction<'_>, obj: &ObjId, value: &Json, depth: usize) -> OpResult<()> {
    match value {
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                insert_value(tx, obj, i, item, depth)?;
            }
        }
        Json::Object(map) => {
            for (k, v) in map {
                set_value(tx, obj, &PathElem::Key(k.clone()), v, depth)?;
            }
        }
        _ => unreachable!("fill is called for objects and arrays only"),
    }
    Ok(())
}

/// The document as JSON.
pub fn to_json(doc: &Automerge) -> Json {
    object_json(doc, &ROOT)
}

fn object_json(doc: &Automerge, obj: &ObjId) -> Json {
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

fn scalar_json(s: &ScalarValue) -> Json {
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

#[cfg(test)]
mod tests;
