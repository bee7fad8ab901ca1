//! TLS as a user relies on it: certificates verified against the system store plus the relay's
//! `ca_file`, no silent downgrade from STARTTLS, no password in clear off this machine. Each
//! failure keeps the message queued and says why in `linkrelay queue`.

use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::netns::pair::{NetnsPair, RELAY_ADDR};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::tls::TestCa;
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

use crate::util::eventually;

const WAIT: Duration = Duration::from_secs(10);

/// Relay `r` at `host:port` with `tls`.
fn relay_r(host: &str, port: u16, tls: &str) -> Relay {
    Relay::new("r").host(host).port(port).tls(tls)
}

/// Link "lan" (NetworkManager id "LAN") whose user `alice` sends everything through `relay`,
/// which must be named `r`.
fn lan_config(relay: Relay) -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .retry("max", "2h")
        .link(Link::new("lan").id("LAN"))
        .relay(relay.timeout("5s"))
        .user(User::new("alice").from(["*"]).route("lan", ["r"]))
}

/// A world with [`lan_config`], its link up and the agent running.
async fn lan_world(relay: Relay) -> (World, FakeNm) {
    let mut w = World::new().unwrap();
    w.write_config(&lan_config(relay).to_string()).unwrap();
    let nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("LAN", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    (w, nm)
}

/// The one queued message, once the agent has tried it (its `last_error` is set).
async fn tried_message(w: &World) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        let queue = cli_json(w, &["queue"]);
        if let Some(m) = queue.as_array().and_then(|a| a.first())
            && !m["last_error"].as_str().unwrap_or("").is_empty()
        {
            return m.clone();
        }
        last = queue;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the message was never tried: {last}\n{}", w.agent_log());
}

/// What the client sent in clear, as the relay saw it.
fn clear_lines(relay: &ScriptedRelay) -> Vec<String> {
    relay
        .commands()
        .into_iter()
        .filter(|l| !l.tls)
        .map(|l| l.line)
        .collect()
}

/// The verbs of `lines` ("EHLO", "STARTTLS", ...).
fn verbs(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or("").to_ascii_uppercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_the_relays_ca_file_sends_and_authenticates_inside_tls() {
    let ca = TestCa::new("ISP B test CA").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::named("smtp.isp-b.test")
            .with_credentials("bob", "tls-s3cret")
            .with_starttls(ca.server_config(&["localhost"]).unwrap()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    let (w, _nm) = lan_world(
        relay_r("localhost", relay.port(), "starttls")
            .ca_file(&dir.path().join("ca.pem"))
            .password_command("bob", "echo tls-s3cret"),
    )
    .await;
    w.send("bob@bob.example", "carol@dest.example", "over-starttls")
        .unwrap();
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls, "the message came over TLS");
    let data = got[0].data_text();
    assert!(
        data.ends_with("\r\n\r\nHello from the over-starttls test.\r\n"),
        "the message arrives as queued, without an added empty line: {data:?}"
    );
    assert_eq!(got[0].authenticated_as.as_deref(), Some("bob"));
    assert_eq!(verbs(&clear_lines(&relay)), ["EHLO", "STARTTLS"]);
    eventually("the message is in sent/", &w, || {
        w.outbox_entries("alice", "sent").len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_the_relays_ca_file_sends() {
    let ca = TestCa::new("SMTPS test CA").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::named("smtps.test")
            .with_implicit_tls(ca.server_config(&["127.0.0.1"]).unwrap()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    let (w, _nm) =
        lan_world(relay_r("127.0.0.1", relay.port(), "tls").ca_file(&dir.path().join("ca.pem")))
            .await;
    w.send("me@example.org", "you@example.net", "over-smtps")
        .unwrap();
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls);
    assert!(clear_lines(&relay).is_empty(), "{:?}", relay.commands());
}

/// A relay whose certificate the agent must refuse: the message stays queued, nothing but
/// the greeting exchange went out, and `linkrelay queue` says it was the certificate.
async fn refused_certificate(relay: ScriptedRelay, config: Relay, want: &[&str], hint: &str) {
    let (w, _nm) = lan_world(config).await;
    w.send("me@example.org", "you@example.net", "must-not-leak")
        .unwrap();
    let m = tried_message(&w).await;
    let text = m["last_error"].as_str().unwrap();
    let error = text.to_ascii_lowercase();
    assert!(
        want.iter().any(|w| error.contains(&w.to_ascii_lowercase())),
        "last_error should name the certificate problem ({want:?}): {m}"
    );
    assert!(text.contains(hint), "and say what to do ({hint:?}): {m}");
    assert!(!text.contains("Connection error: Connection error"), "{m}");
    assert!(m["status"].as_str().unwrap().starts_with("deferred"), "{m}");
    // `linkrelay status` says the same of alice, with when she is tried again.
    let status = cli_json(&w, &["status"]);
    let alice = &status["users"][0];
    assert_eq!(alice["last_error"], m["last_error"], "{status}");
    assert_eq!(alice["next_retry"], m["next_attempt"], "{status}");
    let out = w.run_cli(&["status"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("last error ("), "{said}");
    assert!(said.contains(hint), "{said}");
    assert!(said.contains("next retry "), "{said}");
    assert_eq!(w.wait_entries("alice", "queue", 1).await.len(), 1);
    assert!(relay.received().is_empty());
    let sent = verbs(
        &relay
            .commands()
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>(),
    );
    assert!(
        !sent
            .iter()
            .any(|v| ["MAIL", "RCPT", "DATA", "AUTH"].contains(&v.as_str())),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_given_ca_file_does_not_sign_is_refused_and_the_hint_says_so() {
    let theirs = TestCa::new("somebody else's CA").unwrap();
    let ours = TestCa::new("the CA we were told to trust").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::default().with_starttls(theirs.server_config(&["127.0.0.1"]).unwrap()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ours.write_pem(&dir.path().join("ca.pem")).unwrap();
    let port = relay.port();
    refused_certificate(
        relay,
        relay_r("127.0.0.1", port, "starttls").ca_file(&dir.path().join("ca.pem")),
        &["unknownissuer"],
        "ca.pem does not sign the relay's certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_ca_file_is_checked_against_the_system_store_and_refused() {
    let ca = TestCa::new("a private CA").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::default().with_implicit_tls(ca.server_config(&["127.0.0.1"]).unwrap()),
    )
    .await
    .unwrap();
    let port = relay.port();
    refused_certificate(
        relay,
        relay_r("127.0.0.1", port, "tls"),
        &["unknownissuer"],
        "not signed by a CA this machine trusts",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused() {
    let ca = TestCa::new("test CA").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::default()
            .with_starttls(ca.server_config(&["smtp.elsewhere.example"]).unwrap()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    let port = relay.port();
    refused_certificate(
        relay,
        relay_r("localhost", port, "starttls").ca_file(&dir.path().join("ca.pem")),
        &["certificate not valid for name \"localhost\""],
        "check the relay's host",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_but_not_offered_sends_nothing_in_clear() {
    // A relay without STARTTLS (or a man in the middle who strips it from EHLO).
    let relay = ScriptedRelay::start(RelayScript::default().with_credentials("bob", "n0-leak"))
        .await
        .unwrap();
    let (w, _nm) = lan_world(
        relay_r("127.0.0.1", relay.port(), "starttls").password_command("bob", "echo n0-leak"),
    )
    .await;
    w.send("bob@bob.example", "carol@dest.example", "no-downgrade")
        .unwrap();
    let m = tried_message(&w).await;
    let error = m["last_error"].as_str().unwrap();
    assert!(error.contains("does not offer STARTTLS"), "{m}");
    assert!(error.contains("never falls back to plain text"), "{m}");
    let status = m["status"].as_str().unwrap();
    assert!(status.contains("does not offer STARTTLS"), "{m}");
    let clear = verbs(&clear_lines(&relay));
    assert!(
        clear.iter().all(|v| v == "EHLO" || v == "QUIT"),
        "only the greeting went out in clear: {clear:?}"
    );
    assert!(relay.received().is_empty());
    assert_eq!(w.wait_entries("alice", "queue", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_starttls_is_not_a_downgrade_either() {
    let ca = TestCa::new("test CA").unwrap();
    let relay = ScriptedRelay::start(RelayScript {
        starttls: Some(linkrelay_tests::smtp::Fault::reply(
            454,
            "4.7.0 TLS not available due to local problem",
        )),
        ..RelayScript::default().with_starttls(ca.server_config(&["127.0.0.1"]).unwrap())
    })
    .await
    .unwrap();
    let (w, _nm) = lan_world(relay_r("127.0.0.1", relay.port(), "starttls")).await;
    w.send("me@example.org", "you@example.net", "tls-refused")
        .unwrap();
    let m = tried_message(&w).await;
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("TLS not available"),
        "{m}"
    );
    let clear = verbs(&clear_lines(&relay));
    assert!(
        clear
            .iter()
            .all(|v| ["EHLO", "STARTTLS", "QUIT"].contains(&v.as_str())),
        "{clear:?}"
    );
    assert!(relay.received().is_empty());
}

/// AUTH over plain text to a relay that is not on this machine: refused, unless the user set
/// `dangerous_plaintext_auth = true`. The relay sits in a network namespace of its own, the
/// agent in another, joined by a veth pair (nothing is changed in the machine's namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_auth_off_this_machine_is_refused_unless_dangerously_allowed() {
    let pair = NetnsPair::create().expect("network namespaces (needs root, as CI has)");
    let relay = ScriptedRelay::start_with(
        pair.listen_in_relay().unwrap(),
        RelayScript::default().with_credentials("bob", "cle4r-text"),
    )
    .unwrap();
    let mut w = World::new().unwrap();
    w.set_agent_prefix(pair.client_prefix());
    let config = |w: &World, dangerous: bool| {
        let mut r =
            relay_r(RELAY_ADDR, relay.port(), "none").password_command("bob", "echo cle4r-text");
        if dangerous {
            r = r.set("dangerous_plaintext_auth", true);
        }
        let config = lan_config(r).retry("refusal_memory", "0s");
        w.write_config(&config.to_string()).unwrap();
    };
    config(&w, false);
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("LAN", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    w.send("bob@bob.example", "carol@dest.example", "plain-auth")
        .unwrap();
    let m = tried_message(&w).await;
    let error = m["last_error"].as_str().unwrap();
    assert!(
        error.contains("refusing to send the password unencrypted to 198.51.100.1"),
        "{m}"
    );
    assert!(error.contains("dangerous_plaintext_auth = true"), "{m}");
    assert!(
        !verbs(&clear_lines(&relay)).contains(&"AUTH".to_owned()),
        "{:?}",
        relay.commands()
    );
    assert!(relay.received().is_empty());

    // The user says so, loudly: the agent sends it (and says so in its log).
    config(&w, true);
    let out = w.run_cli(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].authenticated_as.as_deref(), Some("bob"));
    assert!(!got[0].tls);
    assert!(
        w.agent_log()
            .contains("sending the password UNENCRYPTED over the network"),
        "{}",
        w.agent_log()
    );
}
