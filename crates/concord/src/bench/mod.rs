//! `concord bench`: Concord's figures and its peers', measured in one run with the same
//! client code, concurrency and payloads. It starts everything it measures itself: a
//! one-region deployment (writes per durability level over HTTP and NATS, write latency
//! at half the write rate, reads from a follower, resident memory after N keys), the
//! peers (Redis `SET`/`GET` with its defaults and with `appendfsync always`, NATS
//! JetStream key/value `put` with its defaults and with `sync_interval: always`), and a
//! three-region deployment (writes that wait for other regions, replication lag under
//! load, catch-up after a partition, document merge). A table at the end; `--json FILE`
//! writes `{"results": [...], "peers": [...]}`; `--plots DIR` draws the lag distribution
//! and the throughput per durability level.

mod deploy;
mod load;
mod plot;
mod wire;

pub use load::bar;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_core::token;
use concord_core::vv::VersionVector;
use serde::Serialize;
use tokio::sync::mpsc;

use deploy::Deployment;
use load::{OnAnswer, Outcome, Plan};
use wire::Target;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short smoke run (seconds per figure, small backlogs): checks that everything
    /// runs, not how fast.
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the plots (SVG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Where the deployments and peers keep their data (emptied first).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Concurrent clients for every throughput figure.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Added to every port of the deployments (`concord cluster up --port-offset`).
    #[arg(long, default_value_t = 5000)]
    port_offset: u16,
    /// Seconds each throughput figure is measured (default: 15, or 2 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Keys written before resident memory is read (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    memory_keys: Option<u64>,
    /// How long a region is cut off for the catch-up figures (default 180 s; 5 s with --quick).
    #[arg(long)]
    cut_seconds: Option<u64>,
    /// Writes made while the region is cut off (default 500,000; 5,000 with --quick).
    #[arg(long)]
    backlog: Option<u64>,
    /// Which parts to run (default all): single, peers, regions.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    results: Vec<Figure>,
    peers: Vec<Figure>,
    /// How the run was made (quick or full, clients, seconds per figure).
    settings: BTreeMap<String, serde_json::Value>,
}

impl Report {
    fn result(&mut self, name: &str, value: f64, unit: &str) {
        self.results.push(Figure { name: name.into(), value, unit: unit.into() });
    }
    fn peer(&mut self, name: &str, value: f64, unit: &str) {
        self.peers.push(Figure { name: name.into(), value, unit: unit.into() });
    }
    fn get(&self, name: &str) -> Option<f64> {
        self.results.iter().chain(&self.peers).find(|f| f.name == name).map(|f| f.value)
    }
    /// A throughput run's rate and latencies under `name`, `name_p50_ms`, `name_p99_ms`.
    fn rate(&mut self, peer: bool, name: &str, out: &mut Outcome, unit: &str) {
        let (rate, p50, p99) = (out.rate(), out.quantile_ms(0.5), out.quantile_ms(0.99));
        let push = |r: &mut Report, n: &str, v: f64, u: &str| if peer { r.peer(n, v, u) } else { r.result(n, v, u) };
        push(self, name, rate, unit);
        push(self, &format!("{name}_p50_ms"), p50, "ms");
        push(self, &format!("{name}_p99_ms"), p99, "ms");
    }
}

/// The sizes of one run.
#[derive(Clone, Copy)]
struct Sizes {
    quick: bool,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    memory_keys: u64,
    lag: Duration,
    cut: Duration,
    backlog: u64,
    doc_changes: u64,
    port_offset: u16,
}

/// Keys written and read by the throughput figures.
const KEYSPACE: u64 = 100_000;
/// Writes per second in all, over three regions, while lag is measured.
const LAG_RATE: f64 = 5_000.0;
/// One write in this many is followed to another region to measure its lag.
const LAG_SAMPLE: u64 = 5;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let q = args.quick;
    let sizes = Sizes {
        quick: q,
        clients: args.clients.max(3),
        warmup: Duration::from_millis(if q { 500 } else { 2000 }),
        measure: Duration::from_secs_f64(args.seconds.unwrap_or(if q { 2.0 } else { 15.0 })),
        memory_keys: args.memory_keys.unwrap_or(if q { 20_000 } else { 1_000_000 }),
        lag: Duration::from_secs(if q { 3 } else { 30 }),
        cut: Duration::from_secs(args.cut_seconds.unwrap_or(if q { 5 } else { 180 })),
        backlog: args.backlog.unwrap_or(if q { 5_000 } else { 500_000 }),
        doc_changes: if q { 1_000 } else { 50_000 },
        port_offset: args.port_offset,
    };
    let parts: Vec<&str> = if args.only.is_empty() {
        vec!["single", "peers", "regions"]
    } else {
        args.only.iter().map(|s| s.as_str()).collect()
    };
    if let Some(bad) = parts.iter().find(|p| !["single", "peers", "regions"].contains(p)) {
        bail!("--only {bad:?}: the parts are single, peers, regions");
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut report = Report::default();
    report.settings.insert("quick".into(), q.into());
    report.settings.insert("clients".into(), sizes.clients.into());
    report.settings.insert("value_bytes".into(), wire::VALUE.len().into());
    report.settings.insert("seconds_per_figure".into(), sizes.measure.as_secs_f64().into());
    report.settings.insert("cores".into(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0).into());
    let started = Instant::now();
    let mut lag_samples = Vec::new();
    if parts.contains(&"single") {
        eprintln!("one region, a leader and a follower:");
        single_region(&dir, sizes, &mut report).await?;
    }
    if parts.contains(&"peers") {
        eprintln!("peers, on this machine now:");
        peers(&dir, sizes, &mut report).await?;
    }
    if parts.contains(&"regions") {
        eprintln!("three regions, a leader and a follower each:");
        lag_samples = three_regions(&dir, sizes, &mut report).await?;
    }
    report.settings.insert("seconds_total".into(), started.elapsed().as_secs().into());
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(plots) = &args.plots {
        std::fs::create_dir_all(plots)?;
        plot::lag(&plots.join("lag.svg"), &mut lag_samples)?;
        plot::throughput(&plots.join("throughput.svg"), &throughput_bars(&report))?;
        eprintln!("wrote {} and {}", plots.join("lag.svg").display(), plots.join("throughput.svg").display());
    }
    Ok(())
}

fn plan(s: Sizes) -> Plan {
    Plan {
        clients: s.clients,
        warmup: s.warmup,
        measure: s.measure,
        rate: None,
        keyspace: KEYSPACE,
        ops_max: None,
        prefix: "",
    }
}

/// One region: writes per durability level (HTTP and NATS), latency at half the rate,
/// reads from the follower, memory after `memory_keys` keys.
async fn single_region(dir: &std::path::Path, s: Sizes, report: &mut Report) -> anyhow::Result<()> {
    let d = Deployment::up(&dir.join("one-region"), &["us-east"], s.port_offset).await?;
    let leader = d.addr("us-east", "leader")?;
    let follower = d.addr("us-east", "follower")?;
    let mut out =
        load::run("write async (HTTP)", &Target::HttpPut { addr: leader.clone(), durability: "async" }, plan(s), None)
            .await?;
    let written = out.ok;
    report.rate(false, "write_throughput_async", &mut out, "writes/s");
    let rate = out.rate();
    let mut out = load::run(
        "write region (HTTP)",
        &Target::HttpPut { addr: leader.clone(), durability: "region" },
        plan(s),
        None,
    )
    .await?;
    report.rate(false, "write_throughput_region", &mut out, "writes/s");
    let mut out = load::run(
        "write async (NATS)",
        &Target::NatsPut { url: d.nats("us-east")?, region: "us-east".into() },
        plan(s),
        None,
    )
    .await?;
    report.rate(false, "write_throughput_async_nats", &mut out, "writes/s");
    let half = Plan { rate: Some((rate / 2.0).max(10.0)), ..plan(s) };
    let mut out = load::run(
        "write async at half rate",
        &Target::HttpPut { addr: leader.clone(), durability: "async" },
        half,
        None,
    )
    .await?;
    report.result("write_latency_rate", out.rate(), "writes/s");
    report.result("write_latency_p50_ms", out.quantile_ms(0.5), "ms");
    report.result("write_latency_p99_ms", out.quantile_ms(0.99), "ms");
    let reads = Plan { keyspace: written.clamp(1, KEYSPACE), ..plan(s) };
    let mut out = load::run("read (HTTP, follower)", &Target::HttpGet { addr: follower.clone() }, reads, None).await?;
    report.rate(false, "read_throughput", &mut out, "reads/s");
    let fill = Plan {
        keyspace: s.memory_keys,
        ops_max: Some(s.memory_keys),
        warmup: Duration::ZERO,
        measure: Duration::from_secs(3600),
        prefix: "m",
        ..plan(s)
    };
    let out = load::run(
        &format!("write {} keys", load::human(s.memory_keys as f64)),
        &Target::HttpPut { addr: leader, durability: "async" },
        fill,
        None,
    )
    .await?;
    // The follower has applied them all: then both have the keys.
    let target = d.status("us-east", "leader").await?.applied;
    wait_applied(&d, &[("us-east", "follower")], &target, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.result("resident_memory_keys", out.ok as f64, "keys");
    report.result("resident_memory_mib", d.rss_mib(&d.node("us-east", "leader")?.name)?, "MiB");
    report.result("resident_memory_follower_mib", d.rss_mib(&d.node("us-east", "follower")?.name)?, "MiB");
    d.down().await
}

/// Redis and NATS key/value, each with its defaults and with an fsync per write.
async fn peers(dir: &std::path::Path, s: Sizes, report: &mut Report) -> anyhow::Result<()> {
    let dir = dir.join("peers");
    {
        let redis = deploy::redis(&dir, false).await?;
        let mut out = load::run("redis SET", &Target::RedisSet { addr: redis.addr.clone() }, plan(s), None).await?;
        let written = out.ok;
        report.rate(true, "redis_set", &mut out, "writes/s");
        let reads = Plan { keyspace: written.clamp(1, KEYSPACE), ..plan(s) };
        let mut out = load::run("redis GET", &Target::RedisGet { addr: redis.addr.clone() }, reads, None).await?;
        report.rate(true, "redis_get", &mut out, "reads/s");
    }
    {
        let redis = deploy::redis(&dir, true).await?;
        let mut out =
            load::run("redis SET (appendfsync always)", &Target::RedisSet { addr: redis.addr.clone() }, plan(s), None)
                .await?;
        report.rate(true, "redis_set_fsync", &mut out, "writes/s");
    }
    {
        let nats = deploy::nats_kv(&dir, false).await?;
        let mut out = load::run("NATS KV put", &Target::NatsKvPut { url: nats.addr.clone() }, plan(s), None).await?;
        report.rate(true, "nats_kv_put", &mut out, "writes/s");
    }
    {
        let nats = deploy::nats_kv(&dir, true).await?;
        let mut out =
            load::run("NATS KV put (sync always)", &Target::NatsKvPut { url: nats.addr.clone() }, plan(s), None)
                .await?;
        report.rate(true, "nats_kv_put_fsync", &mut out, "writes/s");
    }
    Ok(())
}

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// Three regions: one region's write rate with the others idle, writes that wait for
/// other regions, lag under load, catch-up after a cut, document merge. Returns the lag
/// samples (ms) for the plot.
async fn three_regions(dir: &std::path::Path, s: Sizes, report: &mut Report) -> anyhow::Result<Vec<f64>> {
    let d = Deployment::up(&dir.join("three-regions"), &REGIONS, s.port_offset).await?;
    let leader = d.addr("us-east", "leader")?;
    for (label, durability, name) in [
        ("write async, 3 regions", "async", "write_throughput_async_3regions"),
        ("write remote (HTTP)", "remote", "write_throughput_remote"),
        ("write all (HTTP)", "all", "write_throughput_all"),
    ] {
        let mut out = load::run(label, &Target::HttpPut { addr: leader.clone(), durability }, plan(s), None).await?;
        report.rate(false, name, &mut out, "writes/s");
    }
    let mut lags = lag(&d, s).await?;
    report.result("lag_samples", lags.len() as f64, "writes");
    report.result("lag_p50_ms", load::quantile_ms(&mut lags, 0.5), "ms");
    report.result("lag_p99_ms", load::quantile_ms(&mut lags, 0.99), "ms");
    catch_up(&d, s, report, false).await?;
    catch_up(&d, s, report, true).await?;
    d.down().await?;
    Ok(lags.iter().map(|us| *us as f64 / 1000.0).collect())
}

/// Lag: every region writes (`LAG_RATE` in all); one write in `LAG_SAMPLE` is read at
/// the next region's follower with a session token naming only that write's region,
/// which the follower answers once it applied the write. The lag is from the write's
/// acknowledgement to that answer (one loopback HTTP round trip included).
async fn lag(d: &Deployment, s: Sizes) -> anyhow::Result<Vec<u32>> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut probes = Vec::new();
    let mut runs = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let next = REGIONS[(i + 1) % REGIONS.len()];
        let (tx, rx) = mpsc::channel::<(String, String, Instant)>(100_000);
        probes.push(tokio::spawn(probe(Target::HttpGet { addr: d.addr(next, "follower")? }, rx, samples.clone())));
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let origin_region = region.to_string();
        let on: OnAnswer = Arc::new(move |key, answer, at| {
            if !seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(LAG_SAMPLE) {
                return;
            }
            if let Some(t) = answer.token.as_deref().and_then(|t| only_region(t, &origin_region)) {
                let _ = tx.try_send((key.to_string(), t, at));
            }
        });
        let plan = Plan {
            // As many clients per region as the throughput runs use: a region's writes
            // take longer here, and the rate must hold.
            clients: s.clients,
            rate: Some(LAG_RATE / 3.0),
            warmup: Duration::from_millis(500),
            measure: s.lag,
            prefix: ["a", "b", "c"][i],
            ..plan(s)
        };
        let target = Target::HttpPut { addr: d.addr(region, "leader")?, durability: "async" };
        let label = format!("lag: {region} writes {}/s", load::human(LAG_RATE / 3.0));
        runs.push(tokio::spawn(async move { load::run(&label, &target, plan, Some(on)).await }));
    }
    for r in runs {
        r.await??;
    }
    for p in probes {
        p.await??;
    }
    let v = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    if v.is_empty() {
        bail!("no lag sample was taken");
    }
    Ok(v)
}

/// Probe workers: read each sampled key with its token; record when it answered.
async fn probe(
    target: Target,
    rx: mpsc::Receiver<(String, String, Instant)>,
    samples: Arc<Mutex<Vec<u32>>>,
) -> anyhow::Result<()> {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let mut conn = target.connect().await?;
        let (rx, samples) = (rx.clone(), samples.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some((key, token, at)) = rx.lock().await.recv().await else { return Ok::<_, anyhow::Error>(()) };
                let a = conn.call(&key, Some(&token)).await?;
                if a.status == 200 {
                    let us = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    samples.lock().expect("not poisoned").push(us);
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// The session token `raw` cut down to the origins of `region`.
fn only_region(raw: &str, region: &str) -> Option<String> {
    let vv = token::decode(raw).ok()?;
    let mut mine = VersionVector::new();
    for (origin, seq) in vv.iter().filter(|(o, _)| o.region.as_str() == region) {
        mine.observe(origin, seq);
    }
    Some(token::encode(&mine))
}

/// Cut ap-south off; write the backlog in us-east and eu-west (documents: us-east only)
/// while it lasts; heal; time ap-south's leader and follower until they applied it. The
/// catch-up rate counts from the first change applied after the heal (NATS's sourcing
/// resumes first); `heal_to_converged_s` from the heal itself.
async fn catch_up(d: &Deployment, s: Sizes, report: &mut Report, docs: bool) -> anyhow::Result<()> {
    let cut_at = Instant::now();
    d.partition("ap-south").await?;
    let writers: &[&str] = if docs { &["us-east"] } else { &["us-east", "eu-west"] };
    let total = if docs { s.doc_changes } else { s.backlog };
    let mut runs = Vec::new();
    for (i, region) in writers.iter().enumerate() {
        let addr = d.addr(region, "leader")?;
        let target = if docs { Target::HttpDoc { addr } } else { Target::HttpPut { addr, durability: "async" } };
        let plan = Plan {
            clients: s.clients / writers.len(),
            warmup: Duration::ZERO,
            measure: s.cut.saturating_sub(cut_at.elapsed()),
            ops_max: Some(total / writers.len() as u64),
            keyspace: if docs { 1_000 } else { u64::MAX },
            prefix: if docs { "doc" } else { ["cu", "ce"][i] },
            ..plan(s)
        };
        let label = format!("{region} writes {} while cut", if docs { "documents" } else { "keys" });
        runs.push(tokio::spawn(async move { load::run(&label, &target, plan, None).await }));
    }
    let mut backlog = 0;
    for r in runs {
        backlog += r.await??.ok;
    }
    let mut target = BTreeMap::new();
    for region in writers {
        let st = d.status(region, "leader").await?;
        target.insert(st.origin.clone(), st.applied.get(&st.origin).copied().unwrap_or(0));
    }
    let before = d.status("ap-south", "follower").await?.applied;
    // The key/value cut lasts its full length (heal_to_converged_s is "after a 180 s
    // cut"); the document cut ends once the documents are written.
    if let Some(rest) = s.cut.checked_sub(cut_at.elapsed()).filter(|_| !docs) {
        load::bar("the cut lasts", 1.0 - rest.as_secs_f64() / s.cut.as_secs_f64(), "", false);
        tokio::time::sleep(rest).await;
    }
    let cut_s = cut_at.elapsed().as_secs_f64();
    d.heal().await?;
    let healed = Instant::now();
    let nodes = [("ap-south", "leader"), ("ap-south", "follower")];
    let mut first_progress = None;
    let deadline = healed + Duration::from_secs(if s.quick { 120 } else { 900 });
    loop {
        let mut done = true;
        for (r, role) in nodes {
            let st = d.status(r, role).await?;
            if first_progress.is_none() && st.applied.iter().any(|(o, seq)| before.get(o).is_none_or(|b| seq > b)) {
                first_progress = Some(Instant::now());
            }
            done &= target.iter().all(|(o, seq)| st.applied.get(o).is_some_and(|a| a >= seq));
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("ap-south did not catch up within {:?} of the heal", deadline - healed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = healed.elapsed().as_secs_f64();
    let applying = first_progress.map(|t| t.elapsed().as_secs_f64()).unwrap_or(converged).max(0.001);
    let rate = backlog as f64 / applying;
    eprintln!(
        "  {:<34} {:>10} changes/s: {backlog} changes after a {cut_s:.0} s cut, converged {converged:.1} s after the heal",
        if docs { "document merge" } else { "catch-up" },
        load::human(rate)
    );
    if docs {
        report.result("doc_merge_changes_per_s", rate, "changes/s");
        report.result("doc_merge_changes", backlog as f64, "changes");
    } else {
        report.result("catchup_changes_per_s", rate, "changes/s");
        report.result("catchup_backlog_changes", backlog as f64, "changes");
        report.result("cut_s", cut_s, "s");
        report.result("heal_to_converged_s", converged, "s");
    }
    Ok(())
}

/// Wait until every node in `nodes` applied `target` (an applied vector).
async fn wait_applied(
    d: &Deployment,
    nodes: &[(&str, &str)],
    target: &BTreeMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for (r, role) in nodes {
        loop {
            let st = d.status(r, role).await?;
            if target.iter().all(|(o, seq)| st.applied.get(o).is_some_and(|a| a >= seq)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{r} {role} did not apply {target:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The targets of issue 12, as (figure, compared with, at least ratio) or absolute bounds.
enum Goal {
    RatioAtLeast(&'static str, &'static str, f64),
    Below(&'static str, f64),
    Above(&'static str, f64),
}

const TARGETS: [Goal; 8] = [
    Goal::RatioAtLeast("write_throughput_async", "redis_set_fsync", 1.0),
    Goal::RatioAtLeast("write_throughput_async", "nats_kv_put_fsync", 1.0),
    Goal::RatioAtLeast("read_throughput", "redis_get", 1.0),
    Goal::Below("lag_p99_ms", 10.0),
    Goal::Above("catchup_changes_per_s", 200_000.0),
    Goal::Below("heal_to_converged_s", 10.0),
    Goal::Below("resident_memory_mib", 256.0),
    Goal::Above("catchup_backlog_changes", 500_000.0),
];

fn print_table(r: &Report) {
    println!();
    println!("{:<38} {:>14} {:<10}", "figure", "value", "unit");
    for f in r.results.iter() {
        println!("{:<38} {:>14} {:<10}", f.name, fmt(f.value), f.unit);
    }
    println!("{:<38} {:>14} {:<10}", "peer", "value", "unit");
    for f in r.peers.iter() {
        println!("{:<38} {:>14} {:<10}", f.name, fmt(f.value), f.unit);
    }
    println!();
    println!("targets (issue 12):");
    for t in &TARGETS {
        let line = match *t {
            Goal::RatioAtLeast(a, b, min) => r.get(a).zip(r.get(b)).map(|(x, y)| {
                let ratio = if y > 0.0 { x / y } else { 0.0 };
                (format!("{a} / {b} = {ratio:.2}x (at least {min}x)"), ratio >= min)
            }),
            Goal::Below(a, max) => r.get(a).map(|x| (format!("{a} = {} (at most {})", fmt(x), fmt(max)), x <= max)),
            Goal::Above(a, min) => r.get(a).map(|x| (format!("{a} = {} (at least {})", fmt(x), fmt(min)), x >= min)),
        };
        if let Some((text, met)) = line {
            println!("  {} {text}", if met { "met    " } else { "NOT met" });
        }
    }
    if let (Some(a), Some(b)) = (r.get("write_throughput_async"), r.get("redis_set")) {
        println!("  (write_throughput_async / redis_set = {:.2}x, no fsync on Redis's side)", a / b.max(1e-9));
    }
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}

/// The bars of the throughput plot: Concord per durability level, then the peers.
fn throughput_bars(r: &Report) -> Vec<(String, f64, bool)> {
    let mut bars = Vec::new();
    for (name, label) in [
        ("write_throughput_async", "async (1 region)"),
        ("write_throughput_async_nats", "async over NATS"),
        ("write_throughput_region", "region"),
        ("write_throughput_async_3regions", "async (3 regions)"),
        ("write_throughput_remote", "remote"),
        ("write_throughput_all", "all"),
        ("redis_set_fsync", "Redis SET fsync"),
        ("nats_kv_put_fsync", "NATS KV put fsync"),
        ("redis_set", "Redis SET"),
        ("nats_kv_put", "NATS KV put"),
    ] {
        if let Some(v) = r.get(name) {
            bars.push((label.to_string(), v, name.starts_with("write")));
        }
    }
    bars
}
