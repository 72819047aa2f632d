//! Local-first clients over automerge-repo's sync protocol (`GET /v1/sync`), driven by
//! tests/sync/client.py: an implementation of the protocol that shares no code with
//! Concord (Python, on the `automerge` bindings, `cbor2` and `websockets` from PyPI,
//! which .ci/setup.sh installs into .tools/venv).
//!
//! - A document a client creates through us-east is read over HTTP in ap-south.
//! - Two clients, one on us-east's leader and one on eu-west's follower (which forwards to
//!   its leader), edit one text and one property concurrently: after sync both clients
//!   and every region hold the same document, and the property's conflict is in every
//!   region's conflict log. A connected client gets a change written over HTTP in another
//!   region pushed to it live.
//! - A client cut off (offline, and its region partitioned) edits; on reconnect it
//!   catches up with what others wrote meanwhile, and everyone gets its edits.
//! - Malformed frames and oversized messages get an `error` and a closed connection, and
//!   the stored document does not change; connections past the limit are refused, and so
//!   is a document past the per-connection limit.
//! - Without the deployment's token: 401 (the token may come in the query, as a browser's
//!   WebSocket cannot send headers); the read token syncs down and may not send changes.
//!   Ephemeral messages reach the node's other clients of the document, and so does a
//!   change another client syncs, live.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_tests::{Cluster, TEST_TOKEN, TempDir, http, metric, metrics_page, repo_root};
use serde_json::{Value, json};

fn python() -> PathBuf {
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup.sh (it installs the sync client's packages)",
        python.display()
    );
    python
}

/// The sync client's command line for `command` against `http_url`'s node, with the
/// deployment's token.
fn client(http_url: &str, store: &Path, command: &str, args: &[&str]) -> Command {
    client_as(http_url, store, command, args, Token::Header(TEST_TOKEN))
}

/// How a client presents its token.
enum Token<'a> {
    Header(&'a str),
    /// In the URL's query (what a browser's WebSocket can do).
    Query(&'a str),
    None,
}

fn client_as(http_url: &str, store: &Path, command: &str, args: &[&str], token: Token) -> Command {
    let mut url = format!("{}/v1/sync", http_url.replacen("http://", "ws://", 1));
    let mut c = Command::new(python());
    c.arg(repo_root().join("tests/sync/client.py")).arg(command);
    match token {
        Token::Header(t) => drop(c.args(["--token", t])),
        Token::Query(t) => url.push_str(&format!("?token={t}")),
        Token::None => {}
    }
    c.args(["--url", &url, "--store"]).arg(store).args(args);
    c
}

/// Run the sync client; its JSON answer (panics, with its stderr, when it fails).
fn run(mut c: Command) -> Value {
    let out = c.output().expect("run the sync client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sync client {c:?} failed:\n{stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)))
}

async fn run_async(c: Command) -> Value {
    tokio::task::spawn_blocking(move || run(c)).await.unwrap()
}

/// The document as region `url`'s node serves it over HTTP (`None`: not there yet).
async fn http_doc(url: &str, id: &str) -> Option<Value> {
    let resp = http().get(format!("{url}/v1/docs/sync/{id}")).send().await.unwrap();
    (resp.status() == 200).then_some(())?;
    Some(resp.json().await.unwrap())
}

/// Wait until `pred` holds of the document at every URL; the documents then.
async fn wait_docs(urls: &[String], id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut docs = Vec::new();
        for url in urls {
            docs.push(http_doc(url, id).await);
        }
        if docs.iter().all(|d| d.as_ref().is_some_and(&pred)) {
            return docs.into_iter().map(Option::unwrap).collect();
        }
        assert!(Instant::now() < deadline, "{what}: never held; the documents: {docs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `url`'s node has sent its sync clients so far.
async fn sent(url: &str) -> f64 {
    let page = metrics_page(&http(), url).await;
    metric(&page, "concord_sync_messages_sent_total", &[]).unwrap_or(0.0)
}

/// Wait until `clients` more clients of `url`'s node joined and got their first sync
/// reply (a peer and a sync message each, sent since `sent_before`): connected, and
/// syncing the document.
async fn wait_listening(url: &str, clients: f64, sent_before: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent(url).await < sent_before + 2.0 * clients {
        assert!(Instant::now() < deadline, "{clients} sync clients never connected to {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bare(doc_id: &Value) -> String {
    doc_id.as_str().unwrap().trim_start_matches("automerge:").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_two_regions_sync_one_document_and_every_region_converges() {
    let cluster = Cluster::start_full(&["us-east", "eu-west", "ap-south"], 1, &[]);
    for url in cluster.nodes.values() {
        cluster.wait_ready(url, Duration::from_secs(60)).await;
    }
    let regions: Vec<String> = ["us-east", "eu-west", "ap-south"].iter().map(|r| cluster.url(r)).collect();
    let (us, eu_follower, ap) = (cluster.url("us-east"), cluster.nodes["eu-west-2"].clone(), cluster.url("ap-south"));
    let dir = TempDir::new("sync-clients");
    let (a, b, c) = (dir.0.join("a.am"), dir.0.join("b.am"), dir.0.join("c.am"));

    // A creates a document through us-east; ap-south serves it over HTTP.
    let created = run_async(client(
        &us,
        &a,
        "create",
        &["--json", r#"{"title":"draft","n":1}"#, "--text-key", "body", "--text", "hello"],
    ))
    .await;
    assert_eq!(created["in_sync"], json!(true), "{created}");
    let id = bare(&created["doc_id"]);
    let docs = wait_docs(std::slice::from_ref(&ap), &id, "created through us-east, read in ap-south", |d| {
        d["title"] == "draft" && d["body"] == "hello"
    })
    .await;
    assert_eq!(docs[0], json!({"title": "draft", "n": 1, "body": "hello"}));

    // B syncs it from eu-west's follower.
    wait_docs(&[regions[1].clone(), eu_follower.clone()], &id, "in eu-west", |d| d["title"] == "draft").await;
    let got = run_async(client(&eu_follower, &b, "sync", &["--doc", created["doc_id"].as_str().unwrap()])).await;
    assert_eq!(got["doc"], docs[0], "{got}");

    // Concurrent edits of the same text and the same property, made offline, then synced.
    run_async(client(&us, &a, "edit", &["--set", r#"title="from A""#, "--insert", "body", "5", " from A"])).await;
    run_async(client(&eu_follower, &b, "edit", &["--set", r#"title="from B""#, "--insert", "body", "0", "B: "])).await;
    run_async(client(&us, &a, "sync", &[])).await;
    run_async(client(&eu_follower, &b, "sync", &[])).await;
    let every = wait_docs(&regions, &id, "both edits in every region", |d| {
        let body = d["body"].as_str().unwrap_or_default();
        body.contains(" from A") && body.starts_with("B: ")
    })
    .await;
    assert!(every.iter().all(|d| *d == every[0]), "the regions differ: {every:?}");
    let after_a = run_async(client(&us, &a, "sync", &[])).await;
    let after_b = run_async(client(&eu_follower, &b, "sync", &[])).await;
    assert_eq!(after_a["doc"], every[0]);
    assert_eq!(after_b["doc"], every[0]);
    assert_eq!(after_a["heads"], after_b["heads"], "both clients hold the same document");
    assert_eq!(every[0]["body"], "B: hello from A");
    assert!(every[0]["title"] == "from A" || every[0]["title"] == "from B");

    // The property's conflict is in every region's conflict log, with both values.
    for url in &regions {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list: Value = http()
                .get(format!("{url}/v1/conflicts?bucket=sync&key={id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let records = list["conflicts"].as_array().cloned().unwrap_or_default();
            let title = records.iter().find(|r| r["path"] == json!(["title"]));
            if let Some(r) = title {
                let values: Vec<&Value> = r["versions"].as_array().unwrap().iter().map(|v| &v["value"]).collect();
                assert!(values.contains(&&json!("from A")) && values.contains(&&json!("from B")), "{r}");
                break;
            }
            assert!(Instant::now() < deadline, "no conflict on title in {url}: {list}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Live: B waits on its connection to eu-west's follower for a change written over
    // HTTP in ap-south.
    let before = sent(&eu_follower).await;
    let waiting = tokio::spawn(run_async(client(
        &eu_follower,
        &b,
        "sync",
        &["--until-key", "status", "--until-value", r#""shipped""#, "--timeout", "60"],
    )));
    wait_listening(&eu_follower, 1.0, before).await;
    let resp = http()
        .post(format!("{ap}/v1/docs/sync/{id}"))
        .json(&json!({"ops": [{"op": "set", "path": ["status"], "value": "shipped"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pushed = waiting.await.unwrap();
    assert_eq!(pushed["doc"]["status"], "shipped", "{pushed}");

    // C syncs with ap-south, goes offline, and ap-south is cut off: C edits offline and
    // syncs its edit into ap-south while the region is cut off; A writes through us-east.
    run_async(client(&ap, &c, "sync", &["--doc", created["doc_id"].as_str().unwrap()])).await;
    cluster.partition("ap-south");
    run_async(client(&ap, &c, "edit", &["--set", "offline=true", "--insert", "body", "0", "C "])).await;
    run_async(client(&ap, &c, "sync", &[])).await;
    run_async(client(&us, &a, "edit", &["--set", "more=2"])).await;
    run_async(client(&us, &a, "sync", &[])).await;
    wait_docs(std::slice::from_ref(&regions[1]), &id, "A's write in eu-west", |d| d["more"] == 2).await;
    assert_eq!(http_doc(&ap, &id).await.unwrap()["more"], Value::Null, "ap-south is cut off");
    cluster.heal();
    // On reconnect C catches up with A's write, and every region has C's edit.
    let every = wait_docs(&regions, &id, "after the heal", |d| d["more"] == 2 && d["offline"] == true).await;
    assert!(every.iter().all(|d| *d == every[0]), "the regions differ: {every:?}");
    let caught_up = run_async(client(&ap, &c, "sync", &[])).await;
    assert_eq!(caught_up["doc"], every[0], "{caught_up}");
    assert_eq!(caught_up["doc"]["body"], "C B: hello from A");
    let a_last = run_async(client(&us, &a, "sync", &[])).await;
    assert_eq!(a_last["heads"], caught_up["heads"]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's `sync` message for `raw --cbor-json`.
fn sync_message(doc: &str, data: &[u8]) -> String {
    let data = hex(data);
    format!(r#"{{"type":"sync","senderId":"$PEER","targetId":"$SERVER","documentId":"{doc}","data":"hex:{data}"}}"#)
}

/// What an automerge 0.12 client sends a server holding `saved` after two changes of
/// its own: a V2 message, the changes back to back in one chunk.
fn v2_message_with_two_changes(saved: &[u8]) -> Vec<u8> {
    use automerge::sync::{MessageVersion, State, SyncDoc};
    use automerge::transaction::Transactable;
    let server = automerge::Automerge::load(saved).unwrap();
    let mut client = automerge::AutoCommit::load(saved).unwrap();
    client.put(automerge::ROOT, "v2", "first").unwrap();
    client.commit();
    client.put(automerge::ROOT, "more", 2).unwrap();
    client.commit();
    let (mut theirs, mut ours) = (State::new(), State::new());
    let hello = server.generate_sync_message(&mut theirs).unwrap();
    client.sync().receive_sync_message(&mut ours, hello).unwrap();
    let message = client.sync().generate_sync_message(&mut ours).unwrap();
    assert_eq!((message.version.clone(), message.changes.len()), (MessageVersion::V2, 1), "one V2 chunk");
    message.encode()
}

/// A sync message whose `have` holds a bloom filter of `u32::MAX` probes.
fn huge_bloom_message() -> Vec<u8> {
    use automerge::sync::{BloomFilter, ChunkList, Have, Message, MessageVersion};
    // One entry, 10 bits per entry, 2^32 - 1 probes (LEB128), two bytes of bits.
    let bloom = BloomFilter::try_from(&[1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff][..]).unwrap();
    let have = vec![Have { last_sync: Vec::new(), bloom }];
    let message = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have,
        changes: ChunkList::empty(),
        flags: None,
        version: MessageVersion::V1,
    };
    message.encode()
}

/// A sync message carrying one change, with a byte of the change flipped.
fn damaged_sync_message() -> Vec<u8> {
    use automerge::sync::{ChunkList, Message, MessageVersion};
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "title", "forged").unwrap();
    let change = doc.get_last_local_change().unwrap().clone();
    let mut bytes = change.raw_bytes().to_vec();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xff;
    let message = Message {
        heads: vec![change.hash()],
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![bytes]),
        flags: None,
        version: MessageVersion::V1,
    };
    message.encode()
}

/// What `raw` answered: the messages' types, and whether the server closed.
fn raw(url: &str, store: &Path, frames: &[&str]) -> (Vec<String>, Value) {
    let answer = run(client(url, store, "raw", frames));
    let types = answer["received"].as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap_or("?").to_string());
    (types.collect(), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_oversized_messages_close_the_connection_and_change_nothing() {
    let env = [("CONCORD_SYNC_MESSAGE_BYTES_MAX", "65536"), ("CONCORD_SYNC_CONNECTIONS_MAX", "2")];
    let cluster = Cluster::start_with_env(&["us-east"], &env);
    let url = cluster.url("us-east");
    cluster.wait_ready(&url, Duration::from_secs(60)).await;
    let dir = TempDir::new("sync-bad");
    let store = dir.0.join("doc.am");
    let created = run_async(client(&url, &store, "create", &["--json", r#"{"title":"kept"}"#])).await;
    let id = bare(&created["doc_id"]);
    let stored = || async {
        let resp = http().get(format!("{url}/v1/docs/sync/{id}?format=automerge")).send().await.unwrap();
        resp.bytes().await.unwrap()
    };
    let before = stored().await;
    let scratch = dir.0.join("scratch.am");
    let sync = sync_message;
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("not CBOR", vec!["--join".into(), "--frame-hex".into(), "ff00ff".into()]),
        ("a CBOR array", vec!["--join".into(), "--frame-hex".into(), "80".into()]),
        ("a text frame", vec!["--join".into(), "--text-frame".into(), "hello".into()]),
        ("sync before join", vec!["--cbor-json".into(), sync(&id, &[0x42, 0])]),
        (
            "no protocol version in common",
            vec!["--cbor-json".into(), r#"{"type":"join","senderId":"p","supportedProtocolVersions":["2"]}"#.into()],
        ),
        ("a bad document id", vec!["--join".into(), "--cbor-json".into(), sync("notanid", &[0x42, 0])]),
        ("a damaged sync message", vec!["--join".into(), "--cbor-json".into(), sync(&id, &[0x42, 0xff, 1, 2])]),
        (
            "a sync message whose change is damaged",
            vec!["--join".into(), "--cbor-json".into(), sync(&id, &damaged_sync_message())],
        ),
        // automerge would allocate 16 GiB per change it tests against this filter.
        (
            "a bloom filter of 2^32 - 1 probes",
            vec!["--join".into(), "--cbor-json".into(), sync(&id, &huge_bloom_message())],
        ),
    ];
    for (what, frames) in &cases {
        let args: Vec<&str> = frames.iter().map(String::as_str).collect();
        let (types, answer) = raw(&url, &scratch, &args);
        let messages: Vec<&String> = types.iter().filter(|t| *t != "peer").collect();
        assert_eq!(messages, vec!["error"], "{what}: {answer}");
        assert_eq!(answer["closed"], json!(true), "{what}: {answer}");
        assert_eq!(stored().await, before, "{what}: the stored document changed");
    }
    // Over the size limit: an error that says so, and the connection closes (the server
    // reads no more of it).
    let (types, answer) = raw(&url, &scratch, &["--join", "--big", "200000"]);
    assert_eq!((types, answer["closed"].clone()), (vec!["peer".to_string(), "error".into()], json!(true)), "{answer}");
    assert!(answer["received"][1]["message"].as_str().unwrap().contains("too long"), "{answer}");
    assert_eq!(stored().await, before);

    // Two connections open (the limit): a third is refused with 503.
    let sent_before = sent(&url).await;
    let holders: Vec<_> = (0..2)
        .map(|i| {
            let mut c = client(&url, &dir.0.join(format!("h{i}.am")), "sync", &["--doc", &id, "--stay", "8"]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    wait_listening(&url, 2.0, sent_before).await;
    let (_, answer) = raw(&url, &scratch, &["--join"]);
    assert_eq!(answer["http_status"], json!(503), "{answer}");
    for mut h in holders {
        assert!(h.wait().unwrap().success());
    }
    // The node still serves, and a good client still syncs the unchanged document.
    let again = run_async(client(&url, &dir.0.join("again.am"), "sync", &["--doc", &id])).await;
    assert_eq!(again["doc"], json!({"title": "kept"}));
    assert_eq!(stored().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limits_v2_messages_and_ephemeral_messages() {
    const READ_TOKEN: &str = "concord-test-read-token-fedcba9876543210";
    let env = [("CONCORD_API_READ_TOKEN", READ_TOKEN), ("CONCORD_SYNC_DOCS_PER_CONNECTION_MAX", "1")];
    let cluster = Cluster::start_with_env(&["us-east"], &env);
    let url = cluster.url("us-east");
    cluster.wait_ready(&url, Duration::from_secs(60)).await;
    let dir = TempDir::new("sync-tokens");
    let store = |name: &str| dir.0.join(name);
    let first = run_async(client(&url, &store("1.am"), "create", &["--json", r#"{"n":1}"#])).await;
    let second = run_async(client(&url, &store("2.am"), "create", &["--json", r#"{"n":2}"#])).await;
    let (id, id2) = (bare(&first["doc_id"]), bare(&second["doc_id"]));
    let stored = || async {
        let resp = http().get(format!("{url}/v1/docs/sync/{id}?format=automerge")).send().await.unwrap();
        resp.bytes().await.unwrap()
    };

    // No token, or a wrong one: 401 before any upgrade. The token in the query works.
    for token in [Token::None, Token::Header("not-a-token"), Token::Query("not-a-token")] {
        let answer = run(client_as(&url, &store("x.am"), "raw", &["--join"], token));
        assert_eq!(answer["http_status"], json!(401), "{answer}");
    }
    let got = run_async(client_as(&url, &store("q.am"), "sync", &["--doc", &id], Token::Query(TEST_TOKEN))).await;
    assert_eq!(got["doc"], json!({"n": 1}));

    // The read token syncs down, and its changes are not taken.
    let reader = store("r.am");
    let got = run(client_as(&url, &reader, "sync", &["--doc", &id], Token::Header(READ_TOKEN)));
    assert_eq!(got["doc"], json!({"n": 1}));
    run(client(&url, &reader, "edit", &["--set", "n=100"]));
    let before = stored().await;
    let got = run(client_as(&url, &reader, "sync", &[], Token::Header(READ_TOKEN)));
    assert_eq!(got["in_sync"], json!(false), "the server does not hold the reader's change: {got}");
    assert_eq!(stored().await, before, "the read token's change is not stored");

    // A V2 sync message (automerge 0.12's, as samod and automerge-repo 2 send them) with
    // two changes back to back in one chunk is taken.
    let message = v2_message_with_two_changes(&stored().await);
    let (types, answer) = raw(&url, &store("x.am"), &["--join", "--cbor-json", &sync_message(&id, &message)]);
    assert_eq!(types, vec!["peer", "sync"], "{answer}");
    let doc: Value = http().get(format!("{url}/v1/docs/sync/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc, json!({"n": 1, "v2": "first", "more": 2}));

    // One document per connection here: a second is refused.
    let empty = [0x42, 0, 0, 0, 0];
    let (first, second) = (sync_message(&id, &empty), sync_message(&id2, &empty));
    let (types, answer) = raw(&url, &store("x.am"), &["--join", "--cbor-json", &first, "--cbor-json", &second]);
    assert_eq!(types, vec!["peer", "sync", "error"], "{answer}");
    assert!(answer["received"][2]["message"].as_str().unwrap().contains("sync_docs_per_connection_max"));

    // A change another client syncs reaches a connected client live.
    let listen =
        client(&url, &store("w.am"), "sync", &["--doc", &id, "--until-key", "live", "--until-value", "\"yes\""]);
    let before = sent(&url).await;
    let waiting = tokio::task::spawn_blocking(move || run(listen));
    wait_listening(&url, 1.0, before).await;
    let writer = store("1.am");
    run_async(client(&url, &writer, "edit", &["--set", r#"live="yes""#])).await;
    run_async(client(&url, &writer, "sync", &[])).await;
    assert_eq!(waiting.await.unwrap()["doc"]["live"], "yes");

    // Ephemeral messages go to the other connections that sync the document, not back.
    let listen = client(&url, &store("l.am"), "sync", &["--doc", &id, "--stay", "6"]);
    let before = sent(&url).await;
    let listening = tokio::task::spawn_blocking(move || run(listen));
    wait_listening(&url, 1.0, before).await;
    let said = run_async(client(&url, &store("s.am"), "sync", &["--doc", &id, "--say", "0102ff", "--stay", "1"])).await;
    let heard = listening.await.unwrap();
    let data: Vec<&Value> = heard["ephemeral"].as_array().unwrap().iter().map(|e| &e["data"]).collect();
    assert_eq!(data, vec![&json!("0102ff")], "{heard}");
    assert_eq!(heard["ephemeral"][0]["from"], said["peer_id"]);
    assert_eq!(said["ephemeral"], json!([]), "not back to its sender");
}
