//! What the bench starts and stops itself: a local Concord deployment (`concord cluster
//! up` as a child process), and the peers (a Redis server, a NATS server with
//! JetStream), each in a directory of its own under the bench's directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_api::{ClusterJson, StatusBody};

use crate::cluster::{ClusterCommand, nats_server_binary, procs};

/// A running `concord cluster up`.
pub struct Deployment {
    pub dir: PathBuf,
    pub cluster: ClusterJson,
    child: Child,
    http: reqwest::Client,
}

impl Deployment {
    /// Start `regions` with one follower each (ports shifted by `port_offset`) and wait
    /// until `cluster.json` says it is up and every leader writes.
    pub async fn up(dir: &Path, regions: &[&str], port_offset: u16) -> anyhow::Result<Deployment> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let exe = std::env::current_exe().context("finding the concord binary")?;
        let log = std::fs::File::create(dir.join("cluster-up.log"))?;
        let child = Command::new(exe)
            .args(["cluster", "up", "--dir"])
            .arg(dir)
            .args(["--regions", &regions.join(","), "--followers", "1", "--port-offset", &port_offset.to_string()])
            .env("RUST_LOG", "warn")
            .envs(crate::http::token().map(|t| ("CONCORD_API_TOKEN", t)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `concord cluster up`")?;
        let mut d = Deployment {
            dir: dir.to_path_buf(),
            cluster: ClusterJson::default(),
            child,
            http: crate::http::client(Duration::from_secs(10)),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        let path = dir.join("cluster.json");
        loop {
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(c) = serde_json::from_slice::<ClusterJson>(&bytes)
            {
                d.cluster = c;
                break;
            }
            if let Some(status) = d.child.try_wait()? {
                bail!("`concord cluster up` stopped ({status}); see {}", dir.join("cluster-up.log").display());
            }
            if Instant::now() > deadline {
                bail!("the deployment was not up within 180 s; see {}", dir.join("cluster-up.log").display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for region in regions {
            let leader = d.http_of(region, "leader")?;
            d.wait_until(&leader, Duration::from_secs(60), |s| s.writer == "writing").await?;
        }
        Ok(d)
    }

    /// `host:port` of the node of `region` that started as `role`.
    pub fn addr(&self, region: &str, role: &str) -> anyhow::Result<String> {
        let url = self.http_of(region, role)?;
        Ok(url.trim_start_matches("http://").trim_end_matches('/').to_string())
    }

    fn http_of(&self, region: &str, role: &str) -> anyhow::Result<String> {
        Ok(self.node(region, role)?.http.clone())
    }

    /// The node of `region` that started as `role` (`leader` or `follower`).
    pub fn node(&self, region: &str, role: &str) -> anyhow::Result<&concord_api::ClusterNode> {
        let r = self.cluster.regions.get(region).with_context(|| format!("no region {region}"))?;
        r.nodes.iter().find(|n| n.role.as_str() == role).with_context(|| format!("no {role} in {region}"))
    }

    /// Region `region`'s NATS URL, with the deployment's `client` credentials in it.
    pub fn nats(&self, region: &str) -> anyhow::Result<String> {
        let url = &self.cluster.regions.get(region).with_context(|| format!("no region {region}"))?.nats;
        Ok(match self.cluster.nats_users.get("client") {
            Some(password) => url.replacen("://", &format!("://client:{password}@"), 1),
            None => url.clone(),
        })
    }

    pub async fn status(&self, region: &str, role: &str) -> anyhow::Result<StatusBody> {
        let url = format!("{}/v1/status", self.http_of(region, role)?);
        Ok(self.http.get(&url).send().await?.error_for_status()?.json().await?)
    }

    async fn wait_until(
        &self,
        url: &str,
        timeout: Duration,
        ok: impl Fn(&StatusBody) -> bool,
    ) -> anyhow::Result<StatusBody> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(format!("{url}/v1/status")).send().await
                && let Ok(s) = r.json::<StatusBody>().await
                && ok(&s)
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{url} did not get ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Resident memory of a node, MiB (from /proc).
    pub fn rss_mib(&self, node: &str) -> anyhow::Result<f64> {
        let pid = procs::load(&self.dir, node)?.pid.with_context(|| format!("{node} has no pid"))?;
        rss_mib(pid)
    }

    pub async fn partition(&self, region: &str) -> anyhow::Result<()> {
        crate::cluster::run(ClusterCommand::Partition { dir: self.dir.clone(), region: region.to_string() }).await
    }

    pub async fn heal(&self) -> anyhow::Result<()> {
        crate::cluster::run(ClusterCommand::Heal { dir: self.dir.clone(), region: None }).await
    }

    /// Stop everything (SIGTERM, as Ctrl-C would) and wait for it.
    pub async fn down(mut self) -> anyhow::Result<()> {
        procs::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("`concord cluster up` did not stop within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            procs::signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// A peer server the bench started; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Peer {
    pub addr: String,
    child: Child,
}

impl Drop for Peer {
    fn drop(&mut self) {
        procs::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_tcp(addr: &str, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(s) = child.try_wait()? {
            bail!("{what} stopped at start ({s})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `redis-server` from PATH; when absent, installed from Debian's packages (as root).
pub fn redis_binary() -> anyhow::Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("  redis-server not found: installing Debian's redis-server package");
    let ok = Command::new("sh")
        .args([
            "-c",
            "(apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) >/dev/null 2>&1",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    match find() {
        Some(p) if ok => Ok(p),
        _ => bail!("redis-server is not installed and `apt-get install redis-server` failed: install it to compare"),
    }
}

/// A Redis server with its defaults, or with `appendonly yes` and `appendfsync always`.
pub async fn redis(dir: &Path, fsync: bool) -> anyhow::Result<Peer> {
    let bin = redis_binary()?;
    let dir = dir.join(if fsync { "redis-fsync" } else { "redis" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(&dir);
    if fsync {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    }
    let log = std::fs::File::create(dir.join("redis.log"))?;
    let mut child =
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().context("starting redis-server")?;
    let addr = format!("127.0.0.1:{port}");
    wait_tcp(&addr, "redis-server", &mut child).await?;
    Ok(Peer { addr, child })
}

/// A NATS server with JetStream (`sync_interval: always` when `fsync`, else NATS's
/// default) and a key/value bucket `bench`.
pub async fn nats_kv(dir: &Path, fsync: bool) -> anyhow::Result<Peer> {
    let bin = nats_server_binary()?;
    let dir = dir.join(if fsync { "nats-fsync" } else { "nats" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let sync = if fsync { "sync_interval: always\n" } else { "" };
    let conf = format!(
        "listen: 127.0.0.1:{port}\njetstream {{\n store_dir: {:?}\n {sync}}}\n",
        dir.join("js").display().to_string()
    );
    std::fs::write(dir.join("nats.conf"), conf)?;
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting nats-server")?;
    let addr = format!("127.0.0.1:{port}");
    wait_tcp(&addr, "nats-server", &mut child).await?;
    let url = format!("nats://{addr}");
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    js.create_key_value(async_nats::jetstream::kv::Config { bucket: "bench".into(), history: 1, ..Default::default() })
        .await
        .context("creating the key/value bucket")?;
    Ok(Peer { addr: url, child })
}
