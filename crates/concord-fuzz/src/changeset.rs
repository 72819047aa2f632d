//! The binary codec of `concord_core::changeset`: changesets as a region's log carries
//! them, and LWW registers as local state and snapshots store them.

use concord_core::changeset::{BODY_BYTES_MAX, CHANGES_MAX, ChangeBody, Changeset, stored};
use concord_core::conflict::CompetingVersion;
use concord_core::ids::REGION_BYTES_MAX;
use concord_core::input::{BUCKET_BYTES_MAX, KEY_BYTES_MAX};
use concord_core::lww::SIBLINGS_MAX;
use concord_core::vv::VersionVector;

/// `Changeset::decode` on a message of a log: refused, or a changeset within the limits
/// that re-encodes to itself.
pub fn changeset(data: &[u8]) {
    let Ok(cs) = Changeset::decode(data) else { return };
    check_changeset_limits(&cs, data.len());
    let again = Changeset::decode(&cs.encode()).expect("a decoded changeset re-encodes to bytes that decode");
    assert_eq!(again, cs, "decode(encode(cs)) == cs");
}

/// What [`Changeset::decode`] promises of anything it returns, from `input_bytes` bytes.
pub(crate) fn check_changeset_limits(cs: &Changeset, input_bytes: usize) {
    assert!((1..=CHANGES_MAX).contains(&cs.changes.len()), "{} changes", cs.changes.len());
    assert!(cs.first_seq >= 1, "origin sequences start at 1");
    assert!(cs.first_seq.checked_add(cs.changes.len() as u64 - 1).is_some(), "the last sequence fits in a u64");
    assert_eq!(cs.last_seq() - cs.first_seq + 1, cs.changes.len() as u64);
    assert!(cs.origin.region.as_str().len() <= REGION_BYTES_MAX);
    let mut payload_bytes = 0;
    for c in &cs.changes {
        assert!(c.bucket.len() <= BUCKET_BYTES_MAX, "bucket of {} bytes", c.bucket.len());
        assert!(c.key.len() <= KEY_BYTES_MAX, "key of {} bytes", c.key.len());
        let body_bytes = match &c.body {
            ChangeBody::Put { value, vv } => bounded_body(value) + check_vv(vv),
            ChangeBody::Delete { vv } => check_vv(vv),
            ChangeBody::Doc { change } => bounded_body(change),
            ChangeBody::Mark { floor, stable } => {
                assert!(c.bucket.is_empty() && c.key.is_empty(), "a mark names no key");
                check_vv(floor) + check_vv(stable)
            }
        };
        payload_bytes += c.bucket.len() + c.key.len() + body_bytes;
    }
    assert!(payload_bytes <= input_bytes, "{payload_bytes} bytes decoded from {input_bytes}: over-allocation");
}

/// The bytes a version vector's origins hold; every entry is a sequence, never 0.
fn check_vv(vv: &VersionVector) -> usize {
    vv.iter()
        .map(|(origin, seq)| {
            assert!(seq >= 1, "zero entry for {origin}");
            origin.region.as_str().len()
        })
        .sum()
}

fn bounded_body(body: &[u8]) -> usize {
    assert!(body.len() <= BODY_BYTES_MAX, "a body of {} bytes", body.len());
    body.len()
}

/// `stored::decode` on an LWW register from local state or a peer's snapshot: refused,
/// or a register of 1..=`SIBLINGS_MAX` versions that re-encodes to itself and that the
/// API can show.
pub fn stored_register(data: &[u8]) {
    let Ok(reg) = stored::decode(data) else { return };
    assert!((1..=SIBLINGS_MAX).contains(&reg.versions().len()), "{} siblings", reg.versions().len());
    let again = stored::decode(&stored::encode(&reg)).expect("a decoded register re-encodes to bytes that decode");
    assert_eq!(again, reg, "decode(encode(register)) == register");
    let winner = reg.winner();
    assert!(
        reg.versions().iter().all(|v| (v.hlc, &v.origin) <= (winner.hlc, &winner.origin)),
        "the winner ranks first"
    );
    let _ = reg.vv();
    for v in reg.versions() {
        check_vv(&v.vv);
        v.value.as_deref().map(bounded_body);
        let shown = CompetingVersion::from_lww(v);
        assert_eq!(shown.bytes(), v.value, "the conflict log's view of a value gives its bytes back");
    }
}
