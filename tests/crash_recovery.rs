//! A leader SIGKILLed under load loses no acknowledged write.
//!
//! Eight writers write their own keys (values carry an increasing counter) and
//! increment their own property of a shared document counter. Mid-load the leader is
//! killed with SIGKILL and restarted on the same data; the writers keep going through
//! the outage. Afterwards every key holds its last acknowledged value or a later
//! attempted one, and every counter is between its acknowledged and attempted totals.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord_tests::{Nats, Node, TempDir, http};
use tokio::sync::Mutex;

const WRITERS: usize = 8;
const KEYS_PER_WRITER: u64 = 16;

#[derive(Default, Debug)]
struct KeyLog {
    last_acked: Option<u64>,
    attempted: Vec<u64>,
}

#[derive(Default, Debug)]
struct WriterLog {
    keys: HashMap<String, KeyLog>,
    inc_acked: u64,
    inc_attempted: u64,
    errors: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_write() {
    let dir = TempDir::new("crash");
    let nats = Nats::start(&dir.0);
    let node = Arc::new(Mutex::new(Node::start(&dir.0, "us-east", &nats.url())));
    let url = node.lock().await.url();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut log = WriterLog::default();
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                if counter.is_multiple_of(5) {
                    log.inc_attempted += 1;
                    let body = serde_json::json!({"ops": [{"op": "inc", "path": [format!("w{w}")], "by": 1}]});
                    match client.post(format!("{url}/v1/docs/counters/shared")).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            log.inc_acked += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            log.errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    continue;
                }
                let key = format!("w{w}-k{}", counter % KEYS_PER_WRITER);
                let entry = log.keys.entry(key.clone()).or_default();
                entry.attempted.push(counter);
                let value = format!("{w}:{counter}");
                match client.put(format!("{url}/v1/kv/crash/{key}")).body(value).send().await {
                    Ok(r) if r.status() == 200 => {
                        entry.last_acked = Some(counter);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        log.errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            log
        }));
    }

    // Let the load build, then kill the leader mid-load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < 400 {
        assert!(tokio::time::Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_before_kill = acked.load(Ordering::Relaxed);
    node.lock().await.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_while_down = acked.load(Ordering::Relaxed) - acked_before_kill;
    node.lock().await.restart();
    let acked_at_restart = acked.load(Ordering::Relaxed);
    // Keep writing after the restart, then stop.
    while acked.load(Ordering::Relaxed) < acked_at_restart + 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap());
    }
    let errors: u64 = logs.iter().map(|l| l.errors).sum();
    assert!(errors > 0, "the kill did not interrupt any write: the test did not test a crash");
    // Writes answered between kill and restart would mean the node was not down.
    assert!(acked_while_down <= WRITERS as u64, "{acked_while_down} writes acknowledged while the leader was dead");

    let client = http();
    let mut checked = 0;
    for (w, log) in logs.iter().enumerate() {
        for (key, k) in &log.keys {
            let resp = client.get(format!("{url}/v1/kv/crash/{key}")).send().await.unwrap();
            let Some(last_acked) = k.last_acked else {
                continue;
            };
            assert_eq!(resp.status(), 200, "{key}: acknowledged value {last_acked} is gone");
            let body = resp.text().await.unwrap();
            let (writer, counter) = body.split_once(':').expect("value format");
            assert_eq!(writer, w.to_string(), "{key} holds another writer's value");
            let counter: u64 = counter.parse().unwrap();
            assert!(
                counter >= last_acked && k.attempted.contains(&counter),
                "{key}: holds {counter}, last acknowledged {last_acked}"
            );
            checked += 1;
        }
    }
    assert!(checked >= WRITERS * KEYS_PER_WRITER as usize / 2, "too few keys checked: {checked}");

    let doc: serde_json::Value =
        client.get(format!("{url}/v1/docs/counters/shared")).send().await.unwrap().json().await.unwrap();
    for (w, log) in logs.iter().enumerate() {
        let n = doc[format!("w{w}")].as_u64().unwrap_or(0);
        assert!(
            n >= log.inc_acked && n <= log.inc_attempted,
            "counter w{w} = {n}: acknowledged {} attempted {}",
            log.inc_acked,
            log.inc_attempted
        );
    }
    let total_acked: u64 =
        logs.iter().map(|l| l.inc_acked + l.keys.values().filter(|k| k.last_acked.is_some()).count() as u64).sum();
    println!(
        "crash test: {} writes acknowledged before the kill, {errors} failed around it, {checked} keys and {WRITERS} counters verified ({total_acked} acked incs + keys)",
        acked_before_kill
    );
}
