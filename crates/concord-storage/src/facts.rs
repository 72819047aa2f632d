//! The engine's reads: the [`Facts`] a step's [`Needs`] name, in one read transaction,
//! and the [`Durable`] state an engine opens from.

use concord_core::changeset::stored;
use concord_engine::{DocFacts, Durable, Facts, KvFacts, Needs};
use redb::ReadableDatabase;

use crate::conflicts::{CONFLICTS, CONFLICTS_OPEN, open_key};
use crate::{DOC_PENDING, DOCS, KV, StorageError, StorageResult, Store, db_err, decode_changes, record_key};

impl Store {
    /// Everything `needs` names, as of one moment.
    pub fn load(&self, needs: &Needs) -> StorageResult<Facts> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let kv = tx.open_table(KV).map_err(db_err)?;
        let docs = tx.open_table(DOCS).map_err(db_err)?;
        let pending = tx.open_table(DOC_PENDING).map_err(db_err)?;
        let records = tx.open_table(CONFLICTS).map_err(db_err)?;
        let open = tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
        let record = |id: &[u8]| -> StorageResult<Option<concord_core::conflict::ConflictRecord>> {
            match records.get(id).map_err(db_err)? {
                Some(raw) => Self::decode_conflict(raw.value()).map(Some),
                None => Ok(None),
            }
        };
        let mut facts = Facts::default();
        for (bucket, key) in &needs.kv {
            let register = match kv.get(record_key(bucket, key).as_slice()).map_err(db_err)? {
                Some(raw) => Some(
                    stored::decode(raw.value())
                        .map_err(|source| StorageError::Corrupt { what: format!("{bucket}/{key}"), source })?,
                ),
                None => None,
            };
            // A key has an open record only while its register holds concurrent versions
            // (the record is opened and closed in the batch that makes and ends them), so
            // the index is read only for those (it was a tenth of a catch-up's CPU).
            let open_id = match &register {
                Some(r) if r.is_conflicted() => {
                    open.get(open_key(bucket, key, None).as_slice()).map_err(db_err)?.map(|v| v.value().to_vec())
                }
                _ => None,
            };
            let open = match open_id {
                Some(id) => record(&id)?,
                None => None,
            };
            facts.kv.insert((bucket.clone(), key.clone()), KvFacts { register, open });
        }
        for (bucket, key) in &needs.docs {
            let k = record_key(bucket, key);
            let saved = docs.get(k.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
            let waiting = match pending.get(k.as_slice()).map_err(db_err)? {
                Some(raw) => decode_changes(raw.value()).map_err(|source| StorageError::Corrupt {
                    what: format!("pending changes of {bucket}/{key}"),
                    source,
                })?,
                None => Vec::new(),
            };
            let prefix = open_key(bucket, key, None);
            let mut open_records = Vec::new();
            for entry in open.range(prefix.as_slice()..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                if k.value().len() > prefix.len()
                    && let Some(r) = record(v.value())?
                {
                    open_records.push(r);
                }
            }
            facts.docs.insert((bucket.clone(), key.clone()), DocFacts { saved, pending: waiting, open: open_records });
        }
        for id in &needs.records {
            facts.records.insert(*id, record(id.as_bytes())?);
        }
        Ok(facts)
    }

    /// What an engine opens from.
    pub fn durable(&self) -> StorageResult<Durable> {
        Ok(Durable {
            applied: self.applied()?,
            cursors: self.cursors()?.into_iter().collect(),
            waiting: self.waiting()?,
            dead_letters: self.last_dead_letter()?,
            void_from: self.void_from()?,
            marks: self.marks()?,
        })
    }
}
