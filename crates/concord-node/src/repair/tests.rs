use std::collections::BTreeMap;

use concord_core::changeset::{Change, ChangeBody};
use concord_core::hlc::Hlc;
use concord_transport::LogError;

use super::*;
use bytes::Bytes;
use concord_transport::nats::RawMessage;

const MIRROR: &str = "CONCORD_MIRROR_AP_SOUTH";

fn origin(s: &str) -> Origin {
    s.parse().unwrap()
}

fn changeset(o: &str, first_seq: u64, changes: usize) -> Bytes {
    let change = Change {
        hlc: Hlc { wall_ms: 1_000, logical: 0 },
        bucket: "b".into(),
        key: "k".into(),
        body: ChangeBody::Put { value: b"v".to_vec(), vv: Default::default() },
        resolves: None,
    };
    Changeset { origin: origin(o), first_seq, changes: vec![change; changes] }.encode().into()
}

/// ap-south.1 applied through 73; 125.. waits, the first of it at mirror seq 40.
fn gap() -> Gap {
    Gap {
        origin: origin("ap-south.1"),
        applied: 73,
        next_waiting: 125,
        waiting: 3,
        stream: MIRROR.into(),
        stream_seq: 40,
    }
}

#[test]
fn the_walk_takes_what_is_missing_and_stops_at_what_is_applied() {
    let g = gap();
    assert_eq!(judge(&g, &changeset("ap-south.1", 100, 25)), Step::Take);
    assert_eq!(judge(&g, &changeset("ap-south.1", 74, 1)), Step::TakeLast);
    assert_eq!(judge(&g, &changeset("ap-south.1", 70, 10)), Step::TakeLast, "overlaps the applied ones");
    assert_eq!(judge(&g, &changeset("ap-south.1", 60, 14)), Step::Stop, "ends at 73: applied");
    assert_eq!(judge(&g, &changeset("ap-south.0", 500, 1)), Step::Stop, "an earlier epoch comes before the gap");
    assert_eq!(judge(&g, &changeset("ap-south.2", 1, 1)), Step::Skip, "a later epoch is not this gap's");
    assert_eq!(judge(&g, &changeset("us-east.1", 80, 1)), Step::Skip, "another region's (forged) changeset");
    assert_eq!(judge(&g, &changeset("ap-south.1", 125, 2)), Step::Skip, "waiting already");
    assert_eq!(judge(&g, b"garbage"), Step::Skip);
}

/// A local stream and an origin's log, as maps of sequence → message; `down` makes the
/// origin unreachable.
#[derive(Default)]
struct Logs {
    local: BTreeMap<u64, Bytes>,
    origin: BTreeMap<u64, Bytes>,
    down: bool,
}

impl Source for Logs {
    async fn local(&self, stream: &str, seq: u64) -> LogResult<Option<RawMessage>> {
        assert_eq!(stream, MIRROR);
        Ok(self.local.get(&seq).cloned().map(raw))
    }

    async fn origin(&self, region: &RegionId, seq: u64) -> LogResult<Option<RawMessage>> {
        assert_eq!(region.as_str(), "ap-south");
        if self.down {
            return Err(LogError::Unavailable("cut off".into()));
        }
        Ok(self.origin.get(&seq).cloned().map(raw))
    }
}

fn raw(payload: Bytes) -> RawMessage {
    RawMessage { subject: "concord.log.ap-south".into(), payload }
}

/// The origin's log: seqs 1..=39 hold ap-south.1's changes 1..=117 (3 per changeset,
/// in order, with one us-east message and garbage in between); the mirror lost 26..=35.
fn seed3_like() -> Logs {
    let mut logs = Logs::default();
    for seq in 1..=39u64 {
        let msg = match seq {
            7 => Bytes::from_static(b"garbage"),
            8 => changeset("us-east.1", 1, 1),
            _ => changeset("ap-south.1", (seq - 1) * 3 + 1, 3),
        };
        logs.origin.insert(seq, msg.clone());
        if !(26..=35).contains(&seq) {
            logs.local.insert(seq, msg);
        }
    }
    logs
}

fn walked(logs: &Logs, gap: &Gap) -> LogResult<Found> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(walk(logs, &RegionId::new("us-east").unwrap(), gap))
}

#[test]
fn a_hole_in_a_mirror_is_read_from_the_origin_in_stream_order() {
    let logs = seed3_like();
    // Applied through ap-south.1:75 (seq 25); waiting from seq 40.
    let g = Gap { applied: 75, next_waiting: 118, ..gap() };
    let found = walked(&logs, &g).unwrap();
    let seqs: Vec<u64> = found.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (26..=35).collect::<Vec<_>>(), "only what the mirror lacks, in order");
    assert!(found.complete, "the walk reached what is applied");
    assert_eq!(found.reads, 40 - 26, "it stopped at seq 26, which holds change 76, the first missing");
    for e in &found.entries {
        assert_eq!(e.payload, logs.origin[&e.seq]);
    }
}

#[test]
fn a_gap_the_stream_holds_is_left_alone() {
    // Nothing is missing from the mirror: the gap is behind a changeset the engine
    // refused (a dead letter); it is not fed again.
    let mut logs = seed3_like();
    logs.local = logs.origin.clone();
    let g = Gap { applied: 75, next_waiting: 118, ..gap() };
    let found = walked(&logs, &g).unwrap();
    assert!(found.entries.is_empty());
    assert!(found.complete);
}

#[test]
fn an_unreachable_origin_fails_the_attempt_and_hands_over_nothing() {
    let mut logs = seed3_like();
    logs.down = true;
    let g = Gap { applied: 75, next_waiting: 118, ..gap() };
    assert!(walked(&logs, &g).is_err());
}

#[test]
fn a_walk_reads_at_most_reads_max_messages() {
    let mut logs = Logs::default();
    let top = READS_MAX * 2 + 10;
    for seq in 1..top {
        logs.origin.insert(seq, changeset("ap-south.1", seq + 1, 1));
    }
    // The mirror holds nothing below the waiting changeset, which holds change `top + 1`.
    let g = Gap { applied: 1, next_waiting: top + 1, stream_seq: top, ..gap() };
    let found = walked(&logs, &g).unwrap();
    assert_eq!(found.reads, READS_MAX);
    assert_eq!(found.entries.len() as u64, READS_MAX);
    assert!(!found.complete, "the next attempt goes on below what this one found");
    assert_eq!(found.entries[0].seq, top - READS_MAX);
}

#[test]
fn gaps_in_the_own_log_are_not_read_from_elsewhere() {
    let mut logs = seed3_like();
    logs.down = true; // would fail the walk if it were asked
    let g = Gap { origin: origin("us-east.1"), applied: 0, next_waiting: 5, ..gap() };
    let found = walked(&logs, &g).unwrap();
    assert!(found.entries.is_empty());
}

/// Nothing missing: the walk finds nothing to take, but keeps the message right before
/// the first waiting changeset, which is handed over again with that changeset (the
/// engine then tells whether it is void).
#[tokio::test]
async fn a_walk_that_finds_nothing_hands_over_the_pair_to_check_again() {
    let mut logs = Logs::default();
    for seq in 1..=39u64 {
        logs.local.insert(seq, changeset("ap-south.1", 1 + 3 * (seq - 1), 3));
    }
    logs.local.insert(39, changeset("ap-south.2", 1, 1));
    logs.local.insert(40, changeset("ap-south.1", 125, 2));
    logs.origin = logs.local.clone();
    let g = Gap { applied: 114, ..gap() };
    let found = walk(&logs, &RegionId::new("us-east").unwrap(), &g).await.unwrap();
    assert!(found.entries.is_empty(), "the mirror lacks nothing");
    let before = found.before.clone().expect("the message before the waiting changeset");
    assert_eq!(before.seq, 39);
    let pair = recheck(&logs, &g, found.before).await;
    assert_eq!(pair.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![39, 40]);
    assert_eq!(pair[1].payload, logs.local[&40]);
    assert!(recheck(&logs, &Gap { stream_seq: 41, ..g }, Some(before)).await.is_empty(), "not held: nothing");
}
