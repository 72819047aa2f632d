//! `GET /v1/conflicts/events?bucket=&key=`: the conflict records this node commits, as
//! server-sent events, the moment it commits them (a record created, extended by another
//! version, or resolved), for `concord conflicts --follow` and the dashboard.
//!
//! Every replica commits the records of the changesets it applies, so any node of any
//! region can be followed. The feed is live only: what was committed before the stream
//! opened is in `GET /v1/conflicts` (a client subscribes first, then lists, and keeps
//! the newer of the two). Nothing is dropped silently: a client too slow for the feed
//! gets a `lagged` event with the number of records it missed, and lists again.
//!
//! Limits: at most [`CONFLICT_STREAMS_MAX`] streams open on a node (beyond that, 503
//! `overloaded`); a comment every [`HEARTBEAT`] keeps idle connections and proxies
//! alive; every stream ends when the node shuts down (so it never holds up the drain).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use concord_api::ErrorCode;
use concord_core::conflict::ConflictRecord;
use futures::Stream;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::Params;
use crate::Node;
use crate::error::NodeError;

/// Most conflict streams open on one node at once.
pub const CONFLICT_STREAMS_MAX: usize = 64;
/// Records the feed holds for the slowest stream before it lags: one ring shared by
/// every stream, so this bounds the feed's memory whatever the streams do (a record
/// holds its competing values, each at most `value_bytes_max`).
pub const CONFLICT_FEED_CAPACITY: usize = 256;
/// How often an idle stream carries a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The streams open now (a gauge in `/metrics`: `concord_conflict_streams_open`).
#[derive(Clone, Default)]
pub struct OpenStreams(Arc<AtomicUsize>);

impl OpenStreams {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// One more stream, unless [`CONFLICT_STREAMS_MAX`] are open.
    fn open(&self) -> Option<Open> {
        let taken =
            self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < CONFLICT_STREAMS_MAX).then_some(n + 1));
        taken.ok().map(|_| Open(self.0.clone()))
    }
}

/// A stream's place among the open ones, given back when the stream is dropped (the
/// client went away, or the node stopped).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Feed {
    records: broadcast::Receiver<ConflictRecord>,
    shutdown: watch::Receiver<bool>,
    wants: Wants,
    heartbeat: tokio::time::Interval,
    _open: Open,
}

/// The records a stream selects.
struct Wants {
    bucket: Option<String>,
    key: Option<String>,
}

impl Wants {
    fn wants(&self, r: &ConflictRecord) -> bool {
        self.bucket.as_ref().is_none_or(|b| *b == r.bucket) && self.key.as_ref().is_none_or(|k| *k == r.key)
    }
}

impl Feed {
    /// The next event to send, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        let Feed { records, shutdown, wants, heartbeat, .. } = self;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return None,
                r = records.recv() => match r {
                    Ok(record) if wants.wants(&record) => {
                        return Some(event("conflict", &serde_json::to_string(&record).expect("a record serializes")));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(event("lagged", &json!({ "missed": missed }).to_string()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

/// One server-sent event; `data` is one line of JSON.
fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Open a stream of the records `p.bucket`/`p.key` select. It is subscribed to the feed
/// before this returns: every record committed from now on is in it.
pub fn conflict_events(
    node: &Node,
    p: &Params,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, NodeError> {
    let open = node.conflict_streams.open().ok_or_else(|| NodeError::Unavailable {
        code: ErrorCode::Overloaded,
        message: format!("{CONFLICT_STREAMS_MAX} conflict streams are open on this node already; retry later"),
    })?;
    let feed = Feed {
        records: node.conflict_feed.subscribe(),
        shutdown: node.shutdown.clone(),
        wants: Wants { bucket: p.bucket.clone(), key: p.key.clone() },
        heartbeat: tokio::time::interval(HEARTBEAT),
        _open: open,
    };
    Ok(futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    }))
}
