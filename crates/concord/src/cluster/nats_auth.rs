//! Who may do what on a local deployment's NATS: every connection authenticates, and
//! each user may publish only what its part needs.
//!
//! - **Nodes** (`us-east-1`, ...; one user each, its own password): publish on their own
//!   log subject only (`concord.log.<region>.<node>`, so a stored changeset's subject
//!   names its writer), on their region's API, reports and buckets; no deleting or
//!   purging of streams or messages. Users are made for nodes 1 to 9 of every region, so
//!   a node can join later.
//! - **client**: the API subjects (`concord.api.>`, service discovery), replies, the
//!   conflict feed. Nothing else.
//! - **admin**: everything (operators, and the tests that damage a log on purpose).
//! - **leaf-<region>**: a region's servers on the backbone (leaf connections). What a
//!   region may send to the others is its own log's deliveries, JetStream API requests
//!   and replies: never a log subject, never another region's deliveries (`concord.mirror.<region>.*`
//!   is the region's alone), so a region cannot write into another region's log or
//!   mirror. What it receives is what is addressed to it.
//! - **route**: the backbone servers among themselves.
//!
//! Anonymous connections are refused everywhere. Passwords are random, written to
//! `DIR/secrets/nats/<user>` (readable by this user only); a node is given its file.

use std::collections::BTreeMap;
use std::path::Path;

/// The most nodes of a region that have a user (the port layout has room for 1 + 8).
pub const NODES_PER_REGION_MAX: u16 = 9;

/// Every user of the deployment and its password.
pub struct NatsAuth {
    pub passwords: BTreeMap<String, String>,
}

fn node_name(region: &str, j: u16) -> String {
    format!("{region}-{j}")
}

impl NatsAuth {
    pub fn generate(regions: &[String]) -> NatsAuth {
        let mut users: Vec<String> = vec!["client".into(), "admin".into(), "route".into()];
        for region in regions {
            users.extend((1..=NODES_PER_REGION_MAX).map(|j| node_name(region, j)));
            users.push(format!("leaf-{region}"));
        }
        NatsAuth { passwords: users.into_iter().map(|u| (u, crate::http::new_token())).collect() }
    }

    /// Where a user's password is kept.
    pub fn password_file(dir: &Path, user: &str) -> std::path::PathBuf {
        dir.join("secrets/nats").join(user)
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir.join("secrets/nats"))?;
        for (user, password) in &self.passwords {
            super::up::write_secret(&Self::password_file(dir, user), password)?;
        }
        Ok(())
    }

    fn password(&self, user: &str) -> &str {
        &self.passwords[user]
    }

    /// The `authorization` block of region `region`'s servers: its nodes, client, admin.
    pub fn region_authorization(&self, region: &str) -> String {
        let mut users = Vec::new();
        for j in 1..=NODES_PER_REGION_MAX {
            let node = node_name(region, j);
            users.push(user(&node, self.password(&node), &node_permissions(region, &node)));
        }
        users.push(user("client", self.password("client"), CLIENT_PERMISSIONS));
        users.push(format!("    {{ user: \"admin\", password: \"{}\" }}", self.password("admin")));
        format!("authorization {{\n  users: [\n{}\n  ]\n}}\n", users.join(",\n"))
    }

    /// A region's leaf connection URL to a backbone leaf port (`host:port`), with its
    /// credentials.
    pub fn leaf_url(&self, region: &str, addr: &str) -> String {
        format!("nats-leaf://leaf-{region}:{}@{addr}", self.password(&format!("leaf-{region}")))
    }

    /// A route URL to `addr` (`host:port`), with the route credentials.
    pub fn route_url(&self, addr: &str) -> String {
        format!("nats-route://route:{}@{addr}", self.password("route"))
    }

    /// The backbone's blocks: who may connect (admin as a client; each region's servers
    /// as leaves, whose permissions are those of the user they connect as: NATS takes a
    /// leaf connection's user from these, and allows permissions only here), and the
    /// route credentials.
    pub fn backbone_blocks(&self, regions: &[String]) -> (String, String) {
        let mut users = vec![format!("    {{ user: \"admin\", password: \"{}\" }}", self.password("admin"))];
        users.extend(regions.iter().map(|r| {
            let name = format!("leaf-{r}");
            user(&name, self.password(&name), &leaf_permissions(r))
        }));
        let clients = format!("authorization {{\n  users: [\n{}\n  ]\n}}\n", users.join(",\n"));
        (clients, self.route_authorization())
    }

    /// The `authorization` line of a `cluster` block: the route user.
    pub fn route_authorization(&self) -> String {
        format!("  authorization {{ user: \"route\", password: \"{}\" }}\n", self.password("route"))
    }
}

fn user(name: &str, password: &str, permissions: &str) -> String {
    format!("    {{ user: \"{name}\", password: \"{password}\", permissions: {permissions} }}")
}

fn list(subjects: &[String]) -> String {
    let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// What removes what a log or mirror holds: no node may.
fn destructive() -> Vec<String> {
    ["STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE"]
        .iter()
        .flat_map(|op| [format!("$JS.API.{op}.>"), format!("$JS.*.API.{op}.>")])
        .collect()
}

fn node_permissions(region: &str, node: &str) -> String {
    let allow: Vec<String> = [
        format!("concord.log.{region}.{node}"),
        "$JS.API.>".into(),
        "$JS.*.API.>".into(),
        "$KV.concord_leases.>".into(),
        "$KV.concord_leaders.>".into(),
        "$KV.concord_epochs.>".into(),
        format!("$KV.concord_owners.owner.{region}.*"),
        "$JS.ACK.>".into(),
        "$JS.FC.>".into(),
        "_INBOX.>".into(),
        format!("concord.applied.{region}.{node}"),
        format!("concord.conflicts.{region}"),
        "concord.api.>".into(),
        "concord.ae.>".into(),
        "concord.nodes.status".into(),
        "$SRV.>".into(),
    ]
    .into_iter()
    .collect();
    format!(
        "{{ publish: {{ allow: {}, deny: {} }}, subscribe: {{ allow: [\">\"] }} }}",
        list(&allow),
        list(&destructive())
    )
}

const CLIENT_PERMISSIONS: &str = "{ publish: { allow: [\"concord.api.>\", \"$SRV.>\", \"_INBOX.>\"] }, \
     subscribe: { allow: [\"_INBOX.>\", \"concord.conflicts.>\"] } }";

/// What region `region`'s servers may exchange with the backbone. NATS checks a leaf
/// connection's permissions in both directions and propagates interest only where the
/// user may subscribe (so one list serves both): the region's own mirror deliveries
/// out and those addressed to it in, JetStream API requests without the ones that
/// create, change or remove streams, messages or key/value entries, acks and flow
/// control, replies (`_INBOX`, and `$JSC.R` for a mirror's requests), the API, anti-entropy, status and conflict subjects. Never a log
/// subject: a region's servers cannot write into another region's log.
fn leaf_permissions(region: &str) -> String {
    let allow: Vec<String> = [
        format!("concord.mirror.{region}.*"),
        format!("concord.mirror.*.{region}"),
        "$JS.*.API.>".into(),
        "$JSC.R.>".into(),
        "$JS.FC.>".into(),
        "$JS.ACK.>".into(),
        "_INBOX.>".into(),
        "concord.api.>".into(),
        "concord.ae.>".into(),
        "concord.nodes.status".into(),
        "$SRV.>".into(),
        "concord.conflicts.>".into(),
    ]
    .into_iter()
    .collect();
    let deny: Vec<String> =
        ["STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "STREAM.UPDATE", "STREAM.CREATE", "$KV"]
            .iter()
            .map(|op| format!("$JS.*.API.{op}.>"))
            .collect();
    let rule = format!("{{ allow: {}, deny: {} }}", list(&allow), list(&deny));
    format!("{{ publish: {rule}, subscribe: {rule} }}")
}
