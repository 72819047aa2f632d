//! `concord-chaos`: seeded fault runs over a real local deployment, and their checker.
//!
//! ```text
//! cargo build -p concord
//! cargo run -q -p concord-tests --bin concord-chaos -- run --seed 42      # one run, checked
//! cargo run -q -p concord-tests --bin concord-chaos -- check DIR          # judge a recorded run again
//! cargo run -q -p concord-tests --bin concord-chaos -- soak --duration 2h # seed after seed until time is up
//! cargo run -q -p concord-tests --bin concord-chaos -- summary target/chaos/seed-*  # what the faults did
//! ```
//!
//! Exits 1 when the checker found a problem (its list is printed and kept in the run's
//! directory with the history, the final state and the processes' logs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use concord_tests::chaos::{self, RunOptions};

#[derive(Parser)]
#[command(name = "concord-chaos", about = "Seeded fault runs over a real local Concord deployment")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: deployment, workload with faults, heal, final state, check.
    Run {
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds of workload with faults.
        #[arg(long, default_value_t = 12)]
        workload_s: u64,
        /// Where the history and final state go (default: a directory under the system's
        /// temporary directory, named by the seed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Test only: run every node with this deliberately broken rule
        /// (`drop-changeset`; set CONCORD_BIN to a binary built with `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Check a recorded run again from its history.jsonl and final.json alone.
    Check { dir: PathBuf },
    /// What recorded runs observed, by kind of fault, as a Markdown table (the README's).
    Summary {
        /// Run directories (each with history.jsonl and final.json).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Run seed after seed until DURATION (like 90s, 30m, 2h) is spent or a run fails.
    Soak {
        #[arg(long)]
        duration: String,
        /// The first seed (default: from the clock); then +1 each run.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 12)]
        workload_s: u64,
    },
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("duration {text:?}: expected a number and s, m or h"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("duration {text:?}: the unit is s, m or h"),
    }))
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_000
}

fn default_out(seed: u64) -> PathBuf {
    std::env::temp_dir().join("concord-chaos").join(format!("seed-{seed}"))
}

async fn one(opts: RunOptions) -> anyhow::Result<bool> {
    println!("seed {}: running (repro: {})", opts.seed, chaos::repro_command(opts.seed, opts.mutation.as_deref()));
    let report = chaos::run(&opts).await?;
    println!(
        "seed {}: {} ops ({} acknowledged), {} fault commands, converged in {} ms, {} messages repaired from origin logs, {:.0?} in all; history in {}",
        report.seed,
        report.ops,
        report.acked,
        report.faults,
        report.converge_ms,
        report.repaired,
        report.took,
        report.out.display()
    );
    if report.problems.is_empty() {
        println!("seed {}: ok", report.seed);
        return Ok(true);
    }
    println!("seed {}: {} PROBLEMS", report.seed, report.problems.len());
    for p in report.problems.iter().take(50) {
        println!("  {p}");
    }
    println!("reproduce: {}", chaos::repro_command(opts.seed, opts.mutation.as_deref()));
    println!("check again: cargo run -q -p concord-tests --bin concord-chaos -- check {}", report.out.display());
    Ok(false)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ok = match Cli::parse().command {
        Cmd::Run { seed, workload_s, out, mutation } => {
            let seed = seed.unwrap_or_else(clock_seed);
            let mut opts = RunOptions::new(seed, out.unwrap_or_else(|| default_out(seed)));
            opts.workload = Duration::from_secs(workload_s);
            opts.mutation = mutation;
            one(opts).await?
        }
        Cmd::Check { dir } => {
            let problems = chaos::check_dir(&dir)?;
            for p in &problems {
                println!("{p}");
            }
            println!("{} problems", problems.len());
            problems.is_empty()
        }
        Cmd::Summary { dirs } => {
            let mut summary = chaos::summary::Summary::default();
            for dir in &dirs {
                chaos::summary::add_run(&mut summary, dir)?;
            }
            print!("{}", chaos::summary::render(&summary));
            true
        }
        Cmd::Soak { duration, seed, workload_s } => {
            let until = Instant::now() + parse_duration(&duration)?;
            let mut seed = seed.unwrap_or_else(clock_seed);
            let mut runs = 0;
            let mut ok = true;
            while Instant::now() < until && ok {
                let mut opts = RunOptions::new(seed, default_out(seed));
                opts.workload = Duration::from_secs(workload_s);
                ok = one(opts).await?;
                runs += 1;
                seed += 1;
            }
            println!("soak: {runs} runs, {}", if ok { "all clean" } else { "stopped at the first failing seed" });
            ok
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
