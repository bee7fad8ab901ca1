//! `linkrelay flush --connect`: the CLI asks NetworkManager (the NM-shaped service, with saved
//! profiles and ActivateConnection as NM 1.42 has them) to bring up a connection whose link has
//! a relay for the user, waits until the agent routes over it, and flushes.

use std::time::Duration;

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;

use crate::util::{Seed, seed, subjects, wait_queued};

/// The seed world offline, with NetworkManager knowing `profiles` but none up.
async fn offline(profiles: Vec<ActiveSpec>) -> (Seed, FakeNm) {
    let mut s = seed().await;
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    for p in profiles {
        nm.add_profile(p).await.unwrap();
    }
    s.world.start_agent().await.unwrap();
    s.world
        .wait_route("bob", "held: no link", |r| r.hold == "no link")
        .await
        .unwrap();
    (s, nm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_send_brings_up_a_link_with_a_relay_and_flushes() {
    let (s, nm) = offline(vec![
        ActiveSpec::wifi("Cafe", "wlan0", "Cafe Free", "10.9.9.1"),
        ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"),
        ActiveSpec::gsm("ISP-B", "wwan0", "198.51.100.1"),
    ])
    .await;
    let w = &s.world;
    s.network.set("ISP-A");
    w.send("bob@bob.example", "dave@dest.example", "dial-up")
        .unwrap();
    wait_queued(w, "bob", 1).await;
    assert!(s.relay_a.received().is_empty());

    let out = w.run_cli(&["flush", "--connect"]).unwrap();
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        text(&out.stderr),
        w.agent_log()
    );
    assert_eq!(
        said,
        "connecting ISP-A (link isp-a: a relay for bob)\nbob: via relay-a\nbob: sent 1, 0 still queued\n"
    );
    assert_eq!(nm.active_ids().await, ["ISP-A"]);
    assert_eq!(subjects(&s.relay_a), ["dial-up"]);
    assert!(w.outbox_entries("bob", "queue").is_empty());

    // Already routed: nothing to bring up, it just flushes. With --json the words go to
    // stderr and stdout stays JSON.
    let out = w
        .run_cli(&["flush", "--connect", "--user", "bob", "--json"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "bob: a relay is reachable on this link already\n"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"user": "bob", "sent": 0, "remaining": 0}])
    );
    assert_eq!(nm.active_ids().await, ["ISP-A"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_why_when_no_saved_connection_helps() {
    // Alice's only relay is on ISP A; NetworkManager knows ISP B (and a cafe) only.
    let (s, nm) = offline(vec![
        ActiveSpec::wifi("Cafe", "wlan0", "Cafe Free", "10.9.9.1"),
        ActiveSpec::gsm("ISP-B", "wwan0", "198.51.100.1"),
    ])
    .await;
    let w = &s.world;
    w.send("alice@isp-a.example", "carol@dest.example", "waits")
        .unwrap();
    wait_queued(w, "alice", 1).await;
    let out = w
        .run_cli(&["flush", "--connect", "--user", "alice"])
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "NetworkManager has no saved connection for the links with a relay for alice (isp-a)"
        ),
        "{err}"
    );
    assert!(nm.active_ids().await.is_empty());
    assert_eq!(w.wait_entries("alice", "queue", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_a_polkit_refusal() {
    let (s, nm) = offline(vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")]).await;
    let w = &s.world;
    nm.set_network_control(false);
    w.send("bob@bob.example", "dave@dest.example", "waits")
        .unwrap();
    wait_queued(w, "bob", 1).await;
    let out = w.run_cli(&["flush", "--connect"]).unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("NetworkManager did not let you activate a connection (Not authorized to control networking.)"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(nm.active_ids().await.is_empty());
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_networkmanager_says_to_connect_by_hand() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "dave@dest.example", "waits")
        .unwrap();
    wait_queued(w, "bob", 1).await;
    let out = w.run_cli(&["flush", "--connect"]).unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("NetworkManager is not running on the system bus; connect by hand, then `linkrelay flush`"),
        "{err}"
    );
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
}
