//! The simulated deployment: regions, each with a log, mirrors of the other regions'
//! logs, a leader and followers; clients; simulated time; and the faults.
//!
//! One step picks one thing to happen, at random (seeded): a client write, a node's
//! writer doing its next thing, a node consuming from a stream, NATS copying a mirror,
//! or a fault. Faults: duplicated, delayed and reordered delivery (consumers rewind and
//! streams progress independently), a dropped message (a consumer skips one entry), a
//! partition of a region (its mirrors stop), a node crash (it loses everything but its
//! committed store; in-flight writes end unanswered) and its restart, an append whose
//! outcome is unknown (stored or not), a follower promoted while the old leader still
//! writes (a deposed leader), a leader losing its lease (it steps down; a follower is
//! promoted), garbage published straight to a region's log (dead letters
//! everywhere; the leader's next append is fenced), and retention removing a log's
//! oldest entries, read or not (what a replica missed then reaches it only by
//! anti-entropy: a node's round against another region's leader, or its own region's,
//! is a step too).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_core::doc::{DocOp, PathElem};
use concord_core::ids::RegionId;
use concord_engine::{AppendOutcome, Engine, EngineConfig, Facts, MemStore, StartAs, WriteOp};

use crate::log::SimLog;
use crate::oracle::Oracle;
use crate::rng::Rng;
use crate::{Mutation, Options};

pub const BUCKET: &str = "kv";
pub const DOC_BUCKET: &str = "docs";
pub const DOC_KEY: &str = "shared";
pub const KEYS: usize = 5;
/// Most writes waiting at one node's writer; beyond it a write is refused (overloaded).
const QUEUE_MAX: usize = 64;

pub fn own_stream(region: &str) -> String {
    format!("LOG_{region}")
}

pub fn mirror_stream(region: &str) -> String {
    format!("MIRROR_{region}")
}

/// An append made, waiting for its outcome to reach the writer.
pub struct InFlight {
    pub ids: Vec<u64>,
    pub outcome: AppendOutcome,
}

pub struct SimNode {
    pub name: String,
    pub region: usize,
    pub store: MemStore,
    pub engine: Option<Engine>,
    /// Restarts as a leader (it wrote last time) or as a follower.
    pub leads: bool,
    /// Stream → the next sequence its consumer delivers.
    pub consumers: BTreeMap<String, u64>,
    pub queue: VecDeque<u64>,
    /// Appends made, oldest first.
    pub inflight: VecDeque<InFlight>,
    pub down_steps: u32,
    /// Every changeset range ever delivered to (or written by) this node, per origin.
    pub seen: BTreeMap<concord_core::ids::Origin, BTreeSet<(u64, u64)>>,
    /// Every version of every register this node collected, by key (the checks' memory
    /// of what collection took away).
    pub collected: BTreeMap<concord_engine::DocKey, Vec<concord_core::lww::Version>>,
}

pub struct World {
    pub seed: u64,
    pub rng: Rng,
    pub opts: Options,
    pub now_ms: u64,
    pub steps: u64,
    pub regions: Vec<String>,
    pub logs: Vec<SimLog>,
    /// (destination, source) → how much of the source's log the destination's mirror holds.
    pub copied: BTreeMap<(usize, usize), u64>,
    pub cut: BTreeSet<usize>,
    pub nodes: Vec<SimNode>,
    /// The node clients send a region's writes to.
    pub leader_of: Vec<usize>,
    pub oracle: Oracle,
    /// Faults are injected now (the fault phase), not while setting up or settling.
    pub faulty: bool,
    /// Faults and alerts seen, by name (for the report).
    pub counts: BTreeMap<&'static str, u64>,
    /// How many appends a writer pipelines (drawn from the seed: 1 to 4).
    pub appends_in_flight_max: usize,
    /// Retention and anti-entropy in this run ([`Options::anti_entropy`], and drawn from
    /// the seed).
    pub anti_entropy: bool,
}

impl World {
    pub fn new(seed: u64, opts: Options) -> World {
        let names = ["us-east", "eu-west", "ap-south", "sa-east"];
        let regions: Vec<String> = names[..opts.regions].iter().map(|s| s.to_string()).collect();
        let mut rng = Rng::new(seed);
        let appends_in_flight_max = 1 + rng.below(4);
        // A third of the runs go without: what a broken rule did then stays for the final
        // checks to see (anti-entropy would repair some of it).
        let anti_entropy = opts.anti_entropy && !rng.chance(33);
        let mut world = World {
            seed,
            rng,
            appends_in_flight_max,
            anti_entropy,
            opts,
            now_ms: 1_700_000_000_000,
            steps: 0,
            logs: regions.iter().map(|_| SimLog::default()).collect(),
            copied: BTreeMap::new(),
            cut: BTreeSet::new(),
            nodes: Vec::new(),
            leader_of: Vec::new(),
            oracle: Oracle::default(),
            counts: BTreeMap::new(),
            faulty: false,
            regions,
        };
        for r in 0..world.regions.len() {
            world.leader_of.push(world.nodes.len());
            for i in 0..=world.opts.followers {
                let name = format!("{}-{}", world.regions[r], i + 1);
                world.add_node(name, r, i == 0);
            }
        }
        world
    }

    fn add_node(&mut self, name: String, region: usize, leads: bool) {
        self.nodes.push(SimNode {
            name,
            region,
            store: MemStore::default(),
            engine: None,
            leads,
            consumers: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            down_steps: 0,
            seen: BTreeMap::new(),
            collected: BTreeMap::new(),
        });
        let n = self.nodes.len() - 1;
        self.start_node(n);
    }

    pub fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub fn config(&self, region: usize) -> EngineConfig {
        let name = &self.regions[region];
        let mut streams = BTreeMap::new();
        for (i, r) in self.regions.iter().enumerate() {
            let stream = if i == region { own_stream(r) } else { mirror_stream(r) };
            streams.insert(stream, RegionId::new(r.as_str()).expect("a valid region"));
        }
        let mut cfg = EngineConfig::new(RegionId::new(name.as_str()).expect("valid"), own_stream(name), streams);
        cfg.appends_in_flight_max = self.appends_in_flight_max;
        cfg.mutation = self.opts.mutation.map(|m| match m {
            Mutation::IgnoreVersionVector => concord_engine::Mutation::IgnoreVersionVector,
            Mutation::ApplyPastGaps => concord_engine::Mutation::ApplyPastGaps,
            Mutation::WaitBehindVoid => concord_engine::Mutation::WaitBehindVoid,
            Mutation::CollectEarly => concord_engine::Mutation::CollectEarly,
        });
        cfg
    }

    /// Which region's log a stream of `region` holds.
    pub fn source_of(&self, region: usize, stream: &str) -> usize {
        if stream == own_stream(&self.regions[region]) {
            return region;
        }
        self.regions.iter().position(|r| mirror_stream(r) == stream).expect("a known stream")
    }

    /// The last sequence a stream of `region` holds now.
    pub fn stream_end(&self, region: usize, stream: &str) -> u64 {
        let src = self.source_of(region, stream);
        if src == region { self.logs[src].last_seq() } else { self.copied.get(&(region, src)).copied().unwrap_or(0) }
    }

    /// A random write from a client: LWW puts and deletes on a few shared keys (some
    /// resolving the key's open conflict, as `POST /v1/conflicts/{id}/resolve` does),
    /// counter increments, property sets and text edits of the shared document.
    pub fn random_op(&mut self, region: usize) -> (WriteOp, u64, Option<uuid::Uuid>) {
        let key = format!("k{}", self.rng.below(KEYS));
        match self.rng.below(12) {
            0..=4 => {
                let value = format!("v{}", self.rng.next() % 1000).into_bytes().into();
                let resolves = if self.rng.chance(30) { self.open_conflict(region, &key) } else { None };
                (WriteOp::Put { bucket: BUCKET.into(), key, value }, 0, resolves)
            }
            5 => (WriteOp::Delete { bucket: BUCKET.into(), key }, 0, None),
            6..=7 => {
                let by = 1 + self.rng.below(5) as u64;
                (doc_write(vec![DocOp::Inc { path: vec![PathElem::Key("count".into())], by: by as i64 }]), by, None)
            }
            8..=9 => {
                let path = vec![PathElem::Key(format!("p{}", self.rng.below(3)))];
                let value = serde_json::json!(self.rng.next() % 100);
                (doc_write(vec![DocOp::Set { path, value }]), 0, None)
            }
            _ => {
                let text = ["a", "b", "c"][self.rng.below(3)].to_string();
                let path = vec![PathElem::Key("note".into())];
                (doc_write(vec![DocOp::Splice { path, pos: 0, del: 0, text }]), 0, None)
            }
        }
    }

    /// The open conflict of `key` as the region's leader knows it, if any.
    fn open_conflict(&self, region: usize, key: &str) -> Option<uuid::Uuid> {
        let store = &self.nodes[self.leader_of[region]].store;
        let open_key = concord_engine::open_key(BUCKET, key, None);
        store.open.get(&open_key).copied()
    }

    /// A client sends a write to `region`: to the node it believes leads, mostly.
    pub fn client_write(&mut self, region: usize, op: WriteOp, inc: u64, resolves: Option<uuid::Uuid>) -> u64 {
        let id = self.oracle.new_write(op, inc, resolves);
        let in_region: Vec<usize> = (0..self.nodes.len()).filter(|n| self.nodes[*n].region == region).collect();
        let n = if self.rng.chance(85) { self.leader_of[region] } else { in_region[self.rng.below(in_region.len())] };
        let node = &mut self.nodes[n];
        if node.engine.is_none() {
            self.oracle.fail(id, "connection refused: the node is down");
        } else if node.queue.len() >= QUEUE_MAX {
            self.oracle.fail(id, "overloaded");
        } else {
            node.queue.push_back(id);
        }
        id
    }

    /// Every node writing for `region` marks (the runtime does it on a timer; here a
    /// deposed writer that has not noticed yet may still think it writes).
    pub fn mark(&mut self, region: usize) {
        for n in 0..self.nodes.len() {
            let writes = self.nodes[n].engine.as_ref().is_some_and(|e| e.writing_origin().is_some());
            if self.nodes[n].region == region && writes {
                let id = self.oracle.new_write(WriteOp::Mark, 0, None);
                self.nodes[n].queue.push_back(id);
            }
        }
    }

    /// One random step of the fault phase.
    pub fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        self.now_ms += self.rng.below(40) as u64;
        for n in 0..self.nodes.len() {
            self.tick_down(n);
        }
        let n = self.rng.below(self.nodes.len());
        match self.rng.below(100) {
            0..=24 => {
                let region = self.rng.below(self.regions.len());
                let (op, inc, resolves) = self.random_op(region);
                self.client_write(region, op, inc, resolves);
                Ok(())
            }
            25..=44 => self.activate(n),
            45..=46 => {
                let region = self.rng.below(self.regions.len());
                self.mark(region);
                Ok(())
            }
            47..=49 => self.collect(n),
            50..=77 => self.consume(n, self.faulty),
            78..=79 if self.anti_entropy => {
                let peer = self.leader_of[self.rng.below(self.regions.len())];
                self.anti_entropy(n, peer)
            }
            78..=79 => Ok(()),
            80..=91 => {
                self.copy_some_mirror();
                Ok(())
            }
            _ if self.faulty => self.fault(),
            _ => Ok(()),
        }
    }

    fn copy_some_mirror(&mut self) {
        let (dst, src) = (self.rng.below(self.regions.len()), self.rng.below(self.regions.len()));
        if dst == src || self.cut.contains(&dst) || self.cut.contains(&src) {
            return;
        }
        let have = self.copied.get(&(dst, src)).copied().unwrap_or(0);
        let more = 1 + self.rng.below(10) as u64;
        self.copied.insert((dst, src), (have + more).min(self.logs[src].last_seq()));
    }

    fn fault(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.nodes.len());
        match self.rng.below(100) {
            0..=21 => self.crash(n),
            22..=23 => self.publish_garbage(),
            24 => self.retention(),
            25..=59 => {
                let r = self.rng.below(self.regions.len());
                if self.cut.insert(r) {
                    self.count("partitions");
                }
            }
            60..=79 => self.cut.clear(),
            80..=89 => return self.step_down(n),
            90..=94 => self.retention(),
            _ => return self.promote(n),
        }
        Ok(())
    }

    /// Retention removes a region's oldest entries: all but the last few, of those every
    /// node of the region has read (its committed cursor). Other regions' replicas may
    /// miss them. (A node of the region itself missing them would need the lease's
    /// election to pick the freshest follower, which `promote` does not model.)
    fn retention(&mut self) {
        if !self.anti_entropy {
            return;
        }
        let r = self.rng.below(self.regions.len());
        let own = own_stream(&self.regions[r]);
        let read_by_all = self
            .nodes
            .iter()
            .filter(|n| n.region == r)
            .map(|n| n.store.cursors.get(&own).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let keep = self.rng.below(8) as u64;
        let to = read_by_all.min(self.logs[r].last_seq().saturating_sub(keep));
        if self.logs[r].trim_to(to) {
            self.count("log entries removed");
        }
    }

    /// Someone publishes garbage straight to a region's log (no expected sequence):
    /// bytes that are no changeset, or a changeset header of a version no build wrote.
    fn publish_garbage(&mut self) {
        let r = self.rng.below(self.regions.len());
        let payload: &'static [u8] = if self.rng.chance(50) { b"not a changeset" } else { b"CCS\x00" };
        let last = self.logs[r].last_seq();
        self.logs[r].append(bytes::Bytes::from_static(payload), &format!("garbage-{}", self.steps), last);
        self.count("garbage published");
    }

    /// Open a node's engine from its committed store, in the role it had.
    pub fn start_node(&mut self, n: usize) {
        let cfg = self.config(self.nodes[n].region);
        let start = if self.nodes[n].leads { StartAs::Leader } else { StartAs::Follower };
        let node = &mut self.nodes[n];
        let engine = Engine::open(cfg, node.store.durable(), start).expect("committed state opens");
        node.consumers = engine.streams_to_follow().into_iter().collect();
        node.engine = Some(engine);
    }

    pub fn crash(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.engine.is_none() {
            return;
        }
        node.engine = None;
        node.consumers.clear();
        let mut lost: Vec<u64> = node.queue.drain(..).collect();
        lost.extend(node.inflight.drain(..).flat_map(|f| f.ids));
        node.down_steps = 5 + self.rng.below(40) as u32;
        self.oracle.unknown(lost);
        self.count("crashes");
    }

    fn tick_down(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.engine.is_some() {
            return;
        }
        node.down_steps = node.down_steps.saturating_sub(1);
        if node.down_steps == 0 {
            self.start_node(n);
        }
    }

    /// A writer loses its lease (it could not renew it in time): it steps down and
    /// follows. Clients keep sending writes to it (refused) until a follower is
    /// promoted.
    fn step_down(&mut self, n: usize) -> Result<(), String> {
        let node = &mut self.nodes[n];
        let Some(engine) = node.engine.as_mut() else { return Ok(()) };
        if !node.inflight.is_empty() || matches!(engine.role(), concord_engine::RoleView::Follower) {
            return Ok(());
        }
        let out = engine.step_down();
        node.leads = false;
        self.count("leases lost");
        self.execute(n, out)
    }

    /// Promote a follower of every region that has no writer (what the lease's
    /// election does once the lease of a dead or stepped-down leader lapses).
    pub fn elect_where_none(&mut self) -> Result<(), String> {
        for r in 0..self.regions.len() {
            let leads = |n: &SimNode| n.region == r && n.engine.as_ref().is_some_and(|e| !e.role_follows());
            if self.nodes.iter().any(leads) {
                continue;
            }
            if let Some(n) =
                (0..self.nodes.len()).find(|n| self.nodes[*n].region == r && self.nodes[*n].engine.is_some())
            {
                self.promote(n)?;
            }
        }
        Ok(())
    }

    /// Promote a follower while its region's leader still runs (it is deposed once the
    /// new leader wrote and it tries to write again).
    fn promote(&mut self, n: usize) -> Result<(), String> {
        let Some(engine) = self.nodes[n].engine.as_mut() else { return Ok(()) };
        if !engine.role_follows() {
            return Ok(());
        }
        let out = engine.promote();
        self.nodes[n].leads = true;
        self.count("promotions");
        self.execute(n, out)
    }

    /// Facts for a step, from the node's committed store.
    pub fn load(&self, n: usize, needs: &concord_engine::Needs) -> Facts {
        self.nodes[n].store.load(needs)
    }
}

fn doc_write(ops: Vec<DocOp>) -> WriteOp {
    WriteOp::Doc { bucket: DOC_BUCKET.into(), key: DOC_KEY.into(), ops }
}
