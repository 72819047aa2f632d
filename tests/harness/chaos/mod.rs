//! A seeded fault run over a real local deployment (`concord cluster up`: three
//! regions, a follower in each, their NATS servers and the backbone), and its checker.
//!
//! A run: start the deployment; write the setup keys and create the shared counter;
//! run the workload ([`workload`]) while faults drawn from the seed ([`faults`]) come
//! and go; heal everything; wait for convergence; capture the final state ([`state`]);
//! check the history against it ([`check`]). The history (`history.jsonl`) and the final
//! state (`final.json`) are written to the run's directory, so `concord-chaos check DIR`
//! judges a run again from those two files alone.
//!
//! The seed fixes the workload's choices and the fault schedule; the processes, NATS and
//! the operating system still interleave as they will, so a seed replays the same
//! faults, not the same microsecond timing.

pub mod check;
pub mod faults;
pub mod history;
pub mod rng;
pub mod state;
pub mod summary;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use history::{Event, Meta, Recorder};
use rng::Rng;
use state::FinalState;

use crate::Cluster;

pub const BUCKET: &str = "chaos";
pub const COUNTER: &str = "counter";
pub const COUNTER_PROP: &str = "n";
pub const DOCS: &[&str] = &["doc-a", "doc-b"];
pub const OWN_KEYS: u64 = 4;
pub const SHARED_KEYS: u64 = 4;
pub const REGIONS: &[&str] = &["us-east", "eu-west", "ap-south"];
/// Setup keys each region writes once (never overwritten).
const FIXED_PER_REGION: usize = 5;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// How long the workload runs with faults.
    pub workload: Duration,
    /// Clients per region.
    pub clients_per_region: usize,
    /// Where the history and final state go (created).
    pub out: PathBuf,
    /// A test-only mutation for every node (`drop-changeset`; needs a binary built with
    /// the `mutations` feature, named by `CONCORD_BIN`).
    pub mutation: Option<String>,
    /// The lease TTL of the nodes (a pause lasts longer).
    pub lease_ttl_ms: u64,
    /// The `concord` binary (default: the harness's, `$CONCORD_BIN` or target/debug).
    pub bin: Option<PathBuf>,
}

impl RunOptions {
    pub fn new(seed: u64, out: PathBuf) -> RunOptions {
        RunOptions {
            seed,
            workload: Duration::from_secs(12),
            clients_per_region: 2,
            out,
            mutation: None,
            lease_ttl_ms: 3_000,
            bin: None,
        }
    }
}

pub struct RunReport {
    pub seed: u64,
    pub out: PathBuf,
    pub problems: Vec<String>,
    pub ops: usize,
    pub acked: usize,
    pub faults: usize,
    pub converge_ms: u64,
    pub took: Duration,
    /// Messages the nodes read back from an origin's log to fill a gap, in all.
    pub repaired: u64,
}

/// The command that replays `seed` (and checks it).
pub fn repro_command(seed: u64, mutation: Option<&str>) -> String {
    let m = mutation.map(|m| format!(" --mutation {m}")).unwrap_or_default();
    format!("cargo build -p concord && cargo run -q -p concord-tests --bin concord-chaos -- run --seed {seed}{m}")
}

/// Run one seeded fault run and check it.
pub async fn run(opts: &RunOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let rec = Recorder::create(&opts.out.join("history.jsonl"))?;
    let lease = opts.lease_ttl_ms.to_string();
    let mut env: Vec<(&str, &str)> = vec![("CONCORD_LEASE_TTL_MS", &lease)];
    if let Some(m) = &opts.mutation {
        env.push(("CONCORD_TEST_MUTATION", m));
    }
    let bin = opts.bin.clone().unwrap_or_else(crate::concord_bin);
    let cluster = Cluster::start_using(&bin, REGIONS, 1, 1, &env);
    let nodes: Vec<(String, String)> = cluster.nodes.iter().map(|(n, u)| (n.clone(), u.clone())).collect();
    for (_, url) in &nodes {
        cluster.wait_ready(url, Duration::from_secs(60)).await;
    }
    let regions: Vec<String> = REGIONS.iter().map(|r| r.to_string()).collect();
    let fixed = setup(&cluster, &nodes).await?;
    rec.record(&Event::Meta(Meta {
        seed: opts.seed,
        regions: regions.clone(),
        nodes: nodes.iter().map(|(n, _)| n.clone()).collect(),
        fixed,
        workload_ms: opts.workload.as_millis() as u64,
        mutation: opts.mutation.clone(),
    }));

    // The workload, with faults.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, region) in regions.iter().cycle().take(regions.len() * opts.clients_per_region).enumerate() {
        let writes_to: Vec<(String, String)> =
            nodes.iter().filter(|(n, _)| n.starts_with(&format!("{region}-"))).cloned().collect();
        let client =
            workload::Client::new(i, region.clone(), writes_to, nodes.clone(), opts.seed, rec.clone(), stop.clone());
        tasks.push(tokio::spawn(client.run()));
    }
    let injector = faults::Injector {
        dir: &cluster.dir.0,
        bin: &bin,
        rec: &rec,
        regions: &regions,
        nodes: &nodes,
        lease_ttl: Duration::from_millis(opts.lease_ttl_ms),
    };
    let mut rng = Rng::new(opts.seed);
    let faults_until = Instant::now() + opts.workload;
    tokio::time::sleep(Duration::from_millis(rng.between(300, 1_000))).await;
    while Instant::now() < faults_until {
        injector.one(&mut rng).await;
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1_000))).await;
    }
    rec.note("faults end: healing everything");
    injector.heal_all().await;
    // Writes go on a little after the heal, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    rec.note("workload stopped; waiting for convergence");

    let (converged, converge_ms) = wait_converged(&nodes, Duration::from_secs(120)).await;
    rec.note(format!("converged: {converged} after {converge_ms} ms"));
    let events = history::read(&opts.out.join("history.jsonl"))?;
    let final_state = capture(&cluster, &nodes, &events, converged, converge_ms).await;
    std::fs::write(opts.out.join("final.json"), serde_json::to_vec_pretty(&final_state)?)?;
    let problems = check::check(&events, &final_state);
    std::fs::write(opts.out.join("problems.txt"), problems.join("\n"))?;
    if !problems.is_empty() {
        keep_logs(&cluster.dir.0, &opts.out);
    }
    let ops: Vec<&history::Op> =
        events.iter().filter_map(|e| if let Event::Op(o) = e { Some(o) } else { None }).collect();
    Ok(RunReport {
        seed: opts.seed,
        out: opts.out.clone(),
        problems,
        ops: ops.len(),
        acked: ops.iter().filter(|o| o.result == history::Outcome::Ok).count(),
        faults: events
            .iter()
            .filter(|e| matches!(e, Event::Fault(f) if matches!(f.kind.as_str(), "partition" | "delay" | "kill" | "pause" | "skew") && f.arg != Some(0)))
            .count(),
        converge_ms,
        took: started.elapsed(),
        repaired: final_state.nodes.values().filter_map(|n| n.counters.get("gap_repair_messages_total")).sum(),
    })
}

/// Check a recorded run again: `dir` holds `history.jsonl` and `final.json`.
pub fn check_dir(dir: &Path) -> anyhow::Result<Vec<String>> {
    let events = history::read(&dir.join("history.jsonl"))?;
    let state: FinalState = serde_json::from_slice(&std::fs::read(dir.join("final.json"))?)?;
    Ok(check::check(&events, &state))
}

/// Each region writes its fixed keys; us-east creates the shared counter; then wait
/// until every node has all of it. Returns the fixed keys and values.
async fn setup(cluster: &Cluster, nodes: &[(String, String)]) -> anyhow::Result<Vec<(String, String)>> {
    let client = crate::client_builder().timeout(Duration::from_secs(20)).build()?;
    let mut fixed = Vec::new();
    for region in REGIONS {
        let leader = crate::load::writing_node(cluster, region, "", Duration::from_secs(60)).await;
        let url = &cluster.nodes[&leader];
        if *region == REGIONS[0] {
            let body = serde_json::json!({"ops": [{"op": "inc", "path": [COUNTER_PROP], "by": 0}]});
            let r = client.post(format!("{url}/v1/docs/{BUCKET}/{COUNTER}")).json(&body).send().await?;
            anyhow::ensure!(r.status() == 200, "creating the counter: {}", r.text().await?);
        }
        for i in 0..FIXED_PER_REGION {
            let (key, value) = (format!("fixed/{region}-{i}"), format!("{region}-fixed-{i}"));
            let r = client.put(format!("{url}/v1/kv/{BUCKET}/{}", crate::seg(&key))).body(value.clone()).send().await?;
            anyhow::ensure!(r.status() == 200, "setup write {key}: {}", r.text().await?);
            fixed.push((key, value));
        }
    }
    let (converged, ms) = wait_converged(nodes, Duration::from_secs(60)).await;
    anyhow::ensure!(converged, "the setup did not reach every node within {ms} ms");
    Ok(fixed)
}

/// Wait until every node answers with the same applied vector and no lag.
pub async fn wait_converged(nodes: &[(String, String)], timeout: Duration) -> (bool, u64) {
    let client = crate::client_builder().timeout(Duration::from_secs(2)).build().unwrap();
    let started = Instant::now();
    loop {
        let mut applied = Vec::new();
        let mut behind = false;
        for (_, url) in nodes {
            match client.get(format!("{url}/v1/status")).send().await {
                Ok(r) => match r.json::<concord_api::StatusBody>().await {
                    Ok(s) => {
                        behind |= !s.lag.values().all(concord_api::StreamLag::caught_up);
                        applied.push(s.applied);
                    }
                    Err(_) => behind = true,
                },
                Err(_) => behind = true,
            }
        }
        if !behind && applied.windows(2).all(|w| w[0] == w[1]) {
            return (true, started.elapsed().as_millis() as u64);
        }
        if started.elapsed() > timeout {
            return (false, started.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many passes the final state's capture makes at most.
const CAPTURE_TRIES: usize = 5;

async fn capture(
    cluster: &Cluster,
    nodes: &[(String, String)],
    events: &[Event],
    converged: bool,
    converge_ms: u64,
) -> FinalState {
    let mut registers: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for e in events {
        match e {
            Event::Meta(m) => registers.extend(m.fixed.iter().map(|(k, _)| k.clone())),
            Event::Op(o) if matches!(o.kind, history::OpKind::Put | history::OpKind::Del | history::OpKind::Read) => {
                registers.insert(o.key.clone());
            }
            _ => {}
        }
    }
    let registers: Vec<String> = registers.into_iter().collect();
    let docs: Vec<String> = DOCS.iter().chain([&COUNTER]).map(|d| d.to_string()).collect();
    let mut state = FinalState { converged, converge_ms, ..FinalState::default() };
    // Leaders go on marking their logs for a while after the last write (tombstone
    // collection), so the nodes are read until one pass finds them at the same point
    // (a few tries; the last pass stands, whatever it found).
    for attempt in 0..CAPTURE_TRIES {
        state.nodes.clear();
        for (name, url) in nodes {
            state.nodes.insert(name.clone(), state::capture_node(url, &registers, &docs).await);
        }
        let applied: Vec<_> = state.nodes.values().map(|n| n.status.as_ref().map(|s| &s.applied)).collect();
        if !converged || applied.windows(2).all(|w| w[0] == w[1]) || attempt + 1 == CAPTURE_TRIES {
            break;
        }
        wait_converged(nodes, Duration::from_secs(10)).await;
    }
    for region in REGIONS {
        match state::read_log(&cluster.nats(region), region).await {
            Ok(log) => {
                state.logs.insert(region.to_string(), log);
            }
            Err(e) => {
                if let Some(n) = state.nodes.values_mut().next() {
                    n.errors.push(format!("reading {region}'s log: {e}"));
                }
            }
        }
    }
    state
}

/// Copy the deployment's process logs next to a failed run's history.
fn keep_logs(cluster_dir: &Path, out: &Path) {
    let Ok(entries) = std::fs::read_dir(cluster_dir.join("logs")) else { return };
    let dest = out.join("logs");
    let _ = std::fs::create_dir_all(&dest);
    for e in entries.flatten() {
        let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
    }
}
