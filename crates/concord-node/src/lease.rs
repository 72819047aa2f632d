//! The region's writer lease: at most one node of a region writes its log at a time.
//!
//! The lease is the key `<region>` of the NATS key/value bucket `concord_leases`,
//! holding a [`LeaseRecord`]. Every change is a compare-and-set on the key's revision,
//! so of two claims on one revision exactly one wins. Time is never compared across
//! machines; each node measures its own intervals:
//!
//! - the holder renews every `lease_renew_ms`; it stops writing once `lease_ttl_ms`
//!   less a margin has passed since it *sent* its last renewal that succeeded (its own
//!   deadline, [`Timing::deadline`]), and tells the worker ([`LeaseEvent::Lost`]);
//! - a follower that has seen the key's revision unchanged for `lease_ttl_ms` (measured
//!   from when *it* saw it change, which is after the holder sent it) claims it; so it
//!   can never claim before the holder's deadline passed. Candidates wait longer the
//!   less of the region's log they have applied (ties by node name), so the most
//!   up-to-date live follower takes it, and a dead one does not block the others;
//! - the new holder reads the region's log to its end before it writes, in a new epoch
//!   (the engine's catch-up). The log's expected-sequence check fences an old holder's
//!   late appends anyway.

use std::sync::Arc;
use std::time::Duration;

use concord_api::LeaseRecord;
use concord_engine::RoleView;
use concord_transport::lease::{Claim, Leases};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::NodeConfig;
use crate::followers::Followers;
use crate::view::Views;

/// How long a configured leader tries to read the lease at start.
const START_CLAIM_PATIENCE: Duration = Duration::from_secs(10);

/// What the lease task tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This node holds the lease: promote, catch up, write.
    Acquired,
    /// It no longer does (or could not renew in time): stop writing now.
    Lost,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: Duration,
    pub renew: Duration,
    /// How long after sending its last successful renewal the holder stops writing.
    pub deadline: Duration,
    /// How often a follower reads the lease, and a failed renewal is tried again.
    pub poll: Duration,
}

impl Timing {
    pub fn of(cfg: &NodeConfig) -> Timing {
        let ttl = Duration::from_millis(cfg.lease_ttl_ms);
        let renew = Duration::from_millis(cfg.lease_renew_ms);
        // Stop with a margin of a third of the lease to spare (clocks run at slightly
        // different rates; the claim's own latency).
        Timing { ttl, renew, deadline: ttl * 2 / 3, poll: (ttl / 12).max(Duration::from_millis(50)) }
    }

    /// How long a candidate of `rank` (0: the most up-to-date) waits with the lease
    /// unchanged before it claims it.
    pub fn patience(&self, rank: usize) -> Duration {
        self.ttl + self.ttl / 2 * rank as u32
    }
}

/// The region's candidates, most up-to-date first: where `me` stands (the number of
/// live followers ahead of it).
pub fn rank(followers: &Followers, me: &str) -> usize {
    let mut live: Vec<(u64, String)> = followers.live().into_iter().map(|(r, _)| (r.log_seq, r.node)).collect();
    live.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    live.iter().position(|(_, n)| n == me).unwrap_or(live.len())
}

/// Claim the lease at start if it is free or was this node's own (a restart): the
/// revision it now holds, and when the claim was sent. `None`: another node holds it
/// (or the bucket did not answer within a few seconds: the lease task takes it later).
pub async fn claim_at_start(leases: &Leases, region: &str, me: &LeaseRecord) -> Option<(u64, Instant)> {
    // A JetStream cluster that just started may take a moment to answer.
    let deadline = Instant::now() + START_CLAIM_PATIENCE;
    let observed = loop {
        match tokio::time::timeout(Duration::from_secs(2), leases.read(region)).await {
            Ok(Ok(observed)) => break observed,
            _ if Instant::now() >= deadline => return None,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let holder: Option<LeaseRecord> = observed.value.as_ref().and_then(|v| serde_json::from_slice(v).ok());
    if holder.is_some_and(|h| h.node != me.node) {
        return None;
    }
    let sent = Instant::now();
    match leases.claim(region, encode(me), observed.revision).await {
        Claim::Won(revision) => Some((revision, sent)),
        Claim::Lost | Claim::Failed(_) => None,
    }
}

fn encode(me: &LeaseRecord) -> bytes::Bytes {
    serde_json::to_vec(me).expect("a lease record serializes").into()
}

/// Until when this node may write, as its lease task last knew (`None`: it holds no
/// lease). The worker checks it before every write batch, so a node that was frozen past
/// its deadline refuses writes as soon as it runs again, before the lease task has run.
pub type Deadline = watch::Receiver<Option<Instant>>;

/// The lease task's world.
pub struct LeaseTask {
    pub leases: Arc<Leases>,
    pub region: String,
    pub me: LeaseRecord,
    pub timing: Timing,
    pub followers: Followers,
    pub views: Views,
    pub events: mpsc::Sender<LeaseEvent>,
    pub deadline: watch::Sender<Option<Instant>>,
}

impl LeaseTask {
    /// Hold the lease from `held` (revision, sent) if given, else watch for it; until
    /// shutdown.
    pub async fn run(
        self,
        mut held: Option<(u64, Instant)>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        loop {
            held = match held {
                Some((revision, sent)) => {
                    let holding = self.hold(revision, sent, &mut shutdown).await;
                    self.deadline.send_replace(None);
                    if !holding {
                        return Ok(());
                    }
                    self.events.send(LeaseEvent::Lost).await.map_err(|_| "the worker stopped".to_string())?;
                    None
                }
                None => {
                    let Some((revision, sent)) = self.watch(&mut shutdown).await else { return Ok(()) };
                    self.deadline.send_replace(Some(sent + self.timing.deadline));
                    self.events.send(LeaseEvent::Acquired).await.map_err(|_| "the worker stopped".to_string())?;
                    Some((revision, sent))
                }
            };
        }
    }

    /// Renew until the lease is lost (true) or shutdown (false).
    async fn hold(&self, mut revision: u64, mut sent: Instant, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut next = sent + self.timing.renew;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => return false,
            }
            let deadline = sent + self.timing.deadline;
            if Instant::now() >= deadline || matches!(self.views.view.borrow().role, RoleView::Stuck { .. }) {
                warn!(region = %self.region, "could not renew the lease in time (or cannot write): giving it up");
                return true;
            }
            let attempt = Instant::now();
            match tokio::time::timeout_at(deadline, self.leases.claim(&self.region, encode(&self.me), revision)).await {
                Ok(Claim::Won(r)) => {
                    (revision, sent) = (r, attempt);
                    next = sent + self.timing.renew;
                    self.deadline.send_replace(Some(sent + self.timing.deadline));
                }
                Ok(Claim::Lost) => {
                    warn!(region = %self.region, "another node claimed the lease");
                    return true;
                }
                Ok(Claim::Failed(e)) => {
                    warn!(error = %e, "renewing the lease failed; trying again");
                    next = Instant::now() + self.timing.poll;
                }
                Err(_) => next = Instant::now(),
            }
        }
    }

    /// Watch the lease; claim it once it has been unchanged long enough for this node's
    /// rank. Returns the revision won and when the claim was sent; `None` at shutdown.
    async fn watch(&self, shutdown: &mut watch::Receiver<bool>) -> Option<(u64, Instant)> {
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.timing.poll) => {}
                _ = shutdown.changed() => return None,
            }
            let Ok(Ok(observed)) = tokio::time::timeout(self.timing.ttl, self.leases.read(&self.region)).await else {
                continue;
            };
            let now = Instant::now();
            let since = match seen {
                Some((revision, at)) if revision == observed.revision => at,
                _ => now,
            };
            seen = Some((observed.revision, since));
            let candidate = matches!(self.views.view.borrow().role, RoleView::Follower | RoleView::Deposed { .. });
            let patience = self.timing.patience(rank(&self.followers, &self.me.node));
            if !candidate || now - since < patience {
                continue;
            }
            let attempt = Instant::now();
            match self.leases.claim(&self.region, encode(&self.me), observed.revision).await {
                Claim::Won(revision) => {
                    info!(region = %self.region, waited_ms = (now - since).as_millis() as u64, "claimed the lease");
                    return Some((revision, attempt));
                }
                Claim::Lost => seen = None,
                Claim::Failed(e) => warn!(error = %e, "claiming the lease failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::followers::Report;

    /// The holder stops before any follower may claim: the holder's deadline runs from
    /// when it sent its renewal; a follower's patience from when it saw the change (later).
    #[test]
    fn the_holder_stops_before_a_follower_may_claim() {
        let cfg = NodeConfig::default();
        let t = Timing::of(&cfg);
        assert!(t.deadline < t.patience(0), "{t:?}");
        assert!(t.renew < t.deadline, "a renewal may fail once without the holder stopping");
        assert!(t.ttl <= Duration::from_secs(4), "the defaults resume writes within 5 s of a leader's death");
    }

    #[test]
    fn the_most_up_to_date_live_follower_ranks_first_ties_by_name() {
        let f = Followers::default();
        for (node, log_seq) in [("us-east-3", 7), ("us-east-2", 9), ("us-east-4", 9)] {
            f.record(Report { node: node.into(), log_seq, token: "v1:".into() });
        }
        assert_eq!(rank(&f, "us-east-2"), 0);
        assert_eq!(rank(&f, "us-east-4"), 1);
        assert_eq!(rank(&f, "us-east-3"), 2);
        assert_eq!(rank(&f, "us-east-9"), 3, "a node without a report goes last");
    }
}
