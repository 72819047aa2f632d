//! A region's log in memory, with JetStream's rules: sequences from 1, deduplication by
//! message id, and an append refused unless it names the log's last sequence (fencing).
//! Mirrors are views of a prefix of it (`copied`), as NATS copies it to other regions.
//! Retention removes its oldest entries (mirrors lose them too): a read skips them; the
//! checks still see every entry ever stored.

use std::collections::BTreeMap;

use bytes::Bytes;
use concord_core::changeset::Changeset;
use concord_engine::Entry;

#[derive(Default)]
pub struct SimLog {
    entries: Vec<Bytes>,
    ids: BTreeMap<String, u64>,
    /// The region's epoch allocator (compare-and-set in NATS key/value in production).
    epochs: u64,
    /// Entries up to here are gone (retention).
    trimmed: u64,
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

    /// Store `payload` if the log ends at `expected_last`.
    pub fn append(&mut self, payload: Bytes, msg_id: &str, expected_last: u64) -> Appended {
        if let Some(&seq) = self.ids.get(msg_id) {
            return Appended::Stored(seq);
        }
        if self.last_seq() != expected_last {
            return Appended::Fenced;
        }
        self.entries.push(payload);
        self.ids.insert(msg_id.to_string(), self.last_seq());
        Appended::Stored(self.last_seq())
    }

    /// Whether the changeset at `seq` is void: not its origin's first, and stored right
    /// after a message that is not its predecessor, or after a void predecessor (the
    /// engine's rule, `concord_engine::classify`, judged here from the log alone).
    pub fn is_void(&self, seq: u64) -> bool {
        let decode = |s: u64| Changeset::decode(&self.entries[s as usize - 1]).ok();
        let Some(cs) = decode(seq) else { return false };
        if cs.first_seq == 1 {
            return false;
        }
        let prev = if seq > 1 { decode(seq - 1) } else { None };
        let follows = prev.is_some_and(|p| p.origin == cs.origin && p.last_seq() + 1 == cs.first_seq);
        !follows || self.is_void(seq - 1)
    }

    /// Entries `from..=to` (clamped to what exists and is kept).
    pub fn read(&self, from: u64, to: u64) -> Vec<Entry> {
        let to = to.min(self.last_seq());
        (from.max(self.trimmed + 1)..=to)
            .map(|seq| Entry { seq, payload: self.entries[seq as usize - 1].clone() })
            .collect()
    }

    /// Retention removes every entry up to `seq` (never un-removes one).
    pub fn trim_to(&mut self, seq: u64) -> bool {
        let seq = seq.min(self.last_seq());
        let more = seq > self.trimmed;
        self.trimmed = self.trimmed.max(seq);
        more
    }

    pub fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    pub fn payloads(&self) -> impl Iterator<Item = &Bytes> {
        self.entries.iter()
    }
}
