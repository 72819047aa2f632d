//! Version vectors over origins.
//!
//! Entry `origin -> seq` means "has seen the changes of `origin` up to `seq`". One
//! vector dominates another when it is at least as large in every entry; two vectors
//! neither of which dominates the other describe concurrent versions: a conflict.
//! The same type is the *applied vector* of a replica and the session token's content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::Origin;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Origin, u64>);

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left one happened before the right one.
    Before,
    /// The left one happened after the right one.
    After,
    Concurrent,
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, origin: &Origin) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Raise the entry of `origin` to `seq` (never lowers it).
    pub fn observe(&mut self, origin: &Origin, seq: u64) {
        if seq == 0 {
            return;
        }
        let entry = self.0.entry(origin.clone()).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, &seq) in &other.0 {
            self.observe(origin, seq);
        }
    }

    /// Pointwise minimum: what both have seen (an origin missing from either is 0).
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        self.0
            .iter()
            .filter_map(|(o, &s)| {
                let m = s.min(other.get(o));
                (m > 0).then(|| (o.clone(), m))
            })
            .collect()
    }

    /// The entries of `self` whose origin `keep` accepts.
    pub fn restricted(&self, keep: impl Fn(&Origin) -> bool) -> VersionVector {
        self.0.iter().filter(|(o, _)| keep(o)).map(|(o, &s)| (o.clone(), s)).collect()
    }

    /// True when `self` has seen everything `other` has.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, &s)| self.get(o) >= s)
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Origin, u64)> {
        self.0.iter().map(|(o, &s)| (o, s))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Origin, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (Origin, u64)>>(iter: T) -> Self {
        let mut vv = VersionVector::new();
        for (o, s) in iter {
            vv.observe(&o, s);
        }
        vv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RegionId;

    fn o(r: &str) -> Origin {
        Origin::new(RegionId::new(r).unwrap(), 1)
    }

    #[test]
    fn compares_causally() {
        let a: VersionVector = [(o("a"), 2), (o("b"), 1)].into_iter().collect();
        let b: VersionVector = [(o("a"), 2), (o("b"), 2)].into_iter().collect();
        let c: VersionVector = [(o("a"), 3)].into_iter().collect();
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        let mut j = b.clone();
        j.join(&c);
        assert!(j.dominates(&b) && j.dominates(&c));
        let m = b.meet(&c);
        assert_eq!(m, [(o("a"), 2)].into_iter().collect());
        assert!(b.dominates(&m) && c.dominates(&m));
        assert_eq!(b.restricted(|x| x.region.as_str() == "b"), [(o("b"), 2)].into_iter().collect());
    }
}
