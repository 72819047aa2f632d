//! A replica of us-east as the node runs one, without I/O: the engine with an in-memory
//! store, fed stream entries and writes the way the worker feeds them. Used to consume
//! fuzzed log messages ([`crate::log_entry`]) and to build the valid state that seeds
//! snapshots and cursors ([`crate::seeds`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::ids::{Origin, RegionId};
use concord_engine::{
    AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, Entry, MemStore, Output, StartAs, WriteOp, WriteRequest,
};

/// us-east's log, and its mirror of eu-west's.
pub const OWN: &str = "CONCORD_LOG_US_EAST";
pub const MIRROR: &str = "CONCORD_MIRROR_EU_WEST";

pub fn region(name: &str) -> RegionId {
    RegionId::new(name).expect("a valid region name")
}

pub fn origin(name: &str, epoch: u64) -> Origin {
    Origin::new(region(name), epoch)
}

/// The region a stream carries the log of.
pub fn region_of(stream: &str) -> RegionId {
    region(if stream == OWN { "us-east" } else { "eu-west" })
}

pub fn config() -> EngineConfig {
    let streams = BTreeMap::from([(OWN.to_string(), region("us-east")), (MIRROR.to_string(), region("eu-west"))]);
    EngineConfig::new(region("us-east"), OWN.into(), streams)
}

pub struct Replica {
    pub engine: Engine,
    pub store: MemStore,
}

impl Replica {
    pub fn follower() -> Replica {
        let store = MemStore::default();
        let engine = Engine::open(config(), store.durable(), StartAs::Follower).expect("an empty store opens");
        Replica { engine, store }
    }

    /// us-east's leader, writing as `us-east.1` (it read its empty log first).
    pub fn leader() -> Replica {
        let store = MemStore::default();
        let mut engine = Engine::open(config(), store.durable(), StartAs::Leader).expect("an empty store opens");
        assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
        assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
        engine.start_writing(1);
        Replica { engine, store }
    }

    /// Apply `entries` of `stream` as the worker does: prepare, load, apply, commit;
    /// the engine's invariants hold after the step.
    pub fn deliver(&mut self, stream: &str, entries: Vec<Entry>, now_ms: u64) -> Output {
        let prepared = self.engine.prepare(stream, entries, now_ms);
        let facts = self.store.load(prepared.needs());
        let out = self.engine.apply(prepared, &facts).expect("state this engine wrote is not corrupt");
        if let Some(batch) = &out.commit {
            self.store.commit(batch);
        }
        if let Err(e) = self.engine.validate() {
            panic!("the engine's invariants broke after a step of {stream}: {e}");
        }
        out
    }

    /// A leader's write of one value, stored by the log at `stream_seq`: the output of
    /// the append's end (its commit applied here).
    pub fn put(&mut self, bucket: &str, key: &str, value: &[u8], stream_seq: u64, now_ms: u64) -> Output {
        let op = WriteOp::Put { bucket: bucket.into(), key: key.into(), value: Bytes::copy_from_slice(value) };
        let writes = vec![WriteRequest { id: stream_seq, op, resolves: None }];
        let facts = self.store.load(&self.engine.write_needs(&writes));
        let out = self.engine.write(writes, &facts, now_ms).expect("state this engine wrote is not corrupt");
        assert!(out.append.is_some(), "a leader's put makes an append: {:?}", out.replies);
        let done = self.engine.append_done(AppendOutcome::Stored { stream_seq });
        if let Some(batch) = &done.commit {
            self.store.commit(batch);
        }
        done
    }
}

/// A stream entry.
pub fn entry(seq: u64, payload: impl Into<Bytes>) -> Entry {
    Entry { seq, payload: payload.into() }
}
