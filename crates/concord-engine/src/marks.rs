//! Marks, stability, and collecting tombstones.
//!
//! A delete leaves a tombstone (so a concurrent or late write of the key is ordered
//! against it); keeping every tombstone for ever grows the store without bound.
//! A tombstone may go once no write can ever arrive that it must be compared with: every
//! region has applied it (causal stability). Knowing that takes three things.
//!
//! **Marks.** A writer puts a mark in its region's log ([`ChangeBody::Mark`]) when it
//! starts an epoch (its first changeset begins with one, once every region has marked:
//! before that nothing is stable, so nothing was collected) and then every so often: what
//! it has applied (its `floor`), and the pointwise minimum of the latest floors of
//! every region it has applied (`stable`). A replica keeps each origin's latest mark;
//! a region's floor is the latest mark of its newest marked epoch.
//!
//! **Stable.** A register is stable at a replica when every version in it is within
//! every region's floor (every region's writer had applied it when it marked, so no
//! later write of that region is concurrent with it), and the replica has applied each
//! region's own changes up to that region's floor (so every write that was concurrent
//! with it is here already). A new writer of a region must have applied its region's
//! floor before it writes ([`Engine::not_ready_to_write`], checked by `caught_up`), so no later
//! epoch writes concurrently either.
//!
//! **Context.** A writer that collected a tombstone and then writes the key again
//! writes a version whose vector does not name the tombstone; a replica that still
//! holds it would keep both as a conflict. So a change is inserted in the context of its
//! origin's latest mark (`Register::insert_in_context`): what the mark's `stable` covers
//! is history for it. A writer collects only within its own latest mark's `stable`, and
//! a replica applies a changeset holding a mark only once it has applied that mark's
//! `stable` ([`context_met`]), so every version the context covers is here before the
//! changes that rely on it: replicas converge whatever the order.
//!
//! **Collecting** ([`Engine::prepare_collect`], [`Engine::apply_collect`]): a stable
//! register whose winner is a tombstone leaves the store (any losing version is in the
//! conflict log already); a stable register with tombstones among losing siblings
//! keeps its other versions. The runtime names candidates (it scans the store); the
//! engine decides with fresh facts.
//!
//! Known limits: a replica repaired by anti-entropy across a gap may miss the marks the
//! gap held (it adopts the peer's), and a version merged by a repair has no context: a
//! tombstone it covers stays as a sibling (a conflict recorded here alone) until
//! collection takes it.

use concord_core::changeset::{ChangeBody, Changeset};
use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;

use crate::engine::Engine;
use crate::output::Output;
use crate::state::{Batch, DocKey, Facts, Mark, Needs};

/// Whether a replica at `applied` may apply `cs`: every mark in it has its `stable`
/// applied (the changeset's own origin counted up to the change before the mark).
pub(crate) fn context_met(cs: &Changeset, applied: &VersionVector) -> bool {
    cs.changes.iter().enumerate().all(|(i, c)| match &c.body {
        ChangeBody::Mark { stable, .. } => {
            let mut have = applied.clone();
            have.observe(&cs.origin, cs.first_seq + i as u64 - 1);
            have.dominates(stable)
        }
        _ => true,
    })
}

/// A candidate for collection, prepared: the keys to load.
pub struct PreparedCollect {
    keys: Vec<DocKey>,
    needs: Needs,
}

impl PreparedCollect {
    pub fn needs(&self) -> &Needs {
        &self.needs
    }
}

impl Engine {
    /// Every origin's latest mark.
    pub fn marks(&self) -> &std::collections::BTreeMap<Origin, Mark> {
        &self.marks
    }

    /// The floor of `region`: the latest mark of its newest marked epoch.
    pub fn floor(&self, region: &RegionId) -> Option<&Mark> {
        self.marks.iter().filter(|(o, _)| o.region == *region).max_by_key(|(o, _)| o.epoch).map(|(_, m)| m)
    }

    /// The regions of the deployment: every region whose log this replica reads.
    fn regions(&self) -> std::collections::BTreeSet<&RegionId> {
        self.cfg.streams.values().collect()
    }

    /// The pointwise minimum of every region's floor: what every region's writer had
    /// applied when it last marked. `None` until every region has marked.
    pub fn stable(&self) -> Option<VersionVector> {
        let mut out: Option<VersionVector> = None;
        for region in self.regions() {
            let floor = &self.floor(region)?.floor;
            out = Some(match out {
                None => floor.clone(),
                Some(v) => v.meet(floor),
            });
        }
        out
    }

    /// Whether this replica applied every region's own changes up to that region's floor.
    fn floors_applied(&self) -> bool {
        self.regions().into_iter().all(|r| match self.floor(r) {
            None => false,
            Some(m) => self.applied.dominates(&m.floor.restricted(|o| o.region == *r)),
        })
    }

    /// What a version must be within to be collected here, if anything is: within every
    /// region's floor, or, for a writer, within the context its next writes carry: its
    /// latest mark's `stable` (none while its first mark is on its way; before it made
    /// one, every region's floor, which the mark its next changeset begins with holds).
    pub fn collect_bound(&self) -> Option<VersionVector> {
        #[cfg(feature = "mutations")]
        if self.cfg.mutated(crate::engine::Mutation::CollectEarly) {
            return Some(self.applied.clone());
        }
        if !self.floors_applied() {
            return None;
        }
        match self.writing_origin() {
            Some(origin) => match (self.marks.get(&origin), self.marked_at_ms) {
                (Some(mark), _) => Some(mark.stable.clone()),
                (None, Some(_)) => None,
                (None, None) => self.stable(),
            },
            None => self.stable(),
        }
    }

    /// The context a change of `origin` at `seq` is inserted in: its origin's latest mark
    /// before it.
    pub(crate) fn context_of(&self, origin: &Origin) -> Option<&VersionVector> {
        self.marks.get(origin).map(|m| &m.stable)
    }

    /// For a writer about to write in a new epoch: what it has not applied yet of what
    /// its region's previous writers had: their floor (so that nothing it writes is
    /// concurrent with what other replicas may collect), and the context of its region's
    /// changesets that wait for one (so that it has applied every acknowledged write of
    /// its region). `None` when nothing is missing.
    pub fn not_ready_to_write(&self) -> Option<VersionVector> {
        let mut missing = VersionVector::new();
        if let Some(floor) = self.floor(&self.cfg.region) {
            missing.join(
                &floor.floor.iter().filter(|(o, s)| self.applied.get(o) < *s).map(|(o, s)| (o.clone(), s)).collect(),
            );
        }
        for (origin, need) in self.context_waits() {
            if origin.region == self.cfg.region {
                missing.join(&need);
            }
        }
        (!missing.is_empty()).then_some(missing)
    }

    /// The body of a new mark by this writer.
    pub(crate) fn new_mark(&self) -> ChangeBody {
        ChangeBody::Mark { floor: self.applied.clone(), stable: self.stable().unwrap_or_default() }
    }

    /// Plan collecting the registers at `keys` (candidates the runtime found: registers
    /// holding a tombstone).
    pub fn prepare_collect(&self, keys: Vec<DocKey>) -> PreparedCollect {
        let needs = Needs { kv: keys.iter().cloned().collect(), ..Needs::default() };
        PreparedCollect { keys, needs }
    }

    /// Collect what is stable among the candidates (see the module doc).
    pub fn apply_collect(&mut self, prepared: PreparedCollect, facts: &Facts) -> Output {
        assert!(!self.append_in_flight(), "collecting while an append is in flight");
        let mut out = Output::default();
        let Some(bound) = self.collect_bound() else { return out };
        let mut batch = Batch::default();
        for k in prepared.keys {
            let Some(register) = facts.kv(&k).register.as_ref() else { continue };
            if !register.versions().iter().any(|v| v.is_tombstone())
                || !register.versions().iter().all(|v| bound.dominates(&v.vv))
            {
                continue;
            }
            if register.winner().is_tombstone() {
                out.stats.tombstones_collected +=
                    register.versions().iter().filter(|v| v.is_tombstone()).count() as u64;
                batch.kv_removed.push(k);
            } else if let Some(kept) = register.without_tombstones() {
                out.stats.tombstones_collected += (register.versions().len() - kept.versions().len()) as u64;
                batch.kv.push((k, kept));
            }
        }
        out.commit = (!batch.is_empty()).then_some(batch);
        out
    }
}
