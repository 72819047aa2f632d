//! Last-writer-wins registers that keep their conflicts.
//!
//! A [`Version`] is one write of a key: its value (`None` for a delete: a tombstone),
//! the hybrid-logical-clock time and origin that made it, and the version vector of
//! everything the writer had seen of this key, its own write included.
//!
//! A [`Register`] holds the *antichain* of versions nobody has overwritten yet: a version
//! whose vector is dominated by another's is history and leaves; versions with
//! incomparable vectors are concurrent and stay together as siblings. The value a read
//! sees is the sibling with the highest `(hlc, origin)` (the LWW winner); the other
//! siblings are what the conflict log records and what a `manual` bucket returns.
//!
//! Inserting is a join-semilattice operation (the antichain of a union, cut to the
//! [`SIBLINGS_MAX`] highest-ranked), so replicas converge whatever the order or
//! duplication of delivery (property-tested below). Cutting keeps the highest ranks, and
//! a causally later version always ranks higher (a writer's clock has observed every
//! version it saw), so a cut never brings a dominated version back.
//!
//! A new local write's vector joins every sibling's: it supersedes them all.

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::ids::Origin;
use crate::vv::VersionVector;

/// Most concurrent versions a register keeps; beyond it the lowest-ranked leave (LWW
/// decides) and the caller records that they were cut.
pub const SIBLINGS_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub hlc: Hlc,
    pub origin: Origin,
    /// Everything the writer had seen of this key, its own write included.
    pub vv: VersionVector,
}

impl Version {
    fn rank(&self) -> (Hlc, &Origin) {
        (self.hlc, &self.origin)
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// `origin:seq`, unique per version: the origin's sequence of the write.
    pub fn id(&self) -> String {
        format!("{}:{}", self.origin, self.vv.get(&self.origin))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Non-empty, pairwise concurrent, highest rank first.
    versions: Vec<Version>,
}

/// What inserting a version did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inserted {
    /// False when the version was already there or is history.
    pub changed: bool,
    /// Concurrent versions cut because the register held more than [`SIBLINGS_MAX`].
    pub cut: Vec<Version>,
}

impl Register {
    pub fn new(version: Version) -> Register {
        Register { versions: vec![version] }
    }

    /// Rebuild from stored siblings, re-establishing the invariants.
    pub fn from_versions(versions: Vec<Version>) -> Option<Register> {
        let mut it = versions.into_iter();
        let mut reg = Register::new(it.next()?);
        for v in it {
            reg.insert(v);
        }
        Some(reg)
    }

    /// The version reads see.
    pub fn winner(&self) -> &Version {
        &self.versions[0]
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    pub fn is_conflicted(&self) -> bool {
        self.versions.len() > 1
    }

    /// Everything this register has seen: a write with this vector (plus its own
    /// entry) supersedes every sibling.
    pub fn vv(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for v in &self.versions {
            vv.join(&v.vv);
        }
        vv
    }

    /// Insert `incoming`, written by a replica that had also applied everything in
    /// `context` (the stable vector of its origin's latest mark, `changeset::ChangeBody::Mark`):
    /// besides what its own vector dominates, every version within `incoming.vv ∪ context`
    /// is history (its writer had seen it, even where it no longer held it: a collected
    /// tombstone), unless it dominates `incoming`. Done even when `incoming` is itself
    /// history or already here. With an empty context this is [`Register::insert`].
    ///
    /// Replicas converge under it as long as none inserts `incoming` before it applied
    /// `context` (the engine holds a changeset back until then): then every version
    /// within the context is here already when `incoming` arrives, whatever the order.
    pub fn insert_in_context(&mut self, incoming: Version, context: &VersionVector) -> Inserted {
        if context.is_empty() {
            return self.insert(incoming);
        }
        let mut seen = incoming.vv.clone();
        seen.join(context);
        let before = self.versions.len();
        self.versions.retain(|v| *v == incoming || v.vv.dominates(&incoming.vv) || !seen.dominates(&v.vv));
        let removed = self.versions.len() < before;
        if self.versions.is_empty() {
            self.versions.push(incoming);
            return Inserted { changed: true, cut: Vec::new() };
        }
        let mut inserted = self.insert(incoming);
        inserted.changed |= removed;
        inserted
    }

    /// Whether every version is a tombstone.
    pub fn all_tombstones(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
    }

    /// Drop the tombstones among the siblings; `None` when nothing else is left.
    pub fn without_tombstones(&self) -> Option<Register> {
        self.retained(|v| !v.is_tombstone())
    }

    /// The siblings `keep` keeps (still an antichain, in rank order); `None` when it
    /// keeps none.
    pub fn retained(&self, keep: impl Fn(&Version) -> bool) -> Option<Register> {
        let kept: Vec<Version> = self.versions.iter().filter(|v| keep(v)).cloned().collect();
        (!kept.is_empty()).then_some(Register { versions: kept })
    }

    pub fn insert(&mut self, incoming: Version) -> Inserted {
        if self.versions.iter().any(|v| v.vv.dominates(&incoming.vv)) {
            return Inserted::default();
        }
        self.versions.retain(|v| !incoming.vv.dominates(&v.vv));
        self.versions.push(incoming);
        self.versions.sort_by(|a, b| b.rank().cmp(&a.rank()));
        let cut = if self.versions.len() > SIBLINGS_MAX { self.versions.split_off(SIBLINGS_MAX) } else { Vec::new() };
        Inserted { changed: true, cut }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RegionId;
    use proptest::prelude::*;

    fn origin(i: usize) -> Origin {
        Origin::new(RegionId::new(["us-east", "eu-west", "ap-south"][i % 3]).unwrap(), 1)
    }

    /// A causal history: each write saw a random subset of earlier writes, so its vector
    /// joins theirs and its clock is later than theirs, as a real writer's would be.
    fn history() -> impl Strategy<Value = Vec<Version>> {
        proptest::collection::vec((0usize..3, proptest::collection::vec(any::<bool>(), 12), 1u64..3), 1..12).prop_map(
            |writes| {
                let mut out: Vec<Version> = Vec::new();
                let mut seqs = [0u64; 3];
                for (o, seen, tick) in writes {
                    let mut vv = VersionVector::new();
                    let mut hlc = Hlc { wall_ms: 0, logical: 0 };
                    for (i, prior) in out.iter().enumerate() {
                        if seen[i % seen.len()] || prior.origin == origin(o) {
                            vv.join(&prior.vv);
                            hlc = hlc.max(prior.hlc);
                        }
                    }
                    seqs[o] += 1;
                    vv.observe(&origin(o), seqs[o]);
                    let hlc = Hlc { wall_ms: hlc.wall_ms + tick, logical: 0 };
                    out.push(Version { value: Some(vec![o as u8, seqs[o] as u8]), hlc, origin: origin(o), vv });
                }
                out
            },
        )
    }

    fn build(versions: &[Version]) -> Register {
        let mut reg = Register::new(versions[0].clone());
        for v in &versions[1..] {
            reg.insert(v.clone());
        }
        reg
    }

    proptest! {
        /// Any delivery order, with duplicates, gives the same register.
        #[test]
        fn insertion_order_and_duplicates_do_not_matter(h in history(), seed in any::<u64>(), dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let reference = build(&h);
            let mut shuffled = h.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            for d in dups {
                shuffled.push(h[d.index(h.len())].clone());
            }
            prop_assert_eq!(build(&shuffled), reference);
        }

        /// Merging two replicas' registers (inserting one's siblings into the other) is
        /// commutative, associative and idempotent.
        #[test]
        fn merging_registers_is_a_semilattice(h in history(), split in any::<prop::sample::Index>(), split2 in any::<prop::sample::Index>()) {
            let a = build(&h[..split.index(h.len()) + 1]);
            let b = build(&h[split2.index(h.len())..]);
            let c = build(&h[h.len() / 2..]);
            let merge = |x: &Register, y: &Register| {
                let mut m = x.clone();
                for v in y.versions() { m.insert(v.clone()); }
                m
            };
            prop_assert_eq!(merge(&a, &b), merge(&b, &a));
            prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
            prop_assert_eq!(merge(&a, &a), a.clone());
        }

        /// Siblings are pairwise concurrent, and the winner has the highest rank.
        #[test]
        fn siblings_are_an_antichain(h in history()) {
            let reg = build(&h);
            for (i, x) in reg.versions().iter().enumerate() {
                for y in &reg.versions()[i + 1..] {
                    prop_assert!(!x.vv.dominates(&y.vv) && !y.vv.dominates(&x.vv));
                    prop_assert!(x.rank() > y.rank());
                }
            }
        }
    }

    #[test]
    fn a_dominated_version_is_history_and_a_later_write_supersedes_all() {
        let v = |o: usize, s: u64, hlc: u64, vv: &[(usize, u64)]| Version {
            value: Some(vec![s as u8]),
            hlc: Hlc { wall_ms: hlc, logical: 0 },
            origin: origin(o),
            vv: vv.iter().map(|&(o, s)| (origin(o), s)).collect(),
        };
        let mut reg = Register::new(v(0, 1, 1, &[(0, 1)]));
        assert!(!reg.insert(v(0, 1, 1, &[(0, 1)])).changed, "a duplicate");
        assert!(reg.insert(v(1, 1, 2, &[(1, 1)])).changed);
        assert!(reg.is_conflicted());
        assert_eq!(reg.winner().origin, origin(1));
        let mut vv = reg.vv();
        vv.observe(&origin(2), 1);
        let later = Version { value: None, hlc: Hlc { wall_ms: 3, logical: 0 }, origin: origin(2), vv };
        reg.insert(later.clone());
        assert_eq!(reg.versions(), &[later]);
        assert!(!reg.insert(v(0, 1, 1, &[(0, 1)])).changed, "history stays out");
    }

    #[test]
    fn a_writers_context_makes_what_it_had_seen_history() {
        let v = |o: usize, _seq: u64, hlc: u64, value: Option<u8>, vv: &[(usize, u64)]| Version {
            value: value.map(|b| vec![b]),
            hlc: Hlc { wall_ms: hlc, logical: 0 },
            origin: origin(o),
            vv: vv.iter().map(|&(o, s)| (origin(o), s)).collect(),
        };
        // A tombstone of origin 0 that origin 1's writer had applied and collected: its
        // later write does not name it in its vector, but its context does.
        let tombstone = v(0, 1, 1, None, &[(0, 1)]);
        let later = v(1, 5, 9, Some(1), &[(1, 5)]);
        let context: VersionVector = [(origin(0), 1)].into_iter().collect();
        let mut reg = Register::new(tombstone.clone());
        assert!(reg.insert_in_context(later.clone(), &context).changed);
        assert_eq!(reg.versions(), std::slice::from_ref(&later));
        // Without the context they are siblings (a conflict).
        let mut plain = Register::new(tombstone.clone());
        plain.insert(later.clone());
        assert_eq!(plain.versions().len(), 2);
        // Inserting again in context clears a sibling that an earlier, plain insertion left.
        assert!(plain.insert_in_context(later.clone(), &context).changed);
        assert_eq!(plain.versions(), std::slice::from_ref(&later));
        // A concurrent version outside the context stays.
        let concurrent = v(2, 1, 3, Some(2), &[(2, 1)]);
        let mut reg = Register::new(tombstone);
        reg.insert(concurrent.clone());
        reg.insert_in_context(later.clone(), &context);
        assert_eq!(reg.versions().len(), 2);
        assert!(reg.versions().contains(&concurrent) && reg.versions().contains(&later));
        // An empty context is a plain insertion.
        let mut a = Register::new(concurrent.clone());
        let mut b = a.clone();
        assert_eq!(a.insert_in_context(later.clone(), &VersionVector::new()), b.insert(later));
        assert_eq!(a, b);
    }

    #[test]
    fn beyond_the_bound_the_lowest_ranks_are_cut() {
        let mut reg = Register::new(Version {
            value: None,
            hlc: Hlc { wall_ms: 0, logical: 0 },
            origin: origin(0),
            vv: [(origin(0), 1)].into_iter().collect(),
        });
        let mut cut = Vec::new();
        for i in 1..=SIBLINGS_MAX as u64 + 2 {
            let o = Origin::new(RegionId::new(format!("r{i}")).unwrap(), 1);
            let v = Version {
                value: None,
                hlc: Hlc { wall_ms: i, logical: 0 },
                vv: [(o.clone(), 1)].into_iter().collect(),
                origin: o,
            };
            cut.extend(reg.insert(v).cut);
        }
        assert_eq!(reg.versions().len(), SIBLINGS_MAX);
        assert_eq!(cut.len(), 3);
        assert!(cut.iter().all(|c| c.hlc.wall_ms <= 2));
    }
}
