//! Point-in-time restore: replication is no backup, a bad delete replicates everywhere,
//! and a backup restored to a point before it brings the deleted values back.
//!
//! Two regions with a follower each. Keys and a document are written (in both regions),
//! us-east's follower is backed up, more is written (in both regions: these must be in
//! the restored state), the time is noted, then a bad delete of several keys and an
//! overwrite of a document property in us-east, then more writes (in both: these must
//! not be in the restored state). The backup is restored to the point by time and by
//! the bad delete's log sequence (found with `concord inspect log`), into two data
//! directories: each holds the deleted keys with their values and the writes between
//! backup and point, and none of the writes after it, in both regions' data (so the
//! region's log and its mirror of eu-west are both cut). No node starts on a restored
//! directory; `concord restore --write-back` puts the values back into the live
//! deployment, which then reads them in both regions. A point before the backup, a
//! write-back from a plain restore, and a log that no longer holds what follows the
//! backup are refused; a restore without a point works as before.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_tests::{Cluster, Nats, Node, TempDir, concord_bin, http};
use serde_json::{Value, json};

const DELETED: std::ops::Range<usize> = 0..6;

fn concord(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(concord_bin()).args(args).env("CONCORD_TOKEN", concord_tests::TEST_TOKEN).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Milliseconds since 1970 as RFC 3339 (UTC, to the millisecond).
fn rfc3339(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// A write; returns its HLC wall time.
async fn put(c: &reqwest::Client, url: &str, key: &str, value: &str) -> u64 {
    let r = c.put(format!("{url}/v1/kv/b/{key}")).body(value.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200, "PUT {key}");
    r.json::<Value>().await.unwrap()["hlc"]["wall_ms"].as_u64().unwrap()
}

async fn del(c: &reqwest::Client, url: &str, key: &str) {
    let r = c.delete(format!("{url}/v1/kv/b/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "DELETE {key}");
}

async fn doc_ops(c: &reqwest::Client, url: &str, ops: Value) -> u64 {
    let r = c.post(format!("{url}/v1/docs/docs/cart")).json(&json!({ "ops": ops })).send().await.unwrap();
    assert_eq!(r.status(), 200, "POST docs/cart");
    r.json::<Value>().await.unwrap()["hlc"]["wall_ms"].as_u64().unwrap()
}

async fn get(c: &reqwest::Client, url: &str, key: &str) -> Option<String> {
    let r = c.get(format!("{url}/v1/kv/b/{key}")).send().await.unwrap();
    match r.status().as_u16() {
        200 => Some(r.text().await.unwrap()),
        404 => None,
        s => panic!("GET {key}: {s}"),
    }
}

/// Poll until `url` reads `want` for `key`, or panic after 30 s.
async fn wait_value(c: &reqwest::Client, url: &str, key: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(c, url, key).await;
        if got.as_deref() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{url}: {key} reads {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inspect(dir: &str, args: &[&str]) -> Option<String> {
    let (ok, out, _) = concord(&[&["inspect", "--data-dir", dir], args].concat());
    ok.then(|| out.trim_end().to_string())
}

/// What a directory restored to the point must hold: the backup's data, the writes
/// between backup and point (both regions'), none of the bad delete, none after it.
fn check_restored(dir: &str) {
    for i in 0..10 {
        let want = match i {
            1 => "v1-updated".to_string(),
            _ => format!("v{i}"),
        };
        assert_eq!(inspect(dir, &["kv", "b", &format!("k{i}")]), Some(want), "{dir}: k{i}");
    }
    for i in 0..3 {
        assert_eq!(inspect(dir, &["kv", "b", &format!("mid{i}")]).as_deref(), Some("between"), "{dir}: mid{i}");
    }
    assert_eq!(inspect(dir, &["kv", "b", "e0"]).as_deref(), Some("e0"), "{dir}: eu-west's overwrite after the point");
    assert_eq!(inspect(dir, &["kv", "b", "e1"]).as_deref(), Some("between"), "{dir}: eu-west's write before the point");
    assert_eq!(inspect(dir, &["kv", "b", "e2"]), None, "{dir}: eu-west's write after the point");
    assert_eq!(inspect(dir, &["kv", "b", "late"]), None, "{dir}: us-east's write after the point");
    let keys = inspect(dir, &["ls", "b"]).unwrap();
    let want: Vec<String> = ["e0", "e1"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..10).map(|i| format!("k{i}")))
        .chain((0..3).map(|i| format!("mid{i}")))
        .collect();
    assert_eq!(keys.lines().collect::<Vec<_>>(), want, "{dir}: the keys at the point");
    let doc: Value = serde_json::from_str(&inspect(dir, &["doc", "docs", "cart"]).unwrap()).unwrap();
    assert_eq!(doc, json!({"owner": "alice", "items": {"apple": 1}, "visits": 5, "note": "between"}), "{dir}");
    let state = inspect(dir, &["state"]).unwrap();
    assert!(state.contains("restored to a point") && state.contains("Complete"), "{state}");
}

/// Start a node on `dir`; it must exit at once with an error (its stderr is returned).
fn serve_refused(nats: &str, dir: &str) -> String {
    let mut node = Command::new(concord_bin())
        .args(["serve", "--node", "us-east-9", "--role", "follower", "--http", "127.0.0.1:0", "--nats", nats])
        .args(["--data-dir", dir])
        .env("CONCORD_REGION", "us-east")
        .env("CONCORD_API_TOKEN", concord_tests::TEST_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            panic!("a node started on the restored directory {dir}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_point_before_a_bad_delete_brings_the_values_back() {
    let started = Instant::now();
    let before_everything = now_ms();
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 1, &[]);
    let c = http();
    let (us, eu, follower) = (cluster.url("us-east"), cluster.url("eu-west"), cluster.nodes["us-east-2"].clone());
    let nats = cluster.nats("us-east");
    let root = cluster.dir.0.clone();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();

    // Before the backup.
    for i in 0..10 {
        put(&c, &us, &format!("k{i}"), &format!("v{i}")).await;
    }
    put(&c, &eu, "e0", "e0").await;
    let ops = json!([{"op": "set", "path": ["owner"], "value": "alice"}, {"op": "set", "path": ["items"], "value": {"apple": 1}},
                     {"op": "inc", "path": ["visits"], "by": 3}]);
    doc_ops(&c, &us, ops).await;
    cluster.wait_converged(Duration::from_secs(60)).await;
    wait_value(&c, &follower, "e0", Some("e0")).await;
    wait_value(&c, &follower, "k9", Some("v9")).await;
    let backup = path("us-east.backup");
    let (ok, _, err) = concord(&["backup", "--endpoint", &follower, "--out", &backup]);
    assert!(ok, "{err}");

    // Between the backup and the point: in the restored state.
    let mut between_ms = 0;
    for i in 0..3 {
        between_ms = between_ms.max(put(&c, &us, &format!("mid{i}"), "between").await);
    }
    between_ms = between_ms.max(put(&c, &us, "k1", "v1-updated").await);
    between_ms = between_ms.max(put(&c, &eu, "e1", "between").await);
    let ops = json!([{"op": "set", "path": ["note"], "value": "between"}, {"op": "inc", "path": ["visits"], "by": 2}]);
    between_ms = between_ms.max(doc_ops(&c, &us, ops).await);
    cluster.wait_converged(Duration::from_secs(60)).await;
    // The operator notes the time: every write so far was made before it.
    while now_ms() <= between_ms {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let point = rfc3339(now_ms());

    // The bad delete (and a document overwritten), then writes after it in both regions.
    for i in DELETED {
        del(&c, &us, &format!("k{i}")).await;
    }
    doc_ops(
        &c,
        &us,
        json!([{"op": "set", "path": ["owner"], "value": "mallory"}, {"op": "del", "path": ["items", "apple"]}]),
    )
    .await;
    put(&c, &us, "late", "after").await;
    put(&c, &us, "k7", "v7-after").await;
    put(&c, &eu, "e2", "after").await;
    put(&c, &eu, "e0", "e0-after").await;
    doc_ops(&c, &us, json!([{"op": "set", "path": ["after"], "value": true}])).await;
    cluster.wait_converged(Duration::from_secs(60)).await;
    wait_value(&c, &eu, "k0", None).await;

    // The bad delete's sequence in us-east's log.
    let (ok, out, err) =
        concord(&["inspect", "log", "--nats", &nats, "--region", "us-east", "--bucket", "b", "--key", "k0"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.contains("delete b/k0")).unwrap_or_else(|| panic!("no delete of k0 in:\n{out}"));
    let bad_seq: u64 = line.split_whitespace().next().unwrap().parse().unwrap();

    // Restore to the point, by time and by sequence.
    let (by_time, by_seq) = (path("restored-by-time"), path("restored-by-seq"));
    let point_flags: [[&str; 2]; 2] = [["--until-time", &point], ["--until-seq", &bad_seq.to_string()]];
    for (dir, flags) in [(&by_time, point_flags[0]), (&by_seq, point_flags[1])] {
        let args =
            [&["restore", "--from", &backup, "--data-dir", dir, "--nats", &nats, "--region", "us-east"], &flags[..]];
        let (ok, out, err) = concord(&args.concat());
        assert!(ok, "restore {flags:?}: {err}");
        eprintln!("restore {flags:?}:\n{out}");
        assert!(out.contains(&format!("stopped before message {bad_seq}, the first at or after the point")), "{out}");
        assert!(out.contains("CONCORD_MIRROR_EU_WEST (eu-west)"), "the mirror is replayed too: {out}");
        check_restored(dir);
    }

    // No node starts on a restored directory: it would catch up past the point.
    let said = serve_refused(&nats, &by_time);
    assert!(said.contains("restored-until.json") && said.contains("catch up"), "{said}");

    // The recovery: a dry run writes nothing; then the deleted keys (only those) and the
    // document's properties are written back, and both regions read them.
    let wb = ["restore", "--data-dir", &by_seq, "--write-back", &us];
    let (ok, out, err) = concord(&[&wb[..], &["--bucket", "b", "--dry-run"]].concat());
    assert!(ok && out.contains("put b/k0 ") && out.contains("put b/k7 "), "{out}{err}");
    assert_eq!(get(&c, &us, "k0").await, None, "a dry run writes nothing");
    let (ok, out, err) = concord(&[&wb[..], &["--bucket", "b", "--missing-only"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains(&format!("wrote back {} keys", DELETED.len())), "{out}");
    let (ok, out, err) = concord(&[&wb[..], &["--bucket", "docs"]].concat());
    assert!(ok && out.contains("doc docs/cart: 2 operations"), "{out}{err}");
    for url in [&us, &eu] {
        for i in DELETED {
            let want = if i == 1 { "v1-updated".to_string() } else { format!("v{i}") };
            wait_value(&c, url, &format!("k{i}"), Some(&want)).await;
        }
        wait_value(&c, url, "k7", Some("v7-after")).await;
        wait_value(&c, url, "late", Some("after")).await;
    }
    let live: Value = c.get(format!("{us}/v1/docs/docs/cart")).send().await.unwrap().json().await.unwrap();
    assert_eq!(live, json!({"owner": "alice", "items": {"apple": 1}, "visits": 5, "note": "between", "after": true}));

    // Refused: a point before the backup (by time, and by a sequence it holds), a
    // write-back from a restore without a point. A restore without a point works as before.
    let early = rfc3339(before_everything);
    for (name, flag, value) in [("early-time", "--until-time", early.as_str()), ("early-seq", "--until-seq", "1")] {
        let dir = path(name);
        let args =
            ["restore", "--from", &backup, "--data-dir", &dir, "--nats", &nats, "--region", "us-east", flag, value];
        let (ok, _, err) = concord(&args);
        assert!(!ok && err.contains("restore from an older backup") && err.contains("CONCORD_LOG_US_EAST"), "{err}");
    }
    let plain = path("plain");
    let (ok, out, err) = concord(&["restore", "--from", &backup, "--data-dir", &plain]);
    assert!(ok && out.contains("catches up from the logs"), "{out}{err}");
    assert!(!root.join("plain").join("restored-until.json").exists());
    let (ok, _, err) = concord(&["restore", "--data-dir", &plain, "--write-back", &us, "--bucket", "b"]);
    assert!(!ok && err.contains("was not restored to a point"), "{err}");
    eprintln!("restore_point: passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_point_stops_when_the_log_no_longer_holds_what_follows_the_backup() {
    let dir = TempDir::new("restore-retention");
    let nats = Nats::start(&dir.0);
    let leader = Node::start_with(&dir.0, "us-east", &nats.url(), &[("CONCORD_LOG_MAX_MSGS", "5")]);
    let c = http();
    let url = leader.url();
    for i in 0..5 {
        put(&c, &url, &format!("k{i}"), "before").await;
    }
    let backup = dir.0.join("b.backup").to_str().unwrap().to_string();
    let (ok, _, err) = concord(&["backup", "--endpoint", &url, "--out", &backup]);
    assert!(ok, "{err}");
    for i in 0..10 {
        put(&c, &url, &format!("k{i}"), "after").await;
    }
    let target = dir.0.join("restored").to_str().unwrap().to_string();
    let point = rfc3339(now_ms());
    let args = ["restore", "--from", &backup, "--data-dir", &target, "--nats", &nats.url(), "--region", "us-east"];
    let (ok, _, err) = concord(&[&args[..], &["--until-time", &point]].concat());
    assert!(!ok && err.contains("no longer holds sequences") && err.contains("retention removed"), "{err}");
    assert!(err.contains("holds the backup's state as loaded"), "{err}");
    drop(leader);
}
