//! Documents over HTTP and NATS: nested maps, counters, list inserts and text splices
//! read back as the expected JSON, and `?format=automerge` loads in `automerge` to the
//! same JSON. The NATS micro service answers the same bodies and is discoverable.
//! Strings that `set` writes are text that `splice` edits, unless written immutable.

use std::time::Duration;

use concord_tests::{Nats, Node, TempDir, http};
use futures::StreamExt;
use serde_json::{Value, json};

async fn post_ops(client: &reqwest::Client, url: &str, ops: Value) -> Value {
    let resp = client.post(url).json(&json!({ "ops": ops })).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_read_back_as_json_and_as_automerge() {
    let dir = TempDir::new("docs");
    let nats = Nats::start(&dir.0);
    let node = Node::start(&dir.0, "us-east", &nats.url());
    let client = http();
    let url = format!("{}/v1/docs/app/profile", node.url());

    post_ops(
        &client,
        &url,
        json!([
            {"op": "set", "path": ["user", "name"], "value": "Ada"},
            {"op": "set", "path": ["user", "address"], "value": {"city": "London", "zip": ["N1", 7]}},
            {"op": "inc", "path": ["stats", "logins"], "by": 1},
        ]),
    )
    .await;
    for _ in 0..4 {
        post_ops(&client, &url, json!([{"op": "inc", "path": ["stats", "logins"], "by": 2}])).await;
    }
    post_ops(
        &client,
        &url,
        json!([
            {"op": "insert", "path": ["todo", 0], "value": "write"},
            {"op": "insert", "path": ["todo", 1], "value": "ship"},
            {"op": "insert", "path": ["todo", 1], "value": {"test": true}},
            {"op": "splice", "path": ["notes"], "pos": 0, "del": 0, "text": "hello world"},
        ]),
    )
    .await;
    post_ops(
        &client,
        &url,
        json!([
            {"op": "splice", "path": ["notes"], "pos": 5, "del": 6, "text": ", Wörld!"},
            {"op": "del", "path": ["todo", 0]},
            {"op": "set", "path": ["user", "address", "zip", 1], "value": 8},
        ]),
    )
    .await;
    let expected = json!({
        "user": {"name": "Ada", "address": {"city": "London", "zip": ["N1", 8]}},
        "stats": {"logins": 9},
        "todo": [{"test": true}, "ship"],
        "notes": "hello, Wörld!",
    });
    let got: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, expected);

    let resp = client.get(format!("{url}?format=automerge")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().await.unwrap();
    let doc = automerge::Automerge::load(&bytes).expect("automerge loads the bytes");
    assert_eq!(concord_core::doc::to_json(&doc), expected);
    // The counter is a real Automerge counter, not a number that was overwritten.
    use automerge::ReadDoc;
    let (_, stats) = doc.get(automerge::ROOT, "stats").unwrap().unwrap();
    let (logins, _) = doc.get(&stats, "logins").unwrap().unwrap();
    assert!(
        matches!(logins, automerge::Value::Scalar(ref s) if matches!(s.as_ref(), automerge::ScalarValue::Counter(_))),
        "{logins:?}"
    );

    // The document survives a restart of the node.
    let mut node = node;
    node.restart();
    let url = format!("{}/v1/docs/app/profile", node.url());
    let got: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, expected);

    // The same over NATS: discoverable, same bodies.
    let nc = concord_tests::nats_connect(nats.url()).await.unwrap();
    // Every service instance answers $SRV.INFO (a leader without followers runs one for
    // writes and one for reads): gather them all.
    // The node answers over NATS once it answers over HTTP; its write endpoints come with
    // its lease, which a restarted leader takes again: ask until they are there.
    let mut infos = nc.subscribe("_INBOX.concord-info").await.unwrap();
    let wanted = ["kv.put", "kv.get", "kv.del", "kv.list", "doc.apply", "doc.get", "status"];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        nc.publish_with_reply("$SRV.INFO.concord", "_INBOX.concord-info", "".into()).await.unwrap();
        let mut subjects: Vec<String> = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), infos.next()).await {
            assert!(msg.status.is_none(), "no service answered $SRV.INFO: {:?} {:?}", msg.status, msg.description);
            let info: Value = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(info["name"], "concord");
            assert_eq!(info["metadata"]["region"], "us-east");
            subjects.extend(
                info["endpoints"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap().to_string()),
            );
        }
        let missing: Vec<&str> =
            wanted.into_iter().filter(|op| !subjects.contains(&format!("concord.api.us-east.{op}"))).collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{missing:?} missing from {subjects:?}");
    }
    let mut h = async_nats::HeaderMap::new();
    h.insert("Concord-Bucket", "app");
    h.insert("Concord-Key", "profile");
    let body = json!({"ops": [{"op": "inc", "path": ["stats", "logins"], "by": 1}]}).to_string();
    let msg = nc.request_with_headers("concord.api.us-east.doc.apply", h.clone(), body.into()).await.unwrap();
    assert_eq!(msg.headers.as_ref().unwrap().get("Concord-Status").unwrap().as_str(), "200");
    assert!(msg.headers.as_ref().unwrap().get("Concord-Token").unwrap().as_str().starts_with("v1:us-east."));
    let msg = nc.request_with_headers("concord.api.us-east.doc.get", h, "".into()).await.unwrap();
    let over_nats: Value = serde_json::from_slice(&msg.payload).unwrap();
    let over_http: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(over_nats, over_http);
    assert_eq!(over_http["stats"]["logins"], 10);

    // KV over NATS, and stats count the requests.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Concord-Bucket", "app");
    h.insert("Concord-Key", "a.key.with.dots");
    let msg = nc.request_with_headers("concord.api.us-east.kv.put", h.clone(), "v".into()).await.unwrap();
    assert_eq!(msg.headers.as_ref().unwrap().get("Concord-Status").unwrap().as_str(), "200");
    let msg = nc.request_with_headers("concord.api.us-east.kv.get", h, "".into()).await.unwrap();
    assert_eq!(&msg.payload[..], b"v");
    let got =
        client.get(format!("{}/v1/kv/app/a.key.with.dots", node.url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(got, "v");
    let mut stats = nc.subscribe("_INBOX.stats").await.unwrap();
    nc.publish_with_reply("$SRV.STATS.concord", "_INBOX.stats", "".into()).await.unwrap();
    let mut requests = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), stats.next()).await {
        let stats: Value = serde_json::from_slice(&msg.payload).unwrap();
        requests +=
            stats["endpoints"].as_array().unwrap().iter().map(|e| e["num_requests"].as_u64().unwrap()).sum::<u64>();
    }
    assert!(requests >= 4, "only {requests} requests counted over every instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_string_is_text_that_splice_edits() {
    let dir = TempDir::new("docs-text");
    let nats = Nats::start(&dir.0);
    let node = Node::start(&dir.0, "us-east", &nats.url());
    let client = http();
    let url = format!("{}/v1/docs/app/notes", node.url());

    post_ops(
        &client,
        &url,
        json!([
            {"op": "set", "path": ["note"], "value": ""},
            {"op": "set", "path": ["id"], "value": "n-1", "immutable": true},
        ]),
    )
    .await;
    post_ops(&client, &url, json!([{"op": "splice", "path": ["note"], "pos": 0, "del": 0, "text": "hi"}])).await;
    let got: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, json!({"note": "hi", "id": "n-1"}));

    // An immutable string is refused by `splice`, with a message that says what to do.
    let resp = client
        .post(&url)
        .json(&json!({"ops": [{"op": "splice", "path": ["id"], "pos": 0, "del": 0, "text": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "bad_op");
    assert!(err["error"].as_str().unwrap().contains("immutable string"), "{err}");

    // The Automerge binary holds a text object, not a string.
    let bytes = client.get(format!("{url}?format=automerge")).send().await.unwrap().bytes().await.unwrap();
    let doc = automerge::Automerge::load(&bytes).expect("automerge loads the bytes");
    use automerge::ReadDoc;
    let (note, _) = doc.get(automerge::ROOT, "note").unwrap().unwrap();
    assert_eq!(note, automerge::Value::Object(automerge::ObjType::Text));
}
