//! Durability levels across regions: with one region cut off, an `all` write fails
//! within its timeout naming that region (and still replicates after heal), and a
//! `remote` write succeeds through a reachable region.

use std::time::{Duration, Instant};

use concord_tests::{Cluster, http};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fails_naming_the_cut_region_and_remote_succeeds() {
    let cluster = Cluster::start(&["us-east", "eu-west", "ap-south"]);
    let client = http();
    let us = cluster.url("us-east");

    // Healthy: `all` is confirmed by both other regions.
    let r = client.put(format!("{us}/v1/kv/d/healthy?durability=all")).body("1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let mut by: Vec<String> =
        body["confirmed_by"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    by.sort();
    assert_eq!(by, ["ap-south", "eu-west"]);

    cluster.partition("ap-south");
    let started = Instant::now();
    let r =
        client.put(format!("{us}/v1/kv/d/all-write?durability=all&timeout_ms=3000")).body("a").send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "durability_timeout", "{body}");
    assert_eq!(body["unconfirmed"], serde_json::json!(["ap-south"]), "{body}");
    assert!(body["error"].as_str().unwrap().contains("ap-south"), "{body}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "answered after {took:?}");

    // The default timeout (10 s, configurable) applies without timeout_ms.
    let started = Instant::now();
    let r = client.put(format!("{us}/v1/kv/d/all-default?durability=all")).body("b").send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!((Duration::from_secs(10)..Duration::from_secs(14)).contains(&started.elapsed()));

    let r = client.put(format!("{us}/v1/kv/d/remote-write?durability=remote")).body("r").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["confirmed_by"], serde_json::json!(["eu-west"]), "{body}");
    // The write that timed out is durable here and readable.
    let here = client.get(format!("{us}/v1/kv/d/all-write")).send().await.unwrap();
    assert_eq!(here.text().await.unwrap(), "a");
    let there = client.get(format!("{}/v1/kv/d/all-write", cluster.url("ap-south"))).send().await.unwrap();
    assert_eq!(there.status(), 404, "the cut region received a write during the cut");

    // While cut off, the mirror of ap-south cannot know how far ap-south's log is (its
    // lag reads 0), but the time since it last heard from ap-south grows: status shows it.
    let status: Value = client.get(format!("{us}/v1/status")).send().await.unwrap().json().await.unwrap();
    // (`mirror_active_ms` is null once the mirror's consumer is gone altogether.)
    assert_eq!(status["lag"]["ap-south"]["mirror_connected"], false, "{status}");
    assert!(status["lag"]["ap-south"]["mirror_active_ms"].as_u64().is_none_or(|ms| ms > 5000), "{status}");
    assert_eq!(status["lag"]["eu-west"]["mirror_connected"], true, "{status}");

    // After heal it replicates to the region that did not confirm it.
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(60)).await;
    for key in ["all-write", "all-default", "remote-write"] {
        let r = client.get(format!("{}/v1/kv/d/{key}", cluster.url("ap-south"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{key} never reached ap-south");
    }
    // Latency on eu-west's links (cluster delay) slows an `all` write by at least that.
    cluster.ctl("delay", &["eu-west", "400"]);
    let started = Instant::now();
    let r = client.put(format!("{us}/v1/kv/d/slow?durability=all")).body("s").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400), "delay had no effect: {:?}", started.elapsed());
    cluster.ctl("delay", &["eu-west", "0"]);

    // `region` needs followers, which this deployment does not run: a clear 503.
    let r = client.put(format!("{us}/v1/kv/d/x?durability=region")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "durability_unavailable");
}
