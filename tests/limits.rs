//! Limits on requests, on a real node over real NATS: a flood beyond the concurrency
//! limit is refused at once with 503 `overloaded` (over HTTP and over NATS) while the
//! operator's status stays reachable, and the node stays up and serves afterwards; a
//! request past the request timeout answers 504 `timeout`, and the waits inside a
//! request end before it.
//!
//! A request holds its place for a while by reading with a session token from the
//! future (`us-east.99=5`, which no replica ever applies): it waits its whole `wait_ms`,
//! then answers 503 `session_lag`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_api::{ErrorBody, ErrorCode, StatusBody, WriteAck};
use concord_tests::{Nats, Node, TempDir, http, status};
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: &str = "4";
const HOLDERS: usize = 4;
const FLOOD: usize = 100;
const FUTURE_TOKEN: &str = "v1:us-east.99=5";
const HOLD_MS: u64 = 5000;

/// One answer: its status and, for an error, its body (which must parse as the API's).
#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<ErrorBody>,
}

impl Answer {
    fn new(status: u16, body: &[u8]) -> Answer {
        let error = (status >= 400).then(|| {
            serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{status}: {e}: {:?}", String::from_utf8_lossy(body)))
        });
        Answer { status, error }
    }

    fn is(&self, status: u16, code: ErrorCode) -> bool {
        self.status == status && self.error.as_ref().is_some_and(|e| e.code == code)
    }

    fn overloaded(&self) -> bool {
        self.is(503, ErrorCode::Overloaded)
    }
}

/// `GET /v1/kv/b/absent`, with a session token and wait when given. A transport error
/// fails the test.
async fn http_read(client: reqwest::Client, url: String, token: Option<&'static str>, wait_ms: u64) -> Answer {
    let mut req = client.get(format!("{url}/v1/kv/b/absent?wait_ms={wait_ms}"));
    if let Some(t) = token {
        req = req.header("Concord-Token", t);
    }
    let resp = req.send().await.expect("an answer, not a transport error");
    let status = resp.status().as_u16();
    Answer::new(status, &resp.bytes().await.unwrap())
}

/// NATS `kv.get` of `b/absent`, with a session token and wait when given.
async fn nats_get(
    nc: &async_nats::Client,
    token: Option<&'static str>,
    wait_ms: u64,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Concord-Bucket", "b");
    headers.insert("Concord-Key", "absent");
    headers.insert("Concord-Wait-Ms", wait_ms.to_string().as_str());
    if let Some(t) = token {
        headers.insert("Concord-Token", t);
    }
    nc.request_with_headers("concord.api.us-east.kv.get", headers, Bytes::new()).await
}

/// The same as [`http_read`], over NATS. A transport error fails the test.
async fn nats_read(nc: async_nats::Client, token: Option<&'static str>, wait_ms: u64) -> Answer {
    let msg = nats_get(&nc, token, wait_ms).await.expect("an answer, not a transport error");
    let status = msg.headers.as_ref().and_then(|h| h.get("Concord-Status")).expect("Concord-Status");
    Answer::new(status.as_str().parse().unwrap(), &msg.payload)
}

/// Hold a place: send until admitted (a probe may hold a place for a moment, so a
/// holder can be refused at first), and return the answer that took the place.
async fn hold<F: Future<Output = Answer>>(send: impl Fn() -> F) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = send().await;
        if !a.overloaded() {
            return a;
        }
        assert!(Instant::now() < deadline, "a holder never got a place");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Probe until the data path refuses with 503 `overloaded` (the holders took every place).
async fn until_full<F: Future<Output = Answer>>(probe: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = probe().await;
        if a.overloaded() {
            return;
        }
        assert!(a.is(404, ErrorCode::NotFound), "a probe: {a:?}");
        assert!(Instant::now() < deadline, "the holders never filled the limit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Flood while the holders hold every place: every answer is 503 `overloaded` (or, had
/// a holder already left, an ordinary 404), and at least one is refused.
fn check_flood(flood: &[Answer], holders_all_waiting: bool) {
    for a in flood {
        assert!(a.overloaded() || (!holders_all_waiting && a.is(404, ErrorCode::NotFound)), "{a:?}");
    }
    assert!(flood.iter().any(Answer::overloaded), "nothing refused: {flood:?}");
}

fn overloaded_total(metrics: &str) -> u64 {
    let line = metrics.lines().find(|l| l.starts_with("concord_requests_overloaded_total{")).expect("the counter");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// An ordinary write and read succeed.
async fn write_and_read(client: &reqwest::Client, url: &str, value: &str) {
    let w = client.put(format!("{url}/v1/kv/b/after")).body(value.to_string()).send().await.unwrap();
    assert_eq!(w.status(), 200);
    let ack: WriteAck = w.json().await.unwrap();
    assert!(ack.ok && ack.seq.is_some(), "{ack:?}");
    let r = client.get(format!("{url}/v1/kv/b/after")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, value.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_concurrency_limit_is_refused_and_the_node_stays_up() {
    let dir = TempDir::new("limits-flood");
    let nats = Nats::start(&dir.0);
    let env = [("CONCORD_HTTP_CONCURRENCY_MAX", LIMIT), ("CONCORD_NATS_CONCURRENCY_MAX", LIMIT)];
    let mut node = Node::start_with(&dir.0, "us-east", &nats.url(), &env);
    let (client, url) = (http(), node.url());

    // HTTP.
    let holders: Vec<_> = (0..HOLDERS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(hold(move || http_read(client.clone(), url.clone(), Some(FUTURE_TOKEN), HOLD_MS)))
        })
        .collect();
    until_full(|| http_read(client.clone(), url.clone(), None, 0)).await;
    let flood = join_all((0..FLOOD).map(|_| http_read(client.clone(), url.clone(), None, 0))).await;
    check_flood(&flood, holders.iter().all(|h| !h.is_finished()));
    // The operator's routes have a budget of their own.
    assert_eq!(status(&client, &url).await.node, "us-east-1");
    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(overloaded_total(&metrics) >= 2, "{metrics}");
    for h in holders {
        let a = h.await.unwrap();
        assert!(a.is(503, ErrorCode::SessionLag), "a holder: {a:?}");
    }

    // NATS: the leader serves reads there while it has no follower.
    let nc = concord_tests::nats_connect(nats.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = nats_get(&nc, None, 0).await {
        assert!(Instant::now() < deadline, "the leader never served reads over NATS: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holders: Vec<_> = (0..HOLDERS)
        .map(|_| {
            let nc = nc.clone();
            tokio::spawn(hold(move || nats_read(nc.clone(), Some(FUTURE_TOKEN), HOLD_MS)))
        })
        .collect();
    until_full(|| nats_read(nc.clone(), None, 0)).await;
    let flood = join_all((0..FLOOD).map(|_| nats_read(nc.clone(), None, 0))).await;
    check_flood(&flood, holders.iter().all(|h| !h.is_finished()));
    let msg = nc.request("concord.api.us-east.status", Bytes::new()).await.unwrap();
    assert_eq!(msg.headers.as_ref().and_then(|h| h.get("Concord-Status")).unwrap().as_str(), "200");
    assert_eq!(serde_json::from_slice::<StatusBody>(&msg.payload).unwrap().node, "us-east-1");
    for h in holders {
        let a = h.await.unwrap();
        assert!(a.is(503, ErrorCode::SessionLag), "a holder: {a:?}");
    }

    assert!(node.running(), "the node died under the flood:\n{}", node.log_tail());
    write_and_read(&client, &url, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_answers_504_and_waits_end_before_it() {
    let dir = TempDir::new("limits-timeout");
    let nats = Nats::start(&dir.0);
    let mut node = Node::start_with(&dir.0, "us-east", &nats.url(), &[("CONCORD_REQUEST_TIMEOUT_MS", "1000")]);
    let (client, url) = (http(), node.url());

    // A session wait longer than the request timeout is cut to end before it, so the
    // read answers with its own code, in about 0.9 s rather than 5.
    let started = Instant::now();
    let a = http_read(client.clone(), url.clone(), Some(FUTURE_TOKEN), 5000).await;
    assert!(a.is(503, ErrorCode::SessionLag), "{a:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the wait was not cut: {:?}", started.elapsed());

    // What has no bound of its own is cut by the request timeout: a body that trickles
    // in (10 of the 1000 bytes announced, then nothing).
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", node.http_port)).await.unwrap();
    let head = format!(
        "PUT /v1/kv/b/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n0123456789",
        concord_tests::TEST_TOKEN
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut conn))
        .await
        .expect("an answer within the request timeout");
    let a = Answer::new(status, &body);
    assert!(a.is(504, ErrorCode::Timeout), "{a:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before the timeout: {a:?}");

    assert!(node.running(), "{}", node.log_tail());
    write_and_read(&client, &url, "after the timeout").await;
    let gone = client.get(format!("{url}/v1/kv/b/slow")).send().await.unwrap();
    assert_eq!(gone.status(), 404, "the cut-off write applied");
}

/// Read one HTTP/1.1 response with a `Content-Length`: (status, body).
async fn read_response(conn: &mut tokio::net::TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed mid-response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        if buf.len() >= end + 4 + length {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, buf[end + 4..end + 4 + length].to_vec());
        }
    }
}
