//! Nothing is skipped silently: what the engine holds back, and that it survives a restart.
//!
//! A follower in us-east reads its region's log (`LOG_us`) and a mirror of eu-west's
//! (`MIRROR_eu`); changesets are written by real leader engines, or forged.

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp, PathElem};
use concord_core::hlc::Hlc;
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    Alert, AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Output, StartAs, WriteOp,
    WriteRequest,
};

const OWN: &str = "LOG_us";
const MIRROR: &str = "MIRROR_eu";

fn region(r: &str) -> RegionId {
    RegionId::new(r).unwrap()
}

fn config() -> EngineConfig {
    let streams = BTreeMap::from([(OWN.to_string(), region("us-east")), (MIRROR.to_string(), region("eu-west"))]);
    EngineConfig::new(region("us-east"), OWN.into(), streams)
}

/// A replica and its durable state.
struct Replica {
    engine: Engine,
    store: MemStore,
    cfg: EngineConfig,
}

impl Replica {
    fn new(cfg: EngineConfig) -> Replica {
        let store = MemStore::default();
        Replica { engine: Engine::open(cfg.clone(), store.durable(), StartAs::Follower).unwrap(), store, cfg }
    }

    fn deliver(&mut self, stream: &str, entries: Vec<Entry>) -> Output {
        let prepared = self.engine.prepare(stream, entries, 1_000);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply(prepared, &facts).unwrap();
        if let Some(batch) = &out.commit {
            self.store.commit(batch);
        }
        assert_eq!(self.engine.validate(), Ok(()));
        out
    }

    /// Crash and start again from what was committed.
    fn restart(&mut self) {
        self.engine = Engine::open(self.cfg.clone(), self.store.durable(), StartAs::Follower).unwrap();
    }
}

/// The changesets a real leader of `r` (epoch 1) writes for `writes` batches.
fn written(r: &str, batches: usize) -> Vec<Bytes> {
    let streams = BTreeMap::from([(format!("LOG_{r}"), region(r))]);
    let mut engine =
        Engine::open(EngineConfig::new(region(r), format!("LOG_{r}"), streams), Default::default(), StartAs::Leader)
            .unwrap();
    assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
    assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
    engine.start_writing(1);
    let mut store = MemStore::default();
    let mut out = Vec::new();
    for i in 0..batches {
        let op = WriteOp::Put { bucket: "b".into(), key: format!("k{i}"), value: Bytes::from(format!("v{i}")) };
        let writes = vec![WriteRequest { id: i as u64, op, resolves: None }];
        let facts = store.load(&engine.write_needs(&writes));
        let append = engine.write(writes, &facts, 1_000).unwrap().append.unwrap();
        out.push(append.payload);
        let done = engine.append_done(AppendOutcome::Stored { stream_seq: i as u64 + 1 });
        store.commit(done.commit.as_ref().unwrap());
    }
    out
}

fn entries(payloads: &[Bytes], seqs: &[u64]) -> Vec<Entry> {
    seqs.iter().map(|s| Entry { seq: *s, payload: payloads[*s as usize - 1].clone() }).collect()
}

fn eu(epoch: u64) -> Origin {
    Origin::new(region("eu-west"), epoch)
}

#[test]
fn a_newer_format_parks_its_stream_and_the_others_go_on() {
    let mut r = Replica::new(config());
    let mut eu_log = written("eu-west", 3);
    let mut future = eu_log[1].to_vec();
    future[3] = 9; // the format version byte
    eu_log[1] = Bytes::from(future);
    let out = r.deliver(MIRROR, entries(&eu_log, &[1, 2, 3]));
    assert!(
        out.alerts
            .iter()
            .any(|a| matches!(a, Alert::Parked { stream_seq: 2, reason, .. } if reason.contains("version 9")))
    );
    assert_eq!(out.unfollow, vec![MIRROR.to_string()]);
    assert_eq!(r.engine.applied().get(&eu(1)), 1, "nothing from the parked message on is applied");
    assert_eq!(r.engine.cursor(MIRROR), 1, "the cursor stays before it");
    assert!(r.deliver(MIRROR, entries(&eu_log, &[3])).commit.is_none(), "a parked stream takes nothing");
    // The region's own log goes on.
    let us_log = written("us-east", 2);
    r.deliver(OWN, entries(&us_log, &[1, 2]));
    assert_eq!(r.engine.applied().get(&Origin::new(region("us-east"), 1)), 2);
    // A restarted node (an upgraded one would read it) starts the stream at the message.
    r.restart();
    assert!(r.engine.streams_to_follow().contains(&(MIRROR.to_string(), 2)));
    r.deliver(MIRROR, entries(&eu_log, &[2, 3]));
    assert_eq!(r.engine.parked()[MIRROR].stream_seq, 2, "this build still cannot read it");
    assert_eq!(r.engine.applied().get(&eu(1)), 1);
}

#[test]
fn a_gap_waits_durably_and_the_applied_vector_stays_below_it() {
    let mut r = Replica::new(config());
    let eu_log = written("eu-west", 4);
    let out = r.deliver(MIRROR, entries(&eu_log, &[1, 3, 4]));
    assert!(out.alerts.contains(&Alert::GapOpened { origin: eu(1), applied: 1, first_seq: 3 }));
    assert_eq!(r.engine.applied().get(&eu(1)), 1, "never past the gap");
    assert_eq!(r.engine.cursor(MIRROR), 4, "the waiting ones are consumed (kept durably)");
    assert_eq!(r.store.waiting.len(), 2);
    r.restart();
    let gaps = r.engine.gaps();
    assert_eq!((gaps.len(), gaps[0].applied, gaps[0].next_waiting, gaps[0].waiting), (1, 1, 3, 2));
    let out = r.deliver(MIRROR, entries(&eu_log, &[2]));
    assert!(out.alerts.contains(&Alert::GapClosed { origin: eu(1), applied: 4 }));
    assert_eq!(r.engine.applied().get(&eu(1)), 4);
    assert!(r.store.waiting.is_empty() && r.engine.gaps().is_empty());
    assert_eq!(r.store.kv.len(), 4, "every key arrived, in order");
}

#[test]
fn beyond_the_waiting_bound_the_stream_parks() {
    let mut cfg = config();
    cfg.waiting_max = 2;
    let mut r = Replica::new(cfg);
    let eu_log = written("eu-west", 5);
    let out = r.deliver(MIRROR, entries(&eu_log, &[1, 3, 4, 5]));
    assert!(
        out.alerts
            .iter()
            .any(|a| matches!(a, Alert::Parked { stream_seq: 5, reason, .. } if reason.contains("waiting_max")))
    );
    assert_eq!((r.engine.waiting_count(), r.engine.cursor(MIRROR)), (2, 4));
}

#[test]
fn garbage_and_foreign_changesets_are_dead_letters() {
    let mut r = Replica::new(config());
    let foreign = written("us-east", 1).remove(0); // us-east's changeset on eu-west's mirror
    let eu_log = written("eu-west", 1);
    let delivered = vec![
        Entry { seq: 1, payload: Bytes::from_static(b"not a changeset") },
        Entry { seq: 2, payload: foreign.clone() },
        Entry { seq: 3, payload: eu_log[0].clone() },
    ];
    let out = r.deliver(MIRROR, delivered.clone());
    let letters: Vec<_> = r.store.dead_letters.values().collect();
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0].stream_seq, letters[0].payload.as_slice()), (1, &b"not a changeset"[..]));
    assert_eq!(
        (letters[1].origin.as_deref(), letters[1].reason.contains("in the log of eu-west")),
        (Some("us-east.1"), true)
    );
    assert_eq!(out.alerts.iter().filter(|a| matches!(a, Alert::DeadLettered { .. })).count(), 2);
    assert_eq!(r.engine.applied().get(&Origin::new(region("us-east"), 1)), 0, "never claimed");
    assert_eq!(r.engine.applied().get(&eu(1)), 1, "the good one after them applies");
    // A redelivery does not file them twice.
    r.deliver(MIRROR, delivered);
    assert_eq!((r.store.dead_letters.len(), r.engine.dead_letters()), (2, 2));
}

/// A document change by `actor`, as that actor's first change of a fresh document.
fn doc_change(actor: &Origin, value: i64) -> Vec<u8> {
    let mut d = doc::new_doc();
    let ops = [DocOp::Set { path: vec![PathElem::Key("x".into())], value: serde_json::json!(value) }];
    doc::apply_ops(&mut d, &actor.actor_bytes(), Hlc::ZERO, &ops).unwrap().unwrap().raw_bytes().to_vec()
}

fn doc_changeset(origin: &Origin, first_seq: u64, change: Vec<u8>) -> Bytes {
    let c = Change {
        hlc: Hlc::ZERO,
        bucket: "d".into(),
        key: "doc".into(),
        body: ChangeBody::Doc { change },
        resolves: None,
    };
    Bytes::from(Changeset { origin: origin.clone(), first_seq, changes: vec![c] }.encode())
}

#[test]
fn a_change_the_document_refuses_is_a_dead_letter_and_its_origin_waits_behind_it() {
    let mut r = Replica::new(config());
    let o = eu(2);
    // The same actor's first change twice, with different content: the document takes
    // the first and refuses the second (a reused actor sequence).
    let log = [
        doc_changeset(&o, 1, doc_change(&o, 1)),
        doc_changeset(&o, 2, doc_change(&o, 2)),
        doc_changeset(&o, 3, b"later".to_vec()),
    ];
    let mut third = Changeset::decode(&log[2]).unwrap();
    third.changes[0].body = ChangeBody::Put { value: b"v".to_vec(), vv: [(o.clone(), 3)].into_iter().collect() };
    let log = [log[0].clone(), log[1].clone(), Bytes::from(third.encode())];
    let out = r.deliver(MIRROR, entries(&log, &[1, 2, 3]));
    let letter = r.store.dead_letters.values().next().expect("a dead letter");
    assert!(letter.reason.contains("refused"), "{}", letter.reason);
    assert_eq!((letter.stream_seq, letter.first_seq), (2, Some(2)));
    assert!(out.alerts.iter().any(|a| matches!(a, Alert::DeadLettered { stream_seq: 2, .. })));
    assert_eq!(r.engine.applied().get(&o), 1, "the refused change is never claimed");
    assert_eq!(r.engine.gaps().len(), 1, "what follows it waits behind it");
    let saved = doc::load_doc(&r.store.docs[&("d".to_string(), "doc".to_string())]).unwrap();
    assert_eq!(doc::to_json(&saved), serde_json::json!({"x": 1}));
}

#[test]
fn only_a_newer_format_parks_other_versions_are_garbage() {
    let mut r = Replica::new(config());
    let eu_log = written("eu-west", 2);
    let delivered = vec![
        Entry { seq: 1, payload: Bytes::from_static(b"CCS\x00") },
        Entry { seq: 2, payload: eu_log[0].clone() },
        Entry { seq: 3, payload: eu_log[1].clone() },
    ];
    r.deliver(MIRROR, delivered);
    assert!(r.engine.parked().is_empty(), "no build ever wrote version 0: nothing to wait for");
    assert_eq!(r.store.dead_letters.len(), 1);
    assert_eq!(r.engine.applied().get(&eu(1)), 2, "the stream goes on");
}

#[test]
fn a_forged_message_on_its_own_log_does_not_stop_a_leader() {
    let mut store = MemStore::default();
    let mut e = Engine::open(config(), store.durable(), StartAs::Leader).unwrap();
    assert_eq!(e.catch_up_next(0, 100), CatchUp::Done);
    assert_eq!(e.caught_up(0).0, CaughtUp::NeedEpoch);
    e.start_writing(1);
    let op = WriteOp::Put { bucket: "b".into(), key: "k".into(), value: Bytes::from_static(b"v") };
    let writes = vec![WriteRequest { id: 1, op, resolves: None }];
    let facts = store.load(&e.write_needs(&writes));
    e.write(writes, &facts, 1_000).unwrap();
    // Someone published garbage to the log first: the append is fenced.
    assert!(e.append_done(AppendOutcome::Failed("wrong last sequence".into())).catch_up);
    let prepared = e.prepare(OWN, vec![Entry { seq: 1, payload: Bytes::from_static(b"CCS\x00") }], 1_000);
    let facts = store.load(prepared.needs());
    let out = e.apply(prepared, &facts).unwrap();
    store.commit(out.commit.as_ref().unwrap());
    e.read_through(OWN, 1);
    assert_eq!(e.catch_up_next(1, 100), CatchUp::Done);
    assert_eq!(e.caught_up(1).0, CaughtUp::NeedEpoch, "the garbage is a dead letter; the leader writes on");
    assert_eq!(store.dead_letters.len(), 1);
}

#[test]
fn a_refusal_found_for_an_entry_below_the_cursor_is_still_a_dead_letter() {
    let mut r = Replica::new(config());
    let o = eu(2);
    let mut third = Changeset::decode(&doc_changeset(&o, 3, doc_change(&o, 9))).unwrap();
    third.changes[0].body = ChangeBody::Put { value: b"v".to_vec(), vv: [(o.clone(), 3)].into_iter().collect() };
    let log =
        [doc_changeset(&o, 1, doc_change(&o, 1)), doc_changeset(&o, 2, doc_change(&o, 2)), Bytes::from(third.encode())];
    r.deliver(MIRROR, entries(&log, &[1, 3]));
    assert_eq!(r.engine.cursor(MIRROR), 3);
    // The missing one arrives late (a consumer rewind, a re-read): the document refuses it.
    let out = r.deliver(MIRROR, entries(&log, &[2]));
    assert!(out.alerts.iter().any(|a| matches!(a, Alert::DeadLettered { stream_seq: 2, .. })), "{:?}", out.alerts);
    assert_eq!(r.store.dead_letters.len(), 1);
    assert_eq!(r.engine.applied().get(&o), 1);
    assert_eq!(r.engine.gaps().len(), 1, "the origin visibly waits behind it");
}

#[test]
fn lowering_the_waiting_bound_keeps_what_waits_and_refuses_more() {
    let mut r = Replica::new(config());
    let eu_log = written("eu-west", 6);
    r.deliver(MIRROR, entries(&eu_log, &[1, 3, 4, 5]));
    assert_eq!(r.store.waiting.len(), 3);
    r.cfg.waiting_max = 2;
    r.restart();
    assert_eq!(r.engine.waiting_count(), 3, "the node starts with what waits");
    let out = r.deliver(MIRROR, entries(&eu_log, &[6]));
    assert!(out.alerts.iter().any(|a| matches!(a, Alert::Parked { stream_seq: 6, .. })));
}

#[test]
fn a_stream_parked_for_room_resumes_when_other_gaps_close() {
    let mut cfg = config();
    cfg.waiting_max = 2;
    let mut r = Replica::new(cfg);
    let (eu_log, us_log) = (written("eu-west", 4), written("us-east", 3));
    r.deliver(MIRROR, entries(&eu_log, &[1, 3, 4]));
    let out = r.deliver(OWN, entries(&us_log, &[1, 3]));
    assert!(out.alerts.iter().any(|a| matches!(a, Alert::Parked { stream_seq: 3, .. })), "no room: {:?}", out.alerts);
    // eu-west's gap closes: room again, and the region's log is followed again.
    let out = r.deliver(MIRROR, entries(&eu_log, &[2]));
    assert!(out.alerts.contains(&Alert::Resumed { stream: OWN.into() }));
    assert!(out.follow.contains(&(OWN.to_string(), 2)));
    assert!(r.engine.parked().is_empty());
    r.deliver(OWN, entries(&us_log, &[2, 3]));
    assert_eq!(r.engine.applied().get(&Origin::new(region("us-east"), 1)), 3);
}

#[test]
fn a_document_write_counts_its_value_in_the_batch_limit() {
    let big = "x".repeat(1 << 20);
    let ops = vec![DocOp::Set { path: vec![PathElem::Key("t".into())], value: serde_json::json!(big) }];
    let op = WriteOp::Doc { bucket: "d".into(), key: "doc".into(), ops };
    assert!(op.bytes() > 1 << 20, "estimated at {} bytes", op.bytes());
}
