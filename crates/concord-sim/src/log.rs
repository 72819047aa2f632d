//! A region's log in memory, with JetStream's rules: sequences from 1, deduplication by
//! message id, and an append refused unless it names the log's last sequence and, when
//! it names one, the last message's id (fencing).
//! Mirrors are views of a prefix of it (`copied`), as NATS copies it to other regions.

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_engine::Entry;

#[derive(Default)]
pub struct SimLog {
    entries: Vec<Bytes>,
    ids: BTreeMap<String, u64>,
    /// The id of the last message stored.
    last_id: Option<String>,
    /// The region's epoch allocator (compare-and-set in NATS key/value in production).
    epochs: u64,
}

/// What an append did to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored(u64),
    /// The log's last sequence is not the expected one: a stale writer.
    Fenced,
}

impl SimLog {
    pub fn last_seq(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Store `payload` if the log ends at `expected_last` and, when `expected_last_id` is
    /// given, its last message has that id (a pipelined append).
    pub fn append(
        &mut self,
        payload: Bytes,
        msg_id: &str,
        expected_last: u64,
        expected_last_id: Option<&str>,
    ) -> Appended {
        if let Some(&seq) = self.ids.get(msg_id) {
            return Appended::Stored(seq);
        }
        let follows = expected_last_id.is_none_or(|id| self.last_id.as_deref() == Some(id));
        if self.last_seq() != expected_last || !follows {
            return Appended::Fenced;
        }
        self.entries.push(payload);
        self.ids.insert(msg_id.to_string(), self.last_seq());
        self.last_id = Some(msg_id.to_string());
        Appended::Stored(self.last_seq())
    }

    /// Entries `from..=to` (clamped to what exists).
    pub fn read(&self, from: u64, to: u64) -> Vec<Entry> {
        let to = to.min(self.last_seq());
        (from.max(1)..=to).map(|seq| Entry { seq, payload: self.entries[seq as usize - 1].clone() }).collect()
    }

    pub fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    pub fn payloads(&self) -> impl Iterator<Item = &Bytes> {
        self.entries.iter()
    }
}
