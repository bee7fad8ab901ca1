//! `linkrelay test-relay NAME`: the agent tries a relay from the link that is up, through the
//! same session code a flush uses, and sends nothing.

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::RelayScript;

use crate::util::{Seed, seed};

/// The seed world on ISP A's line.
async fn on_isp_a() -> (Seed, FakeNm) {
    let mut s = seed().await;
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &s.world.system.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    s.world
        .wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    (s, nm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_of_this_link_accepts_us_and_nothing_is_sent() {
    let (s, _nm) = on_isp_a().await;
    let w = &s.world;
    let out = w.run_cli(&["test-relay", "relay-a"]).unwrap();
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        text(&out.stderr),
        w.agent_log()
    );
    let port = s.relay_a.port();
    assert!(
        said.starts_with(&format!("relay-a: 127.0.0.1:{port} (tls none)\n")),
        "{said}"
    );
    assert!(
        said.contains("mail from  ok      alice@isp-a.example: 250"),
        "{said}"
    );
    assert!(
        said.contains("rcpt to    ok      postmaster@example.com: 250"),
        "{said}"
    );
    assert!(
        said.contains("offers: SIZE 10485760, 8BITMIME, HELP"),
        "{said}"
    );
    assert!(said.contains("relays for us on link isp-a: yes"), "{said}");
    assert!(
        said.contains("routes:    alice, bob send through relay-a on link isp-a"),
        "{said}"
    );
    assert!(s.relay_a.received().is_empty(), "the test sent mail");
    assert_eq!(s.relay_a.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_isps_relay_refuses_us_here_and_says_so() {
    let (s, _nm) = on_isp_a().await;
    let w = &s.world;
    let out = w
        .run_cli(&[
            "test-relay",
            "relay-b",
            "--to",
            "dave@dest.example",
            "--json",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["may_relay"], "no", "{v}");
    assert_eq!(v["link"], "isp-a");
    assert_eq!(v["routed_for"], serde_json::json!([]));
    let steps = v["steps"].as_array().unwrap();
    let stage = |name: &str| {
        steps
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {v}"))
    };
    // It logged in with the password from password_command (never shown)...
    assert_eq!(stage("auth")["state"], "ok");
    assert_eq!(stage("auth")["text"], "logged in as bob");
    // ...and the relay refused the recipient as Postfix does for a foreign network.
    assert_eq!(stage("rcpt to")["state"], "failed");
    let reply = stage("rcpt to")["text"].as_str().unwrap();
    assert!(
        reply.contains(
            "554 5.7.1 <dave@dest.example>: Recipient address rejected: Relay access denied"
        ),
        "{reply}"
    );
    assert!(
        v["offers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "AUTH PLAIN LOGIN")
    );
    assert!(!text(&out.stdout).contains("secret-b"));
    assert!(s.relay_b.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_relay_are_reported() {
    let (s, _nm) = on_isp_a().await;
    let w = &s.world;
    s.relay_b.set_script(
        RelayScript::named("smtp.isp-b.example").with_credentials("bob", "another-password"),
    );
    let out = w.run_cli(&["test-relay", "relay-b"]).unwrap();
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}{}", text(&out.stderr));
    assert!(said.contains("auth       FAILED  535"), "{said}");
    // What it offers comes from a second connection that does not log in.
    assert!(said.contains("AUTH PLAIN LOGIN"), "{said}");
    assert!(!said.contains("secret-b"), "{said}");
    assert!(!w.agent_log().contains("secret-b"));

    let out = w.run_cli(&["test-relay", "relay-z"]).unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no relay named \"relay-z\"; known relays: relay-a, relay-b"),
        "{err}"
    );
    let out = w
        .run_cli(&["test-relay", "relay-a", "--to", "not an address"])
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not an email address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_test_relay_calls_get_errors() {
    let (s, _nm) = on_isp_a().await;
    let agent = s.world.agent().await.unwrap();
    let err = |r: zbus::Result<linkrelay_dbus::agent::RelayTest>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => panic!("expected a D-Bus error, got {other:?}"),
    };
    let huge = "x".repeat(1 << 20);
    assert_eq!(
        err(agent.test_relay(&huge, "", "").await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    assert_eq!(
        err(agent.test_relay("relay-a", "", &huge).await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    assert_eq!(
        err(agent.test_relay("relay-a", "a@b\r\nDATA", "").await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    assert_eq!(
        err(agent.test_relay("../../etc/passwd", "", "").await),
        "org.linkrelay.Agent1.Error.UnknownRelay"
    );
    assert_eq!(
        err(agent.test_relay("relay-a", "not an address", "").await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    // Nothing reached the relay but the one test that was allowed to run: none.
    assert_eq!(s.relay_a.connections(), 0);
}
