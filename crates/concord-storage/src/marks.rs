//! Each origin's latest mark (`concord_engine::Mark`): origin → `seq floor stable`,
//! versioned like every stored record, decoded defensively (a damaged record is an
//! error naming it, never a panic).

use concord_core::codec::{Reader, Writer};
use concord_core::ids::Origin;
use concord_core::{CoreError, CoreResult};
use concord_engine::Mark;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::{StorageError, StorageResult, Store, db_err};

pub(crate) const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");

const VERSION: u8 = 1;

pub(crate) fn encode(mark: &Mark) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION);
    w.u64(mark.seq);
    concord_core::changeset::encode_vector(&mut w, &mark.floor);
    concord_core::changeset::encode_vector(&mut w, &mark.stable);
    w.finish()
}

pub(crate) fn decode(bytes: &[u8]) -> CoreResult<Mark> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(CoreError::UnsupportedVersion { found: version, supported: VERSION });
    }
    let seq = r.u64()?;
    let floor = concord_core::changeset::decode_vector(&mut r)?;
    let stable = concord_core::changeset::decode_vector(&mut r)?;
    r.expect_end()?;
    Ok(Mark { seq, floor, stable })
}

pub(crate) fn write_marks(tx: &redb::WriteTransaction, marks: &[(Origin, Mark)]) -> StorageResult<()> {
    let mut table = tx.open_table(MARKS).map_err(db_err)?;
    for (origin, mark) in marks {
        let name = origin.to_string();
        let old = table.get(name.as_str()).map_err(db_err)?.map(|v| decode(v.value()).map(|m| m.seq)).transpose();
        let old = old.map_err(|source| StorageError::Corrupt { what: format!("the mark of {origin}"), source })?;
        assert!(old.is_none_or(|o| mark.seq > o), "marks only move on ({origin}: {old:?} -> {})", mark.seq);
        table.insert(name.as_str(), encode(mark).as_slice()).map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    /// Each origin's latest mark.
    pub fn marks(&self) -> StorageResult<std::collections::BTreeMap<Origin, Mark>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(MARKS).map_err(db_err)?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let corrupt = |source| StorageError::Corrupt { what: format!("the mark of {}", k.value()), source };
            let origin: Origin = k.value().parse().map_err(corrupt)?;
            out.insert(origin, decode(v.value()).map_err(corrupt)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_an_error() {
        let o: Origin = "us-east.2".parse().unwrap();
        let mark =
            Mark { seq: 9, floor: [(o.clone(), 8)].into_iter().collect(), stable: [(o, 3)].into_iter().collect() };
        let bytes = encode(&mark);
        assert_eq!(decode(&bytes).unwrap(), mark);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(matches!(decode(&newer), Err(CoreError::UnsupportedVersion { .. })));
    }
}
