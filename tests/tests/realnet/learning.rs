//! Learning which relay takes our mail on which link, and `linkrelay setup`, against the real
//! NetworkManager and the real Postfix relays of the two ISPs (each refuses the other's
//! customers), with discovery answered by real dnsmasq and HTTPS servers.

use linkrelay_tests::run::text;
use linkrelay_tests::twoisp::{HOST_A, HOST_B, TwoIsp};
use linkrelay_tests::world::cli_json;

use crate::{eventually, postfix_idle, started};

/// `linkrelay ARGS` in the laptop namespace; fails the test unless it exits 0. The session is
/// printed as it goes (shown when the test fails, or with --no-capture).
fn run_ok(t: &TwoIsp, args: &[&str]) -> String {
    let out = t
        .laptop_cli(args)
        .expect("linkrelay runs in the laptop namespace");
    eprintln!("$ linkrelay {}\n{}", args.join(" "), text(&out.stdout));
    assert!(
        out.status.success(),
        "linkrelay {args:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn switch_to(t: &TwoIsp, down: &str, up: &str) {
    t.nm.down(down).expect("nmcli takes the link down");
    t.nm.up(up).expect("nmcli brings the link up");
}

/// The relay that took the one message with `subject`.
async fn relayed_by(t: &TwoIsp, subject: &str) -> String {
    let got = t
        .wait_delivered(subject, 1)
        .await
        .expect("Postfix passes the message on");
    assert_eq!(got.len(), 1, "{subject:?} arrived once: {got:#?}");
    got[0].relay()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_each_link_teaches_the_routes_relay_a_on_isp_a_then_relay_b_on_isp_b() {
    let t = started().await;
    t.world.write_config(&t.config_unrouted()).unwrap();
    run_ok(&t, &["reload"]);
    t.nm.up("ISP-A").unwrap();
    t.wait_route("held: no route on isp-a", |r| r.hold.contains("isp-a"))
        .await
        .unwrap();

    let said = run_ok(&t, &["routes", "probe"]);
    assert!(said.contains("relay-a          accepted"), "{said}");
    assert!(said.contains("relay-b          REFUSED"), "{said}");
    assert!(
        said.contains("Relay access denied"),
        "Postfix's own words: {said}"
    );
    let v = cli_json(&t.world, &["routes", "suggest"]);
    assert_eq!(
        v["changes"],
        serde_json::json!([{"user": "me", "link": "isp-a", "relays": ["relay-a"]}]),
        "{v}"
    );
    assert_eq!(v["links"][0]["refused"][0]["relay"], "relay-b", "{v}");
    run_ok(&t, &["routes", "suggest", "--apply"]);
    t.wait_route("relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();

    switch_to(&t, "ISP-A", "ISP-B");
    t.wait_route("held: no route on isp-b", |r| r.hold.contains("isp-b"))
        .await
        .unwrap();
    let said = run_ok(&t, &["routes", "probe"]);
    assert!(said.contains("relay-a          REFUSED"), "{said}");
    assert!(said.contains("relay-b          accepted"), "{said}");
    let v = cli_json(&t.world, &["routes", "suggest"]);
    assert_eq!(
        v["changes"],
        serde_json::json!([{"user": "me", "link": "isp-b", "relays": ["relay-b"]}]),
        "isp-a is in the config already: {v}"
    );
    run_ok(&t, &["routes", "suggest", "--apply"]);
    let config = std::fs::read_to_string(&t.world.config_path).unwrap();
    assert!(
        config.contains(r#"routes = { isp-a = ["relay-a"], isp-b = ["relay-b"] }"#),
        "{config}"
    );
    t.wait_route("relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    t.world
        .send("me@isp-b.example", "carol@dest.example", "learnt-b")
        .unwrap();
    assert_eq!(relayed_by(&t, "learnt-b").await, HOST_B);
    // Nothing was sent by the probes.
    postfix_idle(&t).await;
    assert_eq!(t.relays.delivered().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_routes_suggest_on_each_link_gives_a_config_that_delivers_on_both() {
    let mut t = linkrelay_tests::twoisp::TwoIsp::start().unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::remove_file(&t.world.config_path).unwrap();
    t.serve_discovery().unwrap_or_else(|e| panic!("{e:#}"));
    t.start_agent().await.unwrap();

    // On ISP A: alice's provider publishes autoconfig over HTTPS; relay A takes mail by network.
    t.nm.up("ISP-A").unwrap();
    eventually("the agent sees ISP-A", || {
        cli_json(&t.world, &["status"])["link"]["id"] == "ISP-A"
    })
    .await;
    let said = run_ok(&t, &["setup", "alice@isp-a.example", "--yes"]);
    assert!(
        said.contains(&format!(
            "Found {HOST_A}:587 (starttls) from autoconfig at https://autoconfig.isp-a.example/mail/config-v1.1.xml?emailaddress=alice%40isp-a.example\n"
        )),
        "{said}"
    );
    assert!(
        said.contains("relays for us on no matched link: yes"),
        "{said}"
    );

    // On ISP B: bob's provider has an SRV record; relay B wants a login.
    switch_to(&t, "ISP-A", "ISP-B");
    eventually("the agent sees ISP-B", || {
        cli_json(&t.world, &["status"])["link"]["id"] == "ISP-B"
    })
    .await;
    let password = format!("cat {}", t.dir().join("password-b").display());
    let said = run_ok(
        &t,
        &[
            "setup",
            "bob@isp-b.example",
            "--username",
            "bob",
            "--password-command",
            &password,
            "--yes",
        ],
    );
    assert!(
        said.contains(&format!(
            "Found {HOST_B}:587 (starttls) from SRV record _submission._tcp.isp-b.example\n"
        )),
        "{said}"
    );
    assert!(
        said.contains("auth       ok      logged in as bob"),
        "{said}"
    );

    // Here relay A refuses us and relay B takes us; relay A took us on ISP A before.
    let said = run_ok(&t, &["routes", "probe"]);
    assert!(said.contains("isp-a.example    REFUSED"), "{said}");
    assert!(said.contains("isp-b.example    accepted"), "{said}");
    let said = run_ok(&t, &["routes", "suggest", "--apply"]);
    assert!(
        said.contains("+routes = { isp-b = [\"isp-b.example\"], isp-a = [\"isp-a.example\"] }"),
        "{said}"
    );

    switch_to(&t, "ISP-B", "ISP-A");
    // The probe records the link the agent has applied: wait for it to be ISP-A (NM's steps
    // while ISP-B goes down can fall inside the debounce window).
    eventually("the agent sees ISP-A", || {
        cli_json(&t.world, &["status"])["link"]["id"] == "ISP-A"
    })
    .await;
    run_ok(&t, &["routes", "probe"]);
    let said = run_ok(&t, &["routes", "suggest", "--apply"]);
    assert!(
        said.contains("The config already routes through every relay that accepted."),
        "{said}"
    );
    let said = run_ok(&t, &["config", "check"]);
    assert!(said.contains(": ok (2 links, 2 relays, 2 users)"), "{said}");
    let config = std::fs::read_to_string(&t.world.config_path).unwrap();
    assert!(
        !config.contains("secret-b"),
        "no password in the file: {config}"
    );

    // It delivers: both on ISP A through relay A...
    t.world
        .send("alice@isp-a.example", "carol@dest.example", "alice-on-a")
        .unwrap();
    t.world
        .send("bob@isp-b.example", "carol@dest.example", "bob-on-a")
        .unwrap();
    assert_eq!(relayed_by(&t, "alice-on-a").await, HOST_A);
    assert_eq!(relayed_by(&t, "bob-on-a").await, HOST_A);
    // ...and bob on ISP B through relay B, logged in; alice's mail waits there (relay B is
    // bob's account, and relay A refuses us on ISP B).
    switch_to(&t, "ISP-A", "ISP-B");
    eventually("bob routes through isp-b.example", || {
        cli_json(&t.world, &["status"])["users"]
            .as_array()
            .is_some_and(|u| {
                u.iter().any(|u| {
                    u["user"] == "bob" && u["relays"] == serde_json::json!(["isp-b.example"])
                })
            })
    })
    .await;
    t.world
        .send("bob@isp-b.example", "carol@dest.example", "bob-on-b")
        .unwrap();
    assert_eq!(relayed_by(&t, "bob-on-b").await, HOST_B);
    let status = cli_json(&t.world, &["status"]);
    let alice = status["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(
        alice["hold"], "no relay for link isp-b for user alice",
        "{status}"
    );
    postfix_idle(&t).await;
    assert_eq!(
        t.relays.log_count("reject:"),
        2,
        "only the two probes of the other ISP's relay were refused"
    );
}
