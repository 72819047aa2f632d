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

/// What a map property of the root holds, as Automerge sees it.
fn root_value(doc: &Automerge, key: &str) -> (Value<'static>, ObjId) {
    let (value, id) = doc.get(ROOT, key).unwrap().expect("the property exists");
    (value.into_owned(), id)
}

fn assert_text(doc: &Automerge, key: &str) {
    let (value, _) = root_value(doc, key);
    assert_eq!(value, Value::Object(ObjType::Text), "{key}");
}

#[test]
fn a_set_string_is_text_that_splice_edits() {
    let mut doc = new_doc();
    apply(
        &mut doc,
        json!([
            {"op": "set", "path": ["note"], "value": ""},
            {"op": "set", "path": ["word"], "value": "abc"},
        ]),
    )
    .unwrap();
    assert_text(&doc, "note");
    assert_text(&doc, "word");
    apply(
        &mut doc,
        json!([
            {"op": "splice", "path": ["note"], "pos": 0, "del": 0, "text": "hi"},
            {"op": "splice", "path": ["word"], "pos": 1, "del": 1, "text": "ßé"},
        ]),
    )
    .unwrap();
    assert_eq!(to_json(&doc), json!({"note": "hi", "word": "aßéc"}));
    // Positions count code points: "ßé" is two, whatever its UTF-8 length.
    apply(&mut doc, json!([{"op": "splice", "path": ["word"], "pos": 3, "del": 1, "text": "!"}])).unwrap();
    assert_eq!(to_json(&doc)["word"], "aßé!");
}

#[test]
fn strings_nested_in_a_set_value_are_text() {
    let mut doc = new_doc();
    apply(&mut doc, json!([{"op": "set", "path": ["v"], "value": {"a": {"b": "xy"}, "l": ["p", {"q": "r"}], "n": 1}}]))
        .unwrap();
    apply(
        &mut doc,
        json!([
            {"op": "splice", "path": ["v", "a", "b"], "pos": 1, "del": 0, "text": "-"},
            {"op": "splice", "path": ["v", "l", 0], "pos": 1, "del": 0, "text": "q"},
            {"op": "splice", "path": ["v", "l", 1, "q"], "pos": 0, "del": 1, "text": "s"},
        ]),
    )
    .unwrap();
    assert_eq!(to_json(&doc), json!({"v": {"a": {"b": "x-y"}, "l": ["pq", {"q": "s"}], "n": 1}}));
}

#[test]
fn an_inserted_string_is_text() {
    let mut doc = new_doc();
    apply(
        &mut doc,
        json!([
            {"op": "insert", "path": ["items", 0], "value": "ab"},
            {"op": "insert", "path": ["items", 1], "value": ["cd"]},
        ]),
    )
    .unwrap();
    apply(
        &mut doc,
        json!([
            {"op": "splice", "path": ["items", 0], "pos": 2, "del": 0, "text": "c"},
            {"op": "splice", "path": ["items", 1, 0], "pos": 0, "del": 1, "text": ""},
        ]),
    )
    .unwrap();
    assert_eq!(to_json(&doc), json!({"items": ["abc", ["d"]]}));
}

#[test]
fn immutable_strings_are_scalars_that_splice_refuses() {
    let mut doc = new_doc();
    apply(
        &mut doc,
        json!([
            {"op": "set", "path": ["id"], "value": "abc", "immutable": true},
            {"op": "set", "path": ["nested"], "value": {"k": ["x", {"y": "z"}]}, "immutable": true},
            {"op": "insert", "path": ["tags", 0], "value": "t", "immutable": true},
            {"op": "set", "path": ["plain"], "value": "text", "immutable": false},
        ]),
    )
    .unwrap();
    let (id, _) = root_value(&doc, "id");
    assert_eq!(id, Value::Scalar(std::borrow::Cow::Owned(ScalarValue::Str("abc".into()))));
    assert_text(&doc, "plain");
    // The JSON view cannot tell them apart.
    assert_eq!(to_json(&doc), json!({"id": "abc", "nested": {"k": ["x", {"y": "z"}]}, "tags": ["t"], "plain": "text"}));
    let before = doc.save();
    for path in [json!(["id"]), json!(["nested", "k", 0]), json!(["nested", "k", 1, "y"]), json!(["tags", 0])] {
        let err =
            apply(&mut doc, json!([{"op": "splice", "path": path, "pos": 0, "del": 0, "text": "x"}])).unwrap_err();
        let CoreError::InvalidOp(message) = &err else { panic!("{path}: {err}") };
        assert!(message.contains("immutable string"), "{path}: {message}");
        assert!(message.contains("without \"immutable\": true"), "{path}: {message}");
    }
    assert_eq!(doc.save(), before);
    // Setting it again without the flag makes it text.
    apply(&mut doc, json!([{"op": "set", "path": ["id"], "value": "abc"}])).unwrap();
    apply(&mut doc, json!([{"op": "splice", "path": ["id"], "pos": 3, "del": 0, "text": "d"}])).unwrap();
    assert_eq!(to_json(&doc)["id"], "abcd");
}

#[test]
fn the_immutable_flag_is_an_optional_bool_on_set_and_insert() {
    let path = vec![PathElem::Key("a".into())];
    let value = json!("s");
    assert_eq!(
        ops(json!([
            {"op": "set", "path": ["a"], "value": "s"},
            {"op": "set", "path": ["a"], "value": "s", "immutable": false},
            {"op": "set", "path": ["a"], "value": "s", "immutable": true},
            {"op": "insert", "path": ["a"], "value": "s"},
            {"op": "insert", "path": ["a"], "value": "s", "immutable": true},
        ])),
        vec![
            DocOp::Set { path: path.clone(), value: value.clone() },
            DocOp::Set { path: path.clone(), value: value.clone() },
            DocOp::SetImmutable { path: path.clone(), value: value.clone() },
            DocOp::Insert { path: path.clone(), value: value.clone() },
            DocOp::InsertImmutable { path, value },
        ]
    );
    for body in [
        br#"{"ops": [{"op": "set", "path": ["a"], "value": "s", "immutable": "yes"}]}"#.as_slice(),
        br#"{"ops": [{"op": "set", "path": ["a"], "value": "s", "immutable": null}]}"#,
        br#"{"ops": [{"op": "inc", "path": ["a"], "by": 1, "immutable": true}]}"#,
        br#"{"ops": [{"op": "splice", "path": ["a"], "pos": 0, "del": 0, "immutable": true}]}"#,
        br#"{"ops": [{"op": "del", "path": ["a"], "immutable": false}]}"#,
    ] {
        assert!(parse_ops(body).is_err(), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn setting_a_string_over_text_replaces_the_text_object() {
    let mut doc = new_doc();
    apply(&mut doc, json!([{"op": "set", "path": ["t"], "value": "old"}])).unwrap();
    let (_, old) = root_value(&doc, "t");
    apply(&mut doc, json!([{"op": "set", "path": ["t"], "value": "new"}])).unwrap();
    let (_, new) = root_value(&doc, "t");
    assert_ne!(old, new, "a new text object");
    assert_text(&doc, "t");
    apply(&mut doc, json!([{"op": "splice", "path": ["t"], "pos": 0, "del": 1, "text": "k"}])).unwrap();
    assert_eq!(to_json(&doc), json!({"t": "kew"}));
    // Replacing is a write like any other: no conflict within one history.
    assert!(conflicts(&doc).is_empty());
}

#[test]
fn text_survives_save_and_load() {
    let mut doc = new_doc();
    apply(&mut doc, json!([{"op": "set", "path": ["t"], "value": {"body": "héllo"}}])).unwrap();
    let mut reloaded = load_doc(&doc.save()).unwrap();
    let (_, body_parent) = root_value(&reloaded, "t");
    let (body, _) = reloaded.get(&body_parent, "body").unwrap().unwrap();
    assert_eq!(body, Value::Object(ObjType::Text));
    apply(&mut reloaded, json!([{"op": "splice", "path": ["t", "body"], "pos": 2, "del": 3, "text": "y"}])).unwrap();
    assert_eq!(to_json(&reloaded), json!({"t": {"body": "héy"}}));
}

#[test]
fn concurrent_sets_of_a_string_are_one_conflict_with_both_strings() {
    let mut base = new_doc();
    apply(&mut base, json!([{"op": "set", "path": ["title"], "value": "draft"}])).unwrap();
    let mut x = base.fork();
    let mut y = base.fork();
    let one = Hlc { wall_ms: 10, logical: 0 };
    let two = Hlc { wall_ms: 11, logical: 0 };
    let cx = apply_ops(&mut x, b"us-east.1", one, &ops(json!([{"op": "set", "path": ["title"], "value": "east"}])))
        .unwrap()
        .unwrap();
    let cy = apply_ops(&mut y, b"eu-west.1", two, &ops(json!([{"op": "set", "path": ["title"], "value": "west"}])))
        .unwrap()
        .unwrap();
    x.apply_changes([cy]).unwrap();
    y.apply_changes([cx]).unwrap();
    let found = conflicts(&x);
    assert_eq!(found, conflicts(&y));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, vec![json!("title")]);
    let mut values: Vec<(String, Json, Hlc)> =
        found[0].versions.iter().map(|v| (v.origin.clone(), v.value.clone(), v.hlc)).collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        vec![("eu-west.1".to_string(), json!("west"), two), ("us-east.1".to_string(), json!("east"), one)]
    );
    let read = to_json(&x)["title"].clone();
    assert!(read == "east" || read == "west", "{read}");
    assert_eq!(to_json(&x), to_json(&y));
}

#[test]
fn damaged_documents_are_refused_not_a_panic() {
    assert!(matches!(load_doc(b"not a document"), Err(CoreError::Corrupt(_))));
    // automerge 0.12 panics loading these 24 bytes (found by fuzzing); load_doc refuses them.
    let damaged = [
        0x85, 0x6f, 0x4a, 0x83, 0xbb, 0x07, 0x01, 0x02, 0x03, 0x0e, 0x00, 0x00, 0x00, 0x02, 0x13, 0x02, 0x23, 0x02,
        0x78, 0x6c, 0x6f, 0x00, 0x00, 0x00,
    ];
    assert!(matches!(load_doc(&damaged), Err(CoreError::Corrupt(_))));
}

/// 365 bytes found by fuzzing (target `automerge_doc`): a change bundle (chunk type 3)
/// whose run-length-encoded op counters claim billions of ops. `Automerge::load` and
/// `Change::from_bytes` allocate past 8 GB parsing it, and the process aborts. Refused
/// here by the chunk walk, before Automerge sees it, so this test takes no memory.
pub(crate) const BUNDLE_BOMB_HEX: &str = concat!(
    "856f4a83bb5bb42a03c902010965752d776573742e3001665bd592f6eff3b9d253010101010101010101",
    "010101010105014101010101010101010101010101010101010101010101010101010101010134010101",
    "01732d65610d32020000021011101213152e21686c6320322e307f003207000609770256020c01080206",
    "1108130a150a2109230d340242075609570880017f007f07686c6320322e307f003207856f4a83e50203",
    "7e686c6320ffffffff2e30020002ffffff2cffffffffffffff024207560957088001027e01007e01007e",
    "04010a0002037e686c6320ffffffff2e3002000201010101010101010101010101010101010101010101",
    "010101013401010101732d65610d32020000021011101213152e2102231534044211561d572280010481",
    "01028301017f1f7f007f07686c6320322e307f003207856f4a83e5c90000010200000201017e74eff5fe",
    "fd07636f856f4a83e54a835b000004400174776f036865007f007f1f00",
);

#[test]
fn a_change_bundle_is_refused_before_automerge_parses_it() {
    let bytes: Vec<u8> = (0..BUNDLE_BOMB_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&BUNDLE_BOMB_HEX[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 365);
    let Err(CoreError::Corrupt(why)) = load_doc(&bytes) else { panic!("a bundle loads") };
    assert!(why.contains("type 3"), "{why}");
    assert!(matches!(decode_change(bytes), Err(CoreError::Corrupt(_))), "nor decodes as a change");
}

#[test]
fn a_saved_document_with_changes_waiting_for_dependencies_loads() {
    // x's second change reaches y without its first: y keeps it queued, and saves it
    // after the document chunk (a change chunk).
    let mut x = new_doc();
    let first = apply(&mut x, json!([{"op": "set", "path": ["a"], "value": 1}])).unwrap().unwrap();
    let second = apply(&mut x, json!([{"op": "set", "path": ["b"], "value": 2}])).unwrap().unwrap();
    let mut y = new_doc();
    y.apply_changes([second.clone()]).unwrap();
    let saved = y.save();
    assert!(saved.len() > second.raw_bytes().len());
    let mut loaded = load_doc(&saved).expect("loads with its waiting change");
    loaded.apply_changes([first]).unwrap();
    assert_eq!(to_json(&loaded), json!({"a": 1, "b": 2}));
    assert!(decode_change(second.raw_bytes().to_vec()).is_ok());
}
