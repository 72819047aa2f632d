//! `GET /v1/deployment` (an extension of the API, for the dashboard at `/ui`): every
//! node of every region, each as its own `GET /v1/status` says, gathered over NATS.
//!
//! Every node subscribes to [`SUBJECT`] without a queue group, so one request reaches
//! every node of every region the backbone connects, and each answers with its status
//! and its HTTP address ([`NodeAnswer`]). The node asked adds its own status (read
//! directly, so it shows even when its NATS is down) and groups the answers by region,
//! the leader first ([`DeploymentBody`]).
//!
//! Nothing is invented: a configured region none of whose nodes answered (cut off, or
//! down) is listed with `reachable: false` and no nodes; a node that another node names
//! (a leader its followers, a follower its leader) but that did not answer is listed in
//! its region's `missing`; `complete` is true only when neither happened. Each node's
//! figures are its own, taken when it answered.
//!
//! Limits: a gather waits at most [`GATHER_WAIT`], and ends [`SETTLE`] after its answers
//! close (every configured region and every node named answered); it keeps at most
//! [`NODES_MAX`] answers of at most [`ANSWER_BYTES_MAX`] bytes each. One gather runs at
//! a time per node and its result serves every request for [`GATHER_REUSE`], so any
//! number of dashboards cost the deployment at most one gather per node per interval;
//! a node computes the status it answers with at most once per [`ANSWER_REUSE`], in
//! one task, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord_api::StatusBody;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::warn;

use super::Reply;
use crate::Node;
use crate::supervisor::{Policy, Supervisor};

/// Where every node listens for status requests (core NATS: it crosses the backbone).
pub const SUBJECT: &str = "concord.nodes.status";
/// The longest a gather waits for answers.
pub const GATHER_WAIT: Duration = Duration::from_millis(1500);
/// How long a gather goes on once its answers close (a node no other names, such as a
/// follower that has not reported yet, may still answer).
pub const SETTLE: Duration = Duration::from_millis(150);
/// Most answers one gather keeps.
pub const NODES_MAX: usize = 256;
/// The largest answer a gather reads (a status is a few KiB).
pub const ANSWER_BYTES_MAX: usize = 256 << 10;
/// How long one gather's result answers further requests.
pub const GATHER_REUSE: Duration = Duration::from_secs(1);
/// How long a node's answer serves further status requests.
pub const ANSWER_REUSE: Duration = Duration::from_millis(500);
/// The longest a node takes to read its own status before it gives up on one answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest the request waits to leave for the NATS server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// One node's answer: its `GET /v1/status` body, and where its HTTP API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// The node's HTTP API, as it advertises it (its dashboard is at `{http}/ui`).
    pub http: String,
    #[serde(flatten)]
    pub status: StatusBody,
}

/// The body of `GET /v1/deployment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentBody {
    /// The node that gathered the answers.
    pub gathered_by: String,
    /// How long the gather took.
    pub gathered_ms: u64,
    /// Every configured region answered, and every node named answered.
    pub complete: bool,
    /// By region name: every configured region, and any other that answered.
    pub regions: BTreeMap<String, RegionView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionView {
    /// Some node of the region answered.
    pub reachable: bool,
    /// The node that leads the region, as its nodes say (empty when none knows).
    pub leader: String,
    /// The nodes that answered, the leader first, then by name.
    pub nodes: Vec<NodeAnswer>,
    /// Nodes named by the region's nodes (a leader's followers, a follower's leader)
    /// that did not answer.
    pub missing: Vec<String>,
}

/// Group `answers` by region; `configured` regions are listed even with no answer.
pub fn assemble(configured: &[String], answers: Vec<NodeAnswer>) -> (BTreeMap<String, RegionView>, bool) {
    let mut regions: BTreeMap<String, RegionView> =
        configured.iter().map(|r| (r.clone(), RegionView::default())).collect();
    for a in answers {
        let view = regions.entry(a.status.region.clone()).or_default();
        if !view.nodes.iter().any(|n| n.status.node == a.status.node) {
            view.nodes.push(a);
        }
    }
    let mut complete = true;
    for view in regions.values_mut() {
        view.reachable = !view.nodes.is_empty();
        view.leader = leader_of(&view.nodes);
        view.missing =
            named(&view.nodes).into_iter().filter(|n| !view.nodes.iter().any(|a| a.status.node == *n)).collect();
        let leader = view.leader.clone();
        view.nodes
            .sort_by(|a, b| (a.status.node != leader, &a.status.node).cmp(&(b.status.node != leader, &b.status.node)));
        complete &= view.reachable && view.missing.is_empty();
    }
    (regions, complete)
}

/// The leader of a region: the node that says it leads (the highest epoch, if several
/// do while one is deposed), else the one most of its followers name.
fn leader_of(nodes: &[NodeAnswer]) -> String {
    if let Some(l) = nodes.iter().filter(|n| n.status.role == "leader").max_by_key(|n| n.status.epoch) {
        return l.status.node.clone();
    }
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes.iter().filter(|n| !n.status.leader.is_empty()) {
        *votes.entry(n.status.leader.as_str()).or_default() += 1;
    }
    votes
        .into_iter()
        .max_by_key(|(name, v)| (*v, std::cmp::Reverse(*name)))
        .map(|(n, _)| n.to_string())
        .unwrap_or_default()
}

/// Every node the region's answers name: leaders' followers, followers' leaders.
fn named(nodes: &[NodeAnswer]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for n in nodes {
        names.extend(n.status.followers.keys().cloned());
        if !n.status.leader.is_empty() {
            names.insert(n.status.leader.clone());
        }
    }
    names
}

/// Every configured region answered, and every node an answer names answered (what
/// [`assemble`] calls complete, without building the views).
fn closed(configured: &[String], answers: &[NodeAnswer]) -> bool {
    let answered =
        |region: &str, node: &str| answers.iter().any(|a| a.status.region == region && a.status.node == node);
    configured.iter().all(|r| answers.iter().any(|a| a.status.region == *r))
        && answers.iter().all(|a| named(std::slice::from_ref(a)).iter().all(|n| answered(&a.status.region, n)))
}

/// This node's answer.
async fn own_answer(node: &Node) -> NodeAnswer {
    NodeAnswer { http: node.cfg.advertised_url(), status: super::status_body(node).await }
}

/// Gathers the deployment for `GET /v1/deployment`: one gather at a time, its result
/// reused for [`GATHER_REUSE`].
pub struct Gatherer {
    client: async_nats::Client,
    last: Mutex<Option<(Instant, Bytes)>>,
}

impl Gatherer {
    pub fn new(client: async_nats::Client) -> Gatherer {
        Gatherer { client, last: Mutex::new(None) }
    }

    /// `GET /v1/deployment`.
    pub async fn reply(&self, node: &Node) -> Reply {
        let mut last = self.last.lock().await;
        let body = match &*last {
            Some((at, body)) if at.elapsed() < GATHER_REUSE => body.clone(),
            _ => {
                let body = Bytes::from(serde_json::to_vec(&self.gather(node).await).expect("a deployment serializes"));
                *last = Some((Instant::now(), body.clone()));
                body
            }
        };
        Reply { status: 200, content_type: super::JSON, body, location: None }
    }

    async fn gather(&self, node: &Node) -> DeploymentBody {
        let started = Instant::now();
        let mut configured: Vec<String> = vec![node.region.to_string()];
        configured.extend(node.cfg.remote_regions().iter().map(|r| r.to_string()));
        let mut answers = Vec::new();
        match tokio::time::timeout(STATUS_TIMEOUT, own_answer(node)).await {
            Ok(me) => answers.push(me),
            Err(_) => {
                warn!("this node's status took over {STATUS_TIMEOUT:?}; the deployment lists it only if it answers")
            }
        }
        if let Err(e) = self.ask(&configured, &mut answers).await {
            warn!(error = %e, "could not ask the deployment for its status over NATS");
        }
        let (regions, complete) = assemble(&configured, answers);
        DeploymentBody {
            gathered_by: node.cfg.node.clone(),
            gathered_ms: started.elapsed().as_millis() as u64,
            complete,
            regions,
        }
    }

    /// Publish one request and collect the answers, within the limits.
    async fn ask(&self, configured: &[String], answers: &mut Vec<NodeAnswer>) -> Result<(), async_nats::Error> {
        let deadline = Instant::now() + GATHER_WAIT;
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await?;
        self.client.publish_with_reply(SUBJECT, inbox, Bytes::new()).await?;
        tokio::time::timeout(FLUSH_TIMEOUT, self.client.flush()).await??;
        let mut settle_at = closed(configured, answers).then(|| Instant::now() + SETTLE);
        while answers.len() < NODES_MAX {
            let until = settle_at.map_or(deadline, |s| s.min(deadline));
            let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await else { break };
            if msg.payload.len() > ANSWER_BYTES_MAX {
                warn!(bytes = msg.payload.len(), "a status answer over {ANSWER_BYTES_MAX} bytes: left out");
                continue;
            }
            let answer: NodeAnswer = match serde_json::from_slice(&msg.payload) {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "a status answer that does not parse: left out");
                    continue;
                }
            };
            let same = |a: &NodeAnswer| a.status.node == answer.status.node && a.status.region == answer.status.region;
            if answers.iter().any(same) {
                continue;
            }
            answers.push(answer);
            if settle_at.is_none() && closed(configured, answers) {
                settle_at = Some(Instant::now() + SETTLE);
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(())
    }
}

/// Start answering status requests (until shutdown) and return the gatherer the HTTP
/// API asks.
pub fn spawn(sup: &Supervisor, node: &Arc<Node>, client: &async_nats::Client) -> Arc<Gatherer> {
    let (n, c, s) = (node.clone(), client.clone(), sup.shutdown());
    sup.spawn("deployment status answers", Policy::Restart, move || answer(n.clone(), c.clone(), s.clone()));
    Arc::new(Gatherer::new(client.clone()))
}

/// Answer every request on [`SUBJECT`] with this node's [`NodeAnswer`], in order, one
/// status computed per [`ANSWER_REUSE`] at most.
async fn answer(
    node: Arc<Node>,
    client: async_nats::Client,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut sub = client.subscribe(SUBJECT).await.map_err(|e| format!("subscribing to {SUBJECT}: {e}"))?;
    let mut last: Option<(Instant, Bytes)> = None;
    loop {
        let msg = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => None,
            msg = sub.next() => Some(msg.ok_or_else(|| format!("the subscription to {SUBJECT} ended"))?),
        };
        let Some(msg) = msg else {
            let _ = sub.unsubscribe().await;
            return Ok(());
        };
        let Some(reply) = msg.reply else { continue };
        let body = match &last {
            Some((at, body)) if at.elapsed() < ANSWER_REUSE => body.clone(),
            _ => match tokio::time::timeout(STATUS_TIMEOUT, own_answer(&node)).await {
                Ok(a) => {
                    let body = Bytes::from(serde_json::to_vec(&a).expect("a status serializes"));
                    last = Some((Instant::now(), body.clone()));
                    body
                }
                Err(_) => {
                    warn!("this node's status took over {STATUS_TIMEOUT:?}; a status request goes unanswered");
                    continue;
                }
            },
        };
        if let Err(e) = client.publish(reply, body).await {
            warn!(error = %e, "could not answer a status request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(region: &str, node: &str, role: &str, leader: &str, followers: &[&str]) -> NodeAnswer {
        let status = serde_json::json!({"region": region, "node": node, "role": role, "epoch": 1,
            "origin": format!("{region}.1"), "leader": leader, "applied": {},
            "followers": followers.iter().map(|f| (f.to_string(), serde_json::json!({
                "applied_log_seq": 1, "lag_seq": 0, "reported_ms_ago": 5, "token": ""}))).collect::<serde_json::Map<_, _>>()});
        NodeAnswer { http: format!("http://{node}"), status: serde_json::from_value(status).unwrap() }
    }

    #[test]
    fn complete_when_every_region_and_every_named_node_answered() {
        let configured = vec!["a".to_string(), "b".to_string()];
        let answers = vec![
            answer("a", "a-2", "follower", "a-1", &[]),
            answer("a", "a-1", "leader", "a-1", &["a-2"]),
            answer("b", "b-1", "leader", "b-1", &[]),
        ];
        let (regions, complete) = assemble(&configured, answers.clone());
        assert!(complete && closed(&configured, &answers));
        let names: Vec<&str> = regions["a"].nodes.iter().map(|n| n.status.node.as_str()).collect();
        assert_eq!((regions["a"].leader.as_str(), names), ("a-1", vec!["a-1", "a-2"]), "the leader first");

        // The leader's follower did not answer, and region b is cut off.
        let (regions, complete) = assemble(&configured, vec![answers[1].clone()]);
        assert!(!complete && !closed(&configured, &answers[1..2]));
        assert!(!closed(&configured, &answers[..2]), "region b is missing");
        assert_eq!(regions["a"].missing, ["a-2"]);
        assert!(!regions["b"].reachable && regions["b"].nodes.is_empty() && regions["b"].leader.is_empty());

        // Only a follower answered: its leader is named, and missing.
        let (regions, _) = assemble(&configured, vec![answers[0].clone()]);
        assert_eq!((regions["a"].leader.as_str(), regions["a"].missing.as_slice()), ("a-1", &["a-1".to_string()][..]));
    }

    #[test]
    fn an_answer_is_a_status_with_its_address() {
        let a = answer("a", "a-1", "leader", "a-1", &["a-2"]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!((json["http"].as_str(), json["node"].as_str()), (Some("http://a-1"), Some("a-1")));
        assert_eq!(serde_json::from_value::<NodeAnswer>(json).unwrap(), a);
    }
}
