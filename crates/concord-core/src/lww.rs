//! Last-writer-wins registers.
//!
//! A [`Version`] is one write of a key: its value (`None` for a delete: a tombstone),
//! the hybrid-logical-clock time and origin that made it, and the version vector of
//! everything the writer had seen of this key, its own write included.
//!
//! Merge ([`merge`]) keeps the version with the highest `(hlc, origin)` and joins the
//! vectors. Both are join-semilattice operations, so the merge is commutative,
//! associative and idempotent (property-tested below), and replicas converge whatever
//! the delivery order. Because a writer's clock has observed every version it saw,
//! a causally later version always has a higher HLC: the "highest wins" rule discards
//! dominated versions (history) and picks a deterministic winner among concurrent ones
//! (a conflict, which [`merge`] reports so it can be logged, never silently dropped).

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::ids::Origin;
use crate::vv::{Causality, VersionVector};

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
}

/// What merging an incoming version into the stored one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub state: Version,
    /// Set when the two versions were concurrent: `(winner, loser)`, as they arrived.
    pub conflict: Option<(Version, Version)>,
}

/// Merge `incoming` into `current`. The winner keeps its value, HLC and origin; the
/// result's vector is the join of both, so a later write supersedes both versions.
pub fn merge(current: &Version, incoming: &Version) -> Merged {
    let causality = current.vv.compare(&incoming.vv);
    let (winner, loser) = if incoming.rank() > current.rank() { (incoming, current) } else { (current, incoming) };
    let mut state = winner.clone();
    state.vv.join(&loser.vv);
    let conflict = (causality == Causality::Concurrent).then(|| (winner.clone(), loser.clone()));
    Merged { state, conflict }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RegionId;
    use proptest::prelude::*;

    fn origin(i: u8) -> Origin {
        Origin::new(RegionId::new(format!("r{}", i % 3)).unwrap(), u64::from(i % 2) + 1)
    }

    prop_compose! {
        fn version()(value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4)),
                     wall in 0u64..5, logical in 0u32..3, o in 0u8..6,
                     vv in proptest::collection::vec((0u8..6, 1u64..4), 0..4)) -> Version {
            Version {
                value,
                hlc: Hlc { wall_ms: wall, logical },
                origin: origin(o),
                vv: vv.into_iter().map(|(o, s)| (origin(o), s)).collect(),
            }
        }
    }

    fn m(a: &Version, b: &Version) -> Version {
        merge(a, b).state
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in version(), b in version()) {
            // Two distinct versions never share (hlc, origin): an origin issues each HLC once.
            prop_assume!(a.rank() != b.rank() || a == b);
            prop_assert_eq!(m(&a, &b), m(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in version(), b in version(), c in version()) {
            prop_assume!(a.rank() != b.rank() || a == b);
            prop_assume!(b.rank() != c.rank() || b == c);
            prop_assume!(a.rank() != c.rank() || a == c);
            prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in version(), b in version()) {
            prop_assert_eq!(m(&a, &a), a.clone());
            let ab = m(&a, &b);
            prop_assert_eq!(m(&ab, &b), ab.clone());
            prop_assert_eq!(m(&ab, &a), ab);
        }

        #[test]
        fn concurrent_versions_are_reported(a in version(), b in version()) {
            let merged = merge(&a, &b);
            let concurrent = a.vv.compare(&b.vv) == Causality::Concurrent;
            prop_assert_eq!(merged.conflict.is_some(), concurrent);
        }
    }

    #[test]
    fn a_dominated_version_is_history_not_a_conflict() {
        let o = origin(0);
        let old = Version {
            value: Some(b"1".to_vec()),
            hlc: Hlc { wall_ms: 1, logical: 0 },
            origin: o.clone(),
            vv: [(o.clone(), 1)].into_iter().collect(),
        };
        let new = Version {
            value: Some(b"2".to_vec()),
            hlc: Hlc { wall_ms: 2, logical: 0 },
            origin: o.clone(),
            vv: [(o, 2)].into_iter().collect(),
        };
        let merged = merge(&new, &old);
        assert_eq!(merged.state, new);
        assert!(merged.conflict.is_none());
    }
}
