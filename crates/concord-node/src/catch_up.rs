//! The worker's catch-up with its region's log before writing: read to the end in
//! bounded chunks, then write in a new epoch — or follow, when deposed. (Appending is
//! [`crate::pipeline`]'s.)

use concord_engine::{CatchUp, CaughtUp};
use concord_transport::backoff::{Backoff, GaveUp, retry};
use concord_transport::{LogError, RegionLog};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::error::NodeError;
use crate::streams::StreamControl;
use crate::worker::Worker;

/// Most log messages one catch-up read asks for (bytes are bounded too).
pub const CATCH_UP_CHUNK: u64 = 1000;
/// How long one question about the log's end may take. Short: while a JetStream
/// cluster elects a new leader for the log, a request waits for the client's whole
/// request timeout (10 s) unanswered; asking again soon notices the new leader sooner.
const LOG_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a catch-up that waits for the other streams lets them be applied before it
/// looks again.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) fn retryable(e: &LogError) -> bool {
    !matches!(e, LogError::TooLarge(_))
}

impl<L: RegionLog, S: StreamControl> Worker<L, S> {
    /// If the engine is catching up, read the region's log to its end and decide.
    /// False when shutdown interrupted it.
    pub(crate) async fn catch_up(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<bool, NodeError> {
        if self.engine().catch_up_next(u64::MAX, 1) == CatchUp::Idle {
            return Ok(true);
        }
        let log = self.log.clone();
        let last_seq = || async {
            tokio::time::timeout(LOG_END_TIMEOUT, log.last_seq())
                .await
                .unwrap_or_else(|_| Err(LogError::Unavailable("the log's end: no answer within 2 s".into())))
        };
        let backoff = self.catch_up_backoff();
        let last = match retry("reading the log's end", backoff, shutdown, retryable, last_seq).await {
            Ok(last) => last,
            Err(GaveUp::Stopped) => return Ok(false),
            Err(GaveUp::Failed(e)) => return self.catch_up_failed(e).await,
        };
        loop {
            match self.engine().catch_up_next(last, CATCH_UP_CHUNK) {
                CatchUp::Idle => return Ok(true),
                CatchUp::Read { from, to } => {
                    let bytes_max = self.limits.read_bytes_max;
                    let backoff = self.catch_up_backoff();
                    let read = retry("reading the log", backoff, shutdown, retryable, || log.read(from, to, bytes_max));
                    let chunk = match read.await {
                        Ok(chunk) => chunk,
                        Err(GaveUp::Stopped) => return Ok(false),
                        Err(GaveUp::Failed(e)) => return self.catch_up_failed(e).await,
                    };
                    let own = self.engine().config().own_stream.clone();
                    let mut entries = chunk.entries;
                    if !self.screen(&mut entries, shutdown).await {
                        return Ok(false);
                    }
                    if !entries.is_empty() {
                        self.apply(own.clone(), entries).await?;
                    }
                    let out = self.step(move |e, _| Ok(e.read_through(&own, chunk.through))).await?;
                    self.after(out);
                }
                CatchUp::Done => return self.decide(last, shutdown).await,
            }
        }
    }

    /// Check who published each entry of the region's log (asking again while its lease
    /// history cannot be read). False when shutdown interrupted it.
    async fn screen(&self, entries: &mut [concord_transport::LogEntry], shutdown: &mut watch::Receiver<bool>) -> bool {
        let Some(identity) = self.identity.clone() else { return true };
        let region = self.engine().config().region.to_string();
        for e in entries.iter_mut() {
            let mut backoff = Backoff::network();
            loop {
                match identity.verdict(&region, e).await {
                    Ok(forged) => {
                        e.forged = forged;
                        break;
                    }
                    Err(why) => {
                        warn!(why, "checking who wrote the region's log failed; asking again");
                        tokio::select! {
                            _ = backoff.wait() => {}
                            _ = shutdown.wait_for(|s| *s) => return false,
                        }
                    }
                }
            }
        }
        true
    }

    /// Retries of a catch-up end at the lease's deadline, if this node holds one.
    fn catch_up_backoff(&self) -> Backoff {
        match self.lease_deadline_at() {
            Some(deadline) => Backoff::network().until(deadline),
            None => Backoff::network(),
        }
    }

    /// The log could not be read before the lease's deadline (as it stood when the
    /// catch-up began): step down if the lease has lapsed (whoever takes it over reads
    /// the log); else it was renewed meanwhile, and the catch-up starts again shortly.
    async fn catch_up_failed(&mut self, e: LogError) -> Result<bool, NodeError> {
        if self.lease_expired() {
            warn!(error = %e, "the region's log stayed unreachable past the lease: stepping down");
            self.on_lease(crate::lease::LeaseEvent::Lost).await?;
        } else {
            warn!(error = %e, "reading the region's log failed; the catch-up starts again");
        }
        Ok(true)
    }

    /// Read to the end: write in a new epoch, follow (deposed), or stay stuck (parked).
    async fn decide(&mut self, last: u64, shutdown: &mut watch::Receiver<bool>) -> Result<bool, NodeError> {
        let (outcome, out) = {
            let engine = self.engine.as_mut().expect("the engine is back from its step");
            engine.caught_up(last)
        };
        self.after(out);
        match outcome {
            CaughtUp::NeedEpoch => {
                let region = self.engine().config().region.to_string();
                let log = self.log.clone();
                let epoch = match retry("allocating an epoch", Backoff::network(), shutdown, retryable, || {
                    log.next_epoch(&region)
                })
                .await
                {
                    Ok(epoch) => epoch,
                    Err(GaveUp::Stopped) => return Ok(false),
                    Err(GaveUp::Failed(e)) => return Err(e.into()),
                };
                let out = self.step(move |e, _| Ok(e.start_writing(epoch))).await?;
                self.after(out);
                info!(last, epoch, "caught up with the region's log; writing");
            }
            CaughtUp::Waiting { missing } => {
                // The other streams bring it: apply them a while, then look again.
                self.catch_up_after = Some(tokio::time::Instant::now() + CATCH_UP_WAIT);
                let missing: Vec<String> = missing.iter().map(|(o, s)| format!("{o}={s}")).collect();
                info!(?missing, "caught up with the region's log, but not yet with what its last writer had applied");
            }
            CaughtUp::Deposed { by } => {
                error!(%by, "another leader wrote to this region's log: this node is fenced and follows it");
            }
            CaughtUp::Stuck { reason } => {
                error!(reason, "the region's log is parked: this node cannot write until it is upgraded");
            }
        }
        Ok(true)
    }
}
