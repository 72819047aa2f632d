//! The history of a fault run: one JSON object per line, in the order things ended.
//!
//! - `{"t":"meta", ...}` first: the seed, the regions and nodes, the setup's keys;
//! - `{"t":"op", ...}`: one client operation (`put`, `del`, `doc_set`, `doc_del`, `inc`,
//!   `read`), with the node it went to, its start and end (ms since the run started),
//!   its result (`ok`, `fail`: refused, certainly not applied; `unknown`: timed out or
//!   cut off, maybe applied), the write's `origin:seq` from the acknowledgement, and the
//!   session tokens sent and received;
//! - `{"t":"fault", ...}`: one fault injected or removed, and whether the command worked.
//!
//! The checker reads this file and the final state (`final.json`) and nothing else.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged (2xx).
    Ok,
    /// Refused: certainly not applied.
    Fail,
    /// No answer, or an answer that leaves the outcome open: maybe applied.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `PUT /v1/kv/chaos/{key}` of `value`.
    Put,
    /// `DELETE /v1/kv/chaos/{key}`.
    Del,
    /// Set property `prop` of document `key` to `value`.
    DocSet,
    /// Delete property `prop` of document `key`.
    DocDel,
    /// Increment the shared counter by `by`.
    Inc,
    /// A session read of `key`: `value` is what it returned (`None`: absent).
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    pub region: String,
    pub node: String,
    pub kind: OpKind,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<i64>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub result: Outcome,
    /// HTTP status, or 0 when no answer came.
    pub status: u16,
    /// `origin:seq` of an acknowledged write that changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub token_in: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_out: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `partition`, `heal`, `delay`, `kill`, `start`, `pause`, `resume`, `skew`.
    pub kind: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<i64>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub seed: u64,
    pub regions: Vec<String>,
    pub nodes: Vec<String>,
    /// Register keys written once by the setup and never again (`key` -> value).
    pub fixed: Vec<(String, String)>,
    /// The workload's length and the faults' time, in ms.
    pub workload_ms: u64,
    /// The test-only mutation the nodes ran with, if any.
    #[serde(default)]
    pub mutation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    Meta(Meta),
    Op(Op),
    Fault(Fault),
    /// A note from the driver (the heal phase began, convergence took N ms, ...).
    Note {
        at_ms: u64,
        text: String,
    },
}

/// Appends events to the history file as they happen (so a run that dies leaves what
/// it did), and timestamps them against the run's start.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    out: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder { started: Instant::now(), out: Arc::new(Mutex::new(std::io::BufWriter::new(file))) })
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn record(&self, event: &Event) {
        let mut out = self.out.lock().unwrap();
        serde_json::to_writer(&mut *out, event).expect("history events serialize");
        out.write_all(b"\n").expect("history file writable");
        out.flush().expect("history file writable");
    }

    pub fn note(&self, text: impl Into<String>) {
        self.record(&Event::Note { at_ms: self.now_ms(), text: text.into() });
    }
}

/// Read a history file back.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?);
    }
    Ok(events)
}
