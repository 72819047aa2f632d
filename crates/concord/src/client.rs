//! The command-line client: each command is one HTTP request to `--endpoint`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The node to talk to.
    #[arg(long, env = "CONCORD_ENDPOINT", default_value = "http://127.0.0.1:8301")]
    pub endpoint: String,
}

pub use concord_core::input::encode_segment;

fn http() -> reqwest::Client {
    crate::http::client(std::time::Duration::from_secs(60))
}

async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
    let resp = crate::http::execute(req).await.context("sending the request")?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the response")?.to_vec();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}

fn print_body(body: &[u8]) {
    println!("{}", String::from_utf8_lossy(body));
}

pub async fn put(
    ep: &Endpoint,
    bucket: &str,
    key: &str,
    value: Option<String>,
    durability: &str,
) -> anyhow::Result<()> {
    let value = match value {
        Some(v) => v.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the value from stdin")?;
            buf
        }
    };
    let url =
        format!("{}/v1/kv/{}/{}?durability={durability}", ep.endpoint, encode_segment(bucket), encode_segment(key));
    print_body(&send(http().put(url).body(value)).await?);
    Ok(())
}

/// `GET url`: fine when it answers 2xx within `timeout_ms`.
pub async fn probe(url: &str, timeout_ms: u64) -> anyhow::Result<()> {
    let client = crate::http::client(std::time::Duration::from_millis(timeout_ms));
    send(client.get(url)).await.with_context(|| format!("probing {url}"))?;
    Ok(())
}

pub async fn get(ep: &Endpoint, bucket: &str, key: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/kv/{}/{}", ep.endpoint, encode_segment(bucket), encode_segment(key));
    let body = send(http().get(url)).await?;
    print_body(&body);
    Ok(())
}

pub async fn del(ep: &Endpoint, bucket: &str, key: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/kv/{}/{}", ep.endpoint, encode_segment(bucket), encode_segment(key));
    print_body(&send(http().delete(url)).await?);
    Ok(())
}

pub async fn ls(
    ep: &Endpoint,
    bucket: &str,
    prefix: &str,
    after: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let mut url = format!("{}/v1/kv/{}?prefix={}", ep.endpoint, encode_segment(bucket), encode_segment(prefix));
    if let Some(a) = after {
        url.push_str(&format!("&after={}", encode_segment(&a)));
    }
    if let Some(l) = limit {
        url.push_str(&format!("&limit={l}"));
    }
    let body = send(http().get(url)).await?;
    let page: serde_json::Value = serde_json::from_slice(&body).context("decoding the listing")?;
    for k in page["keys"].as_array().into_iter().flatten() {
        println!("{}", k.as_str().unwrap_or_default());
    }
    if let Some(next) = page["next"].as_str() {
        eprintln!("(more: --after {next})");
    }
    Ok(())
}

pub async fn doc(
    ep: &Endpoint,
    bucket: &str,
    key: &str,
    ops: Option<String>,
    automerge_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/docs/{}/{}", ep.endpoint, encode_segment(bucket), encode_segment(key));
    if let Some(ops) = ops {
        let parsed: serde_json::Value = serde_json::from_str(&ops).context("--ops is not JSON")?;
        let body = if parsed.is_array() { serde_json::json!({ "ops": parsed }) } else { parsed };
        print_body(&send(http().post(url).json(&body)).await?);
        return Ok(());
    }
    if let Some(path) = automerge_out {
        let bytes = send(http().get(format!("{url}?format=automerge"))).await?;
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} bytes to {}", bytes.len(), path.display());
        return Ok(());
    }
    let body = send(http().get(url)).await?;
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
