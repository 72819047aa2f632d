//! A digest of every replica's final state (FNV-1a, 64 bits: stable across builds and
//! platforms), so that one seed's run can be compared with another run of it.

use concord_core::changeset::stored;
use concord_engine::MemStore;

use crate::check::doc_view;

pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash one replica's committed state: applied vector, cursors, registers, the shared
/// document (JSON and heads), the conflict log, dead letters and waiting changesets.
pub fn replica(h: &mut Fnv, name: &str, store: &MemStore) {
    h.write(name.as_bytes());
    h.write(format!("{:?}", store.applied).as_bytes());
    h.write(format!("{:?}", store.cursors).as_bytes());
    for ((bucket, key), register) in &store.kv {
        h.write(bucket.as_bytes());
        h.write(key.as_bytes());
        h.write(&stored::encode(register));
    }
    if let Some((json, heads)) = doc_view(store) {
        h.write(json.to_string().as_bytes());
        h.write(format!("{heads:?}").as_bytes());
    }
    for record in store.conflicts.values() {
        h.write(serde_json::to_string(record).expect("a record serializes").as_bytes());
    }
    for letter in store.dead_letters.values() {
        h.write(format!("{letter:?}").as_bytes());
    }
    for key in store.waiting.keys() {
        h.write(format!("{key:?}").as_bytes());
    }
    h.write(format!("{:?}", store.void_from).as_bytes());
}
