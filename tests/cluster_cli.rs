//! `concord cluster up|kill|start` and the client commands, as a user runs them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_tests::{TempDir, concord_bin};
use serde_json::Value;

fn concord(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(concord_bin()).args(args).env("CONCORD_TOKEN", concord_tests::TEST_TOKEN).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cluster_up_kill_start_and_the_client_commands() {
    let dir = TempDir::new("cluster");
    let d = dir.0.to_str().unwrap();
    // Every port of the deployment free, and below the kernel's ephemeral range (the
    // OS's free ports there may go to an outgoing connection before a server binds them).
    let offset = concord_tests::free_cluster_offset(1).to_string();
    let log = std::fs::File::create(dir.0.join("up.log")).unwrap();
    let mut up = Command::new(concord_bin())
        .args(["cluster", "up", "--dir", d, "--regions", "us-east", "--port-offset", &offset])
        .current_dir(concord_tests::repo_root())
        .env("CONCORD_API_TOKEN", concord_tests::TEST_TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let cluster_json = dir.0.join("cluster.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cluster_json.exists() {
        let early = || std::fs::read_to_string(dir.0.join("up.log")).unwrap_or_default();
        assert!(up.try_wait().unwrap().is_none(), "cluster up exited early:\n{}", early());
        assert!(Instant::now() < deadline, "cluster.json never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cluster: Value = serde_json::from_slice(&std::fs::read(&cluster_json).unwrap()).unwrap();
    let region = &cluster["regions"]["us-east"];
    assert!(region["nats"].as_str().unwrap().starts_with("nats://127.0.0.1:"));
    let node = &region["nodes"][0];
    assert_eq!(node["name"], "us-east-1");
    assert_eq!(node["role"], "leader");
    let ep = node["http"].as_str().unwrap().to_string();

    let (ok, out, err) = concord(&["put", "--endpoint", &ep, "users", "alice", "hello"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"ok\":true"), "{out}");
    assert_eq!(concord(&["get", "--endpoint", &ep, "users", "alice"]).1.trim(), "hello");
    assert!(concord(&["doc", "--endpoint", &ep, "docs", "d", "--ops", r#"[{"op":"inc","path":["n"],"by":2}]"#]).0);
    let (_, doc, _) = concord(&["doc", "--endpoint", &ep, "docs", "d"]);
    assert_eq!(serde_json::from_str::<Value>(&doc).unwrap(), serde_json::json!({"n": 2}));
    assert_eq!(concord(&["ls", "--endpoint", &ep, "users"]).1.trim(), "alice");
    let (ok, _, err) = concord(&["get", "--endpoint", &ep, "users", "nobody"]);
    assert!(!ok && err.contains("404"), "{err}");

    // kill: the node is gone; start: it is back on the same data.
    let (ok, _, err) = concord(&["cluster", "kill", "--dir", d, "us-east-1"]);
    assert!(ok, "{err}");
    assert!(!concord(&["get", "--endpoint", &ep, "users", "alice"]).0);
    // `concord status` shows the node down, and fails.
    let (ok, table, _) = concord(&["status", "--dir", d]);
    assert!(!ok, "status succeeds with a node down: {table}");
    let row = table.lines().find(|l| l.starts_with("us-east")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("us-east-1") && row.contains("DOWN"), "{table}");
    let (ok, _, err) = concord(&["cluster", "start", "--dir", d, "us-east-1"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = concord(&["get", "--endpoint", &ep, "users", "alice"]);
        if ok {
            assert_eq!(out.trim(), "hello");
            break;
        }
        assert!(Instant::now() < deadline, "us-east-1 did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, status, err) = concord(&["status", "--endpoint", &ep, "--json"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1, "{status}");
    let status: concord_api::StatusBody = serde_json::from_value(status["nodes"][0]["status"].clone()).unwrap();
    assert_eq!(status.epoch, 2, "a restarted leader starts a new epoch: {status:?}");
    // The deployment as a table, from cluster.json: the header, then each node's row.
    let (ok, table, err) = concord(&["status", "--dir", d]);
    assert!(ok, "{err}");
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("REGION  "), "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["us-east", "us-east-1", "leader", "writing", "2"], "{table}");

    // SIGTERM stops everything.
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(dir.0.join("procs")).unwrap() {
        let record: Value = serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        pids.push(record["pid"].as_u64().unwrap() as u32);
    }
    assert_eq!(pids.len(), 3, "backbone, region NATS server and node");
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let status = up.wait().unwrap();
    assert!(status.success(), "cluster up exited with {status}");
    for pid in pids {
        // Gone, or a zombie waiting for a parent that is not ours to reap.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = state.is_empty() || state.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
        assert!(gone, "pid {pid} still runs after cluster up stopped");
    }
}
