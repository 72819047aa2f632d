//! The HTTP front end (DESIGN.md, "Interfaces"). Paths are parsed here rather than by
//! the router, so that every malformed key (not UTF-8 once percent-decoded, empty, too
//! long) gets the same JSON error as any other bad input.
//!
//! Every route runs under the node's HTTP limits ([`super::limits`]): beyond
//! `http_concurrency_max` requests at once, 503 `overloaded` at once; past
//! `request_timeout_ms`, 504 `timeout`. Status and metrics have a budget of their own.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use concord_api::ErrorCode;

use super::limits::{Class, Deadline, Limits};
use super::{Params, Reply};
use crate::Node;
use crate::error::NodeError;

pub fn router(node: Arc<Node>) -> Router {
    let timeout = Duration::from_millis(node.cfg.request_timeout_ms);
    let limits = Arc::new(Limits::new(node.cfg.http_concurrency_max, timeout, node.metrics.clone()));
    let limited = |class: Class| middleware::from_fn_with_state((limits.clone(), class), limit);
    let operator = Router::new().route("/v1/status", get(status)).route("/metrics", get(metrics));
    let bulk = Router::new().route("/v1/snapshot", get(snapshot));
    let data = Router::new()
        .route("/v1/kv/{*rest}", any(kv))
        .route("/v1/docs/{*rest}", any(docs))
        .route("/v1/conflicts", get(conflicts_list))
        .route("/v1/conflicts/{id}", get(conflict_get))
        .route("/v1/conflicts/{id}/resolve", axum::routing::post(conflict_resolve))
        .route("/v1/dead-letters", get(dead_letters));
    Router::new()
        .merge(operator.layer(limited(Class::Operator)))
        .merge(bulk.layer(limited(Class::Bulk)))
        .merge(data.layer(limited(Class::Data)))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node.clone(), stamp))
        .with_state(node)
}

/// Admit the request under the limits of its class (or answer 503 `overloaded`), hand
/// its deadline to the handler, and answer 504 `timeout` if it runs past it.
async fn limit(State((limits, class)): State<(Arc<Limits>, Class)>, mut req: Request, next: Next) -> Response {
    let admitted = match limits.admit(class) {
        Ok(admitted) => admitted,
        Err(e) => return respond(Reply::error(&e)),
    };
    req.extensions_mut().insert(admitted.deadline);
    let resp = limits.within(class, next.run(req)).await;
    drop(admitted);
    resp.unwrap_or_else(|e| respond(Reply::error(&e)))
}

/// Every response carries the session token and the region.
async fn stamp(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&super::current_token(&node)) {
        headers.insert("concord-token", v);
    }
    if let Ok(v) = HeaderValue::from_str(node.region.as_str()) {
        headers.insert("concord-region", v);
    }
    resp
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, [(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response();
    if let Some(location) = reply.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    respond(super::status(&node).await)
}

async fn snapshot(State(node): State<Arc<Node>>) -> Response {
    respond(super::snapshot(&node).await.into())
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let labels = format!("region=\"{}\",node=\"{}\"", node.region, node.cfg.node);
    let mut body = node.metrics.render(&labels);
    crate::metrics::render_gauges(&mut body, &labels, &node.view.borrow());
    let store = node.store.clone();
    if let Ok(Ok(docs)) = tokio::task::spawn_blocking(move || store.pending_docs()).await {
        crate::metrics::render_gauge(
            &mut body,
            &labels,
            ("documents_waiting", "Documents holding changes that wait for a dependency from another origin.", docs),
        );
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn conflicts_list(State(node): State<Arc<Node>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(super::conflicts_list(&node, &request_params(&parts)).await.into())
}

/// The parameters of a request: its query, its session headers, its path, and the
/// deadline [`limit`] gave it.
fn request_params(parts: &axum::http::request::Parts) -> Params {
    let mut p = params(parts.uri.query());
    p.token = parts.headers.get("concord-token").and_then(|v| v.to_str().ok()).map(String::from);
    if p.wait_ms.is_none() {
        p.wait_ms = parts.headers.get("concord-wait-ms").and_then(|v| v.to_str().ok()).map(String::from);
    }
    p.path_and_query = parts.uri.path_and_query().map(|pq| pq.to_string());
    p.deadline = parts.extensions.get::<Deadline>().copied();
    p
}

async fn dead_letters(State(node): State<Arc<Node>>, uri: axum::http::Uri) -> Response {
    respond(super::dead_letters(&node, &params(uri.query())).await.into())
}

async fn conflict_get(State(node): State<Arc<Node>>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    respond(super::conflict_get(&node, &id).await.into())
}

async fn conflict_resolve(
    State(node): State<Arc<Node>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let p = request_params(&parts);
    let reply = match read_body(&node, body).await {
        Ok(b) => super::conflict_resolve(&node, &id, b, &p).await,
        Err(e) => Err(e),
    };
    respond(reply.into())
}

async fn not_found() -> Response {
    respond(Reply::error(&NodeError::NotFound("no such route".into())))
}

fn method_not_allowed(method: &Method) -> Response {
    respond(Reply::error(&NodeError::bad(ErrorCode::MethodNotAllowed, format!("{method} is not allowed here"))))
}

/// Decode `%XX` escapes into raw bytes; a malformed escape is kept literally.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn params(query: Option<&str>) -> Params {
    let mut p = Params::default();
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = String::from_utf8_lossy(&percent_decode(&v.replace('+', " "))).into_owned();
        match k {
            "durability" => p.durability = Some(v),
            "prefix" => p.prefix = Some(v),
            "after" => p.after = Some(v),
            "limit" => p.limit = Some(v),
            "format" => p.format = Some(v),
            "timeout_ms" => p.timeout_ms = Some(v),
            "bucket" => p.bucket = Some(v),
            "key" => p.key = Some(v),
            "since" => p.since = Some(v),
            "before" => p.before = Some(v),
            "wait_ms" => p.wait_ms = Some(v),
            _ => {}
        }
    }
    p
}

/// Split `rest` (what follows `/v1/kv/` or `/v1/docs/`) into bucket and raw key bytes.
fn bucket_and_key(rest: &str) -> (String, Option<Vec<u8>>) {
    match rest.split_once('/') {
        Some((bucket, key)) => {
            (String::from_utf8_lossy(&percent_decode(bucket)).into_owned(), Some(percent_decode(key)))
        }
        None => (String::from_utf8_lossy(&percent_decode(rest)).into_owned(), None),
    }
}

/// Past the limit, a body is still read (and dropped) up to this many bytes, so the
/// client, still sending, receives the 413 instead of a broken connection.
const DRAIN_BYTES_MAX: usize = 64 << 20;

async fn read_body(node: &Node, body: Body) -> Result<Bytes, NodeError> {
    use futures::StreamExt;
    let limit = node.cfg.value_bytes_max;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| NodeError::bad(ErrorCode::BadBody, format!("reading the request body: {e}")))?;
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_BYTES_MAX {
            break;
        }
    }
    if total > limit {
        return Err(NodeError::TooLarge(format!("body is larger than the limit of {limit} bytes (value_bytes_max)")));
    }
    Ok(Bytes::from(buf))
}

async fn kv(State(node): State<Arc<Node>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().trim_start_matches("/v1/kv/").to_string();
    let p = request_params(&parts);
    let (bucket, key) = bucket_and_key(&rest);
    let reply = match (&parts.method, key) {
        (&Method::GET, None) => super::kv_list(&node, &bucket, &p).await,
        (&Method::GET, Some(k)) => super::kv_get(&node, &bucket, &k, &p).await,
        (&Method::PUT, Some(k)) => match read_body(&node, body).await {
            Ok(b) => super::kv_put(&node, &bucket, &k, b, &p).await,
            Err(e) => Err(e),
        },
        (&Method::DELETE, Some(k)) => super::kv_delete(&node, &bucket, &k, &p).await,
        (m, _) => return method_not_allowed(m),
    };
    respond(reply.into())
}

async fn docs(State(node): State<Arc<Node>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().trim_start_matches("/v1/docs/").to_string();
    let p = request_params(&parts);
    let (bucket, key) = bucket_and_key(&rest);
    let Some(key) = key else {
        return respond(Reply::error(&NodeError::bad(
            ErrorCode::BadKey,
            "the path names no key: /v1/docs/{bucket}/{key}",
        )));
    };
    let reply = match parts.method {
        Method::GET => super::doc_get(&node, &bucket, &key, &p).await,
        Method::POST => match read_body(&node, body).await {
            Ok(b) => super::doc_apply(&node, &bucket, &key, b, &p).await,
            Err(e) => Err(e),
        },
        ref m => return method_not_allowed(m),
    };
    respond(reply.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), b"a/b c");
        assert_eq!(percent_decode("%FF"), vec![0xff]);
        assert_eq!(percent_decode("%G1%"), b"%G1%");
        assert_eq!(percent_decode("%4"), b"%4");
    }
}
