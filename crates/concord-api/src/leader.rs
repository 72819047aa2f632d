//! The leader record: what a region's leader writes under its region's key in the NATS
//! KV bucket `concord_leaders`, and followers read to find it (to send writers there,
//! or to fetch a snapshot); and the lease record that decides who leads.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader's node name (`us-east-1`).
    pub node: String,
    /// The leader's advertised HTTP URL (`http://127.0.0.1:8301`).
    pub http: String,
    /// The epoch the leader took.
    pub epoch: u64,
}

/// The writer lease of a region: what the holder writes under its region's key in the
/// NATS KV bucket `concord_leases`, renewed by compare-and-set on the key's revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's node name.
    pub node: String,
    /// The holder's advertised HTTP URL.
    pub http: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let r = LeaderRecord { node: "us-east-1".into(), http: "http://127.0.0.1:8301".into(), epoch: 3 };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v, serde_json::json!({"node": "us-east-1", "http": "http://127.0.0.1:8301", "epoch": 3}));
        assert_eq!(serde_json::from_value::<LeaderRecord>(v).unwrap(), r);
    }
}
