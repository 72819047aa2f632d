//! What recorded runs observed, by kind of fault (`concord-chaos summary DIR...`): the
//! README's table of faults is read from this, not written by hand.
//!
//! Each fault is paired with the command that undid it (a kill with its start, a
//! partition or delay with its heal, a pause with its resume, a skew with its skew to 0),
//! and the operations that ran against the affected nodes while it lasted are counted by
//! outcome. Per run: how long convergence took after the heal, and how many messages the
//! nodes read back from an origin's log to fill a gap.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::history::{self, Event, Fault, Op, Outcome};
use super::state::FinalState;

/// One kind of fault, over every run read.
#[derive(Debug, Default)]
pub struct KindSummary {
    pub count: usize,
    pub total_ms: u64,
    pub longest_ms: u64,
    /// Operations on the affected nodes while it lasted: acknowledged, refused, unknown.
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    /// Skews: the values drawn, and on which nodes.
    pub detail: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub runs: usize,
    pub clean: usize,
    pub ops: usize,
    pub acked: usize,
    pub converge_ms_max: u64,
    pub repaired: u64,
    pub runs_with_repairs: usize,
    pub kinds: BTreeMap<String, KindSummary>,
}

/// The name a fault goes by in the summary; `drawn` is the run's last note of what was
/// drawn before it ("drawn: kill-leader us-east", "drawn: skew of X, which leads").
fn kind_of(f: &Fault, drawn: &str) -> Option<String> {
    let kind = match f.kind.as_str() {
        "partition" => "partition of a region",
        "delay" if f.arg.unwrap_or(0) > 0 => "one-way delay",
        "kill" if f.target.starts_with("nats-") => "SIGKILL of a region's NATS server",
        "kill" if f.target.starts_with("backbone-") => "SIGKILL of a backbone server",
        "kill" if drawn.starts_with("drawn: kill-leader") => "SIGKILL of a leader",
        "kill" => "SIGKILL of a follower",
        "pause" => "SIGSTOP of a leader past its lease",
        "skew" if f.arg.unwrap_or(0) != 0 && drawn.ends_with("which leads") => "clock skew of a leader",
        "skew" if f.arg.unwrap_or(0) != 0 => "clock skew of a follower",
        _ => return None,
    };
    Some(kind.to_string())
}

/// Whether `undo` ends `f`.
fn undoes(f: &Fault, undo: &Fault) -> bool {
    let same = undo.target == f.target || undo.target == "*";
    match f.kind.as_str() {
        "partition" => undo.kind == "heal" && same,
        "delay" => (undo.kind == "delay" && undo.arg == Some(0) && same) || (undo.kind == "heal" && undo.target == "*"),
        "kill" => undo.kind == "start" && same,
        "pause" => undo.kind == "resume" && same,
        "skew" => undo.kind == "skew" && undo.arg == Some(0) && same,
        _ => false,
    }
}

/// Whether `op` ran against what `f` affected.
fn affected(f: &Fault, op: &Op) -> bool {
    let region_of = |target: &str| target.trim_start_matches("nats-").to_string();
    match f.kind.as_str() {
        "partition" | "delay" => op.node.starts_with(&format!("{}-", f.target)),
        "kill" if f.target.starts_with("backbone-") => true,
        "kill" if f.target.starts_with("nats-") => op.node.starts_with(&format!("{}-", region_of(&f.target))),
        _ => op.node == f.target,
    }
}

/// Read one run's directory into `summary`.
pub fn add_run(summary: &mut Summary, dir: &Path) -> anyhow::Result<()> {
    let events = history::read(&dir.join("history.jsonl"))?;
    let state: FinalState = serde_json::from_slice(&std::fs::read(dir.join("final.json"))?)?;
    let problems = std::fs::read_to_string(dir.join("problems.txt")).unwrap_or_default();
    summary.runs += 1;
    summary.clean += usize::from(problems.trim().is_empty());
    summary.converge_ms_max = summary.converge_ms_max.max(state.converge_ms);
    let repaired: u64 = state.nodes.values().filter_map(|n| n.counters.get("gap_repair_messages_total")).sum();
    summary.repaired += repaired;
    summary.runs_with_repairs += usize::from(repaired > 0);
    let ops: Vec<&Op> = events.iter().filter_map(|e| if let Event::Op(o) = e { Some(o) } else { None }).collect();
    summary.ops += ops.len();
    summary.acked += ops.iter().filter(|o| o.result == Outcome::Ok).count();
    // Each fault with the last "drawn: ..." note before it.
    let mut drawn = String::new();
    let mut faults: Vec<(&Fault, String)> = Vec::new();
    for e in &events {
        match e {
            Event::Note { text, .. } if text.starts_with("drawn: ") => drawn = text.clone(),
            Event::Fault(f) => faults.push((f, drawn.clone())),
            _ => {}
        }
    }
    for (i, (f, drawn)) in faults.iter().enumerate() {
        let Some(kind) = kind_of(f, drawn) else { continue };
        let end_ms = faults[i + 1..].iter().find(|(u, _)| undoes(f, u)).map_or(f.end_ms, |(u, _)| u.start_ms);
        let k = summary.kinds.entry(kind).or_default();
        k.count += 1;
        k.total_ms += end_ms - f.start_ms;
        k.longest_ms = k.longest_ms.max(end_ms - f.start_ms);
        for op in ops.iter().filter(|o| o.start_ms >= f.start_ms && o.start_ms < end_ms && affected(f, o)) {
            match op.result {
                Outcome::Ok => k.ok += 1,
                Outcome::Fail => k.fail += 1,
                Outcome::Unknown => k.unknown += 1,
            }
        }
        if f.kind == "skew" || f.kind == "delay" {
            k.detail.push(format!("{} {:+} ms", f.target, f.arg.unwrap_or(0)));
        }
    }
    Ok(())
}

/// The summary as a Markdown table, with its totals.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} runs ({} clean), {} operations ({} acknowledged), convergence after heal at most {} ms; \
         {} messages read back from origin logs to fill gaps, in {} runs",
        s.runs, s.clean, s.ops, s.acked, s.converge_ms_max, s.repaired, s.runs_with_repairs
    );
    let _ = writeln!(
        out,
        "\n| fault | times | total / longest | operations on the affected nodes meanwhile: acknowledged / refused / unknown |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (kind, k) in &s.kinds {
        let detail = if k.detail.is_empty() { String::new() } else { format!(" ({})", k.detail.join(", ")) };
        let _ = writeln!(
            out,
            "| {kind}{detail} | {} | {:.1} s / {:.1} s | {} / {} / {} |",
            k.count,
            k.total_ms as f64 / 1000.0,
            k.longest_ms as f64 / 1000.0,
            k.ok,
            k.fail,
            k.unknown
        );
    }
    out
}
