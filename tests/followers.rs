//! Regional followers and session guarantees.
//!
//! Two regions, each a leader and two followers (started by `concord cluster up
//! --followers 2`; each follower reaches its region's NATS through a proxy link that
//! `cluster partition NODE` cuts). Checked: a write in us-east read at once, with its
//! token, from an eu-west follower; a follower cut off from its region's log answers a
//! newer token with a clear lag error, then serves it after heal; monotonic reads while
//! alternating between followers; NATS reads spread over a region's followers; writes
//! sent to a follower are redirected to the leader; `region` durability; and a follower
//! started after the log dropped old messages starts from a snapshot and converges.

use std::time::{Duration, Instant};

use concord_api::{StatusBody, WriteAck};
use concord_tests::{Cluster, Node, http, metric, metrics_page, status};
use serde_json::Value;

fn token(resp: &reqwest::Response) -> String {
    resp.headers()["concord-token"].to_str().unwrap().to_string()
}

async fn reads_served(client: &reqwest::Client, url: &str) -> u64 {
    let text = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("concord_reads_served_total")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_serve_reads_with_session_guarantees() {
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 2, &[("CONCORD_LOG_MAX_MSGS", "30")]);
    let client = http();
    let us = cluster.url("us-east");
    let n = |name: &str| cluster.nodes[name].clone();
    for name in ["us-east-2", "us-east-3", "eu-west-2", "eu-west-3"] {
        cluster.wait_ready(&n(name), Duration::from_secs(60)).await;
    }

    // Read-your-writes from another region's follower.
    for i in 0..10 {
        let w = client.put(format!("{us}/v1/kv/f/k{i}")).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
        let follower = if i % 2 == 0 { n("eu-west-2") } else { n("eu-west-3") };
        let r = client.get(format!("{follower}/v1/kv/f/k{i}")).header("Concord-Token", token(&w)).send().await.unwrap();
        assert_eq!(r.status(), 200, "write {i} not readable with its token at {follower}");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }

    // Monotonic reads while alternating between followers.
    let mut t = String::new();
    for i in 0..20u64 {
        let w = client.put(format!("{us}/v1/kv/f/clock")).body(i.to_string()).send().await.unwrap();
        let wt = token(&w);
        for f in ["us-east-2", "eu-west-3", "us-east-3", "eu-west-2"] {
            let r = client
                .get(format!("{}/v1/kv/f/clock", n(f)))
                .header("Concord-Token", if t.is_empty() { &wt } else { &t })
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            t = token(&r);
            let seen: u64 = r.text().await.unwrap().parse().unwrap();
            assert!(seen + 1 >= i, "{f} is behind the session: read {seen}");
        }
        // Carry the newest token: the write's.
        t = wt;
    }

    // Writes sent to a follower go to the leader (307), and `region` durability waits
    // for a follower.
    let r = concord_tests::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .put(format!("{}/v1/kv/f/redirected?durability=async", n("us-east-2")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], format!("{us}/v1/kv/f/redirected?durability=async"));
    let r =
        concord_tests::send_following(client.put(format!("{}/v1/kv/f/redirected", n("us-east-2"))).body("followed"))
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "the redirect, followed, leads to the leader");
    let r = client.put(format!("{us}/v1/kv/f/durable?durability=region")).body("d").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: WriteAck = r.json().await.unwrap();
    assert_eq!(ack.confirmed_by, ["us-east"]);

    // NATS reads spread over the region's followers (the leader serves none while they
    // live; it notices followers within a couple of seconds of their start).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(&client, &us).await;
        if !status.serves_nats_reads && status.followers.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never handed reads to its followers: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: Vec<u64> = futures::future::join_all(["us-east-1", "us-east-2", "us-east-3"].map(|f| {
        let (client, url) = (client.clone(), n(f));
        async move { reads_served(&client, &url).await }
    }))
    .await;
    let nc = concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap();
    const READS: u64 = 300;
    for i in 0..READS {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Concord-Bucket", "f");
        h.insert("Concord-Key", format!("k{}", i % 10).as_str());
        let msg = nc.request_with_headers("concord.api.us-east.kv.get", h, "".into()).await.unwrap();
        assert_eq!(msg.headers.as_ref().unwrap().get("Concord-Status").unwrap().as_str(), "200");
    }
    let after: Vec<u64> = futures::future::join_all(["us-east-1", "us-east-2", "us-east-3"].map(|f| {
        let (client, url) = (client.clone(), n(f));
        async move { reads_served(&client, &url).await }
    }))
    .await;
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("NATS reads per node (leader, follower 2, follower 3): {served:?}");
    let leader_log = std::fs::read_to_string(cluster.dir.0.join("logs/us-east-1.log")).unwrap_or_default();
    let switches: Vec<&str> =
        leader_log.lines().filter(|l| l.contains("serve reads") || l.contains("serving them")).collect();
    assert_eq!(served[0], 0, "the leader served reads while followers were alive: {switches:#?}");
    assert_eq!(served[1] + served[2], READS);
    assert!(served[1] >= READS / 5 && served[2] >= READS / 5, "reads did not spread: {served:?}");

    // What the nodes measure: latency histograms of writes (by durability), reads and
    // applying; lag per origin region; a leader's followers' lag, its epoch.
    let leader = metrics_page(&client, &us).await;
    let count = |page: &str, name: &str, labels: &[(&str, &str)]| {
        metric(page, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in {page}"))
    };
    assert!(count(&leader, "concord_write_seconds_count", &[("durability", "async")]) >= 30.0);
    assert!(count(&leader, "concord_write_seconds_count", &[("durability", "region")]) >= 1.0);
    let slow = count(&leader, "concord_write_seconds_bucket", &[("durability", "async"), ("le", "+Inf")]);
    assert_eq!(
        slow,
        count(&leader, "concord_write_seconds_count", &[("durability", "async")]),
        "+Inf holds every sample"
    );
    assert_eq!(count(&leader, "concord_leader", &[("region", "us-east"), ("node", "us-east-1")]), 1.0);
    assert!(count(&leader, "concord_epoch", &[]) >= 1.0);
    for f in ["us-east-2", "us-east-3"] {
        assert!(count(&leader, "concord_follower_lag_messages", &[("follower", f)]) >= 0.0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&metrics_page(&client, &us).await, "concord_mirror_connected", &[("origin_region", "eu-west")])
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "us-east's mirror of eu-west never shows connected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let follower = metrics_page(&client, &n("eu-west-2")).await;
    assert!(count(&follower, "concord_read_seconds_count", &[]) >= 5.0, "eu-west-2 served reads");
    assert!(count(&follower, "concord_apply_seconds_count", &[]) >= 1.0, "eu-west-2 applied batches");
    assert_eq!(count(&follower, "concord_leader", &[]), 0.0);
    for origin in ["us-east", "eu-west"] {
        let lag = count(&follower, "concord_replication_lag_messages", &[("origin_region", origin)]);
        assert!(lag < 1000.0, "{origin}: {lag}");
        assert!(count(&follower, "concord_replication_lag_seconds", &[("origin_region", origin)]) < 60.0);
    }

    // A follower cut off from its region's log answers a newer token with a lag error.
    cluster.partition("us-east-3");
    let w = client.put(format!("{us}/v1/kv/f/after-cut")).body("new").send().await.unwrap();
    let wt = token(&w);
    let r = client
        .get(format!("{}/v1/kv/f/after-cut?wait_ms=1500", n("us-east-3")))
        .header("Concord-Token", &wt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "session_lag", "{body}");
    assert!(body["behind"].as_object().unwrap().keys().any(|o| o.starts_with("us-east.")), "{body}");
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(format!("{}/v1/kv/f/after-cut", n("us-east-3")))
            .header("Concord-Token", &wt)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            assert_eq!(r.text().await.unwrap(), "new");
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up after heal");
    }

    // The log keeps 30 changesets: after 60 more writes, a new follower cannot replay
    // from the start; it starts from the leader's snapshot and converges.
    for i in 0..60 {
        let w = client.put(format!("{us}/v1/kv/f/bulk{i}")).body(format!("b{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
    }
    let newest = token_of(&status(&client, &us).await);
    let late = Node::start_as(
        &cluster.dir.0,
        "us-east-9",
        "follower",
        "us-east",
        &cluster.nats_as("us-east", "us-east-9"),
        &[("CONCORD_REGIONS", "us-east,eu-west")],
    );
    let log = std::fs::read_to_string(cluster.dir.0.join("us-east-9.log")).unwrap();
    assert!(log.contains("snapshot loaded"), "the late follower did not start from a snapshot:\n{log}");
    assert!(log.contains("snapshot downloaded; loading it"), "streamed to a file first, then loaded:\n{log}");
    let partial = cluster.dir.0.join("data/us-east-9/bootstrap.snapshot.partial");
    assert!(!partial.exists(), "the downloaded snapshot is removed once loaded");
    let r = client.get(format!("{}/v1/kv/f/k0", late.url())).header("Concord-Token", &newest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v0", "data from before the trimmed log came with the snapshot");
    let w = client.put(format!("{us}/v1/kv/f/after-join")).body("j").send().await.unwrap();
    let r = client
        .get(format!("{}/v1/kv/f/after-join", late.url()))
        .header("Concord-Token", token(&w))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the late follower does not follow the log after its snapshot");
    let listing = |url: String| {
        let client = client.clone();
        async move { client.get(format!("{url}/v1/kv/f?limit=1000")).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(listing(late.url()).await, listing(us.clone()).await);
}

fn token_of(status: &StatusBody) -> String {
    let pairs: Vec<String> = status.applied.iter().map(|(o, s)| format!("{o}={s}")).collect();
    format!("v1:{}", pairs.join(","))
}
