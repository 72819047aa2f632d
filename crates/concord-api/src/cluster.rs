//! `DIR/cluster.json`, written by `concord cluster up` once the deployment is ready and
//! read by the other `concord cluster` commands and the tests (format in DESIGN.md,
//! "Local deployment").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterJson {
    /// By region name.
    pub regions: BTreeMap<String, ClusterRegion>,
    /// The HTTP API's token, sent as `Authorization: Bearer <token>` (absent when the
    /// API is open: `api_auth = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A token that may only read (an extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token: Option<String>,
    /// NATS users a client of the deployment may connect as, with their passwords (an
    /// extension): `client` (the API subjects only) and `admin` (everything).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nats_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRegion {
    /// The region's NATS server (`nats://127.0.0.1:4301`); with several, the first.
    pub nats: String,
    /// Every NATS server of the region (one, or the three of its JetStream cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats_servers: Vec<String>,
    /// The leader first, then the followers.
    pub nodes: Vec<ClusterNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's name (`us-east-1`).
    pub name: String,
    /// The role the node started with; `GET /v1/status` tells the current one.
    pub role: Role,
    /// The node's HTTP API (`http://127.0.0.1:8301`).
    pub http: String,
}

impl ClusterJson {
    /// The node named `name`, and its region.
    pub fn node(&self, name: &str) -> Option<(&str, &ClusterNode)> {
        self.regions
            .iter()
            .find_map(|(r, region)| region.nodes.iter().find(|n| n.name == name).map(|n| (r.as_str(), n)))
    }
}

/// The role a node is started with (also the `role` of its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        // DESIGN.md, "Local deployment".
        let text = r#"{"regions": {"us-east": {"nats": "nats://127.0.0.1:4301",
          "nodes": [{"name": "us-east-1", "role": "leader",   "http": "http://127.0.0.1:8301"},
                    {"name": "us-east-2", "role": "follower", "http": "http://127.0.0.1:8302"}]}}}"#;
        let c: ClusterJson = serde_json::from_str(text).unwrap();
        let (region, node) = c.node("us-east-2").unwrap();
        assert_eq!((region, node.role, node.http.as_str()), ("us-east", Role::Follower, "http://127.0.0.1:8302"));
        assert!(c.node("us-east-3").is_none());
        let back: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }
}
