//! A hole in a mirror is repaired from the origin's log (anti-entropy), over real NATS.
//!
//! The fault suite once left a region's mirror of another region's log without 51
//! messages in the middle (a partition, the leader killed twice: seed 3), and the
//! changesets after them waited for ever. Here the hole is made on purpose: with
//! eu-west's node stopped, us-east writes ten keys, eu-west's mirror stores them, and
//! three of them are deleted from the mirror. When the node starts again it applies
//! what comes before the hole, holds what comes after (a gap, in status), and within
//! seconds reads the three missing messages from us-east's log through its JetStream
//! domain: every key is readable, the gap is gone, the metric counts three, and the
//! mirror itself still lacks them.

use std::time::{Duration, Instant};

use concord_api::StatusBody;
use concord_core::changeset::Changeset;
use concord_tests::{Cluster, http, status};

const MIRROR: &str = "CONCORD_MIRROR_US_EAST";
const LOG: &str = "CONCORD_LOG_US_EAST";

/// The keys the changeset at `seq` of `stream` writes.
async fn keys_at(stream: &async_nats::jetstream::stream::Stream<()>, seq: u64) -> Vec<String> {
    let msg = stream.direct_get(seq).await.unwrap();
    Changeset::decode(&msg.payload).unwrap().changes.into_iter().map(|c| c.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_a_mirror_is_filled_from_the_origins_log() {
    let cluster = Cluster::start(&["us-east", "eu-west"]);
    let client = http();
    let (us, eu) = (cluster.url("us-east"), cluster.url("eu-west"));
    assert_eq!(client.put(format!("{us}/v1/kv/hole/first")).body("1").send().await.unwrap().status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;
    cluster.kill("eu-west-1");

    for i in 1..=10 {
        let w = client.put(format!("{us}/v1/kv/hole/k{i}")).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
    }
    let us_js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap());
    let last = us_js.get_stream(LOG).await.unwrap().info().await.unwrap().state.last_sequence;
    let eu_js = async_nats::jetstream::new(concord_tests::nats_connect(cluster.nats("eu-west")).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while eu_js.get_stream(MIRROR).await.unwrap().info().await.unwrap().state.last_sequence < last {
        assert!(Instant::now() < deadline, "eu-west's mirror never stored us-east's log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The hole: the messages that write k4, k5 and k6 (one changeset each).
    let mirror = eu_js.get_stream_no_info(MIRROR).await.unwrap();
    let mut hole = Vec::new();
    for seq in 1..=last {
        let keys = keys_at(&mirror, seq).await;
        if keys.iter().any(|k| ["k4", "k5", "k6"].contains(&k.as_str())) {
            assert_eq!(keys.len(), 1, "one key per changeset: {keys:?}");
            hole.push(seq);
        }
    }
    assert_eq!(hole.len(), 3, "{hole:?}");
    let deleting = eu_js.get_stream(MIRROR).await.unwrap();
    for &seq in &hole {
        assert!(deleting.delete_message(seq).await.unwrap(), "delete {seq} from the mirror");
    }

    cluster.start_again("eu-west-1");
    cluster.wait_ready(&eu, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let s: StatusBody = loop {
        let s = status(&client, &eu).await;
        let from_us: u64 = s.applied.iter().filter(|(o, _)| o.starts_with("us-east.")).map(|(_, &n)| n).sum();
        if s.gaps.is_empty() && from_us >= 11 {
            break s;
        }
        assert!(Instant::now() < deadline, "eu-west never filled the hole: gaps {:?}, applied {:?}", s.gaps, s.applied);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s.waiting, 0, "nothing waits any more");
    for i in 1..=10 {
        let r = client.get(format!("{eu}/v1/kv/hole/k{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "k{i} on eu-west");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    let metrics = client.get(format!("{eu}/metrics")).send().await.unwrap().text().await.unwrap();
    let counter = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(counter("concord_gap_repair_messages_total"), 3, "the three deleted messages, read from us-east");
    assert!(counter("concord_log_gaps_total") >= 1, "the changesets after the hole waited first");
    for &seq in &hole {
        assert!(mirror.direct_get(seq).await.is_err(), "the mirror still lacks {seq}: the repair read the origin");
    }
}
