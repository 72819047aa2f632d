//! The region's log on NATS JetStream.
//!
//! Stream `CONCORD_LOG_<REGION>` (region upper-cased, `-` as `_`) with the one subject
//! `concord.log.<region>`, file storage, a 2-minute duplicate window. Leader epochs are
//! allocated by compare-and-set in the key/value bucket `concord_epochs`.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::backoff::Backoff;
use crate::{Chunk, LogEntry, LogError, LogResult, RegionLog};

/// How long one append waits for the stream's acknowledgement.
pub const APPEND_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reading one message of a catch-up may take before the read is retried.
const READ_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const EPOCH_BUCKET: &str = "concord_epochs";
/// The lease history: which node each epoch belongs to. Write-once (see
/// [`NatsLog::owners_bucket`]).
const OWNERS_BUCKET: &str = "concord_owners";
const LEADERS_BUCKET: &str = "concord_leaders";

pub fn stream_name(region: &str) -> String {
    format!("CONCORD_LOG_{}", region.to_ascii_uppercase().replace('-', "_"))
}

/// The subject a region's log was written on before publishers had identities (still
/// in the stream's subjects, for what was written then).
pub fn subject(region: &str) -> String {
    format!("concord.log.{region}")
}

/// The subject node `node` writes `region`'s log on: NATS lets each node publish on its
/// own only, so the subject of a stored changeset names who wrote it.
pub fn node_subject(region: &str, node: &str) -> String {
    format!("concord.log.{region}.{node}")
}

/// The node that published a message of `region`'s log, from its subject: `Some(None)`
/// for the subject of before identities, `None` for a subject that is no log's.
pub fn publisher(region: &str, subject: &str) -> Option<Option<String>> {
    let rest = subject.strip_prefix("concord.log.")?.strip_prefix(region)?;
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some(None),
        Some(node) if !node.is_empty() && !node.contains('.') => Some(Some(node.to_string())),
        _ => None,
    }
}

/// The subjects of `region`'s log: one per writing node, and the one of before.
fn log_subjects(region: &str) -> Vec<String> {
    vec![subject(region), format!("concord.log.{region}.*")]
}

fn epoch_owner_key(region: &str, epoch: u64) -> String {
    format!("owner.{region}.{epoch}")
}

/// A message read from a stream: what it holds and the subject it was published on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub subject: String,
    pub payload: Bytes,
}

/// The local copy of a remote region's log: a mirror keeps the origin's sequences,
/// so "region R stored our message N" is "R's mirror of us has last sequence >= N".
pub fn mirror_name(remote_region: &str) -> String {
    format!("CONCORD_MIRROR_{}", remote_region.to_ascii_uppercase().replace('-', "_"))
}

/// The durable consumer on a log that feeds `destination`'s mirror of it.
pub fn mirror_consumer_name(destination: &str) -> String {
    format!("mirror-{destination}")
}

/// Where that consumer delivers: unique per (origin, destination).
pub fn mirror_deliver_subject(origin: &str, destination: &str) -> String {
    format!("concord.mirror.{origin}.{destination}")
}

/// How far a stream is, and for a mirror how far its upstream is ahead of it.
#[derive(Debug, Clone, Default)]
pub struct StreamPosition {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Messages the upstream holds that the mirror does not (0 for a log).
    pub upstream_lag: u64,
    /// Time since the mirror last heard from its upstream.
    pub upstream_active: Option<Duration>,
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

pub struct NatsLog {
    pub(crate) js: jetstream::Context,
    stream: String,
    subject: String,
    /// This node's name (its epochs are recorded as its own).
    node: String,
    /// Copies of every stream and bucket this node creates (1, or 3 on a region's
    /// three-server JetStream cluster).
    replicas: usize,
}

/// How much of a log (and of each mirror of it) JetStream keeps: the oldest messages
/// leave first once any limit is passed. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_msgs: Option<i64>,
    pub max_bytes: Option<i64>,
    pub max_age: Option<Duration>,
}

impl Retention {
    fn apply(&self, config: &mut stream::Config) {
        config.max_messages = self.max_msgs.filter(|n| *n > 0).unwrap_or(-1);
        config.max_bytes = self.max_bytes.filter(|n| *n > 0).unwrap_or(-1);
        config.max_age = self.max_age.unwrap_or(Duration::ZERO);
    }

    fn holds(&self, config: &stream::Config) -> bool {
        let mut wanted = config.clone();
        self.apply(&mut wanted);
        (wanted.max_messages, wanted.max_bytes, wanted.max_age)
            == (config.max_messages, config.max_bytes, config.max_age)
    }
}

impl NatsLog {
    /// The NATS connection this log uses (for requests to other nodes).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// Create (or open) the region's stream, keeping what `retention` allows, in
    /// `replicas` copies. An existing stream takes the retention it is given. Replicas
    /// that fall behind the oldest kept message repair from a peer (a new follower, from
    /// its leader's snapshot; any other replica, by anti-entropy).
    pub async fn open(
        client: async_nats::Client,
        region: &str,
        node: &str,
        retention: Retention,
        replicas: usize,
    ) -> LogResult<NatsLog> {
        let js = jetstream::new(client);
        let name = stream_name(region);
        let mut config = stream::Config {
            name: name.clone(),
            subjects: log_subjects(region),
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        };
        retention.apply(&mut config);
        let stream = js.get_or_create_stream(config).await.map_err(unavailable)?;
        let log = NatsLog { js, stream: name, subject: node_subject(region, node), node: node.to_string(), replicas };
        log.keep_retention(stream, retention, Some(log_subjects(region))).await?;
        Ok(log)
    }

    /// Give an existing stream the retention it should have (a deployment that changed
    /// its limits, or one made before they were on by default).
    async fn keep_retention(
        &self,
        mut stream: stream::Stream,
        retention: Retention,
        subjects: Option<Vec<String>>,
    ) -> LogResult<()> {
        let config = stream.info().await.map_err(unavailable)?.config.clone();
        if retention.holds(&config) && subjects.as_ref().is_none_or(|s| *s == config.subjects) {
            return Ok(());
        }
        let mut updated = config;
        retention.apply(&mut updated);
        if let Some(s) = subjects {
            updated.subjects = s;
        }
        warn!(stream = updated.name, ?retention, "changing the stream's retention or subjects");
        self.js.update_stream(updated).await.map_err(unavailable)?;
        Ok(())
    }

    /// Record this node as its region's leader (`concord_leaders`, key = region, the
    /// record as JSON), so followers can send writers to it and fetch snapshots from it.
    /// The record's type is the caller's (the API's `LeaderRecord`): this layer only
    /// carries it.
    pub async fn advertise_leader<R: Serialize>(&self, region: &str, record: &R) -> LogResult<()> {
        let kv = self.leaders_bucket().await?;
        let json = serde_json::to_vec(record).expect("a leader record serializes");
        kv.put(region, json.into()).await.map_err(unavailable)?;
        Ok(())
    }

    /// The leader record of `region`, if one was advertised and decodes as `R` (one
    /// that does not is logged and counts as none).
    pub async fn leader_of<R: DeserializeOwned>(&self, region: &str) -> LogResult<Option<R>> {
        let kv = self.leaders_bucket().await?;
        let Some(entry) = kv.get(region).await.map_err(unavailable)? else { return Ok(None) };
        match serde_json::from_slice(&entry) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                warn!(region, error = %e, "the leader record does not decode; treated as none");
                Ok(None)
            }
        }
    }

    async fn leaders_bucket(&self) -> LogResult<jetstream::kv::Store> {
        self.bucket(LEADERS_BUCKET).await
    }

    /// A key/value bucket (file storage, one revision kept), created on first use.
    pub(crate) async fn bucket(&self, name: &str) -> LogResult<jetstream::kv::Store> {
        match self.js.get_key_value(name).await {
            Ok(kv) => Ok(kv),
            Err(_) => self
                .js
                .create_key_value(jetstream::kv::Config {
                    bucket: name.into(),
                    history: 1,
                    num_replicas: self.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(unavailable),
        }
    }

    /// The lease history's bucket, made write-once: the server refuses a second message
    /// on a key (one per subject, new ones discarded), and deleting or purging, so an
    /// owner record, once written, is never replaced, not even by a node that may
    /// write the bucket. Read through the stream's leader (no direct gets, which any
    /// copy answers): a record is acknowledged before its epoch writes anything, so a
    /// reader never misses one a lagging copy has not stored yet.
    async fn owners_bucket(&self) -> LogResult<jetstream::kv::Store> {
        if let Ok(kv) = self.js.get_key_value(OWNERS_BUCKET).await {
            return Ok(kv);
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{OWNERS_BUCKET}"),
                subjects: vec![format!("$KV.{OWNERS_BUCKET}.>")],
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                deny_delete: true,
                deny_purge: true,
                allow_rollup: false,
                allow_direct: false,
                num_replicas: self.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        self.js.get_key_value(OWNERS_BUCKET).await.map_err(unavailable)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// On this region's log, the durable consumer that feeds `destination`'s mirror of
    /// it (durable sourcing, NATS 2.14+, ADR-58): an ordered push consumer that acks by
    /// flow control. Unlike the ephemeral consumer of plain mirroring, which retries
    /// with a backoff of 30 s and more after a partition, it resumes within seconds.
    pub async fn ensure_mirror_consumer(&self, own_region: &str, destination: &str) -> LogResult<()> {
        let stream = self.js.get_stream(&self.stream).await.map_err(unavailable)?;
        let name = mirror_consumer_name(destination);
        stream
            .get_or_create_consumer(
                &name,
                jetstream::consumer::push::Config {
                    durable_name: Some(name.clone()),
                    deliver_subject: mirror_deliver_subject(own_region, destination),
                    ack_policy: jetstream::consumer::AckPolicy::FlowControl,
                    flow_control: true,
                    idle_heartbeat: Duration::from_secs(1),
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Create (or open) the local mirror of `remote_region`'s log, fed by NATS through
    /// the remote domain's JetStream API (`$JS.<remote>.API`) and the durable consumer
    /// `remote_region` keeps for this region, so a partition only delays it and NATS
    /// resumes it after heal.
    pub async fn ensure_mirror(
        &self,
        own_region: &str,
        remote_region: &str,
        retention: Retention,
    ) -> LogResult<String> {
        let name = mirror_name(remote_region);
        let mut config = stream::Config {
            name: name.clone(),
            storage: stream::StorageType::File,
            allow_direct: true,
            num_replicas: self.replicas,
            mirror: Some(stream::Source {
                name: stream_name(remote_region),
                external: Some(stream::External {
                    api_prefix: format!("$JS.{remote_region}.API"),
                    delivery_prefix: None,
                }),
                consumer: Some(stream::StreamConsumerSource::new(
                    mirror_consumer_name(own_region),
                    mirror_deliver_subject(remote_region, own_region),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        retention.apply(&mut config);
        let stream = self.js.get_or_create_stream(config).await.map_err(unavailable)?;
        self.keep_retention(stream, retention, None).await?;
        Ok(name)
    }

    /// Position of a local stream (the log or a mirror).
    pub async fn position(&self, stream_name: &str) -> LogResult<StreamPosition> {
        let mut stream = self.js.get_stream(stream_name).await.map_err(unavailable)?;
        let info = stream.info().await.map_err(unavailable)?;
        Ok(StreamPosition {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            upstream_lag: info.mirror.as_ref().map_or(0, |m| m.lag),
            upstream_active: info.mirror.as_ref().and_then(|m| m.active),
        })
    }

    /// The last sequence of `stream_name` in another region's domain: how much of our
    /// log that region has stored (when `stream_name` is its mirror of us).
    pub async fn remote_last_seq(&self, domain: &str, stream_name: &str) -> LogResult<u64> {
        let js = jetstream::with_domain(self.js.client(), domain);
        let mut stream = js.get_stream(stream_name).await.map_err(unavailable)?;
        Ok(stream.info().await.map_err(unavailable)?.state.last_sequence)
    }

    /// When the message `seq` of a local stream was stored (for lag in milliseconds).
    pub async fn stored_at(&self, stream_name: &str, seq: u64) -> LogResult<Option<chrono::DateTime<chrono::Utc>>> {
        let stream = self.js.get_stream_no_info(stream_name).await.map_err(unavailable)?;
        match stream.direct_get(seq).await {
            Ok(msg) => Ok(Some(msg.time)),
            Err(_) => Ok(None),
        }
    }

    /// The message `seq` of `stream_name`, in this region's JetStream (`domain` None) or
    /// in another region's domain: `None` when the stream does not hold it (never
    /// stored, deleted, or removed by retention).
    pub async fn message(&self, domain: Option<&str>, stream_name: &str, seq: u64) -> LogResult<Option<RawMessage>> {
        let js = match domain {
            Some(domain) => jetstream::with_domain(self.js.client(), domain),
            None => self.js.clone(),
        };
        let stream = js.get_stream_no_info(stream_name).await.map_err(unavailable)?;
        match stream.direct_get(seq).await {
            Ok(msg) => Ok(Some(RawMessage { subject: msg.subject.to_string(), payload: msg.payload })),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The node that epoch `epoch` of `region` was allocated to (the lease history in that
    /// region's write-once `concord_owners` bucket, read in its domain when it is not this one's):
    /// `None` when the history holds no such epoch.
    pub async fn epoch_owner(&self, own_region: &str, region: &str, epoch: u64) -> LogResult<Option<String>> {
        let js = if region == own_region { self.js.clone() } else { jetstream::with_domain(self.js.client(), region) };
        let kv = js.get_key_value(OWNERS_BUCKET).await.map_err(unavailable)?;
        let value = kv.get(epoch_owner_key(region, epoch)).await.map_err(unavailable)?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Allocate the next leader epoch of `region` (compare-and-set, so two starting
    /// leaders never share an epoch).
    async fn allocate_epoch(&self, region: &str) -> LogResult<u64> {
        let kv = self.bucket(EPOCH_BUCKET).await?;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        for _attempt in 0..20 {
            let entry = kv.entry(region).await.map_err(unavailable)?;
            let outcome = match entry {
                None => kv.create(region, Bytes::from_static(b"1")).await.map(|_| 1).map_err(|e| e.to_string()),
                Some(e) => {
                    let current: u64 = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| LogError::Unavailable(format!("epoch record of {region} is not a number")))?;
                    let next = current + 1;
                    kv.update(region, next.to_string().into(), e.revision)
                        .await
                        .map(|_| next)
                        .map_err(|e| e.to_string())
                }
            };
            match outcome {
                Ok(epoch) => return Ok(epoch),
                Err(e) => warn!(region, error = %e, "epoch compare-and-set lost a race; retrying"),
            }
            backoff.wait().await;
        }
        Err(LogError::Unavailable(format!("could not allocate an epoch for {region}")))
    }
}

impl RegionLog for NatsLog {
    async fn last_seq(&self) -> LogResult<u64> {
        let mut stream = self.js.get_stream(&self.stream).await.map_err(unavailable)?;
        Ok(stream.info().await.map_err(unavailable)?.state.last_sequence)
    }

    type Sent = std::pin::Pin<Box<dyn std::future::Future<Output = LogResult<u64>> + Send>>;

    async fn send_append(&self, payload: Bytes, msg_id: String, expected_last: u64) -> LogResult<Self::Sent> {
        let publish = PublishMessage::build().payload(payload).message_id(msg_id).expected_last_sequence(expected_last);
        let ack = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(ack) => ack,
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(LogError::TooLarge(e.to_string()));
            }
            Err(e) => return Err(LogError::Indeterminate(e.to_string())),
        };
        Ok(Box::pin(async move {
            match tokio::time::timeout(APPEND_ACK_TIMEOUT, ack.into_future()).await {
                Err(_) => Err(LogError::Indeterminate("no acknowledgement within 5 s".into())),
                Ok(Ok(ack)) => Ok(ack.sequence),
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    Err(LogError::Fenced { expected: expected_last })
                }
                Ok(Err(e)) => Err(LogError::Indeterminate(e.to_string())),
            }
        }))
    }

    async fn read(&self, from: u64, to: u64, bytes_max: usize) -> LogResult<Chunk> {
        let mut chunk = Chunk { entries: Vec::new(), through: to };
        if from > to {
            return Ok(chunk);
        }
        let stream = self.js.get_stream(&self.stream).await.map_err(unavailable)?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let mut bytes = 0;
        loop {
            let next = tokio::time::timeout(READ_MESSAGE_TIMEOUT, messages.next()).await;
            let msg = match next {
                Err(_) => {
                    return Err(LogError::Unavailable(format!(
                        "reading the log stalled after sequence {}",
                        chunk.entries.last().map_or(from, |e: &LogEntry| e.seq)
                    )));
                }
                Ok(None) => return Err(LogError::Unavailable("log read ended early".into())),
                Ok(Some(msg)) => msg.map_err(unavailable)?,
            };
            let seq = msg.info().map_err(unavailable)?.stream_sequence;
            if seq > to {
                break;
            }
            bytes += msg.payload.len();
            chunk.entries.push(LogEntry {
                seq,
                payload: msg.payload.clone(),
                subject: msg.subject.to_string(),
                forged: None,
            });
            if seq == to {
                break;
            }
            if bytes >= bytes_max {
                chunk.through = seq;
                break;
            }
        }
        Ok(chunk)
    }

    async fn next_epoch(&self, region: &str) -> LogResult<u64> {
        let epoch = self.allocate_epoch(region).await?;
        // The lease history: who writes as this epoch. Recorded before anything of the
        // epoch is written, so a replica that reads a changeset of it finds the record.
        let kv = self.owners_bucket().await?;
        kv.create(epoch_owner_key(region, epoch), Bytes::from(self.node.clone())).await.map_err(unavailable)?;
        Ok(epoch)
    }
}
