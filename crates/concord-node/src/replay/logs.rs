//! What a restore reads of a region's JetStream: which mirrors it holds, how far each
//! stream goes, one message, and a stream in order from a sequence on.
//!
//! Read-only by construction: it opens no stream with a configuration (which would
//! create it, or change its retention, as a node does), creates only ephemeral ordered
//! consumers, and writes nothing. Every call has a deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::DirectGetErrorKind};
use bytes::Bytes;
use concord_core::ids::RegionId;
use concord_transport::nats::mirror_name;
use futures::{StreamExt, TryStreamExt};

use super::ReplayError;

/// How long one question to NATS (connect, info, a message) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most streams a region's JetStream is asked to list.
const STREAMS_MAX: usize = 10_000;
const MIRROR_PREFIX: &str = "CONCORD_MIRROR_";

/// A local stream's extent, and for a mirror how far its upstream is ahead of it.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub first_seq: u64,
    pub last_seq: u64,
    pub upstream_lag: u64,
}

pub struct Logs {
    js: jetstream::Context,
    url: String,
}

fn unavailable(what: String) -> impl FnOnce(String) -> ReplayError {
    move |e| ReplayError::Unavailable(format!("{what}: {e}"))
}

async fn timed<T, E: std::fmt::Display>(
    what: impl Fn() -> String,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReplayError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what())(e.to_string())),
        Err(_) => Err(unavailable(what())(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

impl Logs {
    /// Reach the region's NATS (`url`: one URL, or several separated by commas).
    pub async fn connect(url: &str) -> Result<Logs, ReplayError> {
        let servers = concord_transport::address::parse(url).map_err(ReplayError::Refused)?;
        let url = concord_transport::address::redact(url);
        let connect = servers
            .options()
            .name("concord restore")
            .connection_timeout(CALL_TIMEOUT)
            .request_timeout(Some(CALL_TIMEOUT))
            .connect(servers.urls);
        let client = timed(|| format!("connecting to {url}"), connect).await?;
        Ok(Logs { js: jetstream::new(client), url })
    }

    /// Every mirror of another region's log this JetStream holds, with that region
    /// (read from the mirror's source, `$JS.<region>.API`).
    pub async fn mirrors(&self) -> Result<BTreeMap<String, RegionId>, ReplayError> {
        let what = || format!("listing the streams of {}", self.url);
        let infos: Vec<jetstream::stream::Info> =
            timed(what, self.js.streams().take(STREAMS_MAX).try_collect::<Vec<_>>()).await?;
        let mut out = BTreeMap::new();
        for info in infos.into_iter().filter(|i| i.config.name.starts_with(MIRROR_PREFIX)) {
            let name = info.config.name;
            let region = info
                .config
                .mirror
                .and_then(|m| m.external)
                .and_then(|e| e.api_prefix.strip_prefix("$JS.")?.strip_suffix(".API").map(String::from))
                .and_then(|r| RegionId::new(r).ok())
                .filter(|r| mirror_name(r.as_str()) == name)
                .ok_or_else(|| {
                    ReplayError::Refused(format!("{name} is no mirror of a region's log that Concord made"))
                })?;
            out.insert(name, region);
        }
        Ok(out)
    }

    pub async fn extent(&self, stream: &str) -> Result<Extent, ReplayError> {
        let what = || format!("reading the state of {stream} on {}", self.url);
        let mut s = timed(what, self.js.get_stream(stream)).await?;
        let info = timed(what, s.info()).await?;
        Ok(Extent {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            upstream_lag: info.mirror.as_ref().map_or(0, |m| m.lag),
        })
    }

    /// The message `seq` of `stream`; `None` when the stream does not hold it.
    pub async fn message(&self, stream: &str, seq: u64) -> Result<Option<Bytes>, ReplayError> {
        let what = || format!("reading message {seq} of {stream}");
        let s = timed(what, self.js.get_stream_no_info(stream)).await?;
        match tokio::time::timeout(CALL_TIMEOUT, s.direct_get(seq)).await {
            Ok(Ok(msg)) => Ok(Some(msg.payload)),
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(unavailable(what())(e.to_string())),
            Err(_) => Err(unavailable(what())("no answer".into())),
        }
    }

    /// `stream` in order from `from` on (an ephemeral ordered consumer).
    pub async fn read_from(&self, stream: &str, from: u64) -> Result<Reader, ReplayError> {
        let what = || format!("reading {stream} from {from}");
        let s = timed(what, self.js.get_stream(stream)).await?;
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        };
        let c = timed(what, s.create_consumer(config)).await?;
        let messages = timed(what, c.messages()).await?;
        Ok(Reader { stream: stream.to_string(), messages })
    }
}

/// A stream read in order.
pub struct Reader {
    stream: String,
    messages: consumer::pull::Ordered,
}

impl Reader {
    /// The next stored message: (its sequence, its payload).
    pub async fn next(&mut self) -> Result<(u64, Bytes), ReplayError> {
        let what = || format!("reading {}", self.stream);
        match tokio::time::timeout(CALL_TIMEOUT, self.messages.next()).await {
            Ok(Some(Ok(msg))) => {
                let seq = msg.info().map_err(|e| unavailable(what())(e.to_string()))?.stream_sequence;
                Ok((seq, msg.payload.clone()))
            }
            Ok(Some(Err(e))) => Err(unavailable(what())(e.to_string())),
            Ok(None) => Err(unavailable(what())("the read ended early".into())),
            Err(_) => Err(unavailable(what())(format!("no message within {} s", CALL_TIMEOUT.as_secs()))),
        }
    }
}
