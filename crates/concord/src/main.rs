//! `concord`: serve a node, run a local deployment, and talk to a node as a client.

mod backup;
mod bench;
mod client;
mod cluster;
mod conflicts;
mod http;
mod status;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use concord_node::{NodeConfig, Role};

#[derive(Parser)]
#[command(name = "concord", version, about = "Concord: a multi-region, multi-leader store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Write a value (LWW): `concord put BUCKET KEY VALUE` (VALUE from stdin when absent).
    Put {
        #[command(flatten)]
        ep: client::Endpoint,
        bucket: String,
        key: String,
        value: Option<String>,
        /// async, region, remote or all.
        #[arg(long, default_value = "async")]
        durability: String,
    },
    /// Read a value.
    Get {
        #[command(flatten)]
        ep: client::Endpoint,
        bucket: String,
        key: String,
    },
    /// Delete a key (writes a tombstone).
    Del {
        #[command(flatten)]
        ep: client::Endpoint,
        bucket: String,
        key: String,
    },
    /// List the keys of a bucket.
    Ls {
        #[command(flatten)]
        ep: client::Endpoint,
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Read a document, or apply operations to it with --ops.
    Doc {
        #[command(flatten)]
        ep: client::Endpoint,
        bucket: String,
        key: String,
        /// The operations as JSON: `[{"op":"inc","path":["n"],"by":1}]` or `{"ops":[...]}`.
        #[arg(long)]
        ops: Option<String>,
        /// Write the Automerge binary to this file instead of printing JSON.
        #[arg(long)]
        automerge_out: Option<PathBuf>,
    },
    /// Show the conflict log: every concurrent overwrite a merge reconciled.
    Conflicts {
        #[command(flatten)]
        ep: client::Endpoint,
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// Only records detected at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the records as JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep running and print new and changed records as they appear.
        #[arg(long)]
        follow: bool,
    },
    /// Resolve a conflict: write a value that supersedes every competing version.
    Resolve {
        #[command(flatten)]
        ep: client::Endpoint,
        id: String,
        /// The value to write (text; for a document property, JSON).
        #[arg(long, conflicts_with = "pick")]
        value: Option<String>,
        /// The id of one of the competing versions to keep.
        #[arg(long)]
        pick: Option<String>,
    },
    /// The whole deployment as a table (`--dir DIR` or `--endpoint URL,...`; `--json`,
    /// `--watch`): role, epoch, lag per origin, parked streams, gaps, open conflicts.
    Status(status::StatusArgs),
    /// Write a node's whole state (a consistent snapshot with its applied vector) to
    /// `--out FILE`, checked before it is renamed into place.
    Backup {
        #[command(flatten)]
        ep: client::Endpoint,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a node's data directory from a backup; a node of the backup's region
    /// started on it catches up from the logs. With --until-time or --until-seq (and
    /// --nats, --region) it replays the logs up to a point before a bad write instead,
    /// and marks the directory so that no node catches up past it; --write-back then
    /// writes the restored values of a bucket back into the live deployment.
    Restore(backup::RestoreArgs),
    /// Read a data directory offline (`--data-dir DIR kv|ls|doc|state`), or a region's
    /// log (`log --nats URL --region R`) to find a bad write's sequence.
    Inspect(backup::inspect::InspectArgs),
    /// Exit 0 if `URL` answers 2xx within `--timeout-ms`, else 1: a container health
    /// check (the images hold no shell and no curl).
    Probe {
        url: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Measure Concord and its peers (Redis, NATS key/value) in one run; `--quick` for
    /// a short smoke run, `--json FILE` for the figures, `--plots DIR` for the plots.
    Bench(bench::BenchArgs),
    /// Run and control a local deployment.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The node's configuration file (regions/<region>.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    role: Option<RoleArg>,
    #[arg(long)]
    node: Option<String>,
    #[arg(long)]
    http: Option<String>,
    #[arg(long)]
    nats: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Leader,
    Follower,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Leader => Role::Leader,
            RoleArg::Follower => Role::Follower,
        }
    }
}

/// See the workspace's `mimalloc` entry: measured, glibc's allocator was a fifth of a
/// leader's CPU under write load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The API token the client commands send (see `http`): `cluster up` makes its own, a
    // bench makes one for the deployments it starts.
    match &cli.command {
        Command::Bench(_) => http::set(Some(http::new_token())),
        Command::Cluster { .. } | Command::Serve(_) => {}
        Command::Status(args) => http::init(args.dir.as_deref()),
        _ => http::init(None),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Put { ep, bucket, key, value, durability } => {
                client::put(&ep, &bucket, &key, value, &durability).await
            }
            Command::Get { ep, bucket, key } => client::get(&ep, &bucket, &key).await,
            Command::Del { ep, bucket, key } => client::del(&ep, &bucket, &key).await,
            Command::Ls { ep, bucket, prefix, after, limit } => client::ls(&ep, &bucket, &prefix, after, limit).await,
            Command::Doc { ep, bucket, key, ops, automerge_out } => {
                client::doc(&ep, &bucket, &key, ops, automerge_out).await
            }
            Command::Status(args) => status::run(args).await,
            Command::Backup { ep, out } => backup::backup(&ep, &out).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Inspect(args) => backup::inspect::run(args).await,
            Command::Conflicts { ep, bucket, key, since, limit, json, follow } => {
                conflicts::show(&ep, conflicts::Filter { bucket, key, since, limit }, json, follow).await
            }
            Command::Resolve { ep, id, value, pick } => conflicts::resolve(&ep, &id, value, pick).await,
            Command::Probe { url, timeout_ms } => client::probe(&url, timeout_ms).await,
            Command::Cluster { command } => cluster::run(command).await,
            Command::Bench(args) => bench::run(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // RUST_LOG filters; CONCORD_LOG_FORMAT=json writes one JSON object per event (for a
    // log shipper), anything else the readable lines.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into());
    match std::env::var("CONCORD_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        Ok("text") | Err(_) => tracing_subscriber::fmt().with_env_filter(filter).init(),
        Ok(other) => anyhow::bail!("CONCORD_LOG_FORMAT={other:?}: json or text"),
    }
    let mut cfg = NodeConfig::load(args.config.as_deref()).context("loading the configuration")?;
    if let Some(r) = args.role {
        cfg.role = r.into();
    }
    if let Some(n) = args.node {
        cfg.node = n;
    }
    if let Some(h) = args.http {
        cfg.http_listen = h;
    }
    if let Some(n) = args.nats {
        cfg.nats_url = n;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    concord_node::run(cfg, rx).await.map_err(|e| anyhow::anyhow!(e))
}
