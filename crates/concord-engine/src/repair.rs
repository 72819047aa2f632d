//! Repairing from a peer's state: the engine's side of anti-entropy.
//!
//! A replica whose streams lost messages that no log holds any more (retention, a
//! removed message) cannot apply them: its origin waits behind the gap for ever. A peer
//! that applied them holds their effects in its state, so the runtime compares digests
//! of the two states (the node's anti-entropy) and hands the engine what differs: the
//! peer's registers and documents ([`Repair`]). The engine merges them exactly as it
//! merges changes from a log (registers are a join-semilattice, documents merge by
//! Automerge), recording conflicts as they appear, and applying it twice changes nothing.
//!
//! **What the peer no longer holds.** Merging alone only adds, and a replica that
//! missed a delete would keep the deleted value for ever once every region has
//! collected the tombstone (`crate::marks`): no peer holds anything that supersedes it
//! any more. So a repair also carries the peer's applied vector (as of its tree, or
//! earlier) and, for a complete comparison, the keys this replica holds that the peer
//! does not ([`Repair::kv_absent`]). A local version whose own change the peer had
//! applied, and which the peer's register (or the peer's lack of one) does not hold, was
//! superseded there: by a version the repair brings, or by a delete since collected. It
//! goes here too (before the peer's versions are merged); a register left empty leaves
//! the store, and an open conflict record that no longer has competing versions is
//! resolved by `anti-entropy`. A version the peer had not applied stays, and so
//! does a tombstone (it reads as deleted already; collection takes it here, within the
//! bound that keeps a writer's later writes ordered after it: `crate::marks`).
//!
//! **Lifting a gap.** Once the runtime has taken every entry in which the two states
//! differed, from a peer that had applied an origin through sequence `n`, this replica
//! holds the effects of that origin's changes up to `n`: the repair names `(origin, n)`
//! in [`Repair::through`], and the applied vector moves past the gap to `n` (never
//! back, never onto sequences found void); the changesets that waited behind the gap
//! apply in the same step. The changes of the gap are then duplicates if they ever
//! arrive. The runtime must only claim `through` for a complete comparison: the engine
//! cannot check it, and a false claim skips changes. The engine lifts an origin only
//! past what its stream has gone by (a changeset of it waits here, or a later epoch of
//! its region was read here: an origin whose last changesets retention removed shows no
//! gap), so a lift never skips changesets, and their marks, that its streams will still
//! deliver; nor does a writer take a later epoch of its own region from a peer (its log
//! deposes it). What a gap repair would read again from an origin's log a lift does skip:
//! the runtime lifts a gap only once it has stood long enough for that repair.
//! [`Repair::void_from`] brings the peer's void judgements, which a replica that never
//! read the message before a void changeset cannot make.
//!
//! Known limits: a conflict that only the lost changes showed (two versions that the
//! peer later overwrote) is not recorded here (the peer's conflict log has it); a
//! document change of the peer that the document refuses is left out, with an alert.

use std::collections::BTreeSet;

use concord_core::doc;
use concord_core::ids::Origin;
use concord_core::lww::{Register, Version};
use concord_core::vv::VersionVector;

use crate::Fatal;
use crate::apply::Merged;
use crate::classify::{LIFT_STREAM, Plan, Refused, classify_lift};
use crate::engine::{Engine, Gap};
use crate::output::{Alert, Output};
use crate::overlay::Overlay;
use crate::state::{DocKey, Facts, Needs};

/// What a peer's state holds where it differs from this replica's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repair {
    /// The peer's registers.
    pub kv: Vec<(DocKey, Register)>,
    /// The peer's documents, saved (they are loaded as defensively as any input).
    pub docs: Vec<(DocKey, Vec<u8>)>,
    /// The peer's document changes that wait for a dependency (it counts them as
    /// applied): they apply here, or wait here too.
    pub pending: Vec<(DocKey, Vec<Vec<u8>>)>,
    /// Per origin: the repair holds the effects of every change of it up to here (see
    /// the module doc: a lift).
    pub through: Vec<(Origin, u64)>,
    /// What the peer had applied when the state the repair holds was read (or before):
    /// a local version within it that the peer does not hold goes (module doc). Empty:
    /// nothing goes.
    pub peer_applied: VersionVector,
    /// Keys this replica holds a register for and the peer holds none: only from a
    /// complete comparison (a key merely not read yet is not absent).
    pub kv_absent: Vec<DocKey>,
    /// The peer's judgement of void origins (`Durable::void_from`): what waits here from
    /// there on is dead-lettered as void.
    pub void_from: Vec<(Origin, u64)>,
}

impl Repair {
    /// The key of the `d`th document of the repair: its documents, then its waiting
    /// changes.
    fn doc_key(&self, d: usize) -> &DocKey {
        match self.docs.get(d) {
            Some((k, _)) => k,
            None => &self.pending[d - self.docs.len()].0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.docs.is_empty()
            && self.pending.is_empty()
            && self.through.is_empty()
            && self.kv_absent.is_empty()
            && self.void_from.is_empty()
    }
}

/// Whether `v` is a value the peer had applied (within `peer_applied`): if the peer no
/// longer holds it, a repair drops it here (module doc). Tombstones never are.
pub fn applied_by_peer(peer_applied: &VersionVector, v: &Version) -> bool {
    !v.is_tombstone() && peer_applied.get(&v.origin) >= v.vv.get(&v.origin)
}

/// For each origin the peer had applied further than `applied`: how far a lift may take
/// it (the whole way, or up to a gap's end: the changesets behind it apply as usual). The
/// engine takes only what the origin's stream has gone by (module doc).
pub fn lifts(applied: &VersionVector, gaps: &[Gap], peer_applied: &VersionVector) -> Vec<(Origin, u64)> {
    peer_applied
        .iter()
        .filter_map(|(origin, seq)| {
            let end = gaps.iter().find(|g| g.origin == *origin).map_or(u64::MAX, |g| g.next_waiting - 1);
            let to = seq.min(end);
            (to > applied.get(origin)).then(|| (origin.clone(), to))
        })
        .collect()
}

/// A repair, planned, waiting for its facts.
pub struct PreparedRepair {
    repair: Repair,
    plan: Plan,
    needs: Needs,
    now_ms: u64,
}

impl PreparedRepair {
    /// What to load before [`Engine::apply_repair`].
    pub fn needs(&self) -> &Needs {
        &self.needs
    }
}

/// The origin that a repair's document changes are filed under while applied (their
/// own origins are inside them): refusals name them by their place in the repair.
fn repair_ref(i: usize) -> (Origin, u64) {
    (Origin::new(concord_core::ids::RegionId::new("anti-entropy").expect("a valid region name"), 0), i as u64)
}

impl Engine {
    /// Plan `repair`: what it needs loaded (its keys, and those of the changesets a lift
    /// releases).
    pub fn prepare_repair(&self, repair: Repair, now_ms: u64) -> PreparedRepair {
        let plan = classify_lift(self, &repair.through, &repair.void_from, &Refused::new(), now_ms);
        let needs = repair_needs(&repair, &plan);
        PreparedRepair { repair, plan, needs, now_ms }
    }

    /// Merge a prepared repair with the facts its [`PreparedRepair::needs`] named.
    pub fn apply_repair(&mut self, prepared: PreparedRepair, facts: &Facts) -> Result<Output, Fatal> {
        assert!(!self.append_in_flight(), "a repair applied while an append is in flight");
        let PreparedRepair { repair, mut plan, now_ms, .. } = prepared;
        let mut refused = Refused::new();
        let mut left_out: BTreeSet<usize> = BTreeSet::new();
        let mut refusals = Vec::new();
        loop {
            let mut ov = Overlay::new(facts, self.cfg.region.as_str(), now_ms);
            let mut merged = Merged::default();
            // First what the peer superseded (merging it first could record a conflict
            // with a version about to go).
            let theirs = repair.kv.iter().map(|(k, r)| (k, Some(r)));
            for (k, theirs) in theirs.chain(repair.kv_absent.iter().map(|k| (k, None))) {
                merged.stats.values_dropped += self.drop_superseded(&mut ov, k, theirs, &repair.peer_applied);
            }
            for (k, register) in &repair.kv {
                // A version whose own change this replica applied is here already, or
                // history, or collected: merging it again could only bring back what
                // collection took away.
                for v in register.versions().iter().filter(|v| v.vv.get(&v.origin) > self.applied.get(&v.origin)) {
                    merged.hlc_max = merged.hlc_max.max(v.hlc);
                    self.merge_version(&mut ov, k.clone(), v.clone(), None, None, &mut merged.stats);
                }
            }
            self.merge_plan(&plan, &mut ov, &mut merged);
            let unloadable = self.gather_repair_docs(&repair, &left_out, &mut ov, &mut merged)?;
            match self.finish_attempt(ov, merged)? {
                Ok(applied) => {
                    let mut out = self.finish(LIFT_STREAM, plan, applied);
                    out.alerts.extend(unloadable);
                    out.alerts.extend(refusals);
                    return Ok(out);
                }
                Err(more) => {
                    // Each round leaves out at least one more change or changeset: it ends.
                    let repair_origin = repair_ref(0).0;
                    let (ours, theirs): (Vec<_>, Vec<_>) =
                        more.into_iter().partition(|((o, _), _)| *o == repair_origin);
                    for ((_, i), why) in ours {
                        let k = repair.doc_key(i as usize / CHANGES_PER_DOC_MAX);
                        refusals.push(Alert::RepairRefused { bucket: k.0.clone(), key: k.1.clone(), reason: why });
                        assert!(left_out.insert(i as usize), "a refusal repeats");
                    }
                    assert!(theirs.iter().all(|(k, _)| !refused.contains_key(k)), "a refusal repeats");
                    refused.extend(theirs);
                    plan = classify_lift(self, &repair.through, &repair.void_from, &refused, now_ms);
                }
            }
        }
    }

    /// Drop the values of `k`'s register that the peer had applied and does not hold in
    /// `theirs` (module doc). Tombstones stay: reads see them as deleted, and collection
    /// takes them here within the bound a writer's later writes need (`crate::marks`).
    /// How many went.
    fn drop_superseded(
        &self,
        ov: &mut Overlay<'_>,
        k: &DocKey,
        theirs: Option<&Register>,
        peer: &VersionVector,
    ) -> u64 {
        let Some(mine) = ov.register(k) else { return 0 };
        let held = |v: &Version| theirs.is_some_and(|t| t.versions().iter().any(|p| p.id() == v.id()));
        let gone = |v: &Version| applied_by_peer(peer, v) && !held(v);
        let dropped = mine.versions().iter().filter(|v| gone(v)).count() as u64;
        if dropped == 0 {
            return 0;
        }
        match mine.retained(|v| !gone(v)) {
            Some(kept) => {
                if !kept.is_conflicted() {
                    ov.resolve_by_anti_entropy(k);
                } else if kept.winner() != mine.winner() {
                    ov.track_lww(k, &kept, &[], None, self.cfg.manual_buckets.contains(&k.0));
                }
                ov.kv.insert(k.clone(), kept);
            }
            None => {
                ov.resolve_by_anti_entropy(k);
                ov.remove_kv(k);
            }
        }
        dropped
    }

    /// The changes of the repair's documents that this replica lacks, gathered per
    /// document with the step's other document changes. A peer's document that does not
    /// load is left out, with an alert.
    fn gather_repair_docs(
        &self,
        repair: &Repair,
        left_out: &BTreeSet<usize>,
        ov: &mut Overlay<'_>,
        merged: &mut Merged,
    ) -> Result<Vec<Alert>, Fatal> {
        let mut alerts = Vec::new();
        for (d, (k, saved)) in repair.docs.iter().enumerate() {
            let peer = match doc::load_doc(saved) {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("the peer's document does not load: {e}");
                    alerts.push(Alert::RepairRefused { bucket: k.0.clone(), key: k.1.clone(), reason });
                    continue;
                }
            };
            let local = ov.doc_mut(k)?;
            let missing = local.get_changes_added(&peer);
            if missing.len() > CHANGES_PER_DOC_MAX {
                let reason = format!(
                    "the peer's document holds {} changes this one lacks; at most {CHANGES_PER_DOC_MAX} are taken in one repair",
                    missing.len()
                );
                alerts.push(Alert::RepairRefused { bucket: k.0.clone(), key: k.1.clone(), reason });
                continue;
            }
            let taken: Vec<_> = missing
                .into_iter()
                .enumerate()
                .map(|(i, change)| (d * CHANGES_PER_DOC_MAX + i, change))
                .filter(|(index, _)| !left_out.contains(index))
                .map(|(index, change)| (repair_ref(index), change))
                .collect();
            if !taken.is_empty() {
                merged.docs.entry(k.clone()).or_default().extend(taken);
            }
        }
        for (p, (k, changes)) in repair.pending.iter().enumerate() {
            let d = repair.docs.len() + p;
            let mut taken = Vec::new();
            for (i, bytes) in changes.iter().take(CHANGES_PER_DOC_MAX).enumerate() {
                let index = d * CHANGES_PER_DOC_MAX + i;
                if left_out.contains(&index) {
                    continue;
                }
                match doc::decode_change(bytes.clone()) {
                    Ok(change) => taken.push((repair_ref(index), change)),
                    Err(e) => {
                        let reason = format!("a waiting change of the peer does not decode: {e}");
                        alerts.push(Alert::RepairRefused { bucket: k.0.clone(), key: k.1.clone(), reason });
                    }
                }
            }
            if !taken.is_empty() {
                merged.docs.entry(k.clone()).or_default().extend(taken);
            }
        }
        Ok(alerts)
    }
}

/// Most changes one repaired document may bring (they are numbered per document within
/// a repair).
pub const CHANGES_PER_DOC_MAX: usize = 1 << 20;

fn repair_needs(repair: &Repair, plan: &Plan) -> Needs {
    let mut needs = plan.needs.clone();
    needs.kv.extend(repair.kv.iter().map(|(k, _)| k.clone()));
    needs.kv.extend(repair.kv_absent.iter().cloned());
    needs.docs.extend(repair.docs.iter().map(|(k, _)| k.clone()));
    needs.docs.extend(repair.pending.iter().map(|(k, _)| k.clone()));
    needs
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::ids::RegionId;

    #[test]
    fn an_origin_is_lifted_only_as_far_as_the_peer_applied_and_no_further_than_its_gap() {
        let o = Origin::new(RegionId::new("eu-west").unwrap(), 1);
        let gap = |applied, next_waiting| Gap {
            origin: o.clone(),
            applied,
            next_waiting,
            waiting: 1,
            stream: "S".into(),
            stream_seq: 9,
        };
        let peer = |seq| [(o.clone(), seq)].into_iter().collect();
        let here: VersionVector = peer(2);
        assert_eq!(lifts(&here, &[gap(2, 6)], &peer(10)), vec![(o.clone(), 5)]);
        assert_eq!(lifts(&here, &[gap(2, 6)], &peer(4)), vec![(o.clone(), 4)], "as far as the peer applied");
        assert!(lifts(&here, &[gap(2, 6)], &peer(2)).is_empty(), "the peer has nothing more");
        assert!(lifts(&here, &[gap(2, 6)], &Default::default()).is_empty());
        // No gap to see (the origin's last changesets are gone): the whole way.
        assert_eq!(lifts(&here, &[], &peer(10)), vec![(o.clone(), 10)]);
        assert!(lifts(&peer(10), &[], &peer(4)).is_empty(), "never back");
    }
}
