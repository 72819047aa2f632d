//! Document requests: the body of `POST /v1/docs/{bucket}/{key}` and of the NATS
//! `doc.apply` operation (`{"ops": [...]}`), parsed and applied as the leader does.

use std::sync::OnceLock;

use automerge::Automerge;
use concord_core::doc::{self, DocOp, OPS_MAX, PathElem};
use concord_core::hlc::Hlc;
use serde_json::json;

/// The leader that applies the request, and the replica the change replicates to.
const LEADER: &[u8] = b"us-east.2";
const BASE_AUTHOR: &[u8] = b"eu-west.1";

/// `doc::parse_ops` on a request body, then `doc::apply_ops` on a document that holds
/// a map, a list, text, an immutable string and a counter (so ops find something to
/// edit): refused as a whole (the document unchanged), or one change that another
/// replica decodes and applies to the same JSON, in a document that saves and loads back.
pub fn doc_ops(data: &[u8]) {
    let Ok(ops) = doc::parse_ops(data) else { return };
    assert!((1..=OPS_MAX).contains(&ops.len()), "{} ops", ops.len());
    for op in &ops {
        assert!(op.bytes() >= 64, "an op's size estimate counts its overhead");
    }
    let mut leader = base_doc();
    let before = doc::to_json(&leader);
    let hlc = Hlc { wall_ms: 1_700_000_000_000, logical: 3 };
    match doc::apply_ops(&mut leader, LEADER, hlc, &ops) {
        Err(_) | Ok(None) => assert_eq!(doc::to_json(&leader), before, "a request that made no change left none"),
        Ok(Some(change)) => {
            let decoded = automerge::Change::from_bytes(change.raw_bytes().to_vec()).expect("a change we made decodes");
            let mut replica = base_doc();
            replica.apply_changes([decoded]).expect("a replica with the same history takes the change");
            let json = doc::to_json(&leader);
            assert_eq!(doc::to_json(&replica), json, "the change means the same on every replica");
            let loaded = doc::load_doc(&leader.save()).expect("a saved document loads");
            assert_eq!(doc::to_json(&loaded), json, "a saved document loads to the same JSON");
            let _ = doc::conflicts(&leader);
        }
    }
}

/// A fresh copy of the document every request is tried on.
pub(crate) fn base_doc() -> Automerge {
    static SAVED: OnceLock<Vec<u8>> = OnceLock::new();
    let saved = SAVED.get_or_init(|| {
        let mut d = doc::new_doc();
        let key = |k: &str| PathElem::Key(k.into());
        let ops = [
            DocOp::Set { path: vec![key("map")], value: json!({"a": 1, "b": {"c": [true, null, 2.5]}}) },
            DocOp::Set { path: vec![key("list")], value: json!([1, "two", {"three": 3}]) },
            DocOp::Set { path: vec![key("text")], value: json!("hello, wörld") },
            DocOp::SetImmutable { path: vec![key("name")], value: json!("fixed") },
            DocOp::Inc { path: vec![key("counter")], by: 5 },
        ];
        doc::apply_ops(&mut d, BASE_AUTHOR, Hlc { wall_ms: 1, logical: 0 }, &ops).expect("the base ops apply");
        d.save()
    });
    doc::load_doc(saved).expect("the base document loads")
}
