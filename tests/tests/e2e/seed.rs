//! The scenario linkrelay exists for: two ISPs, two relays that each refuse the other ISP's
//! clients, two users, a laptop moving between links.

use std::time::Duration;

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::world::cli_json;

use crate::util::{eventually, seed, subjects};

const WAIT: Duration = Duration::from_secs(10);

fn eth(id: &str, iface: &str, gw: &str) -> ActiveSpec {
    ActiveSpec::ethernet(id, iface, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario() {
    let mut s = seed().await;
    // Offline: NetworkManager runs but no link is up.
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .expect("fake NM");
    s.world.start_agent().await.expect("agent starts");
    let w = &s.world;
    w.wait_route("alice", "held: no link", |r| r.hold == "no link")
        .await
        .unwrap();

    // 1. Mail queued offline waits, and says why.
    w.send("alice@isp-a.example", "carol@dest.example", "offline-alice")
        .unwrap();
    w.send("bob@bob.example", "dave@dest.example", "offline-bob-1")
        .unwrap();
    w.send(
        "bob@bob.example",
        "erin@dest.example, frank@dest.example",
        "offline-bob-2",
    )
    .unwrap();
    let queue = cli_json(w, &["queue"]);
    let list = queue.as_array().unwrap();
    assert_eq!(list.len(), 3, "{queue}");
    for m in list {
        assert_eq!(m["status"], "held: no link", "{m}");
    }
    let users: Vec<&str> = list.iter().map(|m| m["user"].as_str().unwrap()).collect();
    assert_eq!(users.iter().filter(|u| **u == "alice").count(), 1);
    assert_eq!(users.iter().filter(|u| **u == "bob").count(), 2);

    // 2. ISP A comes up: everything goes out through relay A, once.
    s.network.set("ISP-A");
    nm.activate(eth("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    s.relay_a.wait_for(3, WAIT).await.unwrap();
    let mut got = subjects(&s.relay_a);
    got.sort();
    assert_eq!(got, ["offline-alice", "offline-bob-1", "offline-bob-2"]);
    let two = s
        .relay_a
        .received()
        .into_iter()
        .find(|r| r.data_text().contains("offline-bob-2"))
        .unwrap();
    assert_eq!(two.rcpts, ["erin@dest.example", "frank@dest.example"]);
    assert_eq!(two.from, "bob@bob.example");
    assert!(s.relay_b.received().is_empty());
    eventually("the outboxes are empty", w, || {
        w.outbox_entries("alice", "queue").is_empty() && w.outbox_entries("bob", "queue").is_empty()
    })
    .await;
    assert_eq!(w.outbox_entries("bob", "sent").len(), 2);

    // 3. Switch to ISP B: Bob's new mail goes through relay B (with his login); Alice has no
    // relay on B, so hers waits, and the status says why.
    s.network.set("ISP-B");
    nm.deactivate("ISP-A").await.unwrap();
    nm.activate(eth("ISP-B", "wwan0", "198.51.100.1"))
        .await
        .unwrap();
    w.wait_route("bob", "via relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    let alice = w.route("alice").await.unwrap().unwrap();
    assert_eq!(alice.hold, "no relay for link isp-b for user alice");
    w.send("bob@bob.example", "gina@dest.example", "on-b")
        .unwrap();
    s.relay_b.wait_for(1, WAIT).await.unwrap();
    let on_b = &s.relay_b.received()[0];
    assert_eq!(on_b.authenticated_as.as_deref(), Some("bob"));
    assert!(on_b.data_text().contains("Subject: on-b"));
    w.send(
        "alice@isp-a.example",
        "carol@dest.example",
        "alice-waits-for-a",
    )
    .unwrap();
    let status = cli_json(w, &["status"]);
    let alice = status["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(alice["hold"], "no relay for link isp-b for user alice");
    assert_eq!(status["link"]["name"], "isp-b");
    assert_eq!(status["link"]["id"], "ISP-B");
    assert_eq!(status["link"]["interface"], "wwan0");

    // 4. Override to the wrong relay: relay A refuses us on ISP B. Nothing bounces; the message
    // waits and the queue says why. Clearing the override delivers it through B.
    let a_before = s.relay_a.received().len();
    let out = w.run_cli(&["override", "--relay", "relay-a"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    w.send("bob@bob.example", "hank@dest.example", "wrong-relay")
        .unwrap();
    let mut waiting = serde_json::Value::Null;
    for _ in 0..500 {
        let q = cli_json(w, &["queue", "--user", "bob"]);
        if let Some(m) = q.as_array().unwrap().iter().find(|m| {
            m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("Relay access denied"))
        }) {
            waiting = m.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        waiting["folder"],
        "queue",
        "never refused: {}",
        w.agent_log()
    );
    assert!(
        waiting["status"]
            .as_str()
            .unwrap()
            .contains("relay-a refuses us"),
        "{waiting}"
    );
    assert_eq!(waiting["recipients"][0]["state"], "pending");
    assert_eq!(
        s.relay_a.received().len(),
        a_before,
        "relay A must not have taken it"
    );
    assert!(
        w.outbox_entries("bob", "failed").is_empty(),
        "nothing bounces"
    );
    let out = w.run_cli(&["override", "--clear"]).unwrap();
    assert!(out.status.success());
    s.relay_b.wait_for(2, WAIT).await.unwrap();
    assert!(subjects(&s.relay_b).contains(&"wrong-relay".to_string()));

    // 5. NetworkManager restarts: the agent notices it leave, holds, and follows the new one.
    nm.stop().await.unwrap();
    w.wait_route("bob", "held while NM is gone", |r| !r.hold.is_empty())
        .await
        .unwrap();
    let status = cli_json(w, &["status"]);
    assert!(
        status["source_problem"]
            .as_str()
            .unwrap_or("")
            .contains("NetworkManager is not running"),
        "{status}"
    );
    w.send("bob@bob.example", "ivan@dest.example", "during-nm-restart")
        .unwrap();
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &w.system.address,
        vec![eth("ISP-A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.wait_route("bob", "via relay-a again", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    // Alice's message from step 3 and Bob's from the restart both go out through A.
    s.relay_a.wait_for(a_before + 2, WAIT).await.unwrap();
    let got = subjects(&s.relay_a);
    assert!(got.contains(&"alice-waits-for-a".to_string()), "{got:?}");
    assert!(got.contains(&"during-nm-restart".to_string()), "{got:?}");

    // 6. Captive portal: held until connectivity is full again.
    nm.set_connectivity(2).await.unwrap();
    w.wait_route("bob", "held behind the portal", |r| {
        r.hold.contains("captive portal")
    })
    .await
    .unwrap();
    let a_now = s.relay_a.received().len();
    w.send("bob@bob.example", "judy@dest.example", "behind-portal")
        .unwrap();
    let q = cli_json(w, &["queue", "--user", "bob"]);
    assert_eq!(
        q[0]["status"], "held: captive portal on isp-a (ISP-A, eth0)",
        "{q}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.relay_a.received().len(),
        a_now,
        "nothing is sent behind a portal"
    );
    nm.set_connectivity(4).await.unwrap();
    s.relay_a.wait_for(a_now + 1, WAIT).await.unwrap();

    // Every message was delivered exactly once, and none failed.
    let mut all = subjects(&s.relay_a);
    all.extend(subjects(&s.relay_b));
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        all.len(),
        dedup.len(),
        "a message was delivered twice: {all:?}"
    );
    assert_eq!(all.len(), 8, "{all:?}");
    assert!(w.outbox_entries("alice", "failed").is_empty());
    assert!(w.outbox_entries("bob", "failed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_present_before_start_is_used_and_metered_link_holds() {
    let mut s = seed().await;
    s.network.set("ISP-B");
    let nm = FakeNm::start(
        &s.world.system.address,
        vec![eth("ISP-B", "wwan0", "198.51.100.1").with_metered(true)],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    // The agent read the link at start-up (nothing changed after it started).
    let bob = w.route("bob").await.unwrap().unwrap();
    assert_eq!(bob.hold, "metered link isp-b (ISP-B, wwan0), hold");
    w.send("bob@bob.example", "kim@dest.example", "metered")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.relay_b.received().is_empty(), "held on a metered link");
    nm.set_metered("ISP-B", false).await.unwrap();
    s.relay_b.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_primary_connection_settles_on_the_last_link() {
    let mut s = seed().await;
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &s.world.system.address,
        vec![eth("ISP-A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    nm.activate(eth("ISP-B", "wwan0", "198.51.100.1"))
        .await
        .unwrap();
    nm.set_primary("ISP-A").await.unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    // Flap A -> B -> A -> B -> A within the debounce window.
    for id in ["ISP-B", "ISP-A", "ISP-B", "ISP-A"] {
        nm.set_primary(id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = cli_json(w, &["status"]);
    assert_eq!(status["link"]["id"], "ISP-A", "{status}");
    w.send("bob@bob.example", "lee@dest.example", "after-flap")
        .unwrap();
    s.relay_a.wait_for(1, WAIT).await.unwrap();
    assert!(s.relay_b.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wifi_is_matched_by_ssid_and_its_facts_are_published() {
    let mut s = seed().await;
    let _nm = FakeNm::start(
        &s.world.system.address,
        vec![
            ActiveSpec::wifi("Home Network", "wlp2s0", "HomeNet-5G", "192.168.1.1")
                .with_domains(["home.arpa"]),
        ],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    let status = cli_json(&s.world, &["status"]);
    let link = &status["link"];
    assert_eq!(link["name"], "home-wifi", "{status}");
    assert_eq!(link["ssid"], "HomeNet-5G");
    assert_eq!(link["type"], "802-11-wireless");
    assert_eq!(link["interface"], "wlp2s0");
    assert_eq!(link["gateway"], "192.168.1.1");
    assert_eq!(link["domains"], "home.arpa");
    assert_eq!(link["connectivity"], "full");
    // The example routes nobody over home-wifi: mail is held, and status says why.
    let bob = s.world.route("bob").await.unwrap().unwrap();
    assert_eq!(bob.hold, "no relay for link home-wifi for user bob");
    let human = text(&s.world.run_cli(&["status"]).unwrap().stdout);
    assert!(
        human.contains(
            "link:      home-wifi (802-11-wireless Home Network, on wlp2s0, ssid HomeNet-5G"
        ),
        "{human}"
    );
}
