//! A seeded simulation of the node runtime, without NATS.
//!
//! Three regions, each a real [`Worker`] (the task that runs the engine: tokio, redb in
//! blocking threads, appends with retries) over an in-memory log ([`MemoryLog`]) and a
//! real local store. (The engine's rules under faults are `concord-sim`'s job; this
//! checks the runtime that executes them.) Random writes (LWW puts and deletes on a few shared keys, document
//! counter increments and property sets) go to random regions, while changesets are
//! delivered between regions in random interleavings, with duplicates (older entries
//! re-sent), as the mirrors would deliver them (in order per origin log: JetStream keeps
//! each log's order). After everything is delivered, every region must hold identical
//! values (the whole LWW version: value, HLC, origin and vector) and identical documents
//! (same JSON, same Automerge heads), and the counter must be the sum of all increments.
//!
//! A failure prints the seed: reproduce with `CONCORD_SIM_SEED=<seed> cargo test -p
//! concord-node --test simulation`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::doc::{self, DocOp, PathElem};
use concord_core::ids::{Origin, RegionId};
use concord_engine::{Engine, EngineConfig, StartAs, WriteOp};
use concord_node::metrics::Metrics;
use concord_node::streams::Manual;
use concord_node::view::Watches;
use concord_node::worker::{Limits, Worker, WriteRequest};
use concord_storage::Store;
use concord_transport::memory::MemoryLog;
use concord_transport::{LogEntry, RegionLog};
use tokio::sync::{mpsc, oneshot, watch};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const KEYS: usize = 5;
const STEPS: usize = 300;
const SEEDS_PER_RUN: u64 = 4;

/// xorshift64*: small, seedable, good enough to shuffle a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Region {
    name: RegionId,
    store: Store,
    log: Arc<MemoryLog>,
    writes: mpsc::Sender<WriteRequest>,
    inbound: mpsc::Sender<(String, LogEntry)>,
    applied: watch::Receiver<concord_core::vv::VersionVector>,
    /// For each other region: how far its log was delivered here.
    delivered: HashMap<String, u64>,
    task: tokio::task::JoinHandle<Result<(), concord_node::NodeError>>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mirror(region: &str) -> String {
    format!("MIRROR_{region}")
}

async fn start_region(name: &str, seed: u64, shutdown: watch::Receiver<bool>) -> Region {
    let dir = TempDir(std::env::temp_dir().join(format!("concord-sim-{}-{seed}-{name}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let store = Store::open(&dir.0).unwrap();
    let region = RegionId::new(name).unwrap();
    let log = Arc::new(MemoryLog::default());
    let mut streams: std::collections::BTreeMap<String, RegionId> =
        REGIONS.iter().filter(|r| **r != name).map(|r| (mirror(r), RegionId::new(*r).unwrap())).collect();
    streams.insert(format!("LOG_{name}"), region.clone());
    let cfg = EngineConfig::new(region.clone(), format!("LOG_{name}"), streams);
    let engine = Engine::open(cfg, store.durable().unwrap(), StartAs::Leader).unwrap();
    let (watches, views) = Watches::new(&engine, "sync");
    let limits = Limits {
        batch_changes_max: 64,
        batch_bytes_max: 1 << 20,
        // Every queued write may start another append while some are in flight.
        pipeline_batch_min: 1,
        append_deadline: Duration::from_secs(5),
        inbound_entries_max: 1000,
        inbound_bytes_max: 16 << 20,
        read_bytes_max: 16 << 20,
    };
    let worker = Worker::new(engine, store.clone(), log.clone(), Manual, Arc::new(Metrics::default()), watches, limits);
    let (writes, writes_rx) = mpsc::channel(1024);
    let (inbound, inbound_rx) = mpsc::channel(1024);
    let task = tokio::spawn(worker.run(writes_rx, inbound_rx, shutdown));
    let applied = views.applied;
    Region { name: region, store, log, writes, inbound, applied, delivered: HashMap::new(), task, _dir: dir }
}

fn random_op(rng: &mut Rng) -> (WriteOp, u64) {
    let key = format!("k{}", rng.below(KEYS));
    match rng.below(10) {
        0..=4 => (WriteOp::Put { bucket: "kv".into(), key, value: format!("v{}", rng.next() % 1000).into() }, 0),
        5 => (WriteOp::Delete { bucket: "kv".into(), key }, 0),
        6..=7 => {
            let by = 1 + rng.below(5) as i64;
            let ops = vec![DocOp::Inc { path: vec![PathElem::Key("count".into())], by }];
            (WriteOp::Doc { bucket: "docs".into(), key: "shared".into(), ops }, by as u64)
        }
        _ => {
            let prop = format!("p{}", rng.below(3));
            let ops = vec![DocOp::Set { path: vec![PathElem::Key(prop)], value: serde_json::json!(rng.next() % 100) }];
            (WriteOp::Doc { bucket: "docs".into(), key: "shared".into(), ops }, 0)
        }
    }
}

/// Deliver `src`'s log to `dst` up to `upto`, re-sending up to three older entries.
async fn deliver(regions: &mut [Region], dst: usize, src: usize, upto: u64, rng: &mut Rng) {
    let src_name = regions[src].name.to_string();
    let done = regions[dst].delivered.get(&src_name).copied().unwrap_or(0);
    if upto <= done {
        return;
    }
    let from = done.saturating_sub(rng.below(4) as u64).max(1);
    let entries = regions[src].log.read(from, upto, usize::MAX).await.unwrap().entries;
    for e in entries {
        regions[dst].inbound.send((mirror(&src_name), e)).await.unwrap();
    }
    regions[dst].delivered.insert(src_name, upto);
}

/// Write, and check that the acknowledgement comes after the applied vector covers the
/// write: the API answers a write with the session token of `applied` as it is then, so
/// an answer sent before it is published would give a token without the write (the
/// fault suite caught that once: seed 2, a read-your-writes read went back in time).
async fn write(region: &Region, op: WriteOp) -> bool {
    let (tx, rx) = oneshot::channel();
    region.writes.send(WriteRequest { op, resolves: None, reply: tx }).await.unwrap();
    match rx.await.unwrap() {
        Ok(ack) => {
            if let Some(seq) = ack.seq {
                let applied = region.applied.borrow().get(&ack.origin);
                assert!(
                    applied >= seq,
                    "{} acknowledged {}:{seq} while applied showed {applied}",
                    region.name,
                    ack.origin
                );
            }
            true
        }
        Err(_) => false,
    }
}

async fn run(seed: u64) {
    let mut rng = Rng(seed.max(1));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut regions = Vec::new();
    for name in REGIONS {
        regions.push(start_region(name, seed, shutdown.clone()).await);
    }
    // The counter is created once and delivered everywhere before anyone increments it.
    let create = vec![DocOp::Inc { path: vec![PathElem::Key("count".into())], by: 0 }];
    assert!(write(&regions[0], WriteOp::Doc { bucket: "docs".into(), key: "shared".into(), ops: create }).await);
    for dst in 1..3 {
        let last = regions[0].log.last_seq().await.unwrap();
        deliver(&mut regions, dst, 0, last, &mut rng).await;
    }
    // Delivery is asynchronous: wait until both applied it, or an increment there could
    // create a second counter concurrently (a conflict, and one counter's increments lose).
    for dst in 1..3 {
        let mut applied = regions[dst].applied.clone();
        let origin = Origin::new(regions[0].name.clone(), 1);
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|vv| vv.get(&origin) >= 1))
            .await
            .expect("the counter's creation was applied")
            .unwrap();
    }

    let mut total_inc = 0u64;
    for _ in 0..STEPS {
        if rng.below(3) == 0 {
            let (dst, src) = (rng.below(3), rng.below(3));
            if dst != src {
                let last = regions[src].log.last_seq().await.unwrap();
                let done = regions[dst].delivered.get(regions[src].name.as_str()).copied().unwrap_or(0);
                let upto = done + rng.below((last - done) as usize + 1) as u64;
                deliver(&mut regions, dst, src, upto, &mut rng).await;
            }
        } else {
            // A few writes to one region at once, so group commit batches them.
            let r = rng.below(3);
            let mut replies = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let (op, inc) = random_op(&mut rng);
                let (tx, rx) = oneshot::channel();
                regions[r].writes.send(WriteRequest { op, resolves: None, reply: tx }).await.unwrap();
                replies.push((rx, inc));
            }
            for (rx, inc) in replies {
                assert!(rx.await.unwrap().is_ok(), "seed {seed}: a write failed");
                total_inc += inc;
            }
        }
    }
    // Deliver everything, in a random order of pairs.
    let mut pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|d| (0..3).map(move |s| (d, s))).filter(|(d, s)| d != s).collect();
    for i in (1..pairs.len()).rev() {
        pairs.swap(i, rng.below(i + 1));
    }
    for (dst, src) in pairs {
        let last = regions[src].log.last_seq().await.unwrap();
        deliver(&mut regions, dst, src, last, &mut rng).await;
    }
    // Wait until every region applied every origin.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let vectors: Vec<_> = regions.iter().map(|r| r.applied.borrow().clone()).collect();
        if vectors.windows(2).all(|w| w[0] == w[1]) && vectors[0].len() == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "seed {seed}: applied vectors never met: {vectors:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for k in 0..KEYS {
        let versions: Vec<_> = regions.iter().map(|r| r.store.get_kv("kv", &format!("k{k}")).unwrap()).collect();
        assert!(versions.windows(2).all(|w| w[0] == w[1]), "seed {seed}: k{k} differs: {versions:?}");
    }
    let docs: Vec<_> =
        regions.iter().map(|r| doc::load_doc(&r.store.get_doc("docs", "shared").unwrap().unwrap()).unwrap()).collect();
    let json: Vec<_> = docs.iter().map(doc::to_json).collect();
    assert!(json.windows(2).all(|w| w[0] == w[1]), "seed {seed}: documents differ: {json:?}");
    let heads: Vec<_> = docs
        .iter()
        .map(|d| {
            let mut h = d.get_heads();
            h.sort();
            h
        })
        .collect();
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "seed {seed}: document heads differ");
    assert_eq!(json[0]["count"].as_u64().unwrap(), total_inc, "seed {seed}: the counter lost or doubled increments");
    for r in &regions {
        assert_eq!(r.store.pending_docs().unwrap(), 0, "seed {seed}: changes still wait for dependencies");
    }

    let _ = shutdown_tx.send(true);
    for r in regions {
        drop(r.writes);
        r.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_delivery_with_duplicates_converges() {
    let first = std::env::var("CONCORD_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let seeds: Vec<u64> = if std::env::var("CONCORD_SIM_SEED").is_ok() {
        vec![first]
    } else {
        (0..SEEDS_PER_RUN).map(|i| first.wrapping_add(i * 7919)).collect()
    };
    for seed in seeds {
        println!("simulation seed {seed} (reproduce: CONCORD_SIM_SEED={seed})");
        run(seed).await;
    }
}
