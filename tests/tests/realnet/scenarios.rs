//! The link scenarios, each against the real NetworkManager and real Postfix.

use linkrelay_tests::twoisp::{HOST_A, HOST_B, LAPTOP_A, LAPTOP_B, TwoIsp};
use linkrelay_tests::world::cli_json;

use crate::{eventually, flush_wait, on_isp_a, postfix_idle, queue, started};

const FROM: &str = "bob@bob.example";
const TO: &str = "carol@dest.example";

/// Asserts that exactly one message with `subject` left Postfix, taken by `host` from the
/// laptop at `client` over TLS, and returns its Received header.
fn assert_once_via(t: &TwoIsp, subject: &str, host: &str, client: &str) -> String {
    let got = t.relays.with_subject(subject);
    assert_eq!(
        got.len(),
        1,
        "{subject:?} must arrive exactly once: {got:#?}"
    );
    let d = &got[0];
    assert_eq!(d.relay(), host, "{subject:?} went through the wrong relay");
    let received = d.postfix_received();
    assert!(
        received.contains(&format!("[{client}]")),
        "{subject:?} came from the wrong address: {received}"
    );
    assert!(
        received.contains("with ESMTPS"),
        "{subject:?} was not sent over TLS: {received}"
    );
    assert_eq!(d.mail_from, FROM);
    assert_eq!(d.rcpts, [TO]);
    received
}

fn send(t: &TwoIsp, subject: &str) {
    t.world.send(FROM, TO, subject).expect("sendmail queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_with_both_links_down_goes_out_through_isp_a_exactly_once() {
    let t = started().await;
    t.wait_route("held: no link", |r| r.hold == "no link")
        .await
        .unwrap();
    for i in 0..3 {
        send(&t, &format!("offline-{i}"));
    }
    let q = queue(&t);
    assert_eq!(q.len(), 3, "{q:?}");
    for m in &q {
        assert_eq!(m["status"], "held: no link", "{m}");
    }
    assert_eq!(flush_wait(&t), (0, 3), "nothing goes out without a link");

    t.nm.up("ISP-A").unwrap();
    for i in 0..3 {
        t.wait_delivered(&format!("offline-{i}"), 1).await.unwrap();
    }
    eventually("all three in sent/", || {
        t.world.outbox_entries("me", "sent").len() == 3
    })
    .await;
    postfix_idle(&t).await;
    for i in 0..3 {
        assert_once_via(&t, &format!("offline-{i}"), HOST_A, LAPTOP_A);
    }
    assert_eq!(t.relays.delivered().len(), 3, "nothing else left Postfix");
    assert_eq!(
        t.relays.log_count("reject:"),
        0,
        "Postfix refused something"
    );
    assert!(queue(&t).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_isp_a_down_and_isp_b_up_new_mail_goes_through_relay_b() {
    let t = on_isp_a().await;
    send(&t, "on-a");
    t.wait_delivered("on-a", 1).await.unwrap();

    t.nm.down("ISP-A").unwrap();
    t.nm.up("ISP-B").unwrap();
    t.wait_route("relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    let status = cli_json(&t.world, &["status"]);
    assert_eq!(status["link"]["id"], "ISP-B", "{status}");
    assert_eq!(status["link"]["interface"], "lr-b", "{status}");
    assert_eq!(status["link"]["gateway"], "198.51.100.1", "{status}");

    send(&t, "on-b");
    t.wait_delivered("on-b", 1).await.unwrap();
    postfix_idle(&t).await;
    assert_once_via(&t, "on-a", HOST_A, LAPTOP_A);
    let received = assert_once_via(&t, "on-b", HOST_B, LAPTOP_B);
    // Relay B wants a login: the agent gave it, over TLS.
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(received.contains("Authenticated sender: bob"), "{received}");
    assert_eq!(t.relays.log_count("reject:"), 0);
}

/// Both links up, NetworkManager's connectivity check on, and ISP A (the primary: lower route
/// metric) loses its carrier on the ISP's side. NM 1.42 may leave its global Connectivity at
/// what it computed from the failing device; the agent follows the primary connection's own
/// device: mail queued after the pull goes out through ISP B, and `status` names ISP B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_primary_links_carrier_is_pulled_mail_goes_out_through_the_other_link() {
    let t = on_isp_a().await;
    t.nm.up("ISP-B").unwrap();
    assert_eq!(t.nm.check_connectivity().unwrap(), "full");
    let status = cli_json(&t.world, &["status"]);
    assert_eq!(status["link"]["id"], "ISP-A", "A stays primary: {status}");

    t.set_isp_carrier("isp-a", false).unwrap();
    t.wait_route("relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    // What NM says as the agent follows it, for whoever reads the output.
    let general = t.nm.nmcli(&["-t", "-f", "STATE,CONNECTIVITY", "general"]);
    let device = t.nm.nmcli(&[
        "-t",
        "-f",
        "GENERAL.IP4-CONNECTIVITY,GENERAL.IP6-CONNECTIVITY",
        "device",
        "show",
        "lr-b",
    ]);
    eprintln!("after the pull: general {general:?}; lr-b {device:?}");
    send(&t, "after-the-pull");
    t.wait_delivered("after-the-pull", 1).await.unwrap();

    let status = cli_json(&t.world, &["status"]);
    assert_eq!(status["link"]["name"], "isp-b", "{status}");
    assert_eq!(status["link"]["id"], "ISP-B", "{status}");
    assert_eq!(status["link"]["interface"], "lr-b", "{status}");
    let text = t.world.run_cli(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("no link"), "{text}");
    assert!(!text.contains("no [[link]] rule matches"), "{text}");
    postfix_idle(&t).await;
    assert_once_via(&t, "after-the-pull", HOST_B, LAPTOP_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_to_the_wrong_relay_is_refused_by_postfix_and_the_mail_waits() {
    let t = on_isp_a().await;
    let out = t
        .world
        .run_cli(&["override", "--relay", "relay-b"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    t.wait_route("relay-b (overridden)", |r| r.relays == ["relay-b"])
        .await
        .unwrap();

    send(&t, "wrong-relay");
    eventually("relay B refused us with Postfix's own words", || {
        t.relays.log_count("Relay access denied") >= 1
    })
    .await;
    eventually("the queue shows the refusal", || {
        queue(&t).iter().any(|m| {
            m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("554 5.7.1") && e.contains("Relay access denied"))
        })
    })
    .await;
    let q = queue(&t);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["folder"], "queue", "the message waits: {}", q[0]);
    assert!(t.world.outbox_entries("me", "failed").is_empty());
    postfix_idle(&t).await;
    assert!(
        t.relays.delivered().is_empty(),
        "nothing may leave Postfix, not even a bounce: {:#?}",
        t.relays.delivered()
    );
    let log_line = format!("RCPT from unknown[{LAPTOP_A}]: 554 5.7.1 <{TO}>: Relay access denied");
    assert!(
        t.relays.log_count(&log_line) >= 1,
        "refused at RCPT, by relay B, because we came from ISP A's network"
    );

    let out = t.world.run_cli(&["override", "--clear"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    t.wait_delivered("wrong-relay", 1).await.unwrap();
    eventually("sent/ has it", || {
        t.world.outbox_entries("me", "sent").len() == 1
    })
    .await;
    postfix_idle(&t).await;
    assert_once_via(&t, "wrong-relay", HOST_A, LAPTOP_A);
    assert!(queue(&t).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connectivity_check_holds_mail_until_it_passes() {
    let mut t = on_isp_a().await;

    // Captive portal: NM's check gets a login page instead of its answer.
    assert_eq!(t.set_portal(true).unwrap(), "portal");
    t.wait_route("held: captive portal", |r| {
        r.hold == "captive portal on isp-a (ISP-A, lr-a)"
    })
    .await
    .unwrap();
    send(&t, "behind-portal");
    assert_eq!(flush_wait(&t), (0, 1), "nothing goes out behind a portal");
    assert_eq!(
        queue(&t)[0]["status"],
        "held: captive portal on isp-a (ISP-A, lr-a)"
    );
    assert!(t.relays.with_subject("behind-portal").is_empty());
    assert_eq!(t.set_portal(false).unwrap(), "full");
    t.wait_delivered("behind-portal", 1).await.unwrap();

    // Limited: the check cannot reach its server at all.
    assert_eq!(t.set_check_unreachable(true).unwrap(), "limited");
    t.wait_route("held: limited", |r| {
        r.hold == "limited connectivity on isp-a (ISP-A, lr-a)"
    })
    .await
    .unwrap();
    send(&t, "limited");
    assert_eq!(
        flush_wait(&t),
        (0, 1),
        "nothing goes out on limited connectivity"
    );
    assert!(t.relays.with_subject("limited").is_empty());
    assert_eq!(t.set_check_unreachable(false).unwrap(), "full");
    t.wait_delivered("limited", 1).await.unwrap();

    postfix_idle(&t).await;
    assert_once_via(&t, "behind-portal", HOST_A, LAPTOP_A);
    assert_once_via(&t, "limited", HOST_A, LAPTOP_A);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_networkmanager_through_a_restart() {
    let mut t = on_isp_a().await;

    t.nm.stop().unwrap();
    t.wait_route("held while NetworkManager is away", |r| !r.hold.is_empty())
        .await
        .unwrap();
    eventually("status says NetworkManager is not running", || {
        cli_json(&t.world, &["status"])["source_problem"]
            .as_str()
            .is_some_and(|p| p.contains("NetworkManager is not running"))
    })
    .await;
    assert!(
        !t.world
            .agent_log()
            .contains("cannot read NetworkManager's state"),
        "NetworkManager stopping is not a read error"
    );
    send(&t, "while-nm-away");
    assert_eq!(flush_wait(&t), (0, 1));

    // NM comes back and re-assumes ISP-A, which stayed up meanwhile.
    t.nm.start_again().unwrap();
    t.wait_route("relay-a again", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    t.wait_delivered("while-nm-away", 1).await.unwrap();

    // And the agent hears the new NetworkManager's signals.
    t.nm.down("ISP-A").unwrap();
    t.nm.up("ISP-B").unwrap();
    t.wait_route("relay-b", |r| r.relays == ["relay-b"])
        .await
        .unwrap();
    send(&t, "after-restart");
    t.wait_delivered("after-restart", 1).await.unwrap();
    postfix_idle(&t).await;
    assert_once_via(&t, "while-nm-away", HOST_A, LAPTOP_A);
    assert_once_via(&t, "after-restart", HOST_B, LAPTOP_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_isp_b_with_a_hold_policy_holds_mail_until_isp_a_returns() {
    let t = started().await;
    t.nm.nmcli(&["connection", "modify", "ISP-B", "connection.metered", "yes"])
        .unwrap();
    t.nm.up("ISP-B").unwrap();
    t.wait_route("held: metered", |r| {
        r.hold == "metered link isp-b (ISP-B, lr-b), hold"
    })
    .await
    .unwrap();
    let status = cli_json(&t.world, &["status"]);
    assert_eq!(status["link"]["metered"], "yes", "{status}");

    send(&t, "metered");
    assert_eq!(
        flush_wait(&t),
        (0, 1),
        "nothing goes out on the metered link"
    );
    assert_eq!(
        queue(&t)[0]["status"],
        "held: metered link isp-b (ISP-B, lr-b), hold"
    );
    assert!(t.relays.delivered().is_empty());

    // ISP A comes up beside B; its lower route metric makes it the primary link.
    t.nm.up("ISP-A").unwrap();
    t.wait_delivered("metered", 1).await.unwrap();
    postfix_idle(&t).await;
    assert_once_via(&t, "metered", HOST_A, LAPTOP_A);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_from_an_unknown_ca_is_refused_and_the_mail_kept() {
    let t = started().await;
    // Without ca_file the test CA is not trusted: the agent must not send.
    t.world.write_config(&t.config(false)).unwrap();
    let out = t.world.run_cli(&["reload"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    t.nm.up("ISP-A").unwrap();
    t.wait_route("relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    send(&t, "untrusted");
    assert_eq!(
        flush_wait(&t).0,
        0,
        "nothing is sent to an unverified relay"
    );
    let q = queue(&t);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["folder"], "queue");
    let err = q[0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.to_ascii_lowercase().contains("certificate"),
        "the queue says why: {err}"
    );
    assert!(t.relays.delivered().is_empty());

    // Trusting the test CA (ca_file) lets it through: the relay's settings changed, so the
    // reload tries its waiting mail at once.
    t.world.write_config(&t.config(true)).unwrap();
    let out = t.world.run_cli(&["reload"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    t.wait_delivered("untrusted", 1).await.unwrap();
    postfix_idle(&t).await;
    assert_once_via(&t, "untrusted", HOST_A, LAPTOP_A);
}
