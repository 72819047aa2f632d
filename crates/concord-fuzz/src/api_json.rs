//! The JSON of the contract (`concord_api`): bodies a client or another node reads,
//! `cluster.json`, and the leader and lease records a node reads from the NATS KV
//! buckets `concord_leaders` and `concord_leases` (anyone with access to the bucket can
//! write them). Also the conflict records of the conflict log (stored as JSON, carried by
//! snapshots, published on `concord.conflicts.<region>`).

use std::fmt::Debug;

use concord_api::{
    ClusterJson, DeadLettersBody, ErrorBody, ErrorCode, LeaderRecord, LeaseRecord, StatusBody, WriteAck,
};
use concord_core::conflict::ConflictRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `serde_json::from_slice` into every contract type: refused, or a value that
/// serializes to JSON that parses to the same value.
pub fn api_json(data: &[u8]) {
    round_trip::<StatusBody>(data);
    round_trip::<WriteAck>(data);
    round_trip::<ErrorBody>(data);
    round_trip::<ClusterJson>(data);
    round_trip::<LeaderRecord>(data);
    round_trip::<LeaseRecord>(data);
    round_trip::<DeadLettersBody>(data);
    if let Ok(code) = serde_json::from_slice::<ErrorCode>(data) {
        assert!(!code.statuses().is_empty());
        assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
    }
    // A record holds JSON values (documents' values), and serde_json parses some floats
    // a bit off without its `float_roundtrip` feature: only check that it parses again.
    if let Ok(record) = serde_json::from_slice::<ConflictRecord>(data) {
        let json = serde_json::to_vec(&record).expect("a conflict record serializes");
        serde_json::from_slice::<ConflictRecord>(&json).expect("a serialized conflict record parses");
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else { return };
    let json = serde_json::to_vec(&value).expect("a contract type serializes");
    let again: T = serde_json::from_slice(&json).expect("what a node writes, a node reads");
    assert_eq!(again, value, "{}", String::from_utf8_lossy(&json));
}
