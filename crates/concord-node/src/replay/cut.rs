//! Where a point-in-time restore stops, decided without I/O: the point an operator
//! names, the cut it gives each stream, and whether a backup lies before it.
//!
//! A stream is replayed in its own order up to (not including) its first message the
//! cut refuses, and never past it, so what is replayed of each stream is a prefix:
//!
//! - [`Point::UntilTime`] `T`: a stream stops at its first changeset holding a change
//!   whose HLC time is at or after `T`. Within one log HLC times grow (a writer's clock
//!   ticks past everything it applied, a new leader reads the whole log first), so the
//!   prefix is exactly "what was written before `T`".
//! - [`Point::UntilSeq`] `N`: the region's own log is replayed through `N - 1` (`N` is
//!   the bad write), the mirrors up to the time of message `N` (its latest change's
//!   HLC), as for a time. A change of another region that had seen message `N` carries
//!   a later time, so nothing that followed the bad write is replayed.
//!
//! A message that does not decode as a changeset (garbage, or a newer format) is not
//! judged here: it is handed to the engine, which dead-letters or parks it as it
//! would for a running node.

use chrono::{DateTime, Utc};
use concord_core::changeset::Changeset;
use concord_core::hlc::Hlc;
use serde::{Deserialize, Serialize};

/// The point an operator restores to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// The state as written before this time.
    UntilTime(DateTime<Utc>),
    /// The state before the region's own log's message of this sequence (the bad write).
    UntilSeq(u64),
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::UntilTime(t) => write!(f, "before {}", rfc3339(t.timestamp_millis().max(0) as u64)),
            Point::UntilSeq(n) => write!(f, "before sequence {n} of the region's log"),
        }
    }
}

/// A point resolved against the logs: how far each stream is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// A changeset holding a change at or after this time is not replayed, nor anything
    /// after it in its stream.
    pub before: Hlc,
    /// With [`Point::UntilSeq`]: the own log's last sequence replayed (whatever the
    /// time of its messages).
    pub own_through: Option<u64>,
}

impl Cut {
    /// The cut of [`Point::UntilTime`]; a time before 1970 is refused.
    pub fn until_time(t: DateTime<Utc>) -> Result<Cut, String> {
        let wall_ms = u64::try_from(t.timestamp_millis()).map_err(|_| format!("{t}: a time before 1970"))?;
        Ok(Cut { before: Hlc { wall_ms, logical: 0 }, own_through: None })
    }

    /// The cut of [`Point::UntilSeq`] `n`, from the own log's message `n` (`bad`).
    pub fn until_seq(n: u64, bad: &[u8]) -> Result<Cut, String> {
        assert!(n >= 1, "stream sequences start at 1");
        let before = latest_hlc(bad).ok_or_else(|| {
            format!("message {n} of the region's log is no changeset this build reads: name the bad write's sequence")
        })?;
        Ok(Cut { before, own_through: Some(n - 1) })
    }

    /// Whether the message `seq` of a stream (`own`: the region's own log) is replayed.
    /// Once it says no for a stream, nothing after it in that stream is.
    pub fn admits(&self, own: bool, seq: u64, payload: &[u8]) -> bool {
        match (own, self.own_through) {
            (true, Some(through)) => seq <= through,
            _ => match Changeset::decode(payload) {
                Ok(cs) => cs.changes.iter().all(|c| c.hlc < self.before),
                Err(_) => true,
            },
        }
    }

    /// Whether a backup whose latest change is at `backup_latest` lies before the cut
    /// (every change it holds is before the cut's time).
    pub fn after(&self, backup_latest: Hlc) -> bool {
        backup_latest < self.before
    }
}

/// The latest HLC time of a changeset's changes (`None`: no changeset).
pub fn latest_hlc(payload: &[u8]) -> Option<Hlc> {
    Changeset::decode(payload).ok()?.changes.iter().map(|c| c.hlc).max()
}

/// Milliseconds since 1970 as RFC 3339, to the millisecond.
pub fn rfc3339(wall_ms: u64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(i64::try_from(wall_ms).unwrap_or(i64::MAX)) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{wall_ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::changeset::{Change, ChangeBody};
    use concord_core::ids::{Origin, RegionId};
    use concord_core::vv::VersionVector;

    fn cs(times: &[u64]) -> Vec<u8> {
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        let changes = times
            .iter()
            .map(|&wall_ms| Change {
                hlc: Hlc { wall_ms, logical: 0 },
                bucket: "b".into(),
                key: "k".into(),
                body: ChangeBody::Delete { vv: VersionVector::new() },
                resolves: None,
            })
            .collect();
        Changeset { origin, first_seq: 1, changes }.encode()
    }

    #[test]
    fn a_time_cut_refuses_the_first_changeset_holding_a_change_at_or_after_it() {
        let cut = Cut::until_time(DateTime::from_timestamp_millis(1000).unwrap()).unwrap();
        assert!(cut.admits(false, 5, &cs(&[998, 999])));
        assert!(!cut.admits(false, 6, &cs(&[999, 1000])), "one change at the time is enough");
        assert!(!cut.admits(true, 6, &cs(&[1001])), "the own log too, by time");
        assert!(cut.admits(false, 7, b"garbage"), "the engine judges what does not decode");
        assert!(cut.after(Hlc { wall_ms: 999, logical: 7 }));
        assert!(!cut.after(Hlc { wall_ms: 1000, logical: 0 }), "a backup holding a change at the time");
        assert!(Cut::until_time(DateTime::from_timestamp_millis(-1).unwrap()).is_err());
    }

    #[test]
    fn a_sequence_cut_stops_the_own_log_before_it_and_the_mirrors_at_its_time() {
        let cut = Cut::until_seq(9, &cs(&[500, 700])).unwrap();
        assert_eq!(cut.before, Hlc { wall_ms: 700, logical: 0 });
        assert!(cut.admits(true, 8, &cs(&[900])), "the own log goes by sequence");
        assert!(!cut.admits(true, 9, &cs(&[100])));
        assert!(cut.admits(false, 40, &cs(&[699])));
        assert!(!cut.admits(false, 41, &cs(&[700])));
        assert!(Cut::until_seq(9, b"not a changeset").is_err());
    }
}
