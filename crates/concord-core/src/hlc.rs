//! Hybrid logical clock.
//!
//! A timestamp is `(wall_ms, logical)`. [`Clock::tick`] returns a timestamp greater
//! than every timestamp the clock issued or observed, and close to the wall clock, so a
//! write made after seeing another is ordered after it even if the wall clocks disagree.
//! The clock takes wall time as an argument: the core reads no clocks itself.
//!
//! Timestamps from outside (changesets, stored registers) are decoded with
//! [`Hlc::decoded`], which refuses a wall time past [`WALL_MS_MAX`]: a clock that
//! observed `u64::MAX` would have no successor left to give (a forged changeset did
//! that, and the next local write overflowed). How far ahead of the local clock a
//! peer's time may be is another matter, not decided here: a time within the bound but
//! years ahead still carries every later write of the replicas that see it.

use serde::{Deserialize, Serialize};

use crate::{CoreError, CoreResult};

/// The latest wall time a timestamp may carry: 9999-12-31T23:59:59.999Z, the last
/// instant with a four-digit year (what RFC 3339 dates, the conflict log's, can show).
pub const WALL_MS_MAX: u64 = 253_402_300_799_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    pub const ZERO: Hlc = Hlc { wall_ms: 0, logical: 0 };

    /// A timestamp read from outside: refused past [`WALL_MS_MAX`].
    pub fn decoded(wall_ms: u64, logical: u32) -> CoreResult<Hlc> {
        if wall_ms > WALL_MS_MAX {
            return Err(CoreError::Corrupt(format!(
                "timestamp wall time {wall_ms} ms is past the year 9999 (at most {WALL_MS_MAX})"
            )));
        }
        Ok(Hlc { wall_ms, logical })
    }

    /// The smallest timestamp greater than `self`.
    pub fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc { wall_ms: self.wall_ms, logical },
            None => Hlc {
                wall_ms: self.wall_ms.checked_add(1).expect("wall times from outside are at most WALL_MS_MAX"),
                logical: 0,
            },
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

    #[test]
    fn times_past_the_year_9999_are_refused_and_the_latest_has_successors() {
        assert!(Hlc::decoded(u64::MAX, u32::MAX).is_err());
        assert!(Hlc::decoded(WALL_MS_MAX + 1, 0).is_err());
        let latest = Hlc::decoded(WALL_MS_MAX, u32::MAX).unwrap();
        let mut c = Clock::default();
        c.observe(latest);
        assert_eq!(c.tick(1_000), Hlc { wall_ms: WALL_MS_MAX + 1, logical: 0 });
        let end = chrono::DateTime::from_timestamp_millis(WALL_MS_MAX as i64).unwrap();
        assert_eq!(end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "9999-12-31T23:59:59.999Z");
    }
}
