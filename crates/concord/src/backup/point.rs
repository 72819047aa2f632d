//! `concord restore --until-time T | --until-seq N`: after the backup is loaded, replay
//! the region's log and mirrors up to the point (`concord_node::replay`), with a
//! progress bar per stream, then say what was done and what to do next.
//!
//! The replay needs the region's NATS (`--nats`) and the region (`--region`): the logs
//! are read from there, read-only. A replay that fails leaves the directory marked as
//! partial (no node starts on it): empty it and restore again.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use concord_core::ids::RegionId;
use concord_node::replay::{self, Point, Report, Request, StreamReplay, cut::rfc3339, marker};
use concord_storage::Store;

use crate::bench::bar;

#[derive(clap::Args)]
pub struct PointArgs {
    /// Restore the state as written before this time (RFC 3339, e.g.
    /// 2026-12-06T18:00:00Z): each stream is replayed up to, not including, its first
    /// changeset holding a change at or after it.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time, conflicts_with = "until_seq")]
    pub until_time: Option<DateTime<Utc>>,
    /// Restore the state before message N of the region's own log (CONCORD_LOG_<REGION>):
    /// N is the bad write and is NOT replayed; N-1 is the last message that is. The other
    /// regions' mirrors are replayed up to message N's time. `concord inspect log`
    /// shows the sequences.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub until_seq: Option<u64>,
    /// The region's NATS (one URL, or several separated by commas): where its log and
    /// mirrors are read, with a point.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The backup's region, with a point.
    #[arg(long)]
    pub region: Option<String>,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is no RFC 3339 time ({e}); for example 2026-12-06T18:00:00Z"))
}

impl PointArgs {
    /// The point asked for, with where to read the logs; `None` without a point.
    pub fn resolve(&self) -> anyhow::Result<Option<Request>> {
        let point = match (self.until_time, self.until_seq) {
            (Some(t), None) => Point::UntilTime(t),
            (None, Some(n)) => Point::UntilSeq(n),
            (None, None) => {
                if self.nats.is_some() || self.region.is_some() {
                    bail!("--nats and --region go with a point: --until-time or --until-seq");
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => bail!("--until-time or --until-seq, not both"),
        };
        let (Some(nats), Some(region)) = (&self.nats, &self.region) else {
            bail!("a restore to a point reads the region's logs: give --nats URL and --region REGION");
        };
        let region = RegionId::new(region.as_str()).with_context(|| format!("--region {region}"))?;
        Ok(Some(Request { region, nats_url: nats.clone(), point }))
    }
}

/// Replay the store loaded from `from` to the point, then report.
pub async fn replay(store: &Store, from: &Path, dir: &Path, req: &Request) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut bars = Bars { tty, every: if tty { Duration::from_millis(200) } else { Duration::from_secs(5) }, at: None };
    let report = match replay::replay(store, dir, req, &mut |s| bars.show(s)).await {
        Ok(report) => report,
        Err(e) => {
            let left = match marker::read(dir) {
                Ok(None) => "it holds the backup's state as loaded, without a point",
                _ => "it holds a partial state (marked so: no node starts on it)",
            };
            let (from, point, dir) = (from.display(), req.point, dir.display());
            bail!("restoring {from} to the point ({point}): {e}\n{dir}: {left}; empty it before restoring again");
        }
    };
    if tty {
        eprintln!();
    }
    print(&report, from, dir, req, &super::describe(store)?);
    Ok(())
}

/// One progress bar per stream, redrawn at most every `every` (a stream's end is always
/// drawn).
struct Bars {
    tty: bool,
    every: Duration,
    /// The stream drawn last and when.
    at: Option<(String, Instant)>,
}

impl Bars {
    fn show(&mut self, s: &StreamReplay) {
        let planned = s.through.saturating_sub(s.from);
        let ended = s.stopped_at.is_some() || s.replayed >= planned;
        match &self.at {
            Some((stream, at)) if *stream == s.stream && at.elapsed() < self.every && !ended => return,
            Some((stream, _)) if *stream != s.stream && self.tty => eprintln!(),
            _ => {}
        }
        let frac = if planned == 0 || ended { 1.0 } else { s.replayed as f64 / planned as f64 };
        let detail = match s.stopped_at {
            Some(at) => format!("{} messages replayed; stopped at {at} (the point)", s.replayed),
            None => format!("{} of at most {planned} messages replayed", s.replayed),
        };
        bar(&format!("replay {}", s.stream), frac.min(1.0), &detail, self.tty);
        self.at = Some((s.stream.clone(), Instant::now()));
    }
}

fn print(r: &Report, from: &Path, dir: &Path, req: &Request, applied: &str) {
    println!("restored {} into {} to the point {}", from.display(), dir.display(), req.point);
    println!("  cut: changes at or after {} are not replayed", rfc3339(r.cut.before.wall_ms));
    if let Some(latest) = r.backup_latest {
        println!("  the backup's latest change: {}", rfc3339(latest.wall_ms));
    }
    for s in &r.streams {
        let range = if s.replayed > 0 { format!(" ({}..={})", s.from + 1, s.from + s.replayed) } else { String::new() };
        let end = match s.stopped_at {
            Some(at) => format!("stopped before message {at}, the first at or after the point"),
            None => format!("the stream ended at {} before the point", s.through),
        };
        let n = if s.replayed == 1 { "1 message".to_string() } else { format!("{} messages", s.replayed) };
        println!("  {} ({}): {n} replayed after the backup's cursor {}{range}; {end}", s.stream, s.region, s.from);
        if s.upstream_lag > 0 && s.stopped_at.is_none() {
            println!(
                "    warning: this mirror was {} messages behind its region's log: what it lacked is not in the restored state",
                s.upstream_lag
            );
        }
    }
    for d in &r.dead_letters.shown {
        println!("  dead letter: {d}");
    }
    if r.dead_letters.total > r.dead_letters.shown.len() as u64 {
        println!("  ...{} dead letters in all (the directory's dead-letter table holds them)", r.dead_letters.total);
    }
    for g in &r.gaps {
        println!(
            "  warning: {} waits behind a gap: applied through {}, {} changesets wait from {} (read from {} at {})",
            g.origin, g.applied, g.waiting, g.next_waiting, g.stream, g.stream_seq
        );
    }
    println!("applied: {applied}");
    println!(
        "marked {}: no node starts on {} (it would catch up past the point).\n\
         read the restored values: concord inspect --data-dir {} kv|ls|doc BUCKET [KEY]\n\
         write them back:          concord restore --data-dir {} --write-back URL --bucket BUCKET [--prefix P] [--missing-only] [--dry-run]\n\
         to let a node go on from the point and catch up from the logs, delete {}",
        marker::path(dir).display(),
        dir.display(),
        dir.display(),
        dir.display(),
        marker::path(dir).display()
    );
}
