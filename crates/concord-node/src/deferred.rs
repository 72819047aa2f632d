//! Which of a replica's commits still wait for a durable one, and the background sync
//! that makes them durable (the worker module's doc says which commits are deferred).
//!
//! A sync runs on a blocking thread while the worker goes on (redb serializes it with
//! the worker's commits): commits made while it runs may or may not be covered by it,
//! so they count as still waiting, from the sync's start.

use std::time::Duration;

use concord_storage::Store;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::NodeError;

/// Longest a commit stays deferred: bounds what a crash makes the replica read again.
/// The first commit this late is made durable itself; an idle replica syncs when it
/// comes due; a writer starts a background sync from half this age.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// How a step's commit went to the disk.
pub(crate) enum Persisted {
    Durable,
    Deferred,
    /// Nothing to commit.
    Unchanged,
}

#[derive(Default)]
pub(crate) struct Deferred {
    /// Since when commits wait for a durable one (none: everything committed is durable).
    since: Option<Instant>,
    /// Deferred commits made, ever (to tell whether any came during a sync).
    commits: u64,
    syncing: Option<Syncing>,
}

/// A sync running: its task, and `commits` and the time when it started.
struct Syncing {
    task: JoinHandle<Result<(), NodeError>>,
    commits: u64,
    started: Instant,
}

impl Deferred {
    /// Whether commits wait, and whether they are due (a commit now should be durable).
    pub fn waiting(&self) -> Option<bool> {
        self.since.map(|since| since.elapsed() >= SYNC_INTERVAL)
    }

    pub fn committed(&mut self, persisted: Persisted) {
        match persisted {
            Persisted::Durable => self.since = None,
            Persisted::Deferred => {
                self.commits += 1;
                self.since.get_or_insert_with(Instant::now);
            }
            Persisted::Unchanged => {}
        }
    }

    /// Start a background sync if commits have waited `age` and none runs.
    pub fn start_if_older(&mut self, store: &Store, age: Duration) {
        if self.syncing.is_some() || self.since.is_none_or(|since| since.elapsed() < age) {
            return;
        }
        let store = store.clone();
        let task = tokio::task::spawn_blocking(move || store.sync().map_err(NodeError::from));
        self.syncing = Some(Syncing { task, commits: self.commits, started: Instant::now() });
    }

    /// When the worker should act: a running sync ended, or waiting commits came due
    /// (never, when neither can happen).
    pub async fn next(&mut self) -> Result<(), NodeError> {
        match (&mut self.syncing, self.since) {
            (Some(syncing), _) => {
                let result = (&mut syncing.task).await.map_err(|e| NodeError::Fatal(format!("a sync panicked: {e}")));
                let Syncing { commits, started, .. } = self.syncing.take().expect("running");
                result??;
                if self.commits == commits {
                    self.since = None;
                } else {
                    self.since = self.since.map(|s| s.max(started));
                }
                Ok(())
            }
            (None, Some(since)) => {
                tokio::time::sleep_until(since + SYNC_INTERVAL).await;
                Ok(())
            }
            (None, None) => std::future::pending().await,
        }
    }

    /// Make every commit durable now (at shutdown, and before a replica stops writing).
    pub async fn sync_now(&mut self, store: &Store) -> Result<(), NodeError> {
        while self.syncing.is_some() {
            self.next().await?;
        }
        if self.since.is_some() {
            self.start_if_older(store, Duration::ZERO);
            self.next().await?;
        }
        Ok(())
    }
}
