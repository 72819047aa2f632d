//! Local state of one replica, in one redb file.
//!
//! Tables: `kv` (bucket NUL key → stored LWW version), `docs` (bucket NUL key → saved
//! Automerge document), `applied` (origin → highest contiguous sequence applied) and
//! `cursors` (log stream → last stream sequence applied) and `doc_pending` (bucket NUL
//! key → Automerge changes waiting for their dependencies).
//!
//! The guarantee: [`Store::commit`] writes a whole [`Batch`] — values, documents, the
//! applied vector and the log cursors — in one durable transaction (redb's default
//! durability fsyncs on commit), so after a crash the state and the position in the log
//! agree, and replay from the cursor is exact. Values are decoded defensively: a
//! corrupt record is an error, never a panic.

use std::path::Path;

use concord_core::CoreError;
use concord_core::changeset::stored;
use concord_core::conflict::ConflictRecord;
use concord_core::ids::Origin;
use concord_core::lww::Register;
use concord_core::vv::VersionVector;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("applied");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Automerge changes that arrived before a change they depend on (from another
/// origin): kept here, durably, until their dependencies arrive.
const DOC_PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc_pending");
/// Conflict records by id (JSON).
const CONFLICTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts");
/// (detected_at in ms, big-endian) ++ id → nothing: newest-first listing and retention.
const CONFLICTS_BY_TIME: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts_by_time");
/// bucket NUL key NUL path → id of the open (unresolved) record there.
const CONFLICTS_OPEN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts_open");

/// How many conflict records are kept, and for how long, unless configured otherwise.
pub const CONFLICTS_MAX_DEFAULT: u64 = 100_000;
pub const CONFLICTS_MAX_AGE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn time_key(record: &ConflictRecord) -> Vec<u8> {
    let ms = record.detected_at.timestamp_millis().max(0) as u64;
    let mut k = ms.to_be_bytes().to_vec();
    k.extend_from_slice(record.id.as_bytes());
    k
}

pub fn open_key(bucket: &str, key: &str, path: Option<&[serde_json::Value]>) -> Vec<u8> {
    let mut k = record_key(bucket, key);
    k.push(0);
    if let Some(p) = path {
        k.extend_from_slice(serde_json::Value::Array(p.to_vec()).to_string().as_bytes());
    }
    k
}

/// A change to the conflict log, committed with the state change that caused it.
#[derive(Debug, Clone)]
pub struct ConflictWrite {
    pub record: ConflictRecord,
    /// Still unresolved: indexed as the open record of its key (and path).
    pub open: bool,
    /// A record this one replaces (a further concurrent version joined it).
    pub replaces: Option<uuid::Uuid>,
}

/// Which records `list_conflicts` returns.
#[derive(Debug, Clone, Default)]
pub struct ConflictQuery {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The `next` cursor of a previous page.
    pub before: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Error)]
pub enum StorageError {
    /// The database failed (disk full, I/O error): the node cannot go on safely.
    #[error("local database: {0}")]
    Database(String),
    /// A stored record does not decode: data is corrupt.
    #[error("corrupt record for {what}: {source}")]
    Corrupt { what: String, source: CoreError },
}

pub type StorageResult<T> = Result<T, StorageError>;

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Database(e.to_string())
}

/// `bucket NUL key`: NUL is refused in both, so the encoding is unambiguous and a
/// bucket's keys form one contiguous, ordered range.
pub fn record_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Everything one apply step writes, committed atomically.
#[derive(Debug, Default)]
pub struct Batch {
    pub kv: Vec<(String, String, Register)>,
    pub docs: Vec<(String, String, Vec<u8>)>,
    pub applied: Vec<(Origin, u64)>,
    pub cursors: Vec<(String, u64)>,
    /// Documents' waiting changes; an empty list clears the record.
    pub pending: Vec<(String, String, Vec<Vec<u8>>)>,
    pub conflicts: Vec<ConflictWrite>,
}

fn encode_changes(changes: &[Vec<u8>]) -> Vec<u8> {
    let mut w = concord_core::codec::Writer::new();
    w.u64(changes.len() as u64);
    for c in changes {
        w.bytes(c);
    }
    w.finish()
}

fn decode_changes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CoreError> {
    let mut r = concord_core::codec::Reader::new(bytes);
    let n = r.len(bytes.len())?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(r.bytes(bytes.len())?.to_vec());
    }
    r.expect_end()?;
    Ok(out)
}

#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
    conflicts_max: u64,
    conflicts_max_age: std::time::Duration,
}

impl Store {
    /// Open (or create) the database at `dir/state.redb`.
    pub fn open(dir: &Path) -> StorageResult<Store> {
        std::fs::create_dir_all(dir).map_err(db_err)?;
        let db = Database::create(dir.join("state.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(KV).map_err(db_err)?;
            tx.open_table(DOCS).map_err(db_err)?;
            tx.open_table(APPLIED).map_err(db_err)?;
            tx.open_table(CURSORS).map_err(db_err)?;
            tx.open_table(DOC_PENDING).map_err(db_err)?;
            tx.open_table(CONFLICTS).map_err(db_err)?;
            tx.open_table(CONFLICTS_BY_TIME).map_err(db_err)?;
            tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Store {
            db: std::sync::Arc::new(db),
            conflicts_max: CONFLICTS_MAX_DEFAULT,
            conflicts_max_age: CONFLICTS_MAX_AGE_DEFAULT,
        })
    }

    /// Keep at most `max` conflict records, none older than `max_age` (by detection).
    pub fn with_conflict_retention(mut self, max: u64, max_age: std::time::Duration) -> Store {
        assert!(max > 0, "a conflict log must keep at least one record");
        self.conflicts_max = max;
        self.conflicts_max_age = max_age;
        self
    }

    fn decode_conflict(raw: &[u8]) -> StorageResult<ConflictRecord> {
        serde_json::from_slice(raw).map_err(|e| StorageError::Corrupt {
            what: "conflict record".into(),
            source: CoreError::Corrupt(e.to_string()),
        })
    }

    pub fn get_conflict(&self, id: &uuid::Uuid) -> StorageResult<Option<ConflictRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CONFLICTS).map_err(db_err)?;
        match table.get(id.as_bytes().as_slice()).map_err(db_err)? {
            Some(raw) => Self::decode_conflict(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The unresolved record of `bucket/key` (and `path`), if any.
    pub fn open_conflict(
        &self,
        bucket: &str,
        key: &str,
        path: Option<&[serde_json::Value]>,
    ) -> StorageResult<Option<ConflictRecord>> {
        let id = {
            let tx = self.db.begin_read().map_err(db_err)?;
            let table = tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
            let Some(raw) = table.get(open_key(bucket, key, path).as_slice()).map_err(db_err)? else {
                return Ok(None);
            };
            uuid::Uuid::from_slice(raw.value()).map_err(|e| StorageError::Corrupt {
                what: "open conflict index".into(),
                source: CoreError::Corrupt(e.to_string()),
            })?
        };
        self.get_conflict(&id)
    }

    /// Every unresolved record of `bucket/key`, whatever the path (documents).
    pub fn open_conflicts_of(&self, bucket: &str, key: &str) -> StorageResult<Vec<ConflictRecord>> {
        let ids: Vec<uuid::Uuid> = {
            let tx = self.db.begin_read().map_err(db_err)?;
            let table = tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
            let prefix = open_key(bucket, key, None);
            let mut ids = Vec::new();
            for entry in table.range(prefix.as_slice()..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                if let Ok(id) = uuid::Uuid::from_slice(v.value()) {
                    ids.push(id);
                }
            }
            ids
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.get_conflict(&id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Records newest first, filtered, one page at a time: returns the page and the
    /// cursor of the next one.
    pub fn list_conflicts(&self, q: &ConflictQuery) -> StorageResult<(Vec<ConflictRecord>, Option<String>)> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let by_time = tx.open_table(CONFLICTS_BY_TIME).map_err(db_err)?;
        let records = tx.open_table(CONFLICTS).map_err(db_err)?;
        let end: Vec<u8> = match &q.before {
            Some(cursor) => decode_hex(cursor).ok_or_else(|| StorageError::Corrupt {
                what: "page cursor".into(),
                source: CoreError::InvalidInput(format!("cursor {cursor:?} is not one this node gave out")),
            })?,
            None => vec![0xff; 25],
        };
        let since_ms = q.since.map(|t| t.timestamp_millis().max(0) as u64).unwrap_or(0);
        let mut out = Vec::new();
        let mut next = None;
        for entry in by_time.range(..end.as_slice()).map_err(db_err)?.rev() {
            let (k, _) = entry.map_err(db_err)?;
            let k = k.value().to_vec();
            if k.len() != 24 {
                continue;
            }
            let ms = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            if ms < since_ms {
                break;
            }
            let Some(raw) = records.get(&k[8..]).map_err(db_err)? else { continue };
            let record = Self::decode_conflict(raw.value())?;
            if q.bucket.as_ref().is_some_and(|b| *b != record.bucket)
                || q.key.as_ref().is_some_and(|key| *key != record.key)
            {
                continue;
            }
            if out.len() == q.limit {
                next = Some(encode_hex(&time_key(out.last().expect("limit > 0"))));
                break;
            }
            out.push(record);
        }
        Ok((out, next))
    }

    pub fn conflict_count(&self) -> StorageResult<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        tx.open_table(CONFLICTS).map_err(db_err)?.len().map_err(db_err)
    }

    pub fn get_kv(&self, bucket: &str, key: &str) -> StorageResult<Option<Register>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(KV).map_err(db_err)?;
        let Some(raw) = table.get(record_key(bucket, key).as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        stored::decode(raw.value())
            .map(Some)
            .map_err(|source| StorageError::Corrupt { what: format!("{bucket}/{key}"), source })
    }

    /// Live (not deleted) keys of `bucket`, in key order, after `after`, starting with
    /// `prefix`, at most `limit`.
    pub fn list_kv(&self, bucket: &str, prefix: &str, after: Option<&str>, limit: usize) -> StorageResult<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(KV).map_err(db_err)?;
        let start = match after {
            Some(a) if a >= prefix => {
                let mut k = record_key(bucket, a);
                k.push(0); // strictly after `a`
                k
            }
            _ => record_key(bucket, prefix),
        };
        let bucket_prefix = record_key(bucket, "");
        let mut out = Vec::new();
        for entry in table.range(start.as_slice()..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Some(key) = k.value().strip_prefix(bucket_prefix.as_slice()) else {
                break;
            };
            let key = String::from_utf8_lossy(key).into_owned();
            if !key.starts_with(prefix) {
                break;
            }
            let register = stored::decode(v.value())
                .map_err(|source| StorageError::Corrupt { what: format!("{bucket}/{key}"), source })?;
            if register.winner().is_tombstone() {
                continue;
            }
            out.push(key);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn get_doc(&self, bucket: &str, key: &str) -> StorageResult<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DOCS).map_err(db_err)?;
        Ok(table.get(record_key(bucket, key).as_slice()).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Changes of a document still waiting for their dependencies.
    pub fn get_pending(&self, bucket: &str, key: &str) -> StorageResult<Vec<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DOC_PENDING).map_err(db_err)?;
        let Some(raw) = table.get(record_key(bucket, key).as_slice()).map_err(db_err)? else {
            return Ok(Vec::new());
        };
        decode_changes(raw.value())
            .map_err(|source| StorageError::Corrupt { what: format!("pending changes of {bucket}/{key}"), source })
    }

    /// How many documents hold waiting changes.
    pub fn pending_docs(&self) -> StorageResult<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DOC_PENDING).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    pub fn cursors(&self) -> StorageResult<Vec<(String, u64)>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CURSORS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    pub fn applied(&self) -> StorageResult<VersionVector> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(APPLIED).map_err(db_err)?;
        let mut vv = VersionVector::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let origin: Origin =
                k.value().parse().map_err(|source| StorageError::Corrupt { what: "applied vector".into(), source })?;
            vv.observe(&origin, v.value());
        }
        Ok(vv)
    }

    pub fn cursor(&self, stream: &str) -> StorageResult<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CURSORS).map_err(db_err)?;
        Ok(table.get(stream).map_err(db_err)?.map_or(0, |v| v.value()))
    }

    /// Write a whole batch in one durable transaction.
    pub fn commit(&self, batch: &Batch) -> StorageResult<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut kv = tx.open_table(KV).map_err(db_err)?;
            for (bucket, key, register) in &batch.kv {
                kv.insert(record_key(bucket, key).as_slice(), stored::encode(register).as_slice()).map_err(db_err)?;
            }
            let mut docs = tx.open_table(DOCS).map_err(db_err)?;
            for (bucket, key, bytes) in &batch.docs {
                docs.insert(record_key(bucket, key).as_slice(), bytes.as_slice()).map_err(db_err)?;
            }
            let mut applied = tx.open_table(APPLIED).map_err(db_err)?;
            for (origin, seq) in &batch.applied {
                let name = origin.to_string();
                let old = applied.get(name.as_str()).map_err(db_err)?.map_or(0, |v| v.value());
                assert!(*seq >= old, "the applied vector never goes back ({origin}: {old} -> {seq})");
                applied.insert(name.as_str(), *seq).map_err(db_err)?;
            }
            let mut cursors = tx.open_table(CURSORS).map_err(db_err)?;
            for (stream, seq) in &batch.cursors {
                cursors.insert(stream.as_str(), *seq).map_err(db_err)?;
            }
            write_conflicts(&tx, &batch.conflicts, self.conflicts_max, self.conflicts_max_age)?;
            let mut pending = tx.open_table(DOC_PENDING).map_err(db_err)?;
            for (bucket, key, changes) in &batch.pending {
                let k = record_key(bucket, key);
                if changes.is_empty() {
                    pending.remove(k.as_slice()).map_err(db_err)?;
                } else {
                    pending.insert(k.as_slice(), encode_changes(changes).as_slice()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn write_conflicts(
    tx: &redb::WriteTransaction,
    writes: &[ConflictWrite],
    max: u64,
    max_age: std::time::Duration,
) -> StorageResult<()> {
    let mut records = tx.open_table(CONFLICTS).map_err(db_err)?;
    let mut by_time = tx.open_table(CONFLICTS_BY_TIME).map_err(db_err)?;
    let mut open = tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
    for w in writes {
        let r = &w.record;
        let ok = open_key(&r.bucket, &r.key, r.path.as_deref());
        if let Some(old) = w.replaces.filter(|old| *old != r.id) {
            let old_raw = records.remove(old.as_bytes().as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
            if let Some(raw) = old_raw {
                let old_record = Store::decode_conflict(&raw)?;
                by_time.remove(time_key(&old_record).as_slice()).map_err(db_err)?;
            }
        }
        let previous = records.get(r.id.as_bytes().as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
        if let Some(raw) = previous {
            by_time.remove(time_key(&Store::decode_conflict(&raw)?).as_slice()).map_err(db_err)?;
        }
        let json = serde_json::to_vec(r).expect("a record serializes");
        records.insert(r.id.as_bytes().as_slice(), json.as_slice()).map_err(db_err)?;
        by_time.insert(time_key(r).as_slice(), [].as_slice()).map_err(db_err)?;
        if w.open {
            open.insert(ok.as_slice(), r.id.as_bytes().as_slice()).map_err(db_err)?;
        } else {
            let current = open.get(ok.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
            if current.as_deref() == Some(r.id.as_bytes().as_slice()) {
                open.remove(ok.as_slice()).map_err(db_err)?;
            }
        }
    }
    // Retention: the oldest records leave first, by count and by age.
    let cutoff_ms = (chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX))
        .timestamp_millis()
        .max(0) as u64;
    let mut excess = records.len().map_err(db_err)?.saturating_sub(max);
    let mut doomed = Vec::new();
    for entry in by_time.iter().map_err(db_err)? {
        let (k, _) = entry.map_err(db_err)?;
        let k = k.value().to_vec();
        let ms = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
        if excess == 0 && ms >= cutoff_ms {
            break;
        }
        excess = excess.saturating_sub(1);
        doomed.push(k);
    }
    for k in doomed {
        by_time.remove(k.as_slice()).map_err(db_err)?;
        if let Some(raw) = records.remove(&k[8..]).map_err(db_err)?.map(|v| v.value().to_vec()) {
            let r = Store::decode_conflict(&raw)?;
            let ok = open_key(&r.bucket, &r.key, r.path.as_deref());
            let current = open.get(ok.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
            if current.as_deref() == Some(r.id.as_bytes().as_slice()) {
                open.remove(ok.as_slice()).map_err(db_err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::hlc::Hlc;
    use concord_core::ids::RegionId;
    use concord_core::lww::Version;

    fn version(value: Option<&str>, seq: u64) -> Version {
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        Version {
            value: value.map(|v| v.as_bytes().to_vec()),
            hlc: Hlc { wall_ms: seq, logical: 0 },
            vv: [(origin.clone(), seq)].into_iter().collect(),
            origin,
        }
    }

    #[test]
    fn batches_commit_together_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("concord-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        {
            let store = Store::open(&dir).unwrap();
            let mut batch = Batch::default();
            for (i, k) in ["a", "ab", "b", "c"].iter().enumerate() {
                batch.kv.push(("bk".into(), k.to_string(), Register::new(version(Some("v"), i as u64 + 1))));
            }
            batch.kv.push(("bk".into(), "c".into(), Register::new(version(None, 5))));
            batch.kv.push(("bk2".into(), "a".into(), Register::new(version(Some("x"), 6))));
            batch.docs.push(("d".into(), "doc".into(), vec![1, 2, 3]));
            batch.applied.push((origin.clone(), 6));
            batch.cursors.push(("CONCORD_US_EAST".into(), 2));
            store.commit(&batch).unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.get_kv("bk", "a").unwrap().unwrap().winner().value.as_deref(), Some(&b"v"[..]));
        assert!(store.get_kv("bk", "c").unwrap().unwrap().winner().is_tombstone());
        assert!(store.get_kv("bk", "zz").unwrap().is_none());
        assert_eq!(store.list_kv("bk", "", None, 10).unwrap(), ["a", "ab", "b"]);
        assert_eq!(store.list_kv("bk", "a", None, 10).unwrap(), ["a", "ab"]);
        assert_eq!(store.list_kv("bk", "", Some("a"), 1).unwrap(), ["ab"]);
        assert_eq!(store.get_doc("d", "doc").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(store.applied().unwrap().get(&origin), 6);
        assert_eq!(store.cursor("CONCORD_US_EAST").unwrap(), 2);
        assert_eq!(store.cursor("other").unwrap(), 0);
        let mut batch = Batch::default();
        batch.pending.push(("d".into(), "doc".into(), vec![vec![1], vec![2, 3]]));
        store.commit(&batch).unwrap();
        assert_eq!(store.get_pending("d", "doc").unwrap(), vec![vec![1], vec![2, 3]]);
        let mut batch = Batch::default();
        batch.pending.push(("d".into(), "doc".into(), vec![]));
        store.commit(&batch).unwrap();
        assert!(store.get_pending("d", "doc").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn record(key: &str, ms: i64, ids: &[&str]) -> ConflictRecord {
        use chrono::TimeZone;
        let mut r = ConflictRecord {
            id: uuid::Uuid::nil(),
            bucket: "b".into(),
            key: key.into(),
            path: None,
            detected_at: chrono::Utc.timestamp_millis_opt(ms).unwrap(),
            detected_by: "us-east".into(),
            rule: concord_core::conflict::Rule::LwwHlc,
            winner: ids[0].into(),
            versions: Vec::new(),
            cut: Vec::new(),
            resolved: None,
        };
        r.absorb(
            ids.iter()
                .map(|id| concord_core::conflict::CompetingVersion {
                    id: id.to_string(),
                    value: serde_json::Value::Null,
                    encoding: "utf8".into(),
                    deleted: true,
                    origin: "us-east.1".into(),
                    hlc: concord_core::hlc::Hlc::ZERO,
                })
                .collect(),
        );
        r
    }

    #[test]
    fn conflict_log_pages_replaces_and_retains() {
        let dir = std::env::temp_dir().join(format!("concord-storage-conflicts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = chrono::Utc::now().timestamp_millis();
        let store = Store::open(&dir).unwrap().with_conflict_retention(3, std::time::Duration::from_secs(3600));
        let mut batch = Batch::default();
        for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
            batch.conflicts.push(ConflictWrite {
                record: record(k, now + i as i64, &["x:1", "y:1"]),
                open: true,
                replaces: None,
            });
        }
        store.commit(&batch).unwrap();
        let page = |before: Option<String>| {
            store.list_conflicts(&ConflictQuery { before, limit: 2, ..Default::default() }).unwrap()
        };
        let (first, next) = page(None);
        assert_eq!(first.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["k3", "k2"]);
        let (second, next2) = page(next);
        assert_eq!(second.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["k1"]);
        assert!(next2.is_none());

        // A third version joins k1's conflict: the record is replaced, still open.
        let old = store.open_conflict("b", "k1", None).unwrap().unwrap();
        let mut batch = Batch::default();
        let new = record("k1", now, &["w:1", "x:1", "y:1"]);
        batch.conflicts.push(ConflictWrite { record: new.clone(), open: true, replaces: Some(old.id) });
        store.commit(&batch).unwrap();
        assert!(store.get_conflict(&old.id).unwrap().is_none());
        assert_eq!(store.open_conflict("b", "k1", None).unwrap().unwrap().id, new.id);
        assert_eq!(store.conflict_count().unwrap(), 3);

        // Resolving closes it; a fourth record pushes the oldest out (count bound 3);
        // an old one is dropped by age.
        let mut batch = Batch::default();
        batch.conflicts.push(ConflictWrite { record: new, open: false, replaces: None });
        batch.conflicts.push(ConflictWrite {
            record: record("k4", now + 10, &["a:1", "b:1"]),
            open: true,
            replaces: None,
        });
        batch.conflicts.push(ConflictWrite {
            record: record("ancient", now - 7_200_000, &["a:1", "b:1"]),
            open: true,
            replaces: None,
        });
        store.commit(&batch).unwrap();
        assert!(store.open_conflict("b", "k1", None).unwrap().is_none());
        assert_eq!(store.conflict_count().unwrap(), 3);
        let (all, _) = store.list_conflicts(&ConflictQuery { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(all.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["k4", "k3", "k2"]);
        let (only, _) =
            store.list_conflicts(&ConflictQuery { key: Some("k3".into()), limit: 10, ..Default::default() }).unwrap();
        assert_eq!(only.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
