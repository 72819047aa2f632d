//! Forged but well-formed changesets: what anyone who can publish to a region's log
//! could write, and what each does to the replicas that read it. Each found crashing
//! the engine or the node (fuzzing, and a review of what the decoder lets through).
//!
//! What must hold for each: no panic; a changeset the engine refuses is a dead letter
//! (recorded with its bytes, alerted, counted), never claimed in the applied vector, and
//! nothing of it is applied; the consumer goes on (the next good changeset applies).

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp, PathElem};
use concord_core::hlc::{Hlc, WALL_MS_MAX};
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    Alert, AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Output, RoleView, StartAs,
    WriteError, WriteOp, WriteRequest,
};

const OWN: &str = "LOG_us";
const MIRROR: &str = "MIRROR_eu";

fn region(r: &str) -> RegionId {
    RegionId::new(r).unwrap()
}

fn eu(epoch: u64) -> Origin {
    Origin::new(region("eu-west"), epoch)
}

fn us(epoch: u64) -> Origin {
    Origin::new(region("us-east"), epoch)
}

fn config() -> EngineConfig {
    let streams = BTreeMap::from([(OWN.to_string(), region("us-east")), (MIRROR.to_string(), region("eu-west"))]);
    EngineConfig::new(region("us-east"), OWN.into(), streams)
}

struct Replica {
    engine: Engine,
    store: MemStore,
}

impl Replica {
    fn follower(cfg: EngineConfig) -> Replica {
        let store = MemStore::default();
        Replica { engine: Engine::open(cfg, store.durable(), StartAs::Follower).unwrap(), store }
    }

    /// us-east's leader, writing as us-east.1.
    fn leader() -> Replica {
        let store = MemStore::default();
        let mut engine = Engine::open(config(), store.durable(), StartAs::Leader).unwrap();
        assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
        assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
        engine.start_writing(1);
        Replica { engine, store }
    }

    fn deliver(&mut self, stream: &str, seq: u64, payload: Bytes) -> Output {
        let prepared = self.engine.prepare(stream, vec![Entry { seq, payload }], 1_000);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply(prepared, &facts).unwrap();
        if let Some(batch) = &out.commit {
            self.store.commit(batch);
        }
        assert_eq!(self.engine.validate(), Ok(()));
        out
    }

    /// A put through the leader, stored by the log at `stream_seq`: its reply.
    fn put(&mut self, key: &str, value: &[u8], stream_seq: u64, now_ms: u64) -> Result<Hlc, WriteError> {
        let op = WriteOp::Put { bucket: "b".into(), key: key.into(), value: Bytes::copy_from_slice(value) };
        let writes = vec![WriteRequest { id: 1, op, resolves: None }];
        let facts = self.store.load(&self.engine.write_needs(&writes));
        let out = self.engine.write(writes, &facts, now_ms).unwrap();
        if out.append.is_none() {
            let [(_, reply)] = out.replies.as_slice() else { panic!("one reply: {:?}", out.replies) };
            return reply.clone().map(|ack| ack.hlc.expect("a change"));
        }
        let done = self.engine.append_done(AppendOutcome::Stored { stream_seq });
        self.store.commit(done.commit.as_ref().unwrap());
        let [(_, Ok(ack))] = done.replies.as_slice() else { panic!("acknowledged: {:?}", done.replies) };
        Ok(ack.hlc.expect("a put changes something"))
    }

    /// `payload`, delivered at `seq`, is a dead letter: recorded with its bytes,
    /// alerted, counted, its origin not claimed; returns the recorded reason.
    fn dead_lettered(&mut self, stream: &str, seq: u64, payload: Bytes, origin: &Origin) -> String {
        let before = (self.engine.dead_letters(), self.engine.applied().get(origin));
        let out = self.deliver(stream, seq, payload.clone());
        let alerted =
            out.alerts.iter().any(|a| matches!(a, Alert::DeadLettered { stream_seq, .. } if *stream_seq == seq));
        assert!(alerted, "alerted (what the node counts): {:?}", out.alerts);
        assert_eq!(self.engine.dead_letters(), before.0 + 1, "counted");
        let letter = self.store.dead_letters.values().next_back().expect("recorded");
        assert_eq!((letter.stream.as_str(), letter.stream_seq), (stream, seq));
        assert_eq!(letter.payload, payload.to_vec(), "with its bytes");
        assert_eq!(self.engine.applied().get(origin), before.1, "never claimed");
        assert_eq!(self.engine.cursor(stream), seq, "consumed");
        letter.reason.clone()
    }
}

fn put_change(origin: &Origin, seq: u64, key: &str, value: Vec<u8>, hlc: Hlc) -> Change {
    let vv = [(origin.clone(), seq)].into_iter().collect();
    Change { hlc, bucket: "b".into(), key: key.into(), body: ChangeBody::Put { value, vv }, resolves: None }
}

fn changeset(origin: &Origin, first_seq: u64, changes: Vec<Change>) -> Bytes {
    Bytes::from(Changeset { origin: origin.clone(), first_seq, changes }.encode())
}

fn put(origin: &Origin, seq: u64, key: &str, value: &[u8], wall_ms: u64) -> Bytes {
    changeset(origin, seq, vec![put_change(origin, seq, key, value.to_vec(), Hlc { wall_ms, logical: 0 })])
}

fn value_of(r: &Replica, key: &str) -> Option<Vec<u8>> {
    r.store.kv.get(&("b".to_string(), key.to_string())).and_then(|reg| reg.winner().value.clone())
}

/// A changeset of us-east on eu-west's mirror (a region publishing as another): refused.
#[test]
fn a_changeset_of_another_region_than_the_streams_is_a_dead_letter() {
    let mut r = Replica::follower(config());
    let why = r.dead_lettered(MIRROR, 1, put(&us(1), 1, "k", b"as us-east", 1_000), &us(1));
    assert!(why.contains("us-east"), "{why}");
    assert_eq!(value_of(&r, "k"), None);
    r.deliver(MIRROR, 2, put(&eu(1), 1, "k", b"eu-west's own", 1_000));
    assert_eq!(value_of(&r, "k"), Some(b"eu-west's own".to_vec()), "the stream goes on");
}

/// What the runtime found forged (its publisher does not own the origin's epoch) is a
/// dead letter with the reason given, however good its bytes; the entries around it
/// apply, and the origin's sequence is not claimed past it.
#[test]
fn an_entry_the_runtime_screened_as_forged_is_a_dead_letter_with_its_reason() {
    let mut r = Replica::follower(config());
    let entries = vec![
        Entry { seq: 1, payload: put(&eu(1), 1, "a", b"1", 1_000) },
        Entry { seq: 2, payload: put(&eu(1), 2, "forged", b"evil", 1_001) },
    ];
    let forged = BTreeMap::from([(2, "published by eu-west-2; epoch eu-west.1 is eu-west-1's".to_string())]);
    let prepared = r.engine.prepare_screened(MIRROR, entries, forged, 2_000);
    let facts = r.store.load(prepared.needs());
    let out = r.engine.apply(prepared, &facts).unwrap();
    r.store.commit(out.commit.as_ref().unwrap());
    assert_eq!(r.engine.validate(), Ok(()));
    assert!(out.alerts.iter().any(|a| matches!(a, Alert::DeadLettered { stream_seq: 2, .. })), "{:?}", out.alerts);
    let letter = r.store.dead_letters.values().next_back().expect("recorded");
    assert!(letter.reason.starts_with("forged: published by eu-west-2"), "{}", letter.reason);
    assert_eq!((value_of(&r, "a"), value_of(&r, "forged")), (Some(b"1".to_vec()), None));
    assert_eq!(r.engine.applied().get(&eu(1)), 1, "not claimed past the forged one");
    assert_eq!(r.engine.cursor(MIRROR), 2, "consumed");
}

/// A timestamp at the end of `u64`: once observed, the leader's clock had no successor
/// left, and its next write overflowed (`hlc.rs`, `successor`).
#[test]
fn a_timestamp_past_the_year_9999_is_a_dead_letter_and_the_leader_writes_on() {
    let mut r = Replica::leader();
    let end_of_time = Hlc { wall_ms: u64::MAX, logical: u32::MAX };
    let forged = changeset(&eu(1), 1, vec![put_change(&eu(1), 1, "k", b"forged".to_vec(), end_of_time)]);
    let why = r.dead_lettered(MIRROR, 1, forged, &eu(1));
    assert!(why.contains("year 9999"), "{why}");
    assert_eq!(value_of(&r, "k"), None, "nothing of it applies");
    // The next good changeset of the stream applies, and the leader still writes.
    r.deliver(MIRROR, 2, put(&eu(2), 1, "next", b"next", 900));
    assert_eq!(value_of(&r, "next").as_deref(), Some(&b"next"[..]));
    let hlc = r.put("k", b"mine", 1, 2_000).expect("the write is acknowledged");
    assert_eq!(hlc, Hlc { wall_ms: 2_000, logical: 0 }, "the clock never saw the forged time");
}

/// A timestamp within the bound is a peer's clock, however far ahead: applied, and the
/// clocks that see it follow it (how far ahead a peer may be is not decided here).
#[test]
fn the_latest_timestamp_applies_and_the_leader_still_writes_after_it() {
    let mut r = Replica::leader();
    let latest = Hlc { wall_ms: WALL_MS_MAX, logical: u32::MAX };
    r.deliver(MIRROR, 1, changeset(&eu(1), 1, vec![put_change(&eu(1), 1, "k", b"late".to_vec(), latest)]));
    assert_eq!(r.engine.applied().get(&eu(1)), 1);
    let hlc = r.put("k", b"mine", 1, 2_000).expect("the write is acknowledged");
    assert!(hlc > latest, "a write after it ranks after it: {hlc:?}");
    assert_eq!(value_of(&r, "k").as_deref(), Some(&b"mine"[..]));
}

/// A put larger than `value_bytes_max`: a local write of it is refused at the API, so a
/// changeset holding one was not written by a Concord leader of this deployment.
#[test]
fn a_value_over_value_bytes_max_is_a_dead_letter() {
    let mut cfg = config();
    cfg.value_bytes_max = 1024;
    let mut r = Replica::follower(cfg);
    let changes = vec![
        put_change(&eu(1), 1, "small", b"s".to_vec(), Hlc::ZERO),
        put_change(&eu(1), 2, "big", vec![7; 1025], Hlc::ZERO),
    ];
    let why = r.dead_lettered(MIRROR, 1, changeset(&eu(1), 1, changes), &eu(1));
    assert!(why.contains("1025 bytes") && why.contains("value_bytes_max"), "{why}");
    assert_eq!(value_of(&r, "small"), None, "the whole changeset is refused, not only its large value");
    r.deliver(MIRROR, 2, put(&eu(2), 1, "limit", &[7; 1024], 1));
    assert_eq!(value_of(&r, "limit").map(|v| v.len()), Some(1024), "the next changeset applies, at the limit");
}

/// The default bound is the largest body a changeset can carry: what decodes applies,
/// whatever the node's `value_bytes_max`, until the runtime sets it.
#[test]
fn by_default_every_value_that_decodes_applies() {
    assert_eq!(config().value_bytes_max, concord_core::changeset::BODY_BYTES_MAX);
    let mut r = Replica::follower(config());
    r.deliver(MIRROR, 1, put(&eu(1), 1, "big", &vec![7; 2 << 20], 1));
    assert_eq!(r.engine.applied().get(&eu(1)), 1);
}

/// A changeset of the replica's own region from an epoch its counter never gave out
/// (`u64::MAX`): applied like any changeset of the region's log (the engine cannot know
/// the counter), and the next promotion made `start_writing` assert, stopping the node
/// at every promotion. Now the promoted replica is deposed by it and follows its log.
#[test]
fn an_own_region_changeset_of_a_forged_epoch_deposes_the_next_leader_without_a_panic() {
    let mut r = Replica::follower(config());
    let forged = us(u64::MAX);
    r.deliver(OWN, 1, put(&forged, 1, "k", b"forged", 1));
    assert_eq!(r.engine.applied().get(&forged), 1);
    let promoted = r.engine.promote();
    assert!(promoted.catch_up);
    assert_eq!(r.engine.catch_up_next(1, 100), CatchUp::Done);
    assert_eq!(r.engine.caught_up(1).0, CaughtUp::NeedEpoch);
    let out = r.engine.start_writing(2);
    assert_eq!(out.alerts, vec![Alert::Deposed { origin: us(2), by: forged.clone() }]);
    assert_eq!(out.follow, vec![(OWN.to_string(), 2)], "it follows its region's log again");
    assert_eq!(r.engine.role(), RoleView::Deposed { origin: us(2), by: forged.clone() });
    assert_eq!(r.engine.validate(), Ok(()));
    assert!(matches!(r.put("k", b"mine", 2, 2_000), Err(WriteError::NotLeader(_))), "it does not write");
    // The consumer goes on, and a later promotion may try again.
    r.deliver(OWN, 2, put(&forged, 2, "k2", b"more", 2));
    assert_eq!(value_of(&r, "k2").as_deref(), Some(&b"more"[..]));
    assert!(r.engine.role_follows());
    r.engine.promote();
    assert_eq!(r.engine.catch_up_next(2, 100), CatchUp::Done);
    assert_eq!(r.engine.caught_up(2).0, CaughtUp::NeedEpoch);
    assert!(matches!(r.engine.start_writing(3).alerts.as_slice(), [Alert::Deposed { .. }]));
}

/// A document change by `actor`: its first change of a fresh document, setting `x`.
fn doc_change(actor: &Origin, value: i64) -> Vec<u8> {
    let mut d = doc::new_doc();
    let ops = [DocOp::Set { path: vec![PathElem::Key("x".into())], value: serde_json::json!(value) }];
    doc::apply_ops(&mut d, &actor.actor_bytes(), Hlc::ZERO, &ops).unwrap().unwrap().raw_bytes().to_vec()
}

fn doc_body(change: Vec<u8>) -> Change {
    Change { hlc: Hlc::ZERO, bucket: "d".into(), key: "doc".into(), body: ChangeBody::Doc { change }, resolves: None }
}

fn saved_doc(r: &Replica) -> Option<serde_json::Value> {
    let saved = r.store.docs.get(&("d".to_string(), "doc".to_string()))?;
    Some(doc::to_json(&doc::load_doc(saved).expect("a saved document loads")))
}

/// A changeset whose document change the document refuses (here: the actor's first
/// change again, with other content) is refused whole: its put, applied before the
/// refusal was found, is not kept; the document is as it was; the next changeset of
/// another origin applies.
#[test]
fn a_changeset_whose_document_change_is_refused_is_refused_whole() {
    let mut r = Replica::follower(config());
    let o = eu(2);
    r.deliver(MIRROR, 1, changeset(&o, 1, vec![doc_body(doc_change(&o, 1))]));
    let refused = changeset(&o, 2, vec![put_change(&o, 2, "k", b"v".to_vec(), Hlc::ZERO), doc_body(doc_change(&o, 2))]);
    let why = r.dead_lettered(MIRROR, 2, refused, &o);
    assert!(why.contains("refused"), "{why}");
    assert_eq!(value_of(&r, "k"), None, "the put of the refused changeset is not applied");
    assert_eq!(saved_doc(&r), Some(serde_json::json!({"x": 1})));
    r.deliver(MIRROR, 3, put(&eu(3), 1, "next", b"next", 1));
    assert_eq!(value_of(&r, "next").as_deref(), Some(&b"next"[..]));
}

/// 365 bytes that take `Change::from_bytes` and `Automerge::load` past 8 GB (a change
/// bundle, found by fuzzing: `concord_core::doc`'s chunk check). As a changeset's
/// document change it would have aborted every replica reading the log, at every
/// restart; the chunk check refuses it before Automerge parses it.
#[test]
fn a_change_bundle_as_a_document_change_is_a_dead_letter() {
    let bomb = hex(concat!(
        "856f4a83bb5bb42a03c902010965752d776573742e3001665bd592f6eff3b9d253010101010101010101",
        "010101010105014101010101010101010101010101010101010101010101010101010101010134010101",
        "01732d65610d32020000021011101213152e21686c6320322e307f003207000609770256020c01080206",
        "1108130a150a2109230d340242075609570880017f007f07686c6320322e307f003207856f4a83e50203",
        "7e686c6320ffffffff2e30020002ffffff2cffffffffffffff024207560957088001027e01007e01007e",
        "04010a0002037e686c6320ffffffff2e3002000201010101010101010101010101010101010101010101",
        "010101013401010101732d65610d32020000021011101213152e2102231534044211561d572280010481",
        "01028301017f1f7f007f07686c6320322e307f003207856f4a83e5c90000010200000201017e74eff5fe",
        "fd07636f856f4a83e54a835b000004400174776f036865007f007f1f00",
    ));
    let mut r = Replica::follower(config());
    let why = r.dead_lettered(MIRROR, 1, changeset(&eu(1), 1, vec![doc_body(bomb)]), &eu(1));
    assert!(why.contains("type 3"), "{why}");
    assert_eq!(saved_doc(&r), None);
    r.deliver(MIRROR, 2, changeset(&eu(2), 1, vec![doc_body(doc_change(&eu(2), 5))]));
    assert_eq!(saved_doc(&r), Some(serde_json::json!({"x": 5})), "the next document change applies");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
