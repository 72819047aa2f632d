//! Valid inputs for every surface, made by Concord's own encoders (a leader's
//! changesets, a replica's registers, documents and snapshot, real tokens and bodies):
//! the seed corpora of the cargo-fuzz targets (`examples/seed_corpus.rs` writes them
//! into `fuzz/corpus/<target>/`) and what the property tests mutate, so both reach past
//! the first checks of each decoder. Deterministic: the same bytes on every run.

use concord_core::changeset::{Change, ChangeBody, Changeset, stored};
use concord_core::doc::{self, DocOp, PathElem};
use concord_core::hlc::Hlc;
use concord_core::ids::Origin;
use concord_core::lww::{Register, Version};
use concord_core::token;
use concord_core::vv::VersionVector;
use concord_engine::Output;
use concord_storage::Store;
use serde_json::json;

use crate::replica::{MIRROR, OWN, Replica, entry, origin};
use crate::scratch::ScratchStore;

/// The seeds of the target `name` (one of [`crate::targets`]).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "changeset" | "log_entry" => changesets().iter().map(Changeset::encode).collect(),
        "stored_register" => registers(),
        "session_token" => text(&tokens()),
        "doc_ops" => text(&DOC_BODIES),
        "http_path" => text(&PATHS),
        "nats_request" => text(&NATS_REQUESTS),
        "sync_frame" => sync_frames(),
        "cursors" => text(&CURSORS),
        "snapshot" => snapshots(),
        "automerge_doc" => documents(),
        "automerge_change" => doc_changes(),
        "api_json" => text(&API_BODIES),
        other => panic!("no fuzz target {other:?}"),
    }
}

fn text<S: AsRef<str>>(items: &[S]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_ref().as_bytes().to_vec()).collect()
}

fn vv(entries: &[(&Origin, u64)]) -> VersionVector {
    entries.iter().map(|(o, s)| ((*o).clone(), *s)).collect()
}

fn put(bucket: &str, key: &str, value: &[u8], vv: VersionVector, wall_ms: u64) -> Change {
    let body = ChangeBody::Put { value: value.to_vec(), vv };
    Change { hlc: Hlc { wall_ms, logical: 0 }, bucket: bucket.into(), key: key.into(), body, resolves: None }
}

/// One Automerge change by `actor` on a fresh document, setting `prop` to `value`.
pub fn doc_change(actor: &Origin, prop: &str, value: serde_json::Value) -> Vec<u8> {
    let mut d = doc::new_doc();
    let ops = [DocOp::Set { path: vec![PathElem::Key(prop.into())], value }];
    let hlc = Hlc { wall_ms: 1_000, logical: 0 };
    let change = doc::apply_ops(&mut d, &actor.actor_bytes(), hlc, &ops).expect("the ops apply");
    change.expect("the ops change the document").raw_bytes().to_vec()
}

fn doc(actor: &Origin, prop: &str, value: serde_json::Value, wall_ms: u64) -> Change {
    let body = ChangeBody::Doc { change: doc_change(actor, prop, value) };
    Change { hlc: Hlc { wall_ms, logical: 0 }, bucket: "d".into(), key: "doc".into(), body, resolves: None }
}

/// Changesets as us-east's and eu-west's leaders write them: puts, deletes, document
/// changes, a resolution; concurrent writes to one key and one document property.
pub fn changesets() -> Vec<Changeset> {
    let (us, eu) = (origin("us-east", 1), origin("eu-west", 1));
    let resolving = Change {
        resolves: Some(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
        ..put("b", "k2", &[0xff, 0x00, 0x80], vv(&[(&eu, 4), (&us, 1)]), 3_000)
    };
    let delete =
        Change { body: ChangeBody::Delete { vv: vv(&[(&eu, 2)]) }, ..put("b", "k1", b"", VersionVector::new(), 2_500) };
    vec![
        Changeset {
            origin: us.clone(),
            first_seq: 1,
            changes: vec![put("b", "k1", b"from us-east", vv(&[(&us, 1)]), 1_000)],
        },
        Changeset {
            origin: eu.clone(),
            first_seq: 1,
            changes: vec![put("b", "k1", b"from eu-west", vv(&[(&eu, 1)]), 2_000)],
        },
        Changeset {
            origin: eu.clone(),
            first_seq: 2,
            changes: vec![delete, doc(&eu, "x", json!({"n": 1, "t": "text"}), 2_600), resolving],
        },
        Changeset { origin: us.clone(), first_seq: 2, changes: vec![doc(&us, "x", json!([1, 2, 3]), 2_700)] },
        // A mark (format version 2), then a write in its context.
        Changeset {
            origin: us.clone(),
            first_seq: 3,
            changes: vec![
                Change {
                    hlc: Hlc { wall_ms: 2_800, logical: 0 },
                    bucket: String::new(),
                    key: String::new(),
                    body: ChangeBody::Mark { floor: vv(&[(&us, 2), (&eu, 4)]), stable: vv(&[(&us, 1), (&eu, 2)]) },
                    resolves: None,
                },
                put("b", "k1", b"after the mark", vv(&[(&us, 4)]), 2_900),
            ],
        },
    ]
}

/// Stored registers: one version, a tombstone, siblings; and the version-1 form.
fn registers() -> Vec<Vec<u8>> {
    let (us, eu) = (origin("us-east", 1), origin("eu-west", 2));
    let version = |value: Option<&[u8]>, o: &Origin, seq: u64, wall_ms: u64| Version {
        value: value.map(<[u8]>::to_vec),
        hlc: Hlc { wall_ms, logical: 7 },
        origin: o.clone(),
        vv: vv(&[(o, seq)]),
    };
    let single = Register::new(version(Some(b"value"), &us, 3, 10));
    let tombstone = Register::new(version(None, &eu, 1, 20));
    let mut siblings = Register::new(version(Some(&[0xff, 0xfe]), &us, 4, 30));
    siblings.insert(version(Some(b"concurrent"), &eu, 2, 31));
    let v2 = stored::encode(&single);
    // Version 1 held one version, without the count.
    let v1 = [&[1u8][..], &v2[2..]].concat();
    vec![v2, stored::encode(&tombstone), stored::encode(&siblings), v1]
}

fn tokens() -> Vec<String> {
    let (us, eu) = (origin("us-east", 3), origin("eu-west", 1));
    vec![token::encode(&VersionVector::new()), token::encode(&vv(&[(&us, 120), (&eu, 55)])), "us-east.12".into()]
}

const DOC_BODIES: [&str; 4] = [
    r#"{"ops":[{"op":"set","path":["map","a"],"value":{"x":[1,"two",null,true,2.5]}}]}"#,
    r#"{"ops":[{"op":"inc","path":["counter"],"by":-3},{"op":"insert","path":["list",1],"value":"new","immutable":true}]}"#,
    r#"{"ops":[{"op":"splice","path":["text"],"pos":2,"del":3,"text":"ü"},{"op":"del","path":["list",0]}]}"#,
    r#"{"ops":[{"op":"set","path":["list",0],"value":"t","immutable":false},{"op":"insert","path":["fresh",0],"value":[]}]}"#,
];

const PATHS: [&str; 4] = ["users/alice", "b.1_x-y/a%2Fb%20c%C3%BC", "bucket", "b/%00%FF%4"];

const NATS_REQUESTS: [&str; 3] = [
    "concord.api.us-east.kv.get\n{\"node\":\"us-east-2\",\"log_seq\":3,\"token\":\"v1:us-east.1=3\"}",
    "conflicts.resolve\n{\"node\":\"us-east-3\",\"log_seq\":0,\"token\":\"v1:\"}",
    "concord.api.eu-west.status\n",
];

/// `bucket`, `prefix`, `after`, `since`, `before` (conflicts), `before` (dead letters).
const CURSORS: [&str; 4] = [
    "b\n\n\n\n\n",
    "b\nk\nk1\n1970-01-01T00:00:02Z\n\n1",
    "b\n\na\n2000-01-01T00:00:00+02:00\n00000000000007d0ffffffffffffffffffffffffffffffff\n3",
    "d\ndo\n\n1970-01-01T00:00:00.001Z\n0000000000000bb8\n",
];

const API_BODIES: [&str; 6] = [
    r#"{"ok":true,"origin":"us-east.2","seq":17,"hlc":{"wall_ms":7,"logical":1},"confirmed_by":["eu-west"],"resolved":"x"}"#,
    r#"{"error":"behind","code":"session_lag","behind":{"us-east.1":{"needed":5,"applied":2}},"unconfirmed":["a"]}"#,
    r#"{"regions":{"us-east":{"nats":"nats://127.0.0.1:4301","nats_servers":["a"],"nodes":[{"name":"us-east-1","role":"leader","http":"http://127.0.0.1:8301"}]}}}"#,
    r#"{"node":"us-east-1","http":"http://127.0.0.1:8301","epoch":3}"#,
    r#"{"dead_letters":[{"id":1,"stream":"S","seq":2,"origin":"us-east.1","first_seq":1,"last_seq":2,"reason":"r","at_ms":5,"payload_base64":"AA=="}],"next":null}"#,
    r#"{"region":"us-east","node":"us-east-1","role":"leader","epoch":2,"origin":"us-east.2","leader":"us-east-1","leader_epoch":2,"applied":{"us-east.2":5},"lag":{"eu-west":{"seq":0,"ms":0,"applied_seq":4,"mirror_seq":4,"mirror_lag":0,"mirror_active_ms":12,"mirror_connected":true},"ap-south":{"applied_seq":1,"error":"no answer"}},"followers":{"us-east-2":{"applied_log_seq":3,"lag_seq":1,"reported_ms_ago":20,"token":"v1:"}},"serves_nats_reads":true,"remote_stored":{"eu-west":4},"writer":"writing","streams":{"S":{"cursor":3,"parked":{"seq":4,"reason":"v9"}}},"gaps":[{"origin":"eu-west.1","applied":1,"next_waiting":3,"waiting":1}],"waiting":1,"dead_letters":2}"#,
];

/// A us-east follower that consumed both logs: values in two buckets (a tombstone, an
/// LWW conflict), a document with a conflicted property, a changeset waiting behind a
/// gap, a dead letter. Every committed batch also goes to `also`.
pub fn populated(also: Option<&Store>) -> Replica {
    let cs = changesets();
    let (us, eu, eu2) = (origin("us-east", 1), origin("eu-west", 1), origin("eu-west", 2));
    let more = Changeset {
        origin: us.clone(),
        first_seq: 3,
        changes: ["a", "ab", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, k)| put("b", k, k.as_bytes(), vv(&[(&us, 3 + i as u64)]), 4_000 + i as u64))
            .chain([put("other", "a", b"elsewhere", vv(&[(&us, 7)]), 4_100)])
            .collect(),
    };
    let behind_gap =
        Changeset { origin: eu2.clone(), first_seq: 5, changes: vec![put("b", "late", b"l", vv(&[(&eu2, 5)]), 9)] };
    let mut r = Replica::follower();
    let step = |r: &mut Replica, stream: &str, entries, now_ms| {
        let out: Output = r.deliver(stream, entries, now_ms);
        if let (Some(store), Some(batch)) = (also, &out.commit) {
            store.commit(batch).expect("a scratch store commits");
        }
    };
    step(&mut r, OWN, vec![entry(1, cs[0].encode()), entry(2, cs[3].encode()), entry(3, more.encode())], 1_000);
    step(&mut r, MIRROR, vec![entry(1, cs[1].encode())], 2_000);
    step(&mut r, MIRROR, vec![entry(2, cs[2].encode()), entry(3, &b"garbage, not a changeset"[..])], 3_000);
    // Mirror message 4 is not delivered yet: what came before it is unknown, so it waits
    // (right after the garbage at 3, it would be void).
    step(&mut r, MIRROR, vec![entry(5, behind_gap.encode())], 4_000);
    assert!(r.store.conflicts.len() >= 2 && !r.store.waiting.is_empty() && !r.store.dead_letters.is_empty());
    assert_eq!((r.engine.applied().get(&us), r.engine.applied().get(&eu)), (7, 4));
    r
}

/// The snapshot of [`populated`] (the current format), and the same records as version 1.
fn snapshots() -> Vec<Vec<u8>> {
    let scratch = ScratchStore::new();
    populated(Some(&scratch.store));
    let v2 = scratch.store.export_snapshot().expect("a scratch store exports");
    let mut v1 = v2.clone();
    v1[3] = 1;
    vec![v2, v1]
}

fn documents() -> Vec<Vec<u8>> {
    let r = populated(None);
    let mut docs: Vec<Vec<u8>> = r.store.docs.values().cloned().collect();
    docs.push(crate::doc_ops::base_doc().save());
    docs
}

fn doc_changes() -> Vec<Vec<u8>> {
    let eu = origin("eu-west", 1);
    vec![doc_change(&eu, "x", json!({"n": 1, "t": "text"})), doc_change(&eu, "counter", json!(2))]
}

/// The seed corpus as files: (target, file name, bytes), `fuzz/corpus/<target>/<name>`.
pub fn corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    crate::targets()
        .into_iter()
        .flat_map(|(target, _)| {
            seeds(target).into_iter().enumerate().map(move |(i, bytes)| (target, format!("seed-{i}"), bytes))
        })
        .collect()
}

/// Write [`corpus`] under `dir` (the repository's `fuzz/corpus`), replacing older seeds.
pub fn write_corpus(dir: &std::path::Path) -> std::io::Result<()> {
    for (target, _) in crate::targets() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        for old in std::fs::read_dir(&target_dir)? {
            let path = old?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                std::fs::remove_file(path)?;
            }
        }
    }
    for (target, name, bytes) in corpus() {
        std::fs::write(dir.join(target).join(name), bytes)?;
    }
    Ok(())
}

/// A document with a few changes (what `sync_frame` syncs against).
pub fn sync_document() -> automerge::Automerge {
    let mut d = doc::new_doc();
    for i in 0..3 {
        let ops = [DocOp::Set { path: vec![PathElem::Key(format!("k{i}"))], value: json!(i) }];
        let hlc = Hlc { wall_ms: 1_000 + i, logical: 0 };
        doc::apply_ops(&mut d, b"us-east.1", hlc, &ops).expect("the ops apply");
    }
    d
}

/// Frames of automerge-repo's protocol, as clients send them: a join, sync messages (a
/// first one; V1 and V2 ones carrying changes), a request, an ephemeral message.
fn sync_frames() -> Vec<Vec<u8>> {
    use automerge::sync::{State, SyncDoc};
    let id = "2c4vvAQM9A1B1AvjsL4n3p3U2tnx";
    let frame = |kind: &str, data: Vec<u8>| {
        let mut out = Vec::new();
        let fields = vec![
            (ciborium::Value::Text("type".into()), ciborium::Value::Text(kind.into())),
            (ciborium::Value::Text("senderId".into()), ciborium::Value::Text("p".into())),
            (ciborium::Value::Text("targetId".into()), ciborium::Value::Text("s".into())),
            (ciborium::Value::Text("documentId".into()), ciborium::Value::Text(id.into())),
            (ciborium::Value::Text("data".into()), ciborium::Value::Bytes(data)),
        ];
        ciborium::ser::into_writer(&ciborium::Value::Map(fields), &mut out).expect("CBOR to memory");
        out
    };
    let client = sync_document();
    let empty = doc::new_doc();
    let mut frames = Vec::new();
    // An empty peer's first message, then what the client sends it (V1 and V2).
    let (mut theirs, mut ours) = (State::new(), State::new());
    let hello = empty.generate_sync_message(&mut theirs).expect("a first message");
    frames.push(frame("request", hello.clone().encode()));
    let mut v2 = client.clone();
    v2.receive_sync_message(&mut ours, hello).expect("a message automerge made");
    frames.push(frame("sync", v2.generate_sync_message(&mut ours).expect("changes to send").encode()));
    let mut v1_state = State::new();
    frames.push(frame("sync", client.generate_sync_message(&mut v1_state).expect("a first message").encode()));
    frames.push(frame("ephemeral", vec![1, 2, 3]));
    let join = r#"{"type":"join","senderId":"p","supportedProtocolVersions":["1"]}"#;
    frames.push(cbor_of_json(join));
    frames
}

fn cbor_of_json(text: &str) -> Vec<u8> {
    let value: ciborium::Value = serde_json::from_str(text).expect("JSON");
    let mut out = Vec::new();
    ciborium::ser::into_writer(&value, &mut out).expect("CBOR to memory");
    out
}
