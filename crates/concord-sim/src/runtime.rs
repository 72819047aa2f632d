//! The simulator's node runtime: what the real node does with I/O, done with the
//! in-memory logs and stores. It executes the engine's outputs in the same order (commit,
//! replies, then the rest), and checks the engine's invariants after every step.

use std::collections::BTreeSet;

use concord_core::changeset::Changeset;
use concord_core::lww::Register;
use concord_engine::{
    Alert, AppendOutcome, CatchUp, CaughtUp, Engine, Entry, Output, Repair, WriteRequest, applied_by_peer, lifts,
};

use crate::log::Appended;
use crate::world::{InFlight, World, own_stream};

/// Most log entries one catch-up step reads, and most writes in one changeset.
const CATCH_UP_CHUNK: u64 = 16;
const BATCH_WRITES_MAX: usize = 8;

impl World {
    /// The node's writer does its next thing: catch up, finish the oldest append, or
    /// start one more (pipelined: up to the engine's bound in flight, their outcomes
    /// taken in order, at random times in between).
    pub fn activate(&mut self, n: usize) -> Result<(), String> {
        let Some(engine) = self.nodes[n].engine.as_ref() else { return Ok(()) };
        if engine.catch_up_next(u64::MAX, 1) != CatchUp::Idle {
            return self.catch_up(n);
        }
        let room = engine.takes_writes();
        let node = &self.nodes[n];
        let start = !node.queue.is_empty() && room && (node.inflight.is_empty() || self.rng.chance(50));
        if start {
            return self.start_append(n);
        }
        if !node.inflight.is_empty() {
            return self.finish_append(n);
        }
        let log_last = self.logs[self.nodes[n].region].last_seq();
        let out = self.nodes[n].engine.as_mut().expect("up").tick(log_last);
        self.execute(n, out)
    }

    fn catch_up(&mut self, n: usize) -> Result<(), String> {
        let region = self.nodes[n].region;
        let own = own_stream(&self.regions[region]);
        let last = self.logs[region].last_seq();
        match self.nodes[n].engine.as_ref().expect("up").catch_up_next(last, CATCH_UP_CHUNK) {
            CatchUp::Idle => Ok(()),
            CatchUp::Read { from, to } => {
                let entries = self.logs[region].read(from, to);
                self.apply_entries(n, &own, entries)?;
                let out = self.nodes[n].engine.as_mut().expect("up").read_through(&own, to);
                self.execute(n, out)
            }
            CatchUp::Done => {
                let (outcome, out) = self.nodes[n].engine.as_mut().expect("up").caught_up(last);
                self.execute(n, out)?;
                if outcome == CaughtUp::NeedEpoch {
                    let epoch = self.logs[region].next_epoch();
                    let out = self.nodes[n].engine.as_mut().expect("up").start_writing(epoch);
                    self.execute(n, out)?;
                }
                Ok(())
            }
        }
    }

    /// The node collects what is stable among its registers holding a tombstone.
    pub fn collect(&mut self, n: usize) -> Result<(), String> {
        if self.nodes[n].engine.as_ref().is_none_or(|e| e.append_in_flight()) {
            return Ok(());
        }
        let store = &self.nodes[n].store;
        let keys: Vec<_> = store
            .kv
            .iter()
            .filter(|(_, r)| r.versions().iter().any(|v| v.is_tombstone()))
            .map(|(k, _)| k.clone())
            .collect();
        let engine = self.nodes[n].engine.as_ref().expect("up");
        let prepared = engine.prepare_collect(keys);
        let facts = self.load(n, prepared.needs());
        let out = self.nodes[n].engine.as_mut().expect("up").apply_collect(prepared, &facts);
        if let Some(batch) = &out.commit {
            let node = &mut self.nodes[n];
            for k in batch.kv_removed.iter().chain(batch.kv.iter().map(|(k, _)| k)) {
                let before = facts.kv[k].register.as_ref().expect("a candidate holds a register");
                node.collected.entry(k.clone()).or_default().extend(before.versions().iter().cloned());
            }
        }
        if out.stats.tombstones_collected > 0 {
            self.count("tombstones collected");
        }
        self.execute(n, out)
    }

    /// An anti-entropy round of node `n` against node `peer`, as the node's runs one that
    /// reads every page (`concord_node::anti_entropy`), in one engine step: the peer's
    /// registers, documents and waiting document changes that differ, the registers the
    /// peer lacks that hold a value it had applied, and the lift of every origin as far as
    /// the peer had applied (up to a gap's end). Not while an append is in flight (the node's worker runs repairs
    /// between appends).
    pub fn anti_entropy(&mut self, n: usize, peer: usize) -> Result<(), String> {
        let busy = |e: &Engine| e.append_in_flight();
        if n == peer || self.nodes[n].engine.as_ref().is_none_or(busy) || self.nodes[peer].engine.is_none() {
            return Ok(());
        }
        let (mine, theirs) = (&self.nodes[n].store, &self.nodes[peer].store);
        let peer_applied = theirs.applied.clone();
        let differ = |a: Option<&Register>, b: &Register| a != Some(b);
        let kv = theirs.kv.iter().filter(|(k, r)| differ(mine.kv.get(*k), r));
        let docs = theirs.docs.iter().filter(|(k, d)| mine.docs.get(*k) != Some(*d));
        let pending = theirs.pending.iter().filter(|(k, p)| !p.is_empty() && mine.pending.get(*k) != Some(*p));
        let absent = mine.kv.iter().filter(|(k, r)| {
            !theirs.kv.contains_key(*k) && r.versions().iter().any(|v| applied_by_peer(&peer_applied, v))
        });
        let engine = self.nodes[n].engine.as_ref().expect("up");
        let through = lifts(engine.applied(), &engine.gaps(), &peer_applied);
        let repair = Repair {
            kv: kv.map(|(k, r)| (k.clone(), r.clone())).collect(),
            docs: docs.map(|(k, d)| (k.clone(), d.clone())).collect(),
            pending: pending.map(|(k, p)| (k.clone(), p.clone())).collect(),
            kv_absent: absent.map(|(k, _)| k.clone()).collect(),
            through,
            peer_applied: peer_applied.clone(),
            void_from: theirs.void_from.iter().map(|(o, s)| (o.clone(), *s)).collect(),
        };
        if repair.is_empty() {
            return Ok(());
        }
        let prepared = engine.prepare_repair(repair, self.now_ms);
        self.count("anti-entropy repairs");
        let facts = self.load(n, prepared.needs());
        let out =
            self.nodes[n].engine.as_mut().expect("up").apply_repair(prepared, &facts).map_err(|e| e.to_string())?;
        // What a lift claims was given to the peer (by its logs, or its own lifts): its
        // given ranges within the lift count as given here, and the gap check holds a lift
        // to them (none past what the peer was given, none onto its dead letters).
        for alert in &out.alerts {
            if let Alert::Lifted { origin, from, to } = alert {
                let given = self.given(peer, origin);
                let ranges = given.into_iter().filter(|(f, l)| *l > *from && f <= to);
                self.nodes[n].seen.entry(origin.clone()).or_default().extend(ranges);
            }
        }
        if out.stats.values_dropped > 0 {
            self.count("values dropped by anti-entropy");
        }
        self.execute(n, out)
    }

    fn start_append(&mut self, n: usize) -> Result<(), String> {
        let take = self.nodes[n].queue.len().min(1 + self.rng.below(BATCH_WRITES_MAX));
        let ids: Vec<u64> = self.nodes[n].queue.drain(..take).collect();
        let writes: Vec<WriteRequest> = ids
            .iter()
            .map(|id| WriteRequest { id: *id, op: self.oracle.op(*id).clone(), resolves: self.oracle.resolves(*id) })
            .collect();
        let needs = self.nodes[n].engine.as_ref().expect("up").write_needs(&writes);
        let facts = self.load(n, &needs);
        let engine = self.nodes[n].engine.as_mut().expect("up");
        let mut out = engine.write(writes, &facts, self.now_ms).map_err(|e| e.to_string())?;
        let append = out.append.take();
        self.execute(n, out)?;
        let Some(append) = append else { return Ok(()) };
        let region = self.nodes[n].region;
        // The runtime's append (retried with the same message id until it knows): here
        // its outcome may stay unknown, whether or not the log stored it.
        let unknown = self.faulty && self.rng.chance(6);
        let lost = unknown && self.rng.chance(50);
        let appended = if lost {
            None
        } else {
            Some(self.logs[region].append(append.payload.clone(), &append.msg_id, append.expected_last))
        };
        if let Some(Appended::Stored(seq)) = appended {
            // Stored after a message that is not its predecessor (which the log refused):
            // it can never apply (`concord_engine::classify`, "void"), so its writes
            // never land; judged here from the log alone.
            if !self.logs[region].is_void(seq) {
                self.oracle.landed(&append.origin, &append.seqs);
            } else {
                self.count("void appends");
            }
            self.note_seen(n, &append.origin, append.first_seq, append.last_seq);
        }
        let outcome = match appended {
            _ if unknown => {
                self.count("unknown appends");
                AppendOutcome::Failed("no acknowledgement (simulated)".into())
            }
            Some(Appended::Stored(stream_seq)) => AppendOutcome::Stored { stream_seq },
            Some(Appended::Fenced) | None => {
                self.count("fenced appends");
                AppendOutcome::Failed("wrong last sequence (simulated)".into())
            }
        };
        self.nodes[n].inflight.push_back(InFlight { ids, outcome });
        Ok(())
    }

    fn finish_append(&mut self, n: usize) -> Result<(), String> {
        let flight = self.nodes[n].inflight.pop_front().expect("in flight");
        let out = self.nodes[n].engine.as_mut().expect("up").append_done(flight.outcome);
        if out.appends_abandoned > 0 {
            // The engine answered their writers; their outcomes are never reported.
            let node = &mut self.nodes[n];
            if out.appends_abandoned != node.inflight.len() {
                return Err(format!(
                    "{} abandoned {} appends but had {} more in flight",
                    node.name,
                    out.appends_abandoned,
                    node.inflight.len()
                ));
            }
            node.inflight.clear();
            self.count("abandoned appends");
        }
        self.execute(n, out)
    }

    /// The node's consumer of one stream delivers a few entries, perhaps rewound
    /// (duplicates) or with one entry lost (a gap).
    pub fn consume(&mut self, n: usize, faults: bool) -> Result<(), String> {
        if self.nodes[n].engine.as_ref().is_none_or(|e| e.append_in_flight()) {
            return Ok(());
        }
        let region = self.nodes[n].region;
        let ready: Vec<String> = self.nodes[n]
            .consumers
            .iter()
            .filter(|(s, next)| **next <= self.stream_end(region, s))
            .map(|(s, _)| s.clone())
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let stream = ready[self.rng.below(ready.len())].clone();
        let mut from = self.nodes[n].consumers[&stream];
        if faults && self.rng.chance(8) {
            from = from.saturating_sub(1 + self.rng.below(5) as u64).max(1);
            self.count("redeliveries");
        }
        let to = self.stream_end(region, &stream).min(from + self.rng.below(8) as u64);
        let src = self.source_of(region, &stream);
        let mut entries = self.logs[src].read(from, to);
        if faults && entries.len() > 1 && self.rng.chance(5) {
            entries.remove(self.rng.below(entries.len()));
            self.count("dropped messages");
        }
        self.nodes[n].consumers.insert(stream.clone(), to + 1);
        self.apply_entries(n, &stream, entries)
    }

    pub fn apply_entries(&mut self, n: usize, stream: &str, entries: Vec<Entry>) -> Result<(), String> {
        for e in &entries {
            if let Ok(cs) = Changeset::decode(&e.payload) {
                self.note_seen(n, &cs.origin, cs.first_seq, cs.last_seq());
            }
        }
        let engine = self.nodes[n].engine.as_ref().expect("up");
        let prepared = engine.prepare(stream, entries, self.now_ms);
        let facts = self.load(n, prepared.needs());
        let out = self.nodes[n].engine.as_mut().expect("up").apply(prepared, &facts).map_err(|e| e.to_string())?;
        self.execute(n, out)
    }

    fn note_seen(&mut self, n: usize, origin: &concord_core::ids::Origin, first: u64, last: u64) {
        self.nodes[n].seen.entry(origin.clone()).or_default().insert((first, last));
    }

    /// Carry out an output: commit, replies, streams; then check the invariants.
    pub fn execute(&mut self, n: usize, out: Output) -> Result<(), String> {
        assert!(out.append.is_none(), "appends are taken by the caller");
        let node = &mut self.nodes[n];
        if let Some(batch) = &out.commit {
            node.store.commit(batch);
        }
        for (id, result) in out.replies {
            self.oracle.reply(id, result)?;
        }
        let node = &mut self.nodes[n];
        node.consumers.extend(out.follow);
        for stream in out.unfollow {
            node.consumers.remove(&stream);
        }
        for alert in &out.alerts {
            match alert {
                Alert::Leading { .. } => {
                    self.leader_of[self.nodes[n].region] = n;
                    self.nodes[n].leads = true;
                }
                Alert::Deposed { .. } => {
                    self.nodes[n].leads = false;
                    self.count("deposed leaders");
                }
                Alert::GapOpened { .. } => self.count("gaps opened"),
                Alert::Lifted { .. } => self.count("gaps lifted"),
                Alert::DeadLettered { .. } => self.count("dead letters"),
                Alert::Parked { .. } => self.count("parked streams"),
                _ => {}
            }
        }
        self.check_node(n)
    }

    /// The ranges of `origin` node `n` was given, less those it dead-lettered.
    fn given(&self, n: usize, origin: &concord_core::ids::Origin) -> BTreeSet<(u64, u64)> {
        let node = &self.nodes[n];
        let dead: BTreeSet<(String, u64, u64)> = node
            .store
            .dead_letters
            .values()
            .filter_map(|d| Some((d.origin.clone()?, d.first_seq?, d.last_seq?)))
            .collect();
        let ranges = node.seen.get(origin).into_iter().flatten();
        ranges.filter(|(f, l)| !dead.contains(&(origin.to_string(), *f, *l))).copied().collect()
    }

    /// After every step of a node: its engine's invariants, its store agrees with it,
    /// and its applied vector never claims a sequence it was not given contiguously.
    fn check_node(&self, n: usize) -> Result<(), String> {
        let node = &self.nodes[n];
        let engine = node.engine.as_ref().expect("up");
        let fail = |what: String| Err(format!("{} after step {}: {what}", node.name, self.steps));
        if let Err(e) = engine.validate() {
            return fail(format!("invariant: {e}"));
        }
        if engine.applied() != &node.store.applied {
            return fail(format!("engine applied {:?} but the store holds {:?}", engine.applied(), node.store.applied));
        }
        let durable = node.store.durable();
        if engine.cursors() != &durable.cursors
            || engine.waiting_count() != durable.waiting.len()
            || engine.dead_letters() != durable.dead_letters
        {
            return fail("the engine and its store disagree on cursors, waiting changesets or dead letters".into());
        }
        // A dead-lettered changeset was given but must never count as applied.
        for (origin, seq) in engine.applied().iter() {
            let contiguous = contiguous(Some(&self.given(n, origin)));
            if seq > contiguous {
                return fail(format!("{origin} applied up to {seq}, but it was given only 1..={contiguous} in order"));
            }
        }
        Ok(())
    }
}

/// The highest `s` such that the ranges cover `1..=s`.
fn contiguous(ranges: Option<&BTreeSet<(u64, u64)>>) -> u64 {
    let mut reach = 0;
    for (first, last) in ranges.into_iter().flatten() {
        if *first > reach + 1 {
            break;
        }
        reach = reach.max(*last);
    }
    reach
}
