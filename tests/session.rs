//! Session tokens across regions (read-your-writes and monotonic reads), served here by
//! each region's leader: a write's token makes a read in another region wait until that
//! region applied the write; a region cut off answers a clear 503 naming what it lacks
//! instead of stale data, and serves the read after heal.

use std::time::{Duration, Instant};

use concord_tests::{Cluster, http};
use serde_json::Value;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

fn token(resp: &reqwest::Response) -> String {
    resp.headers()["concord-token"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_give_read_your_writes_and_monotonic_reads_in_any_region() {
    let cluster = Cluster::start(&REGIONS);
    let client = http();
    let (us, eu, ap) = (cluster.url("us-east"), cluster.url("eu-west"), cluster.url("ap-south"));

    // Read-your-writes: write in us-east, read at once in eu-west with the token.
    for i in 0..20 {
        let w = client.put(format!("{us}/v1/kv/s/k{i}")).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
        let t = token(&w);
        let r = client.get(format!("{eu}/v1/kv/s/k{i}")).header("Concord-Token", &t).send().await.unwrap();
        assert_eq!(r.status(), 200, "write {i} not visible in eu-west with its token");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }

    // Monotonic reads: alternate regions, always passing the newest token seen.
    let mut t = String::new();
    for i in 0..30 {
        let writer = [&us, &eu, &ap][i % 3];
        let w = client.put(format!("{writer}/v1/kv/s/counter")).body(i.to_string()).send().await.unwrap();
        assert_eq!(w.status(), 200);
        let wt = token(&w);
        for reader in [&ap, &us, &eu] {
            let r = client.get(format!("{reader}/v1/kv/s/counter")).header("Concord-Token", &wt).send().await.unwrap();
            assert_eq!(r.status(), 200);
            t = token(&r);
            let seen: usize = r.text().await.unwrap().parse().unwrap();
            assert!(seen >= i, "{reader} went back in time: read {seen} after writing {i}");
        }
    }
    assert!(t.starts_with("v1:"));

    // A region cut off cannot catch up: a read with a newer token fails clearly.
    cluster.partition("eu-west");
    let w = client.put(format!("{us}/v1/kv/s/late")).body("after the cut").send().await.unwrap();
    let t = token(&w);
    let started = Instant::now();
    let r = client.get(format!("{eu}/v1/kv/s/late?wait_ms=1500")).header("Concord-Token", &t).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "session_lag", "{body}");
    let behind = body["behind"].as_object().unwrap();
    assert!(behind.keys().all(|o| o.starts_with("us-east.")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("us-east."), "{body}");
    // Without the token the read is served (possibly stale: the client did not ask).
    let r = client.get(format!("{eu}/v1/kv/s/late")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A malformed token is bad input.
    let r = client.get(format!("{eu}/v1/kv/s/late")).header("Concord-Token", "nonsense").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // After heal the same read waits (default 2 s) and is served.
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.get(format!("{eu}/v1/kv/s/late")).header("Concord-Token", &t).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.text().await.unwrap(), "after the cut");
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "eu-west never caught up after heal");
    }

    // Over NATS too: the token travels in the Concord-Token header.
    let nc = concord_tests::nats_connect(cluster.nats("ap-south")).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Concord-Bucket", "s");
    h.insert("Concord-Key", "late");
    h.insert("Concord-Token", t.as_str());
    let msg = nc.request_with_headers("concord.api.ap-south.kv.get", h, "".into()).await.unwrap();
    assert_eq!(msg.headers.as_ref().unwrap().get("Concord-Status").unwrap().as_str(), "200");
    assert_eq!(&msg.payload[..], b"after the cut");
}
