//! The answer to a write (`PUT`/`DELETE /v1/kv/...`, `POST /v1/docs/...`, a resolution):
//! `{"ok": true, "origin": "us-east.2", "seq": 17, "hlc": {"wall_ms": .., "logical": ..},
//! "confirmed_by": [..]}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// Always `true` (an error has an [`crate::ErrorBody`] instead).
    pub ok: bool,
    /// The origin (`region.epoch`) that made the write.
    pub origin: String,
    /// The write's sequence number in its origin; `null` when it changed nothing.
    pub seq: Option<u64>,
    /// The write's hybrid-logical-clock time; `null` when it changed nothing.
    pub hlc: Option<Hlc>,
    /// The regions that confirmed the write beyond the origin's log: for `region`, the
    /// region itself once a follower applied it; for `remote`/`all`, the other regions
    /// that stored it.
    #[serde(default)]
    pub confirmed_by: Vec<String>,
    /// For a resolution: the conflict record it resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
}

/// A hybrid-logical-clock time, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let ack = WriteAck {
            ok: true,
            origin: "us-east.2".into(),
            seq: None,
            hlc: Some(Hlc { wall_ms: 7, logical: 1 }),
            confirmed_by: vec!["eu-west".into()],
            resolved: None,
        };
        let v = serde_json::to_value(&ack).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "origin": "us-east.2", "seq": null,
                "hlc": {"wall_ms": 7, "logical": 1}, "confirmed_by": ["eu-west"]})
        );
        assert_eq!(serde_json::from_value::<WriteAck>(v).unwrap(), ack);
    }
}
