//! The per-region containers of `compose/compose.yaml`, end to end (issue 10). Validates
//! the file, builds the images from this repository alone (`compose/build.sh`), starts
//! the three regions (three NATS servers, a backbone server, a leader and two followers
//! each), then:
//!
//! 1. writes in every region and reads each write back at every node, followers included;
//! 2. cuts us-east off the `wan` network (`docker network disconnect`, each of its NATS
//!    containers) while every region writes the same key, shows the cut is real,
//!    reconnects, and checks every node converges to one value and the conflict log of
//!    every region records us-east's version against the others, with the winner;
//! 3. `docker kill`s the container of us-east's leader under write load: a follower takes over,
//!    writes resume, nothing acknowledged is lost; the old leader, started again, follows;
//! 4. `docker kill`s the NATS container that leads eu-west's log under write load: writes
//!    continue, nothing acknowledged is lost, and ap-south still receives eu-west's writes;
//! 5. `docker stop`s a follower, a leader and a NATS server: each exits 0 within the
//!    grace period;
//!
//! and tears everything down with its volumes. Skipped, with the reason printed, where
//! Docker is not available.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use concord_tests::docker::{self, Compose, REGIONS, node_url, region_nodes};
use concord_tests::http;
use concord_tests::load::{applied_token, check_acked, start_load_at, writing_node_among};
use concord_tests::tls::{self, Outcome};
use serde_json::Value;

const PROJECT: &str = "concord-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_region_containers_survive_a_cut_wan_and_killed_containers() {
    if let Some(why) = docker::unavailable() {
        println!("skipped: Docker is not available here: {why}");
        return;
    }
    docker::run("docker-compose", &["-f", "compose/compose.yaml", "config", "--quiet"]);
    let since = Instant::now();
    docker::build_images();
    println!("images built in {:?}", since.elapsed());
    let compose = Compose::up(PROJECT);
    let ready = compose.wait_ready(Duration::from_secs(180)).await;
    println!("21 containers up; every node ready {ready:?} after `docker-compose up`");

    nats_is_locked(&compose).await;
    write_in_every_region().await;
    cut_a_region_off_the_wan(&compose).await;
    kill_a_leader_container(&compose).await;
    kill_the_nats_container_leading_a_log(&compose).await;
    stop_cleanly(&compose);
}

/// Nobody connects to NATS without credentials, and the links between regions (the
/// backbone's routes, the regions' leaf connections to it) take TLS only.
async fn nats_is_locked(compose: &Compose) {
    for i in 1..=REGIONS.len() {
        let anonymous = concord_tests::nats_connect(format!("nats://127.0.0.1:7{i}21")).await;
        assert!(anonymous.is_err(), "region {i}'s NATS took an anonymous connection");
        concord_tests::nats_connect(docker::nats_url(i, 1, "admin")).await.expect("admin connects");
    }
    for region in REGIONS {
        let id = compose.service(&format!("backbone-{region}"));
        let ip = compose.address(&id, "wan");
        let (route, leaf, name) = (format!("{ip}:6222"), format!("{ip}:7422"), format!("backbone-{region}"));
        let info = concord_tests::nats_info(&leaf);
        assert_eq!(info["tls_required"], true, "{name}'s leaf port without TLS: {info}");
        let tls_dir = docker::secrets_dir().join("tls");
        match tls::handshake(&route, &name, &tls_dir, true, false).await {
            Outcome::Accepted(Some(line)) => assert!(line.starts_with("INFO "), "{name}'s route port: {line}"),
            other => panic!("{name}'s route port: {other:?}"),
        }
        for (addr, info_first) in [(&route, false), (&leaf, true)] {
            let without = tls::handshake(addr, &name, &tls_dir, false, info_first).await;
            assert!(matches!(without, Outcome::Refused(_)), "{name} {addr} took a link without a certificate");
        }
    }
    println!("NATS refuses anonymous clients; the backbone's routes and leaf port take TLS only");
}

/// Write in every region (`durability=all`) and read each write at every node.
async fn write_in_every_region() {
    let client = http();
    let mut written = Vec::new();
    for (i, region) in REGIONS.iter().enumerate().map(|(i, r)| (i + 1, r)) {
        // Node 1 starts as the leader, but another may have won the region's first lease:
        // a follower answers 307 to its leader, followed here with the token.
        let r = concord_tests::send_following(
            client
                .put(format!("{}/v1/kv/e2e/from-{region}?durability=all", node_url(i, 1)))
                .body(format!("written in {region}")),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{region}: {}", r.text().await.unwrap());
        let token = r.headers()["concord-token"].to_str().unwrap().to_string();
        let ack: concord_api::WriteAck = r.json().await.unwrap();
        assert_eq!(ack.confirmed_by.len(), 2, "{region}: {ack:?}");
        written.push((region, token));
    }
    for (region, token) in &written {
        for i in 1..=REGIONS.len() {
            for (node, url) in region_nodes(i) {
                let r = client
                    .get(format!("{url}/v1/kv/e2e/from-{region}?wait_ms=20000"))
                    .header("concord-token", token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{node}");
                assert_eq!(r.text().await.unwrap(), format!("written in {region}"), "{node}");
            }
        }
    }
    println!("a write in each region read back at all 9 nodes");
}

/// Disconnect (or reconnect, keeping the service name as the DNS alias) every NATS
/// container of `region` from the `wan` network.
fn wan_link(compose: &Compose, region: &str, connect: bool) {
    let wan = compose.network("wan");
    for id in compose.containers(&[("concord.region", region), ("concord.role", "nats")]) {
        if connect {
            let service = docker::run(
                "docker",
                &["inspect", "-f", "{{index .Config.Labels \"com.docker.compose.service\"}}", &id],
            );
            docker::run("docker", &["network", "connect", "--alias", service.trim(), &wan, &id]);
        } else {
            docker::run("docker", &["network", "disconnect", &wan, &id]);
        }
    }
}

async fn put(url: &str, key: &str, value: &str) -> reqwest::Response {
    let req = http().put(format!("{url}/v1/kv/e2e/{key}?durability=region")).body(value.to_string());
    concord_tests::send_following(req).await.unwrap()
}

async fn cut_a_region_off_the_wan(compose: &Compose) {
    let client = http();
    wan_link(compose, "us-east", false);
    for (i, region) in REGIONS.iter().enumerate().map(|(i, r)| (i + 1, r)) {
        let r = put(&node_url(i, 1), "contested", &format!("{region} wrote this")).await;
        assert_eq!(r.status(), 200, "{region}");
    }
    // The cut is real: a write in us-east does not reach eu-west.
    assert_eq!(put(&node_url(1, 1), "during-the-cut", "from us-east").await.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = client.get(format!("{}/v1/kv/e2e/during-the-cut", node_url(2, 1))).send().await.unwrap();
    assert_eq!(r.status(), 404, "eu-west received a write us-east made while cut off");

    let healed = Instant::now();
    wan_link(compose, "us-east", true);
    let value = converged(&client, "contested", Duration::from_secs(120)).await;
    println!("reconnected us-east: all 9 nodes read contested = {value:?} after {:?}", healed.elapsed());
    assert_eq!(converged(&client, "during-the-cut", Duration::from_secs(60)).await, "from us-east");

    // Every region's conflict log records the conflict: us-east's version (written behind
    // the cut, concurrent with everything written on the other side) against the other
    // side's, with the winner reads show. eu-west's and ap-south's writes are only
    // concurrent if neither saw the other's first: a region that received the later one
    // before the earlier (by then history) keeps no record of the earlier (README).
    for (i, region) in REGIONS.iter().enumerate().map(|(i, r)| (i + 1, r)) {
        let url = node_url(i, 2);
        let since = Instant::now();
        loop {
            let body: Value = client
                .get(format!("{url}/v1/conflicts?bucket=e2e&key=contested"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let records = body["conflicts"].as_array().unwrap();
            let listed = |r: &Value| -> BTreeSet<String> {
                r["versions"].as_array().unwrap().iter().filter_map(|v| v["value"].as_str().map(String::from)).collect()
            };
            let recorded = records.iter().find(|r| {
                let values = listed(r);
                values.contains("us-east wrote this") && values.len() >= 2 && values.contains(&value)
            });
            if let Some(record) = recorded {
                let winner = record["versions"].as_array().unwrap().iter().find(|v| v["id"] == record["winner"]);
                assert_eq!(winner.map(|w| &w["value"]), Some(&Value::from(value.as_str())), "{region}: {record}");
                println!("{region}'s conflict log lists {:?}, the winner {value:?}", listed(record));
                break;
            }
            assert!(since.elapsed() < Duration::from_secs(60), "{region}'s conflict log: {records:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Wait until every node reads the same value of `e2e/key`; that value.
async fn converged(client: &reqwest::Client, key: &str, timeout: Duration) -> String {
    let since = Instant::now();
    loop {
        let mut values = BTreeSet::new();
        for i in 1..=REGIONS.len() {
            for (node, url) in region_nodes(i) {
                let value = match client.get(format!("{url}/v1/kv/e2e/{key}")).send().await {
                    Ok(r) if r.status() == 200 => r.text().await.unwrap(),
                    Ok(r) => format!("{node}: {}", r.status()),
                    Err(e) => format!("{node}: {e}"),
                };
                values.insert(value);
            }
        }
        if values.len() == 1 {
            return values.pop_first().unwrap();
        }
        assert!(since.elapsed() < timeout, "{key} did not converge in {timeout:?}: {values:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn kill_a_leader_container(compose: &Compose) {
    let nodes = region_nodes(1);
    let load = start_load_at(nodes.iter().map(|(_, u)| u.clone()).collect(), 2);
    while load.acked_count() < 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node that writes for us-east now (the lease may have moved since start).
    let leader = writing_node_among(&nodes, "", Duration::from_secs(30)).await;
    let (leader_url, container) =
        (nodes.iter().find(|(n, _)| *n == leader).unwrap().1.clone(), compose.service(&leader));
    let killed = Instant::now();
    docker::run("docker", &["kill", &container]);
    let writer = writing_node_among(&nodes, &leader, Duration::from_secs(30)).await;
    let took = killed.elapsed();
    let before = load.acked_count();
    while load.first_ack_after(killed + took).is_none() || load.acked_count() < before + 30 {
        assert!(killed.elapsed() < Duration::from_secs(60), "writes did not resume after {writer} took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = load.stop().await;
    let url = &nodes.iter().find(|(n, _)| *n == writer).unwrap().1;
    check_acked(url, &applied_token(url).await, &acked).await;
    println!(
        "killed the {leader} container: {writer} writes after {took:?}; {} acknowledged writes, none lost",
        acked.len()
    );

    // The old leader, started again, follows.
    docker::run("docker", &["start", &container]);
    let client = http();
    let since = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{leader_url}/v1/status")).send().await
            && let Ok(s) = r.json::<concord_api::StatusBody>().await
        {
            assert_eq!(s.role, "follower", "the restarted {leader} must not lead: {s:?}");
            assert_eq!(s.leader, writer);
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(60), "{leader} did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("{leader}, started again, follows {writer}");
}

/// The NATS server that leads `region`'s log, asked through NATS server `k` of region
/// number `i`.
async fn log_leader(i: usize, region: &str) -> String {
    let nc = concord_tests::nats_connect(docker::nats_url(i, 1, "admin")).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let stream = format!("CONCORD_LOG_{}", region.to_ascii_uppercase().replace('-', "_"));
    let info = js.get_stream(&stream).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "{stream} is kept in three copies");
    info.cluster.and_then(|c| c.leader).expect("the log has a leader")
}

async fn kill_the_nats_container_leading_a_log(compose: &Compose) {
    let nodes = region_nodes(2);
    let load = start_load_at(nodes.iter().map(|(_, u)| u.clone()).collect(), 2);
    while load.acked_count() < 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = log_leader(2, "eu-west").await;
    let killed = Instant::now();
    docker::run("docker", &["kill", &compose.service(&server)]);
    let before = load.acked_count();
    while load.first_ack_after(killed + Duration::from_millis(200)).is_none() || load.acked_count() < before + 30 {
        assert!(killed.elapsed() < Duration::from_secs(60), "writes did not continue after {server} died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = load.first_ack_after(killed + Duration::from_millis(200)).unwrap() - killed;
    let acked = load.stop().await;
    let writer = writing_node_among(&nodes, "", Duration::from_secs(30)).await;
    let url = &nodes.iter().find(|(n, _)| *n == writer).unwrap().1;
    let token = applied_token(url).await;
    check_acked(url, &token, &acked).await;
    // ap-south keeps receiving eu-west's changes.
    check_acked(&node_url(3, 2), &token, &acked).await;
    println!(
        "killed {server}, which led eu-west's log: writes continued after {resumed:?}; {} acknowledged writes, \
         none lost ({writer}, ap-south-2)",
        acked.len()
    );
}

/// `docker stop` (SIGTERM) a follower, a leader and a NATS server: each exits 0 within
/// the grace period.
fn stop_cleanly(compose: &Compose) {
    for service in ["ap-south-3", "ap-south-1", "nats-ap-south-3"] {
        let id = compose.service(service);
        let since = Instant::now();
        docker::run("docker", &["stop", "--time", "30", &id]);
        let took = since.elapsed();
        let code = docker::run("docker", &["inspect", "-f", "{{.State.ExitCode}}", &id]);
        assert_eq!(code.trim(), "0", "{service} did not stop cleanly");
        assert!(took < Duration::from_secs(30), "{service} took {took:?} to stop");
        println!("docker stop {service}: exited 0 after {took:?}");
    }
}
