//! `concord status`: the whole deployment in one table, from a local deployment's
//! `cluster.json` (`--dir`) or from a list of endpoints: region, node, role and what its
//! writer does, epoch, the region's leader, lag per origin, parked streams, gaps, dead
//! letters and open conflicts. `--json` for scripts, `--watch` to redraw it.
//!
//! Every node is asked at once, each under [`ASK_TIMEOUT`]: a node that does not answer
//! is a row that says why, not a hang. The command exits 1 when any node did not answer
//! (so a script can alert on it), except under `--watch`, which runs until interrupted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use concord_api::{ClusterJson, StatusBody};
use serde::Serialize;

/// How long one node has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest `--watch` interval.
const WATCH_MIN: Duration = Duration::from_millis(200);
/// Longest `--watch` interval.
const WATCH_MAX: Duration = Duration::from_secs(24 * 3600);

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The nodes to ask (repeat the flag, or separate with commas).
    #[arg(long, env = "CONCORD_ENDPOINT", value_delimiter = ',', default_value = "http://127.0.0.1:8301")]
    endpoint: Vec<String>,
    /// A local deployment's directory: ask every node its `cluster.json` lists (instead
    /// of `--endpoint`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// One JSON object instead of the table (`{"nodes": [...]}`; one line per round with
    /// `--watch`).
    #[arg(long)]
    json: bool,
    /// Ask again every SECONDS (2 when no value is given) until interrupted.
    #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECONDS")]
    watch: Option<f64>,
}

/// A node to ask: where, and what the deployment calls it (when it says).
struct Target {
    region: String,
    node: String,
    endpoint: String,
}

/// One node's answer, or why there is none.
#[derive(Serialize)]
struct NodeStatus {
    region: String,
    node: String,
    endpoint: String,
    status: Option<StatusBody>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Deployment {
    nodes: Vec<NodeStatus>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let targets = targets(&args)?;
    let every = match args.watch {
        None => None,
        Some(s) => match Duration::try_from_secs_f64(s) {
            Ok(every) if every <= WATCH_MAX => Some(every.max(WATCH_MIN)),
            _ => anyhow::bail!("--watch {s}: a number of seconds up to {} please", WATCH_MAX.as_secs()),
        },
    };
    let client = crate::http::client(ASK_TIMEOUT);
    loop {
        let deployment = ask_all(&client, &targets).await;
        let unreachable = deployment.nodes.iter().filter(|n| n.status.is_none()).count();
        if args.json {
            let text = serde_json::to_string(&deployment)?;
            if every.is_some() {
                println!("{text}");
            } else {
                println!("{}", serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&text)?)?);
            }
        } else {
            if every.is_some() {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
                println!(
                    "{}  (every {:.1} s; Ctrl-C to stop)",
                    chrono::Utc::now().format("%H:%M:%S"),
                    every.unwrap_or_default().as_secs_f64()
                );
            }
            print!("{}", table(&deployment));
        }
        match every {
            Some(every) => tokio::time::sleep(every).await,
            None if unreachable > 0 => {
                anyhow::bail!("{unreachable} of {} nodes did not answer", deployment.nodes.len())
            }
            None => return Ok(()),
        }
    }
}

fn targets(args: &StatusArgs) -> anyhow::Result<Vec<Target>> {
    let Some(dir) = &args.dir else {
        return Ok(args
            .endpoint
            .iter()
            .map(|e| Target {
                region: String::new(),
                node: String::new(),
                endpoint: e.trim_end_matches('/').to_string(),
            })
            .collect());
    };
    let path = dir.join("cluster.json");
    let raw = std::fs::read(&path).with_context(|| format!("reading {} (is the deployment up?)", path.display()))?;
    let cluster: ClusterJson =
        serde_json::from_slice(&raw).with_context(|| format!("{} is no cluster.json", path.display()))?;
    let targets: Vec<Target> = cluster
        .regions
        .iter()
        .flat_map(|(region, r)| {
            r.nodes.iter().map(|n| Target { region: region.clone(), node: n.name.clone(), endpoint: n.http.clone() })
        })
        .collect();
    anyhow::ensure!(!targets.is_empty(), "{} lists no nodes", path.display());
    Ok(targets)
}

async fn ask_all(client: &reqwest::Client, targets: &[Target]) -> Deployment {
    let asks = targets.iter().map(|t| async move {
        let (status, error) = match ask(client, &t.endpoint).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let region = status.as_ref().map(|s| s.region.clone()).unwrap_or_else(|| t.region.clone());
        let node = status.as_ref().map(|s| s.node.clone()).unwrap_or_else(|| t.node.clone());
        NodeStatus { region, node, endpoint: t.endpoint.clone(), status, error }
    });
    let mut nodes = futures::future::join_all(asks).await;
    nodes.sort_by(|a, b| (&a.region, &a.node).cmp(&(&b.region, &b.node)));
    Deployment { nodes }
}

async fn ask(client: &reqwest::Client, endpoint: &str) -> anyhow::Result<StatusBody> {
    let resp = client.get(format!("{endpoint}/v1/status")).send().await.map_err(|e| {
        if e.is_timeout() {
            anyhow::anyhow!("no answer in {} s", ASK_TIMEOUT.as_secs())
        } else {
            anyhow::anyhow!("unreachable")
        }
    })?;
    let code = resp.status();
    anyhow::ensure!(code.is_success(), "answered {code}");
    resp.json().await.context("answered no Concord status")
}

const COLUMNS: [&str; 11] = [
    "REGION",
    "NODE",
    "ROLE",
    "WRITER",
    "EPOCH",
    "LEADER",
    "LAG (origin msgs/age)",
    "PARKED",
    "GAPS",
    "DEAD",
    "CONFLICTS",
];

/// The table, one row per node, columns as wide as their widest cell.
fn table(d: &Deployment) -> String {
    let mut rows = vec![COLUMNS.map(String::from).to_vec()];
    for n in &d.nodes {
        rows.push(match &n.status {
            Some(s) => row(s),
            None => {
                let mut r = vec![String::new(); COLUMNS.len()];
                r[0] = n.region.clone();
                r[1] = if n.node.is_empty() { n.endpoint.clone() } else { n.node.clone() };
                r[2] = "DOWN".into();
                r[3] = n.error.clone().unwrap_or_default();
                r
            }
        });
    }
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<width$}", width = *w)).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(s: &StatusBody) -> Vec<String> {
    let lag: Vec<String> = s
        .lag
        .iter()
        .map(|(region, l)| match (&l.mirror, &l.error) {
            (Some(m), _) => {
                let cut = if region != &s.region && !m.mirror_connected { " CUT" } else { "" };
                format!("{region} {}/{}ms{cut}", m.seq, m.ms)
            }
            (None, Some(_)) => format!("{region} ?"),
            (None, None) => format!("{region} -"),
        })
        .collect();
    let parked = s.streams.values().filter(|st| st.parked.is_some()).count();
    let leader = if s.leader.is_empty() { "?".to_string() } else { format!("{} (epoch {})", s.leader, s.leader_epoch) };
    vec![
        s.region.clone(),
        s.node.clone(),
        s.role.clone(),
        s.writer.clone(),
        s.epoch.to_string(),
        leader,
        if lag.is_empty() { "-".into() } else { lag.join(", ") },
        parked.to_string(),
        if s.gaps.is_empty() { "0".into() } else { format!("{} ({} waiting)", s.gaps.len(), s.waiting) },
        s.dead_letters.to_string(),
        s.open_conflicts.to_string(),
    ]
}
