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
    let resp = reqwest::get(&url).await.with_context(|| format!("GET {url}"))?;
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
    let records = fetch(ep, &f).await?;
    if as_json && !follow {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if !as_json {
        println!("{}", header());
    }
    // Oldest first on screen, so the newest ends up at the bottom as it does when following.
    let mut seen: HashMap<String, Value> = HashMap::new();
    for r in records.iter().rev() {
        if as_json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!("{}", row(r));
        }
        seen.insert(r["id"].as_str().unwrap_or("").to_string(), r.clone());
    }
    if !follow {
        if records.is_empty() {
            eprintln!("(no conflicts)");
        }
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let records = match fetch(ep, &f).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("(retrying: {e:#})");
                continue;
            }
        };
        for r in records.iter().rev() {
            let id = r["id"].as_str().unwrap_or("").to_string();
            if seen.get(&id) != Some(r) {
                if as_json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!("{}", row(r));
                }
                seen.insert(id, r.clone());
            }
        }
    }
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
    let resp = reqwest::Client::new().post(&url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {}", text.trim());
    }
    println!("{text}");
    Ok(())
}
