//! Writing a restored state's values back into the live deployment: what a restored
//! store holds for a bucket, and which writes bring the live state back to it, decided
//! without I/O (the binary sends them, as ordinary new writes).
//!
//! For a key, the value the restored state holds is written when the live state lacks
//! it (deleted, or never there) or holds other bytes; a key the restored state does not
//! hold is left alone (it was written after the point; deleting it is the operator's
//! call). For a document, [`doc_ops`] gives the operations that put back every
//! property the restored document holds and the live one lacks or holds otherwise:
//! maps are compared property by property, a counter is moved by `inc` (so it stays a
//! counter), anything else (a scalar, a list, a text) is `set` whole. Properties only
//! the live document has are left alone. With `missing_only`, only what the live state
//! lacks is written (a value changed since the point is kept). Limits: a list is replaced whole (concurrent
//! edits to it are overwritten), and a counter inside a list comes back as a number.

use automerge::{Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use concord_core::merkle::{EntriesRequest, LEAVES, Table};
use concord_storage::{StorageResult, Store, record_key};
use serde_json::{Map, Value as Json, json};

/// The value `bucket`/`key` holds in `store`: `None` when absent or deleted.
pub fn value_at(store: &Store, bucket: &str, key: &str) -> StorageResult<Option<Vec<u8>>> {
    Ok(store.get_kv(bucket, key)?.and_then(|r| r.winner().value.clone()))
}

/// Whether the live value (`None`: absent or deleted) must be written back to `point`
/// (with `missing_only`, only when it is absent).
pub fn kv_differs(point: &[u8], live: Option<&[u8]>, missing_only: bool) -> bool {
    match live {
        None => true,
        Some(_) if missing_only => false,
        Some(live) => live != point,
    }
}

/// A page of documents: their keys and saved bytes, and whether more follow.
#[derive(Debug, Default)]
pub struct DocsPage {
    pub docs: Vec<(String, Vec<u8>)>,
    pub more: bool,
}

/// One page of the documents of `bucket` whose keys start with `prefix`, after `after`
/// (exclusive), about `bytes_max` bytes of them (at least one when any is left).
pub fn docs_page(
    store: &Store,
    bucket: &str,
    prefix: &str,
    after: Option<&str>,
    bytes_max: u64,
) -> StorageResult<DocsPage> {
    let Some(after) = after else {
        // Positions are exclusive: a document keyed exactly `prefix` is read apart.
        let mut page = DocsPage::default();
        if !prefix.is_empty()
            && let Some(bytes) = store.get_doc(bucket, prefix)?
        {
            page.docs.push((prefix.to_string(), bytes));
        }
        let rest = docs_page(store, bucket, prefix, Some(prefix), bytes_max)?;
        page.docs.extend(rest.docs);
        page.more = rest.more;
        return Ok(page);
    };
    let start = (Table::Docs, record_key(bucket, after));
    let req = EntriesRequest { leaves: (0..LEAVES).collect(), after: Some(start), bytes_max, with_applied: false };
    let entries = store.entries_in(&req)?;
    let wanted = record_key(bucket, prefix);
    let mut page = DocsPage::default();
    for e in entries.entries {
        if e.table != Table::Docs || !e.key.starts_with(&wanted) {
            return Ok(page);
        }
        let key = String::from_utf8_lossy(&e.key[bucket.len() + 1..]).into_owned();
        page.docs.push((key, e.value));
    }
    page.more = entries.next.is_some_and(|(t, _)| t == Table::Docs);
    Ok(page)
}

/// The operations that bring `live` (the live document as JSON; `None`: absent) back to
/// what `point` holds (see the module doc).
pub fn doc_ops(point: &Automerge, live: Option<&Json>, missing_only: bool) -> Vec<Json> {
    let Json::Object(p) = concord_core::doc::to_json(point) else { return Vec::new() };
    let mut walk = Walk { doc: point, missing_only, path: Vec::new(), ops: Vec::new() };
    walk.map(&automerge::ROOT, &p, live.and_then(Json::as_object));
    walk.ops
}

/// A walk over a restored document's maps, beside the live document's JSON.
struct Walk<'a> {
    doc: &'a Automerge,
    missing_only: bool,
    /// Where the walk is.
    path: Vec<Json>,
    ops: Vec<Json>,
}

impl Walk<'_> {
    fn map(&mut self, obj: &ObjId, point: &Map<String, Json>, live: Option<&Map<String, Json>>) {
        for (k, pv) in point {
            let lv = live.and_then(|m| m.get(k));
            self.path.push(Json::String(k.clone()));
            match (self.doc.get(obj, k.as_str()).ok().flatten(), pv, lv) {
                (
                    Some((Value::Object(ObjType::Map | ObjType::Table), child)),
                    Json::Object(pm),
                    Some(Json::Object(lm)),
                ) => {
                    self.map(&child, pm, Some(lm));
                }
                (Some((Value::Scalar(s), _)), _, _) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
                    self.counter(pv.as_i64().unwrap_or(0), lv);
                }
                _ if lv == Some(pv) || (self.missing_only && lv.is_some()) => {}
                _ => self.ops.push(json!({"op": "set", "path": self.path, "value": pv})),
            }
            self.path.pop();
        }
    }

    /// A counter moves by `inc`, so it stays one (`inc` on an absent property makes it).
    fn counter(&mut self, want: i64, live: Option<&Json>) {
        let by = match live.map(|l| (l, l.as_i64())) {
            None => want,
            Some(_) if self.missing_only => return,
            Some((_, Some(n))) => want - n,
            Some((_, None)) => {
                self.ops.push(json!({"op": "set", "path": self.path, "value": want}));
                return;
            }
        };
        if by != 0 {
            self.ops.push(json!({"op": "inc", "path": self.path, "by": by}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::doc::{apply_ops, new_doc, parse_ops};
    use concord_core::hlc::Hlc;

    fn doc(ops: &str) -> Automerge {
        let mut d = new_doc();
        let ops = parse_ops(format!("{{\"ops\":{ops}}}").as_bytes()).unwrap();
        apply_ops(&mut d, b"actor-1", Hlc { wall_ms: 1, logical: 0 }, &ops).unwrap();
        d
    }

    #[test]
    fn doc_ops_put_back_what_differs_and_keep_counters_counters() {
        let point = doc(
            r#"[{"op":"set","path":["owner"],"value":"alice"},{"op":"set","path":["items"],"value":{"apple":1,"pear":2}},
                {"op":"inc","path":["visits"],"by":5},{"op":"set","path":["tags"],"value":["a","b"]}]"#,
        );
        let live = json!({"owner": "mallory", "items": {"apple": 1}, "visits": 7, "tags": ["a", "b"], "new": true});
        let ops = doc_ops(&point, Some(&live), false);
        assert_eq!(
            ops,
            vec![
                json!({"op": "set", "path": ["items", "pear"], "value": 2}),
                json!({"op": "set", "path": ["owner"], "value": "alice"}),
                json!({"op": "inc", "path": ["visits"], "by": -2}),
            ]
        );
        let all = doc_ops(&point, None, false);
        assert_eq!(all.len(), 4, "a document gone live comes back whole: {all:?}");
        assert!(all.contains(&json!({"op": "inc", "path": ["visits"], "by": 5})));
        assert!(doc_ops(&point, Some(&concord_core::doc::to_json(&point)), false).is_empty(), "nothing differs");
        assert_eq!(
            doc_ops(&point, Some(&live), true),
            vec![json!({"op": "set", "path": ["items", "pear"], "value": 2})],
            "missing only: what the live document lacks"
        );
    }

    #[test]
    fn docs_pages_hold_exactly_the_bucket_and_prefix_asked() {
        let dir = std::env::temp_dir().join(format!("concord-docs-page-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let saved = doc(r#"[{"op":"set","path":["x"],"value":1}]"#).save();
        let mut batch = concord_storage::Batch::default();
        for (bucket, key) in [("a", "k1"), ("b", "j"), ("b", "k"), ("b", "k1"), ("b", "k2"), ("b", "l"), ("c", "k1")] {
            batch.docs.push(((bucket.to_string(), key.to_string()), saved.clone()));
        }
        store.commit(&batch).unwrap();
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            // One document per page (the smallest page): the paging itself is checked.
            let page = docs_page(&store, "b", "k", after.as_deref(), 1).unwrap();
            keys.extend(page.docs.iter().map(|(k, _)| k.clone()));
            match page.docs.last() {
                Some((k, _)) if page.more => after = Some(k.clone()),
                _ => break,
            }
        }
        assert_eq!(keys, ["k", "k1", "k2"]);
        let all = docs_page(&store, "b", "", None, u64::MAX).unwrap();
        assert_eq!(all.docs.len(), 5);
        assert!(!all.more);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kv_differs_when_live_lacks_or_changed_the_value() {
        assert!(kv_differs(b"v", None, false));
        assert!(kv_differs(b"v", Some(b"w"), false));
        assert!(!kv_differs(b"v", Some(b"v"), false));
        assert!(kv_differs(b"v", None, true));
        assert!(!kv_differs(b"v", Some(b"w"), true), "missing only: a changed value is kept");
    }
}
