//! Local state of one replica, in one redb file.
//!
//! Tables: `kv` (bucket NUL key → stored LWW version; a collected one is removed), `docs`
//! (bucket NUL key → saved Automerge document), `applied` (origin → highest contiguous
//! sequence applied), `marks` (origin → its latest mark: [`marks`]),
//! `cursors` (log stream → last stream sequence consumed), `doc_pending` (bucket NUL
//! key → Automerge changes waiting for their dependencies), the conflict log
//! ([`conflicts`]), and what is held back ([`held`]: changesets waiting behind a gap,
//! dead letters).
//!
//! The guarantee: [`Store::commit`] writes a whole engine [`Batch`] — values, documents,
//! the applied vector, the cursors, conflict records, waiting changesets and dead
//! letters — in one atomic transaction, so after a crash the state and the position in
//! the log agree, and replay from the cursor is exact. The engine reads through
//! [`Store::load`] ([`facts`]). Records are decoded defensively: a corrupt record is an
//! error, never a panic.
//!
//! A commit is durable when it returns ([`Fsync::Now`], an fsync), or deferred
//! ([`Fsync::Deferred`]): visible to every reader at once, but on disk only with the next
//! durable commit or [`Store::sync`]. A crash loses the deferred commits since the last
//! durable one, all of them and nothing else: the store reopens exactly as it was after
//! that durable commit (redb rolls back to its last durable root), which is a state the
//! replica really had, with the cursors that go with it. A runtime defers only what it
//! can read again from the logs (DESIGN.md: "the log is the write-ahead log").

use std::path::Path;

use concord_core::CoreError;
use concord_core::changeset::stored;
use concord_core::ids::Origin;
use concord_core::lww::Register;
use concord_core::vv::VersionVector;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

mod conflicts;
mod digest;
mod facts;
mod held;
mod marks;
mod snapshot;

pub use concord_engine::Batch;
pub use digest::content_for_hash;
pub use held::DEAD_LETTERS_MAX;
pub use snapshot::check_header as check_snapshot_header;

use conflicts::{CONFLICTS, CONFLICTS_BY_TIME, CONFLICTS_OPEN, write_conflicts};
pub use conflicts::{CONFLICTS_MAX_AGE_DEFAULT, CONFLICTS_MAX_DEFAULT, ConflictQuery, ConflictWrite, open_key};
use held::{DEAD_LETTERS, WAITING, write_held};

pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
pub(crate) const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
pub(crate) const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("applied");
pub(crate) const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Automerge changes that arrived before a change they depend on (from another
/// origin): kept here, durably, until their dependencies arrive.
pub(crate) const DOC_PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc_pending");
/// Origin → the first sequence from which its changesets are void (see
/// `concord_engine::Durable::void_from`).
pub(crate) const VOID_FROM: TableDefinition<&str, u64> = TableDefinition::new("void_from");

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

pub(crate) fn db_err(e: impl std::fmt::Display) -> StorageError {
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

fn encode_changes(changes: &[Vec<u8>]) -> Vec<u8> {
    let mut w = concord_core::codec::Writer::new();
    w.u64(changes.len() as u64);
    for c in changes {
        w.bytes(c);
    }
    w.finish()
}

/// A document's stored waiting changes (a peer's, too: decoded defensively).
pub fn decode_changes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CoreError> {
    let mut r = concord_core::codec::Reader::new(bytes);
    let n = r.len(bytes.len())?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(r.bytes(bytes.len())?.to_vec());
    }
    r.expect_end()?;
    Ok(out)
}

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the commit returns (an fsync).
    Now,
    /// With the next [`Fsync::Now`] commit or [`Store::sync`]; a crash before then loses
    /// it (and every deferred commit since the last durable one).
    Deferred,
}

#[derive(Clone)]
pub struct Store {
    pub(crate) db: std::sync::Arc<Database>,
    conflicts_max: u64,
    conflicts_max_age: std::time::Duration,
    /// When the conflict log's retention last ran (ms since 1970; shared by the clones).
    retained_at_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// Open (or create) the database at `dir/state.redb`, with a page cache of
    /// [`CACHE_BYTES_DEFAULT`].
    pub fn open(dir: &Path) -> StorageResult<Store> {
        Store::open_with_cache(dir, CACHE_BYTES_DEFAULT)
    }

    /// Open (or create) the database at `dir/state.redb`, caching at most `cache_bytes`
    /// of its pages in memory (the rest are read through the operating system's page
    /// cache, which does not count in the process's resident memory).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> StorageResult<Store> {
        std::fs::create_dir_all(dir).map_err(db_err)?;
        let db = redb::Builder::new().set_cache_size(cache_bytes).create(dir.join("state.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(KV).map_err(db_err)?;
            tx.open_table(DOCS).map_err(db_err)?;
            tx.open_table(APPLIED).map_err(db_err)?;
            tx.open_table(CURSORS).map_err(db_err)?;
            tx.open_table(DOC_PENDING).map_err(db_err)?;
            tx.open_table(VOID_FROM).map_err(db_err)?;
            tx.open_table(CONFLICTS).map_err(db_err)?;
            tx.open_table(CONFLICTS_BY_TIME).map_err(db_err)?;
            tx.open_table(CONFLICTS_OPEN).map_err(db_err)?;
            tx.open_table(WAITING).map_err(db_err)?;
            tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            tx.open_table(marks::MARKS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Store {
            db: std::sync::Arc::new(db),
            conflicts_max: CONFLICTS_MAX_DEFAULT,
            conflicts_max_age: CONFLICTS_MAX_AGE_DEFAULT,
            retained_at_ms: Default::default(),
        })
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

    /// Registers holding a tombstone (candidates for collection), in key order after
    /// `after` (a record key), looking at `scan_max` registers at most; and where the
    /// next page starts (`None`: the end).
    pub fn tombstone_candidates(
        &self,
        after: Option<&[u8]>,
        scan_max: usize,
    ) -> StorageResult<(Vec<concord_engine::DocKey>, Option<Vec<u8>>)> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(KV).map_err(db_err)?;
        let mut out = Vec::new();
        let mut scanned = 0;
        for entry in table.range(after.unwrap_or(&[])..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if after == Some(k.value()) {
                continue;
            }
            if scanned == scan_max {
                return Ok((out, Some(k.value().to_vec())));
            }
            scanned += 1;
            let key = k.value();
            let split = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            let (bucket, name) = (&key[..split], key.get(split + 1..).unwrap_or_default());
            let what = || format!("{}/{}", String::from_utf8_lossy(bucket), String::from_utf8_lossy(name));
            let register =
                stored::decode(v.value()).map_err(|source| StorageError::Corrupt { what: what(), source })?;
            if register.versions().iter().any(|v| v.is_tombstone()) {
                out.push((String::from_utf8_lossy(bucket).into_owned(), String::from_utf8_lossy(name).into_owned()));
            }
        }
        Ok((out, None))
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

    /// Origins void from a sequence on.
    pub fn void_from(&self) -> StorageResult<std::collections::BTreeMap<Origin, u64>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(VOID_FROM).map_err(db_err)?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let origin: Origin =
                k.value().parse().map_err(|source| StorageError::Corrupt { what: "void origins".into(), source })?;
            out.insert(origin, v.value());
        }
        Ok(out)
    }

    pub fn cursor(&self, stream: &str) -> StorageResult<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CURSORS).map_err(db_err)?;
        Ok(table.get(stream).map_err(db_err)?.map_or(0, |v| v.value()))
    }

    /// Write a whole batch in one durable transaction.
    pub fn commit(&self, batch: &Batch) -> StorageResult<()> {
        self.commit_with(batch, Fsync::Now)
    }

    /// Make every deferred commit durable (a durable commit that writes nothing).
    pub fn sync(&self) -> StorageResult<()> {
        self.db.begin_write().map_err(db_err)?.commit().map_err(db_err)
    }

    /// Write a whole batch in one transaction, durable as `sync` says. Only the tables
    /// the batch writes are opened (a commit is on every write's path); the conflict
    /// log's retention runs when records are written, and otherwise at most once per
    /// [`RETENTION_EVERY`], so records still age out of a log that takes no new ones.
    pub fn commit_with(&self, batch: &Batch, sync: Fsync) -> StorageResult<()> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        if sync == Fsync::Deferred {
            tx.set_durability(Durability::None).map_err(db_err)?;
        }
        if !batch.kv.is_empty() {
            let mut kv = tx.open_table(KV).map_err(db_err)?;
            for ((bucket, key), register) in &batch.kv {
                kv.insert(record_key(bucket, key).as_slice(), stored::encode(register).as_slice()).map_err(db_err)?;
            }
        }
        if !batch.kv_removed.is_empty() {
            let mut kv = tx.open_table(KV).map_err(db_err)?;
            for (bucket, key) in &batch.kv_removed {
                kv.remove(record_key(bucket, key).as_slice()).map_err(db_err)?;
            }
        }
        if !batch.marks.is_empty() {
            marks::write_marks(&tx, &batch.marks)?;
        }
        if !batch.docs.is_empty() {
            let mut docs = tx.open_table(DOCS).map_err(db_err)?;
            for ((bucket, key), bytes) in &batch.docs {
                docs.insert(record_key(bucket, key).as_slice(), bytes.as_slice()).map_err(db_err)?;
            }
        }
        if !batch.applied.is_empty() {
            let mut applied = tx.open_table(APPLIED).map_err(db_err)?;
            for (origin, seq) in &batch.applied {
                let name = origin.to_string();
                let old = applied.get(name.as_str()).map_err(db_err)?.map_or(0, |v| v.value());
                assert!(*seq >= old, "the applied vector never goes back ({origin}: {old} -> {seq})");
                applied.insert(name.as_str(), *seq).map_err(db_err)?;
            }
        }
        if !batch.cursors.is_empty() {
            let mut cursors = tx.open_table(CURSORS).map_err(db_err)?;
            for (stream, seq) in &batch.cursors {
                cursors.insert(stream.as_str(), *seq).map_err(db_err)?;
            }
        }
        if !batch.void_from.is_empty() {
            let mut void = tx.open_table(VOID_FROM).map_err(db_err)?;
            for (origin, seq) in &batch.void_from {
                let name = origin.to_string();
                let old = void.get(name.as_str()).map_err(db_err)?.map_or(u64::MAX, |v| v.value());
                void.insert(name.as_str(), old.min(*seq)).map_err(db_err)?;
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let last = self.retained_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        let retain = !batch.conflicts.is_empty() || now_ms.saturating_sub(last) >= RETENTION_EVERY.as_millis() as u64;
        if retain {
            write_conflicts(&tx, &batch.conflicts, self.conflicts_max, self.conflicts_max_age)?;
        }
        if !batch.waiting.is_empty() || !batch.dead_letters.is_empty() {
            write_held(&tx, &batch.waiting, &batch.dead_letters)?;
        }
        if !batch.pending.is_empty() {
            let mut pending = tx.open_table(DOC_PENDING).map_err(db_err)?;
            for ((bucket, key), changes) in &batch.pending {
                let k = record_key(bucket, key);
                if changes.is_empty() {
                    pending.remove(k.as_slice()).map_err(db_err)?;
                } else {
                    pending.insert(k.as_slice(), encode_changes(changes).as_slice()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        if retain {
            self.retained_at_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The page cache a store keeps unless told otherwise: redb's own default is 1 GiB,
/// which a replica's resident memory grows into as its data does.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// How often a commit that writes no conflict record runs the conflict log's retention.
pub const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests;
