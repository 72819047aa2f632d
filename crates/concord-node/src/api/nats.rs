//! The NATS request/reply front end: a NATS micro service named `concord`, so any
//! client discovers it with `$SRV.INFO` / `$SRV.STATS`.
//!
//! Subjects: `concord.api.<region>.<op>` with op one of `kv.put`, `kv.get`, `kv.del`,
//! `kv.list`, `doc.apply`, `doc.changes` (Automerge changes made elsewhere, as
//! [`super::sync`] forwards them: each a length-prefixed byte string), `doc.get`, `status`, `conflicts.list`, `conflicts.get`,
//! `conflicts.resolve` (the record's id in `Concord-Conflict-Id`; filters of the list
//! in `Concord-Bucket`, `Concord-Key`, `Concord-Since`, `Concord-Before`, `Concord-Limit`).
//! Every conflict record a region writes is also published on
//! `concord.conflicts.<region>` (JSON), for subscribers. The bucket and key travel in the
//! headers `Concord-Bucket` and `Concord-Key` (keys may hold any UTF-8, dots included),
//! the query parameters in `Concord-Durability`, `Concord-Prefix`, `Concord-After`,
//! `Concord-Limit`, `Concord-Format`, `Concord-Timeout-Ms`; a session token in
//! `Concord-Token` (and its wait in `Concord-Wait-Ms`). The request body and the response body are the
//! HTTP API's; the response headers carry `Concord-Status` (the HTTP status code),
//! `Concord-Token`, `Concord-Region` and `Content-Type`.
//!
//! Each request is parsed once into an [`Op`] (an unknown name answers 400
//! `unknown_operation`; a subject no endpoint serves gets NATS' own "no responders"),
//! then runs in a task of its own under the node's NATS limits ([`super::limits`]):
//! beyond `nats_concurrency_max` at once, 503 `overloaded` at once; past
//! `request_timeout_ms`, 504 `timeout`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::service::{Request, ServiceExt};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::warn;

use super::limits::{Deadline, Limits};
pub use super::nats_op::{READ_OPS, WRITE_OPS};
use super::{Op, Params, Reply};
use crate::Node;
use crate::error::NodeError;

/// How long shutdown waits for the requests in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Where a region publishes every conflict record it creates, extends or resolves.
pub fn conflicts_subject(region: &str) -> String {
    format!("concord.conflicts.{region}")
}

pub fn group(region: &str) -> String {
    format!("concord.api.{region}")
}

/// Start the service and serve requests until `shutdown`. Every node of a region joins
/// the same queue group per endpoint, so NATS spreads requests over them. Every node
/// serves status; the node that leads now serves writes (it starts and stops them as it
/// gains and loses the lease); followers serve reads, and the leader serves them too
/// while no follower is alive. `serving` turns true once the endpoints of the node's
/// role are subscribed and the server has them (the node opens its HTTP API after it, so
/// a node that answers over HTTP answers over NATS too).
pub async fn serve(
    node: Arc<Node>,
    client: async_nats::Client,
    mut shutdown: watch::Receiver<bool>,
    serving: watch::Sender<bool>,
) -> Result<(), async_nats::Error> {
    let timeout = Duration::from_millis(node.cfg.request_timeout_ms);
    let limits = Arc::new(Limits::new(node.cfg.nats_concurrency_max, timeout, node.metrics.clone()));
    let main = start(&node, &client, &[Op::Status], &limits).await?;
    let (mut writes, mut reads): (Option<Running>, Option<Running>) = (None, None);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut view = node.view.clone();
    let failed = loop {
        tokio::select! {
            _ = shutdown.changed() => break None,
            _ = view.changed() => {}
            _ = tick.tick() => {}
        }
        // An endpoint whose task ended (its subscription closed, or it panicked) no
        // longer serves: fail, and the supervisor starts the service again.
        let running = [Some(&main), writes.as_ref(), reads.as_ref()];
        if running.into_iter().flatten().flat_map(|r| r.2.iter()).any(|t| t.is_finished()) {
            break Some("an endpoint of the NATS service stopped");
        }
        let leading = node.writes_here();
        let want_reads = !leading || node.followers.live().is_empty();
        toggle(&node, &client, &limits, &mut writes, leading, &WRITE_OPS).await?;
        if toggle(&node, &client, &limits, &mut reads, want_reads, &READ_OPS).await? {
            node.serves_nats_reads.store(want_reads, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(serves_reads = want_reads, leading, "NATS endpoints follow the node's role");
        }
        if !*serving.borrow() {
            client.flush().await?;
            serving.send_replace(true);
        }
    };
    for running in [writes.take(), reads.take(), Some(main)].into_iter().flatten() {
        stop(running).await;
    }
    limits.drain(DRAIN_DEADLINE).await;
    match failed {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// Start or stop a set of endpoints to match `wanted`; true when it changed.
async fn toggle(
    node: &Arc<Node>,
    client: &async_nats::Client,
    limits: &Arc<Limits>,
    running: &mut Option<Running>,
    wanted: bool,
    ops: &[Op],
) -> Result<bool, async_nats::Error> {
    match (wanted, running.is_some()) {
        (true, false) => *running = Some(start(node, client, ops, limits).await?),
        (false, true) => stop(running.take().expect("running")).await,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A running service: the service, the signal that stops its endpoints, their tasks.
type Running = (async_nats::service::Service, watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>);

/// Unsubscribe every endpoint explicitly (so the queue group stops routing requests
/// here at once), wait for the endpoint tasks, then stop the service.
async fn stop((service, stop_tx, tasks): Running) {
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    let _ = service.stop().await;
}

async fn start(
    node: &Arc<Node>,
    client: &async_nats::Client,
    ops: &[Op],
    limits: &Arc<Limits>,
) -> Result<Running, async_nats::Error> {
    let metadata = std::collections::HashMap::from([
        ("region".to_string(), node.region.to_string()),
        ("node".to_string(), node.cfg.node.clone()),
        ("role".to_string(), if node.writes_here() { "leader" } else { "follower" }.to_string()),
    ]);
    let service = client
        .service_builder()
        .description(format!("Concord region {}", node.region))
        .metadata(metadata)
        .start("concord", env!("CARGO_PKG_VERSION"))
        .await?;
    let group_name = group(node.region.as_str());
    let group = service.group(&group_name);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for &op in ops {
        let mut endpoint = group.endpoint(op.name()).await?;
        let (node, limits, group_name) = (node.clone(), limits.clone(), group_name.clone());
        let mut stop_rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    req = endpoint.next() => match req {
                        Some(req) => admit(&node, &limits, &group_name, req).await,
                        None => break,
                    },
                    _ = stop_rx.changed() => {
                        let _ = endpoint.stop().await;
                        break;
                    }
                }
            }
        }));
    }
    Ok((service, stop_tx, tasks))
}

fn header(h: Option<&HeaderMap>, name: &str) -> Option<String> {
    h?.get(name).map(|v| v.as_str().to_string())
}

/// Parse the request's operation and let it in, to run in a task of its own; or answer
/// at once: 400 `unknown_operation`, 503 `overloaded`.
async fn admit(node: &Arc<Node>, limits: &Arc<Limits>, group: &str, req: Request) {
    let admitted =
        Op::of_subject(group, req.message.subject.as_str()).and_then(|op| Ok((op, limits.admit(op.class())?)));
    let (op, admitted) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => return respond(node, req, Reply::error(&e)).await,
    };
    let (node, limits) = (node.clone(), limits.clone());
    // Owned by its permit: `Limits::drain` waits for it at shutdown.
    tokio::spawn(async move {
        let reply = limits.within(op.class(), handle(&node, op, &req, admitted.deadline)).await;
        respond(&node, req, reply.unwrap_or_else(|e| Reply::error(&e))).await;
        drop(admitted);
    });
}

async fn handle(node: &Node, op: Op, req: &Request, deadline: Deadline) -> Reply {
    let h = req.message.headers.as_ref();
    let bucket = header(h, "Concord-Bucket").unwrap_or_default();
    let key = header(h, "Concord-Key").unwrap_or_default();
    let p = Params {
        durability: header(h, "Concord-Durability"),
        prefix: header(h, "Concord-Prefix"),
        after: header(h, "Concord-After"),
        limit: header(h, "Concord-Limit"),
        format: header(h, "Concord-Format"),
        timeout_ms: header(h, "Concord-Timeout-Ms"),
        bucket: header(h, "Concord-Bucket"),
        key: header(h, "Concord-Key"),
        since: header(h, "Concord-Since"),
        before: header(h, "Concord-Before"),
        path_and_query: None,
        token: header(h, "Concord-Token"),
        wait_ms: header(h, "Concord-Wait-Ms"),
        deadline: Some(deadline),
    };
    let body = req.message.payload.clone();
    let conflict_id = || header(h, "Concord-Conflict-Id").unwrap_or_default();
    let result: Result<Reply, NodeError> = match op {
        Op::KvPut => super::kv_put(node, &bucket, key.as_bytes(), body, &p).await,
        Op::KvGet => super::kv_get(node, &bucket, key.as_bytes(), &p).await,
        Op::KvDel => super::kv_delete(node, &bucket, key.as_bytes(), &p).await,
        Op::KvList => super::kv_list(node, &bucket, &p).await,
        Op::DocApply => super::doc_apply(node, &bucket, key.as_bytes(), body, &p).await,
        Op::DocChanges => super::doc_changes(node, &bucket, key.as_bytes(), body, &p).await,
        Op::DocGet => super::doc_get(node, &bucket, key.as_bytes(), &p).await,
        Op::Status => Ok(super::status(node).await),
        Op::ConflictsList => super::conflicts_list(node, &p).await,
        Op::ConflictsGet => super::conflict_get(node, &conflict_id()).await,
        Op::ConflictsResolve => super::conflict_resolve(node, &conflict_id(), body, &p).await,
    };
    super::count(node, op, &result);
    Reply::from(result)
}

async fn respond(node: &Node, req: Request, reply: Reply) {
    let mut headers = HeaderMap::new();
    headers.insert("Concord-Status", reply.status.to_string().as_str());
    let token = super::current_token(node);
    headers.insert("Concord-Token", std::str::from_utf8(&token).unwrap_or_default());
    headers.insert("Concord-Region", node.region.as_str());
    headers.insert("Content-Type", reply.content_type);
    if let Err(e) = req.respond_with_headers(Ok(reply.body), headers).await {
        warn!(subject = %req.message.subject, error = %e, "could not answer a NATS request");
    }
}
