//! The dashboard (`GET /ui`) in headless Chromium, against a real three-region
//! deployment with a follower in every region. The API takes requests only with the
//! deployment's token ([`TEST_TOKEN`]); the pages are opened as `/ui#token=...`.
//!
//! 1. ap-south is cut off and two keys are written on both sides of the cut (one value
//!    is not UTF-8, so the API shows it in base64). The page, loaded from us-east's
//!    leader meanwhile, takes the token off its address at once, shows ap-south as
//!    unreachable, as `GET /v1/deployment` does, and marks us-east's lag behind ap-south
//!    as cut once its mirror stops hearing from it, as `GET /v1/status` does.
//! 2. After the heal, the page shows what each node's `GET /v1/status` says: every
//!    region, its leader and followers, roles, epochs, the lag behind every log each
//!    node reads (and no mirror cut); the lag chart has a line per node.
//! 3. The conflicts, committed after the page loaded, appear live (over the event stream
//!    the page reads with fetch, which it opened once and listed once) with both
//!    competing versions side by side as `GET /v1/conflicts/{id}` has them (value,
//!    encoding, origin, HLC, the winner). The screenshot is kept at
//!    `target/dashboard.png`. The page's event-stream parser, run in the page on pieces
//!    cut at awkward places, gives the events the standard says and refuses too long a
//!    line or event.
//! 4. A page opened without a token shows the token form, no data, and asks the node
//!    nothing; a wrong token typed in is refused (the form again, no data); the right
//!    one shows the deployment and the conflicts, and a reload keeps it (this tab's
//!    sessionStorage).
//! 5. A follower's page, asked to resolve, names its leader's dashboard and resolves
//!    nothing (writes go to the leader; the page follows no redirect to another origin).
//!    The leader's page opened with the read-only token says the token may only read,
//!    and resolves nothing.
//! 6. On the leader's page, one conflict is resolved by clicking "Keep this version" on
//!    the losing version, the other by typing a value: through the API, every node then
//!    holds the record resolved and reads the chosen value, and the page drops both from
//!    the open ones.
//!
//! No page reports an error, but those its own requests' answers cause on purpose (the
//! 401s of the wrong token, the 403 of the read token).
//!
//! Chromium is Debian's package (`.ci/setup.sh` installs it). Without it the test fails
//! under CI (`CI` set) and is skipped, saying so, elsewhere.

#[path = "harness/cdp.rs"]
mod cdp;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord_api::{ClusterJson, StatusBody};
use concord_tests::{Cluster, TEST_TOKEN, http, repo_root, status};
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

/// `url` with the token in its fragment, as the README says to open the dashboard.
fn with_token(url: &str, token: &str) -> String {
    format!("{url}#token={token}")
}

/// The page's requests to the API so far, by path (the resource timing entries; a
/// stream is listed once it has ended).
const API_REQUESTS: &str = r#"performance.getEntriesByType('resource').map(e => new URL(e.name))
  .filter(u => u.pathname.startsWith('/v1/')).map(u => u.pathname + u.search)"#;

/// Whether the page shows the token form, and nothing of the deployment.
const ASKS_FOR_TOKEN: &str = r#"(() => { const form = document.getElementById('token-section');
  const input = document.getElementById('token-input');
  return !form.hidden && form.offsetHeight > 0 && input.type === 'password'
    && document.getElementById('data').hidden
    && document.querySelectorAll('#regions [data-region], #conflicts [data-conflict-id]').length === 0
    && form.textContent.includes('cluster.json') && form.textContent.includes('secrets/api-token'); })()"#;

/// Wait until the page shows the regions as every node's own status has them.
async fn shows_what_the_nodes_say(page: &cdp::Page<'_>, client: &reqwest::Client, layout: &ClusterJson) {
    let deadline = Instant::now() + WAIT;
    loop {
        let expected = expected_regions(&statuses(client, layout).await);
        let shown = page.eval(REGIONS_SHOWN).await.unwrap();
        if shown == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the page shows\n{shown:#}\nthe nodes say\n{expected:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until the page shows each of `records` with its versions as the API has them.
async fn shows_conflicts(page: &cdp::Page<'_>, records: &[&Value]) {
    for record in records {
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
    let count = page.eval("document.getElementById('conflicts-count').textContent").await.unwrap();
    assert_eq!(count, records.len().to_string());
}

/// The page's event-stream parser (sse.js), run in the page: pieces cut inside a CRLF
/// and inside a UTF-8 character, comments, multi-line data, ids, an event without data,
/// and the limits. Returns what it gave, to compare.
const SSE_PARSER_CHECK: &str = r#"(async () => {
  const { EventParser, StreamTooLarge, readEvents } = await import('/ui/sse.js');
  const p = new EventParser(64);
  const events = [];
  for (const piece of [': keep-alive\n\n', 'event: conflict\r\ndata: {"a":', '1}\r', '\n\r\n', 'data: one\ndata:two\nid: 7\n\n',
      'event: lagged\ndata\n\n', 'event: nothing\n\n', 'data: x\r\r', 'retry: 1500\nfoo: bar\ndata: cut off by the end'])
    events.push(...p.push(piece));
  const tooLarge = (pieces) => { const q = new EventParser(64);
    try { for (const x of pieces) q.push(x); return null; } catch (e) { return e instanceof StreamTooLarge ? e.message : String(e); } };
  const bytes = new TextEncoder().encode('data: é€😀\n\n');
  const body = new ReadableStream({ start(c) { for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3)); c.close(); } });
  const decoded = [];
  await readEvents(body, new EventParser(64), new AbortController(), (e) => decoded.push(e.data));
  return { events, id: p.lastEventId, retry: p.retryMs, decoded,
    line: tooLarge(['data: ', 'x'.repeat(40), 'x'.repeat(40)]), event: tooLarge(['data: 0123456789\n'.repeat(8)]),
    fits: tooLarge(['data: ' + 'x'.repeat(57) + '\n\n']) };
})()"#;

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
    assert_eq!(layout.token.as_deref(), Some(TEST_TOKEN));
    let read_token = layout.read_token.clone().expect("cluster.json holds a read token");
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
    let leader_ui = format!("{}/ui", cluster.url("us-east"));
    page.navigate(&with_token(&leader_ui, TEST_TOKEN)).await.unwrap();
    // Every request the page makes is listed (the default buffer would fill in minutes).
    page.eval("performance.setResourceTimingBufferSize(100000)").await.unwrap();
    // The token is off the address bar once the page has loaded.
    assert_eq!(page.eval("location.href").await.unwrap(), json!(leader_ui));
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
    shows_what_the_nodes_say(&page, &client, &layout).await;
    let lines = r#"(() => { const s = [...document.querySelectorAll('#chart-seq g.series')];
        return s.length === 6 && s.every(g => Number(g.dataset.samples) >= 3 && g.querySelector('polyline') !== null)
          && [...document.querySelectorAll('#legend [data-node]')].map(l => l.dataset.node).sort(); })()"#;
    let legend = page.wait_for("a lag line per node", lines, WAIT).await;
    let mut nodes: Vec<&String> = cluster.nodes.keys().collect();
    nodes.sort();
    assert_eq!(legend, json!(nodes));

    // 3. Both conflicts, live (committed after the page loaded), versions side by side.
    shows_conflicts(&page, &[&alice, &bob]).await;
    assert_eq!(bob["versions"].as_array().unwrap().iter().filter(|v| v["encoding"] == "base64").count(), 1);
    // They came by the event stream: it never ended (a reconnect lists again), and the
    // conflicts were listed once, when it opened, before they were committed.
    let requests = page.eval(API_REQUESTS).await.unwrap();
    let requests: Vec<&str> = requests.as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    let lists = requests.iter().filter(|r| r.starts_with("/v1/conflicts?")).count();
    let streams_ended = requests.iter().filter(|r| r.starts_with("/v1/conflicts/events")).count();
    assert_eq!((lists, streams_ended), (1, 0), "{requests:?}");
    // (Every poll is listed: at least one per sample of the lag lines.)
    assert!(requests.iter().filter(|r| **r == "/v1/deployment").count() >= 3, "{requests:?}");
    assert_eq!(page.eval("document.getElementById('feed-state').textContent").await.unwrap(), "live");

    let png = page.screenshot(1400).await.unwrap();
    check_png(&png, 1400);
    let kept = repo_root().join("target/dashboard.png");
    std::fs::write(&kept, &png).unwrap();
    println!("screenshot: {} ({} bytes)", kept.display(), png.len());

    let parsed = page.eval(SSE_PARSER_CHECK).await.unwrap();
    let event = |t: &str, d: &str, id: &str| json!({"type": t, "data": d, "id": id});
    assert_eq!(
        parsed["events"],
        json!([
            event("conflict", r#"{"a":1}"#, ""),
            event("message", "one\ntwo", "7"),
            event("lagged", "", "7"),
            event("message", "x", "7")
        ]),
        "{parsed:#}"
    );
    assert_eq!((&parsed["id"], &parsed["retry"], &parsed["decoded"]), (&json!("7"), &json!(1500), &json!(["é€😀"])));
    assert_eq!(parsed["line"], "a line of more than 64 characters", "{parsed:#}");
    assert_eq!(parsed["event"], "an event of more than 64 characters", "{parsed:#}");
    assert_eq!(parsed["fits"], Value::Null, "{parsed:#}");

    // 4. A page without a token asks for one and shows nothing of the deployment; a wrong
    // token is refused; the right one shows it all.
    let eu_west_ui = format!("{}/ui", cluster.url("eu-west"));
    let asking = browser.new_page().await.unwrap();
    asking.navigate(&eu_west_ui).await.unwrap();
    asking.wait_for("the token form", ASKS_FOR_TOKEN, WAIT).await;
    // Longer than a poll of the deployment: the page still shows nothing, and has asked
    // the node nothing (no request without a token).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(asking.eval(ASKS_FOR_TOKEN).await.unwrap(), true);
    assert_eq!(asking.eval(API_REQUESTS).await.unwrap(), json!([]));
    let submit = |token: String| {
        let asking = &asking;
        async move {
            asking.click("#token-input").await.unwrap();
            asking.type_text(&token).await.unwrap();
            asking.click("#token-form button[type=submit]").await.unwrap();
        }
    };
    submit("not-this-deployments-token-0123456789".into()).await;
    let refused = r#"(() => { const why = document.getElementById('token-reason').textContent;
        return performance.getEntriesByType('resource').some(e => e.name.includes('/v1/')) && why.includes('refused') && why; })()"#;
    let why = asking.wait_for("the wrong token refused", refused, WAIT).await;
    assert!(why.as_str().unwrap().contains("not one of this deployment's"), "{why}");
    assert_eq!(asking.eval(ASKS_FOR_TOKEN).await.unwrap(), true, "a refused token shows no data");
    assert_eq!(asking.eval("document.getElementById('token-input').value").await.unwrap(), "", "the field is cleared");
    submit(TEST_TOKEN.into()).await;
    shows_what_the_nodes_say(&asking, &client, &layout).await;
    shows_conflicts(&asking, &[&alice, &bob]).await;
    assert_eq!(asking.eval("document.getElementById('token-section').hidden").await.unwrap(), true);
    assert_eq!(asking.eval("location.href").await.unwrap(), json!(eu_west_ui));
    // The tab keeps the token: a reload shows the deployment without asking again.
    asking.reload().await.unwrap();
    shows_what_the_nodes_say(&asking, &client, &layout).await;
    assert_eq!(asking.eval("document.getElementById('token-section').hidden").await.unwrap(), true);

    // 5. A follower's dashboard does not resolve (writes go to the leader, and the page
    // follows no redirect to another origin): it names the leader's dashboard. Nor does a
    // read token: the page says it may only read.
    let alice_id = alice["id"].as_str().unwrap();
    let loser = alice["versions"].as_array().unwrap().iter().find(|v| v["id"] != alice["winner"]).unwrap().clone();
    let pick =
        format!(r#"[data-conflict-id="{alice_id}"] [data-version-id="{}"] button.pick"#, loser["id"].as_str().unwrap());
    let outcome = format!(r#"document.querySelector('[data-conflict-id="{alice_id}"] .outcome.bad')?.textContent"#);
    let on_follower = browser.new_page().await.unwrap();
    on_follower.navigate(&with_token(&format!("{}/ui", cluster.nodes["us-east-2"]), TEST_TOKEN)).await.unwrap();
    on_follower.wait_for("the conflict on the follower's page", &conflict_shown(alice_id), WAIT).await;
    // The page names the leader from the deployment it polls (or asks for it at the
    // click); wait for its first poll, so the click does not race the page's loading.
    let knows = "document.getElementById('served-by').textContent.startsWith('served by') || null";
    on_follower.wait_for("the follower's page to know the deployment", knows, WAIT).await;
    on_follower.click(&pick).await.unwrap();
    let said = on_follower.wait_for("the follower's answer", &outcome, WAIT).await;
    let said = said.as_str().unwrap();
    assert!(said.contains("does not take writes") && said.contains(&leader_ui), "{said}");
    let reading = browser.new_page().await.unwrap();
    reading.navigate(&with_token(&leader_ui, &read_token)).await.unwrap();
    assert_eq!(reading.eval("location.href").await.unwrap(), json!(leader_ui));
    reading.wait_for("the conflict on the read token's page", &conflict_shown(alice_id), WAIT).await;
    reading.click(&pick).await.unwrap();
    let said = reading.wait_for("the answer to the read token", &outcome, WAIT).await;
    assert!(said.as_str().unwrap().contains("this token may only read"), "{said}");
    let url = format!("{}/v1/conflicts/{alice_id}", cluster.url("us-east"));
    let record: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert!(record["resolved"].is_null(), "{record}");

    // 6. On the leader's page: alice resolved by keeping the losing version, bob by a
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

    // No page reported an error, but the answers refusing a token, on purpose.
    let refusals = |errors: Vec<String>, status: &str, path: &str| -> Vec<String> {
        errors.into_iter().filter(|e| !(e.contains(&format!("status of {status}")) && e.contains(path))).collect()
    };
    assert_eq!(refusals(asking.errors(), "401", "/v1/"), Vec::<String>::new(), "the token form's page");
    assert_eq!(refusals(reading.errors(), "403", "/resolve"), Vec::<String>::new(), "the read token's page");
    for (what, p) in [("the leader's page", &page), ("the follower's page", &on_follower)] {
        assert_eq!(p.errors(), Vec::<String>::new(), "{what} reported errors");
    }
    let all = browser.errors();
    let pages = asking.errors().len() + reading.errors().len();
    assert_eq!(all.len(), pages, "errors of no page: {all:?}");
}
