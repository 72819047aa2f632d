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
                batch.kv.push((("bk".into(), k.to_string()), Register::new(version(Some("v"), i as u64 + 1))));
            }
            batch.kv.push((("bk".into(), "c".into()), Register::new(version(None, 5))));
            batch.kv.push((("bk2".into(), "a".into()), Register::new(version(Some("x"), 6))));
            batch.docs.push((("d".into(), "doc".into()), vec![1, 2, 3]));
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
        batch.pending.push((("d".into(), "doc".into()), vec![vec![1], vec![2, 3]]));
        store.commit(&batch).unwrap();
        assert_eq!(store.get_pending("d", "doc").unwrap(), vec![vec![1], vec![2, 3]]);
        let mut batch = Batch::default();
        batch.pending.push((("d".into(), "doc".into()), vec![]));
        store.commit(&batch).unwrap();
        assert!(store.get_pending("d", "doc").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One step of [`a_crash_loses_deferred_commits_back_to_the_last_durable_one`].
    fn crash_batch(origin: &Origin, seq: u64) -> Batch {
        let mut batch = Batch::default();
        batch.kv.push((("bk".into(), format!("k{seq}")), Register::new(version(Some("v"), seq))));
        batch.applied.push((origin.clone(), seq));
        batch.cursors.push(("LOG".into(), seq));
        batch
    }

    /// Run in a child process (the test binary again) that commits, then aborts: a
    /// crash, with no chance for the database to write anything on its way out.
    const CRASH_CHILD: &str = "CONCORD_STORAGE_CRASH_CHILD";

    #[test]
    fn a_crash_loses_deferred_commits_back_to_the_last_durable_one() {
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        if let Some(dir) = std::env::var_os(CRASH_CHILD) {
            let store = Store::open(Path::new(&dir)).unwrap();
            store.commit(&crash_batch(&origin, 1)).unwrap();
            store.commit_with(&crash_batch(&origin, 2), Fsync::Deferred).unwrap();
            store.sync().unwrap();
            store.commit_with(&crash_batch(&origin, 3), Fsync::Deferred).unwrap();
            store.commit_with(&crash_batch(&origin, 4), Fsync::Deferred).unwrap();
            assert!(store.get_kv("bk", "k4").unwrap().is_some(), "a deferred commit is visible at once");
            assert_eq!(store.applied().unwrap().get(&origin), 4);
            std::process::abort();
        }
        let dir = std::env::temp_dir().join(format!("concord-storage-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_crash_loses_deferred_commits_back_to_the_last_durable_one", "--nocapture"])
            .env(CRASH_CHILD, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child crashed");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.applied().unwrap().get(&origin), 2, "synced: kept; deferred after it: lost");
        assert_eq!(store.cursor("LOG").unwrap(), 2, "the cursor agrees with the state");
        assert!(store.get_kv("bk", "k2").unwrap().is_some());
        assert!(store.get_kv("bk", "k3").unwrap().is_none());
        assert!(store.get_kv("bk", "k4").unwrap().is_none());
        store.commit(&crash_batch(&origin, 3)).unwrap();
        assert_eq!(store.applied().unwrap().get(&origin), 3, "it goes on from there");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshots_carry_everything_into_an_empty_store() {
        let base = std::env::temp_dir().join(format!("concord-storage-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        let a = Store::open(&base.join("a")).unwrap();
        let mut batch = Batch::default();
        batch.kv.push((("b".into(), "k".into()), Register::new(version(Some("v"), 1))));
        batch.docs.push((("d".into(), "doc".into()), vec![9, 9]));
        batch.applied.push((origin.clone(), 7));
        batch.cursors.push(("LOG".into(), 3));
        a.commit(&batch).unwrap();
        let snap = a.export_snapshot().unwrap();
        let b = Store::open(&base.join("b")).unwrap();
        b.import_snapshot(&snap).unwrap();
        assert_eq!(b.get_kv("b", "k").unwrap(), a.get_kv("b", "k").unwrap());
        assert_eq!(b.get_doc("d", "doc").unwrap(), Some(vec![9, 9]));
        assert_eq!(b.applied().unwrap().get(&origin), 7);
        assert_eq!(b.cursor("LOG").unwrap(), 3);
        assert!(b.import_snapshot(&snap).is_err(), "a snapshot loads only into an empty store");
        let c = Store::open(&base.join("c")).unwrap();
        assert!(c.import_snapshot(&snap[..snap.len() - 1]).is_err());
        assert!(c.import_snapshot(b"garbage").is_err());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A snapshot is written as it is read and loaded as it arrives: the export hands its
    /// writer one record at a time (and stops at the writer's first error), the import
    /// takes its bytes in any pieces and says how far it is.
    #[test]
    fn snapshots_stream_record_by_record() {
        let base = std::env::temp_dir().join(format!("concord-storage-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let a = Store::open(&base.join("a")).unwrap();
        let mut batch = Batch::default();
        for i in 0..3000u64 {
            batch.kv.push((("b".into(), format!("k{i}")), Register::new(version(Some("value"), i + 1))));
        }
        batch.applied.push((Origin::new(RegionId::new("us-east").unwrap(), 1), 3000));
        a.commit(&batch).unwrap();

        struct Counting {
            writes: usize,
            bytes: Vec<u8>,
            fail_after: usize,
        }
        impl std::io::Write for Counting {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.bytes.len() >= self.fail_after {
                    return Err(std::io::Error::other("the reader went away"));
                }
                self.writes += 1;
                self.bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Counting { writes: 0, bytes: Vec::new(), fail_after: usize::MAX };
        a.export_snapshot_to(&mut out).unwrap();
        assert!(out.writes > 3000, "one write per record at least: {}", out.writes);
        assert_eq!(out.bytes, a.export_snapshot().unwrap());
        let mut cut = Counting { writes: 0, bytes: Vec::new(), fail_after: 1000 };
        assert!(a.export_snapshot_to(&mut cut).is_err(), "a writer's error ends the export");
        assert!(cut.bytes.len() < 2000, "it stopped there: {} bytes", cut.bytes.len());

        /// Hands out its bytes seven at a time.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let b = Store::open(&base.join("b")).unwrap();
        let mut seen = Vec::new();
        b.import_snapshot_from(&mut Trickle(&out.bytes), &mut |read| seen.push(read)).unwrap();
        assert_eq!(b.export_snapshot().unwrap(), out.bytes);
        assert!(seen.len() >= 3 && seen.windows(2).all(|w| w[0] <= w[1]), "progress as it went: {seen:?}");
        assert_eq!(*seen.last().unwrap(), out.bytes.len() as u64);
        let c = Store::open(&base.join("c")).unwrap();
        assert!(c.import_snapshot_from(&mut Trickle(&out.bytes[..out.bytes.len() / 2]), &mut |_| {}).is_err());
        assert!(
            c.applied().unwrap().is_empty() && c.get_kv("b", "k1").unwrap().is_none(),
            "a cut snapshot leaves nothing"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
