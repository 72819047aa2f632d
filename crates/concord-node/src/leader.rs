//! The leader's write path: validate, apply, group-commit, append, acknowledge.
//!
//! One task owns the [`Replica`] and serves a bounded queue of writes. It takes every
//! write waiting (up to `batch_changes_max` changes and `batch_bytes_max` bytes), turns
//! them into one changeset of the current origin, appends it to the region's log with
//! the sequence it expects to follow (fencing), and only after the log acknowledged it
//! commits the result locally and answers the writers. So an acknowledged write is in
//! the log (durable, `sync_interval: always`) and in local state; a crash between the
//! two is repaired at start by replaying the log from the stored cursor.
//!
//! When an append's outcome is unknown, the writers get 503 (their writes may still
//! apply), the leader re-reads the log and starts a new epoch, so no origin sequence and
//! no Automerge actor sequence is ever reused for different content. When the log was
//! written by another origin of this region, this leader was deposed: it stops writing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp};
use concord_core::hlc::Hlc;
use concord_core::ids::{Origin, RegionId};
use concord_core::lww::{Register, Version};
use concord_core::vv::VersionVector;
use concord_transport::LogEntry;
use concord_transport::{LogError, RegionLog};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::error::NodeError;
use crate::metrics;
use crate::replica::{Overlay, Replica};

#[derive(Debug)]
pub enum WriteOp {
    Put { bucket: String, key: String, value: Bytes },
    Delete { bucket: String, key: String },
    Doc { bucket: String, key: String, ops: Vec<DocOp> },
}

impl WriteOp {
    fn bytes(&self) -> usize {
        match self {
            WriteOp::Put { value, key, .. } => value.len() + key.len() + 64,
            WriteOp::Delete { key, .. } => key.len() + 64,
            WriteOp::Doc { key, ops, .. } => key.len() + 64 * ops.len(),
        }
    }
}

/// What an acknowledged write answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteAck {
    pub origin: String,
    /// The write's sequence in its origin; `None` when it changed nothing.
    pub seq: Option<u64>,
    pub hlc: Option<Hlc>,
    /// The sequence of the changeset in the region's log (what other regions' mirrors
    /// must reach for `remote` / `all` durability); `None` when nothing was written.
    #[serde(skip)]
    pub log_seq: Option<u64>,
}

/// Where a write's outcome goes.
pub type Reply = oneshot::Sender<Result<WriteAck, NodeError>>;

pub struct WriteRequest {
    pub op: WriteOp,
    /// The conflict-log record this write resolves (POST /v1/conflicts/{id}/resolve).
    pub resolves: Option<uuid::Uuid>,
    pub reply: Reply,
}

/// The leader's current identity, shared with the API for `/v1/status`.
#[derive(Debug, Clone)]
pub struct LeaderState {
    pub origin: Origin,
    pub fenced: bool,
}

pub struct Leader<L: RegionLog> {
    pub replica: Replica,
    pub log: Arc<L>,
    pub origin: Origin,
    /// The next origin sequence to assign.
    pub next_seq: u64,
    /// The log's last sequence as this leader knows it (what the next append expects).
    pub log_last: u64,
    pub batch_changes_max: usize,
    pub batch_bytes_max: usize,
    pub append_deadline: Duration,
    pub state_tx: watch::Sender<LeaderState>,
    /// The local mirrors of other regions' logs, and whose log each one holds.
    pub mirrors: HashMap<String, RegionId>,
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

impl<L: RegionLog> Leader<L> {
    /// Serve writes, and apply what arrives from other regions, until the queue closes or
    /// `shutdown` fires; then drain what is queued.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<WriteRequest>,
        mut inbound: mpsc::Receiver<(String, LogEntry)>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let mut carry: Option<WriteRequest> = None;
        let mut stopping = false;
        loop {
            let first = match carry.take() {
                Some(r) => r,
                None if stopping => match rx.recv().await {
                    Some(r) => r,
                    None => break,
                },
                None => tokio::select! {
                    r = rx.recv() => match r { Some(r) => r, None => break },
                    Some(entry) = inbound.recv() => {
                        self.apply_inbound(entry, &mut inbound).await?;
                        continue;
                    }
                    _ = shutdown.changed() => {
                        rx.close();
                        stopping = true;
                        continue;
                    }
                },
            };
            let mut bytes = first.op.bytes();
            let mut reqs = vec![first];
            while reqs.len() < self.batch_changes_max {
                match rx.try_recv() {
                    Ok(r) if bytes + r.op.bytes() > self.batch_bytes_max => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => {
                        bytes += r.op.bytes();
                        reqs.push(r);
                    }
                    Err(_) => break,
                }
            }
            if self.state_tx.borrow().fenced {
                for r in reqs {
                    let _ = r.reply.send(Err(NodeError::unavailable(
                        concord_api::ErrorCode::NotLeader,
                        "this node lost its leadership (fenced)",
                    )));
                }
                continue;
            }
            self.process(reqs).await?;
        }
        info!("writer drained and stopped");
        Ok(())
    }

    /// Apply `first` and whatever else has arrived from other regions, stream by stream.
    async fn apply_inbound(
        &mut self,
        first: (String, LogEntry),
        inbound: &mut mpsc::Receiver<(String, LogEntry)>,
    ) -> Result<(), NodeError> {
        self.replica.apply_inbound(first, inbound, &self.mirrors).await
    }

    async fn process(&mut self, reqs: Vec<WriteRequest>) -> Result<(), NodeError> {
        let mut overlay = Overlay::default();
        let mut changes: Vec<Change> = Vec::new();
        // For each request: its reply and the index of its change, if it made one.
        let mut pending: Vec<(Reply, Option<usize>)> = Vec::new();
        let actor = self.origin.actor_bytes();
        for req in reqs {
            let seq = self.next_seq + changes.len() as u64;
            let resolves = req.resolves;
            let made = match req.op {
                WriteOp::Put { bucket, key, value } => {
                    let change = self.lww_change(&mut overlay, bucket, key, Some(value.to_vec()), seq, resolves)?;
                    Ok(Some(change))
                }
                WriteOp::Delete { bucket, key } => {
                    Ok(Some(self.lww_change(&mut overlay, bucket, key, None, seq, resolves)?))
                }
                WriteOp::Doc { bucket, key, ops } => {
                    let hlc = self.replica.clock.tick(now_ms());
                    let doc = self.replica.doc_mut(&mut overlay, &bucket, &key)?;
                    match doc::apply_ops(doc, &actor, hlc, &ops) {
                        Err(e) => Err(NodeError::from(e)),
                        Ok(None) => Ok(None),
                        Ok(Some(change)) => {
                            overlay.dirty_docs.insert((bucket.clone(), key.clone()));
                            if let Some(id) = resolves {
                                overlay.doc_resolves.insert((bucket.clone(), key.clone()), id);
                            }
                            Ok(Some(Change {
                                hlc,
                                bucket,
                                key,
                                body: ChangeBody::Doc { change: change.raw_bytes().to_vec() },
                                resolves,
                            }))
                        }
                    }
                }
            };
            match made {
                Err(e) => {
                    metrics::inc(&self.replica.metrics.writes_rejected_total);
                    let _ = req.reply.send(Err(e));
                }
                Ok(None) => pending.push((req.reply, None)),
                Ok(Some(change)) => {
                    changes.push(change);
                    pending.push((req.reply, Some(changes.len() - 1)));
                }
            }
        }
        if changes.is_empty() {
            for (reply, _) in pending {
                let _ =
                    reply.send(Ok(WriteAck { origin: self.origin.to_string(), seq: None, hlc: None, log_seq: None }));
            }
            return Ok(());
        }
        let hlcs: Vec<Hlc> = changes.iter().map(|c| c.hlc).collect();
        let cs = Changeset { origin: self.origin.clone(), first_seq: self.next_seq, changes };
        match self.append(&cs).await {
            Ok(stream_seq) => {
                let mut applied = self.replica.applied().clone();
                applied.observe(&self.origin, cs.last_seq());
                let stream = self.replica.stream().to_string();
                self.replica.commit(overlay, applied, &stream, stream_seq).await?;
                self.log_last = stream_seq;
                self.next_seq = cs.last_seq() + 1;
                let m = &self.replica.metrics;
                metrics::inc(&m.changesets_published_total);
                metrics::add(&m.changes_published_total, cs.changes.len() as u64);
                for (reply, idx) in pending {
                    let ack = WriteAck {
                        origin: self.origin.to_string(),
                        seq: idx.map(|i| cs.first_seq + i as u64),
                        hlc: idx.map(|i| hlcs[i]),
                        log_seq: idx.map(|_| stream_seq),
                    };
                    metrics::inc(&m.writes_acked_total);
                    let _ = reply.send(Ok(ack));
                }
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, first_seq = cs.first_seq, "append failed; writes answered with 503");
                for (reply, _) in pending {
                    metrics::inc(&self.replica.metrics.writes_failed_total);
                    let _ = reply.send(Err(match &e {
                        LogError::TooLarge(m) => NodeError::TooLarge(m.clone()),
                        other => NodeError::unavailable(
                            concord_api::ErrorCode::LogUnavailable,
                            format!("write not acknowledged (it may still apply): {other}"),
                        ),
                    }));
                }
                if !matches!(e, LogError::TooLarge(_)) {
                    self.resync().await?;
                }
                Ok(())
            }
        }
    }

    /// A new LWW version for `bucket/key`: it follows every stored sibling causally (its
    /// HLC is later and its vector joins all of theirs), so it supersedes them all and
    /// resolves the key's open conflict, if any.
    fn lww_change(
        &mut self,
        overlay: &mut Overlay,
        bucket: String,
        key: String,
        value: Option<Vec<u8>>,
        seq: u64,
        resolves: Option<uuid::Uuid>,
    ) -> Result<Change, NodeError> {
        let current = self.replica.current_kv(overlay, &bucket, &key)?;
        let mut vv = VersionVector::new();
        if let Some(cur) = &current {
            for v in cur.versions() {
                self.replica.clock.observe(v.hlc);
            }
            vv = cur.vv();
        }
        let hlc = self.replica.clock.tick(now_ms());
        vv.observe(&self.origin, seq);
        let version = Version { value: value.clone(), hlc, origin: self.origin.clone(), vv: vv.clone() };
        let register = Register::new(version);
        let manual = self.replica.manual_buckets.contains(&bucket);
        let region = self.replica.region.to_string();
        crate::conflicts::track_lww(
            &self.replica.store,
            overlay,
            &region,
            &bucket,
            &key,
            &register,
            &[],
            resolves,
            manual,
        )?;
        overlay.kv.insert((bucket.clone(), key.clone()), register);
        let body = match value {
            Some(value) => ChangeBody::Put { value, vv },
            None => ChangeBody::Delete { vv },
        };
        Ok(Change { hlc, bucket, key, body, resolves })
    }

    /// Append with retries until the deadline. Retrying an append whose outcome is
    /// unknown is safe: the message id dedupes it, and the expected sequence fences it.
    async fn append(&mut self, cs: &Changeset) -> Result<u64, LogError> {
        let payload = Bytes::from(cs.encode());
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.log.append(payload.clone(), cs.message_id(), self.log_last).await {
                Ok(seq) => return Ok(seq),
                Err(e @ (LogError::Fenced { .. } | LogError::TooLarge(_))) => return Err(e),
                Err(e) if started.elapsed() + backoff >= self.append_deadline => return Err(e),
                Err(e) => {
                    metrics::inc(&self.replica.metrics.append_retries_total);
                    warn!(error = %e, "append failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// After a failed append: re-read the log until it answers, then either stop (another
    /// origin of this region wrote: we are deposed) or go on in a new epoch.
    async fn resync(&mut self) -> Result<(), NodeError> {
        let mut backoff = Duration::from_millis(100);
        let last = loop {
            match self.replica.catch_up(self.log.as_ref()).await {
                Ok(last) => break last,
                Err(NodeError::Fatal(m)) => return Err(NodeError::Fatal(m)),
                Err(e) => {
                    warn!(error = %e, "re-reading the log after a failed append; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let deposed =
            self.replica.applied().iter().any(|(o, _)| o.region == self.origin.region && o.epoch > self.origin.epoch);
        if deposed {
            error!(origin = %self.origin, "another leader wrote to this region's log: this node is fenced and stops writing");
            self.state_tx.send_modify(|s| s.fenced = true);
            return Ok(());
        }
        let epoch = loop {
            match self.log.next_epoch(self.origin.region.as_str()).await {
                Ok(epoch) => break epoch,
                Err(e) => {
                    warn!(error = %e, "allocating a new epoch; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.origin = Origin::new(self.origin.region.clone(), epoch);
        self.next_seq = 1;
        self.log_last = last;
        info!(origin = %self.origin, "resumed writing in a new epoch");
        self.state_tx.send_modify(|s| s.origin = self.origin.clone());
        Ok(())
    }
}
