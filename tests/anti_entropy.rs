//! Anti-entropy over real NATS: what no log holds any more still reaches every region.
//!
//! With eu-west cut off, us-east writes keys and a document, one changeset each, and
//! messages are then removed from us-east's log before eu-west's mirror copied them:
//! no log anywhere holds them. After the heal:
//!
//! - a gap in the middle: eu-west holds what came after it (a gap, in status), the gap
//!   repair finds nothing in us-east's log, and after `anti_entropy_gap_after_s` the
//!   round against us-east's leader merges what differs and lifts the gap: every key and
//!   the whole document are readable in eu-west, the applied vectors agree, nothing
//!   waits;
//! - messages lost at the end (nothing after them to show a gap): the leaders' periodic
//!   round (`anti_entropy_interval_s`) brings their keys.

use std::time::{Duration, Instant};

use concord_core::changeset::Changeset;
use concord_tests::{Cluster, http, metric, metrics_page, status};

const LOG: &str = "CONCORD_LOG_US_EAST";

/// Remove from us-east's log the messages whose changesets write any of `keys`; returns
/// their sequences.
async fn remove_from_log(cluster: &Cluster, keys: &[&str]) -> Vec<u64> {
    let js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap());
    let mut stream = js.get_stream(LOG).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut removed = Vec::new();
    for seq in 1..=last {
        let msg = stream.direct_get(seq).await.unwrap();
        let cs = Changeset::decode(&msg.payload).unwrap();
        if cs.changes.iter().any(|c| keys.contains(&c.key.as_str())) {
            assert_eq!(cs.changes.len(), 1, "one change per changeset");
            assert!(stream.delete_message(seq).await.unwrap(), "delete {seq} from us-east's log");
            removed.push(seq);
        }
    }
    assert_eq!(removed.len(), keys.len(), "{removed:?}");
    removed
}

async fn put(client: &reqwest::Client, url: &str, key: &str) {
    let r = client.put(format!("{url}/v1/kv/ae/{key}")).body(format!("value of {key}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{key}");
}

async fn doc_set(client: &reqwest::Client, url: &str, prop: &str, value: i64) {
    let body = serde_json::json!({"ops": [{"op": "set", "path": [prop], "value": value}]});
    let r = client.post(format!("{url}/v1/docs/ae/doc")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{prop}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_messages_no_log_holds_is_repaired_from_the_peers_state_and_lifted() {
    let env = [("CONCORD_ANTI_ENTROPY_GAP_AFTER_S", "6"), ("CONCORD_ANTI_ENTROPY_INTERVAL_S", "0")];
    let cluster = Cluster::start_with_env(&["us-east", "eu-west"], &env);
    let client = http();
    let (us, eu) = (cluster.url("us-east"), cluster.url("eu-west"));
    put(&client, &us, "k0").await;
    cluster.wait_converged(Duration::from_secs(30)).await;

    cluster.partition("eu-west");
    for k in ["k1", "k2", "k3"] {
        put(&client, &us, k).await;
    }
    doc_set(&client, &us, "a", 1).await;
    put(&client, &us, "k4").await;
    doc_set(&client, &us, "b", 2).await; // lost: c below depends on it
    put(&client, &us, "k5").await;
    put(&client, &us, "k6").await;
    doc_set(&client, &us, "c", 3).await;
    for k in ["k7", "k8", "k9"] {
        put(&client, &us, k).await;
    }
    // The document's changes have no key of their own to find them by: b's is the
    // changeset right after k4's.
    let mut removed = remove_from_log(&cluster, &["k4", "k5", "k6"]).await;
    let js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap());
    let stream = js.get_stream(LOG).await.unwrap();
    let b = removed[0] + 1;
    assert!(stream.delete_message(b).await.unwrap());
    removed.push(b);
    cluster.heal();

    // The gap shows first: what came after it waits, and the origin's log cannot fill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&client, &eu).await;
        if s.gaps.iter().any(|g| g.origin.starts_with("us-east.")) {
            break;
        }
        assert!(Instant::now() < deadline, "no gap showed in eu-west: {:?}", s.applied);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then anti-entropy lifts it.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(&client, &eu).await;
        if s.gaps.is_empty() && s.waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the gap stands: {:?}", s.gaps);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_converged(Duration::from_secs(30)).await;
    for i in 0..=9 {
        let r = client.get(format!("{eu}/v1/kv/ae/k{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "k{i} in eu-west");
        assert_eq!(r.text().await.unwrap(), format!("value of k{i}"));
    }
    let doc: serde_json::Value = client.get(format!("{eu}/v1/docs/ae/doc")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc, serde_json::json!({"a": 1, "b": 2, "c": 3}));
    let page = metrics_page(&client, &eu).await;
    assert!(metric(&page, "concord_anti_entropy_gaps_lifted_total", &[]).unwrap() >= 1.0);
    assert!(metric(&page, "concord_anti_entropy_entries_repaired_total", &[]).unwrap() >= 4.0, "k4, k5, k6, doc");
    assert_eq!(
        metric(&page, "concord_gap_repair_messages_total", &[]),
        Some(0.0),
        "no log held the removed messages {removed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_at_the_end_of_a_log_reach_the_other_region_by_the_leaders_periodic_round() {
    let env = [("CONCORD_ANTI_ENTROPY_INTERVAL_S", "3")];
    let cluster = Cluster::start_with_env(&["us-east", "eu-west"], &env);
    let client = http();
    let (us, eu) = (cluster.url("us-east"), cluster.url("eu-west"));
    put(&client, &us, "t0").await;
    cluster.wait_converged(Duration::from_secs(30)).await;
    cluster.partition("eu-west");
    for k in ["t1", "t2", "t3"] {
        put(&client, &us, k).await;
    }
    remove_from_log(&cluster, &["t2", "t3"]).await;
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in ["t1", "t2", "t3"] {
        loop {
            let r = client.get(format!("{eu}/v1/kv/ae/{k}")).send().await.unwrap();
            if r.status() == 200 {
                assert_eq!(r.text().await.unwrap(), format!("value of {k}"));
                break;
            }
            assert!(Instant::now() < deadline, "{k} never reached eu-west");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let page = metrics_page(&client, &eu).await;
    assert!(metric(&page, "concord_anti_entropy_rounds_total", &[]).unwrap() >= 1.0);
    assert!(metric(&page, "concord_anti_entropy_entries_repaired_total", &[]).unwrap() >= 2.0);
}
