//! Anti-entropy: replicas compare digests of their state and repair what differs
//! (DESIGN.md, "Anti-entropy"), so what no log holds any more still reaches every
//! replica.
//!
//! A **round** compares this replica with a peer node: the peer sends its range-hash
//! tree (`concord_core::merkle`) with the applied vector it was built at; the replica
//! builds its own and descends both from the root to the leaves that differ (equal
//! states cost one comparison); it reads the peer's entries of those leaves, page by
//! page, and hands every register and document that differs from its own to the worker
//! as a repair (`concord_engine::Repair`), which merges them like changes from a log.
//!
//! **What the peer no longer holds.** Each page of entries comes with the peer's applied
//! vector as of that page's read (a store can go back: a crash loses its last unsynced
//! commits), and the round keeps the meet of the tree's and every page's so far: what the
//! peer's state reflects at least. A local value whose change the peer had applied
//! (within that vector) and that the peer's entry does not hold was superseded there,
//! and goes here too. A round that read every page also hands over the registers of the
//! differing leaves that this replica holds and the peer does not, when they hold such a
//! value ([`Repair::kv_absent`]): a delete that every region has collected since leaves
//! nothing else behind, and without this a replica that missed it (its log no longer
//! holds it) would keep the deleted value for ever. A peer whose pages do not carry the
//! vector (a node that predates it) has nothing dropped and nothing lifted.
//!
//! **Lifting gaps.** A round that ran to the end, every page read, no entry refused and
//! every repair committed, leaves this replica holding the effects of everything the
//! peer's state reflected: for each entry, either the two were equal then, or the peer's
//! entry (as of then or later) was merged here, and what the peer had applied and no
//! longer holds was dropped here (the engine's `repair` module). So for each origin
//! the peer had applied further, the applied sequence may move up to what the peer had
//! applied of it (no further than a gap's end, or a changeset waiting for a mark's
//! context: those apply as usual): the round hands the worker that lift, and the waiting
//! changesets apply. An origin whose last changesets no log holds any more shows no gap,
//! and is lifted all the same (`concord_engine::lifts`). A gap is lifted only once it has stood
//! `anti_entropy_gap_after_s` (or the periodic interval, when gap rounds are off), so
//! that the gap repair from the origins' logs, which brings the changesets themselves
//! (their marks included), has had its chance. The peer's tree also says which origins it
//! found void from which sequence on (a judgement of the log a replica cannot make
//! when retention removed the message before the void changeset): what waits here from
//! there on is dead-lettered, and no gap waits for ever behind it.
//!
//! **When.** A leader runs a round against every other region's leader every
//! `anti_entropy_interval_s` (0: never); any replica whose gap has stood
//! `anti_entropy_gap_after_s` (after the gap repair from the origins' logs had its
//! chance) runs one against the leader of the gap's origin region. A round reads at most
//! [`ROUND_BYTES_MAX`] of entries; one that stops there lifts nothing, and the next round
//! starts from what is left.
//!
//! Peers are found through their region's status (`concord.api.<region>.status`, which
//! any node of the region answers with the region's leader) and asked on per-node
//! subjects, so one round talks to one peer ([`serve`]).

pub mod serve;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord_api::StatusBody;
use concord_core::changeset::stored;
use concord_core::ids::{Origin, RegionId};
use concord_core::merkle::{EntriesReply, EntriesRequest, Table, TreeReply};
use concord_core::vv::VersionVector;
use concord_engine::{Gap, Repair, RoleView, applied_by_peer, lifts};
use concord_storage::{Store, content_for_hash};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::NodeError;
use crate::metrics::{self, Metrics};
use crate::view::Views;

/// A repair handed to the worker, answered once committed.
pub struct RepairRequest {
    pub repair: Repair,
    pub reply: oneshot::Sender<Result<Repaired, NodeError>>,
}

/// What the engine did with a repair.
#[derive(Debug, Default)]
pub struct Repaired {
    /// The peer's entries it refused (a document that does not load, too many changes).
    pub refused: u64,
    /// The origins it lifted, and how far.
    pub lifted: Vec<(Origin, u64)>,
}

/// The body of a tree request that asks for the peer's void judgements (a node that
/// predates them ignores the body and answers without).
pub const TREE_WITH_VOID: u8 = 1;
/// Most bytes of entries one round reads.
pub const ROUND_BYTES_MAX: u64 = 256 << 20;
/// Most bytes of entries one page asks for.
const PAGE_BYTES_MAX: u64 = 1 << 20;
/// Most entries in one repair handed to the worker (one engine step).
const REPAIR_ENTRIES_MAX: usize = 512;
/// How long a peer has to answer one request (a tree is a scan of its store).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gaps are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two rounds for the same gap.
const GAP_RETRY_MAX: Duration = Duration::from_secs(300);

pub fn subject(region: &str, node: &str, op: &str) -> String {
    format!("concord.ae.{region}.{node}.{op}")
}

/// What a round needs.
#[derive(Clone)]
pub struct Ctx {
    pub client: async_nats::Client,
    pub store: Store,
    pub region: RegionId,
    pub node: String,
    pub remote_regions: Vec<RegionId>,
    pub views: Views,
    pub repairs: mpsc::Sender<RepairRequest>,
    pub metrics: Arc<Metrics>,
    pub interval: Option<Duration>,
    pub gap_after: Option<Duration>,
}

/// How a round ended.
#[derive(Debug, Default)]
pub struct Round {
    pub peer: String,
    /// Every page was read and every repair committed.
    pub complete: bool,
    pub differing_leaves: usize,
    pub repaired: u64,
    pub refused: u64,
    /// Keys this replica holds in the differing leaves and the peer does not, holding
    /// a value the peer had applied (handed over to be dropped).
    pub absent: u64,
    /// The origins the engine lifted, and how far: of those the round handed over
    /// (`concord_engine::lifts`, a gap's origin once the gap has stood), the ones past what the origin's
    /// stream has gone by.
    pub lifted: Vec<(Origin, u64)>,
}

/// Run rounds until shutdown (see the module doc).
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let mut next_periodic = ctx.interval.map(|i| Instant::now() + i);
    // Per (origin, applied) of a gap: since when it stands.
    let mut standing: BTreeMap<(Origin, u64), Instant> = BTreeMap::new();
    // How long a gap stands before a round may lift it: the gap repair from the origins'
    // logs has its chance first (a lift would skip what it brings, marks included).
    let ripe_after = ctx.gap_after.or(ctx.interval).unwrap_or_default();
    // Per (origin, applied) of a gap: when to try it next, and the wait after that.
    let mut gap_rounds: BTreeMap<(Origin, u64), (Instant, Duration)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        let now = Instant::now();
        let gaps: Vec<Gap> = ctx.views.view.borrow().gaps.clone();
        standing.retain(|(o, a), _| gaps.iter().any(|g| g.origin == *o && g.applied == *a));
        for gap in &gaps {
            standing.entry((gap.origin.clone(), gap.applied)).or_insert(now);
        }
        let ripe: BTreeSet<Origin> =
            standing.iter().filter(|(_, since)| now >= **since + ripe_after).map(|((o, _), _)| o.clone()).collect();
        if let (Some(at), Some(interval)) = (next_periodic, ctx.interval)
            && now >= at
        {
            if leads(&ctx.views) {
                for region in &ctx.remote_regions {
                    round_logged(&ctx, region, &ripe, "periodic").await;
                }
            }
            next_periodic = Some(Instant::now() + interval);
        }
        let Some(gap_after) = ctx.gap_after else { continue };
        gap_rounds.retain(|(o, a), _| gaps.iter().any(|g| g.origin == *o && g.applied == *a));
        for gap in gaps {
            let due = gap_rounds.entry((gap.origin.clone(), gap.applied)).or_insert((now + gap_after, gap_after));
            if now < due.0 {
                continue;
            }
            let lifted = round_logged(&ctx, &gap.origin.region, &ripe, "a gap stands").await;
            due.1 = if lifted { gap_after } else { (due.1 * 2).min(GAP_RETRY_MAX) };
            due.0 = Instant::now() + due.1;
        }
    }
}

fn leads(views: &Views) -> bool {
    matches!(views.view.borrow().role, RoleView::Leader { .. })
}

/// A round against `region`'s leader, logged and counted; whether it lifted anything.
async fn round_logged(ctx: &Ctx, region: &RegionId, ripe: &BTreeSet<Origin>, why: &str) -> bool {
    match round(ctx, region, ripe).await {
        Ok(r) => {
            metrics::inc(&ctx.metrics.anti_entropy_rounds_total);
            if r.repaired > 0 || r.absent > 0 || !r.lifted.is_empty() || !r.complete {
                info!(%region, peer = r.peer, why, complete = r.complete, leaves = r.differing_leaves,
                    repaired = r.repaired, refused = r.refused, absent = r.absent, lifted = ?r.lifted,
                    "anti-entropy round");
            }
            !r.lifted.is_empty()
        }
        Err(e) => {
            metrics::inc(&ctx.metrics.anti_entropy_failures_total);
            warn!(%region, why, error = %e, "anti-entropy round failed; trying again later");
            false
        }
    }
}

/// Compare this replica with `region`'s leader and repair what differs (module doc);
/// a gap is lifted only once its origin is in `ripe` (it has stood long enough).
pub async fn round(ctx: &Ctx, region: &RegionId, ripe: &BTreeSet<Origin>) -> Result<Round, String> {
    let peer = leader_of(&ctx.client, region).await?;
    if peer == ctx.node {
        return Err("this node is the peer's region's leader".into());
    }
    // Asking for what a node that predates it does not send (it ignores the body).
    let tree_req = Bytes::from_static(&[TREE_WITH_VOID]);
    let theirs = TreeReply::decode(&ask(&ctx.client, &subject(region.as_str(), &peer, "tree"), tree_req).await?)
        .map_err(|e| format!("{peer}'s tree: {e}"))?;
    // A peer that sent its void judgements also reads a request for each page's vector.
    let with_applied = theirs.void_from.is_some();
    let store = ctx.store.clone();
    let (mine, _) = tokio::task::spawn_blocking(move || store.digest())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let leaves = mine.differing_leaves(&theirs.tree);
    let mut r = Round { peer: peer.clone(), differing_leaves: leaves.len(), ..Round::default() };
    let mut req = EntriesRequest { leaves, after: None, bytes_max: PAGE_BYTES_MAX, with_applied };
    let mut read = 0u64;
    // What the peer's state reflects at least: the tree's applied vector, met with every
    // page's (a store can go back: a crash loses its last unsynced commits). `None` once
    // a page did not say (a node that predates it): then nothing is dropped or lifted.
    let mut reflects = Some(theirs.applied.clone());
    let mut repair = Repair::default();
    // The peer's registers in the differing leaves (their record keys).
    let mut peer_kv: HashSet<Vec<u8>> = HashSet::new();
    r.complete = loop {
        if req.leaves.is_empty() {
            break true;
        }
        if read >= ROUND_BYTES_MAX {
            break false;
        }
        let bytes = ask(&ctx.client, &subject(region.as_str(), &peer, "entries"), Bytes::from(req.encode())).await?;
        read += bytes.len() as u64;
        let page = EntriesReply::decode(&bytes).map_err(|e| format!("{peer}'s entries: {e}"))?;
        reflects = match (reflects, &page.applied) {
            (Some(r), Some(a)) => Some(r.meet(a)),
            _ => None,
        };
        // A page's entries are judged against no more than what that page reflects.
        repair.peer_applied = reflects.clone().unwrap_or_default();
        for e in &page.entries {
            if e.table == Table::Kv {
                peer_kv.insert(e.key.clone());
            }
            if !differs(&ctx.store, e).await? {
                continue;
            }
            match to_repair(e, &mut repair) {
                Ok(()) => r.repaired += 1,
                Err(why) => {
                    r.refused += 1;
                    metrics::inc(&ctx.metrics.anti_entropy_refused_total);
                    warn!(peer, why, "an entry of the peer's state was refused");
                }
            }
            if repair.kv.len() + repair.docs.len() >= REPAIR_ENTRIES_MAX {
                let next = Repair { peer_applied: repair.peer_applied.clone(), ..Repair::default() };
                hand_over(ctx, std::mem::replace(&mut repair, next), &mut r.refused).await?;
            }
        }
        match page.next {
            Some(next) => req.after = Some(next),
            None => break true,
        }
    };
    hand_over(ctx, repair, &mut r.refused).await?;
    metrics::add(&ctx.metrics.anti_entropy_entries_repaired_total, r.repaired);
    // Lifting claims this replica holds all the peer held: not when an entry was refused,
    // nor before what the peer no longer holds was dropped here.
    let Some(reflects) = reflects.filter(|_| r.complete && r.refused == 0) else { return Ok(r) };
    if !drop_absent(ctx, &req.leaves, &peer_kv, &reflects, &mut r).await? || r.refused > 0 {
        return Ok(r);
    }
    let through = {
        let view = ctx.views.view.borrow();
        let mut through = lifts(&view.applied, &view.gaps, &reflects);
        through.retain(|(o, _)| ripe.contains(o) || !view.gaps.iter().any(|g| g.origin == *o));
        through
    };
    let void_from: Vec<(Origin, u64)> =
        theirs.void_from.iter().flat_map(|v| v.iter()).map(|(o, s)| (o.clone(), s)).collect();
    let done = hand_over(ctx, Repair { through, void_from, ..Repair::default() }, &mut r.refused).await?;
    r.lifted = done.lifted;
    Ok(r)
}

/// Hand the worker this replica's registers in `leaves` that the peer does not hold
/// (not in `peer_kv`) and that hold a value the peer had applied (within `reflects`): the
/// engine drops it. Whether every such register was handed over (the scan reads at most
/// [`ROUND_BYTES_MAX`]).
async fn drop_absent(
    ctx: &Ctx,
    leaves: &[usize],
    peer_kv: &HashSet<Vec<u8>>,
    reflects: &VersionVector,
    r: &mut Round,
) -> Result<bool, String> {
    if leaves.is_empty() {
        return Ok(true);
    }
    let mut req =
        EntriesRequest { leaves: leaves.to_vec(), after: None, bytes_max: PAGE_BYTES_MAX, with_applied: false };
    let mut read = 0u64;
    let mut absent = Vec::new();
    loop {
        if read >= ROUND_BYTES_MAX {
            return Ok(false);
        }
        let (s, q) = (ctx.store.clone(), req.clone());
        let page = tokio::task::spawn_blocking(move || s.entries_in(&q))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for e in page.entries.iter().filter(|e| e.table == Table::Kv && !peer_kv.contains(&e.key)) {
            read += (e.key.len() + e.value.len()) as u64;
            let register = stored::decode(&e.value).map_err(|e| format!("a local register: {e}"))?;
            if !register.versions().iter().any(|v| applied_by_peer(reflects, v)) {
                continue;
            }
            absent.push(doc_key(&e.key).map_err(|why| format!("a local register's key: {why}"))?);
            if absent.len() >= REPAIR_ENTRIES_MAX {
                r.absent += absent.len() as u64;
                let repair = Repair {
                    kv_absent: std::mem::take(&mut absent),
                    peer_applied: reflects.clone(),
                    ..Repair::default()
                };
                hand_over(ctx, repair, &mut r.refused).await?;
            }
        }
        if page.next.is_none() {
            break;
        }
        req.after = page.next;
    }
    r.absent += absent.len() as u64;
    let last = Repair { kv_absent: absent, peer_applied: reflects.clone(), ..Repair::default() };
    hand_over(ctx, last, &mut r.refused).await?;
    Ok(true)
}

/// Whether the peer's entry differs from what this replica holds.
async fn differs(store: &Store, e: &concord_core::merkle::RawEntry) -> Result<bool, String> {
    let (store, table, key) = (store.clone(), e.table, e.key.clone());
    let local = tokio::task::spawn_blocking(move || store.get_raw(table, &key))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(match local {
        None => true,
        Some(local) if local == e.value => false,
        Some(local) => content_for_hash(table, &local) != content_for_hash(table, &e.value),
    })
}

/// Check a peer's entry as any input from another region, and add it to `repair`.
fn to_repair(e: &concord_core::merkle::RawEntry, repair: &mut Repair) -> Result<(), String> {
    let k = doc_key(&e.key)?;
    match e.table {
        Table::Kv => repair.kv.push((k, stored::decode(&e.value).map_err(|e| format!("a register: {e}"))?)),
        // Loaded (defensively) by the engine, which leaves out one that does not load.
        Table::Docs => repair.docs.push((k, e.value.clone())),
        Table::Pending => repair.pending.push((
            k,
            concord_storage::decode_changes(&e.value).map_err(|e| format!("waiting document changes: {e}"))?,
        )),
    }
    Ok(())
}

/// The bucket and key of a store's record key (`bucket NUL key`), checked as any input.
fn doc_key(record_key: &[u8]) -> Result<concord_engine::DocKey, String> {
    let mut parts = record_key.splitn(2, |b| *b == 0);
    let (bucket, key) = (parts.next().unwrap_or_default(), parts.next().ok_or("a key without a bucket")?);
    concord_core::input::check_bucket(std::str::from_utf8(bucket).map_err(|_| "a bucket that is not UTF-8")?)
        .map_err(|e| e.to_string())?;
    concord_core::input::check_key(key).map_err(|e| e.to_string())?;
    Ok((String::from_utf8_lossy(bucket).into_owned(), String::from_utf8_lossy(key).into_owned()))
}

/// Hand a repair to the worker and wait until it is committed; what the engine refused
/// of it counts in `refused` (a round that had any lifts nothing).
async fn hand_over(ctx: &Ctx, repair: Repair, refused: &mut u64) -> Result<Repaired, String> {
    if repair.is_empty() {
        return Ok(Repaired::default());
    }
    let (tx, rx) = oneshot::channel();
    ctx.repairs.send(RepairRequest { repair, reply: tx }).await.map_err(|_| "the worker stopped")?;
    let done = rx.await.map_err(|_| "the worker stopped".to_string())?.map_err(|e| e.to_string())?;
    *refused += done.refused;
    Ok(done)
}

/// The name of `region`'s leader, from the region's status (any node of it answers).
async fn leader_of(client: &async_nats::Client, region: &RegionId) -> Result<String, String> {
    let body = ask(client, &format!("{}.status", crate::api::nats::group(region.as_str())), Bytes::new()).await?;
    let status: StatusBody = serde_json::from_slice(&body).map_err(|e| format!("{region}'s status: {e}"))?;
    if status.leader.is_empty() {
        return Err(format!("{region} has no leader now"));
    }
    Ok(status.leader)
}

/// A request, with a timeout; an answer whose `Concord-Status` is not 200 is an error.
async fn ask(client: &async_nats::Client, subject: &str, payload: Bytes) -> Result<Bytes, String> {
    let msg = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject.to_string(), payload))
        .await
        .map_err(|_| format!("{subject}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{subject}: {e}"))?;
    let status = msg.headers.as_ref().and_then(|h| h.get("Concord-Status")).map(|v| v.as_str().to_string());
    match status.as_deref() {
        None | Some("200") => Ok(msg.payload),
        Some(code) => Err(format!("{subject}: {code} {}", String::from_utf8_lossy(&msg.payload))),
    }
}
