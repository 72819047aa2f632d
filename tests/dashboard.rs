//! The dashboard (`GET /ui`) in headless Chromium, against a real three-region
//! deployment with a follower in every region.
//!
//! 1. ap-south is cut off and two keys are written on both sides of the cut (one value
//!    is not UTF-8, so the API shows it in base64). The page, loaded from us-east's
//!    leader meanwhile, shows ap-south as unreachable, as `GET /v1/deployment` does, and
//!    marks us-east's lag behind ap-south as cut once its mirror stops hearing from it,
//!    as `GET /v1/status` does.
//! 2. After the heal, the page shows what each node's `GET /v1/status` says: every
//!    region, its leader and followers, roles, epochs, the lag behind every log each
//!    node reads (and no mirror cut); the lag chart has a line per node.
//! 3. The conflicts, committed after the page loaded, appear live with both competing
//!    versions side by side as `GET /v1/conflicts/{id}` has them (value, encoding,
//!    origin, HLC, the winner). The screenshot is kept at `target/dashboard.png`.
//! 4. A follower's page, asked to resolve, names its leader's dashboard and resolves
//!    nothing (writes go to the leader; the page follows no redirect to another origin).
//! 5. On the leader's page, one conflict is resolved by clicking "Keep this version" on
//!    the losing version, the other by typing a value: through the API, every node then
//!    holds the record resolved and reads the chosen value, and the page drops both from
//!    the open ones.
//!
//! Chromium is Debian's package (`.ci/setup.sh` installs it). Without it the test fails
//! under CI (`CI` set) and is skipped, saying so, elsewhere.

#[path = "harness/cdp.rs"]
mod cdp;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord_api::{ClusterJson, StatusBody};
use concord_tests::{Cluster, http, repo_root, status};
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const WAIT: Duration = Duration::from_secs(60);

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The JSON of what the page shows of the regions (text as displayed).
const REGIONS_SHOWN: &str = r#"(() => [...document.querySelectorAll('#regions [data-region]')].map(r => ({
  region: r.dataset.region,
  reachable: r.dataset.reachable === 'true',
  leader: r.querySelector('.leader')?.textContent ?? null,
  followers: r.querySelector('.followers')?.textContent ?? null,
  nodes: [...r.querySelectorAll('tr[data-node]')].map(n => ({
    node: n.querySelector('td.node .name').textContent,
    role: n.querySelector('td.role').textContent,
    epoch: n.querySelector('td.epoch').textContent,
    lags: Object.fromEntries([...n.querySelectorAll('.lag')].map(l => [l.querySelector('.origin').textContent,
      { value: l.querySelector('.lag-value').textContent, cut: l.querySelector('.cut') !== null }])),
  })),
})))()"#;

/// What the page shows of one conflict record (null while it is not shown).
fn conflict_shown(id: &str) -> String {
    format!(
        r#"(() => {{ const c = document.querySelector('#conflicts [data-conflict-id="{id}"]'); if (!c) return null;
  return {{ target: c.querySelector('.target').textContent, rule: c.querySelector('.rule').textContent,
    versions: [...c.querySelectorAll('[data-version-id]')].map(v => ({{ id: v.dataset.versionId,
      origin: v.querySelector('.origin').textContent, value: v.querySelector('.value').textContent,
      encoding: v.querySelector('.value').dataset.encoding, hlc: v.querySelector('.hlc').title,
      winner: v.classList.contains('winner') && v.textContent.includes('winner') }})) }}; }})()"#
    )
}

/// The dashboard's rendering of a duration in milliseconds (regions.js `duration`).
fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", (ms as f64 / 60_000.0).round()),
    }
}

/// What the page must show of the regions, from every node's own status.
fn expected_regions(statuses: &BTreeMap<String, Vec<StatusBody>>) -> Value {
    let regions: Vec<Value> = statuses
        .iter()
        .map(|(region, nodes)| {
            let leader = nodes.iter().find(|s| s.role == "leader").map(|s| s.node.clone()).unwrap_or_default();
            let mut ordered: Vec<&StatusBody> = nodes.iter().collect();
            ordered.sort_by_key(|s| (s.node != leader, s.node.clone()));
            let followers: Vec<&str> = ordered.iter().filter(|s| s.node != leader).map(|s| s.node.as_str()).collect();
            let rows: Vec<Value> = ordered
                .iter()
                .map(|s| {
                    let lags: BTreeMap<&String, Value> = s
                        .lag
                        .iter()
                        .map(|(origin, l)| match &l.mirror {
                            Some(m) => {
                                let value = format!("{} msgs · {}", m.seq, duration(m.ms));
                                (origin, json!({"value": value, "cut": origin != region && !m.mirror_connected}))
                            }
                            None => {
                                let why = l.error.as_deref().unwrap_or("no measure");
                                (origin, json!({"value": format!("unknown: {why}"), "cut": false}))
                            }
                        })
                        .collect();
                    json!({"node": s.node, "role": s.role, "epoch": s.epoch.to_string(), "lags": lags})
                })
                .collect();
            json!({"region": region, "reachable": true, "leader": leader, "followers": followers.join(", "),
                "nodes": rows})
        })
        .collect();
    Value::Array(regions)
}

/// Every node's status, by region (in the order the page lists regions: by name).
async fn statuses(client: &reqwest::Client, cluster: &ClusterJson) -> BTreeMap<String, Vec<StatusBody>> {
    let mut out = BTreeMap::new();
    for (region, r) in &cluster.regions {
        let mut nodes = Vec::new();
        for n in &r.nodes {
            nodes.push(status(client, &n.http).await);
        }
        out.insert(region.clone(), nodes);
    }
    out
}

/// The one record of `key` every region holds, once they hold the same one with
/// `versions` versions.
async fn record_everywhere(client: &reqwest::Client, cluster: &Cluster, key: &str, versions: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut records = Vec::new();
        for r in REGIONS {
            let url = format!("{}/v1/conflicts?key={key}", cluster.url(r));
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            records.extend(body["conflicts"].as_array().unwrap().iter().cloned());
        }
        let same = records.len() == 3 && records.iter().all(|r| r["id"] == records[0]["id"]);
        if same && records[0]["versions"].as_array().unwrap().len() == versions {
            return records.swap_remove(0);
        }
        assert!(Instant::now() < deadline, "no single record of {key} in every region: {records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until every node of every region reads `value` at `users/{key}` and holds the
/// record `id` resolved by a resolution.
async fn resolved_everywhere(client: &reqwest::Client, cluster: &Cluster, id: &str, key: &str, value: &[u8]) {
    let deadline = Instant::now() + WAIT;
    for (name, url) in &cluster.nodes {
        loop {
            let record: Value =
                client.get(format!("{url}/v1/conflicts/{id}")).send().await.unwrap().json().await.unwrap();
            let read = client.get(format!("{url}/v1/kv/users/{key}")).send().await.unwrap().bytes().await.unwrap();
            if record["resolved"]["by"] == "resolve" && read.as_ref() == value {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {key} reads {read:?}, record {record}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Check `png` is a PNG of `width` pixels by a plausible height, with content.
fn check_png(png: &[u8], width: u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(w, width);
    assert!((600..=4000).contains(&h), "height {h}");
    assert!(png.len() > 30_000, "{} bytes: a page this full is no blank image", png.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_deployment_and_resolves_conflicts() {
    if let Err(why) = cdp::find_chromium() {
        assert!(!under_ci(), "CI needs Chromium for the dashboard test: {why}");
        println!("skipped: {why}");
        return;
    }
    let browser = cdp::Browser::launch().unwrap();
    let cluster = Cluster::start_full(&REGIONS, 1, &[]);
    let layout: ClusterJson =
        serde_json::from_slice(&std::fs::read(cluster.dir.0.join("cluster.json")).unwrap()).unwrap();
    let client = http();
    for url in cluster.nodes.values() {
        cluster.wait_ready(url, Duration::from_secs(120)).await;
    }
    // Every leader hears its follower (the page lists what the leaders report).
    let deadline = Instant::now() + WAIT;
    for r in REGIONS {
        while status(&client, &cluster.url(r)).await.followers.len() != 1 {
            assert!(Instant::now() < deadline, "{r}: the leader never heard its follower");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // 1. ap-south cut off; the same keys written on both sides.
    cluster.partition("ap-south");
    let writes: [(&str, &str, &[u8]); 4] = [
        ("us-east", "alice", b"plan from us-east"),
        ("ap-south", "alice", b"plan from ap-south"),
        ("eu-west", "bob", b"bob, as eu-west has it"),
        ("ap-south", "bob", b"\xff\x00bob in bytes"),
    ];
    for (region, key, value) in writes {
        let resp = client.put(format!("{}/v1/kv/users/{key}", cluster.url(region))).body(value.to_vec()).send().await;
        assert_eq!(resp.unwrap().status(), 200, "{region} {key}");
    }
    let page = browser.new_page().await.unwrap();
    page.navigate(&format!("{}/ui", cluster.url("us-east"))).await.unwrap();
    let cut = r#"(() => { const r = document.querySelector('#regions [data-region="ap-south"]');
        return r !== null && r.dataset.reachable === 'false' && r.textContent.includes('unreachable'); })()"#;
    page.wait_for("ap-south as unreachable while cut off", cut, WAIT).await;
    let deployment: Value =
        client.get(format!("{}/v1/deployment", cluster.url("us-east"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(deployment["regions"]["ap-south"]["reachable"], false, "{deployment}");
    assert_eq!(deployment["complete"], false);
    // Writes go on in us-east while ap-south cannot copy them; once us-east's mirror of
    // ap-south stops hearing from it, the page marks that lag as cut, as the API does.
    for i in 0..200 {
        let resp = client.put(format!("{}/v1/kv/load/k{i}", cluster.url("us-east"))).body("x").send().await;
        assert_eq!(resp.unwrap().status(), 200);
    }
    let cut_shown = r#"(() => { const c = document.querySelector('#regions tr[data-node="us-east-1"] .lag[data-origin="ap-south"]');
        return c !== null && c.querySelector('.cut') !== null; })()"#;
    page.wait_for("us-east-1's mirror of ap-south as cut", cut_shown, WAIT).await;
    assert!(!status(&client, &cluster.url("us-east")).await.lag["ap-south"].connected());

    // 2. Healed: the page shows what every node says of itself.
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(120)).await;
    let alice = record_everywhere(&client, &cluster, "alice", 2).await;
    let bob = record_everywhere(&client, &cluster, "bob", 2).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let expected = expected_regions(&statuses(&client, &layout).await);
        let shown = page.eval(REGIONS_SHOWN).await.unwrap();
        if shown == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the page shows\n{shown:#}\nthe nodes say\n{expected:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lines = r#"(() => { const s = [...document.querySelectorAll('#chart-seq g.series')];
        return s.length === 6 && s.every(g => Number(g.dataset.samples) >= 3 && g.querySelector('polyline') !== null)
          && [...document.querySelectorAll('#legend [data-node]')].map(l => l.dataset.node).sort(); })()"#;
    let legend = page.wait_for("a lag line per node", lines, WAIT).await;
    let mut nodes: Vec<&String> = cluster.nodes.keys().collect();
    nodes.sort();
    assert_eq!(legend, json!(nodes));

    // 3. Both conflicts, live (committed after the page loaded), versions side by side.
    for record in [&alice, &bob] {
        let id = record["id"].as_str().unwrap();
        let shown = page.wait_for(&format!("conflict {id}"), &conflict_shown(id), WAIT).await;
        assert_eq!(
            (&shown["target"], &shown["rule"]),
            (&json!(format!("users/{}", record["key"].as_str().unwrap())), &record["rule"])
        );
        let expected: Vec<Value> = record["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                json!({"id": v["id"], "origin": v["origin"], "value": v["value"], "encoding": v["encoding"],
                    "hlc": format!("HLC {}.{}", v["hlc"]["wall_ms"], v["hlc"]["logical"]),
                    "winner": v["id"] == record["winner"]})
            })
            .collect();
        assert_eq!(shown["versions"], json!(expected), "conflict {id}");
    }
    assert_eq!(bob["versions"].as_array().unwrap().iter().filter(|v| v["encoding"] == "base64").count(), 1);
    let count = page.eval("document.getElementById('conflicts-count').textContent").await.unwrap();
    assert_eq!(count, "2");

    let png = page.screenshot(1400).await.unwrap();
    check_png(&png, 1400);
    let kept = repo_root().join("target/dashboard.png");
    std::fs::write(&kept, &png).unwrap();
    println!("screenshot: {} ({} bytes)", kept.display(), png.len());

    // 4. A follower's dashboard does not resolve (writes go to the leader, and the page
    // follows no redirect to another origin): it names the leader's dashboard.
    let alice_id = alice["id"].as_str().unwrap();
    let loser = alice["versions"].as_array().unwrap().iter().find(|v| v["id"] != alice["winner"]).unwrap().clone();
    let pick =
        format!(r#"[data-conflict-id="{alice_id}"] [data-version-id="{}"] button.pick"#, loser["id"].as_str().unwrap());
    let on_follower = browser.new_page().await.unwrap();
    on_follower.navigate(&format!("{}/ui", cluster.nodes["us-east-2"])).await.unwrap();
    on_follower.wait_for("the conflict on the follower's page", &conflict_shown(alice_id), WAIT).await;
    on_follower.click(&pick).await.unwrap();
    let outcome = format!(r#"document.querySelector('[data-conflict-id="{alice_id}"] .outcome.bad')?.textContent"#);
    let said = on_follower.wait_for("the follower's answer", &outcome, WAIT).await;
    let said = said.as_str().unwrap();
    let leader_ui = format!("{}/ui", cluster.url("us-east"));
    assert!(said.contains("does not take writes") && said.contains(&leader_ui), "{said}");
    let url = format!("{}/v1/conflicts/{alice_id}", cluster.url("us-east"));
    let record: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert!(record["resolved"].is_null(), "{record}");

    // 5. On the leader's page: alice resolved by keeping the losing version, bob by a
    // typed value.
    page.click(&pick).await.unwrap();
    resolved_everywhere(&client, &cluster, alice_id, "alice", loser["value"].as_str().unwrap().as_bytes()).await;

    let bob_id = bob["id"].as_str().unwrap();
    let typed = "settled from the dashboard";
    page.click(&format!(r#"[data-conflict-id="{bob_id}"] input.value-input"#)).await.unwrap();
    page.type_text(typed).await.unwrap();
    page.click(&format!(r#"[data-conflict-id="{bob_id}"] button.use-value"#)).await.unwrap();
    resolved_everywhere(&client, &cluster, bob_id, "bob", typed.as_bytes()).await;

    let gone = r#"document.querySelectorAll('#conflicts [data-conflict-id]').length > 0
        && document.querySelectorAll('#conflicts article[data-conflict-id]').length === 0
        && document.getElementById('conflicts-count').textContent === '0'"#;
    page.wait_for("no open conflict, and the resolutions listed", gone, WAIT).await;
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
}
