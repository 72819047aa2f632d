//! Inputs on which the fuzzers found Concord crashing, each replayed through the
//! surface that found it, kept as regression tests now that each is fixed:
//!
//! - damaged Automerge changes inside a changeset (automerge 0.12 panicked parsing or
//!   applying them): refused as dead letters (`concord_core::doc::decode_change`, and
//!   `apply_guarded`/`reloads` in the engine);
//! - a snapshot with a short conflict-index key (the next commit panicked): refused on
//!   import, and retention steps over such a key (`concord-storage`);
//! - a 365-byte change bundle on which automerge's parser allocates past 8 GB: refused
//!   before automerge parses it (`concord_core::doc`'s chunk check), as a saved
//!   document and as a document change.
//!
//! Forged but well-formed changesets (timestamps past the year 9999, values over
//! `value_bytes_max`, an epoch of the region that no counter gave out) are in
//! `crates/concord-engine/tests/forged_changesets.rs`.

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// A damaged Automerge change inside a changeset on us-east's log (found by proptest from
/// the seed `us-east.1` seq 2, a document change). `Engine::apply` → `apply_doc` →
/// `Automerge::apply_changes` panicked inside automerge 0.12.0 (an `unwrap` on `None` in
/// `op_set2/change/collector.rs` or `batch.rs`, depending on the document). In a node the
/// engine step panicked, the worker stopped the node, and a restart read the same
/// message again: every replica that read the log stopped, over and over. Now the change is
/// refused and the changeset becomes a dead letter.
#[test]
fn a_damaged_document_change_on_a_log_does_not_stop_the_consumer() {
    concord_fuzz::log_entry(&hex(concat!(
        "434353010975732d656173742e3102018c1500016403646f63035f856f4a8313bb9ff10155000975732d",
        "656173742e310101010a686c6320313030302e30000a0104020411041306150534024204560457037002",
        "00010300000103010002020000017d0002017f0178000001037f0203017f0003140102030400",
    )));
}

/// The same through eu-west's log: a 66-byte damaged change (found by proptest from the
/// seed that sets a counter). automerge 0.12.0 panicked applying it (an `unwrap` on `None`
/// in `op_set2/change/batch.rs`; applied alone to a document: an assertion in
/// `change_graph.rs`).
#[test]
fn a_damaged_document_change_from_another_region_does_not_stop_the_consumer() {
    concord_fuzz::automerge_change(&hex(concat!(
        "856f4a8335ce23790138000965752d776573742e310301010a686c6320313030302e300006150934014202",
        "5602570170027f07636f756e746572017f017f14027f00",
    )));
}

/// A snapshot whose conflict time index (`conflicts_by_time`, table 5) holds a key
/// shorter than 8 bytes, and a value whose next write conflicts (found by proptest from
/// the seed snapshot; this is the same, built small). It loaded, and the first commit
/// that wrote a conflict record panicked in `concord_storage::conflicts::retain`
/// (`k[..8]`: "range end index 8 out of range for slice of length 5"): in a node, the
/// engine step of a follower that bootstrapped from such a snapshot panicked, and again
/// after every restart. Now the snapshot is refused (its record does not fit the
/// table's layout), and retention steps over such a key. The 55 bytes:
/// `43534e02010462006b312902010965752d776573742e31d00f00010c66726f6d2065752d77657374`
/// `010965752d776573742e3101050500000000000000`.
/// 365 bytes found by the `automerge_doc` target: a change bundle (Automerge chunk type
/// 3) whose run-length-encoded op counters claim billions of ops. `Automerge::load`
/// allocated past 8 GB within a minute and the process aborted (no `catch_unwind` stops
/// that); `Change::from_bytes` parses it the same way, so as a changeset's document
/// change it aborted every replica that read the log. Refused now by a walk of the chunk
/// headers before automerge parses anything, so this replays in microseconds.
#[test]
fn a_change_bundle_that_claims_billions_of_ops_is_refused_before_automerge_parses_it() {
    let bundle = hex(concat!(
        "856f4a83bb5bb42a03c902010965752d776573742e3001665bd592f6eff3b9d253010101010101010101",
        "010101010105014101010101010101010101010101010101010101010101010101010101010134010101",
        "01732d65610d32020000021011101213152e21686c6320322e307f003207000609770256020c01080206",
        "1108130a150a2109230d340242075609570880017f007f07686c6320322e307f003207856f4a83e50203",
        "7e686c6320ffffffff2e30020002ffffff2cffffffffffffff024207560957088001027e01007e01007e",
        "04010a0002037e686c6320ffffffff2e3002000201010101010101010101010101010101010101010101",
        "010101013401010101732d65610d32020000021011101213152e2102231534044211561d572280010481",
        "01028301017f1f7f007f07686c6320322e307f003207856f4a83e5c90000010200000201017e74eff5fe",
        "fd07636f856f4a83e54a835b000004400174776f036865007f007f1f00",
    ));
    assert_eq!(bundle.len(), 365);
    let started = std::time::Instant::now();
    assert!(concord_core::doc::load_doc(&bundle).is_err());
    concord_fuzz::automerge_doc(&bundle);
    concord_fuzz::automerge_change(&bundle);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn a_snapshot_with_a_short_time_index_key_does_not_crash_the_next_commit() {
    concord_fuzz::snapshot(&short_time_key_snapshot());
}

fn short_time_key_snapshot() -> Vec<u8> {
    use concord_core::changeset::stored;
    use concord_core::codec::Writer;
    use concord_core::hlc::Hlc;
    use concord_core::ids::Origin;
    use concord_core::lww::{Register, Version};

    let eu: Origin = "eu-west.1".parse().unwrap();
    let value = Version {
        value: Some(b"from eu-west".to_vec()),
        hlc: Hlc { wall_ms: 2_000, logical: 0 },
        vv: [(eu.clone(), 1)].into_iter().collect(),
        origin: eu,
    };
    let mut w = Writer::new();
    w.raw(b"CSN");
    w.u8(2);
    w.u8(1); // kv
    w.bytes(&concord_storage::record_key("b", "k1"));
    w.bytes(&stored::encode(&Register::new(value)));
    w.u8(5); // conflicts_by_time
    w.bytes(&[0; 5]);
    w.bytes(&[]);
    w.u8(0);
    w.finish()
}

/// 108 bytes found by the `automerge_change` target in CI: a change whose op columns
/// name an object by a counter past `u32::MAX`. automerge 0.12.0's `Change::from_bytes`
/// panicked parsing it (`TryFromIntError` unwrapped in `types.rs:464`, under
/// `ObjIdIter::try_next`), before Concord's own checks of its ops ran: as a changeset's
/// document change it stopped every replica that read the log. Now the parse is guarded
/// like the expansion after it, and the changeset is a dead letter.
#[test]
fn a_change_naming_an_object_past_u32_counters_is_refused() {
    let change = hex(concat!(
        "856f4a836cc331030162000965752d7765dd732e310101010a2d6c6320313030302e30000a0104020611",
        "0413071509340242065606570570020000200601ffffffff230004030000037e000425017d0378016e01",
        "74000b03047d00040104017d0014ffff1601746578740700",
    ));
    assert_eq!(change.len(), 108);
    assert!(concord_core::doc::decode_change(change.clone()).is_err());
    concord_fuzz::automerge_change(&change);
}

/// Found by the `snapshot` target in CI (a 2041-byte input; CI printed only its first 512
/// bytes, so this is the same fault built by hand): a snapshot whose cursor for a stream is
/// `u64::MAX`. An engine opened on it computed the next position to read as the cursor
/// plus one, which overflowed (a panic in debug builds; in release a follower would have
/// asked its log for sequence 0). Now the engine refuses such state with a `Fatal`, as it
/// does an applied sequence or a void origin at the end of `u64`.
#[test]
fn a_snapshot_with_a_sequence_at_the_end_of_u64_does_not_overflow() {
    for table in [7, 8, 10] {
        let name = if table == 8 { "CONCORD_LOG_US_EAST" } else { "us-east.1" };
        concord_fuzz::snapshot(&sequence_snapshot(table, name, u64::MAX));
    }
}

fn sequence_snapshot(table: u8, name: &str, seq: u64) -> Vec<u8> {
    use concord_core::codec::Writer;
    let mut w = Writer::new();
    w.raw(b"CSN");
    w.u8(4);
    w.u8(table); // 7 applied, 8 cursors, 10 void from
    w.str(name);
    w.bytes(&seq.to_be_bytes());
    w.u8(0);
    w.finish()
}
