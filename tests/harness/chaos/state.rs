//! The final state of a fault run, captured once every fault is healed and the
//! replicas had time to converge: what every node shows of every key the history
//! touched, the conflict logs, and the origins of every changeset in each region's log.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_api::StatusBody;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BUCKET;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeState {
    /// `GET /v1/status`, or `None` when the node did not answer.
    pub status: Option<StatusBody>,
    /// Register key -> `GET ...?format=versions` (`None`: 404).
    pub registers: BTreeMap<String, Option<Value>>,
    /// Document key -> the document as JSON (`None`: 404).
    pub docs: BTreeMap<String, Option<Value>>,
    /// Every key `GET /v1/kv/chaos` lists.
    pub listed: Vec<String>,
    /// The node's conflict log for the bucket.
    pub conflicts: Vec<Value>,
    /// What could not be read (a node that did not answer is itself a finding).
    pub errors: Vec<String>,
    /// The node's counters of what it held back or repaired ([`COUNTERS`]), for the
    /// report: the checker does not judge by them.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// The counters a run reports (without the `concord_` prefix).
pub const COUNTERS: [&str; 5] = [
    "gap_repair_messages_total",
    "log_gaps_total",
    "dead_letters_total",
    "stream_messages_missing_total",
    "task_failures_total",
];

/// The [`COUNTERS`] in a `/metrics` page.
pub fn parse_counters(page: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(name) = line.strip_prefix("concord_").and_then(|l| l.split('{').next()) else { continue };
        if let (true, Some(Ok(v))) = (COUNTERS.contains(&name), line.rsplit(' ').next().map(str::parse::<u64>)) {
            counters.insert(name.to_string(), v);
        }
    }
    counters
}

/// One changeset of a region's log: its stream sequence and what it says it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub stream_seq: u64,
    pub origin: String,
    pub first_seq: u64,
    pub changes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalState {
    /// Whether every node showed the same applied vector, none lagging, before capture.
    pub converged: bool,
    pub converge_ms: u64,
    pub nodes: BTreeMap<String, NodeState>,
    /// Region -> its log, in stream order (entries that do not decode are listed with
    /// origin `undecodable`).
    pub logs: BTreeMap<String, Vec<LogEntry>>,
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Option<Value>, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    match r.status().as_u16() {
        404 => Ok(None),
        200 => r.json().await.map(Some).map_err(|e| format!("{url}: {e}")),
        s => Err(format!("{url}: status {s}: {}", r.text().await.unwrap_or_default())),
    }
}

/// Capture what node `url` shows of `registers` and `docs`.
pub async fn capture_node(url: &str, registers: &[String], docs: &[String]) -> NodeState {
    let client = crate::client_builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut state = NodeState::default();
    match get_json(&client, &format!("{url}/v1/status")).await {
        Ok(Some(v)) => state.status = serde_json::from_value(v).ok(),
        Ok(None) => state.errors.push("status: 404".into()),
        Err(e) => {
            state.errors.push(e);
            return state;
        }
    }
    for key in registers {
        let at = format!("{url}/v1/kv/{BUCKET}/{}?format=versions", crate::seg(key));
        match get_json(&client, &at).await {
            Ok(v) => {
                state.registers.insert(key.clone(), v);
            }
            Err(e) => state.errors.push(e),
        }
    }
    for key in docs {
        match get_json(&client, &format!("{url}/v1/docs/{BUCKET}/{}", crate::seg(key))).await {
            Ok(v) => {
                state.docs.insert(key.clone(), v);
            }
            Err(e) => state.errors.push(e),
        }
    }
    let mut after: Option<String> = None;
    loop {
        let mut at = format!("{url}/v1/kv/{BUCKET}?limit=1000");
        if let Some(a) = &after {
            at.push_str(&format!("&after={}", crate::seg(a)));
        }
        match get_json(&client, &at).await {
            Ok(Some(page)) => {
                state
                    .listed
                    .extend(page["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from)));
                match page["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            Ok(None) => break,
            Err(e) => {
                state.errors.push(e);
                break;
            }
        }
    }
    match client.get(format!("{url}/metrics")).send().await {
        Ok(r) => state.counters = parse_counters(&r.text().await.unwrap_or_default()),
        Err(e) => state.errors.push(format!("{url}/metrics: {e}")),
    }
    let mut before: Option<String> = None;
    for _ in 0..100 {
        let mut at = format!("{url}/v1/conflicts?bucket={BUCKET}&limit=500");
        if let Some(b) = &before {
            at.push_str(&format!("&before={}", crate::seg(b)));
        }
        match get_json(&client, &at).await {
            Ok(Some(page)) => {
                state.conflicts.extend(page["conflicts"].as_array().into_iter().flatten().cloned());
                match page["next"].as_str() {
                    Some(n) => before = Some(n.to_string()),
                    None => break,
                }
            }
            Ok(None) => break,
            Err(e) => {
                state.errors.push(e);
                break;
            }
        }
    }
    state
}

/// Every changeset of `region`'s log, read from the region's NATS at `nats_url`.
pub async fn read_log(nats_url: &str, region: &str) -> Result<Vec<LogEntry>, String> {
    let client = crate::nats_connect(nats_url).await.map_err(|e| format!("{nats_url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let name = format!("CONCORD_LOG_{}", region.to_ascii_uppercase().replace('-', "_"));
    let mut stream = js.get_stream(&name).await.map_err(|e| format!("{name}: {e}"))?;
    let info = stream.info().await.map_err(|e| format!("{name}: {e}"))?.clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut entries = Vec::new();
    if info.state.messages == 0 {
        return Ok(entries);
    }
    for seq in first..=last {
        let msg = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted or purged messages leave holes; they are not ours to judge here.
            Err(_) => continue,
        };
        entries.push(match concord_core::changeset::Changeset::decode(&msg.payload) {
            Ok(cs) => LogEntry {
                stream_seq: seq,
                origin: cs.origin.to_string(),
                first_seq: cs.first_seq,
                changes: cs.changes.len() as u64,
            },
            Err(_) => LogEntry { stream_seq: seq, origin: "undecodable".into(), first_seq: 0, changes: 0 },
        });
    }
    Ok(entries)
}
