//! Tombstone collection (`concord_engine::marks`): a tombstone goes only once every
//! region's marks show it applied; a write after a collection carries the context that
//! makes the tombstone history wherever it is still held; a changeset waits for its
//! mark's context; a new writer waits for its region's floor.
//!
//! Two regions, each a real leader engine with an in-memory store; their logs are
//! vectors of changesets delivered by hand (the region's own log to its followers, the
//! other's to its mirror).

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Output, Repair, StartAs, WriteOp,
    WriteRequest,
};

fn region(r: &str) -> RegionId {
    RegionId::new(r).unwrap()
}

fn log_of(r: &str) -> String {
    format!("LOG_{r}")
}

fn config(r: &str, other: &str) -> EngineConfig {
    let streams = BTreeMap::from([(log_of(r), region(r)), (log_of(other), region(other))]);
    EngineConfig::new(region(r), log_of(r), streams)
}

/// A replica of `region` that reads `other`'s log too.
struct Replica {
    engine: Engine,
    store: MemStore,
    /// What it appended to its region's log (a leader).
    log: Vec<Bytes>,
    /// Per stream, how far it was delivered.
    delivered: BTreeMap<String, usize>,
    now_ms: u64,
}

impl Replica {
    fn leader(r: &str, other: &str) -> Replica {
        let mut engine = Engine::open(config(r, other), Default::default(), StartAs::Leader).unwrap();
        assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
        assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
        engine.start_writing(1);
        Replica { engine, store: MemStore::default(), log: Vec::new(), delivered: BTreeMap::new(), now_ms: 1_000 }
    }

    fn follower(r: &str, other: &str) -> Replica {
        let engine = Engine::open(config(r, other), Default::default(), StartAs::Follower).unwrap();
        Replica { engine, store: MemStore::default(), log: Vec::new(), delivered: BTreeMap::new(), now_ms: 1_000 }
    }

    fn commit(&mut self, out: &Output) {
        if let Some(b) = &out.commit {
            self.store.commit(b);
        }
        assert_eq!(self.engine.validate(), Ok(()));
    }

    /// One write, appended and stored.
    fn write(&mut self, op: WriteOp) {
        self.now_ms += 1_000;
        let writes = vec![WriteRequest { id: 1, op, resolves: None }];
        let facts = self.store.load(&self.engine.write_needs(&writes));
        let out = self.engine.write(writes, &facts, self.now_ms).unwrap();
        let append = out.append.expect("a change to append");
        self.log.push(append.payload);
        let done = self.engine.append_done(AppendOutcome::Stored { stream_seq: self.log.len() as u64 });
        self.commit(&done);
    }

    fn put(&mut self, key: &str, value: &str) {
        self.write(WriteOp::Put { bucket: "b".into(), key: key.into(), value: Bytes::from(value.to_string()) });
    }

    fn delete(&mut self, key: &str) {
        self.write(WriteOp::Delete { bucket: "b".into(), key: key.into() });
    }

    fn mark(&mut self) {
        self.write(WriteOp::Mark);
    }

    /// Deliver what `from` appended that this replica has not had yet.
    fn receive(&mut self, stream: &str, from: &[Bytes]) -> Output {
        let done = self.delivered.get(stream).copied().unwrap_or(0);
        let entries: Vec<Entry> = from[done..]
            .iter()
            .enumerate()
            .map(|(i, p)| Entry { seq: (done + i + 1) as u64, payload: p.clone() })
            .collect();
        self.delivered.insert(stream.to_string(), from.len());
        let prepared = self.engine.prepare(stream, entries, self.now_ms);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply(prepared, &facts).unwrap();
        self.commit(&out);
        out
    }

    /// Collect what is stable among the registers holding a tombstone.
    fn collect(&mut self) -> u64 {
        let keys: Vec<_> = self
            .store
            .kv
            .iter()
            .filter(|(_, r)| r.versions().iter().any(|v| v.is_tombstone()))
            .map(|(k, _)| k.clone())
            .collect();
        let prepared = self.engine.prepare_collect(keys);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply_collect(prepared, &facts);
        self.commit(&out);
        out.stats.tombstones_collected
    }

    /// A complete anti-entropy round against `peer`, as the node's runs it: the peer's
    /// registers that differ, the keys it lacks, its applied vector, and the lift of every
    /// gap as far as the peer applied.
    fn repair_from(&mut self, peer: &Replica) -> Output {
        let (mine, theirs) = (&self.store.kv, &peer.store.kv);
        let peer_applied = peer.engine.applied().clone();
        let through = concord_engine::lifts(self.engine.applied(), &self.engine.gaps(), &peer_applied);
        let repair = Repair {
            kv: theirs.iter().filter(|(k, r)| mine.get(*k) != Some(*r)).map(|(k, r)| (k.clone(), r.clone())).collect(),
            kv_absent: mine.keys().filter(|k| !theirs.contains_key(*k)).cloned().collect(),
            peer_applied,
            through,
            ..Repair::default()
        };
        let prepared = self.engine.prepare_repair(repair, self.now_ms);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply_repair(prepared, &facts).unwrap();
        self.commit(&out);
        out
    }

    fn has(&self, key: &str) -> bool {
        self.store.kv.contains_key(&("b".to_string(), key.to_string()))
    }
}

/// us-east and eu-west exchange everything they appended so far.
fn exchange(us: &mut Replica, eu: &mut Replica) {
    let (us_log, eu_log) = (us.log.clone(), eu.log.clone());
    us.receive(&log_of("eu-west"), &eu_log);
    eu.receive(&log_of("us-east"), &us_log);
}

/// Both mark and exchange, twice: every floor, and every `stable` built from them, then
/// covers everything applied before.
fn settle(us: &mut Replica, eu: &mut Replica) {
    for _ in 0..2 {
        us.mark();
        eu.mark();
        exchange(us, eu);
    }
}

#[test]
fn a_tombstone_goes_only_once_every_region_has_applied_it() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("k", "v");
    us.delete("k");
    assert_eq!(us.collect(), 0, "no marks: nothing is known stable");
    // eu-west marks before it applied the delete: its floor does not hold it.
    eu.mark();
    let eu_log = eu.log.clone();
    us.receive(&log_of("eu-west"), &eu_log);
    us.mark();
    us.mark();
    assert!(us.engine.stable().is_some());
    assert_eq!(us.collect(), 0, "eu-west's floor does not hold the delete");
    assert!(us.has("k"));
    // Once eu-west applied it and said so, and us-east marked after learning that:
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    assert_eq!(us.collect(), 1);
    assert_eq!(eu.collect(), 1);
    assert!(!us.has("k") && !eu.has("k"));
    assert_eq!(us.store.kv, eu.store.kv);
}

#[test]
fn a_write_after_a_collection_makes_the_tombstone_history_where_it_is_still_held() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("k", "v");
    exchange(&mut us, &mut eu);
    // eu-west deletes: us-east's next write of k names us-east's own sequence, not the
    // delete's, so only its context says it came after the delete.
    eu.delete("k");
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    assert_eq!(us.collect(), 1, "us-east collects; eu-west does not (yet)");
    assert!(eu.has("k"));
    us.put("k", "again");
    exchange(&mut us, &mut eu);
    let reg = &eu.store.kv[&("b".to_string(), "k".to_string())];
    assert_eq!(reg.versions().len(), 1, "not a conflict: the write came after the delete ({reg:?})");
    assert_eq!(reg.winner().value.as_deref(), Some(&b"again"[..]));
    assert!(eu.store.conflicts.is_empty());
    assert_eq!(us.store.kv, eu.store.kv);
}

#[test]
fn a_write_concurrent_with_the_delete_is_kept_or_logged_and_both_regions_end_alike() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("k", "v");
    exchange(&mut us, &mut eu);
    us.delete("k");
    eu.now_ms += 10_000; // eu-west's write is later: it wins over the delete
    eu.put("k", "concurrent");
    exchange(&mut us, &mut eu);
    assert_eq!(us.store.kv, eu.store.kv);
    assert_eq!(us.store.kv[&("b".to_string(), "k".to_string())].versions().len(), 2, "siblings");
    settle(&mut us, &mut eu);
    assert_eq!(us.collect(), 1, "the losing tombstone goes");
    assert_eq!(eu.collect(), 1);
    assert_eq!(us.store.kv, eu.store.kv);
    let reg = &us.store.kv[&("b".to_string(), "k".to_string())];
    assert_eq!(reg.versions().len(), 1);
    assert_eq!(reg.winner().value.as_deref(), Some(&b"concurrent"[..]));
    assert!(!us.store.conflicts.is_empty(), "the conflict stays in the log");
}

#[test]
fn a_follower_applies_a_marked_changeset_only_once_it_holds_the_marks_context() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("k", "v");
    us.delete("k");
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    eu.put("after", "x");
    // A follower of eu-west that has eu-west's log but not us-east's.
    let mut f = Replica::follower("eu-west", "us-east");
    let eu_log = eu.log.clone();
    f.receive(&log_of("eu-west"), &eu_log);
    assert!(!f.engine.context_waits().is_empty(), "eu-west's marks name what us-east wrote");
    assert!(f.engine.gaps().is_empty(), "a wait for context is not a gap");
    assert!(!f.has("after"), "nothing past the mark applies before its context");
    let us_log = us.log.clone();
    f.receive(&log_of("us-east"), &us_log);
    assert!(f.engine.context_waits().is_empty());
    assert!(f.has("after"));
    f.collect();
    eu.collect();
    assert_eq!(f.store.kv, eu.store.kv);
}

#[test]
fn a_new_writer_waits_until_it_has_applied_its_regions_floor() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    eu.put("e", "1");
    exchange(&mut us, &mut eu);
    us.mark(); // us-east's floor holds eu-west's write
    // A follower of us-east that read its region's log but not eu-west's mirror is
    // promoted: it must not write before it has applied what the floor names.
    let mut f = Replica::follower("us-east", "eu-west");
    let us_log = us.log.clone();
    f.receive(&log_of("us-east"), &us_log);
    f.engine.promote();
    let last = us.log.len() as u64;
    assert_eq!(f.engine.catch_up_next(last, 100), CatchUp::Done);
    match f.engine.caught_up(last).0 {
        CaughtUp::Waiting { missing } => {
            assert_eq!(missing.get(&Origin::new(region("eu-west"), 1)), 1, "{missing:?}")
        }
        other => panic!("wrote without its region's floor: {other:?}"),
    }
    let eu_log = eu.log.clone();
    f.receive(&log_of("eu-west"), &eu_log);
    assert_eq!(f.engine.caught_up(last).0, CaughtUp::NeedEpoch);
}

#[test]
fn marking_stops_once_every_mark_covers_all_the_data_and_then_everything_is_collected() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("k", "v");
    eu.delete("k");
    eu.put("other", "x");
    exchange(&mut us, &mut eu);
    let mut rounds = 0;
    loop {
        let (due_us, due_eu) = (us.engine.mark_due(us.now_ms, 0), eu.engine.mark_due(eu.now_ms, 0));
        if !due_us && !due_eu {
            break;
        }
        rounds += 1;
        assert!(rounds <= 8, "marks beget marks: no quiescence after {rounds} rounds");
        if due_us {
            us.mark();
        }
        if due_eu {
            eu.mark();
        }
        exchange(&mut us, &mut eu);
    }
    assert!(rounds >= 2, "it took marks to make the delete stable ({rounds})");
    assert_eq!((us.collect(), eu.collect()), (1, 1), "once quiet, every region's marks cover the delete");
    assert_eq!(us.store.kv, eu.store.kv);
}

/// What a follower of eu-west holds after it missed us-east's delete of `c` (the log no
/// longer has it) and every region has collected the tombstone since; with `conflicted`,
/// eu-west wrote `c` concurrently first, and the delete superseded both versions.
fn a_follower_that_missed_a_collected_delete(conflicted: bool) -> (Replica, Replica, Replica) {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("c", "old c");
    if conflicted {
        eu.put("c", "eu-west's c");
    }
    us.put("d", "kept");
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    let mut f = Replica::follower("eu-west", "us-east");
    let (us_log, eu_log) = (us.log.clone(), eu.log.clone());
    f.receive(&log_of("us-east"), &us_log);
    f.receive(&log_of("eu-west"), &eu_log);
    assert!(f.has("c"));

    us.delete("c");
    let deleted_at = us.log.len();
    us.put("after", "x");
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    assert_eq!((us.collect(), eu.collect()), (1, 1), "every region applied the delete: its tombstone goes");
    assert!(!us.has("c") && !eu.has("c"));

    // The follower reads us-east's log from after the delete: retention took it.
    f.delivered.insert(log_of("us-east"), deleted_at);
    let (us_log, eu_log) = (us.log.clone(), eu.log.clone());
    f.receive(&log_of("us-east"), &us_log);
    f.receive(&log_of("eu-west"), &eu_log);
    assert_eq!(f.engine.gaps().len(), 1, "us-east's changes wait behind the lost delete");
    (us, eu, f)
}

#[test]
fn a_replica_lifted_past_a_delete_that_every_region_collected_drops_the_deleted_value() {
    let (us, _eu, mut f) = a_follower_that_missed_a_collected_delete(false);
    // us-east's leader holds no `c` at all: nothing it sends supersedes the old value.
    let out = f.repair_from(&us);
    assert!(f.engine.gaps().is_empty(), "lifted: {:?}", out.alerts);
    assert_eq!(out.stats.values_dropped, 1, "the old value of c");
    assert!(!f.has("c"), "the deleted value came back: {:?}", f.store.kv.get(&("b".to_string(), "c".to_string())));
    assert!(f.has("d") && f.has("after"));
    assert_eq!(f.store.kv, us.store.kv);
    assert!(f.repair_from(&us).commit.is_none(), "a second round changes nothing");
}

#[test]
fn a_version_the_peer_has_not_applied_stays_when_the_peer_lacks_the_key() {
    let (us, _eu, mut f) = a_follower_that_missed_a_collected_delete(false);
    // A peer that never applied the put of `c` (an empty replica of us-east's region
    // that applied nothing) lacks `c` too: that says nothing about it.
    let empty = Replica::follower("us-east", "eu-west");
    assert_eq!(f.repair_from(&empty).stats.values_dropped, 0);
    assert!(f.has("c"), "a version the peer never applied is not superseded there");
    assert_eq!(f.engine.gaps().len(), 1, "nothing lifted");
    f.repair_from(&us);
    assert!(!f.has("c"));
}

#[test]
fn a_conflict_the_missed_delete_ended_is_resolved_by_anti_entropy() {
    let (us, _eu, mut f) = a_follower_that_missed_a_collected_delete(true);
    let open = |f: &Replica| f.store.conflicts.values().filter(|r| r.resolved.is_none()).count();
    assert_eq!(f.store.kv[&("b".to_string(), "c".to_string())].versions().len(), 2, "siblings");
    assert_eq!(open(&f), 1, "the conflict is open here");
    assert_eq!(f.repair_from(&us).stats.values_dropped, 2, "both siblings");
    assert!(!f.has("c"));
    assert_eq!(open(&f), 0, "the delete that ended the conflict is gone, not the fact that it ended");
    let record = f.store.conflicts.values().next().unwrap();
    assert_eq!(record.resolved.as_ref().unwrap().by, "anti-entropy");
    assert_eq!(f.store.kv, us.store.kv);
}

#[test]
fn a_tombstone_the_peer_collected_first_stays_until_collection_takes_it_here() {
    let (mut us, mut eu) = (Replica::leader("us-east", "eu-west"), Replica::leader("eu-west", "us-east"));
    us.put("c", "v");
    us.delete("c");
    exchange(&mut us, &mut eu);
    settle(&mut us, &mut eu);
    assert_eq!(eu.collect(), 1, "eu-west's sweep came first");
    // us-east's round against eu-west, which holds no `c`: a tombstone is not taken away
    // by a repair (collection takes it, within the bound us-east's next writes rely on).
    us.repair_from(&eu);
    assert!(us.has("c"));
    assert_eq!(us.collect(), 1);
    assert_eq!(us.store.kv, eu.store.kv);
}

#[test]
fn a_value_written_again_after_the_collected_delete_replaces_the_old_ones_without_a_new_conflict() {
    let (mut us, _eu, mut f) = a_follower_that_missed_a_collected_delete(true);
    us.put("c", "again");
    let again = us.store.kv[&("b".to_string(), "c".to_string())].winner().id();
    // The repair brings the new value with no context (its changeset is not here): merged
    // beside eu-west's old value it would look concurrent. The old values go first.
    let out = f.repair_from(&us);
    assert_eq!(out.stats.values_dropped, 2);
    assert_eq!(out.stats.lww_conflicts, 0, "no conflict with a value about to go");
    assert_eq!(f.store.kv, us.store.kv);
    assert_eq!(f.store.conflicts.len(), 1, "only the conflict the delete ended");
    let record = f.store.conflicts.values().next().unwrap();
    assert_eq!(record.resolved.as_ref().map(|r| r.by.as_str()), Some("anti-entropy"));
    assert!(record.versions.iter().all(|v| v.id != again), "{record:?}");
}
