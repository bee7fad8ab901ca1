//! The NetworkManager link source as a user sees it through the agent: NM announces one change
//! with a burst of signals, the agent reacts once, with NM's final state.

use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::world::{cli_json, example_config_for};

use crate::util::seed;

const WAIT: Duration = Duration::from_secs(10);

/// Each activation is a burst of a dozen NM signals (the connection appears activating, its
/// device prepares and gets an IP4Config, its wifi access point is set, it is activated, it
/// takes the default route). The links are recognised only by facts that come late in the
/// burst (gateway, DNS domain, address, SSID), so a state read or published half-way would show
/// up as a route of its own. Every RouteChanged of one user is collected in order, up to a last
/// step whose signal ends the list; each step must have given exactly one, with its final
/// route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_nm_signals_gives_one_route_change_with_the_final_state() {
    let s = seed().await;
    let mut world = s.world;
    let config = example_config_for(s.relay_a.port(), s.relay_b.port())
        .expect("config")
        .replace(
            "match = { id = \"ISP-A\" }",
            "match = { gateway = \"192.0.2.1\", domain = \"isp-a.example\", address = \"192.0.2.0/24\" }",
        );
    assert!(config.contains("domain = \"isp-a.example\""), "{config}");
    world.write_config(&config).expect("config");
    s.network.set("ISP-A");

    let nm = FakeNm::start(&world.system.address, vec![], 1)
        .await
        .expect("fake NM");
    world.start_agent().await.expect("agent starts");
    world
        .wait_route("bob", "held: no link", |r| r.hold == "no link")
        .await
        .unwrap();
    let agent = world.agent().await.unwrap();
    let mut changes = agent.receive_route_changed().await.unwrap();
    let mut next_of_bob = async || loop {
        let signal = tokio::time::timeout(WAIT, changes.next())
            .await
            .unwrap_or_else(|_| panic!("no RouteChanged\n{}", world.agent_log()))
            .expect("the signal stream ends with the bus");
        let args = signal.args().unwrap();
        if args.user == "bob" {
            return (args.relays.clone(), args.hold.to_string());
        }
    };

    // Offline -> ISP A: one change, to relay-a.
    nm.activate(
        ActiveSpec::ethernet("Line A", "eth0", "192.0.2.1")
            .with_domains(["isp-a.example"])
            .with_address("192.0.2.10/24"),
    )
    .await
    .unwrap();
    assert_eq!(
        next_of_bob().await,
        (vec!["relay-a".to_string()], String::new())
    );

    // ISP A -> home Wi-Fi (its SSID is read through the access point, last): one change, to
    // the Wi-Fi's hold.
    nm.activate(
        ActiveSpec::wifi("Home Network", "wlp2s0", "HomeNet-5G", "192.168.1.1")
            .with_domains(["home.arpa"]),
    )
    .await
    .unwrap();
    assert_eq!(
        next_of_bob().await,
        (
            Vec::new(),
            "no relay for link home-wifi for user bob".to_string()
        )
    );

    // The last step: ISP A takes the default route back. (Not the Wi-Fi going down: while a
    // primary connection deactivates, NM has no activated primary for a moment, which the
    // agent may rightly see.)
    nm.set_primary("Line A").await.unwrap();
    assert_eq!(
        next_of_bob().await,
        (vec!["relay-a".to_string()], String::new())
    );

    let status = cli_json(&world, &["status"]);
    let link = &status["link"];
    assert_eq!(link["name"], "isp-a", "{status}");
    assert_eq!(link["id"], "Line A", "{status}");
    assert_eq!(link["gateway"], "192.0.2.1", "{status}");
    assert_eq!(link["domains"], "isp-a.example", "{status}");
    assert_eq!(link["addresses"], "192.0.2.10", "{status}");
}

/// NM switching the default route back and forth without a pause (its signals land while the
/// agent is still reading the state they announce): the agent ends on the last link, whatever
/// it saw in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nm_switching_without_pause_ends_on_the_last_link() {
    let s = seed().await;
    let mut world = s.world;
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &world.system.address,
        vec![
            ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"),
            ActiveSpec::wifi("Home Network", "wlp2s0", "HomeNet-5G", "192.168.1.1"),
        ],
        4,
    )
    .await
    .expect("fake NM");
    world.start_agent().await.expect("agent starts");
    world
        .wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    for _ in 0..10 {
        nm.set_primary("Home Network").await.unwrap();
        nm.set_primary("ISP-A").await.unwrap();
    }
    nm.set_primary("Home Network").await.unwrap();
    world
        .wait_route("bob", "held on home-wifi", |r| {
            r.hold == "no relay for link home-wifi for user bob"
        })
        .await
        .unwrap();
    let status = cli_json(&world, &["status"]);
    assert_eq!(status["link"]["ssid"], "HomeNet-5G", "{status}");
}

/// NetworkManager 1.42 after the primary link lost its carrier while a second link was up:
/// PrimaryConnection is the healthy link and its device's Ip4Connectivity is full, but the
/// manager's Connectivity stayed NONE (computed from the failing device before the default
/// route moved) and State is CONNECTED_SITE. Mail goes out through the healthy link, and
/// `status` names it rather than saying "no link".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_global_connectivity_does_not_hold_mail_on_a_healthy_primary() {
    use linkrelay_dbus::nm::device::DeviceProxy;
    use linkrelay_dbus::nm::manager::NetworkManagerProxy;

    let s = seed().await;
    let mut world = s.world;
    // ISP-B unmetered, so that only connectivity could hold Bob's mail on it.
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &world.system.address,
        vec![
            ActiveSpec::ethernet("ISP-B", "veth-b", "198.51.100.1"),
            ActiveSpec::ethernet("ISP-A", "veth-a", "192.0.2.1"),
        ],
        4,
    )
    .await
    .expect("fake NM");
    nm.set_device_connectivity("veth-a", 4, 0).await.unwrap();
    nm.set_device_connectivity("veth-b", 4, 0).await.unwrap();
    nm.set_primary("ISP-A").await.unwrap();
    world.start_agent().await.expect("agent starts");
    world
        .wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();

    // The carrier of ISP-A goes: NM computes NONE from its device, then moves the default
    // route to ISP-B and does not compute the global value again.
    nm.set_device_connectivity("veth-a", 1, 0).await.unwrap();
    nm.set_connectivity(1).await.unwrap();
    s.network.set("ISP-B");
    nm.set_primary("ISP-B").await.unwrap();
    nm.deactivate("ISP-A").await.unwrap();

    // The service is in the stale state the issue describes.
    let manager = NetworkManagerProxy::new(nm.connection()).await.unwrap();
    let primary = manager.primary_connection().await.unwrap();
    assert_eq!(Some(primary.to_string()), nm.active_path("ISP-B").await);
    assert_eq!(manager.connectivity().await.unwrap(), 1, "global NONE");
    assert_eq!(manager.state().await.unwrap(), 60, "CONNECTED_SITE");
    let device_path = nm.device_path("veth-b").await.expect("veth-b's device");
    let device = DeviceProxy::builder(nm.connection())
        .path(zbus::OwnedObjectPath::try_from(device_path).unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(device.ip4_connectivity().await.unwrap(), 4, "device FULL");

    world
        .wait_route("bob", "via relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    world
        .send("bob@bob.example", "ivan@dest.example", "after-the-pull")
        .unwrap();
    s.relay_b.wait_for(1, WAIT).await.unwrap();

    let status = cli_json(&world, &["status"]);
    assert_eq!(status["link"]["name"], "isp-b", "{status}");
    assert_eq!(status["link"]["id"], "ISP-B", "{status}");
    assert_eq!(status["link"]["connectivity"], "full", "{status}");
    let text = world.run_cli(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("no link"), "{text}");
    assert!(!text.contains("no [[link]] rule matches"), "{text}");
}

/// The primary link's device reports no Internet while NM's global value still says full:
/// mail waits, and the reason names the link by rule, NM id and interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectivity_none_on_the_primary_holds_mail_and_names_the_link() {
    let s = seed().await;
    let mut world = s.world;
    s.network.set("ISP-B");
    let nm = FakeNm::start(
        &world.system.address,
        vec![ActiveSpec::ethernet("ISP-B", "veth-b", "198.51.100.1")],
        4,
    )
    .await
    .expect("fake NM");
    nm.set_device_connectivity("veth-b", 1, 1).await.unwrap();
    world.start_agent().await.expect("agent starts");
    let reason = "connectivity none on isp-b (ISP-B, veth-b)";
    world
        .wait_route("bob", reason, |r| r.hold == reason)
        .await
        .unwrap();
    world
        .send("bob@bob.example", "ivan@dest.example", "no-internet")
        .unwrap();
    let queue = cli_json(&world, &["queue", "--user", "bob"]);
    assert_eq!(queue[0]["status"], format!("held: {reason}"), "{queue}");
    let status = cli_json(&world, &["status"]);
    assert_eq!(status["link"]["name"], "isp-b", "{status}");

    // The check passes again: the device's change alone sends the mail.
    nm.set_device_connectivity("veth-b", 4, 0).await.unwrap();
    s.relay_b.wait_for(1, WAIT).await.unwrap();
}

/// NetworkManager brings a link up in steps: it becomes the primary connection while its
/// device's connectivity is still NONE, and turns FULL a moment later. With a debounce of an
/// hour, both steps fall inside the window that the agent's start opened (the first, a hold
/// for another, waits); the second makes mail sendable, so it applies at once and the queued
/// mail goes out (it would wait the hour otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_becomes_usable_is_used_at_once_whatever_the_debounce() {
    let s = seed().await;
    let mut world = s.world;
    let config = example_config_for(s.relay_a.port(), s.relay_b.port())
        .expect("config")
        .replace("debounce = \"50ms\"", "debounce = \"1h\"");
    assert!(config.contains("debounce = \"1h\""), "{config}");
    world.write_config(&config).expect("config");
    s.network.set("ISP-A");
    let nm = FakeNm::start(&world.system.address, vec![], 1)
        .await
        .expect("fake NM");
    // The device exists (as after an earlier connection), its connectivity not checked yet.
    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    nm.deactivate("ISP-A").await.unwrap();
    nm.set_device_connectivity("eth0", 1, 1).await.unwrap();
    world.start_agent().await.expect("agent starts");
    world
        .wait_route("bob", "held: no link", |r| r.hold == "no link")
        .await
        .unwrap();
    world
        .send(
            "bob@bob.example",
            "ivan@dest.example",
            "first-after-link-up",
        )
        .unwrap();

    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    nm.set_device_connectivity("eth0", 4, 1).await.unwrap();
    s.relay_a.wait_for(1, WAIT).await.unwrap();
    let status = cli_json(&world, &["status"]);
    assert_eq!(status["link"]["name"], "isp-a", "{status}");
    assert_eq!(status["link"]["connectivity"], "full", "{status}");
}
