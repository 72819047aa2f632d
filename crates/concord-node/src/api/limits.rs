//! Limits on requests, the same for both front ends.
//!
//! - **Concurrency**: at most `http_concurrency_max` (HTTP) or `nats_concurrency_max`
//!   (NATS) requests at once. One more is refused at once with 503 `overloaded`, not
//!   queued: a queue in front of a saturated node only adds latency and memory, while
//!   a refusal tells the caller to back off now. The operator's requests (`/v1/status`,
//!   `/metrics`, NATS `status`) draw on a small budget of their own
//!   ([`OPERATOR_CONCURRENCY_MAX`]), so a flooded node can still be looked at.
//! - **Time**: a request still running after `request_timeout_ms` answers 504
//!   `timeout` (and is dropped). The waits inside a request are cut to end a margin
//!   before that ([`Deadline::cap`]), so a slow write or read answers with its own code
//!   (`timeout` for the acknowledgement, `durability_timeout`, `session_lag`); the
//!   request timeout catches what has no bound of its own, such as a request body
//!   that trickles in.
//!
//! A permit is held until the answer is ready; [`Limits::drain`] waits for every permit
//! to come back, so shutdown can wait for the requests in flight.

use std::sync::Arc;
use std::time::Duration;

use concord_api::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::NodeError;
use crate::metrics::{self, Metrics};

/// Most operator requests (status, metrics) served at once, per front end.
pub const OPERATOR_CONCURRENCY_MAX: usize = 32;
/// The waits inside a request end this long before its timeout (at most a tenth of
/// the timeout), leaving time to answer.
pub const ANSWER_MARGIN_MAX: Duration = Duration::from_secs(1);

/// What a request is, for its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Status and metrics: the operator's budget, the request timeout.
    Operator,
    /// The data path: the main budget, the request timeout.
    Data,
    /// A snapshot for a new follower: the main budget, no request timeout (its time
    /// grows with the store, the export cannot be cancelled half-way, and the follower
    /// that asks sets its own timeout).
    Bulk,
}

/// When the waits inside a request must have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    /// For a request starting now with `timeout`: the timeout less the answer margin.
    pub fn after(timeout: Duration) -> Deadline {
        let margin = (timeout / 10).min(ANSWER_MARGIN_MAX);
        Deadline(Instant::now() + timeout.saturating_sub(margin))
    }

    /// `wait`, cut to end by the deadline.
    pub fn cap(self, wait: Duration) -> Duration {
        wait.min(self.0.saturating_duration_since(Instant::now()))
    }
}

/// `wait`, cut to end by `deadline` when there is one.
pub fn cap(wait: Duration, deadline: Option<Deadline>) -> Duration {
    deadline.map_or(wait, |d| d.cap(wait))
}

/// A request let in: holds its place until dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    pub deadline: Deadline,
}

/// The limits of one front end.
pub struct Limits {
    data: Arc<Semaphore>,
    data_max: usize,
    operator: Arc<Semaphore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn new(concurrency_max: usize, timeout: Duration, metrics: Arc<Metrics>) -> Limits {
        assert!(concurrency_max > 0, "the configuration checks concurrency limits are positive");
        Limits {
            data: Arc::new(Semaphore::new(concurrency_max)),
            data_max: concurrency_max,
            operator: Arc::new(Semaphore::new(OPERATOR_CONCURRENCY_MAX)),
            timeout,
            metrics,
        }
    }

    /// Let a request of `class` in, or refuse it at once with 503 `overloaded`.
    pub fn admit(&self, class: Class) -> Result<Admitted, NodeError> {
        let (pool, max) = match class {
            Class::Operator => (&self.operator, OPERATOR_CONCURRENCY_MAX),
            Class::Data | Class::Bulk => (&self.data, self.data_max),
        };
        match pool.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted { _permit: permit, deadline: Deadline::after(self.timeout) }),
            Err(_) => {
                metrics::inc(&self.metrics.requests_overloaded_total);
                Err(NodeError::unavailable(
                    ErrorCode::Overloaded,
                    format!("{max} requests are already in progress here; retry with backoff"),
                ))
            }
        }
    }

    /// Run `request` within the request timeout (for `Class::Bulk`, without one).
    pub async fn within<T>(&self, class: Class, request: impl Future<Output = T>) -> Result<T, NodeError> {
        if class == Class::Bulk {
            return Ok(request.await);
        }
        tokio::time::timeout(self.timeout, request).await.map_err(|_| {
            metrics::inc(&self.metrics.requests_timed_out_total);
            NodeError::Timeout(format!(
                "the request did not finish within {} ms (request_timeout_ms); a write may still apply",
                self.timeout.as_millis()
            ))
        })
    }

    /// Wait until no request holds a place, or `deadline` passes.
    pub async fn drain(&self, deadline: Duration) {
        let all = async {
            let _data = self.data.acquire_many(self.data_max as u32).await;
            let _operator = self.operator.acquire_many(OPERATOR_CONCURRENCY_MAX as u32).await;
        };
        let _ = tokio::time::timeout(deadline, all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, timeout_ms: u64) -> Limits {
        Limits::new(max, Duration::from_millis(timeout_ms), Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn beyond_the_limit_is_overloaded_at_once_and_operators_keep_their_budget() {
        let l = limits(2, 1000);
        let a = l.admit(Class::Data).unwrap();
        let _b = l.admit(Class::Bulk).unwrap();
        let refused = l.admit(Class::Data).unwrap_err();
        assert_eq!((refused.status(), refused.code()), (503, ErrorCode::Overloaded));
        assert_eq!(l.metrics.requests_overloaded_total.get(), 1);
        let ops: Vec<_> = (0..OPERATOR_CONCURRENCY_MAX).map(|_| l.admit(Class::Operator).unwrap()).collect();
        assert!(l.admit(Class::Operator).is_err());
        drop((a, ops));
        assert!(l.admit(Class::Data).is_ok());
        assert!(l.admit(Class::Operator).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_times_out_and_waits_end_before() {
        let l = limits(1, 1000);
        let admitted = l.admit(Class::Data).unwrap();
        // The margin is a tenth of a 1 s timeout.
        assert_eq!(admitted.deadline.cap(Duration::from_secs(60)), Duration::from_millis(900));
        assert_eq!(cap(Duration::from_millis(5), Some(admitted.deadline)), Duration::from_millis(5));
        assert_eq!(cap(Duration::from_secs(60), None), Duration::from_secs(60));
        let slow = l.within(Class::Data, tokio::time::sleep(Duration::from_secs(5))).await.unwrap_err();
        assert_eq!((slow.status(), slow.code()), (504, ErrorCode::Timeout));
        assert!(l.within(Class::Bulk, tokio::time::sleep(Duration::from_secs(5))).await.is_ok());
        assert_eq!(admitted.deadline.cap(Duration::from_secs(1)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_requests_in_flight() {
        let l = Arc::new(limits(4, 1000));
        let held = l.admit(Class::Data).unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.drain(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
    }
}
