//! Following a stream for a replica: an ordered consumer per stream, recreated after
//! errors and stalls, feeding the worker in stream order.
//!
//! A mirror of another region's log is followed from the mirror, except while the
//! mirror lags far behind the origin's log (a region healing from a long cut, its
//! mirror refilling one message at a time, each written to disk): then the origin's log
//! itself is read, through the origin's JetStream domain, from where the replica is, and
//! the entries go to the worker as the mirror's (a mirror keeps the origin's sequences,
//! so they are the same entries). Once the mirror has nearly caught up, or the origin
//! cannot be reached, the replica follows its mirror again. The mirror goes on filling
//! meanwhile (it is what `remote` and `all` durability count, and what the replica
//! reads when the origin is cut off again).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use tracing::{info, warn};

use crate::LogEntry;
use crate::backoff::Backoff;
use crate::nats::{self, NatsLog};

/// How long `follow` waits for a message before checking whether its consumer stalled.
const FOLLOW_STALL_CHECK: Duration = Duration::from_secs(2);
/// How often a mirror's lag behind its origin is checked while following.
const LAG_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one question about the origin may take (it may be cut off).
const ORIGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How many messages the mirror must lag behind the origin (past where the replica is)
/// before the origin's log is read instead.
pub const ORIGIN_READ_LAG_MIN: u64 = 1000;

/// Where a follower reads from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local,
    /// The origin's log, in its domain.
    Origin,
}

/// Why reading from a source ended.
enum Ended {
    /// The worker's channel closed: shutdown.
    Closed,
    /// Read from the other source now.
    Switch,
    /// The consumer failed or stalled: start again (after a backoff).
    Failed,
}

impl NatsLog {
    /// Follow the local stream `stream_name` from `from` on, for ever; when it is the
    /// mirror of `origin`'s log, read the origin's log instead while the mirror lags
    /// (see the module doc). Entries go to `tx` in order, as entries of `stream_name`;
    /// the task ends when `tx` closes.
    pub async fn follow(
        &self,
        stream_name: String,
        from: u64,
        origin: Option<String>,
        tx: tokio::sync::mpsc::Sender<(String, LogEntry)>,
    ) {
        let mut next = from.max(1);
        let mut backoff = Backoff::network();
        loop {
            let source = match &origin {
                Some(region) if self.mirror_lags(&stream_name, region, next).await => Source::Origin,
                _ => Source::Local,
            };
            if source == Source::Origin {
                info!(stream = %stream_name, origin = ?origin, next, "the mirror lags its origin: reading the origin's log");
            }
            match self.follow_from(&stream_name, source, origin.as_deref(), &mut next, &tx).await {
                Ended::Closed => return,
                Ended::Switch => backoff.reset(),
                Ended::Failed => {
                    if tx.is_closed() {
                        return;
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    /// Whether the mirror `mirror` of `region`'s log lags the origin by more than
    /// [`ORIGIN_READ_LAG_MIN`] messages past `next`, and the origin still holds `next`.
    /// False when either cannot be asked.
    async fn mirror_lags(&self, mirror: &str, region: &str, next: u64) -> bool {
        let origin = async {
            let js = jetstream::with_domain(self.js.client(), region);
            let mut stream = js.get_stream(nats::stream_name(region)).await.ok()?;
            Some(stream.info().await.ok()?.state.clone())
        };
        let Ok(Some(origin)) = tokio::time::timeout(ORIGIN_TIMEOUT, origin).await else { return false };
        let Ok(Ok(local)) = tokio::time::timeout(ORIGIN_TIMEOUT, self.position(mirror)).await else { return false };
        let have = local.last_seq.max(next.saturating_sub(1));
        origin.first_sequence <= next && origin.last_sequence > have + ORIGIN_READ_LAG_MIN
    }

    /// Read `source` from `next` on until told to switch, a failure, or shutdown.
    async fn follow_from(
        &self,
        stream_name: &str,
        source: Source,
        origin: Option<&str>,
        next: &mut u64,
        tx: &tokio::sync::mpsc::Sender<(String, LogEntry)>,
    ) -> Ended {
        let (js, read) = match (source, origin) {
            (Source::Origin, Some(region)) => {
                (jetstream::with_domain(self.js.client(), region), nats::stream_name(region))
            }
            _ => (self.js.clone(), stream_name.to_string()),
        };
        let consumer = async {
            let stream = js.get_stream_no_info(&read).await.map_err(|e| e.to_string())?;
            stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: *next },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let mut messages = match consumer.await {
            Ok(m) => m,
            Err(e) => {
                if !tx.is_closed() {
                    warn!(stream = %read, error = %e, "cannot follow the stream yet; retrying");
                }
                return if source == Source::Origin { Ended::Switch } else { Ended::Failed };
            }
        };
        let mut checked = Instant::now();
        loop {
            if let Some(region) = origin.filter(|_| checked.elapsed() >= LAG_CHECK_EVERY) {
                checked = Instant::now();
                let lags = self.mirror_lags(stream_name, region, *next).await;
                let caught_up = source == Source::Origin && !self.mirror_far_behind(stream_name, *next).await;
                if (source == Source::Local && lags) || caught_up {
                    return Ended::Switch;
                }
            }
            // A consumer can stall silently (its server restarted, its pull request
            // lost); the client notices only after missed heartbeats (tens of
            // seconds). So when nothing arrives for a while but the stream holds more
            // than was delivered, recreate the consumer at once.
            let msg = match tokio::time::timeout(FOLLOW_STALL_CHECK, messages.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    warn!(stream = %read, next, "the stream's consumer ended; recreating it");
                    return Ended::Failed;
                }
                Err(_) => {
                    let behind = match js.get_stream(&read).await {
                        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence >= *next).unwrap_or(true),
                        Err(_) => true,
                    };
                    if behind {
                        warn!(stream = %read, next, "the stream has more than was delivered; recreating its consumer");
                        return Ended::Failed;
                    }
                    continue;
                }
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    warn!(stream = %read, error = %e, "following the stream failed; resuming");
                    return Ended::Failed;
                }
            };
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            if seq < *next {
                continue;
            }
            *next = seq + 1;
            if tx
                .send((
                    stream_name.to_string(),
                    LogEntry { seq, payload: msg.payload.clone(), subject: msg.subject.to_string(), forged: None },
                ))
                .await
                .is_err()
            {
                return Ended::Closed;
            }
        }
    }

    /// Whether the local mirror still lacks much of what was read from the origin (it is
    /// far from `next` yet): reading the origin goes on.
    async fn mirror_far_behind(&self, mirror: &str, next: u64) -> bool {
        match tokio::time::timeout(ORIGIN_TIMEOUT, self.position(mirror)).await {
            Ok(Ok(local)) => local.last_seq + ORIGIN_READ_LAG_MIN / 4 < next,
            _ => true,
        }
    }
}
