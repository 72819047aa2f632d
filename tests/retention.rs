//! Bounded logs: retention is on by default, and replicas that fall behind it repair
//! what their logs lost.
//!
//! The logs here keep 20 changesets (`log_max_msgs`). A follower of us-east is stopped
//! and eu-west is cut off while us-east writes 60 keys: when they come back, the logs
//! no longer hold most of what they missed. The follower (not empty, so no snapshot)
//! and eu-west's leader each see a gap that no log can fill, and anti-entropy repairs
//! it from us-east's leader: every key reads back everywhere, nothing waits.

use std::time::{Duration, Instant};

use concord_tests::{Cluster, http, metric, metrics_page, status};

/// Stop a node with SIGTERM and wait until it has exited.
async fn stop(cluster: &Cluster, name: &str, url: &str) {
    let procs = std::fs::read(cluster.dir.0.join(format!("procs/{name}.json"))).unwrap();
    let pid = serde_json::from_slice::<serde_json::Value>(&procs).unwrap()["pid"].as_i64().unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while unsafe { libc::kill(pid as i32, 0) } == 0 {
        assert!(Instant::now() < deadline, "{name} did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http().get(format!("{url}/v1/status")).send().await.is_err(), "{name} still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_bounded_and_replicas_behind_them_repair_what_they_lost() {
    let env = [("CONCORD_LOG_MAX_MSGS", "20"), ("CONCORD_ANTI_ENTROPY_GAP_AFTER_S", "3")];
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 1, &env);
    let client = http();
    let (us, eu) = (cluster.url("us-east"), cluster.url("eu-west"));
    let follower = cluster.nodes["us-east-2"].clone();
    let w = client.put(format!("{us}/v1/kv/ret/k0")).body("v0").send().await.unwrap();
    assert_eq!(w.status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;

    // Retention by default (size and age), with the count given here, on the log and
    // on the mirrors.
    let us_js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap());
    let eu_js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("eu-west")).await.unwrap());
    for (js, stream) in [(&us_js, "CONCORD_LOG_US_EAST"), (&eu_js, "CONCORD_MIRROR_US_EAST")] {
        let config = js.get_stream(stream).await.unwrap().info().await.unwrap().config.clone();
        assert_eq!(config.max_messages, 20, "{stream}");
        assert_eq!(config.max_bytes, 1 << 30, "{stream}: 1 GiB by default");
        assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600), "{stream}: 7 days by default");
    }

    // Stopped cleanly (a kill could lose its last commits, which are deferred: it would
    // come back empty and start from a snapshot instead).
    stop(&cluster, "us-east-2", &follower).await;
    cluster.partition("eu-west");
    for i in 1..=60 {
        let w = client.put(format!("{us}/v1/kv/ret/k{i}")).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
    }
    let first = us_js.get_stream("CONCORD_LOG_US_EAST").await.unwrap().info().await.unwrap().state.first_sequence;
    assert!(first > 30, "the log dropped what it does not keep: it starts at {first}");
    cluster.start_again("us-east-2");
    cluster.heal();

    let deadline = Instant::now() + Duration::from_secs(120);
    for url in [&follower, &eu] {
        loop {
            let s = status(&client, url).await;
            let from_us: u64 = s.applied.iter().filter(|(o, _)| o.starts_with("us-east.")).map(|(_, n)| *n).sum();
            if s.gaps.is_empty() && s.waiting == 0 && from_us >= 61 {
                break;
            }
            assert!(Instant::now() < deadline, "{url} never repaired: gaps {:?}, applied {:?}", s.gaps, s.applied);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for i in 0..=60 {
            let r = client.get(format!("{url}/v1/kv/ret/k{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "k{i} at {url}");
            assert_eq!(r.text().await.unwrap(), format!("v{i}"), "k{i} at {url}");
        }
        let page = metrics_page(&client, url).await;
        let logs: Vec<String> = ["us-east-2", "eu-west-1"]
            .iter()
            .map(|n| std::fs::read_to_string(cluster.dir.0.join(format!("{n}.log"))).unwrap_or_default())
            .collect();
        assert!(
            metric(&page, "concord_anti_entropy_gaps_lifted_total", &[]).unwrap() >= 1.0,
            "{url} lifted its gap by anti-entropy\n{}",
            logs.join("\n=====\n")
        );
        assert!(metric(&page, "concord_log_gaps_total", &[]).unwrap() >= 1.0, "{url} saw the loss as a gap first");
    }
}
