//! The per-region containers of `compose/compose.yaml`, driven through the `docker` and
//! `docker-compose` commands: up, find containers by their labels, kill, stop, cut a
//! container off a network; torn down with its volumes on drop.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{http, repo_root};

/// The regions of compose.yaml, in order: region i (from 1) serves node j's HTTP on the
/// host at port 8i0j and NATS server k's client port at 7i2k.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// The tag of the images the tests build (`concord:e2e`, `concord-nats:e2e`), so that they
/// leave an operator's `dev` images alone.
pub const TAG: &str = "e2e";

/// Why Docker cannot be used here, if it cannot.
pub fn unavailable() -> Option<String> {
    for (cmd, args) in [("docker", &["info"][..]), ("docker-compose", &["version"][..])] {
        match Command::new(cmd).args(args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Some(format!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr))),
            Err(e) => return Some(format!("`{cmd}` cannot be run: {e}")),
        }
    }
    None
}

/// `compose/build.sh` with the debug build of `concord` (the one the suite built already:
/// a CI run builds the workspace once), or the profile `$CONCORD_E2E_PROFILE` names; in
/// the environment the test was started from: without what `cargo test` adds for the test
/// (its `CARGO_*` variables and library path), which would make cargo rebuild it all.
pub fn build_images() {
    write_secrets();
    let mut cmd = Command::new("bash");
    let profile = std::env::var("CONCORD_E2E_PROFILE").unwrap_or_else(|_| "dev".into());
    cmd.arg("compose/build.sh").env("PROFILE", profile).env("TAG", TAG).current_dir(repo_root());
    cmd.env("CONCORD_SECRETS", secrets_dir());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref());
        if (name.starts_with("CARGO") && !keep) || name == "LD_LIBRARY_PATH" || name == "OUT_DIR" {
            cmd.env_remove(name.as_ref());
        }
    }
    let out = output(cmd, Duration::from_secs(1800)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "compose/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The credentials the test's deployment uses (`CONCORD_SECRETS` of compose.yaml): the
/// tests' API token, so the harness's clients speak to it; never the repository's own
/// `compose/secrets`.
pub fn secrets_dir() -> std::path::PathBuf {
    repo_root().join("target/compose-secrets")
}

fn write_secrets() {
    let dir = secrets_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("api-token"), format!("{}\n", crate::TEST_TOKEN)).unwrap();
    std::fs::write(dir.join("api-read-token"), "concord-test-read-token-fedcba9876543210\n").unwrap();
}

/// How long one `docker` or `docker-compose` command may take: a stuck daemon fails the
/// test rather than hang it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// `cmd`'s output, or why there is none: it could not start, or it ran longer than
/// `within` (then it is killed).
fn output(mut cmd: Command, within: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("{what}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(within) {
        Ok(out) => out.map_err(|e| format!("{what}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the child's pid; it has not been reaped (its waiter waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("{what} did not finish within {within:?} (is the Docker daemon stuck?)"))
        }
    }
}

/// Run a command (with `CONCORD_TAG` set for compose.yaml); its stdout. Panics with its
/// stderr when it fails or does not finish within [`COMMAND_TIMEOUT`].
pub fn run(cmd: &str, args: &[&str]) -> String {
    let mut command = Command::new(cmd);
    command.args(args).env("CONCORD_TAG", TAG).env("CONCORD_SECRETS", secrets_dir()).current_dir(repo_root());
    let out = output(command, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run`], for cleaning up: what went wrong is printed, not raised; stdout.
fn output_of(cmd: &str, args: &[&str]) -> String {
    let mut command = Command::new(cmd);
    command.args(args).env("CONCORD_TAG", TAG).env("CONCORD_SECRETS", secrets_dir()).current_dir(repo_root());
    match output(command, COMMAND_TIMEOUT) {
        Ok(out) => {
            if !out.status.success() {
                eprintln!("`{cmd} {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Err(e) => {
            eprintln!("{e}");
            String::new()
        }
    }
}

/// The host URL of node `j` (1: the starting leader) of region number `i` (from 1).
pub fn node_url(i: usize, j: usize) -> String {
    format!("http://127.0.0.1:8{i}0{j}")
}

/// NATS server `k` of region number `i` as published on the host, with `user`'s
/// credentials (from the test's secrets directory).
pub fn nats_url(i: usize, k: usize, user: &str) -> String {
    let password = std::fs::read_to_string(secrets_dir().join("nats").join(user)).expect("the NATS secrets");
    format!("nats://{user}:{}@127.0.0.1:7{i}2{k}", password.trim())
}

/// Every node of region number `i`: (name, URL).
pub fn region_nodes(i: usize) -> Vec<(String, String)> {
    (1..=3).map(|j| (format!("{}-{j}", REGIONS[i - 1]), node_url(i, j))).collect()
}

/// A deployment of compose/compose.yaml under its own project name.
pub struct Compose {
    pub project: String,
}

impl Compose {
    /// `docker-compose up -d` (after removing what an earlier run may have left).
    pub fn up(project: &str) -> Compose {
        let compose = Compose { project: project.to_string() };
        compose.down();
        compose.compose(&["up", "-d", "--no-build"]);
        compose
    }

    pub fn compose(&self, args: &[&str]) -> String {
        let mut all = vec!["-p", &self.project, "-f", "compose/compose.yaml"];
        all.extend_from_slice(args);
        run("docker-compose", &all)
    }

    /// Stop every container of the project, one at a time, then remove them with their
    /// networks and volumes. One at a time: Docker 20.10 was seen to deadlock (its
    /// libnetwork, releasing the networks of many containers exiting at once) when
    /// `docker-compose down` stopped all 21 together.
    fn down(&self) {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let ids = output_of("docker", &["ps", "--quiet", "--filter", &project]);
        for id in ids.split_whitespace() {
            output_of("docker", &["stop", "--time", "30", id]);
        }
        output_of(
            "docker-compose",
            &["-p", &self.project, "-f", "compose/compose.yaml", "down", "--volumes", "--remove-orphans"],
        );
    }

    /// The ids of this project's containers carrying every `label=value` given.
    pub fn containers(&self, labels: &[(&str, &str)]) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let mut args = vec!["ps", "--all", "--quiet", "--filter", project.as_str()];
        let filters: Vec<String> = labels.iter().map(|(k, v)| format!("label={k}={v}")).collect();
        for f in &filters {
            args.extend(["--filter", f.as_str()]);
        }
        run("docker", &args).split_whitespace().map(String::from).collect()
    }

    /// The one container of compose service `service`.
    pub fn service(&self, service: &str) -> String {
        let ids = self.containers(&[("com.docker.compose.service", service)]);
        assert_eq!(ids.len(), 1, "service {service}: {ids:?}");
        ids[0].clone()
    }

    /// Container `id`'s address on this project's network `network`.
    pub fn address(&self, id: &str, network: &str) -> String {
        let network = self.network(network);
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.network_name(&network));
        run("docker", &["inspect", "--format", &format, id]).trim().to_string()
    }

    fn network_name(&self, id: &str) -> String {
        run("docker", &["network", "inspect", "--format", "{{.Name}}", id]).trim().to_string()
    }

    /// The id of this project's network `name` (compose.yaml's name for it).
    pub fn network(&self, name: &str) -> String {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let network = format!("label=com.docker.compose.network={name}");
        let out = run("docker", &["network", "ls", "--quiet", "--filter", &project, "--filter", &network]);
        let ids: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "network {name}: {ids:?}");
        ids[0].to_string()
    }

    /// Wait until every node answers its status and every region has a writing node.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let client = http();
        let since = Instant::now();
        'poll: loop {
            assert!(since.elapsed() < timeout, "the deployment is not ready after {timeout:?}:\n{}", self.logs_tail());
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 1..=REGIONS.len() {
                let mut writing = false;
                for (_, url) in region_nodes(i) {
                    let Ok(r) = client.get(format!("{url}/v1/status")).send().await else { continue 'poll };
                    let Ok(s) = r.json::<concord_api::StatusBody>().await else { continue 'poll };
                    writing |= s.writer == "writing";
                }
                if !writing {
                    continue 'poll;
                }
            }
            return since.elapsed();
        }
    }

    /// The last lines each container logged (for a failure's message).
    pub fn logs_tail(&self) -> String {
        output_of(
            "docker-compose",
            &["-p", &self.project, "-f", "compose/compose.yaml", "logs", "--no-color", "--tail", "15"],
        )
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
        self.down();
    }
}
