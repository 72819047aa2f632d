//! The fault-injecting TCP proxy on every link between regions.
//!
//! Each link is one direction of one kind of connection (`from` region to `to` region:
//! a backbone route, or a region server's fallback leaf connection). The faults file
//! `DIR/faults.json` (written by `concord cluster partition|heal|delay`) names the cut
//! regions and per-region delays; a link is cut when either end is cut. Cutting closes
//! the link's open connections at once (peers see a reset, so NATS notices immediately)
//! and refuses new ones until heal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Regions cut off from every other region.
    #[serde(default)]
    pub cut: BTreeSet<String>,
    /// Extra one-way latency on every link touching a region, in milliseconds.
    #[serde(default)]
    pub delay_ms: BTreeMap<String, u64>,
    /// Raised by every change, so the CLI can wait until the proxies applied it.
    #[serde(default)]
    pub generation: u64,
}

/// Where `cluster up` records the generation of the faults its proxies apply.
pub fn applied_path(dir: &Path) -> std::path::PathBuf {
    dir.join("faults.applied")
}

/// Save `faults` as the next generation and wait until the running proxies applied it.
pub fn change(dir: &Path, mut faults: Faults) -> anyhow::Result<()> {
    faults.generation += 1;
    faults.save(dir)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let applied: u64 =
            std::fs::read_to_string(applied_path(dir)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if applied >= faults.generation {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "cluster up did not apply the change within 10 s (is it running?)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Faults {
    pub fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("faults.json")
    }

    pub fn load(dir: &Path) -> Faults {
        std::fs::read(Self::path(dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("faults.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, Self::path(dir))?;
        Ok(())
    }

    fn is_cut(&self, link: &Link) -> bool {
        self.cut.contains(&link.from) || self.cut.contains(&link.to)
    }

    fn delay(&self, link: &Link) -> Duration {
        let ms =
            self.delay_ms.get(&link.from).copied().unwrap_or(0) + self.delay_ms.get(&link.to).copied().unwrap_or(0);
        Duration::from_millis(ms)
    }
}

#[derive(Debug, Clone)]
pub struct Link {
    pub from: String,
    pub to: String,
    pub listen_port: u16,
    pub target_port: u16,
}

/// Serve `link` until the process ends.
pub async fn serve(link: Link, faults: watch::Receiver<Faults>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", link.listen_port)).await?;
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else { continue };
            if faults.borrow().is_cut(&link) {
                drop(inbound);
                continue;
            }
            let (link, faults) = (link.clone(), faults.clone());
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", link.target_port)).await else { return };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let mut cut = faults.clone();
                tokio::select! {
                    _ = pump(ri, wo, link.clone(), faults.clone()) => {}
                    _ = pump(ro, wi, link.clone(), faults.clone()) => {}
                    _ = async { let _ = cut.wait_for(|f| f.is_cut(&link)).await; } => {}
                }
                // Dropping both halves closes both connections.
            });
        }
    });
    Ok(())
}

/// Copy `from` to `to`. While the link has no delay, each chunk is written as soon as
/// it is read (one task, no queue, no timer: the proxy carries every message between
/// regions, and measured, the queued copy cost the local three-region deployment about
/// 40 us of CPU per write). Once a delay is set, the connection copies through
/// [`pump_delayed`] from then on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Link,
    faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = faults.borrow().delay(&link);
        if !delay.is_zero() {
            let due = tokio::time::Instant::now() + delay;
            return pump_delayed(from, to, link, faults, (due, buf[..n].to_vec())).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Copy `from` to `to`, holding every chunk back by the link's current delay (`first`
/// is the chunk already read). Reading and writing are separate tasks joined by a
/// queue, so a delay adds latency without limiting throughput.
async fn pump_delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Link,
    faults: watch::Receiver<Faults>,
    first: (tokio::time::Instant, Vec<u8>),
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let reader = async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now() + faults.borrow().delay(&link);
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what was read before an end of stream; either side's failure
    // ends the other (its channel end is dropped).
    tokio::join!(reader, writer);
}
