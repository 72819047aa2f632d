//! Three regions, concurrent writers in every region on overlapping keys (LWW values
//! and a shared document counter), one region cut off for 12 s while all keep writing:
//! the cut-off region keeps accepting writes, and after heal every region holds the
//! same value for every key and the counter equals the total of all increments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_tests::{Cluster, http};
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const KEYS: u64 = 12;
const WRITERS_PER_REGION: usize = 2;

#[derive(Default)]
struct Tally {
    puts_acked: u64,
    incs_acked: u64,
    incs_failed: u64,
    acked_while_cut: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_regions_converge_after_a_partition() {
    let cluster = Cluster::start(&REGIONS);
    let client = http();

    // The shared counter is created once, then incremented from everywhere (DESIGN.md:
    // two regions creating the same property concurrently is a conflict).
    let doc = |region: &str| format!("{}/v1/docs/shared/counters", cluster.url(region));
    let r = client
        .post(doc("us-east"))
        .json(&json!({"ops": [{"op": "inc", "path": ["hits"], "by": 0}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for region in REGIONS {
        for w in 0..WRITERS_PER_REGION {
            let (url, stop, cut, ops) = (cluster.url(region), stop.clone(), cut.clone(), ops.clone());
            tasks.push(tokio::spawn(async move {
                let client = http();
                let mut t = Tally::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let was_cut = cut.load(Ordering::Relaxed) && region == "eu-west";
                    if n.is_multiple_of(3) {
                        let body = json!({"ops": [{"op": "inc", "path": ["hits"], "by": 1}]});
                        match client.post(format!("{url}/v1/docs/shared/counters")).json(&body).send().await {
                            Ok(r) if r.status() == 200 => {
                                t.incs_acked += 1;
                                t.acked_while_cut += u64::from(was_cut);
                            }
                            _ => t.incs_failed += 1,
                        }
                    } else {
                        let key = format!("k{}", (n * 7 + w as u64) % KEYS);
                        let value = format!("{region}/{w}/{n}");
                        if let Ok(r) = client.put(format!("{url}/v1/kv/shared/{key}")).body(value).send().await
                            && r.status() == 200
                        {
                            t.puts_acked += 1;
                            t.acked_while_cut += u64::from(was_cut);
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                t
            }));
        }
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.partition("eu-west");
    cut.store(true, Ordering::Relaxed);
    let cut_at = Instant::now();
    // While eu-west is cut off, a write there must not reach us-east.
    let probe =
        client.put(format!("{}/v1/kv/probe/during-cut", cluster.url("eu-west"))).body("eu").send().await.unwrap();
    assert_eq!(probe.status(), 200, "the cut-off region refused a write");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let leaked = client.get(format!("{}/v1/kv/probe/during-cut", cluster.url("us-east"))).send().await.unwrap();
    assert_eq!(leaked.status(), 404, "a write crossed the partition: the cut is not real");
    cut.store(false, Ordering::Relaxed);
    cluster.heal();
    let cut_for = cut_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.unwrap());
    }
    let took = cluster.wait_converged(Duration::from_secs(120)).await;

    let acked_while_cut: u64 = tallies.iter().map(|t| t.acked_while_cut).sum();
    assert!(acked_while_cut > 20, "eu-west acknowledged only {acked_while_cut} writes while cut off");
    // Every region holds the same value for every key.
    for k in 0..KEYS {
        let mut values = Vec::new();
        for region in REGIONS {
            let r = client.get(format!("{}/v1/kv/shared/k{k}", cluster.url(region))).send().await.unwrap();
            values.push((r.status().as_u16(), r.bytes().await.unwrap()));
        }
        assert!(values.windows(2).all(|w| w[0] == w[1]), "k{k} differs: {values:?}");
        assert_eq!(values[0].0, 200);
    }
    let probe = client.get(format!("{}/v1/kv/probe/during-cut", cluster.url("us-east"))).send().await.unwrap();
    assert_eq!(probe.text().await.unwrap(), "eu");
    // The counter is the sum of every acknowledged increment (and no failed one applied).
    let incs_acked: u64 = tallies.iter().map(|t| t.incs_acked).sum();
    let incs_failed: u64 = tallies.iter().map(|t| t.incs_failed).sum();
    let mut docs: Vec<Value> = Vec::new();
    for region in REGIONS {
        docs.push(client.get(doc(region)).send().await.unwrap().json().await.unwrap());
    }
    assert!(docs.windows(2).all(|w| w[0] == w[1]), "documents differ: {docs:?}");
    let hits = docs[0]["hits"].as_u64().unwrap();
    assert!(
        hits >= incs_acked && hits <= incs_acked + incs_failed,
        "hits {hits}, acked {incs_acked}, failed {incs_failed}"
    );
    if incs_failed == 0 {
        assert_eq!(hits, incs_acked);
    }
    // The merge saw concurrent versions (the cut made sure of it) and counted them.
    let metrics = client.get(format!("{}/metrics", cluster.url("us-east"))).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("concord_lww_conflicts_total") && !l.ends_with(" 0")), "{metrics}");
    let puts: u64 = tallies.iter().map(|t| t.puts_acked).sum();
    println!(
        "converge: {} ops, {puts} puts and {incs_acked} increments acknowledged ({acked_while_cut} by eu-west while cut off for {:.1} s); converged {:.1} s after the writers stopped",
        ops.load(Ordering::Relaxed),
        cut_for.as_secs_f64(),
        took.as_secs_f64()
    );
}
