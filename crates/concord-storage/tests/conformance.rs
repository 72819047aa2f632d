//! The redb store and the simulator's in-memory store answer the engine alike.
//!
//! The simulator checks the engine over `MemStore`; production runs it over redb. Here
//! one leader engine writes random changesets (LWW puts, deletes, concurrent writers,
//! document edits, resolutions of conflicts), and two follower engines apply the same
//! deliveries (with duplicates and a gap) — one over each store. Every step must load
//! the same facts from both, produce the same output, and leave the same durable state.

use std::collections::BTreeMap;

use concord_core::doc::{DocOp, PathElem};
use concord_core::ids::RegionId;
use concord_engine::{
    AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Needs, StartAs, WriteOp, WriteRequest,
};
use concord_storage::Store;

fn config(region: &str) -> EngineConfig {
    let streams = ["us-east", "eu-west"]
        .iter()
        .map(|r| (format!("LOG_{r}"), RegionId::new(*r).unwrap()))
        .collect::<BTreeMap<_, _>>();
    EngineConfig::new(RegionId::new(region).unwrap(), format!("LOG_{region}"), streams)
}

/// A leader of `region` over a MemStore, writing into `log`.
struct Writer {
    engine: Engine,
    store: MemStore,
    log: Vec<Entry>,
}

impl Writer {
    fn new(region: &str, epoch: u64) -> Writer {
        let mut engine = Engine::open(config(region), Default::default(), StartAs::Leader).unwrap();
        assert_eq!(engine.catch_up_next(0, 10), CatchUp::Done);
        assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
        engine.start_writing(epoch);
        Writer { engine, store: MemStore::default(), log: Vec::new() }
    }

    fn write(&mut self, ops: Vec<WriteOp>, now_ms: u64) {
        let writes: Vec<WriteRequest> =
            ops.into_iter().enumerate().map(|(i, op)| WriteRequest { id: i as u64, op, resolves: None }).collect();
        let facts = self.store.load(&self.engine.write_needs(&writes));
        let out = self.engine.write(writes, &facts, now_ms).unwrap();
        let append = out.append.expect("a change");
        self.log.push(Entry { seq: self.log.len() as u64 + 1, payload: append.payload });
        let out = self.engine.append_done(AppendOutcome::Stored { stream_seq: self.log.len() as u64 });
        self.store.commit(out.commit.as_ref().unwrap());
    }
}

fn ops(i: u64) -> Vec<WriteOp> {
    let key = format!("k{}", i % 3);
    let text = |s: &str| DocOp::Splice { path: vec![PathElem::Key("t".into())], pos: 0, del: 0, text: s.into() };
    vec![
        WriteOp::Put { bucket: "kv".into(), key: key.clone(), value: format!("v{i}").into_bytes().into() },
        WriteOp::Doc {
            bucket: "docs".into(),
            key: "d".into(),
            ops: vec![
                DocOp::Set { path: vec![PathElem::Key("p".into())], value: serde_json::json!(i) },
                text(&i.to_string()),
            ],
        },
        if i % 4 == 3 {
            WriteOp::Delete { bucket: "kv".into(), key }
        } else {
            WriteOp::Doc { bucket: "docs".into(), key: "e".into(), ops: vec![text("x")] }
        },
    ]
}

fn all_needs() -> Needs {
    let mut needs = Needs::default();
    for k in 0..3 {
        needs.kv.insert(("kv".into(), format!("k{k}")));
    }
    for d in ["d", "e"] {
        needs.docs.insert(("docs".into(), d.into()));
    }
    needs
}

#[test]
fn redb_and_memory_stores_answer_the_engine_alike() {
    let dir = std::env::temp_dir().join(format!("concord-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two regions write the same keys concurrently: conflicts, siblings, doc conflicts.
    // Real times: redb keeps conflict records for 30 days by their detection time.
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let (mut us, mut eu) = (Writer::new("us-east", 1), Writer::new("eu-west", 1));
    for i in 0..12 {
        us.write(ops(i), now + i);
        eu.write(ops(i + 100), now + i);
    }
    let redb = Store::open(&dir).unwrap();
    let mut mem = MemStore::default();
    // Followers in us-east: they read both regions' logs.
    let follower_cfg = config("us-east");
    let mut a = Engine::open(follower_cfg.clone(), mem.durable(), StartAs::Follower).unwrap();
    let mut b = Engine::open(follower_cfg.clone(), redb.durable().unwrap(), StartAs::Follower).unwrap();
    // Deliveries: eu's log with a gap (entry 3 late), duplicates, then us's log.
    let mut eu_log = eu.log.clone();
    eu_log.push(Entry { seq: eu_log.len() as u64 + 1, payload: bytes::Bytes::from_static(b"not a changeset") });
    let mut deliveries: Vec<(&str, Vec<Entry>)> = vec![
        ("LOG_eu-west", eu_log[..2].to_vec()),
        ("LOG_eu-west", eu_log[3..6].to_vec()),
        ("LOG_us-east", us.log[..5].to_vec()),
        ("LOG_eu-west", eu_log[1..4].to_vec()),
        ("LOG_eu-west", eu_log[5..].to_vec()),
        ("LOG_us-east", us.log[3..].to_vec()),
    ];
    for (step, (stream, entries)) in deliveries.drain(..).enumerate() {
        let (pa, pb) = (a.prepare(stream, entries.clone(), now + 100), b.prepare(stream, entries, now + 100));
        assert_eq!(pa.needs(), pb.needs());
        let (fa, fb) = (mem.load(pa.needs()), redb.load(pb.needs()).unwrap());
        assert_eq!(fa, fb, "step {step}: the stores loaded different facts");
        let (oa, ob) = (a.apply(pa, &fa).unwrap(), b.apply(pb, &fb).unwrap());
        assert_eq!(oa.commit, ob.commit, "step {step}: different batches");
        assert_eq!(oa.alerts, ob.alerts);
        if let Some(batch) = &oa.commit {
            mem.commit(batch);
            redb.commit(batch).unwrap();
        }
        assert_eq!(mem.load(&all_needs()), redb.load(&all_needs()).unwrap(), "step {step}: stores differ");
        let (da, db) = (mem.durable(), redb.durable().unwrap());
        assert_eq!(
            (da.applied, da.cursors, da.waiting, da.dead_letters),
            (db.applied, db.cursors, db.waiting, db.dead_letters)
        );
    }
    assert!(a.gaps().is_empty(), "the late entry closed the gap");
    assert_eq!(
        (a.dead_letters(), redb.dead_letters(None, 10).unwrap().len()),
        (1, 1),
        "the garbage went to the dead letters"
    );
    let records = mem.conflicts.len();
    assert!(records > 0, "concurrent writers made conflict records");
    // A restarted engine over each store is the same engine.
    let a2 = Engine::open(follower_cfg.clone(), mem.durable(), StartAs::Follower).unwrap();
    let b2 = Engine::open(follower_cfg, redb.durable().unwrap(), StartAs::Follower).unwrap();
    assert_eq!((a2.applied(), a2.cursors()), (b2.applied(), b2.cursors()));
    let _ = std::fs::remove_dir_all(&dir);
}
