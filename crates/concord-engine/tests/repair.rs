//! Repairs from a peer's state (anti-entropy): a gap whose messages no log holds any
//! more is filled by merging what a peer that applied them holds, and lifted.
//!
//! A follower in us-east reads a mirror of eu-west's log (`MIRROR_eu`); eu-west's
//! changesets are written by a real leader engine. A second follower that received
//! every message is the peer.

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::doc::{DocOp, PathElem};
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    Alert, AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Output, Repair, StartAs, WriteOp,
    WriteRequest,
};

const OWN: &str = "LOG_us";
const MIRROR: &str = "MIRROR_eu";

fn region(r: &str) -> RegionId {
    RegionId::new(r).unwrap()
}

fn eu1() -> Origin {
    Origin::new(region("eu-west"), 1)
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
    fn new() -> Replica {
        let store = MemStore::default();
        Replica { engine: Engine::open(config(), store.durable(), StartAs::Follower).unwrap(), store }
    }

    fn deliver(&mut self, entries: Vec<Entry>) -> Output {
        let prepared = self.engine.prepare(MIRROR, entries, 1_000);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply(prepared, &facts).unwrap();
        self.commit(&out);
        out
    }

    fn repair(&mut self, repair: Repair) -> Output {
        let prepared = self.engine.prepare_repair(repair, 2_000);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply_repair(prepared, &facts).unwrap();
        self.commit(&out);
        out
    }

    fn commit(&mut self, out: &Output) {
        if let Some(batch) = &out.commit {
            self.store.commit(batch);
        }
        assert_eq!(self.engine.validate(), Ok(()));
    }

    /// What differs from `peer`, as the node's anti-entropy would hand it over.
    fn differences(&self, peer: &Replica) -> Repair {
        let kv = peer.store.kv.iter().filter(|(k, r)| self.store.kv.get(*k) != Some(*r));
        let docs = peer.store.docs.iter().filter(|(k, d)| self.store.docs.get(*k) != Some(*d));
        let pending = peer.store.pending.iter().filter(|(k, p)| self.store.pending.get(*k) != Some(*p));
        Repair {
            kv: kv.map(|(k, r)| (k.clone(), r.clone())).collect(),
            docs: docs.map(|(k, d)| (k.clone(), d.clone())).collect(),
            pending: pending.map(|(k, p)| (k.clone(), p.clone())).collect(),
            ..Repair::default()
        }
    }
}

/// What a real leader of eu-west (epoch 1) appends for `ops`, one changeset each.
fn written(ops: Vec<WriteOp>) -> Vec<Bytes> {
    let streams = BTreeMap::from([("LOG_eu".to_string(), region("eu-west"))]);
    let cfg = EngineConfig::new(region("eu-west"), "LOG_eu".into(), streams);
    let mut engine = Engine::open(cfg, Default::default(), StartAs::Leader).unwrap();
    assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
    assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
    engine.start_writing(1);
    let mut store = MemStore::default();
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let writes = vec![WriteRequest { id: i as u64, op, resolves: None }];
        let facts = store.load(&engine.write_needs(&writes));
        let append = engine.write(writes, &facts, 1_000 + i as u64).unwrap().append.unwrap();
        out.push(append.payload);
        let done = engine.append_done(AppendOutcome::Stored { stream_seq: i as u64 + 1 });
        store.commit(done.commit.as_ref().unwrap());
    }
    out
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put { bucket: "b".into(), key: key.into(), value: Bytes::from(value.to_string()) }
}

fn doc_set(key: &str, prop: &str, value: i64) -> WriteOp {
    let path = vec![PathElem::Key(prop.into())];
    WriteOp::Doc { bucket: "d".into(), key: key.into(), ops: vec![DocOp::Set { path, value: value.into() }] }
}

fn entries(log: &[Bytes], seqs: &[u64]) -> Vec<Entry> {
    seqs.iter().map(|s| Entry { seq: *s, payload: log[*s as usize - 1].clone() }).collect()
}

/// Six changesets: puts of k0..k2, a document built over three changes (each depends
/// on the one before).
fn eu_log() -> Vec<Bytes> {
    written(vec![
        put("k0", "a"),
        put("k1", "b"),
        put("k2", "c"),
        doc_set("doc", "x", 1),
        doc_set("doc", "y", 2),
        doc_set("doc", "z", 3),
    ])
}

#[test]
fn a_repair_with_a_peers_state_lifts_the_gap_and_the_waiting_changesets_apply() {
    let log = eu_log();
    let mut peer = Replica::new();
    peer.deliver(entries(&log, &[1, 2, 3, 4, 5, 6]));
    let mut r = Replica::new();
    // Messages 2 to 4 were removed before this replica read them.
    r.deliver(entries(&log, &[1, 5, 6]));
    assert_eq!(r.engine.applied().get(&eu1()), 1);
    assert_eq!(r.engine.gaps().len(), 1, "5 and 6 wait behind the gap");

    // The differences alone change the state but do not lift: the engine is not told
    // they hold everything.
    let repair = r.differences(&peer);
    assert_eq!(repair.kv.len(), 2, "k1 and k2 differ");
    assert_eq!(repair.docs.len(), 1);
    let out = r.repair(repair.clone());
    assert!(out.commit.is_some());
    assert_eq!(r.engine.applied().get(&eu1()), 1, "no lift without `through`");
    assert_eq!(r.store.kv, peer.store.kv);

    // Applying it again changes nothing.
    let again = r.repair(repair);
    assert!(again.commit.is_none(), "a repair is idempotent: {:?}", again.commit);

    // The lift: the peer applied eu-west.1 through 6 and every difference was taken.
    let lift = Repair { through: vec![(eu1(), 4)], ..Repair::default() };
    let out = r.repair(lift);
    assert!(out.alerts.contains(&Alert::Lifted { origin: eu1(), from: 1, to: 4 }), "{:?}", out.alerts);
    assert!(out.alerts.contains(&Alert::GapClosed { origin: eu1(), applied: 6 }), "{:?}", out.alerts);
    assert_eq!(r.engine.applied().get(&eu1()), 6, "the waiting changesets applied after the lift");
    assert!(r.engine.gaps().is_empty() && r.store.waiting.is_empty());
    assert_eq!(r.store.kv, peer.store.kv);
    let heads = |s: &MemStore| concord_core::doc::load_doc(&s.docs[&("d".into(), "doc".into())]).unwrap().get_heads();
    assert_eq!(heads(&r.store), heads(&peer.store), "the same document");
    assert!(r.store.pending.values().all(Vec::is_empty), "no change waits for a dependency any more");

    // The lost messages arriving after all are duplicates.
    let out = r.deliver(entries(&log, &[2, 3, 4]));
    assert_eq!(out.stats.changesets_duplicate, 3);
    assert_eq!(r.store.kv, peer.store.kv);
}

#[test]
fn a_lift_never_moves_an_origin_back_nor_onto_void_sequences_nor_past_its_stream() {
    let log = eu_log();
    let mut r = Replica::new();
    r.deliver(entries(&log, &[1, 2, 3]));
    let out = r.repair(Repair { through: vec![(eu1(), 2)], ..Repair::default() });
    assert!(out.commit.is_none() && out.alerts.is_empty(), "nothing to lift");
    assert_eq!(r.engine.applied().get(&eu1()), 3);
    // Nothing of eu-west.1 waits here and no later epoch of eu-west was read: 4 to 6 may
    // still arrive, with marks that must not be skipped.
    let out = r.repair(Repair { through: vec![(eu1(), 6)], ..Repair::default() });
    assert!(out.commit.is_none() && out.alerts.is_empty(), "not past the stream: {:?}", out.alerts);
    assert_eq!(r.engine.applied().get(&eu1()), 3);

    // Void from 6 on (a forged state: the engine judges it from the log): a lift stops
    // below it. (A later epoch of eu-west was read here: eu-west.1's stream is behind.)
    let mut store = MemStore::default();
    store.void_from.insert(eu1(), 6);
    store.applied.observe(&Origin::new(region("eu-west"), 2), 1);
    let mut r = Replica { engine: Engine::open(config(), store.durable(), StartAs::Follower).unwrap(), store };
    let out = r.repair(Repair { through: vec![(eu1(), 100)], ..Repair::default() });
    assert!(out.alerts.contains(&Alert::Lifted { origin: eu1(), from: 0, to: 4 }), "{:?}", out.alerts);
    assert_eq!(r.engine.applied().get(&eu1()), 4);
}

#[test]
fn a_repaired_register_that_is_concurrent_with_the_local_one_is_a_recorded_conflict() {
    let theirs = written(vec![put("k", "eu-west's")]);
    let mut peer = Replica::new();
    peer.deliver(entries(&theirs, &[1]));
    // This replica holds a concurrent version of k, from us-east's leader.
    let streams = BTreeMap::from([(OWN.to_string(), region("us-east"))]);
    let mut leader =
        Engine::open(EngineConfig::new(region("us-east"), OWN.into(), streams), Default::default(), StartAs::Leader)
            .unwrap();
    assert_eq!(leader.catch_up_next(0, 1), CatchUp::Done);
    leader.caught_up(0);
    leader.start_writing(1);
    let store = MemStore::default();
    let writes = vec![WriteRequest { id: 1, op: put("k", "us-east's"), resolves: None }];
    let facts = store.load(&leader.write_needs(&writes));
    let append = leader.write(writes, &facts, 5_000).unwrap().append.unwrap();
    let mut r = Replica::new();
    let prepared = r.engine.prepare(OWN, vec![Entry { seq: 1, payload: append.payload }], 5_000);
    let facts = r.store.load(prepared.needs());
    let out = r.engine.apply(prepared, &facts).unwrap();
    r.commit(&out);

    let out = r.repair(r.differences(&peer));
    let batch = out.commit.expect("the repair changed the register");
    assert_eq!(batch.conflicts.len(), 1, "the concurrent versions are a conflict, recorded");
    assert_eq!(r.store.kv[&("b".into(), "k".into())].versions().len(), 2, "both kept as siblings");
}

#[test]
fn a_peers_document_that_does_not_load_is_left_out_and_the_rest_applies() {
    let log = eu_log();
    let mut peer = Replica::new();
    peer.deliver(entries(&log, &[1, 2, 3]));
    let mut r = Replica::new();
    let mut repair = r.differences(&peer);
    repair.docs.push((("d".into(), "broken".into()), b"not automerge".to_vec()));
    let out = r.repair(repair);
    assert!(
        out.alerts.iter().any(|a| matches!(a, Alert::RepairRefused { key, .. } if key == "broken")),
        "{:?}",
        out.alerts
    );
    assert_eq!(r.store.kv, peer.store.kv, "the registers applied");
    assert!(!r.store.docs.contains_key(&("d".into(), "broken".into())));
}

#[test]
fn a_peers_waiting_document_changes_wait_here_too_until_their_dependency_arrives() {
    use concord_core::doc;
    use concord_core::hlc::Hlc;
    let mut source = doc::new_doc();
    let set = |prop: &str, v: i64| vec![DocOp::Set { path: vec![PathElem::Key(prop.into())], value: v.into() }];
    doc::apply_ops(&mut source, b"eu-west.1", Hlc { wall_ms: 1, logical: 0 }, &set("x", 1)).unwrap().unwrap();
    let with_first = source.save();
    let second =
        doc::apply_ops(&mut source, b"eu-west.1", Hlc { wall_ms: 2, logical: 0 }, &set("y", 2)).unwrap().unwrap();
    let k = ("d".to_string(), "doc".to_string());

    let mut r = Replica::new();
    let waiting = Repair { pending: vec![(k.clone(), vec![second.raw_bytes().to_vec()])], ..Repair::default() };
    r.repair(waiting);
    assert_eq!(r.store.pending[&k], vec![second.raw_bytes().to_vec()], "it waits for its dependency here too");

    let out = r.repair(Repair { docs: vec![(k.clone(), with_first)], ..Repair::default() });
    assert!(out.alerts.is_empty(), "{:?}", out.alerts);
    let d = doc::load_doc(&r.store.docs[&k]).unwrap();
    assert_eq!(doc::to_json(&d), serde_json::json!({"x": 1, "y": 2}));
    assert!(r.store.pending.get(&k).is_none_or(Vec::is_empty));
}

#[test]
fn a_peers_void_judgement_dead_letters_what_waits_here_behind_it() {
    let log = eu_log();
    let mut r = Replica::new();
    // 5 and 6 wait behind a gap; the peer read the log in order and found eu-west.1 void
    // from 5 on (stored right after a message that is not its predecessor). This replica
    // never read the message before 5 (retention removed it), so it cannot judge that.
    r.deliver(entries(&log, &[1, 5, 6]));
    assert_eq!(r.engine.gaps().len(), 1);
    let out = r.repair(Repair { void_from: vec![(eu1(), 5)], ..Repair::default() });
    assert!(r.engine.gaps().is_empty(), "nothing waits for ever: {:?}", out.alerts);
    assert!(r.store.waiting.is_empty());
    assert_eq!(r.store.dead_letters.len(), 2, "5 and 6 are void here too");
    assert_eq!(r.store.void_from.get(&eu1()), Some(&5));
    assert_eq!(r.engine.applied().get(&eu1()), 1, "nothing void counts as applied");
    let again = r.repair(Repair { void_from: vec![(eu1(), 5)], ..Repair::default() });
    assert!(again.commit.is_none(), "known already: {:?}", again.commit);
}
