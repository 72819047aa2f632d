//! Pipelined appends (the writer module's "Pipelined appends"): a writer with several
//! changesets in flight must end in exactly the state, replies and log of one that
//! appends them one at a time, and a failed append abandons every one after it.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp, PathElem};
use concord_core::hlc::Hlc;
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    Ack, Append, AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, RoleView, StartAs,
    WriteError, WriteOp, WriteRequest,
};
use proptest::prelude::*;

const OWN: &str = "LOG_us";
const MIRRORS: [(&str, &str); 2] = [("MIRROR_eu", "eu-west"), ("MIRROR_ap", "ap-south")];
const KEYS: usize = 3;

fn region(r: &str) -> RegionId {
    RegionId::new(r).unwrap()
}

fn config(appends_in_flight_max: usize) -> EngineConfig {
    let mut streams = BTreeMap::from([(OWN.to_string(), region("us-east"))]);
    for (stream, r) in MIRRORS {
        streams.insert(stream.to_string(), region(r));
    }
    let mut cfg = EngineConfig::new(region("us-east"), OWN.into(), streams);
    cfg.appends_in_flight_max = appends_in_flight_max;
    cfg
}

/// A change of one remote origin to the shared document: `p` set to `value`.
fn remote_doc_change(origin: &Origin, value: i64) -> Vec<u8> {
    let mut d = doc::new_doc();
    let ops = vec![DocOp::Set { path: vec![PathElem::Key("p".into())], value: serde_json::json!(value) }];
    doc::apply_ops(&mut d, &origin.actor_bytes(), Hlc { wall_ms: 500, logical: 0 }, &ops)
        .unwrap()
        .unwrap()
        .raw_bytes()
        .to_vec()
}

/// us-east's leader, after two other regions wrote every key and the document's `p`
/// concurrently: an open conflict record on each.
fn leader(appends_in_flight_max: usize) -> (Engine, MemStore) {
    let mut store = MemStore::default();
    let mut engine = Engine::open(config(appends_in_flight_max), store.durable(), StartAs::Leader).unwrap();
    assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
    assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
    engine.start_writing(1);
    for (i, (stream, r)) in MIRRORS.iter().enumerate() {
        let origin = Origin::new(region(r), 1);
        let mut changes: Vec<Change> = (0..KEYS)
            .map(|k| {
                let seq = 1 + k as u64;
                Change {
                    hlc: Hlc { wall_ms: 100 + i as u64, logical: k as u32 },
                    bucket: "b".into(),
                    key: format!("k{k}"),
                    body: ChangeBody::Put { value: vec![i as u8], vv: [(origin.clone(), seq)].into_iter().collect() },
                    resolves: None,
                }
            })
            .collect();
        changes.push(Change {
            hlc: Hlc { wall_ms: 500, logical: 0 },
            bucket: "d".into(),
            key: "doc".into(),
            body: ChangeBody::Doc { change: remote_doc_change(&origin, i as i64) },
            resolves: None,
        });
        let payload = Bytes::from(Changeset { origin, first_seq: 1, changes }.encode());
        let prepared = engine.prepare(stream, vec![Entry { seq: 1, payload }], 1_000);
        let facts = store.load(prepared.needs());
        let out = engine.apply(prepared, &facts).unwrap();
        store.commit(out.commit.as_ref().unwrap());
    }
    assert_eq!(store.open.len(), KEYS + 1, "a conflict open on every key and on the document's p");
    (engine, store)
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8),
    Delete(usize),
    /// Resolve the key's conflict (the record opened at setup) with a value.
    Resolve(usize, u8),
    DocSet(i64),
    DocInc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..KEYS, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0..KEYS).prop_map(Op::Delete),
        (0..KEYS, any::<u8>()).prop_map(|(k, v)| Op::Resolve(k, v)),
        any::<i64>().prop_map(Op::DocSet),
        Just(Op::DocInc),
    ]
}

/// The writes of `batches`, numbered from 1, with the records to resolve found in the
/// store as setup left it.
fn requests(batches: &[Vec<Op>], setup: &MemStore) -> Vec<Vec<WriteRequest>> {
    let record_of = |k: usize| {
        let key = concord_engine::open_key("b", &format!("k{k}"), None);
        *setup.open.get(&key).expect("opened at setup")
    };
    let mut id = 0;
    batches
        .iter()
        .map(|ops| {
            ops.iter()
                .map(|o| {
                    id += 1;
                    let key = |k: &usize| format!("k{k}");
                    let (op, resolves) = match o {
                        Op::Put(k, v) => {
                            (WriteOp::Put { bucket: "b".into(), key: key(k), value: Bytes::from(vec![*v]) }, None)
                        }
                        Op::Delete(k) => (WriteOp::Delete { bucket: "b".into(), key: key(k) }, None),
                        Op::Resolve(k, v) => (
                            WriteOp::Put { bucket: "b".into(), key: key(k), value: Bytes::from(vec![*v]) },
                            Some(record_of(*k)),
                        ),
                        Op::DocSet(v) => (doc_op(DocOp::Set { path: path(), value: serde_json::json!(v) }), None),
                        Op::DocInc => (doc_op(DocOp::Inc { path: vec![PathElem::Key("n".into())], by: 1 }), None),
                    };
                    WriteRequest { id, op, resolves }
                })
                .collect()
        })
        .collect()
}

fn path() -> Vec<PathElem> {
    vec![PathElem::Key("p".into())]
}

fn doc_op(op: DocOp) -> WriteOp {
    WriteOp::Doc { bucket: "d".into(), key: "doc".into(), ops: vec![op] }
}

/// What a run ends with: the store, every reply by write id, and the log (payloads).
struct Ended {
    store: MemStore,
    replies: BTreeMap<u64, Result<Ack, WriteError>>,
    log: Vec<Bytes>,
}

/// Write `batches` through a leader keeping up to `max` appends in flight; the log stores
/// every append, and its outcomes are reported in order once the pipeline is full (or
/// the batches are all made).
fn run(batches: &[Vec<Op>], max: usize) -> Ended {
    let (mut engine, mut store) = leader(max);
    let reqs = requests(batches, &store);
    let mut ended = Ended { store: MemStore::default(), replies: BTreeMap::new(), log: Vec::new() };
    let mut inflight: VecDeque<Append> = VecDeque::new();
    let mut now_ms = 2_000;
    let mut reply = |replies: Vec<(u64, Result<Ack, WriteError>)>, ended: &mut Ended| {
        for (id, r) in replies {
            assert!(ended.replies.insert(id, r).is_none(), "write {id} answered twice");
        }
    };
    for writes in reqs {
        if !engine.takes_writes() {
            finish(&mut engine, &mut store, &mut inflight, &mut ended, &mut reply);
        }
        now_ms += 1;
        let facts = store.load(&engine.write_needs(&writes));
        let mut out = engine.write(writes, &facts, now_ms).unwrap();
        assert!(out.commit.is_none(), "a write commits only once stored");
        reply(out.replies, &mut ended);
        if let Some(a) = out.append.take() {
            // Each append follows the one before it in flight.
            let before = inflight.back();
            assert_eq!(a.expected_last, before.map_or(ended.log.len() as u64, |b| b.expected_last + 1));
            inflight.push_back(a);
        }
        assert_eq!(engine.validate(), Ok(()));
    }
    while !inflight.is_empty() {
        finish(&mut engine, &mut store, &mut inflight, &mut ended, &mut reply);
    }
    ended.store = store;
    ended
}

fn finish(
    engine: &mut Engine,
    store: &mut MemStore,
    inflight: &mut VecDeque<Append>,
    ended: &mut Ended,
    reply: &mut impl FnMut(Vec<(u64, Result<Ack, WriteError>)>, &mut Ended),
) {
    let a = inflight.pop_front().expect("in flight");
    ended.log.push(a.payload.clone());
    let out = engine.append_done(AppendOutcome::Stored { stream_seq: ended.log.len() as u64 });
    assert_eq!(out.appends_abandoned, 0);
    store.commit(out.commit.as_ref().expect("stored: committed"));
    reply(out.replies, ended);
    assert_eq!(engine.validate(), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same writes, pipelined (2 to 4 in flight) or one at a time: the same log, the
    /// same replies, the same state byte for byte (registers, documents, the conflict
    /// log and its open records).
    #[test]
    fn pipelined_appends_end_as_appends_one_at_a_time(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..12),
        max in 2usize..=4,
    ) {
        let one = run(&batches, 1);
        let many = run(&batches, max);
        prop_assert_eq!(&one.log, &many.log);
        prop_assert_eq!(&one.replies, &many.replies);
        prop_assert_eq!(&one.store.kv, &many.store.kv);
        prop_assert_eq!(&one.store.docs, &many.store.docs);
        prop_assert_eq!(&one.store.conflicts, &many.store.conflicts);
        prop_assert_eq!(&one.store.open, &many.store.open);
        prop_assert_eq!(&one.store.applied, &many.store.applied);
        prop_assert_eq!(&one.store.cursors, &many.store.cursors);
    }
}

/// Two writes of one key in flight at once: the second is made over the first (it
/// supersedes it: no conflict with itself), and both are acknowledged in order.
#[test]
fn a_write_in_flight_is_the_base_of_the_next_one() {
    let ended = run(&[vec![Op::Put(0, 1)], vec![Op::Put(0, 2)], vec![Op::Resolve(1, 3)], vec![Op::Resolve(1, 4)]], 4);
    let k0 = &ended.store.kv[&("b".to_string(), "k0".to_string())];
    assert_eq!(k0.winner().value.as_deref(), Some(&[2u8][..]));
    let k1 = &ended.store.kv[&("b".to_string(), "k1".to_string())];
    assert!(!k0.is_conflicted() && !k1.is_conflicted(), "each write superseded the one in flight before it");
    let seqs: Vec<Option<u64>> = ended.replies.values().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, vec![Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(ended.log.len(), 4);
}

/// `count` single puts made with room for all of them in flight.
fn pipeline_of(count: u64) -> (Engine, MemStore, Vec<Append>) {
    let (mut engine, store) = leader(count as usize);
    let mut appends = Vec::new();
    for id in 1..=count {
        let op = WriteOp::Put { bucket: "b".into(), key: format!("x{id}"), value: Bytes::from_static(b"v") };
        let writes = vec![WriteRequest { id, op, resolves: None }];
        let facts = store.load(&engine.write_needs(&writes));
        appends.push(engine.write(writes, &facts, 2_000 + id).unwrap().append.expect("an append"));
    }
    assert!(!engine.takes_writes(), "the pipeline is full");
    (engine, store, appends)
}

/// The first of three appends in flight fails: the two after it are abandoned with it,
/// every writer hears its write may still apply, and the writer reads its log again.
#[test]
fn a_failed_append_abandons_the_ones_after_it() {
    let (mut engine, _store, _appends) = pipeline_of(3);
    let out = engine.append_done(AppendOutcome::Failed("no acknowledgement".into()));
    assert_eq!(out.appends_abandoned, 2);
    assert!(out.catch_up);
    assert!(out.commit.is_none());
    let ids: Vec<u64> = out.replies.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for (_, r) in &out.replies {
        assert!(matches!(r, Err(WriteError::LogUnavailable(m)) if m.contains("may still apply")), "{r:?}");
    }
    assert_eq!(engine.appends_in_flight(), 0);
    assert_eq!(engine.role(), RoleView::CatchingUp);
    assert_eq!(engine.validate(), Ok(()));
}

/// The second of three fails after the first was stored: the first is acknowledged and
/// committed; the third is abandoned.
#[test]
fn a_failure_in_the_middle_keeps_what_was_stored_before_it() {
    let (mut engine, mut store, _appends) = pipeline_of(3);
    let first = engine.append_done(AppendOutcome::Stored { stream_seq: 1 });
    store.commit(first.commit.as_ref().unwrap());
    assert!(matches!(&first.replies[..], [(1, Ok(_))]));
    let out = engine.append_done(AppendOutcome::Failed("fenced".into()));
    assert_eq!(out.appends_abandoned, 1);
    assert_eq!(out.replies.len(), 2);
    assert_eq!(engine.applied().get(&Origin::new(region("us-east"), 1)), 1, "what was stored stays applied");
    assert_eq!(engine.role(), RoleView::CatchingUp);
}

/// A refused-for-size append with others behind it: they expected it in the log, so they
/// are abandoned and the writer reads its log again; alone, it is just refused.
#[test]
fn an_append_too_large_with_others_behind_it_abandons_them() {
    let (mut engine, _store, _appends) = pipeline_of(2);
    let out = engine.append_done(AppendOutcome::TooLarge("max_payload".into()));
    assert_eq!(out.appends_abandoned, 1);
    assert!(matches!(&out.replies[0], (1, Err(WriteError::TooLarge(_)))));
    assert!(matches!(&out.replies[1], (2, Err(WriteError::LogUnavailable(_)))));
    assert!(out.catch_up);

    let (mut engine, _store, _appends) = pipeline_of(1);
    let out = engine.append_done(AppendOutcome::TooLarge("max_payload".into()));
    assert_eq!((out.appends_abandoned, out.catch_up), (0, false));
    assert!(matches!(engine.role(), RoleView::Leader { .. }), "it writes on");
}

fn us(epoch: u64) -> Origin {
    Origin::new(region("us-east"), epoch)
}

fn put_changeset(origin: &Origin, first_seq: u64, key: &str) -> Bytes {
    let change = Change {
        hlc: Hlc { wall_ms: 1_000 + first_seq, logical: 0 },
        bucket: "b".into(),
        key: key.into(),
        body: ChangeBody::Put { value: b"v".to_vec(), vv: [(origin.clone(), first_seq)].into_iter().collect() },
        resolves: None,
    };
    Bytes::from(Changeset { origin: origin.clone(), first_seq, changes: vec![change] }.encode())
}

/// us-east's log as a deposed leader's pipeline left it: us-east.1 stored 1; the new
/// leader us-east.2 stored its first changeset where us-east.1's second was to go (so
/// the log refused that one); us-east.1's third and fourth, sent behind it, expected
/// exactly the places after it, and were stored there.
fn deposed_pipeline_log() -> Vec<Entry> {
    vec![
        Entry { seq: 1, payload: put_changeset(&us(1), 1, "a") },
        Entry { seq: 2, payload: put_changeset(&us(2), 1, "b") },
        Entry { seq: 3, payload: put_changeset(&us(1), 3, "c") },
        Entry { seq: 4, payload: put_changeset(&us(1), 4, "d") },
    ]
}

fn follower() -> (Engine, MemStore) {
    let store = MemStore::default();
    (Engine::open(config(1), store.durable(), StartAs::Follower).unwrap(), store)
}

fn deliver(engine: &mut Engine, store: &mut MemStore, entries: Vec<Entry>) -> concord_engine::Output {
    let prepared = engine.prepare(OWN, entries, 5_000);
    let facts = store.load(prepared.needs());
    let out = engine.apply(prepared, &facts).unwrap();
    if let Some(batch) = &out.commit {
        store.commit(batch);
    }
    assert_eq!(engine.validate(), Ok(()));
    out
}

fn void_letters(store: &MemStore) -> Vec<(u64, String)> {
    store
        .dead_letters
        .values()
        .map(|d| (d.stream_seq, d.reason.clone()))
        .filter(|(_, r)| r.starts_with("void"))
        .collect()
}

/// Read in order, the changesets stored after another writer's message are void: dead
/// letters, nothing of them applied, and nothing waits (the origin is not held back for
/// ever).
#[test]
fn changesets_stored_after_another_writers_message_are_void() {
    let (mut engine, mut store) = follower();
    deliver(&mut engine, &mut store, deposed_pipeline_log());
    assert_eq!((engine.applied().get(&us(1)), engine.applied().get(&us(2))), (1, 1));
    assert_eq!(engine.waiting_count(), 0, "nothing waits: {:?}", engine.gaps());
    let void = void_letters(&store);
    assert_eq!(void.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4]);
    assert!(void[0].1.contains("us-east.2 up to 1"), "names what came before: {}", void[0].1);
    assert_eq!(store.void_from.get(&us(1)), Some(&3));
    assert!(!store.kv.contains_key(&("b".to_string(), "c".to_string())), "nothing of it applies");
    // Delivered again, they stay dead letters, once.
    deliver(&mut engine, &mut store, deposed_pipeline_log());
    assert_eq!(void_letters(&store).len(), 2);
}

/// A replica that restarted between the new leader's message and the void changeset
/// cannot tell at first (what came before is unknown): the changesets wait. Given the
/// message before and the first waiting one again (what the node's gap repair does),
/// it finds the first void, and the one behind it with it; the origin stays void after
/// a restart.
#[test]
fn a_void_changeset_found_after_a_restart_when_its_predecessor_is_given_again() {
    let (mut engine, mut store) = follower();
    let log = deposed_pipeline_log();
    deliver(&mut engine, &mut store, log[..2].to_vec());
    let mut engine = Engine::open(config(1), store.durable(), StartAs::Follower).unwrap();
    deliver(&mut engine, &mut store, log[2..].to_vec());
    assert_eq!(engine.waiting_count(), 2, "unknown after the restart: they wait");
    deliver(&mut engine, &mut store, log[1..3].to_vec());
    assert_eq!(engine.waiting_count(), 0, "{:?}", engine.gaps());
    assert_eq!(void_letters(&store).iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4]);
    let mut engine = Engine::open(config(1), store.durable(), StartAs::Follower).unwrap();
    deliver(&mut engine, &mut store, vec![Entry { seq: 5, payload: put_changeset(&us(1), 5, "e") }]);
    assert_eq!(engine.waiting_count(), 0, "void from 3 on, whatever comes of it");
    assert_eq!(void_letters(&store).len(), 3);
}
