//! The wall clock a node stamps its writes with (the hybrid logical clock's physical
//! part), and its test-only skew.
//!
//! Fault tests need a node whose clock is wrong by up to ±30 s, changed while it runs
//! (as an NTP step would). `test_clock_skew_file` names a file holding the skew in
//! milliseconds (an integer, possibly negative); the node reads it every
//! [`SKEW_POLL`] and adds it to the system clock. A missing or empty file means no skew;
//! an unreadable value is logged once and ignored. Leases and timeouts use the
//! monotonic clock and are not skewed: only the time written into versions is.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How often the skew file is read again.
pub const SKEW_POLL: Duration = Duration::from_millis(200);
/// The largest skew accepted (beyond it the value is ignored as a typo).
pub const SKEW_MAX_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Default)]
pub struct WallClock {
    skew_ms: Arc<AtomicI64>,
}

impl WallClock {
    /// Milliseconds since the Unix epoch, skewed.
    pub fn now_ms(&self) -> u64 {
        let real = chrono::Utc::now().timestamp_millis();
        real.saturating_add(self.skew_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    /// Follow the skew written in `path` until `stop`.
    pub async fn follow_skew_file(self, path: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut complained = false;
        loop {
            let skew = match tokio::fs::read_to_string(&path).await {
                Err(_) => Some(0),
                Ok(text) if text.trim().is_empty() => Some(0),
                Ok(text) => text.trim().parse::<i64>().ok().filter(|s| s.abs() <= SKEW_MAX_MS),
            };
            match skew {
                Some(s) => {
                    let before = self.skew_ms.swap(s, Ordering::Relaxed);
                    if before != s {
                        tracing::warn!(skew_ms = s, file = %path.display(), "test-only clock skew changed");
                    }
                    complained = false;
                }
                None if !complained => {
                    tracing::warn!(file = %path.display(), "test-only clock skew file holds no integer of at most ±24 h; ignored");
                    complained = true;
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(SKEW_POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_skew_file_moves_the_clock_both_ways() {
        let dir = std::env::temp_dir().join(format!("concord-skew-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skew");
        let clock = WallClock::default();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(clock.clone().follow_skew_file(file.clone(), stop));
        let settle = || tokio::time::sleep(SKEW_POLL * 3);
        for (text, skew) in [("30000", 30_000), ("-30000\n", -30_000), ("nonsense", -30_000), ("", 0)] {
            std::fs::write(&file, text).unwrap();
            settle().await;
            assert_eq!(clock.skew_ms(), skew, "after writing {text:?}");
        }
        std::fs::write(&file, "-30000").unwrap();
        settle().await;
        let real = chrono::Utc::now().timestamp_millis() as u64;
        assert!(clock.now_ms() + 29_000 < real, "the clock runs 30 s behind");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
