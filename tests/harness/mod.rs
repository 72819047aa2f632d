//! Test harness: real `nats-server` processes and real `concord` nodes on free ports,
//! polled for readiness with timeouts, killed for real (SIGKILL) and cleaned up on drop.
//!
//! The `concord` binary is `$CONCORD_BIN`, else `target/debug/concord` of this
//! workspace (build it first: `cargo build -p concord`). The NATS server is
//! `$CONCORD_NATS_SERVER`, else `nats-server` on `PATH`, else `.tools/venv/bin/nats-server`
//! (installed by `.ci/setup.sh`).

pub mod chaos;
pub mod docker;
pub mod load;
mod nats;
pub mod tls;

pub use nats::{nats_connect, nats_info, nats_info_or_nothing};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord_api::{ClusterJson, Role, StatusBody, StreamLag};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

pub fn concord_bin() -> PathBuf {
    let path =
        std::env::var_os("CONCORD_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/concord"));
    assert!(path.is_file(), "{} is missing: run `cargo build -p concord` first", path.display());
    path
}

pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONCORD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).find(|p| p.is_file()));
    let path = on_path.unwrap_or_else(|| repo_root().join(".tools/venv/bin/nats-server"));
    assert!(path.is_file(), "nats-server not found: run `bash .ci/setup.sh`");
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("concord-test-{name}-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_tcp(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A NATS server with JetStream (`sync_interval: always`) on a free port.
pub struct Nats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        let mut nats = Nats { port: free_port(), dir: dir.join("nats"), child: None };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let conf = self.dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{}\"\nmax_payload: 8388608\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
                self.port,
                self.dir.join("js").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("nats.log")).unwrap();
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_tcp(self.port, Duration::from_secs(20));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `concord serve` process.
pub struct Node {
    pub name: String,
    pub http_port: u16,
    data_dir: PathBuf,
    nats_url: String,
    region: String,
    role: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    pub fn start(dir: &Path, region: &str, nats_url: &str) -> Node {
        Node::start_with(dir, region, nats_url, &[])
    }

    /// Start with extra environment (`CONCORD_<FIELD>` configuration overrides).
    pub fn start_with(dir: &Path, region: &str, nats_url: &str, env: &[(&str, &str)]) -> Node {
        Node::start_as(dir, &format!("{region}-1"), "leader", region, nats_url, env)
    }

    /// Start node `name` with `role` (leader or follower).
    pub fn start_as(dir: &Path, name: &str, role: &str, region: &str, nats_url: &str, env: &[(&str, &str)]) -> Node {
        let name = name.to_string();
        let mut node = Node {
            role: role.to_string(),
            http_port: free_port(),
            data_dir: dir.join("data").join(&name),
            log: dir.join(format!("{name}.log")),
            name,
            nats_url: nats_url.to_string(),
            region: region.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(concord_bin())
            .args(["serve", "--node", &self.name, "--role", &self.role])
            .args(["--http", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--nats", &self.nats_url])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("CONCORD_REGION", &self.region)
            .env("CONCORD_API_TOKEN", TEST_TOKEN)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start concord");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http_port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n\r\n"
                );
                let mut resp = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut resp).is_ok()
                    && resp.starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}) before it was ready:\n{}", self.name, self.log_tail());
            }
            assert!(Instant::now() < deadline, "{} not ready within {timeout:?}:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Whether the process is still running (it neither exited nor was killed).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
        }
    }

    /// Start again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Percent-encode a path segment.
pub fn seg(s: &str) -> String {
    concord_core::input::encode_segment(s)
}

/// The API token of every node and deployment the tests start (a node refuses to start
/// without one).
pub const TEST_TOKEN: &str = "concord-test-token-0123456789abcdef";

/// A client builder that sends [`TEST_TOKEN`] with every request and follows no
/// redirect by itself (the HTTP library would drop the token on a redirect to another
/// port: follow them with [`send_following`]).
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {TEST_TOKEN}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).redirect(reqwest::redirect::Policy::none())
}

pub fn http() -> reqwest::Client {
    client_builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// A client without the token (what an outsider sends).
pub fn http_without_token() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// Send `req`, following 307/308 redirects (a write to a follower goes to its leader)
/// with the same method, body and token.
pub async fn send_following(req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let (client, req) = req.build_split();
    let mut req = req?;
    for _ in 0..5 {
        let resp = client.execute(req.try_clone().expect("a body that can be sent again")).await?;
        if !matches!(resp.status().as_u16(), 307 | 308) {
            return Ok(resp);
        }
        let next = resp.headers()[reqwest::header::LOCATION].to_str().expect("a Location").to_string();
        *req.url_mut() = req.url().join(&next).expect("a Location URL");
    }
    client.execute(req).await
}

/// A node's `GET /v1/status`.
pub async fn status(client: &reqwest::Client, url: &str) -> StatusBody {
    let resp = client.get(format!("{url}/v1/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}/v1/status");
    resp.json().await.unwrap()
}

/// A whole local deployment started by `concord cluster up` (real NATS servers, the
/// leaf-node backbone and the fault-injecting proxy), stopped on drop.
pub struct Cluster {
    pub dir: TempDir,
    /// The `concord` binary it runs.
    pub bin: PathBuf,
    up: Option<Child>,
    /// region -> (NATS URL, leader HTTP URL)
    pub regions: std::collections::BTreeMap<String, (String, String)>,
    /// node name -> HTTP URL, every node
    pub nodes: std::collections::BTreeMap<String, String>,
}

/// A port offset under which every port of a `regions`-region deployment is free.
pub fn free_cluster_offset(regions: usize) -> u16 {
    let mut seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    loop {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // Below the kernel's ephemeral range (32768..61000 on Linux): there, a port found
        // free may be handed to an outgoing connection before a server binds it.
        let offset = 1000 + (seed >> 33) as u16 % 22_000;
        let mut ports: Vec<u16> = Vec::new();
        for i in 0..regions as u16 {
            // NATS (up to three servers and their routes) and the backbone; HTTP; the
            // nodes' links to each server (see `concord cluster up`'s port layout).
            ports.extend((0..9).map(|k| 4301 + 10 * i + k + offset));
            ports.extend((1..=4).map(|k| 8300 + 10 * i + k + offset));
            ports.extend((0..3).flat_map(|k| (1..=4).map(move |j| 6000 + 100 * i + 10 * k + j + offset)));
            for j in 0..regions as u16 {
                ports.extend([5001 + 100 * i + 10 * j + offset, 5002 + 100 * i + 10 * j + offset]);
            }
        }
        if ports.iter().all(|&p| p < 32768 && TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return offset;
        }
    }
}

impl Cluster {
    pub fn start(regions: &[&str]) -> Cluster {
        Cluster::start_with_env(regions, &[])
    }

    /// Start with extra environment for every node (`CONCORD_<FIELD>` overrides).
    pub fn start_with_env(regions: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_full(regions, 0, env)
    }

    /// Start with `followers` followers per region (named REGION-2, REGION-3, ...).
    pub fn start_full(regions: &[&str], followers: u16, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with_servers(regions, followers, 1, env)
    }

    /// Start with `servers` NATS servers per region (1, or 3: a JetStream cluster).
    pub fn start_with_servers(regions: &[&str], followers: u16, servers: u16, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_using(&concord_bin(), regions, followers, servers, env)
    }

    /// Start with the `concord` binary at `bin` (a deliberately broken build, say). Ports
    /// found free may be taken by a test running alongside before a node binds them: then
    /// the deployment starts again on other ports (at most three tries).
    pub fn start_using(bin: &Path, regions: &[&str], followers: u16, servers: u16, env: &[(&str, &str)]) -> Cluster {
        for _ in 0..2 {
            match Cluster::try_start(bin, regions, followers, servers, env) {
                Err(log) if log.contains("Address already in use") => eprintln!("ports taken, again:\n{log}"),
                other => return other.unwrap_or_else(|log| panic!("{log}")),
            }
        }
        Cluster::try_start(bin, regions, followers, servers, env).unwrap_or_else(|log| panic!("{log}"))
    }

    fn try_start(
        bin: &Path,
        regions: &[&str],
        followers: u16,
        servers: u16,
        env: &[(&str, &str)],
    ) -> Result<Cluster, String> {
        let dir = TempDir::new("cluster");
        let offset = free_cluster_offset(regions.len());
        let log = std::fs::File::create(dir.0.join("up.log")).unwrap();
        let up = Command::new(bin)
            .args(["cluster", "up", "--dir"])
            .arg(&dir.0)
            .args(["--regions", &regions.join(","), "--port-offset", &offset.to_string()])
            .args(["--followers", &followers.to_string(), "--nats-servers", &servers.to_string()])
            .current_dir(repo_root())
            .env("CONCORD_NATS_SERVER", nats_bin())
            .env("CONCORD_API_TOKEN", TEST_TOKEN)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start concord cluster up");
        let mut cluster = Cluster {
            dir,
            bin: bin.to_path_buf(),
            up: Some(up),
            regions: Default::default(),
            nodes: Default::default(),
        };
        let json = cluster.dir.0.join("cluster.json");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !json.exists() {
            if let Some(status) = cluster.up.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(cluster.dir.0.join("up.log")).unwrap_or_default();
                return Err(format!("cluster up exited ({status}):\n{log}"));
            }
            assert!(Instant::now() < deadline, "cluster.json never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
        let v: ClusterJson = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        for (region, r) in v.regions {
            for n in &r.nodes {
                cluster.nodes.insert(n.name.clone(), n.http.clone());
            }
            let leader = r.nodes.iter().find(|n| n.role == Role::Leader).expect("a leader per region");
            cluster.regions.insert(region, (r.nats.clone(), leader.http.clone()));
        }
        Ok(cluster)
    }

    /// The leader's HTTP URL of `region`.
    pub fn url(&self, region: &str) -> String {
        self.regions[region].1.clone()
    }

    /// Region `region`'s NATS URL, with the deployment's `admin` credentials in it.
    pub fn nats(&self, region: &str) -> String {
        self.nats_as(region, "admin")
    }

    /// Region `region`'s NATS URL with `user`'s credentials (from `DIR/secrets/nats`).
    pub fn nats_as(&self, region: &str, user: &str) -> String {
        self.with_credentials(&self.regions[region].0, user)
    }

    /// NATS `url` with `user`'s credentials in it (unchanged if the deployment has no
    /// such user).
    pub fn with_credentials(&self, url: &str, user: &str) -> String {
        match std::fs::read_to_string(self.dir.0.join("secrets/nats").join(user)) {
            Ok(password) => url.replacen("://", &format!("://{user}:{}@", password.trim()), 1),
            Err(_) => url.to_string(),
        }
    }

    /// Region `region`'s NATS URL without credentials (what an outsider knows).
    pub fn nats_anonymous(&self, region: &str) -> String {
        self.regions[region].0.clone()
    }

    /// Run `concord cluster VERB --dir DIR ARGS...`, panicking on failure.
    pub fn ctl(&self, verb: &str, args: &[&str]) {
        let out =
            Command::new(&self.bin).args(["cluster", verb, "--dir"]).arg(&self.dir.0).args(args).output().unwrap();
        assert!(out.status.success(), "cluster {verb} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Run the `concord` client with `args`; returns (success, stdout, stderr).
    pub fn client(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(concord_bin()).args(args).env("CONCORD_TOKEN", TEST_TOKEN).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn partition(&self, region: &str) {
        self.ctl("partition", &[region]);
    }

    pub fn heal(&self) {
        self.ctl("heal", &[]);
    }

    pub fn kill(&self, name: &str) {
        self.ctl("kill", &[name]);
    }

    pub fn start_again(&self, name: &str) {
        self.ctl("start", &[name]);
    }

    /// Wait until `url` answers its status.
    pub async fn wait_ready(&self, url: &str, timeout: Duration) {
        let client = http();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(format!("{url}/v1/status")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "{url} not ready within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every region has applied everything every other region wrote
    /// (equal applied vectors, no lag), or panic after `timeout`.
    pub async fn wait_converged(&self, timeout: Duration) -> Duration {
        let client = http();
        let started = Instant::now();
        loop {
            let mut applied = Vec::new();
            let mut lagging = false;
            for region in self.regions.keys() {
                let Ok(r) = client.get(format!("{}/v1/status", self.url(region))).send().await else {
                    lagging = true;
                    continue;
                };
                let Ok(s) = r.json::<StatusBody>().await else {
                    lagging = true;
                    continue;
                };
                lagging |= !s.lag.values().all(StreamLag::caught_up);
                applied.push(s.applied);
            }
            if !lagging && applied.windows(2).all(|w| w[0] == w[1]) {
                return started.elapsed();
            }
            assert!(started.elapsed() < timeout, "no convergence within {timeout:?}: {applied:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            unsafe {
                libc::kill(up.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while up.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = up.kill();
            let _ = up.wait();
        }
        // Whatever still runs (a node started by `cluster start`): SIGKILL it.
        if let Ok(entries) = std::fs::read_dir(self.dir.0.join("procs")) {
            for e in entries.flatten() {
                let pid = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["pid"].as_u64());
                if let Some(pid) = pid {
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// The value of the sample `name` whose labels include every one of `labels`, in a
/// `/metrics` page (OpenMetrics text).
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let set = rest.trim_end_matches('}');
        let wanted = labels.iter().all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        (n == name && wanted).then(|| value.parse().ok()).flatten()
    })
}

/// A node's `/metrics` page, checked to be OpenMetrics text.
pub async fn metrics_page(client: &reqwest::Client, url: &str) -> String {
    let resp = client.get(format!("{url}/metrics")).send().await.unwrap();
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let page = resp.text().await.unwrap();
    assert!(page.ends_with("# EOF\n"), "an OpenMetrics page ends with # EOF");
    page
}
