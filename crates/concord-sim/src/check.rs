//! The run's phases around the faults (setup, quiescence) and the final checks:
//! convergence, every acknowledged write current / causally overwritten / in the
//! conflict log, counters equal to the increments the logs hold.

use std::collections::BTreeSet;

use concord_core::doc::{DocOp, PathElem};
use concord_core::ids::Origin;
use concord_engine::{MemStore, WriteOp};

use crate::world::{DOC_BUCKET, DOC_KEY, World};

/// Most rounds quiescence may take before the run counts as stuck.
const QUIESCE_ROUNDS_MAX: usize = 200;

impl World {
    /// Every leader takes its first epoch, and the shared counter is created once and
    /// reaches every node before anyone increments it (two regions creating it
    /// concurrently would be a conflict in which one counter's increments lose).
    pub fn setup(&mut self) -> Result<(), String> {
        let create = WriteOp::Doc {
            bucket: DOC_BUCKET.into(),
            key: DOC_KEY.into(),
            ops: vec![DocOp::Inc { path: vec![PathElem::Key("count".into())], by: 0 }],
        };
        self.settle()?;
        let id = self.oracle.new_write(create, 0, None);
        let leader = self.leader_of[0];
        self.nodes[leader].queue.push_back(id);
        self.settle()?;
        match &self.oracle.writes[&id].status {
            crate::oracle::Status::Acked(_) => Ok(()),
            other => Err(format!("setup: creating the counter answered {other:?}")),
        }
    }

    /// Everything delivered, without faults: heal, restart the crashed, let every
    /// writer finish, copy every mirror and consume every stream, until nothing changes;
    /// then every node runs an anti-entropy round against every region's leader (what
    /// retention removed reaches it no other way), and it goes on if that changed
    /// anything. (A node's follower runs rounds only for a gap, which shows once the
    /// origin writes again; here they run at once.)
    pub fn settle(&mut self) -> Result<(), String> {
        self.faulty = false;
        self.cut.clear();
        for n in 0..self.nodes.len() {
            if self.nodes[n].engine.is_none() {
                self.start_node(n);
            }
        }
        for _ in 0..QUIESCE_ROUNDS_MAX {
            self.elect_where_none()?;
            let before = self.fingerprint();
            for n in 0..self.nodes.len() {
                for _ in 0..64 {
                    self.activate(n)?;
                }
            }
            for dst in 0..self.regions.len() {
                for src in (0..self.regions.len()).filter(|s| *s != dst) {
                    self.copied.insert((dst, src), self.logs[src].last_seq());
                }
            }
            for n in 0..self.nodes.len() {
                for _ in 0..64 {
                    self.consume(n, false)?;
                }
            }
            if self.fingerprint() != before {
                continue;
            }
            if !self.anti_entropy {
                return Ok(());
            }
            for n in 0..self.nodes.len() {
                for r in 0..self.regions.len() {
                    self.anti_entropy(n, self.leader_of[r])?;
                }
            }
            if self.fingerprint() == before {
                return Ok(());
            }
        }
        Err(format!("no quiescence after {QUIESCE_ROUNDS_MAX} rounds"))
    }

    /// Collection to its end: leaders mark and everything is delivered, then every node
    /// collects, until a round collects nothing more (so every replica has collected
    /// exactly what is stable, and they can be compared).
    pub fn collect_all(&mut self) -> Result<(), String> {
        // Stability travels in marks, and a mark's `stable` is built from the floors its
        // writer had applied: a few rounds without change say it has gone all the way.
        let mut quiet = 0;
        for _ in 0..QUIESCE_ROUNDS_MAX {
            for r in 0..self.regions.len() {
                self.mark(r);
            }
            self.settle()?;
            let before: usize = self.nodes.iter().map(|n| n.store.kv.len()).sum();
            let versions = |w: &World| -> usize {
                w.nodes.iter().flat_map(|n| n.store.kv.values()).map(|r| r.versions().len()).sum()
            };
            let v_before = versions(self);
            for n in 0..self.nodes.len() {
                self.collect(n)?;
            }
            let after: usize = self.nodes.iter().map(|n| n.store.kv.len()).sum();
            quiet = if after == before && versions(self) == v_before { quiet + 1 } else { 0 };
            if quiet == 3 {
                return Ok(());
            }
        }
        Err(format!("collection did not settle after {QUIESCE_ROUNDS_MAX} rounds"))
    }

    /// Stands in for anti-entropy (a later phase): every consumer delivers its stream
    /// again from the start, and a leader reads its own region's log again up to its
    /// cursor, which refills what a dropped message left out (a dropped last changeset
    /// of an origin leaves no gap to see: only such a repair finds it).
    pub fn redeliver_everything(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            let region = self.nodes[n].region;
            let own = crate::world::own_stream(&self.regions[region]);
            let engine = self.nodes[n].engine.as_ref().expect("every node runs after settling");
            if !self.nodes[n].consumers.contains_key(&own) && !engine.append_in_flight() {
                let entries = self.logs[region].read(1, engine.cursor(&own));
                self.apply_entries(n, &own, entries)?;
            }
            for next in self.nodes[n].consumers.values_mut() {
                *next = 1;
            }
        }
        self.settle()
    }

    fn fingerprint(&self) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            let busy = node.queue.len() + node.inflight.len();
            let mut state = crate::digest::Fnv::new();
            crate::digest::replica(&mut state, &node.name, &node.store);
            s.push_str(&format!(
                "{:?}|{:?}|{busy}|{:?}|{:x};",
                node.store.applied,
                node.store.cursors,
                node.consumers,
                state.finish()
            ));
        }
        s
    }

    /// The final checks; `Err` says what broke.
    pub fn check(&self) -> Result<(), String> {
        self.check_converged()?;
        // What any node collected: a replica that anti-entropy repaired may reflect a
        // collection it never made (the peer's).
        let mut collected = Collected::new();
        for node in &self.nodes {
            for (k, versions) in &node.collected {
                collected.entry(k.clone()).or_default().extend(versions.iter().cloned());
            }
        }
        for node in &self.nodes {
            self.check_acked_writes(&node.name, &node.store, &collected)?;
        }
        self.check_counter()
    }

    fn check_converged(&self) -> Result<(), String> {
        let first = &self.nodes[0];
        for node in &self.nodes {
            let engine = node.engine.as_ref().expect("every node runs at the end");
            if !engine.parked().is_empty() || engine.waiting_count() > 0 || !node.store.pending.is_empty() {
                return Err(format!(
                    "{} still holds something back: parked {:?}, gaps {:?}, {} documents with waiting changes",
                    node.name,
                    engine.parked(),
                    engine.gaps(),
                    node.store.pending.len()
                ));
            }
            if node.store.applied != first.store.applied {
                return Err(format!(
                    "{} applied {:?}, {} applied {:?}",
                    node.name, node.store.applied, first.name, first.store.applied
                ));
            }
            if node.store.kv != first.store.kv {
                let k = node
                    .store
                    .kv
                    .keys()
                    .chain(first.store.kv.keys())
                    .find(|k| node.store.kv.get(*k) != first.store.kv.get(*k));
                let show = |st: &MemStore| {
                    k.and_then(|k| st.kv.get(k)).map(|r| {
                        r.versions()
                            .iter()
                            .map(|v| {
                                format!(
                                    "{} {:?} {:?}",
                                    v.id(),
                                    v.value.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                                    v.vv
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                };
                return Err(format!(
                    "{} and {} differ at {k:?}: {:?} / {:?}; collected there: {:?} / {:?}",
                    node.name,
                    first.name,
                    show(&node.store),
                    show(&first.store),
                    k.and_then(|k| node.collected.get(k)).map(|v| v.iter().map(|v| v.id()).collect::<Vec<_>>()),
                    k.and_then(|k| first.collected.get(k)).map(|v| v.iter().map(|v| v.id()).collect::<Vec<_>>()),
                ));
            }
            let (a, b) = (doc_view(&node.store), doc_view(&first.store));
            if a != b {
                return Err(format!("the documents of {} and {} differ: {a:?} / {b:?}", node.name, first.name));
            }
        }
        Ok(())
    }

    /// Every acknowledged LWW write is, at this replica, a current sibling, causally
    /// overwritten (a version whose vector covers it), or listed in the conflict log.
    ///
    /// What collection took away (at any node) counts as it was: a version of a register
    /// whose winner was a tombstone when collected is gone as it should be if it was a
    /// delete or a losing put (then it is in the conflict log).
    fn check_acked_writes(&self, name: &str, store: &MemStore, collected: &Collected) -> Result<(), String> {
        for (id, w, ack) in self.oracle.acked() {
            let (WriteOp::Put { bucket, key, .. } | WriteOp::Delete { bucket, key }) = &w.op else { continue };
            let Some(seq) = ack.seq else { continue };
            let version = format!("{}:{seq}", ack.origin);
            let k = (bucket.clone(), key.clone());
            let register = store.kv.get(&k);
            let gone = collected.get(&k).map(Vec::as_slice).unwrap_or_default();
            let was = |v: &concord_core::lww::Version| v.id() == version;
            let current = register.is_some_and(|r| r.versions().iter().any(was))
                || gone.iter().any(|v| was(v) && v.is_tombstone());
            let overwritten = register
                .is_some_and(|r| r.versions().iter().any(|v| covers(&v.vv, &ack.origin, seq) && v.id() != version))
                || gone.iter().any(|v| covers(&v.vv, &ack.origin, seq) && v.id() != version);
            let logged = store.conflicts.values().any(|r| {
                r.bucket == *bucket
                    && r.key == *key
                    && (r.versions.iter().any(|v| v.id == version) || r.cut.contains(&version))
            });
            if !(current || overwritten || logged) {
                return Err(format!(
                    "{name}: acknowledged write {id} ({version} to {bucket}/{key}) is neither current, nor causally overwritten, nor in the conflict log; the register holds {:?}",
                    register.map(|r| r.versions().iter().map(|v| v.id()).collect::<Vec<_>>())
                ));
            }
        }
        Ok(())
    }

    /// The counter holds exactly the increments whose changes the logs hold (each once),
    /// and every acknowledged increment is among them.
    fn check_counter(&self) -> Result<(), String> {
        let landed: u64 = self.oracle.writes.values().filter(|w| w.landed.is_some()).map(|w| w.inc).sum();
        for node in &self.nodes {
            let json = doc_view(&node.store).map(|(j, _)| j);
            let count = json.as_ref().and_then(|j| j["count"].as_u64());
            if count != Some(landed) {
                return Err(format!(
                    "{}: the counter reads {count:?}; the logs hold increments summing to {landed}",
                    node.name
                ));
            }
        }
        Ok(())
    }
}

/// What a node collected, by key.
type Collected = std::collections::BTreeMap<concord_engine::DocKey, Vec<concord_core::lww::Version>>;

fn covers(vv: &concord_core::vv::VersionVector, origin: &Origin, seq: u64) -> bool {
    vv.get(origin) >= seq
}

/// The shared document as JSON with its sorted heads.
pub fn doc_view(store: &MemStore) -> Option<(serde_json::Value, BTreeSet<String>)> {
    let bytes = store.docs.get(&(DOC_BUCKET.to_string(), DOC_KEY.to_string()))?;
    let doc = concord_core::doc::load_doc(bytes).expect("a stored document loads");
    let heads = doc.get_heads().iter().map(|h| h.to_string()).collect();
    Some((concord_core::doc::to_json(&doc), heads))
}
