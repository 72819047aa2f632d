//! `concord restore --write-back URL --bucket B [--prefix P]`: the recovery. The values a
//! directory restored to a point holds for a bucket are written into the live
//! deployment as new writes (an ordinary PUT, or document operations), so they replicate
//! everywhere like any write, and a later write still wins over them.
//!
//! Only from a directory restored to a point (its marker says the replay completed): a
//! plain restore holds the backup's state, which may predate writes the operator wants
//! to keep. What is written is decided by `concord_node::replay::write_back`: a key whose
//! restored value the live state lacks or holds otherwise is put; a key the restored
//! state lacks is left alone; a document gets the operations that put back its
//! restored properties. Each write is printed; `--dry-run` prints and writes nothing.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use concord_node::replay::{marker, write_back as plan};
use concord_storage::Store;
use serde_json::{Value as Json, json};

use crate::client::encode_segment;

#[derive(clap::Args)]
pub struct WriteBackArgs {
    /// Write the restored values back into the live deployment at URL (its region's
    /// leader), as new writes. Needs a directory restored to a point.
    #[arg(long, value_name = "URL")]
    pub write_back: Option<String>,
    /// The bucket to write back (its keys, and its documents).
    #[arg(long, requires = "write_back")]
    pub bucket: Option<String>,
    /// Only the keys and documents whose names start with this.
    #[arg(long, requires = "write_back")]
    pub prefix: Option<String>,
    /// Write only what the live state lacks (deleted keys, absent document
    /// properties); values changed since the point are kept.
    #[arg(long, requires = "write_back")]
    pub missing_only: bool,
    /// Print what would be written; write nothing.
    #[arg(long, requires = "write_back")]
    pub dry_run: bool,
}

/// Keys read from the restored store per page.
const KEYS_PAGE: usize = 1000;
/// Bytes of documents read from the restored store per page.
const DOCS_PAGE_BYTES: u64 = 16 << 20;
/// Operations sent in one document request.
const OPS_PER_REQUEST: usize = 100;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Tally {
    written: u64,
    same: u64,
}

pub async fn run(store: &Store, dir: &Path, url: &str, args: &WriteBackArgs) -> anyhow::Result<()> {
    match marker::read(dir).map_err(anyhow::Error::msg)? {
        Some(m) if m.state == marker::State::Complete => {}
        Some(_) => bail!("{} holds a restore that did not complete: write back from a complete one", dir.display()),
        None => bail!(
            "{} was not restored to a point (no {}): restore with --until-time or --until-seq first; \
             a backup's own state may be older than writes you want to keep",
            dir.display(),
            marker::MARKER_FILE
        ),
    }
    let Some(bucket) = &args.bucket else { bail!("--write-back needs --bucket") };
    let prefix = args.prefix.as_deref().unwrap_or("");
    let base = url.trim_end_matches('/');
    let http = crate::http::client(REQUEST_TIMEOUT);
    let verb = if args.dry_run { "would write" } else { "wrote" };
    let to = Target { http, base, bucket, prefix, missing_only: args.missing_only, dry_run: args.dry_run };
    let keys = kv(store, &to).await?;
    let docs = docs(store, &to).await?;
    println!(
        "{verb} back {} keys and {} documents of {bucket} to {base}; {} keys and {} documents held the restored values already",
        keys.written, docs.written, keys.same, docs.same
    );
    Ok(())
}

/// Where and how to write back.
struct Target<'a> {
    http: reqwest::Client,
    base: &'a str,
    bucket: &'a str,
    prefix: &'a str,
    missing_only: bool,
    dry_run: bool,
}

async fn kv(store: &Store, to: &Target<'_>) -> anyhow::Result<Tally> {
    let Target { http, base, bucket, prefix, .. } = to;
    let mut tally = Tally::default();
    let mut after: Option<String> = None;
    loop {
        let keys = store.list_kv(bucket, prefix, after.as_deref(), KEYS_PAGE)?;
        for key in &keys {
            let Some(point) = plan::value_at(store, bucket, key)? else { continue };
            let url = format!("{base}/v1/kv/{}/{}", encode_segment(bucket), encode_segment(key));
            let live = get(http, &url).await?;
            if !plan::kv_differs(&point, live.as_deref(), to.missing_only) {
                tally.same += 1;
                continue;
            }
            let was = if live.is_some() { "held other bytes" } else { "was absent or deleted" };
            if !to.dry_run {
                send(http.put(&url).body(point.clone()), &url).await?;
            }
            println!("put {bucket}/{key} ({} bytes): it {was}", point.len());
            tally.written += 1;
        }
        if keys.len() < KEYS_PAGE {
            return Ok(tally);
        }
        after = keys.last().cloned();
    }
}

async fn docs(store: &Store, to: &Target<'_>) -> anyhow::Result<Tally> {
    let Target { http, base, bucket, prefix, .. } = to;
    let mut tally = Tally::default();
    let mut after: Option<String> = None;
    loop {
        let page = plan::docs_page(store, bucket, prefix, after.as_deref(), DOCS_PAGE_BYTES)?;
        for (key, saved) in &page.docs {
            let doc =
                concord_core::doc::load_doc(saved).with_context(|| format!("the restored document {bucket}/{key}"))?;
            let url = format!("{base}/v1/docs/{}/{}", encode_segment(bucket), encode_segment(key));
            let live: Option<Json> = match get(http, &url).await? {
                Some(body) => Some(serde_json::from_slice(&body).with_context(|| format!("GET {url}: no JSON"))?),
                None => None,
            };
            let ops = plan::doc_ops(&doc, live.as_ref(), to.missing_only);
            if ops.is_empty() {
                tally.same += 1;
                continue;
            }
            if !to.dry_run {
                for chunk in ops.chunks(OPS_PER_REQUEST) {
                    send(http.post(&url).json(&json!({ "ops": chunk })), &url).await?;
                }
            }
            let paths: Vec<String> = ops.iter().map(|op| format!("{} {}", op["op"], op["path"])).collect();
            println!("doc {bucket}/{key}: {} operations: {}", ops.len(), paths.join(", "));
            tally.written += 1;
        }
        match page.docs.last() {
            Some((key, _)) if page.more => after = Some(key.clone()),
            _ => return Ok(tally),
        }
    }
}

/// The live body at `url`; `None` on 404 (absent or deleted).
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let resp = http.get(url).send().await.with_context(|| format!("GET {url}"))?;
    match resp.status().as_u16() {
        200 => Ok(Some(resp.bytes().await.with_context(|| format!("GET {url}"))?.to_vec())),
        404 => Ok(None),
        s => bail!("GET {url}: {s}: {}", resp.text().await.unwrap_or_default().trim()),
    }
}

async fn send(req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<()> {
    let resp = crate::http::execute(req).await.with_context(|| format!("writing {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("writing {url}: {status}: {}", resp.text().await.unwrap_or_default().trim());
    }
    Ok(())
}
