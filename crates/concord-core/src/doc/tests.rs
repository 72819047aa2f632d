use super::*;
use crate::hlc::Hlc;
use serde_json::json;

fn ops(v: Json) -> Vec<DocOp> {
    parse_ops(serde_json::to_vec(&json!({ "ops": v })).unwrap().as_slice()).unwrap()
}

fn apply(doc: &mut Automerge, v: Json) -> CoreResult<Option<Change>> {
    apply_ops(doc, b"us-east.1", Hlc::ZERO, &ops(v))
}

#[test]
fn nested_maps_counters_lists_and_text_read_back_as_json() {
    let mut doc = new_doc();
    apply(
        &mut doc,
        json!([
            {"op": "set", "path": ["user", "name"], "value": "ada"},
            {"op": "set", "path": ["user", "tags"], "value": ["a", {"deep": [1, 2.5, null, true]}]},
            {"op": "inc", "path": ["stats", "visits"], "by": 5},
            {"op": "inc", "path": ["stats", "visits"], "by": -2},
            {"op": "insert", "path": ["items", 0], "value": "first"},
            {"op": "insert", "path": ["items", 1], "value": "third"},
            {"op": "insert", "path": ["items", 1], "value": {"second": 2}},
            {"op": "splice", "path": ["note"], "pos": 0, "del": 0, "text": "hello world"},
            {"op": "splice", "path": ["note"], "pos": 6, "del": 5, "text": "Wörld"},
            {"op": "set", "path": ["gone"], "value": 1},
            {"op": "del", "path": ["gone"]},
        ]),
    )
    .unwrap()
    .expect("a change");
    let expected = json!({
        "user": {"name": "ada", "tags": ["a", {"deep": [1, 2.5, null, true]}]},
        "stats": {"visits": 3},
        "items": ["first", {"second": 2}, "third"],
        "note": "hello Wörld",
    });
    assert_eq!(to_json(&doc), expected);
    let reloaded = load_doc(&doc.save()).unwrap();
    assert_eq!(to_json(&reloaded), expected);
}

#[test]
fn a_failing_op_leaves_the_document_untouched() {
    let mut doc = new_doc();
    apply(&mut doc, json!([{"op": "set", "path": ["a"], "value": 1}])).unwrap();
    let before = doc.save();
    for bad in [
        json!([{"op": "set", "path": ["b"], "value": 2}, {"op": "inc", "path": ["a"], "by": 1}]),
        json!([{"op": "insert", "path": ["list", 3], "value": 1}]),
        json!([{"op": "splice", "path": ["a"], "pos": 0, "del": 0, "text": "x"}]),
        json!([{"op": "splice", "path": ["t"], "pos": 2, "del": 0, "text": "x"}]),
        json!([{"op": "del", "path": ["nothing"]}]),
        json!([{"op": "set", "path": ["a", "b"], "value": 1}]),
        json!([{"op": "set", "path": [], "value": 1}]),
    ] {
        let err = apply(&mut doc, bad.clone()).unwrap_err();
        assert!(matches!(err, CoreError::InvalidOp(_)), "{bad}: {err}");
        assert_eq!(doc.save(), before, "{bad} changed the document");
    }
}

#[test]
fn malformed_requests_are_refused() {
    for body in [
        &b"not json"[..],
        br#"{"ops": []}"#,
        br#"{"ops": [{"op": "frobnicate", "path": ["a"]}]}"#,
        br#"{"ops": [{"op": "inc", "path": ["a"]}]}"#,
        br#"{"ops": [{"op": "set", "path": [true], "value": 1}]}"#,
        br#"{"ops": [{"op": "set", "path": ["a"], "value": 1, "extra": 1}]}"#,
        br#"{"ops": [{"op": "set", "path": [-1], "value": 1}]}"#,
    ] {
        assert!(parse_ops(body).is_err(), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn concurrent_increments_sum_and_text_edits_interleave() {
    let mut base = new_doc();
    apply_ops(
        &mut base,
        b"us-east.1",
        Hlc::ZERO,
        &ops(json!([
            {"op": "inc", "path": ["n"], "by": 0},
            {"op": "splice", "path": ["t"], "pos": 0, "del": 0, "text": "ac"},
        ])),
    )
    .unwrap();
    let mut a = base.fork();
    let mut b = base.fork();
    let ca = apply_ops(
        &mut a,
        b"us-east.1",
        Hlc::ZERO,
        &ops(json!([{"op": "inc", "path": ["n"], "by": 2},
        {"op": "splice", "path": ["t"], "pos": 1, "del": 0, "text": "b"}])),
    )
    .unwrap()
    .unwrap();
    let cb = apply_ops(
        &mut b,
        b"eu-west.1",
        Hlc::ZERO,
        &ops(json!([{"op": "inc", "path": ["n"], "by": 3},
        {"op": "splice", "path": ["t"], "pos": 2, "del": 0, "text": "d"}])),
    )
    .unwrap()
    .unwrap();
    a.apply_changes([cb.clone()]).unwrap();
    b.apply_changes([ca.clone()]).unwrap();
    // Applying twice is a no-op.
    b.apply_changes([ca]).unwrap();
    assert_eq!(to_json(&a), json!({"n": 5, "t": "abcd"}));
    assert_eq!(to_json(&a), to_json(&b));
    // Same change set. (Not the same `save()` bytes: those depend on the saving
    // replica's own actor, so convergence of documents is compared by heads.)
    let (mut ha, mut hb) = (a.get_heads(), b.get_heads());
    ha.sort();
    hb.sort();
    assert_eq!(ha, hb);
}

#[test]
fn no_op_requests_make_no_change() {
    let mut doc = new_doc();
    apply(&mut doc, json!([{"op": "set", "path": ["a"], "value": 1}])).unwrap();
    let n = doc.get_changes(&[]).len();
    let change = apply(&mut doc, json!([{"op": "splice", "path": ["t"], "pos": 0, "del": 0, "text": ""}])).unwrap();
    // Creating the empty text object is a change; splicing nothing into it again is not.
    assert!(change.is_some());
    let again = apply(&mut doc, json!([{"op": "splice", "path": ["t"], "pos": 0, "del": 0, "text": ""}])).unwrap();
    assert!(again.is_none());
    assert_eq!(doc.get_changes(&[]).len(), n + 1);
}

#[test]
fn concurrent_property_writes_are_reported_as_conflicts() {
    let mut base = new_doc();
    apply_ops(
        &mut base,
        b"us-east.1",
        Hlc::ZERO,
        &ops(json!([{"op": "set", "path": ["cfg", "mode"], "value": "a"}, {"op": "inc", "path": ["n"], "by": 0}])),
    )
    .unwrap();
    let mut x = base.fork();
    let mut y = base.fork();
    let cx = apply_ops(
        &mut x,
        b"us-east.1",
        Hlc { wall_ms: 10, logical: 0 },
        &ops(json!([{"op": "set", "path": ["cfg", "mode"], "value": "x"}, {"op": "inc", "path": ["n"], "by": 1}])),
    )
    .unwrap()
    .unwrap();
    let cy = apply_ops(&mut y, b"eu-west.1", Hlc { wall_ms: 11, logical: 2 }, &ops(json!([{"op": "set", "path": ["cfg", "mode"], "value": {"deep": true}}, {"op": "inc", "path": ["n"], "by": 1}]))).unwrap().unwrap();
    x.apply_changes([cy]).unwrap();
    y.apply_changes([cx]).unwrap();
    let found = conflicts(&x);
    assert_eq!(found, conflicts(&y));
    // Counters merge by sum: only the concurrently set property is a conflict.
    assert_eq!(found.len(), 1, "{found:?}");
    let c = &found[0];
    assert_eq!(c.path, vec![json!("cfg"), json!("mode")]);
    let mut values: Vec<(String, Json, Hlc)> =
        c.versions.iter().map(|v| (v.origin.clone(), v.value.clone(), v.hlc)).collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        vec![
            ("eu-west.1".to_string(), json!({"deep": true}), Hlc { wall_ms: 11, logical: 2 }),
            ("us-east.1".to_string(), json!("x"), Hlc { wall_ms: 10, logical: 0 }),
        ]
    );
    assert!(c.versions.iter().any(|v| v.id == c.winner));
    assert_eq!(to_json(&x)["n"], 2);
}
