//! What anti-entropy reads of a store: the range-hash tree of its registers, documents
//! and documents' waiting changes, with the applied vector it goes with ([`Store::digest`]), and the entries of
//! some of the tree's leaves ([`Store::entries_in`]). Each is one read transaction, so a
//! tree and its applied vector describe one state.
//!
//! Entries are found by scanning (the leaves are by hash, not by key range): a digest or
//! a page of entries costs one pass over the registers and documents, which anti-entropy
//! bounds by running seldom.

use std::collections::BTreeSet;

use concord_core::merkle::{EntriesReply, EntriesRequest, Position, RawEntry, Table, Tree, leaf_of};
use concord_core::vv::VersionVector;
use redb::{ReadableDatabase, ReadableTable};

use crate::{APPLIED, DOC_PENDING, DOCS, KV, StorageError, StorageResult, Store, db_err};

/// What an entry is hashed by: a register's stored bytes; a document's heads (its saved
/// bytes depend on the replica that saved it). A document that does not load is hashed
/// by its bytes (it differs from any peer's, and its repair says why).
pub fn content_for_hash(table: Table, value: &[u8]) -> Vec<u8> {
    match table {
        Table::Pending => {
            let hashes: Result<Vec<[u8; 32]>, _> = crate::decode_changes(value).and_then(|changes| {
                changes.into_iter().map(|c| concord_core::doc::decode_change(c).map(|c| c.hash().0)).collect()
            });
            match hashes {
                Ok(mut hashes) => {
                    hashes.sort_unstable();
                    hashes.concat()
                }
                Err(_) => value.to_vec(),
            }
        }
        Table::Kv => value.to_vec(),
        Table::Docs => match concord_core::doc::load_doc(value) {
            Ok(doc) => {
                let mut heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
                heads.sort_unstable();
                heads.concat()
            }
            Err(_) => value.to_vec(),
        },
    }
}

type BytesTable = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
const TABLES: [(Table, BytesTable); 3] = [(Table::Kv, KV), (Table::Docs, DOCS), (Table::Pending, DOC_PENDING)];

impl Store {
    /// The tree of every register and document, and the applied vector, as of one moment.
    pub fn digest(&self) -> StorageResult<(Tree, VersionVector)> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut tree = Tree::default();
        for (t, def) in TABLES {
            let table = tx.open_table(def).map_err(db_err)?;
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                tree.add(t, k.value(), &content_for_hash(t, v.value()));
            }
        }
        Ok((tree, applied_in(&tx)?))
    }

    /// The entries of `req.leaves`, in (table, key) order after `req.after`, up to about
    /// `req.bytes_max` bytes (at least one entry when any is left).
    pub fn entries_in(&self, req: &EntriesRequest) -> StorageResult<EntriesReply> {
        let leaves: BTreeSet<usize> = req.leaves.iter().copied().collect();
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut reply = EntriesReply { applied: Some(applied_in(&tx)?), ..EntriesReply::default() };
        let mut bytes = 0u64;
        for (t, def) in TABLES {
            let start: &[u8] = match &req.after {
                Some((after_table, _)) if *after_table > t => continue,
                Some((after_table, key)) if *after_table == t => key,
                _ => &[],
            };
            let table = tx.open_table(def).map_err(db_err)?;
            let range = table.range(start..).map_err(db_err)?;
            for entry in range {
                let (k, v) = entry.map_err(db_err)?;
                let key = k.value();
                if req.after.as_ref().is_some_and(|(at, ak)| *at == t && ak.as_slice() == key) {
                    continue;
                }
                if !leaves.contains(&leaf_of(t, key)) {
                    continue;
                }
                if bytes >= req.bytes_max && !reply.entries.is_empty() {
                    reply.next = Some(last_position(&reply));
                    return Ok(reply);
                }
                bytes += (key.len() + v.value().len()) as u64;
                reply.entries.push(RawEntry { table: t, key: key.to_vec(), value: v.value().to_vec() });
            }
        }
        Ok(reply)
    }

    /// The stored bytes of one entry.
    pub fn get_raw(&self, table: Table, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let def = TABLES.iter().find(|(t, _)| *t == table).expect("every table is listed").1;
        let t = tx.open_table(def).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }
}

/// The applied vector as `tx` reads it.
fn applied_in(tx: &redb::ReadTransaction) -> StorageResult<VersionVector> {
    let table = tx.open_table(APPLIED).map_err(db_err)?;
    let mut applied = VersionVector::new();
    for entry in table.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let origin =
            k.value().parse().map_err(|source| StorageError::Corrupt { what: "applied vector".into(), source })?;
        applied.observe(&origin, v.value());
    }
    Ok(applied)
}

fn last_position(reply: &EntriesReply) -> Position {
    let last = reply.entries.last().expect("a page that continues holds an entry");
    (last.table, last.key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::hlc::Hlc;
    use concord_core::ids::{Origin, RegionId};
    use concord_core::lww::{Register, Version};
    use concord_core::merkle::LEAVES;

    fn store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("concord-digest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    fn put(store: &Store, keys: impl Iterator<Item = String>, value: &str) {
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 1);
        let mut batch = crate::Batch::default();
        for (i, k) in keys.enumerate() {
            let v = Version {
                value: Some(value.as_bytes().to_vec()),
                hlc: Hlc { wall_ms: 1, logical: 0 },
                vv: [(origin.clone(), i as u64 + 1)].into_iter().collect(),
                origin: origin.clone(),
            };
            batch.kv.push((("b".into(), k), Register::new(v)));
        }
        batch.applied.push((origin, 1));
        store.commit(&batch).unwrap();
    }

    #[test]
    fn digests_agree_on_equal_state_and_pages_cover_exactly_the_leaves_asked() {
        let (a, da) = store("a");
        let (b, db) = store("b");
        put(&a, (0..300).map(|i| format!("k{i}")), "v");
        put(&b, (0..300).map(|i| format!("k{i}")), "v");
        let (ta, va) = a.digest().unwrap();
        assert_eq!(ta, b.digest().unwrap().0);
        assert_eq!(va.len(), 1);
        put(&b, ["k7".to_string(), "k250".to_string()].into_iter(), "changed");
        let (tb, vb) = b.digest().unwrap();
        let leaves = ta.differing_leaves(&tb);
        assert!(!leaves.is_empty() && leaves.len() <= 2);
        // Paged at one entry per page, everything in those leaves comes back once.
        let mut req = EntriesRequest { leaves: leaves.clone(), after: None, bytes_max: 1, with_applied: true };
        let mut got = Vec::new();
        loop {
            let page = b.entries_in(&req).unwrap();
            assert_eq!(page.applied.as_ref(), Some(&vb), "each page says what its read had applied");
            got.extend(page.entries.iter().map(|e| String::from_utf8_lossy(&e.key).into_owned()));
            match page.next {
                Some(next) => req.after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..300)
            .map(|i| format!("b\0k{i}"))
            .filter(|k| leaves.contains(&leaf_of(Table::Kv, k.as_bytes())))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(got, expected);
        assert!(got.contains(&"b\0k7".to_string()) && got.contains(&"b\0k250".to_string()));
        let all =
            EntriesRequest { leaves: (0..LEAVES).collect(), after: None, bytes_max: u64::MAX, with_applied: false };
        assert_eq!(b.entries_in(&all).unwrap().entries.len(), 300);
        let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
    }
}
