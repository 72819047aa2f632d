//! An in-memory [`RegionLog`] with the same fencing and dedupe rules as JetStream.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::{Chunk, LogEntry, LogError, LogResult, RegionLog};

#[derive(Default)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Bytes>,
    ids: HashMap<String, u64>,
    epochs: HashMap<String, u64>,
}

impl RegionLog for MemoryLog {
    async fn last_seq(&self) -> LogResult<u64> {
        Ok(self.inner.lock().unwrap().entries.len() as u64)
    }

    type Sent = std::future::Ready<LogResult<u64>>;

    /// Stored (or refused) at once.
    async fn send_append(&self, payload: Bytes, msg_id: String, expected_last: u64) -> LogResult<Self::Sent> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(&seq) = inner.ids.get(&msg_id) {
            return Ok(std::future::ready(Ok(seq)));
        }
        if inner.entries.len() as u64 != expected_last {
            return Ok(std::future::ready(Err(LogError::Fenced { expected: expected_last })));
        }
        inner.entries.push(payload);
        let seq = inner.entries.len() as u64;
        inner.ids.insert(msg_id, seq);
        Ok(std::future::ready(Ok(seq)))
    }

    async fn read(&self, from: u64, to: u64, bytes_max: usize) -> LogResult<Chunk> {
        let inner = self.inner.lock().unwrap();
        let to = to.min(inner.entries.len() as u64);
        let mut chunk = Chunk { entries: Vec::new(), through: to };
        let mut bytes = 0;
        for seq in from.max(1)..=to {
            if bytes >= bytes_max {
                chunk.through = seq - 1;
                break;
            }
            let payload = inner.entries[seq as usize - 1].clone();
            bytes += payload.len();
            chunk.entries.push(LogEntry { seq, payload, subject: String::new(), forged: None });
        }
        Ok(chunk)
    }

    async fn next_epoch(&self, region: &str) -> LogResult<u64> {
        let mut inner = self.inner.lock().unwrap();
        let epoch = inner.epochs.entry(region.to_string()).or_insert(0);
        *epoch += 1;
        Ok(*epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fences_and_dedupes_like_jetstream() {
        let log = MemoryLog::default();
        assert_eq!(log.append("a".into(), "x:1".into(), 0).await, Ok(1));
        assert_eq!(log.append("a".into(), "x:1".into(), 0).await, Ok(1));
        assert_eq!(log.append("b".into(), "y:1".into(), 0).await, Err(LogError::Fenced { expected: 0 }));
        assert_eq!(log.append("b".into(), "x:2".into(), 1).await, Ok(2));
        assert_eq!(
            log.read(2, 10, 1 << 20).await.unwrap().entries,
            vec![LogEntry { seq: 2, payload: "b".into(), subject: String::new(), forged: None }]
        );
        let first = log.read(1, 2, 1).await.unwrap();
        assert_eq!((first.entries.len(), first.through), (1, 1), "bounded by bytes, at least one message");
        assert_eq!(log.last_seq().await, Ok(2));
    }
}
