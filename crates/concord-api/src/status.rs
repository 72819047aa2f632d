//! The body of `GET /v1/status` (and of the NATS `status` operation): who this node is,
//! what it applied, and how far behind it is. Fields added after the first version
//! have serde defaults, so an older or newer node's status still parses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    pub region: String,
    pub node: String,
    /// The current role: `leader` (it holds the region's lease) or `follower` (`writer`
    /// says more: a leader fenced by its log follows as `deposed`). A string, not an
    /// enum, so a role added later still parses.
    pub role: String,
    /// The epoch of this node's origin (0 for a follower).
    pub epoch: u64,
    /// This node's origin (`us-east.2`).
    pub origin: String,
    /// The region's leader (node name); empty when a follower knows none.
    pub leader: String,
    /// The leader's epoch (from its leader record, on a follower).
    #[serde(default)]
    pub leader_epoch: u64,
    /// The applied vector: per origin, the highest contiguous sequence applied.
    pub applied: BTreeMap<String, u64>,
    /// Per region this node reads a log of (the other regions' mirrors; for a
    /// follower also its own region's log): how far behind it is.
    #[serde(default)]
    pub lag: BTreeMap<String, StreamLag>,
    /// A leader's live followers, by node name (empty on a follower).
    #[serde(default)]
    pub followers: BTreeMap<String, FollowerStatus>,
    /// Whether this node answers reads over NATS now.
    #[serde(default)]
    pub serves_nats_reads: bool,
    /// A leader's view of how much of its log each other region stored.
    #[serde(default)]
    pub remote_stored: BTreeMap<String, u64>,
    /// What the node's writer does: `writing`, `catching_up` (a leader reading its
    /// region's log before it writes), `following` (a follower), `deposed` (another
    /// origin of the region wrote later: it follows now), `parked` (it cannot read its
    /// region's log: upgrade it).
    #[serde(default)]
    pub writer: String,
    /// Every stream this replica applies (its region's log, the mirrors of the other
    /// regions' logs): the last sequence consumed, and whether it is parked.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamState>,
    /// Origins whose changesets wait behind a gap in their sequence: the applied vector
    /// (and every session token) stays at `applied` until the missing ones arrive.
    #[serde(default)]
    pub gaps: Vec<GapStatus>,
    /// Changesets waiting behind gaps, in all.
    #[serde(default)]
    pub waiting: u64,
    /// Messages this replica put in its dead-letter table, ever (`GET /v1/dead-letters`
    /// lists those kept).
    #[serde(default)]
    pub dead_letters: u64,
    /// Conflict records not resolved yet, in this replica's conflict log.
    #[serde(default)]
    pub open_conflicts: u64,
}

/// Where a replica is in one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// The last stream sequence consumed (applied, held back, or dead-lettered).
    pub cursor: u64,
    /// Set when the stream stopped at a message this node cannot read: nothing from
    /// `seq` on is applied (the cursor stays before it) until a node that reads it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<ParkedStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedStatus {
    pub seq: u64,
    pub reason: String,
}

/// An origin whose changesets wait behind a gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapStatus {
    pub origin: String,
    /// The highest contiguous sequence applied.
    pub applied: u64,
    /// The first sequence of the first changeset waiting.
    pub next_waiting: u64,
    /// How many changesets of this origin wait.
    pub waiting: u64,
}

/// One message of the dead-letter table (`GET /v1/dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    pub id: u64,
    /// The stream and sequence it arrived at.
    pub stream: String,
    pub seq: u64,
    /// The origin and sequences it claims, when it decoded that far (the applied
    /// vector never counts them).
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub first_seq: Option<u64>,
    #[serde(default)]
    pub last_seq: Option<u64>,
    pub reason: String,
    /// When it arrived (milliseconds since the epoch).
    pub at_ms: u64,
    /// The message as it was on the wire, base64.
    pub payload_base64: String,
}

/// `GET /v1/dead-letters?limit=&before=`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersBody {
    pub dead_letters: Vec<DeadLetterEntry>,
    /// Pass as `before` for the next page.
    pub next: Option<u64>,
}

/// How far a replica is behind one stream (a mirror of another region's log, or its
/// own region's log): the measure, or the error that prevented it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLag {
    /// The last sequence of the stream this replica applied.
    pub applied_seq: u64,
    /// Why the rest is missing (the local stream did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The measure, when the stream answered (its fields sit beside `applied_seq`).
    #[serde(flatten)]
    pub mirror: Option<MirrorLag>,
}

impl StreamLag {
    /// Nothing left to apply: measured, and zero messages behind.
    pub fn caught_up(&self) -> bool {
        self.mirror.as_ref().is_some_and(|m| m.seq == 0)
    }

    /// The mirror heard from its upstream lately.
    pub fn connected(&self) -> bool {
        self.mirror.as_ref().is_some_and(|m| m.mirror_connected)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorLag {
    /// Messages behind: held by the mirror but not applied, plus not yet copied.
    pub seq: u64,
    /// The age of the oldest unapplied message, in milliseconds.
    pub ms: u64,
    /// The last sequence the stream holds.
    pub mirror_seq: u64,
    /// Messages the mirror has not copied from its upstream yet.
    pub mirror_lag: u64,
    /// Since the mirror last heard from its upstream (grows while cut off); `null`
    /// when its upstream consumer is gone altogether (or the stream is no mirror).
    #[serde(default)]
    pub mirror_active_ms: Option<u64>,
    /// The mirror heard from its upstream in the last 5 s: what to alert on, since a
    /// cut-off mirror's `mirror_lag` cannot grow.
    #[serde(default)]
    pub mirror_connected: bool,
}

/// A follower as its leader sees it (from the follower's last report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    /// The last sequence of the region's log the follower applied.
    pub applied_log_seq: u64,
    /// How far that is behind the leader's log.
    pub lag_seq: u64,
    pub reported_ms_ago: u64,
    /// The follower's session token (its applied vector).
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_lag_has_two_shapes() {
        let measured = json!({"seq": 3, "ms": 10, "applied_seq": 7, "mirror_seq": 9, "mirror_lag": 1,
            "mirror_active_ms": null, "mirror_connected": false});
        let lag: StreamLag = serde_json::from_value(measured.clone()).unwrap();
        assert_eq!(lag.mirror.as_ref().map(|m| m.seq), Some(3));
        assert!(!lag.caught_up() && !lag.connected());
        assert_eq!(serde_json::to_value(&lag).unwrap(), measured);

        let failed = json!({"error": "the local mirror did not answer in 2 s", "applied_seq": 7});
        let lag: StreamLag = serde_json::from_value(failed.clone()).unwrap();
        assert_eq!((lag.mirror.is_none(), lag.error.is_some()), (true, true));
        assert_eq!(serde_json::to_value(&lag).unwrap(), failed);
    }

    #[test]
    fn an_older_status_still_parses() {
        let old = json!({"region": "us-east", "node": "us-east-1", "role": "leader", "epoch": 2,
            "origin": "us-east.2", "leader": "us-east-1", "applied": {"us-east.2": 5},
            "lag": {"eu-west": {"seq": 0, "ms": 0, "applied_seq": 4, "mirror_seq": 4, "mirror_lag": 0}}});
        let s: StatusBody = serde_json::from_value(old).unwrap();
        assert!(s.followers.is_empty() && !s.serves_nats_reads);
        assert!(s.lag["eu-west"].caught_up() && !s.lag["eu-west"].connected());
    }
}
