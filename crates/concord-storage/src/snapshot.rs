//! Snapshots: a replica's whole state, from one read transaction, so a new replica can
//! start from a peer when the log no longer holds everything (stream retention), and a
//! backup. Streamed both ways: written record by record as the transaction reads them
//! ([`Store::export_snapshot_to`]), loaded record by record from any reader
//! ([`Store::import_snapshot_from`]), so a snapshot's size is bounded by the disk, not
//! by memory.
//!
//! The encoding is versioned: `"CSN" version(u8)` then records
//! `table(u8) key(bytes) value(bytes)` and a final `0` table byte. Version 2 adds the
//! changesets waiting behind gaps (table 9): they belong with the applied vector they
//! were held back from. Version 3 adds the origins void from a sequence on (table 10):
//! they belong with the applied vector too. Version 4 adds each origin's latest mark
//! (table 11): the context of its later changes. Dead letters stay with the replica that
//! received them. Importing reads versions 1 to 4, refuses a non-empty store and writes everything in
//! one transaction; a conflict-log record that does not fit its table's layout refuses
//! the snapshot.

use std::io::{Read, Write};

use concord_core::codec::{Reader, Writer};
use concord_core::{CoreError, CoreResult};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::conflicts::{CONFLICTS, CONFLICTS_BY_TIME, CONFLICTS_OPEN};
use crate::held::WAITING;
use crate::{APPLIED, CURSORS, DOC_PENDING, DOCS, KV, StorageError, StorageResult, Store, VOID_FROM, db_err};

const MAGIC: &[u8; 3] = b"CSN";
const VERSION: u8 = 4;
const VALUE_BYTES_MAX: usize = 256 << 20;

type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;
const BYTE_TABLES: [(u8, BytesTable); 7] =
    [(1, KV), (2, DOCS), (3, DOC_PENDING), (4, CONFLICTS), (5, CONFLICTS_BY_TIME), (6, CONFLICTS_OPEN), (9, WAITING)];
const APPLIED_TABLE: u8 = 7;
const CURSORS_TABLE: u8 = 8;
const VOID_FROM_TABLE: u8 = 10;
/// Version 4: each origin's latest mark (origin → its stored encoding).
const MARKS_TABLE: u8 = 11;

fn corrupt(e: CoreError) -> StorageError {
    StorageError::Corrupt { what: "snapshot".into(), source: e }
}

impl Store {
    /// Everything this replica holds, consistent as of one moment.
    pub fn export_snapshot(&self) -> StorageResult<Vec<u8>> {
        let mut out = Vec::new();
        self.export_snapshot_to(&mut out)?;
        Ok(out)
    }

    /// Everything this replica holds, consistent as of one moment (one read
    /// transaction), written to `out` record by record as it is read: a snapshot is never
    /// held in memory whole. An error of `out` (the reader went away) ends it.
    pub fn export_snapshot_to(&self, out: &mut dyn Write) -> StorageResult<()> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u8(VERSION);
        let io = |e: std::io::Error| StorageError::Database(format!("writing the snapshot: {e}"));
        out.write_all(&w.finish()).map_err(io)?;
        for (id, def) in BYTE_TABLES {
            let table = tx.open_table(def).map_err(db_err)?;
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let mut w = Writer::new();
                w.u8(id);
                w.bytes(k.value());
                w.bytes(v.value());
                out.write_all(&w.finish()).map_err(io)?;
            }
        }
        for (id, def) in [(APPLIED_TABLE, APPLIED), (CURSORS_TABLE, CURSORS), (VOID_FROM_TABLE, VOID_FROM)] {
            let table = tx.open_table(def).map_err(db_err)?;
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let mut w = Writer::new();
                w.u8(id);
                w.str(k.value());
                w.bytes(&v.value().to_be_bytes());
                out.write_all(&w.finish()).map_err(io)?;
            }
        }
        let table = tx.open_table(crate::marks::MARKS).map_err(db_err)?;
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let mut w = Writer::new();
            w.u8(MARKS_TABLE);
            w.str(k.value());
            w.bytes(v.value());
            out.write_all(&w.finish()).map_err(io)?;
        }
        out.write_all(&[0]).map_err(io)?;
        out.flush().map_err(io)
    }

    /// Load a snapshot into this (empty) store.
    pub fn import_snapshot(&self, bytes: &[u8]) -> StorageResult<()> {
        self.import_snapshot_from(&mut &bytes[..], &mut |_| {})
    }

    /// Load a snapshot read from `input` into this (empty) store, in one transaction (a
    /// snapshot that fails part way leaves the store empty), calling `progress` with the
    /// bytes read so far every [`PROGRESS_EVERY_RECORDS`] records. Nothing is held in
    /// memory beyond one record.
    pub fn import_snapshot_from(&self, input: &mut dyn Read, progress: &mut dyn FnMut(u64)) -> StorageResult<()> {
        if !self.applied()?.is_empty() {
            return Err(corrupt(CoreError::InvalidInput("a snapshot loads only into an empty store".into())));
        }
        let mut r = StreamIn { input, read: 0 };
        if r.raw(3).map_err(corrupt)? != MAGIC {
            return Err(corrupt(CoreError::Corrupt("not a snapshot".into())));
        }
        let version = r.u8().map_err(corrupt)?;
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(CoreError::UnsupportedVersion { found: version, supported: VERSION }));
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut records = 0u64;
        loop {
            let table = r.u8().map_err(corrupt)?;
            if table == 0 {
                break;
            }
            records += 1;
            if records.is_multiple_of(PROGRESS_EVERY_RECORDS) {
                progress(r.read);
            }
            match table {
                APPLIED_TABLE | CURSORS_TABLE | VOID_FROM_TABLE => {
                    let name = String::from_utf8(r.bytes(1024).map_err(corrupt)?)
                        .map_err(|_| corrupt(CoreError::Corrupt("a name that is not UTF-8".into())))?;
                    let raw: [u8; 8] = r
                        .bytes(8)
                        .map_err(corrupt)?
                        .try_into()
                        .map_err(|_| corrupt(CoreError::Corrupt("bad sequence".into())))?;
                    let def = match table {
                        APPLIED_TABLE => APPLIED,
                        CURSORS_TABLE => CURSORS,
                        _ => VOID_FROM,
                    };
                    tx.open_table(def)
                        .map_err(db_err)?
                        .insert(name.as_str(), u64::from_be_bytes(raw))
                        .map_err(db_err)?;
                }
                MARKS_TABLE => {
                    let name = String::from_utf8(r.bytes(1024).map_err(corrupt)?)
                        .map_err(|_| corrupt(CoreError::Corrupt("a name that is not UTF-8".into())))?;
                    let v = r.bytes(VALUE_BYTES_MAX).map_err(corrupt)?;
                    name.parse::<concord_core::ids::Origin>().map_err(corrupt)?;
                    crate::marks::decode(&v).map_err(corrupt)?;
                    tx.open_table(crate::marks::MARKS)
                        .map_err(db_err)?
                        .insert(name.as_str(), v.as_slice())
                        .map_err(db_err)?;
                }
                id => {
                    let def = BYTE_TABLES
                        .iter()
                        .find(|(t, _)| *t == id)
                        .map(|(_, d)| *d)
                        .ok_or_else(|| corrupt(CoreError::Corrupt(format!("unknown table {id}"))))?;
                    let k = r.bytes(VALUE_BYTES_MAX).map_err(corrupt)?;
                    let v = r.bytes(VALUE_BYTES_MAX).map_err(corrupt)?;
                    check_layout(id, &k, &v).map_err(|e| corrupt(CoreError::Corrupt(e)))?;
                    tx.open_table(def).map_err(db_err)?.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
                }
            }
        }
        r.expect_end().map_err(corrupt)?;
        progress(r.read);
        tx.commit().map_err(db_err)
    }
}

/// How often an import reports its progress.
pub const PROGRESS_EVERY_RECORDS: u64 = 1000;

/// The snapshot codec's reads over a stream: every length is checked against its limit,
/// and a value is read in bounded pieces, so damaged bytes cannot make it allocate more
/// than the input holds (plus one piece).
struct StreamIn<'a> {
    input: &'a mut dyn Read,
    read: u64,
}

impl StreamIn<'_> {
    fn truncated(&self) -> CoreError {
        CoreError::Corrupt(format!("truncated at byte {}", self.read))
    }

    fn u8(&mut self) -> CoreResult<u8> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b).map_err(|_| self.truncated())?;
        self.read += 1;
        Ok(b[0])
    }

    fn u64(&mut self) -> CoreResult<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CoreError::Corrupt(format!("integer overflow at byte {}", self.read)));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CoreError::Corrupt(format!("integer too long at byte {}", self.read)))
    }

    fn raw(&mut self, n: usize) -> CoreResult<Vec<u8>> {
        const PIECE: usize = 64 << 10;
        let mut out = Vec::with_capacity(n.min(PIECE));
        while out.len() < n {
            let take = (n - out.len()).min(PIECE);
            let at = out.len();
            out.resize(at + take, 0);
            self.input.read_exact(&mut out[at..]).map_err(|_| self.truncated())?;
            self.read += take as u64;
        }
        Ok(out)
    }

    fn bytes(&mut self, max: usize) -> CoreResult<Vec<u8>> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(CoreError::Corrupt(format!("a length of {n} bytes (at most {max}) at byte {}", self.read)));
        }
        self.raw(n as usize)
    }

    fn expect_end(&mut self) -> CoreResult<()> {
        let mut b = [0u8; 1];
        match self.input.read(&mut b) {
            Ok(0) => Ok(()),
            _ => Err(CoreError::Corrupt(format!("bytes after the end at byte {}", self.read))),
        }
    }
}

/// The conflict log's records have fixed layouts that its readers slice by (a damaged
/// snapshot's short time-index key made the next commit panic; found by fuzzing): a
/// record that does not fit refuses the snapshot. The other tables' records are
/// decoded, and checked, where they are read.
fn check_layout(table: u8, k: &[u8], v: &[u8]) -> Result<(), String> {
    let ok = match table {
        // id → record
        4 => k.len() == 16,
        // time (8 bytes) ++ id → open flag (empty in logs written before the flag)
        5 => k.len() == 24 && matches!(v, [] | [0] | [1]),
        // open key → id
        6 => v.len() == 16,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a record of table {table} with a {}-byte key and a {}-byte value does not fit its layout",
            k.len(),
            v.len()
        ))
    }
}

/// Check a snapshot's header without loading it.
pub fn check_header(bytes: &[u8]) -> CoreResult<()> {
    let mut r = Reader::new(bytes);
    if r.raw(3)? != MAGIC {
        return Err(CoreError::Corrupt("not a snapshot".into()));
    }
    match r.u8()? {
        1..=VERSION => Ok(()),
        found => Err(CoreError::UnsupportedVersion { found, supported: VERSION }),
    }
}
