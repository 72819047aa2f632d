//! Nothing is skipped silently, over real NATS: with us-east's leader stopped, the test
//! writes us-east's log itself (as new origins, with epochs allocated the way a leader
//! allocates them) — a gap in an origin's sequence (a message removed from the log
//! before eu-west's mirror copied it), bytes that are no changeset, a
//! document change the document refuses, then a changeset of a newer format followed
//! by the changeset that would close the gap — and watches eu-west, which reads that log
//! through its mirror:
//!
//! - the gap: the applied vector, and the session token eu-west gives out, stay below
//!   it; a token naming the missing write gets 503 `session_lag`; status names the gap;
//! - the garbage and the refused change land in the dead-letter table
//!   (`GET /v1/dead-letters`, with stream and sequence), never in the applied vector;
//! - the newer format parks the stream: status says which message and why, nothing
//!   after it is applied (not even the changeset that closes the gap), while ap-south's
//!   writes still arrive; after a restart eu-west parks at the same message again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_api::{DeadLettersBody, StatusBody};
use concord_core::changeset::{Change, ChangeBody, Changeset};
use concord_core::doc::{self, DocOp, PathElem};
use concord_core::hlc::Hlc;
use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;
use concord_tests::{Cluster, http, status};

const MIRROR: &str = "CONCORD_MIRROR_US_EAST";

/// Poll `check` until it returns `Some`, or panic after `timeout` with `what`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new epoch of `region`, allocated with compare-and-set like a starting leader does.
async fn allocate_epoch(js: &async_nats::jetstream::Context, region: &str) -> u64 {
    let kv = js.get_key_value("concord_epochs").await.unwrap();
    let entry = kv.entry(region).await.unwrap().expect("the leader allocated an epoch");
    let next: u64 = std::str::from_utf8(&entry.value).unwrap().parse::<u64>().unwrap() + 1;
    kv.update(region, next.to_string().into(), entry.revision).await.unwrap();
    next
}

fn put(origin: &Origin, seq: u64, key: &str) -> Change {
    let vv: VersionVector = [(origin.clone(), seq)].into_iter().collect();
    let body = ChangeBody::Put { value: format!("{key} by {origin}").into_bytes(), vv };
    Change { hlc: Hlc { wall_ms: 1, logical: 0 }, bucket: "skip".into(), key: key.into(), body, resolves: None }
}

fn changeset(origin: &Origin, first_seq: u64, changes: Vec<Change>) -> Bytes {
    Bytes::from(Changeset { origin: origin.clone(), first_seq, changes }.encode())
}

/// `actor`'s first change of a fresh document, setting `x` to `value`.
fn doc_change(actor: &Origin, value: i64) -> Change {
    let mut d = doc::new_doc();
    let ops = [DocOp::Set { path: vec![PathElem::Key("x".into())], value: serde_json::json!(value) }];
    let change = doc::apply_ops(&mut d, &actor.actor_bytes(), Hlc::ZERO, &ops).unwrap().unwrap();
    let body = ChangeBody::Doc { change: change.raw_bytes().to_vec() };
    Change { hlc: Hlc::ZERO, bucket: "skip".into(), key: "doc".into(), body, resolves: None }
}

async fn eu_status(cluster: &Cluster) -> StatusBody {
    status(&http(), &cluster.url("eu-west")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_dead_letters_and_newer_formats_hold_back_visibly() {
    let cluster = Cluster::start(&["us-east", "eu-west", "ap-south"]);
    let client = http();
    let (us, eu, ap) = (cluster.url("us-east"), cluster.url("eu-west"), cluster.url("ap-south"));
    assert_eq!(client.put(format!("{us}/v1/kv/skip/first")).body("1").send().await.unwrap().status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;
    cluster.kill("us-east-1");

    let nc = concord_tests::nats_connect(cluster.nats("us-east")).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let (gap, refused, future) = {
        let r = RegionId::new("us-east").unwrap();
        let e = allocate_epoch(&js, "us-east").await;
        (Origin::new(r.clone(), e), Origin::new(r.clone(), e + 1), Origin::new(r, e + 2))
    };
    let mut late = changeset(&future, 1, vec![put(&future, 1, "after-the-park")]).to_vec();
    late[3] = 9; // a format version this build does not read
    // The gap: sequence 2 of `gap` is stored between 1 and 3, then removed from the log
    // before the other regions' mirrors copy it (they are cut off meanwhile), so their
    // mirrors hold a hole there. (Stored right after 1 with nothing between, 3 would be void,
    // not waiting: its predecessor could only ever be where 1 is; see
    // `concord_engine::classify`.)
    cluster.partition("eu-west");
    cluster.partition("ap-south");
    let messages: Vec<Bytes> = vec![
        changeset(&gap, 1, vec![put(&gap, 1, "gap-1")]),
        changeset(&gap, 2, vec![put(&gap, 2, "gap-2")]), // removed below
        changeset(&gap, 3, vec![put(&gap, 3, "gap-3")]),
        Bytes::from_static(b"garbage, not a changeset"),
        changeset(&refused, 1, vec![doc_change(&refused, 1)]),
        changeset(&refused, 2, vec![doc_change(&refused, 2)]), // the same actor sequence again
        changeset(&refused, 3, vec![put(&refused, 3, "behind-the-refused")]),
        Bytes::from(late),
        changeset(&gap, 2, vec![put(&gap, 2, "gap-2")]), // would close the gap, but after the park
    ];
    let mut seqs = Vec::new();
    for m in messages {
        seqs.push(js.publish("concord.log.us-east", m).await.unwrap().await.unwrap().sequence);
    }
    let log = js.get_stream("CONCORD_LOG_US_EAST").await.unwrap();
    assert!(log.delete_message(seqs[1]).await.unwrap(), "sequence 2 of the gap is removed");
    cluster.heal();
    let (garbage_seq, refused_seq, park_seq) = (seqs[3], seqs[5], seqs[7]);

    // eu-west parks at the newer format; everything before it was taken in.
    let s = wait_for("eu-west parks its mirror of us-east", Duration::from_secs(30), || async {
        let s = eu_status(&cluster).await;
        s.streams.get(MIRROR).and_then(|m| m.parked.clone()).map(|_| s)
    })
    .await;
    let parked = s.streams[MIRROR].parked.clone().unwrap();
    assert_eq!(parked.seq, park_seq);
    assert!(parked.reason.contains("version 9"), "{}", parked.reason);
    assert_eq!(s.streams[MIRROR].cursor, park_seq - 1, "the cursor stays before the parked message");

    // The gap: the applied vector and the token stay below it, even with its filler in the log.
    assert_eq!(s.applied.get(&gap.to_string()), Some(&1));
    let gap_shown = s.gaps.iter().any(|g| g.origin == gap.to_string() && g.applied == 1 && g.next_waiting == 3);
    assert!(gap_shown, "status names the gap of {gap}: {:?}", s.gaps);
    let resp = client.get(format!("{eu}/v1/kv/skip/gap-1")).send().await.unwrap();
    let token = resp.headers()["concord-token"].to_str().unwrap().to_string();
    assert!(token.contains(&format!("{gap}=1")), "the token claims no more than applied: {token}");
    assert_eq!(resp.text().await.unwrap(), format!("gap-1 by {gap}"));
    for key in ["gap-3", "gap-2", "after-the-park"] {
        let r = client.get(format!("{eu}/v1/kv/skip/{key}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{key} must not be applied");
    }
    let lagging = client
        .get(format!("{eu}/v1/kv/skip/gap-1?wait_ms=300"))
        .header("concord-token", format!("v1:{gap}=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(lagging.status(), 503);
    let body: concord_api::ErrorBody = lagging.json().await.unwrap();
    assert_eq!(body.code, concord_api::ErrorCode::SessionLag);
    assert_eq!(body.behind.unwrap()[&gap.to_string()].applied, 1);

    // The dead letters: where they came from and why; never claimed.
    assert_eq!(s.applied.get(&refused.to_string()), Some(&1), "the refused change is not claimed");
    assert!(s.gaps.iter().any(|g| g.origin == refused.to_string()), "what follows it waits");
    assert!(s.dead_letters >= 2);
    let letters: DeadLettersBody =
        client.get(format!("{eu}/v1/dead-letters")).send().await.unwrap().json().await.unwrap();
    let at = |seq: u64| letters.dead_letters.iter().find(|d| d.stream == MIRROR && d.seq == seq);
    let garbage = at(garbage_seq).expect("the garbage is a dead letter");
    assert!(garbage.reason.contains("magic"), "{}", garbage.reason);
    let refusal = at(refused_seq).expect("the refused change is a dead letter");
    assert!(refusal.reason.contains("refused"), "{}", refusal.reason);
    assert_eq!(refusal.origin.as_deref(), Some(refused.to_string().as_str()));

    // Other regions' streams go on.
    let w = client.put(format!("{ap}/v1/kv/skip/from-ap-south")).body("ap").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let token = w.headers()["concord-token"].to_str().unwrap().to_string();
    let read = client.get(format!("{eu}/v1/kv/skip/from-ap-south?wait_ms=10000")).header("concord-token", token);
    assert_eq!(read.send().await.unwrap().text().await.unwrap(), "ap");
    let metrics = client.get(format!("{eu}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("concord_parked_streams{") && l.ends_with(" 1")), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("concord_origin_gaps{") && !l.ends_with(" 0")));
    // The dead letters are counted: the counter of this run and the gauge of all time.
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("concord_dead_letters_total") >= 2, "the garbage and the refusal are counted");
    assert_eq!(value("concord_dead_letters_recorded"), s.dead_letters, "the gauge is what status says");

    // After a restart: the same park, the same gaps (the cursor stayed; waiting is durable).
    cluster.kill("eu-west-1");
    cluster.start_again("eu-west-1");
    let s = wait_for("eu-west parks again after a restart", Duration::from_secs(60), || async {
        let r = client.get(format!("{eu}/v1/status")).send().await.ok()?;
        let s: StatusBody = r.json().await.ok()?;
        s.streams.get(MIRROR).and_then(|m| m.parked.clone()).map(|_| s)
    })
    .await;
    assert_eq!(s.streams[MIRROR].parked.as_ref().unwrap().seq, park_seq);
    assert_eq!(s.applied.get(&gap.to_string()), Some(&1));
    assert!(s.gaps.iter().any(|g| g.origin == gap.to_string()));
}
