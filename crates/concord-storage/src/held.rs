//! What a replica holds back: changesets waiting behind a gap in their origin's
//! sequence (`waiting`), and messages that cannot be applied (`dead_letters`).
//!
//! Both are written in the same transaction as the step that decided them. Encodings
//! are versioned like everything else on disk. Dead letters are bounded by count
//! ([`DEAD_LETTERS_MAX`]): beyond it the oldest leave (their number stays in the
//! engine's count, and the node's metrics counted each when it arrived).

use bytes::Bytes;
use concord_core::CoreError;
use concord_core::codec::{Reader, Writer};
use concord_core::ids::Origin;
use concord_engine::{DeadLetter, Waiting, WaitingWrite};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::{StorageError, StorageResult, Store, db_err};

/// `origin NUL first_seq (8 bytes, big-endian)` → encoded [`Waiting`].
pub(crate) const WAITING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("waiting");
/// id → encoded [`DeadLetter`].
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

/// Most dead letters kept.
pub const DEAD_LETTERS_MAX: u64 = 10_000;
const HELD_VERSION: u8 = 1;
const PAYLOAD_BYTES_MAX: usize = 256 << 20;

fn corrupt(what: &str, source: CoreError) -> StorageError {
    StorageError::Corrupt { what: what.into(), source }
}

fn waiting_key(origin: &Origin, first_seq: u64) -> Vec<u8> {
    let mut k = origin.to_string().into_bytes();
    k.push(0);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

fn encode_waiting(w: &Waiting) -> Vec<u8> {
    let mut out = Writer::new();
    out.u8(HELD_VERSION);
    out.str(&w.origin.to_string());
    out.u64(w.first_seq);
    out.u64(w.last_seq);
    out.str(&w.stream);
    out.u64(w.stream_seq);
    out.bytes(&w.payload);
    out.finish()
}

fn decode_waiting(bytes: &[u8]) -> Result<Waiting, CoreError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != HELD_VERSION {
        return Err(CoreError::UnsupportedVersion { found: version, supported: HELD_VERSION });
    }
    let origin: Origin = r.string(64)?.parse().map_err(|e: CoreError| CoreError::Corrupt(e.to_string()))?;
    let (first_seq, last_seq) = (r.u64()?, r.u64()?);
    let stream = r.string(1024)?;
    let stream_seq = r.u64()?;
    let payload = Bytes::copy_from_slice(r.bytes(PAYLOAD_BYTES_MAX)?);
    r.expect_end()?;
    Ok(Waiting { origin, first_seq, last_seq, stream, stream_seq, payload })
}

fn encode_letter(d: &DeadLetter) -> Vec<u8> {
    let mut out = Writer::new();
    out.u8(HELD_VERSION);
    let meta = serde_json::to_vec(d).expect("a dead letter serializes");
    out.bytes(&meta);
    out.bytes(&d.payload);
    out.finish()
}

fn decode_letter(bytes: &[u8]) -> Result<DeadLetter, CoreError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != HELD_VERSION {
        return Err(CoreError::UnsupportedVersion { found: version, supported: HELD_VERSION });
    }
    let mut letter: DeadLetter =
        serde_json::from_slice(r.bytes(1 << 20)?).map_err(|e| CoreError::Corrupt(e.to_string()))?;
    letter.payload = r.bytes(PAYLOAD_BYTES_MAX)?.to_vec();
    r.expect_end()?;
    Ok(letter)
}

pub(crate) fn write_held(
    tx: &redb::WriteTransaction,
    waiting: &[WaitingWrite],
    letters: &[DeadLetter],
) -> StorageResult<()> {
    let mut table = tx.open_table(WAITING).map_err(db_err)?;
    for w in waiting {
        match w {
            WaitingWrite::Put(meta) => {
                let k = waiting_key(&meta.origin, meta.first_seq);
                table.insert(k.as_slice(), encode_waiting(meta).as_slice()).map_err(db_err)?;
            }
            WaitingWrite::Remove { origin, first_seq } => {
                table.remove(waiting_key(origin, *first_seq).as_slice()).map_err(db_err)?;
            }
        }
    }
    let mut dead = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
    for letter in letters {
        dead.insert(letter.id, encode_letter(letter).as_slice()).map_err(db_err)?;
    }
    let excess = dead.len().map_err(db_err)?.saturating_sub(DEAD_LETTERS_MAX);
    for _ in 0..excess {
        dead.pop_first().map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    /// Every waiting changeset.
    pub fn waiting(&self) -> StorageResult<Vec<Waiting>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(WAITING).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode_waiting(v.value()).map_err(|e| corrupt("a waiting changeset", e))?);
        }
        Ok(out)
    }

    /// The highest dead-letter id given out (0: none ever).
    pub fn last_dead_letter(&self) -> StorageResult<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
        Ok(table.last().map_err(db_err)?.map_or(0, |(k, _)| k.value()))
    }

    /// Dead letters, newest first, with ids below `before` (all when `None`), at most `limit`.
    pub fn dead_letters(&self, before: Option<u64>, limit: usize) -> StorageResult<Vec<DeadLetter>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range(..before.unwrap_or(u64::MAX)).map_err(db_err)?.rev().take(limit) {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode_letter(v.value()).map_err(|e| corrupt("a dead letter", e))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::ids::RegionId;

    #[test]
    fn held_records_round_trip_and_refuse_damage() {
        let origin = Origin::new(RegionId::new("eu-west").unwrap(), 3);
        let w = Waiting {
            origin,
            first_seq: 5,
            last_seq: 9,
            stream: "CONCORD_MIRROR_EU_WEST".into(),
            stream_seq: 12,
            payload: Bytes::from_static(b"changeset"),
        };
        assert_eq!(decode_waiting(&encode_waiting(&w)).unwrap(), w);
        let d = DeadLetter {
            id: 7,
            stream: "CONCORD_LOG_US_EAST".into(),
            stream_seq: 40,
            origin: Some("us-east.2".into()),
            first_seq: Some(3),
            last_seq: Some(4),
            reason: "the document refused it".into(),
            at_ms: 1,
            payload: vec![1, 2, 3],
        };
        assert_eq!(decode_letter(&encode_letter(&d)).unwrap(), d);
        let mut bad = encode_waiting(&w);
        bad[0] = 9;
        assert!(matches!(decode_waiting(&bad), Err(CoreError::UnsupportedVersion { .. })));
        assert!(decode_letter(&encode_letter(&d)[..5]).is_err());
    }
}
