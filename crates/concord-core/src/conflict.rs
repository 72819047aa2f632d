//! Conflict records: what the conflict log holds.
//!
//! A record lists every competing version of one key (or one document property) that a
//! merge reconciled, the winner and the rule that chose it. Its id is derived from the
//! key, the property path and the lowest competing version id, so regions that saw the
//! competing versions arrive in different orders end up with the same record: when a
//! further concurrent version joins, the record is replaced by one listing all of them
//! (see `replaces`), and once every version has arrived every region holds the same id.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::hlc::Hlc;
use crate::lww::Version;

/// The namespace of conflict ids (uuid v5).
const NAMESPACE: Uuid = Uuid::from_u128(0x6b1d_0c2e_5a7f_4d3b_9e8a_2f4c_1d0e_7a5b);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// Highest hybrid-logical-clock time wins (then the origin, for ties).
    #[serde(rename = "lww-hlc")]
    LwwHlc,
    /// Automerge's deterministic winner among concurrent property writes.
    #[serde(rename = "automerge")]
    Automerge,
    /// A `manual` bucket: the siblings stay until someone resolves them.
    #[serde(rename = "manual")]
    Manual,
}

/// One competing version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetingVersion {
    /// `origin:seq` for values; the Automerge operation id for document properties.
    pub id: String,
    /// UTF-8 text as a string, other bytes in base64 (see `encoding`); JSON for
    /// document values; `null` for a delete.
    pub value: Json,
    /// `utf8`, `base64` or `json`.
    pub encoding: String,
    pub deleted: bool,
    pub origin: String,
    pub hlc: Hlc,
}

impl CompetingVersion {
    pub fn from_lww(v: &Version) -> CompetingVersion {
        let (value, encoding) = match &v.value {
            None => (Json::Null, "utf8"),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Json::String(text.to_string()), "utf8"),
                Err(_) => (Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)), "base64"),
            },
        };
        CompetingVersion {
            id: v.id(),
            value,
            encoding: encoding.into(),
            deleted: v.is_tombstone(),
            origin: v.origin.to_string(),
            hlc: v.hlc,
        }
    }

    /// The raw bytes of an LWW version's value (`None` for a delete).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        if self.deleted {
            return None;
        }
        match (&self.value, self.encoding.as_str()) {
            (Json::String(s), "base64") => base64::engine::general_purpose::STANDARD.decode(s).ok(),
            (Json::String(s), _) => Some(s.as_bytes().to_vec()),
            (other, _) => Some(other.to_string().into_bytes()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// `resolve` (POST /v1/conflicts/{id}/resolve), `write` (a later write that had
    /// seen every competing version) or `anti-entropy` (a peer had superseded every
    /// competing version by a delete it has collected since: this replica missed it).
    pub by: String,
    /// The version that superseded the competing ones (empty for `anti-entropy`: the
    /// delete is gone).
    pub version: String,
    pub at: DateTime<Utc>,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub id: Uuid,
    pub bucket: String,
    pub key: String,
    /// The property, for documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Vec<Json>>,
    pub detected_at: DateTime<Utc>,
    pub detected_by: String,
    pub rule: Rule,
    /// The id of the version reads see.
    pub winner: String,
    pub versions: Vec<CompetingVersion>,
    /// Versions beyond the sibling bound, decided by LWW and dropped from the siblings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<String>,
    pub resolved: Option<Resolution>,
}

/// The id of the conflict among `version_ids` on `bucket/key` (and `path`).
pub fn conflict_id(bucket: &str, key: &str, path: Option<&[Json]>, version_ids: &[String]) -> Uuid {
    let lowest = version_ids.iter().min().map(String::as_str).unwrap_or("");
    let path = path.map(|p| Json::Array(p.to_vec()).to_string()).unwrap_or_default();
    let name = format!("{bucket}\u{0}{key}\u{0}{path}\u{0}{lowest}");
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

impl ConflictRecord {
    /// Merge `versions` into this record (a union by id), re-deriving the id.
    pub fn absorb(&mut self, versions: Vec<CompetingVersion>) {
        for v in versions {
            if !self.versions.iter().any(|x| x.id == v.id) {
                self.versions.push(v);
            }
        }
        self.versions
            .sort_by(|a, b| b.hlc.cmp(&a.hlc).then_with(|| b.origin.cmp(&a.origin)).then_with(|| a.id.cmp(&b.id)));
        let ids: Vec<String> = self.versions.iter().map(|v| v.id.clone()).collect();
        self.id = conflict_id(&self.bucket, &self.key, self.path.as_deref(), &ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, hlc: u64) -> CompetingVersion {
        CompetingVersion {
            id: id.into(),
            value: Json::String(id.into()),
            encoding: "utf8".into(),
            deleted: false,
            origin: id.split(':').next().unwrap().into(),
            hlc: Hlc { wall_ms: hlc, logical: 0 },
        }
    }

    #[test]
    fn records_converge_whatever_order_versions_arrive_in() {
        let base = |first: Vec<CompetingVersion>| {
            let mut r = ConflictRecord {
                id: Uuid::nil(),
                bucket: "b".into(),
                key: "k".into(),
                path: None,
                detected_at: Utc::now(),
                detected_by: "x".into(),
                rule: Rule::LwwHlc,
                winner: String::new(),
                versions: Vec::new(),
                cut: Vec::new(),
                resolved: None,
            };
            r.absorb(first);
            r
        };
        let mut x = base(vec![v("us-east.1:4", 1), v("eu-west.1:2", 2)]);
        x.absorb(vec![v("ap-south.1:7", 3)]);
        let mut y = base(vec![v("ap-south.1:7", 3), v("eu-west.1:2", 2)]);
        y.absorb(vec![v("us-east.1:4", 1), v("eu-west.1:2", 2)]);
        assert_eq!(x.id, y.id);
        assert_eq!(x.versions, y.versions);
        // The pair's record is replaced by the triple's (a lower version id joined).
        assert_ne!(x.id, base(vec![v("us-east.1:4", 1), v("eu-west.1:2", 2)]).id);
    }

    #[test]
    fn values_keep_their_bytes() {
        let text = CompetingVersion { value: Json::String("héllo".into()), ..v("a.1:1", 1) };
        assert_eq!(text.bytes().unwrap(), "héllo".as_bytes());
        let version = Version {
            value: Some(vec![0xff, 0x00]),
            hlc: Hlc::ZERO,
            origin: "us-east.1".parse().unwrap(),
            vv: [("us-east.1".parse().unwrap(), 3)].into_iter().collect(),
        };
        let c = CompetingVersion::from_lww(&version);
        assert_eq!((c.encoding.as_str(), c.id.as_str()), ("base64", "us-east.1:3"));
        assert_eq!(c.bytes().unwrap(), vec![0xff, 0x00]);
    }
}
