//! Who may use the HTTP API: a bearer token per deployment.
//!
//! A node started with a read-write token and a read-only one: a request without a
//! token, or with one the node does not know, gets 401 (and no session token); the
//! read token reads and gets 403 on a write; the read-write token does both. The health
//! check and the dashboard's files are open; nothing else is. A node without a token
//! refuses to start and says why; no token is ever in a node's log.

use std::process::{Command, Stdio};

use concord_tests::{Nats, Node, TEST_TOKEN, TempDir, concord_bin, http, http_without_token};

const READ_TOKEN: &str = "concord-test-read-token-fedcba9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_requests_only_with_a_token_of_the_deployment() {
    let dir = TempDir::new("auth");
    let nats = Nats::start(&dir.0);
    let node = Node::start_with(&dir.0, "us-east", &nats.url(), &[("CONCORD_API_READ_TOKEN", READ_TOKEN)]);
    let url = node.url();
    let (outsider, writer) = (http_without_token(), http());
    let bearer = |t: &str| format!("Bearer {t}");

    // Without a token, or with a wrong one: 401, and nothing of the node's state.
    for auth in [None, Some(bearer("not-a-token-of-this-deployment")), Some(format!("Basic {TEST_TOKEN}"))] {
        for (method, path) in [("GET", "/v1/kv/b/k"), ("PUT", "/v1/kv/b/k"), ("GET", "/v1/status"), ("GET", "/metrics")]
        {
            let mut req = outsider.request(method.parse().unwrap(), format!("{url}{path}")).body("v");
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"concord\"");
            assert!(r.headers().get("concord-token").is_none(), "no session token for an outsider");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized");
        }
    }

    // The read-write token writes and reads.
    let w = writer.put(format!("{url}/v1/kv/b/k")).body("v").send().await.unwrap();
    assert_eq!(w.status(), 200);
    assert_eq!(writer.get(format!("{url}/v1/kv/b/k")).send().await.unwrap().text().await.unwrap(), "v");

    // The read token reads, and may not write.
    let reader = |req: reqwest::RequestBuilder| req.header("authorization", bearer(READ_TOKEN));
    let r = reader(outsider.get(format!("{url}/v1/kv/b/k"))).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "v".to_string()));
    assert_eq!(reader(outsider.get(format!("{url}/v1/status"))).send().await.unwrap().status(), 200);
    for req in [
        outsider.put(format!("{url}/v1/kv/b/k")).body("x"),
        outsider.delete(format!("{url}/v1/kv/b/k")),
        outsider.post(format!("{url}/v1/docs/b/d")).body(r#"{"ops":[]}"#),
        outsider.post(format!("{url}/v1/conflicts/00000000-0000-0000-0000-000000000000/resolve")).body("{}"),
    ] {
        let r = reader(req).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "forbidden");
    }
    assert_eq!(writer.get(format!("{url}/v1/kv/b/k")).send().await.unwrap().text().await.unwrap(), "v", "unchanged");

    // Open: the health check and the dashboard's files (they hold no data).
    assert_eq!(outsider.get(format!("{url}/v1/health")).send().await.unwrap().status(), 200);
    assert_eq!(outsider.get(format!("{url}/ui")).send().await.unwrap().status(), 200);

    // No token is ever written to the node's log.
    let log = node.log_tail();
    assert!(!log.contains(TEST_TOKEN) && !log.contains(READ_TOKEN), "a token in the log:\n{log}");
}

#[test]
fn a_node_without_a_token_refuses_to_start() {
    let dir = TempDir::new("auth-none");
    let nats = Nats::start(&dir.0);
    let out = Command::new(concord_bin())
        .args(["serve", "--node", "us-east-1", "--role", "leader", "--http", "127.0.0.1:0", "--nats", &nats.url()])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env("CONCORD_REGION", "us-east")
        .env_remove("CONCORD_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a token"), "{err}");
    // A short token is refused too.
    let out = Command::new(concord_bin())
        .args(["serve", "--node", "us-east-1", "--role", "leader", "--http", "127.0.0.1:0", "--nats", &nats.url()])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env("CONCORD_REGION", "us-east")
        .env("CONCORD_API_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"));
}
