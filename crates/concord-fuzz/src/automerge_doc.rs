//! Automerge bytes from outside: saved documents (a peer's snapshot carries them; reads
//! load them to answer `GET /v1/docs`) and single changes (a changeset's document
//! changes, from another region).

use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc;
use concord_core::hlc::Hlc;

use crate::log_entry;
use crate::replica::origin;

/// `doc::load_doc` on a saved document: refused, or a document whose JSON view and
/// conflict walk work, and which saves and loads back to the same JSON and heads.
pub fn automerge_doc(data: &[u8]) {
    let Ok(d) = doc::load_doc(data) else { return };
    let json = doc::to_json(&d);
    let _ = doc::conflicts(&d);
    let again = doc::load_doc(&d.save()).expect("a loaded document saves to bytes that load");
    assert_eq!(doc::to_json(&again), json, "save and load keep the JSON");
    assert_eq!(again.get_heads(), d.get_heads(), "save and load keep the heads");
}

/// A document change from another region: `data` as the `ChangeBody::Doc` of eu-west's
/// next changeset, through the consumer like any message of its log ([`log_entry`]), so
/// the fuzzer spends its time on the Automerge bytes. The engine decodes it with
/// `doc::decode_change` (a change that decodes gives its bytes back; never
/// `Change::from_bytes` alone, which some chunk types make take the machine's memory),
/// then applies it to the document or refuses it (a dead letter).
pub fn automerge_change(data: &[u8]) {
    if let Ok(change) = doc::decode_change(data.to_vec()) {
        let again = doc::decode_change(change.raw_bytes().to_vec()).expect("a change's bytes decode");
        assert_eq!(again.hash(), change.hash(), "a decoded change's bytes decode to the same change");
    }
    let change = Change {
        hlc: Hlc { wall_ms: 2_000, logical: 0 },
        bucket: "d".into(),
        key: "doc".into(),
        body: ChangeBody::Doc { change: data.to_vec() },
        resolves: None,
    };
    log_entry(&Changeset { origin: origin("eu-west", 1), first_seq: 2, changes: vec![change] }.encode());
}
