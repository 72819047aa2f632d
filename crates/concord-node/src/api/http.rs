//! The HTTP front end (DESIGN.md, "Interfaces"). Paths are parsed here rather than by
//! the router, so that every malformed key (not UTF-8 once percent-decoded, empty, too
//! long) gets the same JSON error as any other bad input.
//!
//! Every route runs under the node's HTTP limits ([`super::limits`]): beyond
//! `http_concurrency_max` requests at once, 503 `overloaded` at once; past
//! `request_timeout_ms`, 504 `timeout`. Status and metrics have a budget of their own.
//!
//! Beyond the contract: `GET /ui` (the dashboard, [`super::ui`]) and `GET /v1/deployment`
//! (every node's status, [`super::deployment`]), on the operator's budget.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use concord_api::ErrorCode;

use super::auth::Access;
use super::deployment::Gatherer;
use super::limits::{Class, Deadline, Limits};
use super::{Op, Params, Reply};
use crate::Node;
use crate::error::NodeError;

/// The node's HTTP service: one dispatcher (a request is classed, admitted under its
/// class's limits, routed, and its answer stamped), rather than a stack of router and
/// middleware layers, each of which boxes every request's future (measured on the read
/// path: the layers cost more than the read).
pub fn router(node: Arc<Node>, deployment: Arc<Gatherer>) -> Router {
    let timeout = Duration::from_millis(node.cfg.request_timeout_ms);
    let limits = Arc::new(Limits::new(node.cfg.http_concurrency_max, timeout, node.metrics.clone()));
    Router::new().fallback(dispatch).with_state(Http { node, limits, deployment })
}

#[derive(Clone)]
struct Http {
    node: Arc<Node>,
    limits: Arc<Limits>,
    deployment: Arc<Gatherer>,
}

/// The routes (DESIGN.md, "Interfaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Status,
    Metrics,
    Snapshot,
    Kv,
    Docs,
    ConflictsList,
    ConflictEvents,
    Conflict,
    ConflictResolve,
    DeadLetters,
    Deployment,
    Ui,
    Health,
    /// `GET /v1/sync`, a WebSocket ([`super::sync`]).
    Sync,
    NotFound,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/v1/status" => Route::Status,
            "/metrics" => Route::Metrics,
            "/v1/snapshot" => Route::Snapshot,
            "/v1/conflicts" => Route::ConflictsList,
            "/v1/conflicts/events" => Route::ConflictEvents,
            "/v1/dead-letters" => Route::DeadLetters,
            "/v1/deployment" => Route::Deployment,
            "/v1/health" => Route::Health,
            "/v1/sync" => Route::Sync,
            "/ui" => Route::Ui,
            p if p.starts_with("/ui/") => Route::Ui,
            p if p.starts_with("/v1/kv/") => Route::Kv,
            p if p.starts_with("/v1/docs/") => Route::Docs,
            p => match p.strip_prefix("/v1/conflicts/").map(|rest| rest.split('/').collect::<Vec<_>>()).as_deref() {
                Some([id]) if !id.is_empty() => Route::Conflict,
                Some([id, "resolve"]) if !id.is_empty() => Route::ConflictResolve,
                _ => Route::NotFound,
            },
        }
    }

    fn class(self) -> Class {
        match self {
            Route::Status | Route::Metrics | Route::Deployment | Route::Ui | Route::Health => Class::Operator,
            Route::Snapshot => Class::Bulk,
            _ => Class::Data,
        }
    }

    /// What a token must allow for `method` on this route; `None`: open to anyone (no
    /// data: the health check, the dashboard's static files).
    fn access(self, method: &Method) -> Option<Access> {
        match self {
            Route::Ui | Route::Health => None,
            // Checked by the route itself: a browser's WebSocket sends no headers, so the
            // token may come in the query too ([`super::sync`]).
            Route::Sync => None,
            Route::ConflictResolve => Some(Access::Write),
            Route::Kv | Route::Docs if method != Method::GET && method != Method::HEAD => Some(Access::Write),
            _ => Some(Access::Read),
        }
    }

    /// The one method a route takes, when it takes one (kv and docs take several).
    fn method(self) -> Option<Method> {
        match self {
            Route::ConflictResolve => Some(Method::POST),
            Route::Kv | Route::Docs | Route::NotFound => None,
            _ => Some(Method::GET),
        }
    }
}

/// Admit the request under the limits of its class (or answer 503 `overloaded`), hand
/// its deadline to the handler, answer 504 `timeout` if it runs past it, and stamp the
/// answer: every response carries the session token and the region.
async fn dispatch(State(http): State<Http>, mut req: Request) -> Response {
    let route = Route::of(req.uri().path());
    if let Some(needs) = route.access(req.method())
        && let Err(e) = http.node.tokens.check(req.headers(), needs)
    {
        // Nothing of the node's state (not even its session token) to whoever has no token.
        let mut resp = respond(Reply::error(&e));
        if matches!(e, NodeError::Unauthorized(_)) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, super::auth::challenge());
        }
        return resp;
    }
    let resp = if route == Route::Sync && req.method() == Method::GET {
        // Long-lived: under its own limit (`sync_connections_max`), not a request's.
        super::sync::upgrade(http.node.clone(), req).await
    } else if route == Route::NotFound {
        respond(Reply::error(&NodeError::NotFound("no such route".into())))
    } else if route.method().is_some_and(|m| m != req.method()) {
        method_not_allowed(req.method())
    } else {
        match http.limits.admit(route.class()) {
            Err(e) => respond(Reply::error(&e)),
            Ok(admitted) => {
                req.extensions_mut().insert(admitted.deadline);
                let resp = http.limits.within(route.class(), serve(&http, route, req)).await;
                drop(admitted);
                resp.unwrap_or_else(|e| respond(Reply::error(&e)))
            }
        }
    };
    stamp(&http.node, resp)
}

async fn serve(http: &Http, route: Route, req: Request) -> Response {
    let node = &http.node;
    let read = matches!(route, Route::Kv | Route::Docs) && req.method() == Method::GET;
    let started = std::time::Instant::now();
    let resp = match route {
        Route::Deployment => respond(http.deployment.reply(node).await),
        Route::Ui => ui(req.uri().path()),
        Route::Health => respond(Reply::json(200, serde_json::json!({"ok": true}))),
        _ => route_to(node, route, req).await,
    };
    if read {
        node.metrics.read_seconds.observe(started.elapsed().as_secs_f64());
    }
    resp
}

async fn route_to(node: &Arc<Node>, route: Route, req: Request) -> Response {
    match route {
        Route::Status => respond(super::status(node).await),
        Route::Metrics => metrics(node).await,
        Route::Snapshot => match super::snapshot_body(node) {
            Ok(body) => {
                let mut resp = Response::new(body);
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(super::OCTETS));
                resp
            }
            Err(e) => respond(Reply::error(&e)),
        },
        Route::Kv => kv(node, req).await,
        Route::Docs => docs(node, req).await,
        Route::ConflictsList => {
            let (parts, _) = req.into_parts();
            respond(super::conflicts_list(node, &request_params(&parts)).await.into())
        }
        Route::ConflictEvents => conflict_events(node, req),
        Route::Conflict => respond(super::conflict_get(node, &conflict_id(req.uri().path())).await.into()),
        Route::ConflictResolve => conflict_resolve(node, req).await,
        Route::DeadLetters => respond(super::dead_letters(node, &params(req.uri().query())).await.into()),
        Route::Deployment | Route::Ui | Route::Health => unreachable!("served by `serve`"),
        Route::Sync => unreachable!("a GET is upgraded in `dispatch`; the route takes no other method"),
        Route::NotFound => unreachable!("answered before admission"),
    }
}

/// `GET /ui` and its assets, each with the policy that keeps the page on this origin.
fn ui(path: &str) -> Response {
    let Some(asset) = super::ui::asset(path) else {
        return respond(Reply::error(&NodeError::NotFound(format!("no dashboard asset {path}"))));
    };
    let headers = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, super::ui::CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (StatusCode::OK, headers, asset.body).into_response()
}

/// `GET /v1/conflicts/events`: server-sent events, one per conflict record committed.
fn conflict_events(node: &Node, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match super::conflict_events(node, &request_params(&parts)) {
        Err(e) => respond(Reply::error(&e)),
        Ok(events) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            Body::from_stream(events),
        )
            .into_response(),
    }
}

/// The `{id}` of `/v1/conflicts/{id}[/resolve]`, percent-decoded.
fn conflict_id(path: &str) -> String {
    let rest = path.strip_prefix("/v1/conflicts/").unwrap_or("");
    String::from_utf8_lossy(&percent_decode(rest.split('/').next().unwrap_or(""))).into_owned()
}

const TOKEN: header::HeaderName = header::HeaderName::from_static("concord-token");
const REGION: header::HeaderName = header::HeaderName::from_static("concord-region");

fn stamp(node: &Node, mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_maybe_shared(super::current_token(node)) {
        headers.insert(TOKEN, v);
    }
    headers.insert(REGION, node.region_header.clone());
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

async fn metrics(node: &Node) -> Response {
    let scrape = super::scrape(node).await;
    let body = node.metrics.render(node.region.as_str(), &node.cfg.node, scrape);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
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

async fn conflict_resolve(node: &Node, req: Request) -> Response {
    let id = conflict_id(req.uri().path());
    let (parts, body) = req.into_parts();
    let p = request_params(&parts);
    let reply = match read_body(node, body).await {
        Ok(b) => super::conflict_resolve(node, &id, b, &p).await,
        Err(e) => Err(e),
    };
    respond(reply.into())
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

async fn kv(node: &Node, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().trim_start_matches("/v1/kv/").to_string();
    let p = request_params(&parts);
    let (bucket, key) = bucket_and_key(&rest);
    let (op, reply) = match (&parts.method, key) {
        (&Method::GET, None) => (Op::KvList, super::kv_list(node, &bucket, &p).await),
        (&Method::GET, Some(k)) => (Op::KvGet, super::kv_get(node, &bucket, &k, &p).await),
        (&Method::PUT, Some(k)) => match read_body(node, body).await {
            Ok(b) => (Op::KvPut, super::kv_put(node, &bucket, &k, b, &p).await),
            Err(e) => (Op::KvPut, Err(e)),
        },
        (&Method::DELETE, Some(k)) => (Op::KvDel, super::kv_delete(node, &bucket, &k, &p).await),
        (m, _) => return method_not_allowed(m),
    };
    super::count(node, op, &reply);
    respond(reply.into())
}

async fn docs(node: &Node, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().trim_start_matches("/v1/docs/").to_string();
    let p = request_params(&parts);
    let (bucket, key) = bucket_and_key(&rest);
    let Some(key) = key else {
        let op = if parts.method == Method::GET { Op::DocGet } else { Op::DocApply };
        let refused = Err(NodeError::bad(ErrorCode::BadKey, "the path names no key: /v1/docs/{bucket}/{key}"));
        super::count(node, op, &refused);
        return respond(refused.into());
    };
    let (op, reply) = match parts.method {
        Method::GET => (Op::DocGet, super::doc_get(node, &bucket, &key, &p).await),
        Method::POST => match read_body(node, body).await {
            Ok(b) => (Op::DocApply, super::doc_apply(node, &bucket, &key, b, &p).await),
            Err(e) => (Op::DocApply, Err(e)),
        },
        ref m => return method_not_allowed(m),
    };
    super::count(node, op, &reply);
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
