//! Hybrid logical clock.
//!
//! A timestamp is `(wall_ms, logical)`. [`Clock::tick`] returns a timestamp greater
//! than every timestamp the clock issued or observed, and close to the wall clock, so a
//! write made after seeing another is ordered after it even if the wall clocks disagree.
//! The clock takes wall time as an argument: the core reads no clocks itself.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    pub const ZERO: Hlc = Hlc { wall_ms: 0, logical: 0 };

    /// The smallest timestamp greater than `self`.
    pub fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc { wall_ms: self.wall_ms, logical },
            None => Hlc { wall_ms: self.wall_ms + 1, logical: 0 },
        }
    }
}

/// The clock of one node.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A new timestamp, greater than everything issued or observed so far.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.wall_ms { Hlc { wall_ms, logical: 0 } } else { self.last.successor() };
        self.last = next;
        next
    }

    /// Take a timestamp seen on another change into account.
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_grow_even_when_the_wall_clock_goes_back() {
        let mut c = Clock::default();
        let a = c.tick(1000);
        let b = c.tick(900);
        assert!(b > a);
        c.observe(Hlc { wall_ms: 5000, logical: 3 });
        let d = c.tick(1000);
        assert_eq!(d, Hlc { wall_ms: 5000, logical: 4 });
        assert_eq!(c.tick(6000), Hlc { wall_ms: 6000, logical: 0 });
    }
}
