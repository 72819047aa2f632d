//! `concord backup` and `concord restore`: a follower's state written to a file (checked
//! before it is renamed into place), loaded into an empty data directory, and a new
//! follower started on it, which holds the backup's data and catches up from the log
//! with what was written after it (a delete included). The log keeps only its last 10
//! messages, so a node started empty would have to load its leader's snapshot: this one
//! does not. Bad backups are refused, and a backup that fails leaves no file.

use std::process::Command;

use concord_tests::{Nats, Node, TempDir, concord_bin, http};

fn concord(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(concord_bin()).args(args).env("CONCORD_TOKEN", concord_tests::TEST_TOKEN).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a backup or restore says it applied of us-east's first epoch.
fn applied_in(out: &str) -> u64 {
    let at = out.find("us-east.1=").unwrap_or_else(|| panic!("no applied vector in {out:?}"));
    out[at + "us-east.1=".len()..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_node_that_catches_up() {
    let dir = TempDir::new("backup");
    let nats = Nats::start(&dir.0);
    let retention = [("CONCORD_LOG_MAX_MSGS", "10")];
    let leader = Node::start_with(&dir.0, "us-east", &nats.url(), &retention);
    let follower = Node::start_as(&dir.0, "us-east-2", "follower", "us-east", &nats.url(), &retention);
    let client = http();
    let (l, f) = (leader.url(), follower.url());
    let mut token = String::new();
    for i in 0..20 {
        let w = client.put(format!("{l}/v1/kv/b/k{i}")).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(w.status(), 200);
        token = w.headers()["concord-token"].to_str().unwrap().to_string();
    }
    // The follower holds all twenty before the backup is taken.
    let r = client.get(format!("{f}/v1/kv/b/k19?wait_ms=10000")).header("concord-token", &token).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v19");

    let file = dir.0.join("us-east.backup");
    let (ok, out, err) = concord(&["backup", "--endpoint", &f, "--out", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    // The backup holds every write (its origin's sequences count the leader's marks too).
    let written = concord_core::token::decode(&token).unwrap().iter().map(|(_, s)| s).max().unwrap();
    assert!(written >= 20);
    let backed_up = applied_in(&out);
    assert!(backed_up >= written, "{out}");
    assert!(file.exists() && !dir.0.join("us-east.backup.partial").exists());
    // Its progress on stderr (a line every 5 s when not a terminal) ends complete: the
    // download, then the check that loads it.
    let done = |err: &str, what: &str| err.lines().any(|l| l.trim_start().starts_with(what) && l.contains("100%"));
    assert!(done(&err, "backup") && err.contains(" MiB/s"), "{err}");
    assert!(done(&err, "check") && err.contains("MiB loaded"), "{err}");

    // After the backup: one more key, and a delete.
    let w = client.put(format!("{l}/v1/kv/b/late")).body("after the backup").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let d = client.delete(format!("{l}/v1/kv/b/k0")).send().await.unwrap();
    assert_eq!(d.status(), 200);
    let after = d.headers()["concord-token"].to_str().unwrap().to_string();

    // Restore into the data directory of a new follower, then start it.
    let data = dir.0.join("data").join("us-east-3");
    let (ok, out, err) = concord(&["restore", "--from", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(applied_in(&out), backed_up, "the restored node holds what the backup held: {out}");
    assert!(err.lines().any(|l| l.contains("100%") && l.contains("MiB loaded")), "restore's progress: {err}");
    let (ok, _, err) = concord(&["restore", "--from", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!ok && err.contains("holds a node's state already"), "a second restore into the same directory: {err}");
    let restored = Node::start_as(&dir.0, "us-east-3", "follower", "us-east", &nats.url(), &retention);
    let n = restored.url();
    let r = client.get(format!("{n}/v1/kv/b/late?wait_ms=10000")).header("concord-token", &after).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "after the backup", "caught up from the log");
    for i in 1..20 {
        assert_eq!(
            client.get(format!("{n}/v1/kv/b/k{i}")).send().await.unwrap().text().await.unwrap(),
            format!("v{i}")
        );
    }
    assert_eq!(
        client.get(format!("{n}/v1/kv/b/k0")).send().await.unwrap().status(),
        404,
        "the delete after the backup"
    );
    let log = std::fs::read_to_string(dir.0.join("us-east-3.log")).unwrap();
    assert!(!log.contains("the leader's snapshot"), "it started from the backup, not its leader's snapshot:\n{log}");

    // A damaged backup is refused, and leaves the directory empty for a good one.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = dir.0.join("damaged.backup");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.0.join("empty");
    let (ok, _, err) =
        concord(&["restore", "--from", damaged.to_str().unwrap(), "--data-dir", empty.to_str().unwrap()]);
    assert!(!ok && err.contains("loading"), "{err}");
    let (ok, _, err) = concord(&["restore", "--from", file.to_str().unwrap(), "--data-dir", empty.to_str().unwrap()]);
    assert!(ok, "after a refused restore the directory takes a good one: {err}");

    // A backup from a node that is not there writes nothing.
    let gone = dir.0.join("gone.backup");
    let (ok, _, _) = concord(&["backup", "--endpoint", "http://127.0.0.1:9", "--out", gone.to_str().unwrap()]);
    assert!(!ok);
    assert!(!gone.exists() && !dir.0.join("gone.backup.partial").exists());
    drop((leader, follower, restored));
}
