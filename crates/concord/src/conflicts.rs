//! `concord conflicts` (a readable table, `--json`, `--follow`) and `concord resolve`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::{Endpoint, encode_segment};

pub struct Filter {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub since: Option<String>,
    pub limit: usize,
}

async fn fetch(ep: &Endpoint, f: &Filter) -> anyhow::Result<Vec<Value>> {
    let mut url = format!("{}/v1/conflicts?limit={}", ep.endpoint, f.limit);
    for (name, v) in [("bucket", &f.bucket), ("key", &f.key), ("since", &f.since)] {
        if let Some(v) = v {
            url.push_str(&format!("&{name}={}", encode_segment(v)));
        }
    }
    let resp = crate::http::client(std::time::Duration::from_secs(60))
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("decoding the conflict log")?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body["conflicts"].as_array().cloned().unwrap_or_default())
}

fn short(v: &Value, width: usize) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => "(deleted)".into(),
        other => other.to_string(),
    };
    if text.chars().count() > width { format!("{}…", text.chars().take(width - 1).collect::<String>()) } else { text }
}

fn row(r: &Value) -> String {
    let mut target = format!("{}/{}", r["bucket"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""));
    if let Some(path) = r["path"].as_array() {
        let parts: Vec<String> =
            path.iter().map(|p| p.as_str().map(String::from).unwrap_or_else(|| p.to_string())).collect();
        target.push_str(&format!(" .{}", parts.join(".")));
    }
    let winner = r["winner"].as_str().unwrap_or("");
    let versions: Vec<String> = r["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mark = if v["id"].as_str() == Some(winner) { "*" } else { "" };
            format!("{mark}{}={}", v["origin"].as_str().unwrap_or("?"), short(&v["value"], 24))
        })
        .collect();
    let resolved = match &r["resolved"] {
        Value::Null => "open".to_string(),
        res => format!("{} ({})", res["by"].as_str().unwrap_or(""), res["version"].as_str().unwrap_or("")),
    };
    let detected = r["detected_at"].as_str().unwrap_or("").chars().take(19).collect::<String>();
    format!(
        "{detected:<19}  {:<36}  {:<9}  {:<28}  {:<22}  {}",
        r["id"].as_str().unwrap_or(""),
        r["rule"].as_str().unwrap_or(""),
        short(&Value::String(target), 28),
        resolved,
        versions.join("  ")
    )
}

fn header() -> String {
    format!(
        "{:<19}  {:<36}  {:<9}  {:<28}  {:<22}  {}",
        "DETECTED (UTC)", "ID", "RULE", "KEY", "RESOLVED", "VERSIONS (*winner)"
    )
}

pub async fn show(ep: &Endpoint, f: Filter, as_json: bool, follow: bool) -> anyhow::Result<()> {
    if !follow {
        let records = fetch(ep, &f).await?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(&records)?);
        } else {
            println!("{}", header());
            // Oldest first, as when following: the newest ends up at the bottom.
            records.iter().rev().for_each(|r| println!("{}", row(r)));
            if records.is_empty() {
                eprintln!("(no conflicts)");
            }
        }
        return Ok(());
    }
    if !as_json {
        println!("{}", header());
    }
    let mut shown = Shown { seen: HashMap::new(), as_json };
    // Subscribe, then list: a record committed in between is in the stream, and one
    // listed and streamed alike is printed once. A stream that breaks is opened again.
    let mut events = subscribe(ep, &f).await?;
    shown.print_changed(fetch(ep, &f).await?.iter().rev());
    loop {
        let ended = match tail(&mut events, &mut shown).await {
            Ok(()) => "the node closed the stream".to_string(),
            Err(e) => format!("{e:#}"),
        };
        eprintln!("(reconnecting: {ended})");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let reopened = async {
                let events = subscribe(ep, &f).await?;
                let records = fetch(ep, &f).await?;
                anyhow::Ok((events, records))
            };
            match reopened.await {
                Ok((e, records)) => {
                    events = e;
                    shown.print_changed(records.iter().rev());
                    break;
                }
                Err(e) => eprintln!("(retrying: {e:#})"),
            }
        }
    }
}

/// What `--follow` has printed: each record's last printed state, by id.
struct Shown {
    seen: HashMap<String, Value>,
    as_json: bool,
}

impl Shown {
    /// Print the records that are new or changed since they were last printed. A record
    /// only grows (versions join it; it is resolved once), so an older state of one
    /// already printed (an event queued before the listing that showed a newer one) is
    /// skipped: a record never goes backwards on screen.
    fn print_changed<'a>(&mut self, records: impl Iterator<Item = &'a Value>) {
        let progress = |r: &Value| (!r["resolved"].is_null(), r["versions"].as_array().map_or(0, Vec::len));
        for r in records {
            let id = r["id"].as_str().unwrap_or("").to_string();
            if self.seen.get(&id).is_some_and(|last| last == r || progress(last) > progress(r)) {
                continue;
            }
            if self.as_json {
                println!("{r}");
            } else {
                println!("{}", row(r));
            }
            self.seen.insert(id, r.clone());
        }
    }
}

/// `GET /v1/conflicts/events` with the filter's bucket and key (server-sent events).
async fn subscribe(ep: &Endpoint, f: &Filter) -> anyhow::Result<reqwest::Response> {
    let mut url = format!("{}/v1/conflicts/events", ep.endpoint);
    let mut sep = '?';
    for (name, v) in [("bucket", &f.bucket), ("key", &f.key)] {
        if let Some(v) = v {
            url.push_str(&format!("{sep}{name}={}", encode_segment(v)));
            sep = '&';
        }
    }
    let resp = crate::http::execute(
        crate::http::client(std::time::Duration::from_secs(u64::from(u32::MAX)))
            .get(&url)
            .header("accept", "text/event-stream"),
    )
    .await
    .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{status}: {}", resp.text().await.unwrap_or_default().trim());
    }
    Ok(resp)
}

/// Print each record the stream brings until it ends. A `lagged` event (the node's feed
/// moved on without us) means records were missed: the caller lists again.
async fn tail(events: &mut reqwest::Response, shown: &mut Shown) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    // Where the search for an event's end goes on from (the buffer before it has none).
    let mut scanned = 0;
    loop {
        // The node sends a comment every 15 s: silence for three of them is a dead link
        // (a cut that reset nothing), and the stream is opened again.
        let chunk = match tokio::time::timeout(Duration::from_secs(45), events.chunk()).await {
            Err(_) => bail!("nothing from the node for 45 s"),
            Ok(chunk) => match chunk? {
                Some(chunk) => chunk,
                None => return Ok(()),
            },
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf[scanned..].windows(2).position(|w| w == b"\n\n").map(|at| scanned + at) {
            scanned = 0;
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let (name, data) = sse_fields(&String::from_utf8_lossy(&block));
            match name.as_deref() {
                Some("conflict") => {
                    let record: Value = serde_json::from_str(&data).context("a conflict event's record")?;
                    shown.print_changed(std::iter::once(&record));
                }
                Some("lagged") => bail!("the stream fell behind the node's feed ({data})"),
                _ => {}
            }
        }
        // An event's end may straddle two chunks: search again from its last byte.
        scanned = buf.len().saturating_sub(1);
        anyhow::ensure!(buf.len() <= EVENT_BYTES_MAX, "an event over {EVENT_BYTES_MAX} bytes");
    }
}

/// Longest server-sent event `--follow` takes (a record carries every competing value).
const EVENT_BYTES_MAX: usize = 64 << 20;

/// The `event:` name and the `data:` lines (joined) of one server-sent event.
fn sse_fields(block: &str) -> (Option<String>, String) {
    let (mut name, mut data) = (None, Vec::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}

pub async fn resolve(ep: &Endpoint, id: &str, value: Option<String>, pick: Option<String>) -> anyhow::Result<()> {
    let body = match (value, pick) {
        (Some(v), None) => {
            // A document property takes JSON; plain text is a string value.
            json!({ "value": serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v)) })
        }
        (None, Some(p)) => json!({ "pick": p }),
        _ => bail!("give --value or --pick"),
    };
    let url = format!("{}/v1/conflicts/{}/resolve", ep.endpoint, encode_segment(id));
    let client = crate::http::client(std::time::Duration::from_secs(60));
    let resp = crate::http::execute(client.post(&url).json(&body)).await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {}", text.trim());
    }
    println!("{text}");
    Ok(())
}
