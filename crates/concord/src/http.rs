//! The client side of the HTTP API's credentials, for every command that talks to a
//! node: the deployment's token, sent as `Authorization: Bearer <token>`.
//!
//! The token comes from `CONCORD_TOKEN`, else from the `token` of the `cluster.json` a
//! command was pointed at (`--dir`), else from `.cluster/cluster.json` under the current
//! directory (the demo's deployment); without one, requests go without it (a node with
//! `api_auth = "none"`).
//!
//! Redirects are followed here, not by the HTTP library: a follower answers a write
//! with 307 to its leader, on another port, and the library drops the `Authorization`
//! header on any redirect to another origin (rightly, in general). The leader's address
//! comes from the node itself, so the token goes with the request, at most
//! [`REDIRECTS_MAX`] times.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, LOCATION};

/// The most redirects one request follows.
pub const REDIRECTS_MAX: usize = 5;

static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Settle the token for this run (the first call wins).
pub fn init(cluster_dir: Option<&Path>) {
    TOKEN.get_or_init(|| {
        if let Ok(t) = std::env::var("CONCORD_TOKEN")
            && !t.trim().is_empty()
        {
            return Some(t.trim().to_string());
        }
        let from_cluster = |dir: &Path| {
            let bytes = std::fs::read(dir.join("cluster.json")).ok()?;
            serde_json::from_slice::<concord_api::ClusterJson>(&bytes).ok()?.token
        };
        cluster_dir.and_then(from_cluster).or_else(|| from_cluster(Path::new(".cluster")))
    });
}

/// Settle the token for this run to `token` (when nothing settled it before).
pub fn set(token: Option<String>) {
    let _ = TOKEN.set(token);
}

/// The token, if any.
pub fn token() -> Option<&'static str> {
    TOKEN.get_or_init(|| None).as_deref()
}

/// The `Authorization` line of a hand-written request (empty without a token).
pub fn authorization_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| token().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default())
}

/// A new random token (256 bits).
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A client that sends the token with every request and follows no redirect by itself
/// (use [`send`] to follow them).
pub fn client(timeout: std::time::Duration) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    if let Some(t) = token()
        && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}"))
    {
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// Send `req`, following 307/308 redirects with the same method, body and token (a
/// request whose body cannot be sent twice is refused).
pub async fn execute(req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let (client, req) = req.build_split();
    let mut req = req.context("building the request")?;
    for _ in 0..=REDIRECTS_MAX {
        let attempt = req.try_clone().context("a request whose body cannot be sent again")?;
        let (method, url) = (attempt.method().clone(), attempt.url().clone());
        let resp = client.execute(attempt).await.with_context(|| format!("{method} {url}"))?;
        if !matches!(resp.status().as_u16(), 307 | 308) {
            return Ok(resp);
        }
        let next = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).context("a redirect without Location")?;
        *req.url_mut() = url.join(next).with_context(|| format!("the redirect to {next:?}"))?;
    }
    anyhow::bail!("{} {}: more than {REDIRECTS_MAX} redirects", req.method(), req.url())
}
