//! Changes made elsewhere ([`WriteOp::DocChanges`]: a local-first client's, synced to a
//! node): a leader applies them as they are, all or none, and writes each to its log as
//! a change of its own origin; changes it cannot take are refused and change nothing;
//! concurrent client edits of one property open a conflict record.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc};
use bytes::Bytes;
use concord_core::changeset::{ChangeBody, Changeset};
use concord_core::doc;
use concord_core::ids::RegionId;
use concord_engine::{
    AppendOutcome, CatchUp, CaughtUp, Engine, EngineConfig, MemStore, StartAs, WriteError, WriteOp, WriteRequest,
};

fn leader() -> (Engine, MemStore) {
    let region = RegionId::new("us-east").unwrap();
    let cfg = EngineConfig::new(region.clone(), "LOG_us".into(), BTreeMap::from([("LOG_us".to_string(), region)]));
    let store = MemStore::default();
    let mut engine = Engine::open(cfg, store.durable(), StartAs::Leader).unwrap();
    assert_eq!(engine.catch_up_next(0, 1), CatchUp::Done);
    assert_eq!(engine.caught_up(0).0, CaughtUp::NeedEpoch);
    engine.start_writing(1);
    (engine, store)
}

fn changes(list: &[&[u8]]) -> WriteOp {
    let changes = list.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    WriteOp::DocChanges { bucket: "sync".into(), key: "doc".into(), changes }
}

/// Write `ops` as one batch; the replies, and the changeset appended (stored and
/// committed), if any.
fn write(
    engine: &mut Engine,
    store: &mut MemStore,
    ops: Vec<WriteOp>,
) -> (Vec<Result<(), WriteError>>, Option<Changeset>) {
    let writes: Vec<WriteRequest> =
        ops.into_iter().enumerate().map(|(i, op)| WriteRequest { id: i as u64, op, resolves: None }).collect();
    let facts = store.load(&engine.write_needs(&writes));
    let mut out = engine.write(writes, &facts, 5_000).unwrap();
    let mut replies: Vec<_> = out.replies.drain(..).collect();
    let mut appended = None;
    if let Some(a) = out.append.take() {
        appended = Some(Changeset::decode(&a.payload).unwrap());
        let done = engine.append_done(AppendOutcome::Stored { stream_seq: engine.cursor("LOG_us") + 1 });
        store.commit(done.commit.as_ref().unwrap());
        replies.extend(done.replies);
    }
    assert_eq!(engine.validate(), Ok(()));
    replies.sort_by_key(|(id, _)| *id);
    (replies.into_iter().map(|(_, r)| r.map(|_| ())).collect(), appended)
}

fn stored(store: &MemStore) -> automerge::Automerge {
    doc::load_doc(&store.docs[&("sync".to_string(), "doc".to_string())]).unwrap()
}

fn client(actor: u8) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(vec![actor; 16]))
}

#[test]
fn a_clients_changes_apply_as_they_are_all_or_none_and_go_to_the_log_in_order() {
    let (mut engine, mut store) = leader();
    let mut a = client(1);
    a.put(ROOT, "title", "draft").unwrap();
    let first = a.get_last_local_change().unwrap().raw_bytes().to_vec();
    a.put(ROOT, "title", "final").unwrap();
    let second = a.get_last_local_change().unwrap().raw_bytes().to_vec();

    // The second alone depends on a change the document does not have.
    let (replies, appended) = write(&mut engine, &mut store, vec![changes(&[&second])]);
    assert!(matches!(&replies[..], [Err(WriteError::Invalid(m))] if m.contains("depend on")), "{replies:?}");
    assert!(appended.is_none() && store.docs.is_empty(), "nothing written, nothing stored");

    // Both, in either order, in one write: each its own change of the changeset.
    let (replies, appended) = write(&mut engine, &mut store, vec![changes(&[&second, &first])]);
    assert_eq!(replies, vec![Ok(())]);
    let cs = appended.expect("appended");
    assert_eq!(cs.origin.to_string(), "us-east.1", "changes of the leader's origin");
    let bodies: Vec<_> = cs.changes.iter().map(|c| c.body.clone()).collect();
    assert_eq!(bodies, vec![ChangeBody::Doc { change: second.clone() }, ChangeBody::Doc { change: first.clone() }]);
    assert_eq!(stored(&store).get_heads(), a.get_heads(), "the stored document is the client's");

    // Again: the document has them; nothing is written.
    let (replies, appended) = write(&mut engine, &mut store, vec![changes(&[&first, &second])]);
    assert_eq!((replies, appended.is_none()), (vec![Ok(())], true));

    // A write with bytes that are no change is refused whole; the batch's other write stays.
    a.put(ROOT, "n", 1).unwrap();
    let third = a.get_last_local_change().unwrap().raw_bytes().to_vec();
    a.put(ROOT, "n", 2).unwrap();
    let fourth = a.get_last_local_change().unwrap().raw_bytes().to_vec();
    let junk: &[u8] = b"\x85\x6f\x4a\x83junk";
    let (replies, appended) = write(&mut engine, &mut store, vec![changes(&[&third]), changes(&[&fourth, junk])]);
    assert!(
        matches!(&replies[..], [Ok(()), Err(WriteError::Invalid(m))] if m.contains("does not decode")),
        "{replies:?}"
    );
    assert_eq!(appended.expect("the good one").changes.len(), 1);
    assert!(stored(&store).get_change_by_hash(&a.get_last_local_change().unwrap().hash()).is_none());
    let (replies, _) = write(&mut engine, &mut store, vec![changes(&[&fourth])]);
    assert_eq!(replies, vec![Ok(())]);
    assert_eq!(stored(&store).get_heads(), a.get_heads());
}

#[test]
fn two_clients_setting_one_property_concurrently_open_a_conflict() {
    let (mut engine, mut store) = leader();
    let mut a = client(1);
    a.put(ROOT, "title", "start").unwrap();
    let base = a.get_last_local_change().unwrap().raw_bytes().to_vec();
    let mut b = client(2);
    b.load_incremental(&base).unwrap();
    a.put(ROOT, "title", "from a").unwrap();
    b.put(ROOT, "title", "from b").unwrap();
    let ca = a.get_last_local_change().unwrap().raw_bytes().to_vec();
    let cb = b.get_last_local_change().unwrap().raw_bytes().to_vec();
    write(&mut engine, &mut store, vec![changes(&[&base, &ca])]);
    assert!(store.open.is_empty(), "one writer so far");
    write(&mut engine, &mut store, vec![changes(&[&cb])]);
    assert_eq!(store.open.len(), 1, "the property is conflicted");
    let record = store.conflicts.values().next().unwrap();
    assert_eq!(record.path.as_ref().map(|p| p.len()), Some(1));
    assert_eq!(record.versions.len(), 2, "{record:?}");
    let d = stored(&store);
    assert_eq!(d.get_all(ROOT, "title").unwrap().len(), 2);
}
