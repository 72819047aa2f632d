//! The worker's upkeep steps, beside writes and stream entries: repairs from
//! anti-entropy ([`crate::anti_entropy`]), tombstone collection ([`crate::collect`]) and
//! a writer's marks (`concord_engine::marks`). Each is one engine step with its loads and
//! its commit, like any other, run between appends (never with one in flight).

use concord_engine::{Alert, WriteOp};
use concord_transport::RegionLog;
use tokio::sync::{mpsc, oneshot};

use crate::anti_entropy::{RepairRequest, Repaired};
use crate::error::NodeError;
use crate::streams::StreamControl;
use crate::worker::{Worker, WriteRequest};

/// Registers that may hold collectable tombstones, found by a scan of the store.
pub struct CollectRequest {
    pub keys: Vec<concord_engine::DocKey>,
    /// How many tombstones were collected.
    pub reply: oneshot::Sender<Result<u64, NodeError>>,
}

impl<L: RegionLog, S: StreamControl> Worker<L, S> {
    /// Merge a repair from a peer's state (anti-entropy), then answer its sender.
    pub(crate) async fn repair(&mut self, request: RepairRequest) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        let RepairRequest { repair, reply } = request;
        let out = self
            .step(move |e, s| {
                let prepared = e.prepare_repair(repair, now);
                let facts = s.load(prepared.needs())?;
                Ok(e.apply_repair(prepared, &facts)?)
            })
            .await?;
        let mut done = Repaired::default();
        for alert in &out.alerts {
            match alert {
                Alert::RepairRefused { .. } => done.refused += 1,
                Alert::Lifted { origin, to, .. } => done.lifted.push((origin.clone(), *to)),
                _ => {}
            }
        }
        self.after(out);
        let _ = reply.send(Ok(done));
        Ok(())
    }

    /// Collect what is stable among the candidates, then answer how many went.
    pub(crate) async fn collect(&mut self, request: CollectRequest) -> Result<(), NodeError> {
        let CollectRequest { keys, reply } = request;
        let out = self
            .step(move |e, s| {
                let prepared = e.prepare_collect(keys);
                let facts = s.load(prepared.needs())?;
                Ok(e.apply_collect(prepared, &facts))
            })
            .await?;
        let collected = out.stats.tombstones_collected;
        self.after(out);
        let _ = reply.send(Ok(collected));
        Ok(())
    }

    /// A writer marks when it is due ([`concord_engine::marks`]): a write of its own, whose
    /// answer nobody waits for.
    pub(crate) async fn mark_if_due(&mut self) -> Result<(), NodeError> {
        if !self.engine().mark_due(self.clock.now_ms(), self.mark_interval_ms) || !self.engine().takes_writes() {
            return Ok(());
        }
        let (reply, _) = oneshot::channel();
        self.write(vec![WriteRequest { op: WriteOp::Mark, resolves: None, reply }]).await
    }
}

pub(crate) async fn next_repair(repairs: &mut Option<mpsc::Receiver<RepairRequest>>) -> Option<RepairRequest> {
    match repairs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn next_collect(collects: &mut Option<mpsc::Receiver<CollectRequest>>) -> Option<CollectRequest> {
    match collects {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
