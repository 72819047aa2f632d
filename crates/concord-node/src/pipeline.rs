//! The worker's appends to its region's log, pipelined (the engine's `writer` module,
//! "Pipelined appends"): up to `appends_in_flight_max` changesets on their way at once.
//!
//! Each append is *sent* by the worker itself, in the order the engine made them (the
//! log receives them in that order: NATS keeps a connection's order), then handed to a
//! task of its own that waits for the log's answer and retries until its deadline.
//! Their outcomes are taken in order, each reported to the engine as the step it is.
//! Retrying is safe: the message id dedupes a stored append, and the expected sequence
//! and message id fence it. A retried append reaches the log after the ones sent behind
//! it; those are then refused (they follow it), and the writer catches up: slower, never
//! wrong.
//!
//! When the engine abandons the appends behind a failed one, their tasks are aborted:
//! whatever of them the log stored is read back by the catch-up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use concord_engine::{Append, AppendOutcome};
use concord_transport::backoff::Backoff;
use concord_transport::{LogError, LogResult, RegionLog};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::error::NodeError;
use crate::metrics::{self, Metrics};
use crate::streams::StreamControl;
use crate::worker::Worker;

/// Appends on their way, oldest first.
#[derive(Default)]
pub(crate) struct InFlight {
    tasks: VecDeque<JoinHandle<AppendOutcome>>,
}

impl InFlight {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The oldest append's outcome, once it has one (never, when none is in flight).
    pub async fn next(&mut self) -> AppendOutcome {
        let Some(task) = self.tasks.front_mut() else { return std::future::pending().await };
        let outcome = task.await.unwrap_or_else(|e| AppendOutcome::Failed(format!("the append's task ended: {e}")));
        self.tasks.pop_front();
        outcome
    }

    fn abort_all(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.abort_all();
    }
}

impl<L: RegionLog, S: StreamControl> Worker<L, S> {
    /// Send `append` to the log now (after every append sent before it) and leave its
    /// outcome to a task.
    pub(crate) async fn send(&mut self, append: Append) {
        // Not past the lease: a writer that cannot renew stops retrying when it must stop
        // writing (the log would refuse it after a takeover anyway).
        let mut deadline = Instant::now() + self.limits.append_deadline;
        if let Some(lease) = self.lease_deadline_at() {
            deadline = deadline.min(lease);
        }
        let first = send_once(&*self.log, &append, deadline).await;
        let (log, metrics) = (self.log.clone(), self.metrics.clone());
        self.inflight.tasks.push_back(tokio::spawn(finish(log, metrics, append, first, deadline)));
    }

    /// The oldest append ended: the engine's step for it. Abandoned appends (an earlier
    /// one failed) are aborted.
    pub(crate) async fn append_ended(&mut self, outcome: AppendOutcome) -> Result<(), NodeError> {
        let out = self.step(move |e, _| Ok(e.append_done(outcome))).await?;
        if out.appends_abandoned > 0 {
            assert_eq!(out.appends_abandoned, self.inflight.len(), "the engine abandons exactly what is in flight");
            self.inflight.abort_all();
        }
        assert_eq!(self.inflight.len(), self.engine().appends_in_flight(), "the runtime and the engine agree");
        self.after(out);
        Ok(())
    }

    /// Wait until no append is in flight, reporting each outcome (before anything that
    /// needs an idle writer: stream entries, stepping down, a tick, the shutdown).
    pub(crate) async fn drain_appends(&mut self) -> Result<(), NodeError> {
        while !self.inflight.is_empty() {
            let outcome = self.inflight.next().await;
            self.append_ended(outcome).await?;
        }
        Ok(())
    }
}

/// One attempt to send, bounded by the deadline.
async fn send_once<L: RegionLog>(log: &L, a: &Append, deadline: Instant) -> LogResult<L::Sent> {
    let sent = log.send_append(a.payload.clone(), a.msg_id.clone(), a.expected_last);
    tokio::time::timeout_at(deadline, sent)
        .await
        .unwrap_or_else(|_| Err(LogError::Indeterminate("not sent before the append deadline".into())))
}

/// Wait for the log's answer to `first`, retrying (with the same message id) until the
/// deadline.
async fn finish<L: RegionLog>(
    log: Arc<L>,
    metrics: Arc<Metrics>,
    a: Append,
    first: LogResult<L::Sent>,
    deadline: Instant,
) -> AppendOutcome {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).until(deadline);
    let mut attempt = first;
    loop {
        let result = match attempt {
            Ok(sent) => tokio::time::timeout_at(deadline, sent).await.unwrap_or_else(|_| {
                Err(LogError::Indeterminate("no acknowledgement before the append deadline".into()))
            }),
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(stream_seq) => return AppendOutcome::Stored { stream_seq },
            Err(LogError::TooLarge(m)) => return AppendOutcome::TooLarge(m),
            Err(e @ LogError::Fenced { .. }) => return AppendOutcome::Failed(e.to_string()),
            Err(e) => e,
        };
        metrics::inc(&metrics.append_retries_total);
        warn!(error = %e, first_seq = a.first_seq, "append failed; retrying");
        if Instant::now() >= deadline || !backoff.wait().await {
            return AppendOutcome::Failed(e.to_string());
        }
        attempt = send_once(&*log, &a, deadline).await;
    }
}
