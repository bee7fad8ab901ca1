//! The netlink link source: the real agent inside a network namespace of its own (veth
//! uplinks, real kernel routes), relays on that namespace's loopback; and `auto` handing over
//! between NetworkManager (the NM-shaped service) and netlink. Needs root (CI runs as root).

use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::netns::NetNs;
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

use crate::util::{eventually, subjects};

const WAIT: Duration = Duration::from_secs(10);

/// A laptop with two uplinks: `upa` (fibre, IPv4 198.51.100.2/24, gateway .1) and `upb`
/// (mobile, 203.0.113.2/24 and 2001:db8:b::2/64, gateways .1 and 2001:db8:b::1), no routes yet;
/// and a relay per link on the namespace's own loopback.
struct Laptop {
    world: World,
    relay_a: ScriptedRelay,
    relay_b: ScriptedRelay,
    // Dropped last: the agent (in `world`) is stopped before the namespace goes.
    ns: NetNs,
}

fn config(source: &str, port_a: u16, port_b: u16) -> String {
    Config::new()
        .agent("source", source)
        .agent("debounce", "50ms")
        .retry("min", "1s")
        .retry("max", "2s")
        // NetworkManager's name for the office network; netlink never sees it.
        .link(Link::new("office").id("Office"))
        .link(
            Link::new("fibre")
                .matching("interface", "upa")
                .matching("type", "veth")
                .matching("gateway", "198.51.100.1"),
        )
        .link(Link::new("mobile").matching("address", "2001:db8:b::/48"))
        .relay(Relay::local("relay-a", port_a).timeout("5s"))
        .relay(Relay::local("relay-b", port_b).timeout("5s"))
        .user(
            User::new("me")
                .from(["*"])
                .route("fibre", ["relay-a"])
                .route("mobile", ["relay-b"]),
        )
        .to_string()
}

async fn laptop(source: &str) -> Laptop {
    let ns = NetNs::new().expect("a network namespace (run the tests as root)");
    ns.add_uplink("upa").unwrap();
    ns.add_uplink("upb").unwrap();
    ns.ip("addr add 198.51.100.2/24 dev upa").unwrap();
    ns.ip("addr add 203.0.113.2/24 dev upb").unwrap();
    ns.ip("addr add 2001:db8:b::2/64 dev upb nodad").unwrap();
    let relay_a = ScriptedRelay::start_on(
        RelayScript::named("relay-a.test"),
        ns.loopback_listener().unwrap(),
    )
    .unwrap();
    let relay_b = ScriptedRelay::start_on(
        RelayScript::named("relay-b.test"),
        ns.loopback_listener().unwrap(),
    )
    .unwrap();
    let world = World::new().unwrap();
    world
        .write_config(&config(source, relay_a.port(), relay_b.port()))
        .unwrap();
    Laptop {
        world,
        relay_a,
        relay_b,
        ns,
    }
}

impl Laptop {
    async fn start(&mut self) {
        self.world.start_agent_in(&self.ns, &[]).await.unwrap();
    }

    fn status(&self) -> Value {
        cli_json(&self.world, &["status"])
    }

    /// Waits until the published link is rule `name` (`None`: no link) and returns the status.
    async fn wait_link(&self, name: Option<&str>) -> Value {
        let mut last = Value::Null;
        for _ in 0..500 {
            last = self.status();
            let now = last["link"]["name"].as_str();
            let ok = match name {
                Some(n) => now == Some(n),
                None => last["link"].is_null(),
            };
            if ok {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the link never became {name:?}; last status: {last:#}\nagent log:\n{}",
            self.world.agent_log()
        );
    }

    /// Queues a message with `subject` and waits until `relay` has it (and the other does not).
    async fn delivered_via(&self, subject: &str, relay: &ScriptedRelay, other: &ScriptedRelay) {
        let before = relay.received().len();
        self.world
            .send("me@laptop.example", "you@dest.example", subject)
            .unwrap();
        relay.wait_for(before + 1, WAIT).await.unwrap();
        assert!(subjects(relay).contains(&subject.to_string()));
        assert!(
            !subjects(other).contains(&subject.to_string()),
            "{subject} went through the wrong relay"
        );
        let w = &self.world;
        eventually("the outbox is empty", w, || {
            w.outbox_entries("me", "queue").is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netlink_follows_the_default_route_as_it_moves_and_changes_metric() {
    let mut l = laptop("netlink").await;
    l.ns.ip("route add default via 198.51.100.1 dev upa metric 100")
        .unwrap();
    l.ns.ip("route add default via 203.0.113.1 dev upb metric 200")
        .unwrap();
    l.start().await;

    let status = l.wait_link(Some("fibre")).await;
    assert_eq!(status["source"], "netlink", "{status:#}");
    assert_eq!(status["source_problem"], Value::Null);
    let link = &status["link"];
    assert_eq!(link["interface"], "upa");
    assert_eq!(link["id"], "upa");
    assert_eq!(link["type"], "veth");
    assert_eq!(link["gateway"], "198.51.100.1");
    assert_eq!(link["addresses"], "198.51.100.2");
    assert_eq!(link["connectivity"], "unknown");
    l.delivered_via("on-fibre", &l.relay_a, &l.relay_b).await;

    // The default route moves to the other uplink (same metric: replaced in place).
    l.ns.ip("route replace default via 203.0.113.1 dev upb metric 100")
        .unwrap();
    let status = l.wait_link(Some("mobile")).await;
    let link = &status["link"];
    assert_eq!(link["interface"], "upb");
    assert_eq!(link["gateway"], "203.0.113.1");
    assert_eq!(link["addresses"], "203.0.113.2,2001:db8:b::2");
    l.delivered_via("after-replace", &l.relay_b, &l.relay_a)
        .await;

    // A better metric on the fibre wins; removing it gives the link back.
    l.ns.ip("route add default via 198.51.100.1 dev upa metric 50")
        .unwrap();
    l.wait_link(Some("fibre")).await;
    l.delivered_via("better-metric", &l.relay_a, &l.relay_b)
        .await;
    l.ns.ip("route del default via 198.51.100.1 dev upa metric 50")
        .unwrap();
    l.wait_link(Some("mobile")).await;
    l.delivered_via("metric-gone", &l.relay_b, &l.relay_a).await;

    // The human status shows the kernel's link.
    let text = text(&l.world.run_cli(&["status"]).unwrap().stdout);
    assert!(
        text.contains("link:      mobile (veth upb, on upb, gateway 203.0.113.1"),
        "{text}"
    );
    assert!(text.contains("source:    netlink"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_route_on_a_link_that_lost_carrier_does_not_count() {
    let mut l = laptop("netlink").await;
    l.ns.ip("route add default via 198.51.100.1 dev upa metric 100")
        .unwrap();
    l.ns.ip("route add default via 203.0.113.1 dev upb metric 200")
        .unwrap();
    l.start().await;
    l.wait_link(Some("fibre")).await;

    // The far end of the fibre goes away: its route stays in the table (linkdown), but the
    // link without carrier is not used.
    l.ns.ip("link set upa-p down").unwrap();
    let status = l.wait_link(Some("mobile")).await;
    assert_eq!(status["link"]["interface"], "upb", "{status:#}");
    assert!(
        l.ns.ip("route show default").unwrap().contains("dev upa"),
        "the kernel keeps the fibre's route; only its carrier is gone"
    );
    l.delivered_via("fibre-down", &l.relay_b, &l.relay_a).await;

    // Both ends gone: no link, mail waits and says why.
    l.ns.ip("link set upb-p down").unwrap();
    let status = l.wait_link(None).await;
    assert_eq!(status["users"][0]["hold"], "no link", "{status:#}");
    l.world
        .send("me@laptop.example", "you@dest.example", "while-offline")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(l.world.wait_entries("me", "queue", 1).await.len(), 1);

    // The fibre's carrier comes back: the waiting mail goes through its relay.
    l.ns.ip("link set upa-p up").unwrap();
    l.wait_link(Some("fibre")).await;
    l.relay_a.wait_for(1, WAIT).await.unwrap();
    assert_eq!(subjects(&l.relay_a), ["while-offline"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_uplink_is_found_and_matched_by_address() {
    let mut l = laptop("netlink").await;
    // No IPv4 default route at all.
    l.ns.ip("-6 route add default via 2001:db8:b::1 dev upb metric 1024")
        .unwrap();
    l.start().await;
    let status = l.wait_link(Some("mobile")).await;
    let link = &status["link"];
    assert_eq!(link["interface"], "upb", "{status:#}");
    assert_eq!(link["gateway"], "2001:db8:b::1");
    assert!(
        link["addresses"]
            .as_str()
            .unwrap()
            .contains("2001:db8:b::2"),
        "{status:#}"
    );
    l.delivered_via("over-ipv6", &l.relay_b, &l.relay_a).await;

    // An IPv4 default with a lower metric on the fibre takes over.
    l.ns.ip("route add default via 198.51.100.1 dev upa metric 10")
        .unwrap();
    l.wait_link(Some("fibre")).await;
    l.delivered_via("back-on-v4", &l.relay_a, &l.relay_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_networkmanager_while_it_runs_and_netlink_when_it_goes() {
    let mut l = laptop("auto").await;
    l.ns.ip("route add default via 198.51.100.1 dev upa metric 100")
        .unwrap();
    // NetworkManager says the office network is up (the kernel says upa; NM wins).
    let nm = FakeNm::start(
        &l.world.system.address,
        vec![ActiveSpec::ethernet("Office", "upa", "198.51.100.1")],
        4,
    )
    .await
    .unwrap();
    l.start().await;
    let status = l.wait_link(Some("office")).await;
    assert_eq!(status["source"], "networkmanager", "{status:#}");
    assert_eq!(status["link"]["id"], "Office");
    assert_eq!(
        status["users"][0]["hold"], "no relay for link office for user me",
        "{status:#}"
    );

    // Mail queued while NM's link has no relay waits.
    for subject in ["queued-1", "queued-2"] {
        l.world
            .send("me@laptop.example", "you@dest.example", subject)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(l.world.wait_entries("me", "queue", 2).await.len(), 2);
    assert!(l.relay_a.received().is_empty());

    // NetworkManager leaves the bus: netlink takes over, and the queued mail goes out
    // through the relay of the kernel's link, each message once.
    nm.stop().await.unwrap();
    let status = l.wait_link(Some("fibre")).await;
    assert_eq!(status["source"], "netlink", "{status:#}");
    assert_eq!(status["source_problem"], Value::Null, "{status:#}");
    l.relay_a.wait_for(2, WAIT).await.unwrap();
    let mut got = subjects(&l.relay_a);
    got.sort();
    assert_eq!(got, ["queued-1", "queued-2"]);
    let w = &l.world;
    eventually("the outbox is empty", w, || {
        w.outbox_entries("me", "queue").is_empty() && w.outbox_entries("me", "sent").len() == 2
    })
    .await;

    // It comes back: NetworkManager is used again.
    let _nm = FakeNm::start(
        &l.world.system.address,
        vec![ActiveSpec::ethernet("Office", "upa", "198.51.100.1")],
        4,
    )
    .await
    .unwrap();
    let status = l.wait_link(Some("office")).await;
    assert_eq!(status["source"], "networkmanager", "{status:#}");
    assert_eq!(l.relay_a.received().len(), 2, "nothing was sent twice");
}

/// The kernel's own answer, read with `ip -j`: the interface of the lowest-metric default
/// route in the main table whose route is not linkdown, IPv4 before IPv6 on a tie.
fn expected_default_interface() -> Option<String> {
    let mut best: Option<(u64, u8, String)> = None;
    for (family, rank) in [("-4", 0u8), ("-6", 1u8)] {
        let out = std::process::Command::new(linkrelay_tests::netns::IP)
            .args(["-j", family, "route", "show", "table", "main", "default"])
            .output()
            .unwrap();
        let routes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        for r in routes.as_array().into_iter().flatten() {
            let flags: Vec<&str> = r["flags"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if flags.contains(&"linkdown") || r["type"].as_str().is_some_and(|t| t != "unicast") {
                continue;
            }
            let Some(dev) = r["dev"].as_str() else {
                continue;
            };
            let metric = r["metric"].as_u64().unwrap_or(0);
            let candidate = (metric, rank, dev.to_string());
            if best.as_ref().is_none_or(|b| candidate < *b) {
                best = Some(candidate);
            }
        }
    }
    best.map(|(_, _, dev)| dev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_networkmanager_the_agent_shows_this_machines_default_route_link() {
    // The machine's own network, read only: no NetworkManager on the (private) system bus.
    let mut w = World::new().unwrap();
    w.start_agent().await.unwrap();
    let expected = expected_default_interface();
    let mut status = Value::Null;
    for _ in 0..250 {
        status = cli_json(&w, &["status"]);
        if status["source"] == "netlink" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status["source"], "netlink", "{status:#}");
    assert_eq!(status["source_problem"], Value::Null, "{status:#}");
    match expected {
        Some(dev) => {
            assert_eq!(status["link"]["interface"], dev.as_str(), "{status:#}");
            let text = text(&w.run_cli(&["status"]).unwrap().stdout);
            assert!(text.contains(&format!("on {dev}")), "{text}");
        }
        None => assert!(status["link"].is_null(), "{status:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_overrun_neither_stops_the_source_nor_leaves_it_wrong() {
    use linkrelay_agent::LinkState;
    use linkrelay_agent::NetlinkWatcher;
    use std::sync::atomic::Ordering;

    let ns = NetNs::new().expect("a network namespace (run the tests as root)");
    ns.add_uplink("upa").unwrap();
    ns.add_uplink("upb").unwrap();
    ns.ip("addr add 198.51.100.2/24 dev upa").unwrap();
    ns.ip("addr add 203.0.113.2/24 dev upb").unwrap();
    ns.ip("route add default via 198.51.100.1 dev upa metric 100")
        .unwrap();

    // The source's socket, opened inside the namespace, with the smallest receive buffer the
    // kernel allows: a burst of events cannot fit, and the kernel drops them (ENOBUFS).
    let runtime = tokio::runtime::Handle::current();
    let watcher = ns
        .run_in(move || {
            let _in_runtime = runtime.enter();
            NetlinkWatcher::subscribe_with_buffer(1)
        })
        .unwrap()
        .unwrap();
    let overruns = watcher.overruns();
    let (tx, mut rx) = tokio::sync::watch::channel(LinkState::unknown());
    let task = tokio::spawn(watcher.run(tx));
    let interface = |s: &LinkState| s.link.as_ref().map(|l| l.facts.interface.clone());
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| interface(s).as_deref() == Some("upa")),
    )
    .await
    .expect("the first dump finds upa")
    .unwrap();

    // Hundreds of changes in one burst, the last of which moves the default route; again (the
    // route back and forth) until the kernel has overrun the socket at least once.
    let mut expect = "upa";
    let mut state = LinkState::unknown();
    for round in 0..8 {
        let (dev, gateway) = if round % 2 == 0 {
            ("upb", "203.0.113.1")
        } else {
            ("upa", "198.51.100.1")
        };
        let mut lines: Vec<String> = (0..400)
            .map(|i| format!("addr add 10.{round}.{}.{}/32 dev upa", i / 250, i % 250))
            .collect();
        lines.push(format!(
            "route replace default via {gateway} dev {dev} metric 100"
        ));
        ns.ip_batch(&lines).unwrap();
        expect = dev;
        state = tokio::time::timeout(WAIT, rx.wait_for(|s| interface(s).as_deref() == Some(dev)))
            .await
            .expect("the source ends on the right link despite the lost events")
            .unwrap()
            .clone();
        if overruns.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    assert!(
        overruns.load(Ordering::Relaxed) > 0,
        "eight bursts never overran the socket, so this test proved nothing"
    );
    let link = state.link.unwrap();
    if expect == "upb" {
        assert_eq!(link.facts.gateway.as_deref(), Some("203.0.113.1"));
        assert_eq!(
            link.facts.addresses,
            ["203.0.113.2".parse::<std::net::IpAddr>().unwrap()]
        );
    } else {
        assert_eq!(link.facts.gateway.as_deref(), Some("198.51.100.1"));
    }
    ns.ip("route replace default via 203.0.113.1 dev upb metric 100")
        .unwrap();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| interface(s).as_deref() == Some("upb")),
    )
    .await
    .unwrap()
    .unwrap();

    // The socket still works after the overrun: the next change is followed too.
    ns.ip("route add default via 198.51.100.1 dev upa metric 10")
        .unwrap();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| interface(s).as_deref() == Some("upa")),
    )
    .await
    .expect("the source follows changes after an overrun")
    .unwrap();
    assert!(!task.is_finished());
    task.abort();
}

#[test]
fn config_check_says_what_the_source_can_see() {
    let w = World::new().unwrap();
    let rules = |address: &str| {
        format!(
            "[agent]\nsource = \"netlink\"\n\n[[link]]\nname = \"home\"\nmatch = {{ ssid = \"Home*\" }}\n\n[[link]]\nname = \"dsl\"\nmatch = {{ interface = \"ppp*\", address = \"{address}\" }}\n\n[[user]]\nname = \"me\"\nfrom = [\"*\"]\n"
        )
    };
    let path = w.config_path.display().to_string();

    // A bad prefix is an error at its position, with what to write.
    w.write_config(&rules("198.51.100.9/24")).unwrap();
    let out = w.run_cli(&["config", "check"]).unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{path}:10:41: error: `address` \"198.51.100.9/24\" has bits set after its first 24 bits"
        )),
        "{err}"
    );
    assert!(err.contains("address = \"198.51.100.0/24\""), "{err}");

    // Fixed: ok, with what netlink sees and a note on the rule it can never match.
    w.write_config(&rules("198.51.100.0/24")).unwrap();
    let out = w.run_cli(&["config", "check"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("source netlink: matches on interface, type, gateway, address"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "{path}:6:11: note: link \"home\" matches on `ssid`, which the netlink source cannot see, so it never matches"
        )),
        "{shown}"
    );
    assert_eq!(shown.matches("note:").count(), 1, "{shown}");
}
