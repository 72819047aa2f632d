//! A range-hash (Merkle) tree over a replica's state, for anti-entropy.
//!
//! Every stored entry (an LWW register, a document) falls in one of [`LEAVES`] leaves,
//! chosen by a hash of its table and key, so two replicas put the same key in the same
//! leaf whatever else they hold. A leaf's hash is the XOR of its entries' hashes (order
//! does not matter, so one scan in key order builds the tree), and each inner node's
//! hash is the XOR of its [`FANOUT`] children's: a node equals its peer's exactly when
//! the entries beneath it do (up to 128-bit hash collisions). [`Tree::differing_leaves`]
//! descends from the root and skips every subtree whose hashes agree, so two equal
//! states cost one comparison, and two states that differ in a few keys cost a few paths.
//!
//! An entry's hash covers its table, key and content. The content must be equal on two
//! replicas exactly when their states for the key are: an LWW register's stored bytes
//! are (replicas converge byte for byte), a document's saved bytes are not (they depend
//! on the saving replica's actor order), so a document is hashed by its heads, and its
//! changes waiting for a dependency (they count as applied) by their hashes.
//!
//! The wire encodings here ([`TreeReply`], [`EntriesRequest`], [`EntriesReply`]) cross
//! regions: versioned, and decoded defensively (damaged bytes are an error, never a
//! panic or an allocation beyond the input).

use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::vv::VersionVector;
use crate::{CoreError, CoreResult};

/// How many children an inner node has.
pub const FANOUT: usize = 16;
/// Levels below the root: the leaves are level [`DEPTH`].
pub const DEPTH: u32 = 3;
/// How many leaves the tree has (`FANOUT ^ DEPTH`).
pub const LEAVES: usize = FANOUT.pow(DEPTH);

/// A node's hash.
pub type Hash = [u8; 16];

/// Which table an entry is in (part of its hash, and of its place on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Kv = 1,
    Docs = 2,
    /// A document's changes that wait for a dependency (counted as applied already).
    Pending = 3,
}

impl Table {
    pub fn from_u8(b: u8) -> CoreResult<Table> {
        match b {
            1 => Ok(Table::Kv),
            2 => Ok(Table::Docs),
            3 => Ok(Table::Pending),
            t => Err(CoreError::Corrupt(format!("unknown table {t}"))),
        }
    }
}

/// The leaf an entry of `table` with `key` (a store's record key) falls in.
pub fn leaf_of(table: Table, key: &[u8]) -> usize {
    let h = Sha256::new().chain_update([table as u8]).chain_update(key).finalize();
    (usize::from(h[0]) << 8 | usize::from(h[1])) % LEAVES
}

/// The hash of one entry: its table, key and content.
pub fn entry_hash(table: Table, key: &[u8], content: &[u8]) -> Hash {
    let h = Sha256::new()
        .chain_update([table as u8])
        .chain_update((key.len() as u64).to_be_bytes())
        .chain_update(key)
        .chain_update(content)
        .finalize();
    h[..16].try_into().expect("a SHA-256 digest has 32 bytes")
}

fn xor(a: &mut Hash, b: &Hash) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The tree, kept as its leaves (the inner nodes are derived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    leaves: Vec<Hash>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { leaves: vec![[0; 16]; LEAVES] }
    }
}

impl Tree {
    /// Add an entry.
    pub fn add(&mut self, table: Table, key: &[u8], content: &[u8]) {
        let leaf = leaf_of(table, key);
        xor(&mut self.leaves[leaf], &entry_hash(table, key, content));
    }

    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// The hashes of `level` (0: the root; [`DEPTH`]: the leaves).
    pub fn level(&self, level: u32) -> Vec<Hash> {
        assert!(level <= DEPTH, "the tree has {DEPTH} levels below the root");
        let width = FANOUT.pow(DEPTH - level);
        self.leaves
            .chunks(width)
            .map(|c| {
                let mut h = [0; 16];
                c.iter().for_each(|l| xor(&mut h, l));
                h
            })
            .collect()
    }

    pub fn root(&self) -> Hash {
        self.level(0)[0]
    }

    /// The leaves where `self` and `other` differ, found by descending from the root
    /// through the nodes that differ only.
    pub fn differing_leaves(&self, other: &Tree) -> Vec<usize> {
        let (mine, theirs): (Vec<_>, Vec<_>) = (0..=DEPTH).map(|l| (self.level(l), other.level(l))).unzip();
        let mut frontier = vec![0usize];
        for level in 0..DEPTH as usize {
            frontier = frontier
                .into_iter()
                .filter(|&n| mine[level][n] != theirs[level][n])
                .flat_map(|n| n * FANOUT..(n + 1) * FANOUT)
                .collect();
        }
        frontier.into_iter().filter(|&l| mine[DEPTH as usize][l] != theirs[DEPTH as usize][l]).collect()
    }
}

const MAGIC: &[u8; 3] = b"CAE";
const VERSION: u8 = 1;
const KIND_TREE: u8 = 1;
const KIND_ENTRIES_REQUEST: u8 = 2;
const KIND_ENTRIES: u8 = 3;
/// The longest node name, key and entry value a message may carry.
const NAME_BYTES_MAX: usize = 256;
const KEY_BYTES_MAX: usize = 64 << 10;
const VALUE_BYTES_MAX: usize = 64 << 20;

fn header(w: &mut Writer, kind: u8) {
    w.raw(MAGIC);
    w.u8(VERSION);
    w.u8(kind);
}

fn check_header(r: &mut Reader<'_>, kind: u8) -> CoreResult<()> {
    if r.raw(3)? != MAGIC {
        return Err(CoreError::Corrupt("not an anti-entropy message".into()));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(CoreError::UnsupportedVersion { found: version, supported: VERSION });
    }
    let found = r.u8()?;
    if found != kind {
        return Err(CoreError::Corrupt(format!("anti-entropy message of kind {found}, expected {kind}")));
    }
    Ok(())
}

/// A replica's tree, with what it had applied when it was built (one read of its state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeReply {
    pub node: String,
    pub applied: VersionVector,
    pub tree: Tree,
    /// The origins the replica found void, each from a sequence on (a changeset stored
    /// after a message that is not its predecessor): the log's judgement, which a replica
    /// that never read that message cannot make. Sent only when the request's body asks
    /// (a node that predates it sends an empty body and refuses a reply that carries it).
    pub void_from: Option<VersionVector>,
}

impl TreeReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        header(&mut w, KIND_TREE);
        w.str(&self.node);
        crate::changeset::encode_vv(&mut w, &self.applied);
        w.u64(LEAVES as u64);
        for l in self.tree.leaves() {
            w.raw(l);
        }
        if let Some(void) = &self.void_from {
            crate::changeset::encode_vv(&mut w, void);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> CoreResult<TreeReply> {
        let mut r = Reader::new(bytes);
        check_header(&mut r, KIND_TREE)?;
        let node = r.string(NAME_BYTES_MAX)?;
        let applied = crate::changeset::decode_vv(&mut r)?;
        if r.len(LEAVES)? != LEAVES {
            return Err(CoreError::Corrupt(format!("a tree of another shape (this one has {LEAVES} leaves)")));
        }
        let mut tree = Tree::default();
        for l in tree.leaves.iter_mut() {
            *l = r.raw(16)?.try_into().expect("16 bytes");
        }
        let void_from = if r.remaining() > 0 { Some(crate::changeset::decode_vv(&mut r)?) } else { None };
        r.expect_end()?;
        Ok(TreeReply { node, applied, tree, void_from })
    }
}

/// Where a page of entries starts: after this table and key.
pub type Position = (Table, Vec<u8>);

/// Ask for the entries of some leaves, in (table, key) order, from after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntriesRequest {
    pub leaves: Vec<usize>,
    pub after: Option<Position>,
    /// The reply holds at most about this many bytes of entries (at least one entry).
    pub bytes_max: u64,
    /// Ask for [`EntriesReply::applied`] (a trailing byte, sent only to a node known to
    /// read it: one whose tree reply carried its void judgements).
    pub with_applied: bool,
}

impl EntriesRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        header(&mut w, KIND_ENTRIES_REQUEST);
        w.u64(self.leaves.len() as u64);
        for l in &self.leaves {
            w.u64(*l as u64);
        }
        encode_position(&mut w, self.after.as_ref());
        w.u64(self.bytes_max);
        if self.with_applied {
            w.u8(1);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> CoreResult<EntriesRequest> {
        let mut r = Reader::new(bytes);
        check_header(&mut r, KIND_ENTRIES_REQUEST)?;
        let n = r.len(LEAVES)?;
        let mut leaves = Vec::with_capacity(n);
        for _ in 0..n {
            let l = r.u64()?;
            if l >= LEAVES as u64 {
                return Err(CoreError::Corrupt(format!("leaf {l} of a tree with {LEAVES}")));
            }
            leaves.push(l as usize);
        }
        let after = decode_position(&mut r)?;
        let bytes_max = r.u64()?;
        let with_applied = match r.remaining() {
            0 => false,
            _ if r.u8()? == 1 => true,
            _ => return Err(CoreError::Corrupt("an entries request with an unknown option".into())),
        };
        r.expect_end()?;
        Ok(EntriesRequest { leaves, after, bytes_max, with_applied })
    }
}

fn encode_position(w: &mut Writer, p: Option<&Position>) {
    match p {
        None => w.u8(0),
        Some((t, k)) => {
            w.u8(*t as u8);
            w.bytes(k);
        }
    }
}

fn decode_position(r: &mut Reader<'_>) -> CoreResult<Option<Position>> {
    match r.u8()? {
        0 => Ok(None),
        t => Ok(Some((Table::from_u8(t)?, r.bytes(KEY_BYTES_MAX)?.to_vec()))),
    }
}

/// One stored entry as it travels: its table, key (the store's record key) and stored
/// bytes (a register's encoding, a saved document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A page of entries; `next` is where the next page starts (`None`: the last page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntriesReply {
    pub entries: Vec<RawEntry>,
    pub next: Option<Position>,
    /// What the replica had applied when it read the page (the same read of its state).
    /// A store can go back (a crash loses its last unsynced commits), so a page may
    /// reflect less than the tree did. Sent only when the request asks
    /// ([`EntriesRequest::with_applied`]): the field ends the message, and a node that
    /// predates it refuses a reply that carries it.
    pub applied: Option<VersionVector>,
}

impl EntriesReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        header(&mut w, KIND_ENTRIES);
        w.u64(self.entries.len() as u64);
        for e in &self.entries {
            w.u8(e.table as u8);
            w.bytes(&e.key);
            w.bytes(&e.value);
        }
        encode_position(&mut w, self.next.as_ref());
        if let Some(applied) = &self.applied {
            crate::changeset::encode_vv(&mut w, applied);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> CoreResult<EntriesReply> {
        let mut r = Reader::new(bytes);
        check_header(&mut r, KIND_ENTRIES)?;
        let n = r.len(bytes.len())?;
        let mut entries = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let table = Table::from_u8(r.u8()?)?;
            let key = r.bytes(KEY_BYTES_MAX)?.to_vec();
            let value = r.bytes(VALUE_BYTES_MAX)?.to_vec();
            entries.push(RawEntry { table, key, value });
        }
        let next = decode_position(&mut r)?;
        let applied = if r.remaining() > 0 { Some(crate::changeset::decode_vv(&mut r)?) } else { None };
        r.expect_end()?;
        Ok(EntriesReply { entries, next, applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Origin, RegionId};

    fn tree(entries: &[(&str, &str)]) -> Tree {
        let mut t = Tree::default();
        for (k, v) in entries {
            t.add(Table::Kv, k.as_bytes(), v.as_bytes());
        }
        t
    }

    #[test]
    fn equal_states_have_equal_trees_whatever_the_order() {
        let a = tree(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let b = tree(&[("c", "3"), ("a", "1"), ("b", "2")]);
        assert_eq!(a, b);
        assert!(a.differing_leaves(&b).is_empty());
        assert_ne!(a.root(), Tree::default().root());
    }

    #[test]
    fn differences_are_found_in_exactly_their_leaves() {
        let keys: Vec<String> = (0..5000).map(|i| format!("key-{i}")).collect();
        let base: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        let a = tree(&base);
        let mut changed = base.clone();
        changed[17].1 = "w"; // a value differs
        changed.remove(4000); // a key is missing
        changed.push(("new", "x")); // a key only one side has
        let b = tree(&changed);
        let mut expected: Vec<usize> =
            ["key-17", "key-4000", "new"].iter().map(|k| leaf_of(Table::Kv, k.as_bytes())).collect();
        expected.sort();
        expected.dedup();
        let mut found = a.differing_leaves(&b);
        found.sort();
        assert_eq!(found, expected);
        // A document with the same key is another entry.
        assert_ne!(entry_hash(Table::Kv, b"k", b"v"), entry_hash(Table::Docs, b"k", b"v"));
        // The key and the content do not run into each other.
        assert_ne!(entry_hash(Table::Kv, b"ab", b"c"), entry_hash(Table::Kv, b"a", b"bc"));
    }

    #[test]
    fn messages_round_trip_and_damage_is_an_error() {
        let origin = Origin::new(RegionId::new("us-east").unwrap(), 3);
        let reply = TreeReply {
            node: "us-east-1".into(),
            applied: [(origin.clone(), 42)].into_iter().collect(),
            tree: tree(&[("a", "1")]),
            void_from: None,
        };
        let bytes = reply.encode();
        assert_eq!(TreeReply::decode(&bytes).unwrap(), reply, "as an older node sends it");
        for cut in [0, 4, 10, bytes.len() - 1] {
            assert!(TreeReply::decode(&bytes[..cut]).is_err());
        }
        let with_void = TreeReply { void_from: Some([(origin, 7)].into_iter().collect()), ..reply.clone() };
        let bytes = with_void.encode();
        assert_eq!(TreeReply::decode(&bytes).unwrap(), with_void);
        assert!(TreeReply::decode(&bytes[..bytes.len() - 1]).is_err(), "a damaged vector");
        let req = EntriesRequest {
            leaves: vec![0, 17, LEAVES - 1],
            after: Some((Table::Docs, b"d\0k".to_vec())),
            bytes_max: 1 << 20,
            with_applied: false,
        };
        assert_eq!(EntriesRequest::decode(&req.encode()).unwrap(), req, "as an older node sends it");
        let asking = EntriesRequest { with_applied: true, ..req.clone() };
        assert_eq!(EntriesRequest::decode(&asking.encode()).unwrap(), asking);
        let mut unknown = asking.encode();
        *unknown.last_mut().unwrap() = 2;
        assert!(EntriesRequest::decode(&unknown).is_err(), "an option this node does not know");
        let mut bad = EntriesRequest { leaves: vec![LEAVES], ..req.clone() }.encode();
        assert!(EntriesRequest::decode(&bad).is_err(), "a leaf outside the tree");
        bad[3] = 9;
        assert!(matches!(EntriesRequest::decode(&bad), Err(CoreError::UnsupportedVersion { found: 9, .. })));
        let page = EntriesReply {
            entries: vec![RawEntry { table: Table::Kv, key: b"b\0k".to_vec(), value: vec![1, 2, 3] }],
            next: None,
            applied: None,
        };
        assert_eq!(EntriesReply::decode(&page.encode()).unwrap(), page, "as an older node sends it");
        let with_applied = EntriesReply { applied: Some(reply.applied.clone()), ..page.clone() };
        let bytes = with_applied.encode();
        assert_eq!(EntriesReply::decode(&bytes).unwrap(), with_applied);
        assert!(EntriesReply::decode(&bytes[..bytes.len() - 1]).is_err(), "a damaged vector");
        assert!(EntriesReply::decode(&req.encode()).is_err(), "another kind of message");
    }
}
