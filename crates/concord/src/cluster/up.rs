//! `concord cluster up`: a whole local deployment as child processes, one step per
//! function — check every port, start the fault-injecting proxies, each region's NATS
//! (its backbone server and its region server), each region's nodes, wait until they
//! are ready and connected, write `DIR/cluster.json`, then supervise until Ctrl-C or
//! SIGTERM and stop everything.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_api::{ClusterJson, ClusterNode, ClusterRegion, Role, StatusBody, StreamLag};
use tokio::sync::watch;

use super::nats_auth::NatsAuth;
use super::nats_conf::{self, Layout};
use super::proxy::{self, Faults};
use super::tls::{self, TlsFiles};
use super::{nats_server_binary, procs};

/// What `up` runs, and where its records go.
struct Deployment {
    dir: PathBuf,
    layout: Layout,
    /// Every NATS user and password ([`super::nats_auth`]).
    nats_auth: NatsAuth,
    /// The CA and certificate of the links between regions ([`super::tls`]).
    tls: TlsFiles,
    children: Vec<Child>,
    faults: watch::Receiver<Faults>,
}

pub async fn up(dir: &Path, layout: Layout) -> anyhow::Result<()> {
    layout.check()?;
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let _ = std::fs::remove_dir_all(dir.join("procs"));
    check_ports_free(&layout)?;
    let tokens = api_tokens(&dir)?;
    crate::http::set(tokens.as_ref().map(|t| t.0.clone()));
    let (faults_tx, faults) = start_proxies(&dir, &layout).await?;
    let nats_auth = NatsAuth::generate(&layout.regions);
    nats_auth.write(&dir)?;
    let tls = local_tls(&dir)?;
    let mut d = Deployment { dir, layout, nats_auth, tls, children: Vec::new(), faults };
    let mut cluster = ClusterJson::default();
    if let Some((token, read)) = tokens {
        (cluster.token, cluster.read_token) = (Some(token), Some(read));
    }
    for user in ["client", "admin"] {
        cluster.nats_users.insert(user.to_string(), d.nats_auth.passwords[user].clone());
    }
    for i in 0..d.layout.regions.len() {
        start_region_nats(&mut d, i)?;
        let region = start_nodes(&mut d, i).await?;
        cluster.regions.insert(d.layout.regions[i].clone(), region);
    }
    wait_ready(&d.dir, &cluster).await?;
    // Ready means connected: every leader's mirrors hear from their regions (the first
    // sourcing can take a few seconds while the regions' consumers come up).
    if !wait_connected(&cluster, Duration::from_secs(60)).await {
        eprintln!("warning: not every region's mirrors are connected yet; changes will flow once they are");
    }
    // Written aside and renamed into place: whoever waits for the file (scripts, tests)
    // never reads it half written.
    let partial = d.dir.join("cluster.json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(&cluster)?)?;
    std::fs::rename(&partial, d.dir.join("cluster.json"))?;
    print_ready(&d.dir, &cluster);
    run_until_stopped(&mut d, faults_tx).await?;
    println!("stopping the cluster");
    stop_all(&d.dir);
    for c in &mut d.children {
        let _ = c.try_wait();
    }
    let _ = std::fs::remove_file(d.dir.join("cluster.json"));
    Ok(())
}

/// Every port must be free: say which is not, rather than fail half-way.
fn check_ports_free(layout: &Layout) -> anyhow::Result<()> {
    for (region, port) in layout.all_ports() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} (region {region}) is in use: another deployment? (--port-offset shifts every port)");
        }
    }
    Ok(())
}

/// The proxies first, so the servers' first connections already pass through them: one
/// for every backbone route and fallback leaf connection between two regions.
async fn start_proxies(
    dir: &Path,
    layout: &Layout,
) -> anyhow::Result<(watch::Sender<Faults>, watch::Receiver<Faults>)> {
    Faults::default().save(dir)?;
    std::fs::write(proxy::applied_path(dir), "0")?;
    let (faults_tx, faults_rx) = watch::channel(Faults::default());
    for (i, from) in layout.regions.iter().enumerate() {
        for (j, to) in layout.regions.iter().enumerate().filter(|(j, _)| *j != i) {
            for kind in [1, 2] {
                let link = proxy::Link {
                    from: from.clone(),
                    to: to.clone(),
                    listen_port: layout.proxy_port(i, j, kind),
                    target_port: layout.proxy_target(j, kind),
                };
                proxy::serve(link.clone(), faults_rx.clone())
                    .await
                    .with_context(|| format!("proxy port {} (link {from} -> {to})", link.listen_port))?;
            }
        }
    }
    Ok((faults_tx, faults_rx))
}

/// Start the NATS servers of region `i`: its backbone server, then its region server
/// (or the three servers of its JetStream cluster).
fn start_region_nats(d: &mut Deployment, i: usize) -> anyhow::Result<()> {
    let region = d.layout.regions[i].clone();
    let nats_bin = nats_server_binary()?;
    let mut servers = vec![(
        format!("backbone-{region}"),
        nats_conf::backbone_server(&d.layout, i, &d.nats_auth, &d.tls),
        d.layout.ports(i).backbone_client,
    )];
    for k in 1..=d.layout.servers {
        let store = match d.layout.servers {
            1 => d.dir.join("nats").join(&region),
            _ => d.dir.join("nats").join(&region).join(k.to_string()),
        };
        let conf = nats_conf::region_server(&d.layout, i, k, &store, &d.nats_auth, &d.tls);
        servers.push((d.layout.server_name(&region, k), conf, d.layout.server_port(i, k)));
    }
    for (name, conf, port) in servers {
        let conf_path = d.dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf)?;
        let args = vec!["-c".into(), conf_path.display().to_string()];
        let child = procs::spawn(
            &d.dir,
            procs::ProcSpec { name: name.clone(), program: nats_bin.clone(), args, env: Vec::new(), pid: None },
        )?;
        let pid = child.id();
        d.children.push(child);
        if let Err(e) = wait_tcp(&format!("127.0.0.1:{port}"), Some(pid), Duration::from_secs(20)) {
            let log = procs::log_path(&d.dir, &name);
            let last = std::fs::read_to_string(&log).unwrap_or_default().lines().last().unwrap_or("").to_string();
            stop_all(&d.dir);
            bail!("{name} did not start: {e}; its log ({}) ends: {last}", log.display());
        }
    }
    Ok(())
}

/// Start region `i`'s nodes: the leader, then the followers. Each reaches its region's
/// NATS through a proxy link of its own, so `partition NODE` can cut it off.
async fn start_nodes(d: &mut Deployment, i: usize) -> anyhow::Result<ClusterRegion> {
    let region = d.layout.regions[i].clone();
    let config = region_config(&d.dir, &region, &d.layout)?;
    let concord_bin = std::env::current_exe()?;
    let mut nodes = Vec::new();
    for j in 1..=1 + d.layout.followers {
        let node = format!("{region}-{j}");
        let role = if j == 1 { Role::Leader } else { Role::Follower };
        let http_port = d.layout.http_port(i, j);
        let mut links = Vec::new();
        for k in 1..=d.layout.servers {
            let (listen_port, target_port) = (d.layout.node_port(i, j, k), d.layout.server_port(i, k));
            let link = proxy::Link { from: node.clone(), to: node.clone(), listen_port, target_port };
            proxy::serve(link, d.faults.clone()).await.with_context(|| format!("proxy port {listen_port} ({node})"))?;
            links.push(format!("nats://127.0.0.1:{listen_port}"));
        }
        let args = vec![
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
            links.join(","),
            "--data-dir".into(),
            d.dir.join("data").join(&node).display().to_string(),
        ];
        // The node's configuration from this environment (CONCORD_*), kept for restarts,
        // and its test-only clock skew file (`concord cluster skew`).
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("CONCORD_") && k != "CONCORD_NATS_SERVER" && !SECRET_ENV.contains(&k.as_str())
            })
            .collect();
        env.push(("CONCORD_NATS_USER".into(), node.clone()));
        env.push(("CONCORD_NATS_PASSWORD_FILE".into(), NatsAuth::password_file(&d.dir, &node).display().to_string()));
        if api_auth_required() {
            // The tokens go by file, so no record of the deployment (DIR/procs) holds them.
            for (var, file) in
                [("CONCORD_API_TOKEN_FILE", TOKEN_FILE), ("CONCORD_API_READ_TOKEN_FILE", READ_TOKEN_FILE)]
            {
                env.push((var.into(), d.dir.join(file).display().to_string()));
            }
        }
        env.push(("CONCORD_TEST_CLOCK_SKEW_FILE".into(), skew_path(&d.dir, &node).display().to_string()));
        let spec = procs::ProcSpec { name: node.clone(), program: concord_bin.clone(), args, env, pid: None };
        d.children.push(procs::spawn(&d.dir, spec)?);
        nodes.push(ClusterNode { name: node, role, http: format!("http://127.0.0.1:{http_port}") });
    }
    let servers: Vec<String> =
        (1..=d.layout.servers).map(|k| format!("nats://127.0.0.1:{}", d.layout.server_port(i, k))).collect();
    Ok(ClusterRegion { nats: servers[0].clone(), nats_servers: servers, nodes })
}

/// The deployment's CA and certificate (`DIR/secrets/tls`), made the first time.
fn local_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    let tls_dir = dir.join("secrets/tls");
    let files = TlsFiles::in_dir(&tls_dir);
    if files.exist() {
        return Ok(files);
    }
    tls::make(&tls_dir, &["127.0.0.1".to_string(), "localhost".to_string()], false)
}

/// Environment a node does not inherit from `cluster up` (credentials go by file).
pub const SECRET_ENV: [&str; 7] = [
    "CONCORD_API_TOKEN",
    "CONCORD_API_READ_TOKEN",
    "CONCORD_API_TOKEN_FILE",
    "CONCORD_API_READ_TOKEN_FILE",
    "CONCORD_NATS_USER",
    "CONCORD_NATS_PASSWORD",
    "CONCORD_NATS_PASSWORD_FILE",
];
/// Where the deployment's API tokens are kept (readable by this user only).
pub const TOKEN_FILE: &str = "secrets/api-token";
pub const READ_TOKEN_FILE: &str = "secrets/api-read-token";

/// Whether the nodes take requests only with a token (unless `CONCORD_API_AUTH=none`).
fn api_auth_required() -> bool {
    std::env::var("CONCORD_API_AUTH").map_or(true, |v| v != "none")
}

/// The deployment's API tokens, written to `DIR/secrets` (mode 0600): the read-write
/// one from `CONCORD_API_TOKEN` when set (a test or bench that starts several
/// deployments), else new; a new read-only one. `None` when the API is open.
fn api_tokens(dir: &Path) -> anyhow::Result<Option<(String, String)>> {
    if !api_auth_required() {
        return Ok(None);
    }
    let given = |var: &str| std::env::var(var).ok().filter(|t| !t.trim().is_empty());
    let token = given("CONCORD_API_TOKEN").unwrap_or_else(crate::http::new_token);
    let read = given("CONCORD_API_READ_TOKEN").unwrap_or_else(crate::http::new_token);
    std::fs::create_dir_all(dir.join("secrets"))?;
    for (file, value) in [(TOKEN_FILE, &token), (READ_TOKEN_FILE, &read)] {
        write_secret(&dir.join(file), value)?;
    }
    Ok(Some((token, read)))
}

/// Write a credential readable by this user only.
pub fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(value.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

/// Wait until every node answers its status, or fail naming the one that did not.
async fn wait_ready(dir: &Path, cluster: &ClusterJson) -> anyhow::Result<()> {
    for (region, r) in &cluster.regions {
        for n in &r.nodes {
            let pid = procs::load(dir, &n.name)?.pid;
            if let Err(e) = wait_http(&n.http, pid, Duration::from_secs(60)).await {
                let log = procs::log_path(dir, &n.name);
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                stop_all(dir);
                bail!(
                    "{} in {region} did not start: {e}; last lines of {}:\n{}",
                    n.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    Ok(())
}

fn print_ready(dir: &Path, cluster: &ClusterJson) {
    println!("cluster up: {}", dir.join("cluster.json").display());
    for (region, r) in &cluster.regions {
        for n in &r.nodes {
            println!("  {region:<10} {:<12} {:<9} {}   (NATS {})", n.name, n.role, n.http, r.nats);
        }
    }
    println!("Ctrl-C or SIGTERM stops everything; logs in {}", dir.join("logs").display());
}

/// Reap children and apply fault changes (`cluster partition|heal|delay`) until Ctrl-C
/// or SIGTERM.
async fn run_until_stopped(d: &mut Deployment, faults_tx: watch::Sender<Faults>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reap = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = reap.tick() => {
                for c in &mut d.children {
                    let _ = c.try_wait();
                }
                let faults = Faults::load(&d.dir);
                let generation = faults.generation;
                let changed = faults_tx.send_if_modified(|f| {
                    let changed = *f != faults;
                    *f = faults;
                    changed
                });
                if changed {
                    // Give the proxies' tasks a moment to close what the change cut.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::fs::write(proxy::applied_path(&d.dir), generation.to_string())?;
                }
            }
        }
    }
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
    let client = crate::http::client(Duration::from_secs(2));
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

/// Wait until every leader reports all its mirrors connected (`mirror_connected`).
async fn wait_connected(cluster: &ClusterJson, timeout: Duration) -> bool {
    let client = crate::http::client(Duration::from_secs(2));
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for r in cluster.regions.values() {
            let Some(leader) = r.nodes.first() else { continue };
            let status: Option<StatusBody> = match client.get(format!("{}/v1/status", leader.http)).send().await {
                Ok(resp) => resp.json().await.ok(),
                Err(_) => None,
            };
            all &= status.is_some_and(|s| s.lag.values().all(StreamLag::connected));
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
pub fn stop_all(dir: &Path) {
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
/// the deployment's region list and as many copies of streams as the region has NATS
/// servers.
fn region_config(dir: &Path, region: &str, layout: &Layout) -> anyhow::Result<PathBuf> {
    let regions = &layout.regions;
    let path = dir.join("config").join(format!("{region}.toml"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let base = PathBuf::from("regions").join(format!("{region}.toml"));
    let text = std::fs::read_to_string(&base).unwrap_or_default();
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", base.display()))?;
    table.insert("region".into(), toml::Value::String(region.into()));
    table
        .insert("regions".into(), toml::Value::Array(regions.iter().map(|r| toml::Value::String(r.clone())).collect()));
    table.insert("nats_replicas".into(), toml::Value::Integer(i64::from(layout.servers)));
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}

/// The file holding `node`'s test-only clock skew (written by `concord cluster skew`).
pub fn skew_path(dir: &Path, node: &str) -> PathBuf {
    dir.join("skew").join(node)
}
