//! Killing a leader (SIGKILL) and restarting a region's nats-server under load, with
//! three regions replicating: no acknowledged write is lost and nothing applies twice.
//!
//! Every writer owns its keys (values carry an increasing counter) and its own counter
//! property in a shared document. After the faults and convergence, every region holds,
//! for every key, its last acknowledged value or a later attempted one; every counter
//! is at least its acknowledged increments and at most its attempted ones (an increment
//! applied twice would exceed that).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord_tests::{Cluster, http};
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

#[derive(Default)]
struct Writer {
    name: String,
    /// key -> (last acknowledged counter, every attempted counter)
    keys: HashMap<String, (Option<u64>, Vec<u64>)>,
    incs_acked: u64,
    incs_attempted: u64,
    errors: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_and_nats_restart_lose_nothing_and_apply_nothing_twice() {
    let cluster = Cluster::start(&REGIONS);
    let client = http();
    // The counters are created once, before anyone increments them.
    let mut ops = Vec::new();
    for region in REGIONS {
        for w in 0..2 {
            ops.push(json!({"op": "inc", "path": [format!("{region}-{w}")], "by": 0}));
        }
    }
    let r = client
        .post(format!("{}/v1/docs/f/counters", cluster.url("us-east")))
        .json(&json!({"ops": ops}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for region in REGIONS {
        for w in 0..2 {
            let (url, stop, acked) = (cluster.url(region), stop.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let client = http();
                let name = format!("{region}-{w}");
                let mut me = Writer { name: name.clone(), ..Default::default() };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let ok = if n.is_multiple_of(4) {
                        me.incs_attempted += 1;
                        let body = json!({"ops": [{"op": "inc", "path": [&name], "by": 1}]});
                        let ok = matches!(client.post(format!("{url}/v1/docs/f/counters")).json(&body).send().await, Ok(r) if r.status() == 200);
                        me.incs_acked += u64::from(ok);
                        ok
                    } else {
                        let key = format!("{name}-k{}", n % 10);
                        let entry = me.keys.entry(key.clone()).or_default();
                        entry.1.push(n);
                        let ok = matches!(client.put(format!("{url}/v1/kv/f/{key}")).body(format!("{n}")).send().await, Ok(r) if r.status() == 200);
                        if ok {
                            entry.0 = Some(n);
                        }
                        ok
                    };
                    if ok {
                        acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        me.errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                me
            }));
        }
    }
    let wait_acks = |n: u64| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::Relaxed) + n;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while acked.load(Ordering::Relaxed) < target {
                assert!(tokio::time::Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_acks(300).await;
    // SIGKILL the us-east leader mid-load; start it again.
    cluster.kill("us-east-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again("us-east-1");
    cluster.wait_ready(&cluster.url("us-east"), Duration::from_secs(60)).await;
    wait_acks(300).await;
    // Restart eu-west's NATS server (SIGKILL, then start on the same store).
    cluster.kill("nats-eu-west");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_again("nats-eu-west");
    wait_acks(600).await;
    stop.store(true, Ordering::Relaxed);
    let mut writers = Vec::new();
    for t in tasks {
        writers.push(t.await.unwrap());
    }
    let took = cluster.wait_converged(Duration::from_secs(120)).await;

    let errors: u64 = writers.iter().map(|w| w.errors).sum();
    assert!(errors > 0, "the faults interrupted no write: they were not under load");
    let mut checked = 0;
    for region in REGIONS {
        let url = cluster.url(region);
        for w in &writers {
            for (key, (last, attempted)) in &w.keys {
                let Some(last) = last else { continue };
                let r = client.get(format!("{url}/v1/kv/f/{key}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "{region}: acknowledged {key}={last} is missing");
                let got: u64 = r.text().await.unwrap().parse().unwrap();
                assert!(
                    got >= *last && attempted.contains(&got),
                    "{region}: {key} holds {got}, last acknowledged {last}"
                );
                checked += 1;
            }
        }
        let doc: Value = client.get(format!("{url}/v1/docs/f/counters")).send().await.unwrap().json().await.unwrap();
        for w in &writers {
            let n = doc[&w.name].as_u64().unwrap();
            assert!(
                n >= w.incs_acked && n <= w.incs_attempted,
                "{region}: counter {} = {n}, acknowledged {}, attempted {}",
                w.name,
                w.incs_acked,
                w.incs_attempted
            );
        }
    }
    println!(
        "faults: {} writes acknowledged, {errors} failed around the faults, {checked} key checks over 3 regions; converged {:.1} s after the load",
        acked.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
}
