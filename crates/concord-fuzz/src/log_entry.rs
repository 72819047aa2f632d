//! A message on a region's log, through the consumer: what any bytes published on a
//! log (garbage, damaged, forged) do to the replicas that read it.

use std::sync::OnceLock;

use concord_core::changeset::{Change, ChangeBody, Changeset, stored};
use concord_core::conflict::CompetingVersion;
use concord_core::hlc::Hlc;
use concord_core::{CoreError, doc};
use concord_engine::{Alert, MemStore, Output};

use crate::changeset::check_changeset_limits;
use crate::replica::{MIRROR, OWN, Replica, entry, origin, region_of};
use crate::seeds;

/// The epoch of the changeset that follows the fuzzed one: no seed uses it.
const NEXT_EPOCH: u64 = 424_242;

/// `data` as the second message of us-east's log and of its mirror of eu-west's log, read
/// by a follower, and of the mirror read by us-east's leader. Whatever it is, it is
/// applied or held back (a changeset of the stream's region), or recorded as a dead
/// letter and counted (anything else), or it parks its stream (a newer format); the
/// engine's invariants hold; the next good changeset of the stream still applies; the
/// leader still writes, later than everything it applied; what was applied reads back.
pub fn log_entry(data: &[u8]) {
    let history = history();
    let mut follower = Replica::follower();
    follower.deliver(OWN, vec![entry(1, history[0].clone())], 5_000);
    follower.deliver(MIRROR, vec![entry(1, history[1].clone())], 5_000);
    consume(&mut follower, OWN, data);
    consume(&mut follower, MIRROR, data);
    read_back(&follower.store);

    let mut leader = Replica::leader();
    leader.deliver(MIRROR, vec![entry(1, history[1].clone())], 5_000);
    consume(&mut leader, MIRROR, data);
    let seen = leader.store.kv.values().flat_map(|r| r.versions()).map(|v| v.hlc).max().unwrap_or(Hlc::ZERO);
    let done = leader.put("b", "k1", b"written after it", 1, 12_000);
    let ack = match done.replies.as_slice() {
        [(_, Ok(ack))] => ack.clone(),
        other => panic!("the leader's write is acknowledged: {other:?}"),
    };
    let hlc = ack.hlc.expect("a put changes something");
    assert!(hlc > seen, "a new write ({hlc:?}) ranks after every version the leader applied ({seen:?})");
    read_back(&leader.store);
}

/// us-east's first changeset and eu-west's first, encoded once.
fn history() -> &'static [Vec<u8>] {
    static HISTORY: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    HISTORY.get_or_init(|| seeds::changesets().iter().take(2).map(Changeset::encode).collect())
}

/// Deliver `data` at stream sequence 2, then a good changeset at 3.
fn consume(r: &mut Replica, stream: &str, data: &[u8]) {
    let letters_before = r.engine.dead_letters();
    let out = r.deliver(stream, vec![entry(2, data.to_vec())], 10_000);
    let decoded = Changeset::decode(data);
    let parked = r.engine.parked().contains_key(stream);
    match &decoded {
        Err(CoreError::UnsupportedVersion { found, supported }) if found > supported => {
            assert!(parked, "a newer format parks {stream}");
            assert_eq!(r.engine.cursor(stream), 1, "the cursor stays before a parked message");
        }
        Err(_) => dead_lettered(r, &out, stream, data, letters_before),
        Ok(cs) if cs.origin.region != region_of(stream) => dead_lettered(r, &out, stream, data, letters_before),
        Ok(cs) => {
            check_changeset_limits(cs, data.len());
            assert!(!parked, "a changeset this node reads never parks its stream");
            assert_eq!(r.engine.cursor(stream), 2, "the message is consumed");
        }
    }
    let next_origin = origin(region_of(stream).as_str(), NEXT_EPOCH);
    let next = Changeset {
        origin: next_origin.clone(),
        first_seq: 1,
        changes: vec![Change {
            hlc: Hlc { wall_ms: 11_000, logical: 0 },
            bucket: "b".into(),
            key: "next".into(),
            body: ChangeBody::Put { value: b"next".to_vec(), vv: [(next_origin.clone(), 1)].into_iter().collect() },
            resolves: None,
        }],
    };
    r.deliver(stream, vec![entry(3, next.encode())], 11_000);
    let applied = r.engine.applied().get(&next_origin);
    if parked {
        assert_eq!(applied, 0, "a parked stream takes nothing");
    } else if !matches!(&decoded, Ok(cs) if cs.origin == next_origin) {
        assert_eq!(applied, 1, "the consumer goes on: the next changeset of {stream} applies");
    }
}

/// The message went to the dead-letter table, with its bytes, and was counted (the
/// alert is what the node's `dead_letters_total` metric counts).
fn dead_lettered(r: &Replica, out: &Output, stream: &str, data: &[u8], letters_before: u64) {
    assert_eq!(r.engine.dead_letters(), letters_before + 1, "one more dead letter");
    let alerted =
        out.alerts.iter().any(|a| matches!(a, Alert::DeadLettered { stream: s, stream_seq: 2, .. } if s == stream));
    assert!(alerted, "the dead letter is alerted (and counted): {:?}", out.alerts);
    let letter = r.store.dead_letters.values().next_back().expect("the dead letter is recorded");
    assert_eq!((letter.stream.as_str(), letter.stream_seq), (stream, 2));
    assert_eq!(letter.payload, data, "the dead letter keeps the message's bytes");
    assert_eq!(r.engine.cursor(stream), 2, "the message is consumed");
}

/// Everything a replica stored shows through the API's readers without a panic.
fn read_back(store: &MemStore) {
    for reg in store.kv.values() {
        assert_eq!(&stored::decode(&stored::encode(reg)).expect("a stored register decodes"), reg);
        for v in reg.versions() {
            let _ = CompetingVersion::from_lww(v);
        }
    }
    for saved in store.docs.values() {
        let d = doc::load_doc(saved).expect("a document this replica saved loads");
        let _ = doc::to_json(&d);
        let _ = doc::conflicts(&d);
    }
    for record in store.conflicts.values() {
        serde_json::to_vec(record).expect("a conflict record serializes");
    }
}
