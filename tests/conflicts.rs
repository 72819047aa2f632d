//! The conflict log across three regions: all three cut apart, one key and one document
//! property written differently in each, heal. Every region converges to the same
//! winner and holds the same record listing all three versions; resolving it from one
//! region makes every region read the resolution and the record read as resolved.
//! A `manual` bucket answers 300 with the siblings until resolved. Records are also
//! published on NATS and streamed as server-sent events (`GET /v1/conflicts/events`), and
//! `concord conflicts` shows them (`--follow` from that stream).

use std::time::Duration;

use concord_tests::{Cluster, http};
use futures::StreamExt;
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// A command the test stops, stopped also when the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn conflicts(client: &reqwest::Client, url: &str, key: &str) -> Vec<Value> {
    let v: Value = client.get(format!("{url}/v1/conflicts?key={key}")).send().await.unwrap().json().await.unwrap();
    v["conflicts"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_logged_in_every_region_and_resolvable() {
    let cluster = Cluster::start_with_env(&REGIONS, &[("CONCORD_MANUAL_BUCKETS", "carts")]);
    let client = http();
    let nc = concord_tests::nats_connect(cluster.nats("ap-south")).await.unwrap();
    let mut published = nc.subscribe("concord.conflicts.ap-south").await.unwrap();
    nc.flush().await.unwrap();

    // The document exists everywhere before the cut; the property is then set concurrently.
    let r = client
        .post(format!("{}/v1/docs/app/settings", cluster.url("us-east")))
        .json(&json!({"ops": [{"op": "set", "path": ["theme"], "value": "plain"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster.wait_converged(Duration::from_secs(30)).await;

    // ap-south's stream of the records it commits, opened before any exists.
    let mut events =
        client.get(format!("{}/v1/conflicts/events?key=dana", cluster.url("ap-south"))).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    for r in REGIONS {
        cluster.partition(r);
    }
    // `concord conflicts --follow --json` tails the log: it prints each record as it
    // appears and again when it changes.
    let mut follow = std::process::Command::new(concord_tests::concord_bin())
        .args(["conflicts", "--endpoint", &cluster.url("us-east"), "--follow", "--json", "--bucket", "users"])
        .env("CONCORD_TOKEN", concord_tests::TEST_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, followed) = std::sync::mpsc::channel::<Value>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(serde_json::from_str(&line).expect("--follow --json prints JSON lines"));
        }
    });
    // It follows us-east's stream rather than polling the list.
    let streams_open = async || {
        let m = client.get(format!("{}/metrics", cluster.url("us-east"))).send().await.unwrap().text().await.unwrap();
        let line = m.lines().find(|l| l.starts_with("concord_conflict_streams_open{")).unwrap().to_string();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let t0 = std::time::Instant::now();
    while streams_open().await != 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "concord conflicts --follow opened no stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in REGIONS {
        let url = cluster.url(r);
        let put = client.put(format!("{url}/v1/kv/users/dana")).body(format!("plan from {r}")).send().await.unwrap();
        assert_eq!(put.status(), 200);
        let put = client.put(format!("{url}/v1/kv/carts/c1")).body(format!("cart from {r}")).send().await.unwrap();
        assert_eq!(put.status(), 200);
        let ops = json!({"ops": [{"op": "set", "path": ["theme"], "value": format!("theme of {r}")}]});
        assert_eq!(client.post(format!("{url}/v1/docs/app/settings")).json(&ops).send().await.unwrap().status(), 200);
    }
    // `concord status` shows the whole deployment from its cluster.json: a row per
    // region, each region's lag on the two it is cut from marked CUT.
    let dir = cluster.dir.0.to_str().unwrap().to_string();
    let t0 = std::time::Instant::now();
    loop {
        let (_, table, err) = cluster.client(&["status", "--dir", &dir]);
        let rows: Vec<&str> = table.lines().skip(1).collect();
        let cut_from_both = |r: &&str| r.matches(" CUT").count() == 2;
        if rows.len() == REGIONS.len() && rows.iter().all(cut_from_both) {
            for (row, region) in rows.iter().zip(["ap-south", "eu-west", "us-east"]) {
                assert!(row.starts_with(&format!("{region} ")) && row.contains(" leader "), "{table}");
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "concord status never showed the cut: {table}{err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(60)).await;
    // Healed: no region cut, and each node's open conflicts as its status says.
    let t0 = std::time::Instant::now();
    loop {
        let (ok, table, err) = cluster.client(&["status", "--dir", &dir]);
        if ok && !table.contains("CUT") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "a region still shown cut after the heal: {table}{err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, table, err) = cluster.client(&["status", "--dir", &dir]);
    assert!(ok, "{table}{err}");
    let (ok, out, err) = cluster.client(&["status", "--dir", &dir, "--json"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    let nodes = shown["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), REGIONS.len(), "{shown}");
    for n in nodes {
        let open = concord_tests::status(&client, n["endpoint"].as_str().unwrap()).await.open_conflicts;
        assert!(open >= 3, "{}: {open} open conflicts", n["node"]);
        assert_eq!(n["status"]["open_conflicts"].as_u64(), Some(open), "{n}");
        let row = table.lines().find(|l| l.starts_with(n["region"].as_str().unwrap())).unwrap();
        assert!(row.ends_with(&format!("  {open}")), "the CONFLICTS column: {row}");
    }
    // `--watch --json` asks again and again, a line per round, until stopped.
    let mut watch = KillOnDrop(
        std::process::Command::new(concord_tests::concord_bin())
            .args(["status", "--dir", &dir, "--watch", "0.3", "--json"])
            .env("CONCORD_TOKEN", concord_tests::TEST_TOKEN)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (rounds_tx, rounds) = std::sync::mpsc::channel::<String>();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = rounds_tx.send(line);
        }
    });
    for round in 0..3 {
        let line = rounds.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        let answered = v["nodes"].as_array().unwrap().iter().filter(|n| n["status"]["role"] == "leader").count();
        assert_eq!(answered, REGIONS.len(), "round {round}: {line}");
    }
    assert!(watch.0.try_wait().unwrap().is_none(), "--watch stopped by itself");
    drop(watch);

    // Same winner everywhere, and the same record listing all three versions.
    let mut values = Vec::new();
    let mut records = Vec::new();
    for r in REGIONS {
        let url = cluster.url(r);
        values.push(client.get(format!("{url}/v1/kv/users/dana")).send().await.unwrap().text().await.unwrap());
        let found = conflicts(&client, &url, "dana").await;
        assert_eq!(found.len(), 1, "{r}: {found:?}");
        records.push(found[0].clone());
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
    let record = &records[0];
    for r in &records {
        assert_eq!((&r["id"], &r["winner"], &r["versions"]), (&record["id"], &record["winner"], &record["versions"]));
        assert_eq!(r["rule"], "lww-hlc");
        assert!(r["resolved"].is_null());
    }
    let mut listed: Vec<&str> =
        record["versions"].as_array().unwrap().iter().map(|v| v["value"].as_str().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, ["plan from ap-south", "plan from eu-west", "plan from us-east"]);
    let winner = record["versions"].as_array().unwrap().iter().find(|v| v["id"] == record["winner"]).unwrap();
    assert_eq!(winner["value"].as_str().unwrap(), values[0], "the record's winner is what reads see");
    for v in record["versions"].as_array().unwrap() {
        assert!(v["hlc"]["wall_ms"].as_u64().unwrap() > 0 && v["origin"].as_str().unwrap().contains('.'), "{v}");
    }

    // The same for the document property.
    let mut doc_records = Vec::new();
    for r in REGIONS {
        let found = conflicts(&client, &cluster.url(r), "settings").await;
        assert_eq!(found.len(), 1, "{r}: {found:?}");
        doc_records.push(found[0].clone());
    }
    let doc_record = &doc_records[0];
    assert_eq!(doc_record["rule"], "automerge");
    assert_eq!(doc_record["path"], json!(["theme"]));
    assert!(doc_records.iter().all(|r| r["id"] == doc_record["id"] && r["versions"] == doc_record["versions"]));
    let mut themes: Vec<&str> =
        doc_record["versions"].as_array().unwrap().iter().map(|v| v["value"].as_str().unwrap()).collect();
    themes.sort();
    assert_eq!(themes, ["theme of ap-south", "theme of eu-west", "theme of us-east"]);
    let docs: Vec<Value> =
        futures::future::join_all(REGIONS.map(|r| {
            let (client, url) = (client.clone(), cluster.url(r));
            async move {
                client.get(format!("{url}/v1/docs/app/settings")).send().await.unwrap().json::<Value>().await.unwrap()
            }
        }))
        .await;
    assert!(docs.windows(2).all(|w| w[0] == w[1]), "{docs:?}");

    // The manual bucket shows every sibling with 300 until someone resolves them.
    for r in REGIONS {
        let resp = client.get(format!("{}/v1/kv/carts/c1", cluster.url(r))).send().await.unwrap();
        assert_eq!(resp.status(), 300, "{r}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["siblings"].as_array().unwrap().len(), 3, "{body}");
        assert!(body["conflict"].is_string());
    }
    let cart = conflicts(&client, &cluster.url("eu-west"), "c1").await;
    assert_eq!(cart[0]["rule"], "manual");

    // Resolve from eu-west: a value for the key, a pick for the property, a pick for the cart.
    let id = record["id"].as_str().unwrap();
    let r = client
        .post(format!("{}/v1/conflicts/{id}/resolve", cluster.url("eu-west")))
        .json(&json!({"value": "plan merged by hand"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pick = doc_record["versions"][0]["id"].as_str().unwrap();
    let picked = doc_record["versions"][0]["value"].clone();
    let r = client
        .post(format!("{}/v1/conflicts/{}/resolve", cluster.url("us-east"), doc_record["id"].as_str().unwrap()))
        .json(&json!({"pick": pick}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cart_pick = cart[0]["versions"][1]["id"].as_str().unwrap().to_string();
    let cart_value = cart[0]["versions"][1]["value"].as_str().unwrap().to_string();
    let (ok, out, err) = cluster.client(&[
        "resolve",
        "--endpoint",
        &cluster.url("ap-south"),
        cart[0]["id"].as_str().unwrap(),
        "--pick",
        &cart_pick,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"resolved\""), "{out}");
    cluster.wait_converged(Duration::from_secs(60)).await;
    for r in REGIONS {
        let url = cluster.url(r);
        assert_eq!(
            client.get(format!("{url}/v1/kv/users/dana")).send().await.unwrap().text().await.unwrap(),
            "plan merged by hand"
        );
        let doc: Value = client.get(format!("{url}/v1/docs/app/settings")).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["theme"], picked, "{r}");
        let cart = client.get(format!("{url}/v1/kv/carts/c1")).send().await.unwrap();
        assert_eq!(cart.status(), 200, "{r}: the manual bucket still answers 300 after resolve");
        assert_eq!(cart.text().await.unwrap(), cart_value);
        for key in ["dana", "settings", "c1"] {
            let found = conflicts(&client, &url, key).await;
            assert_eq!(found.len(), 1, "{r} {key}: {found:?}");
            assert_eq!(found[0]["resolved"]["by"], "resolve", "{r} {key}: {}", found[0]);
        }
    }
    // Conflict records by rule and state, in every region's metrics.
    for r in REGIONS {
        let page = concord_tests::metrics_page(&client, &cluster.url(r)).await;
        for (rule, state) in
            [("lww-hlc", "open"), ("lww-hlc", "resolved"), ("automerge", "open"), ("manual", "resolved")]
        {
            let labels = [("rule", rule), ("state", state)];
            let n = concord_tests::metric(&page, "concord_conflict_records_by_rule_total", &labels);
            assert!(n.is_some_and(|n| n >= 1.0), "{r} {labels:?}: {n:?}");
        }
        assert_eq!(concord_tests::metric(&page, "concord_conflicts_open", &[]), Some(0.0), "{r}: all resolved");
    }

    // Resolving twice is refused.
    let again = client
        .post(format!("{}/v1/conflicts/{id}/resolve", cluster.url("ap-south")))
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // The follower printed the record open, then resolved.
    let mut lines = Vec::new();
    while !lines.iter().any(|r: &Value| r["id"] == record["id"] && r["resolved"]["by"] == "resolve") {
        match followed.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("--follow printed no resolved record ({e}): {lines:?}"),
        }
    }
    assert!(lines.iter().any(|r| r["key"] == "dana" && r["resolved"].is_null()), "{lines:?}");
    assert!(lines.iter().all(|r| r["bucket"] == "users"), "{lines:?}");
    unsafe {
        libc::kill(follow.id() as i32, libc::SIGTERM);
    }
    follow.wait().unwrap();

    // ap-south streamed the record as it committed it: open (with every version), then
    // resolved; nothing of other keys.
    let mut streamed = Vec::new();
    let mut buf = Vec::new();
    while !streamed.iter().any(|r: &Value| r["resolved"]["by"] == "resolve") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(30), events.chunk()).await.expect("an event").unwrap().unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf.drain(..end + 2).collect()).unwrap();
            if let Some(data) = block.strip_prefix("event: conflict\ndata: ") {
                streamed.push(serde_json::from_str::<Value>(data.trim_end()).unwrap());
            } else {
                assert!(block.starts_with(':'), "only records and keep-alive comments: {block:?}");
            }
        }
    }
    assert!(streamed.iter().all(|r| r["id"] == record["id"]), "{streamed:?}");
    assert!(
        streamed.iter().any(|r| r["resolved"].is_null() && r["versions"].as_array().unwrap().len() == 3),
        "{streamed:?}"
    );

    // Subscribers on NATS saw ap-south's records.
    let mut seen = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), published.next()).await {
        seen.push(serde_json::from_slice::<Value>(&msg.payload).unwrap());
    }
    assert!(seen.iter().any(|r| r["id"] == record["id"] && r["resolved"].is_null()), "{seen:?}");
    assert!(seen.iter().any(|r| r["id"] == record["id"] && r["resolved"]["by"] == "resolve"), "{seen:?}");

    // The command line shows the log as a table and as JSON.
    let (ok, table, err) = cluster.client(&["conflicts", "--endpoint", &cluster.url("us-east")]);
    assert!(ok, "{err}");
    assert!(table.lines().next().unwrap().starts_with("DETECTED"), "{table}");
    assert!(table.contains(id) && table.contains("users/dana") && table.contains("resolve"), "{table}");
    let (ok, js, _) =
        cluster.client(&["conflicts", "--endpoint", &cluster.url("us-east"), "--json", "--bucket", "users"]);
    assert!(ok);
    let js: Vec<Value> = serde_json::from_str(&js).unwrap();
    assert_eq!(js.len(), 1);
    assert_eq!(js[0]["id"], record["id"]);
}
