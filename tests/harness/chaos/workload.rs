//! The workload of a fault run: clients in every region writing registers (their own
//! keys and shared ones), deleting, editing documents, incrementing the shared counter,
//! and reading their own keys back with their session token from any node.
//!
//! A client sticks to its region for writes (its nodes in turn; followers redirect to
//! the leader) and is sequential: one operation at a time, so the order of its
//! operations is the history's order. Every value it writes is unique, so a value read
//! back names the write that made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_core::vv::VersionVector;
use serde_json::json;

use super::history::{Event, Op, OpKind, Outcome, Recorder};
use super::rng::Rng;
use super::{BUCKET, COUNTER, COUNTER_PROP, DOCS, OWN_KEYS, SHARED_KEYS};

/// A client's answer to one request.
struct Answer {
    status: u16,
    body: Vec<u8>,
    token: Option<String>,
    error: Option<String>,
}

pub struct Client {
    pub id: usize,
    pub region: String,
    /// (name, URL) of the region's nodes, where writes go.
    pub writes_to: Vec<(String, String)>,
    /// (name, URL) of every node, where reads go.
    pub reads_from: Vec<(String, String)>,
    pub rng: Rng,
    pub rec: Recorder,
    pub stop: Arc<AtomicBool>,
    token: VersionVector,
    http: reqwest::Client,
    n: u64,
    /// Document properties this client set (and may delete).
    props: Vec<(String, String)>,
    /// The last operation did not succeed.
    backoff: bool,
}

/// How long a client waits for one answer before it counts the outcome as unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

impl Client {
    pub fn new(
        id: usize,
        region: String,
        writes_to: Vec<(String, String)>,
        reads_from: Vec<(String, String)>,
        seed: u64,
        rec: Recorder,
        stop: Arc<AtomicBool>,
    ) -> Client {
        Client {
            id,
            region,
            writes_to,
            reads_from,
            rng: Rng::new(seed ^ (0x9e37_79b9 * (id as u64 + 1))),
            rec,
            stop,
            token: VersionVector::new(),
            http: crate::client_builder().timeout(REQUEST_TIMEOUT).build().unwrap(),
            n: 0,
            props: Vec::new(),
            backoff: false,
        }
    }

    pub async fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if self.backoff {
                // As a real client would after a refusal or a silence.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.n += 1;
            let pick = self.rng.below(100);
            match pick {
                0..25 => {
                    let key = format!("own/c{}-{}", self.id, self.rng.below(OWN_KEYS));
                    let value = self.value();
                    self.kv(OpKind::Put, key, Some(value)).await;
                }
                25..33 => {
                    let key = format!("own/c{}-{}", self.id, self.rng.below(OWN_KEYS));
                    self.kv(OpKind::Del, key, None).await;
                }
                33..48 => {
                    let key = format!("shared/s{}", self.rng.below(SHARED_KEYS));
                    let value = self.value();
                    self.kv(OpKind::Put, key, Some(value)).await;
                }
                48..63 => {
                    let doc = DOCS[self.rng.below(DOCS.len() as u64) as usize].to_string();
                    let prop = format!("c{}-p{}", self.id, self.n);
                    let value = self.value();
                    self.doc(OpKind::DocSet, doc, prop, Some(value), None).await;
                }
                63..68 if !self.props.is_empty() => {
                    let i = self.rng.below(self.props.len() as u64) as usize;
                    let (doc, prop) = self.props.swap_remove(i);
                    self.doc(OpKind::DocDel, doc, prop, None, None).await;
                }
                63..83 => {
                    let by = 1 + self.rng.below(5) as i64;
                    self.doc(OpKind::Inc, COUNTER.into(), COUNTER_PROP.into(), None, Some(by)).await;
                }
                _ => {
                    let key = format!("own/c{}-{}", self.id, self.rng.below(OWN_KEYS));
                    self.read(key).await;
                }
            }
        }
    }

    fn value(&self) -> String {
        format!("c{}-v{}", self.id, self.n)
    }

    fn write_node(&mut self) -> (String, String) {
        let i = self.rng.below(self.writes_to.len() as u64) as usize;
        self.writes_to[i].clone()
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = req.header("concord-token", concord_core::token::encode(&self.token));
        match crate::send_following(req).await {
            Ok(r) => {
                let status = r.status().as_u16();
                let token = r.headers().get("concord-token").and_then(|v| v.to_str().ok()).map(String::from);
                match r.bytes().await {
                    Ok(body) => Answer { status, body: body.to_vec(), token, error: None },
                    Err(e) => Answer { status: 0, body: Vec::new(), token: None, error: Some(e.to_string()) },
                }
            }
            Err(e) => Answer { status: 0, body: Vec::new(), token: None, error: Some(e.to_string()) },
        }
    }

    /// Record `op` from `answer`, joining the answer's token into the session's.
    fn finish(&mut self, mut op: Op, answer: Answer, is_write: bool) -> Outcome {
        op.end_ms = self.rec.now_ms();
        op.status = answer.status;
        let code = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|b| b["code"].as_str().map(String::from))
            .unwrap_or_default();
        op.result = match (answer.status, code.as_str()) {
            (200..=299, _) => Outcome::Ok,
            // A read that found nothing is a read that worked.
            (404, _) if !is_write => Outcome::Ok,
            // Refused before anything was written, by the API's contract (if one of
            // these did write, its value shows up and the checker says so).
            (400 | 404 | 413, _) => Outcome::Fail,
            (503, "not_leader" | "no_leader" | "overloaded" | "parked" | "session_lag") => Outcome::Fail,
            // Timed out, cut off, log unreachable, durable but unconfirmed: maybe applied.
            _ => Outcome::Unknown,
        };
        if op.result == Outcome::Ok {
            if is_write {
                let ack: Option<concord_api::WriteAck> = serde_json::from_slice(&answer.body).ok();
                op.version = ack.and_then(|a| a.seq.map(|s| format!("{}:{s}", a.origin)));
            }
            if let Some(t) = &answer.token
                && let Ok(vv) = concord_core::token::decode(t)
            {
                self.token.join(&vv);
            }
            op.token_out = answer.token;
        } else {
            op.error =
                Some(answer.error.unwrap_or_else(|| String::from_utf8_lossy(&answer.body).chars().take(300).collect()));
        }
        let result = op.result.clone();
        self.backoff = result != Outcome::Ok;
        self.rec.record(&Event::Op(op));
        result
    }

    fn op(&self, node: &str, kind: OpKind, key: String) -> Op {
        Op {
            client: self.id,
            region: self.region.clone(),
            node: node.to_string(),
            kind,
            key,
            prop: None,
            value: None,
            by: None,
            start_ms: self.rec.now_ms(),
            end_ms: 0,
            result: Outcome::Unknown,
            status: 0,
            version: None,
            token_in: concord_core::token::encode(&self.token),
            token_out: None,
            error: None,
        }
    }

    async fn kv(&mut self, kind: OpKind, key: String, value: Option<String>) {
        let (node, url) = self.write_node();
        let mut op = self.op(&node, kind.clone(), key.clone());
        op.value = value.clone();
        let at = format!("{url}/v1/kv/{BUCKET}/{}", crate::seg(&key));
        let req = match kind {
            OpKind::Put => self.http.put(at).body(value.unwrap_or_default()),
            _ => self.http.delete(at),
        };
        let answer = self.send(req).await;
        self.finish(op, answer, true);
    }

    async fn doc(&mut self, kind: OpKind, doc: String, prop: String, value: Option<String>, by: Option<i64>) {
        let (node, url) = self.write_node();
        let mut op = self.op(&node, kind.clone(), doc.clone());
        op.prop = Some(prop.clone());
        op.value = value.clone();
        op.by = by;
        let body = match kind {
            OpKind::DocSet => json!({"ops": [{"op": "set", "path": [prop], "value": value}]}),
            OpKind::DocDel => json!({"ops": [{"op": "del", "path": [prop]}]}),
            _ => json!({"ops": [{"op": "inc", "path": [prop], "by": by}]}),
        };
        let req = self.http.post(format!("{url}/v1/docs/{BUCKET}/{}", crate::seg(&doc))).json(&body);
        let answer = self.send(req).await;
        if self.finish(op, answer, true) == Outcome::Ok && kind == OpKind::DocSet {
            self.props.push((doc, prop));
        }
    }

    async fn read(&mut self, key: String) {
        let i = self.rng.below(self.reads_from.len() as u64) as usize;
        let (node, url) = self.reads_from[i].clone();
        let op = self.op(&node, OpKind::Read, key.clone());
        let req = self.http.get(format!("{url}/v1/kv/{BUCKET}/{}?wait_ms=3000", crate::seg(&key)));
        let answer = self.send(req).await;
        let value = (answer.status == 200).then(|| String::from_utf8_lossy(&answer.body).into_owned());
        let mut op = op;
        op.value = value;
        self.finish(op, answer, false);
    }
}
