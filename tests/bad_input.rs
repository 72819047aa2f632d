//! Every bad input gets its status code and a JSON error body, and changes nothing.

use std::collections::BTreeMap;

use concord_api::ErrorBody;
use concord_tests::{Nats, Node, TempDir, http, seg, status};
use serde_json::{Value, json};

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    /// Send a request; return the status and the body parsed as JSON (panics when the
    /// body of an error is not the documented `{"error", "code"}` object).
    async fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self.client.request(method, format!("{}{path}", self.url)).body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(resp.headers().contains_key("concord-token"), "{path}: no Concord-Token");
        assert_eq!(resp.headers()["concord-region"], "us-east", "{path}: no Concord-Region");
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{path}: error body {:?}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(v["code"].as_str().is_some(), "{path}: no code in {v}");
            let typed: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: {e}: {v}"));
            assert_eq!(v["code"], typed.code.as_str(), "{path}");
            assert!(typed.code.statuses().contains(&status), "{path}: {status} is not a status of {}", typed.code);
        }
        (status, v)
    }

    async fn expect(&self, method: reqwest::Method, path: &str, body: Vec<u8>, status: u16, code: &str) {
        let (s, v) = self.call(method.clone(), path, body).await;
        assert_eq!((s, v["code"].as_str().unwrap_or("")), (status, code), "{method} {path}: {v}");
    }

    /// Everything stored, for comparing before and after.
    async fn snapshot(&self) -> (Vec<(String, Vec<u8>)>, Value, BTreeMap<String, u64>) {
        let keys: Value =
            self.client.get(format!("{}/v1/kv/data?limit=10000", self.url)).send().await.unwrap().json().await.unwrap();
        let mut values = Vec::new();
        for k in keys["keys"].as_array().unwrap() {
            let k = k.as_str().unwrap().to_string();
            let v = self
                .client
                .get(format!("{}/v1/kv/data/{}", self.url, seg(&k)))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            values.push((k, v.to_vec()));
        }
        let doc: Value =
            self.client.get(format!("{}/v1/docs/data/doc", self.url)).send().await.unwrap().json().await.unwrap();
        (values, doc, status(&self.client, &self.url).await.applied)
    }
}

use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_clearly_and_touch_nothing() {
    let dir = TempDir::new("bad-input");
    let nats = Nats::start(&dir.0);
    // Its logs as one JSON object per event (checked at the end).
    let node = Node::start_with(&dir.0, "us-east", &nats.url(), &[("CONCORD_LOG_FORMAT", "json")]);
    let api = Api { url: node.url(), client: http() };

    // Data that must survive every bad request below.
    let max_key = "k".repeat(1024);
    api.expect(Method::PUT, "/v1/kv/data/k1", b"v1".to_vec(), 200, "").await;
    api.expect(Method::PUT, &format!("/v1/kv/data/{max_key}"), b"longest key".to_vec(), 200, "").await;
    api.expect(Method::PUT, "/v1/kv/data/big", vec![b'x'; 1 << 20], 200, "").await;
    api.expect(Method::PUT, &format!("/v1/kv/data/{}", seg("ünï/cødé key")), b"utf8".to_vec(), 200, "").await;
    let ops = json!({"ops": [{"op": "set", "path": ["a"], "value": 1}, {"op": "inc", "path": ["n"], "by": 2},
        {"op": "splice", "path": ["t"], "pos": 0, "del": 0, "text": "abc"}]});
    api.expect(Method::POST, "/v1/docs/data/doc", ops.to_string().into_bytes(), 200, "").await;
    let before = api.snapshot().await;
    assert_eq!(before.0.len(), 4);

    // Oversized values: 413, by the default 1 MiB limit.
    api.expect(Method::PUT, "/v1/kv/data/k1", vec![b'x'; (1 << 20) + 1], 413, "value_too_large").await;
    api.expect(Method::PUT, "/v1/kv/data/big", vec![b'y'; 3 << 20], 413, "value_too_large").await;
    api.expect(Method::POST, "/v1/docs/data/doc", vec![b' '; (1 << 20) + 1], 413, "value_too_large").await;
    // Malformed keys and buckets: 400.
    let long_key = "k".repeat(1025);
    api.expect(Method::PUT, &format!("/v1/kv/data/{long_key}"), b"v".to_vec(), 400, "bad_key").await;
    api.expect(Method::GET, &format!("/v1/kv/data/{long_key}"), vec![], 400, "bad_key").await;
    api.expect(Method::PUT, "/v1/kv/data/", b"v".to_vec(), 400, "bad_key").await;
    api.expect(Method::PUT, "/v1/kv/data/%FF%FE", b"v".to_vec(), 400, "bad_key").await;
    api.expect(Method::PUT, "/v1/kv/data/a%00b", b"v".to_vec(), 400, "bad_key").await;
    api.expect(Method::DELETE, "/v1/kv/data/%C3", vec![], 400, "bad_key").await;
    api.expect(Method::PUT, "/v1/kv/bad%21bucket/k1", b"v".to_vec(), 400, "bad_bucket").await;
    api.expect(Method::GET, "/v1/kv/bad%21bucket", vec![], 400, "bad_bucket").await;
    api.expect(Method::PUT, "/v1/kv/data/k1?durability=sometimes", b"v".to_vec(), 400, "bad_durability").await;
    api.expect(Method::GET, "/v1/kv/data?limit=0", vec![], 400, "bad_limit").await;
    api.expect(Method::GET, "/v1/kv/data?limit=lots", vec![], 400, "bad_limit").await;
    // Malformed document ops: 400, and the document is unchanged.
    for bad in [
        "not json".to_string(),
        json!({"ops": []}).to_string(),
        json!({"ops": [{"op": "explode", "path": ["a"]}]}).to_string(),
        json!({"ops": [{"op": "inc", "path": ["a"], "by": 1}]}).to_string(),
        json!({"ops": [{"op": "set", "path": ["z"], "value": 1}, {"op": "inc", "path": ["t"], "by": 1}]}).to_string(),
        json!({"ops": [{"op": "splice", "path": ["t"], "pos": 9, "del": 0, "text": "x"}]}).to_string(),
        json!({"ops": [{"op": "insert", "path": ["a", 0], "value": 1}]}).to_string(),
        json!({"ops": [{"op": "del", "path": ["missing"]}]}).to_string(),
        json!({"ops": [{"op": "set", "path": [], "value": 1}]}).to_string(),
    ] {
        api.expect(Method::POST, "/v1/docs/data/doc", bad.into_bytes(), 400, "bad_op").await;
    }
    api.expect(Method::GET, "/v1/docs/data/doc?format=xml", vec![], 400, "bad_format").await;
    api.expect(Method::POST, "/v1/docs/data/", b"{}".to_vec(), 400, "bad_key").await;
    // Absent things: 404.
    api.expect(Method::GET, "/v1/kv/data/absent", vec![], 404, "not_found").await;
    api.expect(Method::GET, "/v1/docs/data/absent", vec![], 404, "not_found").await;
    api.expect(Method::GET, "/v1/nothing/here", vec![], 404, "not_found").await;
    // A deleted key reads as absent.
    api.expect(Method::PUT, "/v1/kv/other/gone", b"v".to_vec(), 200, "").await;
    api.expect(Method::DELETE, "/v1/kv/other/gone", vec![], 200, "").await;
    api.expect(Method::GET, "/v1/kv/other/gone", vec![], 404, "not_found").await;
    // Wrong methods.
    api.expect(Method::POST, "/v1/kv/data/k1", b"v".to_vec(), 400, "method_not_allowed").await;

    let mut after = api.snapshot().await;
    // The applied vector moved only by the two writes to bucket `other`.
    let origin = before.2.keys().next().unwrap().clone();
    assert_eq!(after.2[&origin], before.2[&origin] + 2);
    after.2 = before.2.clone();
    assert_eq!(after, before, "a bad request changed stored data");

    // Every answer above counted by operation and outcome, the refusals by their code
    // (the two snapshots read the list, the four values and the document each).
    let page = concord_tests::metrics_page(&api.client, &api.url).await;
    let expected = [
        ("kv.put", "ok", 5),
        ("kv.put", "value_too_large", 2),
        ("kv.put", "bad_key", 4),
        ("kv.put", "bad_bucket", 1),
        ("kv.put", "bad_durability", 1),
        ("kv.get", "ok", 8),
        ("kv.get", "bad_key", 1),
        ("kv.get", "not_found", 2),
        ("kv.del", "ok", 1),
        ("kv.del", "bad_key", 1),
        ("kv.list", "ok", 2),
        ("kv.list", "bad_bucket", 1),
        ("kv.list", "bad_limit", 2),
        ("doc.apply", "ok", 1),
        ("doc.apply", "value_too_large", 1),
        ("doc.apply", "bad_op", 9),
        ("doc.apply", "bad_key", 1),
        ("doc.get", "ok", 2),
        ("doc.get", "bad_format", 1),
        ("doc.get", "not_found", 1),
    ];
    for (op, outcome, n) in expected {
        let counted = concord_tests::metric(&page, "concord_requests_total", &[("op", op), ("outcome", outcome)]);
        assert_eq!(counted, Some(n as f64), "concord_requests_total{{op={op},outcome={outcome}}}");
    }
    let all: f64 = page
        .lines()
        .filter(|l| l.starts_with("concord_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(all, expected.iter().map(|e| e.2 as f64).sum::<f64>(), "requests counted that were not made:\n{page}");

    // The same over NATS request/reply: same status (in Concord-Status) and body.
    let client = concord_tests::nats_connect(nats.url()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Concord-Bucket", "data");
    headers.insert("Concord-Key", long_key.as_str());
    let msg = client.request_with_headers("concord.api.us-east.kv.put", headers, "v".into()).await.unwrap();
    let h = msg.headers.unwrap();
    assert_eq!(h.get("Concord-Status").unwrap().as_str(), "400");
    let v: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(v["code"], "bad_key");
    assert_eq!(api.snapshot().await.0, before.0);

    // Every line the node logged is a JSON event.
    drop(node);
    let log = std::fs::read_to_string(dir.0.join("us-east-1.log")).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is no JSON ({e}): {l}")))
        .collect();
    assert!(events.len() >= 3, "{log}");
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string() && e["fields"].is_object(), "{e}");
    }

    // A configured limit applies instead of the default.
    let small = Node::start_with(&dir.0, "us-east", &nats.url(), &[("CONCORD_VALUE_BYTES_MAX", "16")]);
    let api = Api { url: small.url(), client: http() };
    api.expect(Method::PUT, "/v1/kv/data/k1", vec![b'x'; 16], 200, "").await;
    api.expect(Method::PUT, "/v1/kv/data/k1", vec![b'y'; 17], 413, "value_too_large").await;
    let got = api.client.get(format!("{}/v1/kv/data/k1", api.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], &[b'x'; 16][..]);
}
