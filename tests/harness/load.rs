//! A write load for fault tests: clients writing unique keys to a region's nodes while
//! something breaks, remembering what was acknowledged (and when), and the check that
//! every acknowledged write reads back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Cluster, http};

/// Acknowledged writes: key → value.
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

pub struct Load {
    acked: Acked,
    /// When each acknowledged write was answered.
    times: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `writers` clients writing unique keys to `region`'s nodes in turn (redirects
/// followed).
pub fn start_load(cluster: &Cluster, region: &str, writers: usize) -> Load {
    start_load_at(
        cluster.nodes.iter().filter(|(n, _)| n.starts_with(region)).map(|(_, u)| u.clone()).collect(),
        writers,
    )
}

/// `writers` clients writing unique keys to the nodes at `urls` in turn (redirects
/// followed).
pub fn start_load_at(urls: Vec<String>, writers: usize) -> Load {
    let load =
        Load { acked: Default::default(), times: Default::default(), stop: Default::default(), tasks: Vec::new() };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (urls, acked, times, stop) = (urls.clone(), load.acked.clone(), load.times.clone(), load.stop.clone());
        tasks.push(tokio::spawn(async move {
            // A client gives up on a silent node quickly and tries another.
            let client = crate::client_builder().timeout(Duration::from_millis(1500)).build().unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let (key, value) = (format!("w{w}-{n}"), format!("{w}:{n}"));
                let url = &urls[(n as usize + w) % urls.len()];
                let sent =
                    crate::send_following(client.put(format!("{url}/v1/kv/load/{key}")).body(value.clone())).await;
                if sent.is_ok_and(|r| r.status() == 200) {
                    acked.lock().unwrap().insert(key, value);
                    times.lock().unwrap().push(Instant::now());
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    Load { tasks, ..load }
}

impl Load {
    pub async fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }

    /// The first acknowledgement after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.times.lock().unwrap().iter().copied().filter(|a| *a > t).min()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

impl Load {
    /// The longest time between two acknowledgements (the pause a fault caused).
    pub fn longest_pause(&self) -> Duration {
        let mut times = self.times.lock().unwrap().clone();
        times.sort();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}

/// Every acknowledged write reads back at `url` (waiting for the session token).
pub async fn check_acked(url: &str, token: &str, acked: &BTreeMap<String, String>) {
    let client = http();
    for (key, value) in acked {
        let r = client
            .get(format!("{url}/v1/kv/load/{key}?wait_ms=20000"))
            .header("concord-token", token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{url}: acknowledged {key} is missing: {body}");
        assert_eq!(&body, value, "{url}: {key}");
    }
}

/// A session token covering everything `url` has applied: a read with it waits for
/// all of that.
pub async fn applied_token(url: &str) -> String {
    let applied = crate::status(&http(), url).await.applied;
    format!("v1:{}", applied.iter().map(|(o, s)| format!("{o}={s}")).collect::<Vec<_>>().join(","))
}

/// The node of `region` other than `except` that writes as the region now, waiting up
/// to `within`.
pub async fn writing_node(cluster: &Cluster, region: &str, except: &str, within: Duration) -> String {
    let nodes: Vec<(String, String)> =
        cluster.nodes.iter().filter(|(n, _)| n.starts_with(region)).map(|(n, u)| (n.clone(), u.clone())).collect();
    writing_node_among(&nodes, except, within).await
}

/// Of `nodes` (name, URL), the one other than `except` that writes as its region now,
/// waiting up to `within`.
pub async fn writing_node_among(nodes: &[(String, String)], except: &str, within: Duration) -> String {
    let client = http();
    let since = Instant::now();
    loop {
        for (name, url) in nodes.iter().filter(|(n, _)| n != except) {
            if let Ok(r) = client.get(format!("{url}/v1/status")).send().await
                && let Ok(s) = r.json::<concord_api::StatusBody>().await
                && s.writer == "writing"
            {
                return name.clone();
            }
        }
        assert!(since.elapsed() < within, "none of {nodes:?} writes after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
