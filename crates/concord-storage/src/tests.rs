//! The store's own tests: batches, crashes and deferred commits, snapshots.

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
    assert!(c.applied().unwrap().is_empty() && c.get_kv("b", "k1").unwrap().is_none(), "a cut snapshot leaves nothing");
    let _ = std::fs::remove_dir_all(&base);
}
