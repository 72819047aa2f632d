//! Node configuration: one typed struct. Defaults in code, then the `regions/*.toml`
//! file, then environment variables `CONCORD_<FIELD>` (upper-case field name), then
//! command-line flags (applied by the binary).

use std::path::{Path, PathBuf};

use concord_core::ids::RegionId;
use serde::{Deserialize, Serialize};

use crate::api::auth::Secret;

/// A NATS user and its password.
pub type NatsCredentials = (String, Secret);

/// The role a node starts with: the same type `cluster.json` records.
pub use concord_api::Role;

/// The most `appends_in_flight_max` may be: async-nats stalls past a few thousand
/// publishes awaiting their acknowledgements (DESIGN.md, "Known pitfalls"), and more in
/// flight than this buys nothing.
pub const APPENDS_IN_FLIGHT_LIMIT: usize = 64;
/// The most `cache_mib` may be.
pub const CACHE_MIB_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The region this node belongs to (`us-east`).
    pub region: String,
    /// This node's name, unique in the deployment (`us-east-1`).
    pub node: String,
    /// The role the node starts with.
    pub role: Role,
    /// The region's NATS: one URL, or several separated by commas (the servers of the
    /// region's JetStream cluster; the client moves to another when one dies).
    pub nats_url: String,
    /// Copies of the region's log, the mirrors and the key/value buckets this node
    /// creates: 1 on a single server, 3 on a region's three-server JetStream cluster.
    pub nats_replicas: usize,
    /// Where the HTTP API listens.
    pub http_listen: String,
    /// Where local state lives.
    pub data_dir: PathBuf,
    /// Most of the local database's pages kept in memory, in MiB (the rest are read
    /// through the operating system's page cache).
    pub cache_mib: usize,
    /// The largest value (or document request body) accepted, in bytes.
    pub value_bytes_max: usize,
    /// Most changes in one changeset (group commit).
    pub batch_changes_max: usize,
    /// Most payload bytes in one changeset; must stay below the NATS `max_payload`.
    pub batch_bytes_max: usize,
    /// Most changesets a leader has on their way to the region's log at once (pipelined
    /// group commit: the next is made and sent while the ones before it are stored;
    /// they are acknowledged in order). 1: one at a time.
    pub appends_in_flight_max: usize,
    /// While appends are in flight, the next changeset is made only once this many
    /// writes wait (or none is in flight): bigger changesets cost every replica less
    /// per write. 1: as soon as any write waits.
    pub pipeline_batch_min: usize,
    /// Most writes waiting for the writer; beyond it, writes are refused with 503.
    pub write_queue_max: usize,
    /// How long a write waits for its acknowledgement before answering 504.
    pub write_timeout_ms: u64,
    /// How long the node tries to reach NATS at start before giving up.
    pub nats_connect_timeout_ms: u64,
    /// Every region of the deployment (this one included). Changesets of the others
    /// arrive through local mirrors of their logs. Empty: this region alone.
    pub regions: Vec<String>,
    /// How long a `remote` or `all` write waits for other regions to store it before
    /// answering 504 (the write stays durable here and still replicates).
    pub durability_timeout_ms: u64,
    /// The HTTP address other nodes and clients use for this node (default: derived
    /// from `http_listen`). Followers redirect writers to the leader's.
    pub http_advertise: String,
    /// Retention of the region's log and of this region's mirrors of the others' logs:
    /// at most this many changesets (0: no limit)...
    pub log_max_msgs: i64,
    /// ...at most this many bytes (0: no limit)...
    pub log_max_bytes: i64,
    /// ...and none older than this many seconds (0: no limit). The oldest leave first. A
    /// new follower that falls behind the oldest kept changeset starts from its leader's
    /// snapshot; any other replica repairs what it missed by anti-entropy.
    pub log_max_age_s: u64,
    /// How long a read carrying a session token waits for this replica to apply what
    /// the token names before answering 503 `session_lag` (`?wait_ms=` overrides).
    pub session_wait_ms: u64,
    /// Buckets whose concurrent writes wait for a person: reads answer 300 with every
    /// sibling until the conflict is resolved. Other buckets resolve by LWW (and log).
    pub manual_buckets: Vec<String>,
    /// The conflict log keeps at most this many records (oldest leave first)...
    pub conflicts_max: u64,
    /// ...and none detected longer ago than this many seconds.
    pub conflicts_max_age_s: u64,
    /// Most HTTP requests served at once; one more is refused at once with 503
    /// `overloaded` (`/v1/status` and `/metrics` have a small budget of their own).
    pub http_concurrency_max: usize,
    /// Most NATS requests served at once; one more is refused at once with 503
    /// `overloaded` (the `status` operation has a small budget of its own).
    pub nats_concurrency_max: usize,
    /// A request still running after this answers 504 `timeout`. The waits inside a
    /// request end before it, whatever they ask for: the acknowledgement wait
    /// (`write_timeout_ms`), then the durability wait (`timeout_ms`,
    /// `durability_timeout_ms`), or a read's session wait (`wait_ms`, `session_wait_ms`)
    /// are cut to what is left of it (less a margin to answer), so they answer with
    /// their own code. The default sits above the longest session wait (60 s) and above
    /// `write_timeout_ms` + `durability_timeout_ms` with their defaults.
    pub request_timeout_ms: u64,
    /// Most stream entries applied in one step...
    pub apply_batch_max: usize,
    /// ...and most bytes, which also bounds one read of a catch-up.
    pub apply_batch_bytes_max: usize,
    /// Most changesets kept waiting behind gaps in their origins' sequences (they are
    /// never applied past the gap); one more parks its stream, visibly, rather than grow
    /// without bound.
    pub waiting_changesets_max: usize,
    /// ...and most bytes they may hold.
    pub waiting_bytes_max: usize,
    /// The region's writer lease: a follower claims it once it has seen it unchanged
    /// this long (the leader is dead, frozen or cut off), so writes resume about this
    /// long after a leader's death. The holder stops writing after two thirds of it
    /// without a successful renewal, before anyone may claim it.
    pub lease_ttl_ms: u64,
    /// How often the holder renews the lease (at most half of `lease_ttl_ms`).
    pub lease_renew_ms: u64,
    /// A leader compares its state with every other region's leader this often, and
    /// repairs what differs (anti-entropy). 0: never (gaps are still repaired).
    pub anti_entropy_interval_s: u64,
    /// A gap in an origin's sequence that stands this long (its messages could not be
    /// read from any log) is repaired from the state of the origin region's leader, and
    /// lifted. 0: never.
    pub anti_entropy_gap_after_s: u64,
    /// A leader marks its region's log this often (what it has applied): every region's
    /// marks tell when a delete is stable, so its tombstone can go.
    pub mark_interval_s: u64,
    /// Every replica looks for stable tombstones to collect this often. 0: never.
    pub gc_interval_s: u64,
    /// The bucket whose documents local-first clients sync over `GET /v1/sync`
    /// (automerge-repo's protocol; a document's key is its automerge-repo id). Empty:
    /// no sync endpoint.
    pub sync_bucket: String,
    /// Most `GET /v1/sync` connections open at once on this node.
    pub sync_connections_max: usize,
    /// Most documents one sync connection may sync.
    pub sync_docs_per_connection_max: usize,
    /// Largest WebSocket message a sync client may send (bytes). A follower forwards a
    /// message's changes to its leader over NATS: keep it under the servers'
    /// `max_payload` (1 MiB unless configured).
    pub sync_message_bytes_max: usize,
    /// The NATS user this node connects as (its own: NATS lets it publish on its own log
    /// subject only), with its password (`nats_password`, CONCORD_NATS_PASSWORD, or the
    /// first line of `nats_password_file`). Empty: no credentials (a NATS without
    /// authentication).
    pub nats_user: String,
    pub nats_password: String,
    pub nats_password_file: String,
    /// A CA certificate (PEM) that the NATS servers' certificates are checked against:
    /// the connection to them is TLS. Empty: plain TCP.
    pub nats_ca_file: String,
    /// `required` (the default): the HTTP API takes requests only with a bearer token of
    /// the deployment, and the node refuses to start without one; `none`: the API is
    /// open to whoever reaches it (a bench on loopback, never across a network).
    pub api_auth: String,
    /// The token that may read and write (`Authorization: Bearer <token>`): the first
    /// line of `api_token_file`, or this (CONCORD_API_TOKEN). Never logged.
    pub api_token: String,
    pub api_token_file: String,
    /// A token that may only read (optional), likewise.
    pub api_read_token: String,
    pub api_read_token_file: String,
    /// Test only: a file holding a skew in milliseconds added to this node's wall clock
    /// (the time its writes carry), read again while the node runs. Empty: none.
    pub test_clock_skew_file: String,
    /// Test only: a deliberately broken rule (`drop-changeset`), accepted only by a
    /// binary built with the `mutations` feature, so fault tests can prove their
    /// checker catches such a bug. Empty: none.
    pub test_mutation: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            region: "us-east".into(),
            node: "us-east-1".into(),
            role: Role::Leader,
            nats_url: "nats://127.0.0.1:4301".into(),
            nats_replicas: 1,
            http_listen: "127.0.0.1:8301".into(),
            data_dir: PathBuf::from("data/us-east-1"),
            value_bytes_max: concord_core::input::VALUE_BYTES_MAX_DEFAULT,
            cache_mib: concord_storage::CACHE_BYTES_DEFAULT >> 20,
            batch_changes_max: 512,
            appends_in_flight_max: concord_engine::APPENDS_IN_FLIGHT_MAX_DEFAULT,
            pipeline_batch_min: 1,
            batch_bytes_max: 4 << 20,
            write_queue_max: 8192,
            write_timeout_ms: 30_000,
            nats_connect_timeout_ms: 30_000,
            regions: Vec::new(),
            durability_timeout_ms: 10_000,
            http_advertise: String::new(),
            log_max_msgs: 0,
            log_max_bytes: LOG_MAX_BYTES_DEFAULT,
            log_max_age_s: LOG_MAX_AGE_S_DEFAULT,
            session_wait_ms: 2_000,
            manual_buckets: Vec::new(),
            conflicts_max: concord_storage::CONFLICTS_MAX_DEFAULT,
            conflicts_max_age_s: concord_storage::CONFLICTS_MAX_AGE_DEFAULT.as_secs(),
            http_concurrency_max: 1024,
            nats_concurrency_max: 1024,
            request_timeout_ms: 120_000,
            apply_batch_max: 1000,
            apply_batch_bytes_max: 16 << 20,
            waiting_changesets_max: concord_engine::WAITING_MAX_DEFAULT,
            waiting_bytes_max: concord_engine::WAITING_BYTES_MAX_DEFAULT,
            lease_ttl_ms: 3_000,
            lease_renew_ms: 750,
            nats_user: String::new(),
            nats_password: String::new(),
            nats_password_file: String::new(),
            nats_ca_file: String::new(),
            api_auth: "required".into(),
            api_token: String::new(),
            api_token_file: String::new(),
            api_read_token: String::new(),
            api_read_token_file: String::new(),
            mark_interval_s: 10,
            gc_interval_s: 300,
            sync_bucket: "sync".into(),
            sync_connections_max: 1024,
            sync_docs_per_connection_max: 1000,
            sync_message_bytes_max: 1 << 20,
            anti_entropy_interval_s: 300,
            anti_entropy_gap_after_s: 20,
            test_clock_skew_file: String::new(),
            test_mutation: String::new(),
        }
    }
}

/// Retention by default: 1 GiB and 7 days of each log and mirror.
pub const LOG_MAX_BYTES_DEFAULT: i64 = 1 << 30;
pub const LOG_MAX_AGE_S_DEFAULT: u64 = 7 * 24 * 3600;

/// The most `http_concurrency_max` / `nats_concurrency_max` may be.
pub const CONCURRENCY_MAX: usize = 1 << 20;
/// The least `request_timeout_ms` may be.
pub const REQUEST_TIMEOUT_MS_MIN: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("environment variable {name}: {why}")]
    Env { name: String, why: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Load `path` (when given) over the defaults, then apply environment overrides.
    pub fn load(path: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p.into(), source })?
            }
            None => NodeConfig::default(),
        };
        cfg.apply_env(|name| std::env::var(name).ok())?;
        Ok(cfg)
    }

    /// Override fields from `CONCORD_<FIELD>` variables, read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut table = toml::Table::try_from(&*self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut changed = false;
        for (field, value) in table.iter_mut() {
            let name = format!("CONCORD_{}", field.to_ascii_uppercase());
            let Some(text) = get(&name) else { continue };
            *value = match value {
                toml::Value::Integer(_) => toml::Value::Integer(
                    text.parse()
                        .map_err(|_| ConfigError::Env { name: name.clone(), why: "expected an integer".into() })?,
                ),
                // Lists are comma-separated: CONCORD_REGIONS=us-east,eu-west,ap-south
                toml::Value::Array(_) => toml::Value::Array(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.into()))
                        .collect(),
                ),
                _ => toml::Value::String(text),
            };
            changed = true;
        }
        if changed {
            *self = table.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<RegionId, ConfigError> {
        let region = RegionId::new(&self.region).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.node.is_empty() {
            return Err(ConfigError::Invalid("node name is empty".into()));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > concord_core::changeset::BODY_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "value_bytes_max must be 1..={}",
                concord_core::changeset::BODY_BYTES_MAX
            )));
        }
        if self.conflicts_max == 0 || self.conflicts_max_age_s == 0 {
            return Err(ConfigError::Invalid("conflicts_max and conflicts_max_age_s must be positive".into()));
        }
        if self.cache_mib == 0 || self.cache_mib > CACHE_MIB_MAX {
            return Err(ConfigError::Invalid(format!("cache_mib must be 1..={CACHE_MIB_MAX}")));
        }
        if self.appends_in_flight_max == 0 || self.appends_in_flight_max > APPENDS_IN_FLIGHT_LIMIT {
            return Err(ConfigError::Invalid(format!("appends_in_flight_max must be 1..={APPENDS_IN_FLIGHT_LIMIT}")));
        }
        if self.pipeline_batch_min == 0 {
            return Err(ConfigError::Invalid("pipeline_batch_min must be positive".into()));
        }
        if self.batch_changes_max == 0 || self.write_queue_max == 0 {
            return Err(ConfigError::Invalid("batch_changes_max and write_queue_max must be positive".into()));
        }
        if self.apply_batch_max == 0 || self.apply_batch_bytes_max == 0 {
            return Err(ConfigError::Invalid("apply_batch_max and apply_batch_bytes_max must be positive".into()));
        }
        if !matches!(self.nats_replicas, 1 | 3 | 5) {
            return Err(ConfigError::Invalid("nats_replicas must be 1, 3 or 5".into()));
        }
        if self.lease_ttl_ms < 300 || self.lease_renew_ms == 0 || self.lease_renew_ms * 2 > self.lease_ttl_ms {
            return Err(ConfigError::Invalid(
                "lease_ttl_ms must be at least 300, and lease_renew_ms between 1 and half of it".into(),
            ));
        }
        if self.waiting_changesets_max == 0 || self.waiting_bytes_max == 0 {
            return Err(ConfigError::Invalid("waiting_changesets_max and waiting_bytes_max must be positive".into()));
        }
        if self.http_concurrency_max == 0 || self.nats_concurrency_max == 0 {
            return Err(ConfigError::Invalid("http_concurrency_max and nats_concurrency_max must be positive".into()));
        }
        if self.http_concurrency_max > CONCURRENCY_MAX || self.nats_concurrency_max > CONCURRENCY_MAX {
            return Err(ConfigError::Invalid(format!(
                "http_concurrency_max and nats_concurrency_max must be at most {CONCURRENCY_MAX}"
            )));
        }
        if !self.sync_bucket.is_empty() {
            concord_core::input::check_bucket(&self.sync_bucket)
                .map_err(|e| ConfigError::Invalid(format!("sync_bucket: {e}")))?;
        }
        if self.sync_connections_max == 0 || self.sync_docs_per_connection_max == 0 {
            return Err(ConfigError::Invalid(
                "sync_connections_max and sync_docs_per_connection_max must be positive".into(),
            ));
        }
        if !(1024..=concord_core::changeset::BODY_BYTES_MAX).contains(&self.sync_message_bytes_max) {
            return Err(ConfigError::Invalid(format!(
                "sync_message_bytes_max must be 1024 to {} (a changeset's largest body)",
                concord_core::changeset::BODY_BYTES_MAX
            )));
        }
        if self.mark_interval_s == 0 {
            return Err(ConfigError::Invalid("mark_interval_s must be positive".into()));
        }
        if self.log_max_msgs < 0 || self.log_max_bytes < 0 {
            return Err(ConfigError::Invalid("log_max_msgs and log_max_bytes must be 0 (no limit) or positive".into()));
        }
        if self.request_timeout_ms < REQUEST_TIMEOUT_MS_MIN {
            return Err(ConfigError::Invalid(format!("request_timeout_ms must be at least {REQUEST_TIMEOUT_MS_MIN}")));
        }
        for r in &self.regions {
            RegionId::new(r.as_str()).map_err(|e| ConfigError::Invalid(format!("regions: {e}")))?;
        }
        if !self.regions.is_empty() && !self.regions.contains(&self.region) {
            return Err(ConfigError::Invalid(format!(
                "regions {:?} does not include this node's region {}",
                self.regions, self.region
            )));
        }
        Ok(region)
    }

    /// The NATS user and password this node connects with, if any.
    pub fn nats_credentials(&self) -> Result<Option<NatsCredentials>, ConfigError> {
        use crate::api::auth::read_token_file;
        if self.nats_user.is_empty() {
            return Ok(None);
        }
        let password = match (self.nats_password.is_empty(), self.nats_password_file.is_empty()) {
            (false, true) => Secret::new(self.nats_password.clone()),
            (true, false) => read_token_file(Path::new(&self.nats_password_file)).map_err(ConfigError::Invalid)?,
            _ => {
                return Err(ConfigError::Invalid(
                    "nats_user needs exactly one of nats_password and nats_password_file".into(),
                ));
            }
        };
        Ok(Some((self.nats_user.clone(), password)))
    }

    /// The API's tokens, read from their files or fields (see `api_auth`).
    pub fn tokens(&self) -> Result<crate::api::auth::Tokens, ConfigError> {
        use crate::api::auth::{Tokens, read_token_file};
        let load = |value: &str, file: &str| -> Result<Option<Secret>, ConfigError> {
            match (value.is_empty(), file.is_empty()) {
                (true, true) => Ok(None),
                (false, true) => Ok(Some(Secret::new(value))),
                (true, false) => read_token_file(Path::new(file)).map(Some).map_err(ConfigError::Invalid),
                (false, false) => Err(ConfigError::Invalid("a token and its file are both set: set one".into())),
            }
        };
        let write = load(&self.api_token, &self.api_token_file)?;
        let read = load(&self.api_read_token, &self.api_read_token_file)?;
        match (self.api_auth.as_str(), write) {
            ("none", _) => Ok(Tokens::open()),
            ("required", Some(write)) => Tokens::new(write, read).map_err(ConfigError::Invalid),
            ("required", None) => Err(ConfigError::Invalid(
                "the HTTP API needs a token: set api_token_file (or CONCORD_API_TOKEN), or api_auth = \"none\" to leave it open".into(),
            )),
            (other, _) => Err(ConfigError::Invalid(format!("api_auth {other:?}: use \"required\" or \"none\""))),
        }
    }

    /// What the region's log and its mirrors keep.
    pub fn retention(&self) -> concord_transport::nats::Retention {
        concord_transport::nats::Retention {
            max_msgs: (self.log_max_msgs > 0).then_some(self.log_max_msgs),
            max_bytes: (self.log_max_bytes > 0).then_some(self.log_max_bytes),
            max_age: (self.log_max_age_s > 0).then(|| std::time::Duration::from_secs(self.log_max_age_s)),
        }
    }

    /// The region's NATS servers, and the credentials to connect with: `nats_user`'s, else
    /// those written into the URL (`nats://user:password@host:port`).
    pub fn nats_servers(&self) -> Result<(Vec<String>, Option<NatsCredentials>), ConfigError> {
        let servers = concord_transport::address::parse(&self.nats_url).map_err(ConfigError::Invalid)?;
        let from_url = servers.credentials.map(|(user, password)| (user, Secret::new(password)));
        Ok((servers.urls, self.nats_credentials()?.or(from_url)))
    }

    /// The URL other nodes use to reach this node's HTTP API.
    pub fn advertised_url(&self) -> String {
        if !self.http_advertise.is_empty() {
            return self.http_advertise.clone();
        }
        let listen = self.http_listen.replace("0.0.0.0", "127.0.0.1");
        format!("http://{listen}")
    }

    /// The other regions of the deployment.
    pub fn remote_regions(&self) -> Vec<RegionId> {
        self.regions.iter().filter(|r| **r != self.region).filter_map(|r| RegionId::new(r.as_str()).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The region files parse (no unknown field), validate, and hold the defaults of the
    /// fields they document, sync's included.
    #[test]
    fn the_region_files_load() {
        for region in ["us-east", "eu-west", "ap-south"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../regions/{region}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            let cfg: NodeConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(cfg.validate().unwrap().as_str(), region);
            let d = NodeConfig::default();
            assert_eq!(
                (&cfg.sync_bucket, cfg.sync_connections_max, cfg.sync_docs_per_connection_max),
                (&d.sync_bucket, d.sync_connections_max, d.sync_docs_per_connection_max)
            );
            assert_eq!(cfg.sync_message_bytes_max, d.sync_message_bytes_max);
        }
    }

    #[test]
    fn env_overrides_file_values() {
        let mut cfg = NodeConfig::default();
        cfg.apply_env(|n| match n {
            "CONCORD_REGION" => Some("eu-west".into()),
            "CONCORD_VALUE_BYTES_MAX" => Some("42".into()),
            "CONCORD_REGIONS" => Some("us-east, eu-west".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.region, "eu-west");
        assert_eq!(cfg.value_bytes_max, 42);
        assert_eq!(cfg.regions, ["us-east", "eu-west"]);
        assert!(cfg.apply_env(|n| (n == "CONCORD_VALUE_BYTES_MAX").then(|| "x".into())).is_err());
    }

    #[test]
    fn request_limits_are_checked() {
        let cfg = NodeConfig::default();
        assert!(cfg.validate().is_ok());
        // The default request timeout sits above the longest default waits.
        assert!(cfg.request_timeout_ms > crate::api::SESSION_WAIT_MS_MAX);
        assert!(cfg.request_timeout_ms > cfg.write_timeout_ms + cfg.durability_timeout_ms);
        let with = |f: fn(&mut NodeConfig)| {
            let mut c = NodeConfig::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(|c| c.http_concurrency_max = 0).is_err());
        assert!(with(|c| c.nats_concurrency_max = CONCURRENCY_MAX + 1).is_err());
        assert!(with(|c| c.request_timeout_ms = REQUEST_TIMEOUT_MS_MIN - 1).is_err());
        assert!(with(|c| c.request_timeout_ms = REQUEST_TIMEOUT_MS_MIN).is_ok());
        assert!(with(|c| c.sync_bucket = "no spaces".into()).is_err());
        assert!(with(|c| c.sync_bucket = String::new()).is_ok(), "no sync endpoint");
        assert!(with(|c| c.sync_connections_max = 0).is_err());
        assert!(with(|c| c.sync_docs_per_connection_max = 0).is_err());
        assert!(with(|c| c.sync_message_bytes_max = 100).is_err());
        assert!(with(|c| c.sync_message_bytes_max = concord_core::changeset::BODY_BYTES_MAX + 1).is_err());
        assert!(with(|c| c.log_max_bytes = -1).is_err());
    }

    #[test]
    fn logs_are_bounded_by_default() {
        let r = NodeConfig::default().retention();
        assert_eq!(r.max_msgs, None);
        assert_eq!(r.max_bytes, Some(1 << 30));
        assert_eq!(r.max_age, Some(std::time::Duration::from_secs(7 * 24 * 3600)));
    }
}
