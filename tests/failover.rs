//! Leader failover inside a region, with fencing (issue 9): us-east runs a leader and
//! two followers, eu-west a leader; writers keep writing to us-east (to any of its
//! nodes, following redirects) while the leader is killed, frozen, or cut off from its
//! region's NATS. Each test checks:
//!
//! - a follower leads within the bound (the test prints the measured time) and writes
//!   resume;
//! - no acknowledged write is lost: each reads back with its value from the new leader
//!   and from eu-west;
//! - the old leader accepts no more writes and rejoins as a follower;
//! - the region's log never interleaves epochs: once a newer epoch has appended, no
//!   older epoch's changeset follows it.

use std::time::{Duration, Instant};

use concord_core::changeset::Changeset;
use concord_tests::load::{Load, applied_token, check_acked, start_load, writing_node};
use concord_tests::{Cluster, http, status};
use futures::StreamExt;

/// Writes resume this soon after a leader dies (the lease: 3 s by default, plus the
/// election's waits and the new leader's catch-up; generous for a loaded CI machine).
const FAILOVER_BOUND: Duration = Duration::from_secs(12);

/// Wait until a us-east node other than `old` leads; returns it and how long it took.
async fn wait_new_leader(cluster: &Cluster, old: &str, since: Instant) -> (String, Duration) {
    let leader = writing_node(cluster, "us-east", old, FAILOVER_BOUND * 2).await;
    (leader, since.elapsed())
}

/// Wait until writes are acknowledged again after `since`.
async fn wait_writes_resume(load: &Load, since: Instant) -> Duration {
    loop {
        if let Some(at) = load.first_ack_after(since) {
            return at - since;
        }
        assert!(since.elapsed() < FAILOVER_BOUND * 2, "no write acknowledged {:?} after the fault", since.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write sent straight to `url`, redirects not followed: the status.
async fn direct_write(url: &str, key: &str) -> reqwest::StatusCode {
    let client = concord_tests::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match client.put(format!("{url}/v1/kv/load/{key}")).body("late").send().await {
        Ok(r) => r.status(),
        Err(_) => reqwest::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The epochs of us-east's origins in the order its log holds them never go back.
async fn check_epochs_never_interleave(cluster: &Cluster) {
    let nc = concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let stream = js.get_stream("CONCORD_LOG_US_EAST").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let (mut highest, mut epochs) = (0u64, Vec::new());
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let seq = msg.info().unwrap().stream_sequence;
        let cs = Changeset::decode(&msg.payload).expect("the log holds changesets");
        assert!(
            cs.origin.epoch >= highest,
            "log sequence {seq}: epoch {} appended after epoch {highest} had appended (epochs so far {epochs:?})",
            cs.origin.epoch
        );
        if cs.origin.epoch > highest {
            epochs.push(cs.origin.epoch);
        }
        highest = highest.max(cs.origin.epoch);
        if seq >= last {
            break;
        }
    }
    assert!(epochs.len() >= 2, "the log shows the failover: epochs {epochs:?}");
    println!("us-east's log: epochs {epochs:?} in order, never interleaved ({last} changesets)");
}

/// The fault, the failover, and every check. `fault` breaks us-east-1; `repair` undoes it.
async fn failover(name: &str, fault: impl Fn(&Cluster), repair: impl Fn(&Cluster)) {
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 2, &[]);
    let load = start_load(&cluster, "us-east", 4);
    while load.acked_count() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = cluster.nodes["us-east-1"].clone();
    let before = status(&http(), &old).await;
    assert_eq!((before.writer.as_str(), before.leader.as_str()), ("writing", "us-east-1"));
    let at = Instant::now();
    fault(&cluster);
    let (leader, led_after) = wait_new_leader(&cluster, "us-east-1", at).await;
    let resumed_after = wait_writes_resume(&load, at + led_after).await + led_after;
    println!("{name}: {leader} leads {led_after:?} after the fault; writes resumed after {resumed_after:?}");
    assert!(resumed_after < FAILOVER_BOUND, "{name}: writes resumed only after {resumed_after:?}");
    while load.first_ack_after(at + resumed_after + Duration::from_millis(500)).is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    repair(&cluster);
    // The old leader rejoins as a follower and takes no writes itself.
    cluster.wait_ready(&old, Duration::from_secs(60)).await;
    let rejoined = loop {
        let s = status(&http(), &old).await;
        // It follows its region's log: stepped down (lease lost), or deposed (fenced by
        // the log, which showed a later origin).
        if s.writer == "following" || s.writer == "deposed" {
            break s;
        }
        assert!(at.elapsed() < Duration::from_secs(60), "{name}: the old leader never steps down: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((rejoined.role.as_str(), rejoined.leader.as_str()), ("follower", leader.as_str()));
    // The failover shows in the new leader's metrics.
    let page = concord_tests::metrics_page(&http(), &cluster.nodes[&leader]).await;
    let promotions = concord_tests::metric(&page, "concord_promotions_total", &[]);
    assert!(promotions.is_some_and(|n| n >= 1.0), "{name}: promotions {promotions:?}");
    assert_eq!(concord_tests::metric(&page, "concord_leader", &[]), Some(1.0), "{name}");
    let late = direct_write(&old, "to-the-old-leader").await;
    assert_ne!(late, reqwest::StatusCode::OK, "{name}: the old leader accepted a write");
    let acked = load.stop().await;
    let token = applied_token(&cluster.nodes[&leader]).await;
    check_acked(&cluster.nodes[&leader], &token, &acked).await;
    check_acked(&cluster.url("eu-west"), &token, &acked).await;
    check_acked(&old, &token, &acked).await;
    println!("{name}: {} acknowledged writes, none lost (new leader, eu-west, old leader)", acked.len());
    check_epochs_never_interleave(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_rejoins_as_a_follower() {
    failover("SIGKILL", |c| c.kill("us-east-1"), |c| c.start_again("us-east-1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_steps_down_when_it_runs_again() {
    failover("SIGSTOP", |c| c.ctl("pause", &["us-east-1"]), |c| c.ctl("resume", &["us-east-1"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_nats_stops_and_a_follower_takes_over() {
    failover("isolated", |c| c.partition("us-east-1"), |c| c.ctl("heal", &["us-east-1"])).await;
}
