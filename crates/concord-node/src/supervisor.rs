//! Every long-running task of a node is owned here and obeys one shutdown signal.
//!
//! A task that returns an error or panics is logged and counted
//! (`concord_task_failures_total`), then, by its [`Policy`], started again after a
//! backoff, or reported as fatal: the node stops visibly (it exits with the task's
//! error) rather than run on with a dead part. A task that returns `Ok` is done (a task
//! meant to run until shutdown returns an error if it ends earlier).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_transport::backoff::Backoff;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, warn};

use crate::metrics::{self, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Start it again after a backoff (a loop that holds no state worth keeping).
    Restart,
    /// The node cannot run without it: stop the node.
    Critical,
}

/// Cheap to clone: every clone spawns into the same set of tasks.
#[derive(Clone)]
pub struct Supervisor {
    tasks: Arc<Mutex<JoinSet<()>>>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    fatal_tx: mpsc::Sender<String>,
}

impl Supervisor {
    /// A supervisor and the receiver of fatal failures (the node stops on the first).
    pub fn new(shutdown: watch::Receiver<bool>, metrics: Arc<Metrics>) -> (Supervisor, mpsc::Receiver<String>) {
        let (fatal_tx, fatal_rx) = mpsc::channel(16);
        (Supervisor { tasks: Default::default(), shutdown, metrics, fatal_tx }, fatal_rx)
    }

    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Run `make()` under `policy`. `make` builds the task afresh for each start.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, policy: Policy, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let name = name.into();
        let (shutdown, metrics, fatal) = (self.shutdown.clone(), self.metrics.clone(), self.fatal_tx.clone());
        let mut tasks = self.tasks.lock().expect("not poisoned");
        // Reap the tasks that ended, so the set holds only running ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(supervise(name, policy, make, shutdown, metrics, fatal));
    }

    /// Run one future that cannot be started again (it owns state): its error or panic
    /// stops the node.
    pub fn spawn_once<Fut>(&self, name: impl Into<String>, task: Fut)
    where
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let cell = Arc::new(Mutex::new(Some(task)));
        let name = name.into();
        let once = name.clone();
        self.spawn(name, Policy::Critical, move || {
            let task = cell.lock().expect("not poisoned").take();
            let once = once.clone();
            async move {
                match task {
                    Some(task) => task.await,
                    None => Err(format!("{once} cannot run twice")),
                }
            }
        });
    }

    /// Wait for every task to end (after the shutdown signal), at most `deadline`;
    /// abort the rest. True when all ended in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!(left = tasks.len(), "tasks still running at the drain deadline; aborting them");
            tasks.abort_all();
            return false;
        }
        true
    }
}

async fn supervise<F, Fut>(
    name: String,
    policy: Policy,
    make: F,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    fatal: mpsc::Sender<String>,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let outcome = std::panic::AssertUnwindSafe(make()).catch_unwind().await;
        let stopping = *shutdown.borrow();
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(panic) => format!("it panicked: {}", panic_text(&panic)),
        };
        if stopping {
            warn!(task = %name, why, "task failed while the node stopped");
            return;
        }
        metrics::inc(&metrics.task_failures_total);
        if policy != Policy::Restart {
            error!(task = %name, why, "a critical task failed: the node stops");
            let _ = fatal.send(format!("{name}: {why}")).await;
            return;
        }
        error!(task = %name, why, "task failed; starting it again");
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = backoff.wait() => {}
            _ = stop.changed() => return,
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn restarts_failed_tasks_and_reports_critical_ones() {
        let (stop_tx, stop) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let (sup, mut fatal) = Supervisor::new(stop, metrics.clone());
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        sup.spawn("flaky", Policy::Restart, move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                std::future::pending::<()>().await;
                Err("pending never ends".to_string())
            }
        });
        sup.spawn("vital", Policy::Critical, || async { Err("disk gone".to_string()) });
        let why = fatal.recv().await.expect("a fatal report");
        assert_eq!(why, "vital: disk gone");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "panicked twice, then runs");
        assert_eq!(metrics.task_failures_total.get(), 3);
        stop_tx.send(true).unwrap();
        // The flaky task never looks at the signal: the drain aborts it at the deadline.
        assert!(!sup.drain(Duration::from_secs(1)).await);
    }
}
