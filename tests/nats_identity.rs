//! Who may do what on a deployment's NATS (`concord cluster up`): every connection
//! authenticates, each node publishes its region's log on its own subject only, and a
//! changeset whose publisher does not own its origin's epoch is refused by every
//! replica, counted, and kept as a dead letter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use concord_core::changeset::{ChangeBody, Changeset};
use concord_tests::tls::{self, Outcome};
use concord_tests::{Cluster, http, metric, metrics_page, nats_connect, status};

const LOG: &str = "CONCORD_LOG_US_EAST";

/// A connection as `user` (password from the deployment's secrets) that records the
/// errors the server reports (a permissions violation is reported, not returned).
async fn connect_recording(
    cluster: &Cluster,
    region: &str,
    user: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let password = std::fs::read_to_string(cluster.dir.0.join("secrets/nats").join(user)).unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.trim().into())
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(cluster.nats_anonymous(region))
        .await
        .unwrap();
    (client, errors)
}

/// Wait until the server has reported an error mentioning `what`.
async fn wait_violation(errors: &Mutex<Vec<String>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation") && e.contains(what)) {
        assert!(Instant::now() < deadline, "no permissions violation for {what}: {:?}", errors.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn last_seq(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_strangers_and_keeps_each_node_to_its_own_subject() {
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 1, &[]);
    let client = http();
    let us = cluster.url("us-east");
    assert_eq!(client.put(format!("{us}/v1/kv/b/k")).body("v").send().await.unwrap().status(), 200);
    cluster.wait_converged(Duration::from_secs(60)).await;

    // Without credentials, or with a wrong password, no connection at all.
    for url in [cluster.nats_anonymous("us-east"), cluster.nats_anonymous("eu-west")] {
        let refused = nats_connect(&url).await.expect_err("an anonymous connection is refused");
        assert_eq!(refused.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{refused}");
    }
    let wrong = cluster.nats_anonymous("us-east").replacen("://", "://admin:not-the-password@", 1);
    assert!(nats_connect(&wrong).await.is_err(), "a wrong password is refused");

    let admin = jetstream::new(nats_connect(cluster.nats("us-east")).await.unwrap());
    let eu_admin = jetstream::new(nats_connect(cluster.nats("eu-west")).await.unwrap());
    let (us_before, eu_before) = (last_seq(&admin, LOG).await, last_seq(&eu_admin, "CONCORD_LOG_EU_WEST").await);

    // us-east's follower may publish on its own log subject only: not as its leader,
    // not on the subject of before identities, not into eu-west's log (through its own
    // region's servers, or eu-west's: it has no user there).
    let (follower, errors) = connect_recording(&cluster, "us-east", "us-east-2").await;
    for subject in ["concord.log.us-east.us-east-1", "concord.log.us-east", "concord.log.eu-west.eu-west-1"] {
        follower.publish(subject, Bytes::from_static(b"not a changeset")).await.unwrap();
        follower.flush().await.unwrap();
        wait_violation(&errors, subject).await;
    }
    let other_region =
        nats_connect(cluster.nats_as("eu-west", "us-east-2")).await.expect_err("us-east's node has no user in eu-west");
    assert_eq!(other_region.kind(), async_nats::ConnectErrorKind::AuthorizationViolation);

    // Nor may it remove or rewrite what the logs and the lease history hold.
    let js = jetstream::new(follower.clone());
    for subject in [format!("$JS.API.STREAM.DELETE.{LOG}"), format!("$JS.API.STREAM.PURGE.{LOG}")] {
        follower.publish(subject.clone(), Bytes::new()).await.unwrap();
        follower.flush().await.unwrap();
        wait_violation(&errors, &subject).await;
    }
    let owners = js.get_key_value("concord_owners").await.unwrap();
    let owner = owners.get("owner.us-east.1").await.unwrap().expect("the leader recorded its epoch");
    assert_eq!(owner, "us-east-1");
    assert!(owners.put("owner.us-east.1", "us-east-2".into()).await.is_err(), "an owner record is never replaced");
    assert!(owners.delete("owner.us-east.1").await.is_err(), "nor deleted");
    assert!(owners.purge("owner.us-east.1").await.is_err(), "nor purged");
    assert_eq!(owners.get("owner.us-east.1").await.unwrap().unwrap(), "us-east-1");

    // The client user (what applications get) reaches the API subjects only.
    let (app, app_errors) = connect_recording(&cluster, "us-east", "client").await;
    app.publish("concord.log.us-east.us-east-1", Bytes::from_static(b"x")).await.unwrap();
    app.flush().await.unwrap();
    wait_violation(&app_errors, "concord.log.us-east.us-east-1").await;

    // Nothing of that reached a log: admin (an operator) sees the same last sequences.
    assert_eq!(last_seq(&admin, LOG).await, us_before);
    assert_eq!(last_seq(&eu_admin, "CONCORD_LOG_EU_WEST").await, eu_before);
    assert_eq!(client.put(format!("{us}/v1/kv/b/after")).body("w").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_writing_as_its_leader_is_refused_by_every_replica_and_counted() {
    let cluster = Cluster::start_full(&["us-east", "eu-west"], 1, &[]);
    let client = http();
    let (us, eu, follower_url) = (cluster.url("us-east"), cluster.url("eu-west"), cluster.nodes["us-east-2"].clone());
    assert_eq!(client.put(format!("{us}/v1/kv/b/real")).body("1").send().await.unwrap().status(), 200);
    cluster.wait_converged(Duration::from_secs(60)).await;

    // The follower takes the leader's newest changeset and writes the next one as the
    // leader's origin, on the only log subject its credentials allow: its own.
    let admin = jetstream::new(nats_connect(cluster.nats("us-east")).await.unwrap());
    let log = admin.get_stream(LOG).await.unwrap();
    let newest = log.direct_get(last_seq(&admin, LOG).await).await.unwrap();
    let real = Changeset::decode(&newest.payload).unwrap();
    let mut change = real.changes.iter().find(|c| matches!(c.body, ChangeBody::Put { .. })).unwrap().clone();
    change.key = "forged".into();
    change.body = ChangeBody::Put { value: b"evil".to_vec(), vv: Default::default() };
    let forged = Changeset { origin: real.origin.clone(), first_seq: real.last_seq() + 1, changes: vec![change] };
    let follower = jetstream::new(nats_connect(cluster.nats_as("us-east", "us-east-2")).await.unwrap());
    follower
        .publish("concord.log.us-east.us-east-2", forged.encode().into())
        .await
        .unwrap()
        .await
        .expect("NATS stores what a node publishes on its own subject");

    // Every replica refuses it: a dead letter and the counter, on both regions' nodes.
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in [&us, &follower_url, &eu] {
        loop {
            let page = metrics_page(&client, url).await;
            if metric(&page, "concord_forged_total", &[]).unwrap_or(0.0) >= 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{url} never counted the forged changeset:\n{page}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(status(&client, url).await.dead_letters >= 1, "{url} keeps it as a dead letter");
    }

    // The leader writes on (the forged message only moved the log's sequence), and
    // what it writes after arrives everywhere; the forged value nowhere.
    let w = client.put(format!("{us}/v1/kv/b/after")).body("2").send().await.unwrap();
    assert_eq!(w.status(), 200, "{}", w.text().await.unwrap());
    cluster.wait_converged(Duration::from_secs(60)).await;
    for url in [&us, &follower_url, &eu] {
        let after = client.get(format!("{url}/v1/kv/b/after")).send().await.unwrap();
        let after = if after.status() == 200 { after.text().await.unwrap() } else { String::new() };
        assert_eq!(after, "2", "{url}");
        let r = client.get(format!("{url}/v1/kv/b/forged")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url} applied the forged changeset");
    }
    let dead = client.get(format!("{eu}/v1/dead-letters")).send().await.unwrap().text().await.unwrap();
    assert!(dead.contains("forged"), "the dead letter says why: {dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_links_between_regions_take_mutual_tls_only() {
    let cluster = Cluster::start(&["us-east", "eu-west"]);
    for region in ["us-east", "eu-west"] {
        // The backbone server's route and leaf ports (indented: inside `cluster` and
        // `leafnodes`; its client port is not a link between regions).
        let conf = std::fs::read_to_string(cluster.dir.0.join(format!("backbone-{region}.conf"))).unwrap();
        let links: Vec<&str> = conf.lines().filter_map(|l| l.strip_prefix("  listen: \"")?.strip_suffix('"')).collect();
        assert_eq!(links.len(), 2, "a route port and a leaf port:\n{conf}");
        let (route, leaf) = (links[0], links[1]);
        // The leaf port says it takes TLS only, with a client certificate.
        let info = concord_tests::nats_info(leaf);
        assert_eq!((&info["tls_required"], &info["tls_verify"]), (&true.into(), &true.into()), "{leaf}: {info}");
        // Both ports complete a handshake with a certificate of the deployment's CA
        // (the route then sends its INFO over TLS), and refuse one without.
        let tls_dir = cluster.dir.0.join("secrets/tls");
        match tls::handshake(route, "127.0.0.1", &tls_dir, true, false).await {
            Outcome::Accepted(Some(line)) => assert!(line.starts_with("INFO "), "{route}: {line}"),
            other => panic!("backbone-{region}'s route port {route}: {other:?}"),
        }
        assert!(matches!(tls::handshake(leaf, "127.0.0.1", &tls_dir, true, true).await, Outcome::Accepted(_)));
        for (addr, info_first) in [(route, false), (leaf, true)] {
            let without = tls::handshake(addr, "127.0.0.1", &tls_dir, false, info_first).await;
            assert!(matches!(without, Outcome::Refused(_)), "{addr} took a link without a certificate: {without:?}");
        }
        // In the clear, the route port sends nothing and closes.
        assert!(concord_tests::nats_info_or_nothing(route).is_none(), "{route} speaks plain text");
        let region_conf = std::fs::read_to_string(cluster.dir.0.join(format!("nats-{region}.conf"))).unwrap();
        assert!(region_conf.contains("ca_file:"), "the region's leaf connections check the backbone's certificate");
        // A region's own NATS asks every client for credentials.
        let client_addr = cluster.nats_anonymous(region).trim_start_matches("nats://").to_string();
        assert_eq!(concord_tests::nats_info(&client_addr)["auth_required"], true);
    }
    let key = cluster.dir.0.join("secrets/tls/server-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is the user's alone");

    // And the regions replicate over those links.
    let client = http();
    let w = client.put(format!("{}/v1/kv/b/over-tls", cluster.url("us-east"))).body("yes").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let token = w.headers()["concord-token"].to_str().unwrap().to_string();
    let r = client
        .get(format!("{}/v1/kv/b/over-tls?wait_ms=30000", cluster.url("eu-west")))
        .header("concord-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "yes");
}
