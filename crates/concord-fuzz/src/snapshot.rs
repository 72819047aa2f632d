//! Snapshots (`GET /v1/snapshot`): what a new follower loads from its leader when the
//! log no longer holds everything, then reads and applies on top of.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use concord_core::doc;
use concord_engine::{Engine, Needs, StartAs};
use concord_storage::{ConflictQuery, Store, check_snapshot_header};

use crate::replica::{self, MIRROR, OWN, entry};
use crate::scratch::ScratchStore;
use crate::seeds;

/// `check_snapshot_header` and `Store::import_snapshot` into an empty store: refused
/// with the store left empty, or loaded; then every reader of every table answers or
/// errs without a panic, the engine opens from it or refuses with a `Fatal`, applies
/// changesets on top or refuses with a `Fatal`; and a loaded snapshot exports to bytes
/// that import and export to the same bytes again.
pub fn snapshot(data: &[u8]) {
    let header_ok = check_snapshot_header(data).is_ok();
    let target = ScratchStore::new();
    if target.store.import_snapshot(data).is_err() {
        let after = target.store.export_snapshot().expect("an empty store exports");
        assert_eq!(after, empty_snapshot(), "a refused snapshot leaves nothing behind");
        return;
    }
    assert!(header_ok, "a snapshot that loads has a valid header");
    let exported = target.store.export_snapshot().expect("a loaded store exports");
    let copy = ScratchStore::new();
    copy.store.import_snapshot(&exported).expect("an exported snapshot loads");
    assert_eq!(copy.store.export_snapshot().expect("a loaded store exports"), exported, "export is stable");
    read_everything(&target.store);
    apply_on_top(&target.store);
}

fn empty_snapshot() -> &'static [u8] {
    static EMPTY: OnceLock<Vec<u8>> = OnceLock::new();
    EMPTY.get_or_init(|| ScratchStore::new().store.export_snapshot().expect("an empty store exports"))
}

/// Every reader the node and its API use, on the keys the seeds hold.
fn read_everything(store: &Store) {
    let _ = store.applied();
    let _ = store.cursors();
    let _ = store.waiting();
    let _ = store.last_dead_letter();
    let _ = store.dead_letters(None, 100);
    let _ = store.conflict_count();
    let _ = store.pending_docs();
    let _ = store.list_conflicts(&ConflictQuery { limit: 100, ..ConflictQuery::default() });
    for bucket in ["b", "other"] {
        for key in store.list_kv(bucket, "", None, 1_000).unwrap_or_default() {
            let _ = store.get_kv(bucket, &key);
            let _ = store.open_conflict(bucket, &key, None);
        }
    }
    if let Ok(Some(saved)) = store.get_doc("d", "doc")
        && let Ok(d) = doc::load_doc(&saved)
    {
        let _ = doc::to_json(&d);
        let _ = doc::conflicts(&d);
    }
    let _ = store.get_pending("d", "doc");
    let _ = store.open_conflicts_of("d", "doc");
    let needs = Needs {
        kv: BTreeSet::from([("b".to_string(), "k1".to_string()), ("b".to_string(), "k2".to_string())]),
        docs: BTreeSet::from([("d".to_string(), "doc".to_string())]),
        records: BTreeSet::new(),
    };
    let _ = store.load(&needs);
}

/// A follower opens from the loaded state and applies the seeds' changesets on top, as
/// after a bootstrap: corrupt state stops it with a `Fatal`, never a panic.
fn apply_on_top(store: &Store) {
    let Ok(durable) = store.durable() else { return };
    let Ok(mut engine) = Engine::open(replica::config(), durable, StartAs::Follower) else { return };
    let changesets = seeds::changesets();
    for (stream, cs) in [(OWN, &changesets[0]), (MIRROR, &changesets[2]), (OWN, &changesets[3])] {
        let seq = engine.cursor(stream) + 1;
        let prepared = engine.prepare(stream, vec![entry(seq, cs.encode())], 20_000);
        let Ok(facts) = store.load(prepared.needs()) else { return };
        let Ok(out) = engine.apply(prepared, &facts) else { return };
        assert_eq!(engine.validate(), Ok(()), "the engine's invariants hold after a step (the node checks them)");
        if let Some(batch) = &out.commit
            && store.commit(batch).is_err()
        {
            return;
        }
    }
}
