//! `linkrelay reload` applies every setting, a relay whose settings changed starts with a
//! clean memory, what the user asks for explicitly tries a refusing relay once more, and an
//! agent without a bus says so once.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::{Fault, RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, bin, cli_json};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn eth(id: &str) -> ActiveSpec {
    ActiveSpec::ethernet(id, "eth0", "192.0.2.1")
}

/// Link office-a (NetworkManager id A); user "me" sends through relay "r" there.
fn office(debounce: &str, relay_port: u16) -> Config {
    Config::new()
        .agent("debounce", debounce)
        .link(Link::new("office-a").id("A"))
        .relay(Relay::local("r", relay_port).timeout("5s"))
        .user(
            User::new("me")
                .from(["me@example.org"])
                .route("office-a", ["r"]),
        )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn run_ok(w: &World, args: &[&str]) -> String {
    let out = w.run_cli(args).unwrap();
    assert!(
        out.status.success(),
        "linkrelay {args:?}: {}\n{}",
        text(&out.stderr),
        w.agent_log()
    );
    text(&out.stdout)
}

/// The only message of "me" in `linkrelay queue --json`, once `ok` holds of it.
async fn wait_message(w: &World, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let q = cli_json(w, &["queue", "--user", "me"]);
        let m = q.as_array().and_then(|l| l.first()).cloned();
        if let Some(m) = &m
            && ok(m)
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the message never became {what}: {m:?}\n{}",
            w.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent on office-a whose relay "r" refuses to relay for us, with one message of "me"
/// waiting on that refusal.
async fn refused_world(refusal_memory: &str) -> (World, FakeNm, ScriptedRelay, Value) {
    let relay = ScriptedRelay::start(RelayScript::default().refusing_relay())
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    let config = office("50ms", relay.port()).retry("refusal_memory", refusal_memory);
    w.write_config(&config.to_string()).unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "refused")
        .unwrap();
    let m = wait_message(&w, "refused", |m| m["attempts"].as_u64() == Some(1)).await;
    (w, nm, relay, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debounce_changed_in_the_file_applies_on_reload_without_a_restart() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    // An hour: a link change would wait that long to be followed.
    w.write_config(&office("1h", relay.port()).to_string())
        .unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.wait_route("me", "via r", |r| r.relays == ["r"])
        .await
        .unwrap();

    w.write_config(&office("50ms", relay.port()).to_string())
        .unwrap();
    assert!(run_ok(&w, &["reload"]).contains("reloaded"));
    nm.deactivate("A").await.unwrap();
    w.wait_route("me", "held once the link is gone", |r| !r.hold.is_empty())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_source_changed_in_the_file_applies_on_reload() {
    let mut w = World::new().unwrap();
    let config = office("50ms", 25).agent("source", "networkmanager");
    w.write_config(&config.to_string()).unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    assert_eq!(cli_json(&w, &["status"])["source"], "networkmanager");

    let config = office("50ms", 25).agent("source", "netlink");
    w.write_config(&config.to_string()).unwrap();
    run_ok(&w, &["reload"]);
    let deadline = Instant::now() + WAIT;
    while cli_json(&w, &["status"])["source"] != "netlink" {
        assert!(Instant::now() < deadline, "{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_every_relay_refused_waits_until_the_refusal_ends_and_says_so() {
    let (w, _nm, relay, m) = refused_world("1h").await;
    assert_eq!(relay.connections(), 1);
    assert_eq!(m["attempts"], 1, "{m}");
    assert!(m["status"].as_str().unwrap().contains("refuses us"), "{m}");
    // The next attempt is when the refusal ends (an hour), not the 5 min backoff, at which
    // nothing could be tried.
    let wait = m["next_attempt"].as_i64().unwrap() - unix_now();
    assert!(
        (3500..=3601).contains(&wait),
        "next attempt in {wait} s: {m}"
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_tries_a_relay_that_refused_us_once_more_and_retry_too() {
    let (w, _nm, relay, _) = refused_world("1h").await;
    // Still refusing: flush tries it once (one connection), and the message waits again.
    run_ok(&w, &["flush", "--wait"]);
    assert_eq!(relay.connections(), 2, "{}", w.agent_log());
    let m = wait_message(&w, "tried twice", |m| m["attempts"].as_u64() == Some(2)).await;
    assert!(m["status"].as_str().unwrap().contains("refuses us"), "{m}");

    // The relay's admin fixed it: `retry ID` tries it again, and the mail goes.
    relay.set_script(RelayScript::default());
    let id = m["id"].as_str().unwrap();
    run_ok(&w, &["retry", id]);
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_to_a_relay_that_refused_us_tries_it_once_more() {
    let (w, _nm, relay, _) = refused_world("1h").await;
    relay.set_script(RelayScript::default());
    run_ok(&w, &["override", "--relay", "r"]);
    relay.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_corrected_in_the_file_gets_the_waiting_mail_on_reload() {
    let (w, _nm, wrong, _) = refused_world("1h").await;
    // The user had the wrong port: the right relay takes our mail.
    let right = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let config = office("50ms", right.port()).retry("refusal_memory", "1h");
    w.write_config(&config.to_string()).unwrap();
    run_ok(&w, &["reload"]);
    right.wait_for(1, WAIT).await.unwrap();
    assert_eq!(wrong.connections(), 1);
    let memory = std::fs::read_to_string(w.data_dir.join(".relay-memory.json")).unwrap();
    assert!(!memory.contains("Relay access denied"), "{memory}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shorter_retry_delays_apply_on_reload_to_mail_already_waiting() {
    let relay = ScriptedRelay::start(RelayScript {
        mail: Some(Fault::reply(451, "4.3.0 try later")),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let mut w = World::new().unwrap();
    let slow = office("50ms", relay.port()).retry("min", "1h");
    w.write_config(&slow.to_string()).unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "later")
        .unwrap();
    let m = wait_message(&w, "deferred", |m| m["attempts"].as_u64() == Some(1)).await;
    assert!(
        m["next_attempt"].as_i64().unwrap() - unix_now() > 2000,
        "{m}"
    );

    let quick = office("50ms", relay.port())
        .retry("min", "1m")
        .retry("max", "1m");
    w.write_config(&quick.to_string()).unwrap();
    run_ok(&w, &["reload"]);
    // Tried again at once, and then a minute later, not an hour.
    let m = wait_message(&w, "tried again", |m| m["attempts"].as_u64() == Some(2)).await;
    let wait = m["next_attempt"].as_i64().unwrap() - unix_now();
    assert!(wait <= 73, "next attempt in {wait} s: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_keep_sent_prunes_sent_mail_on_reload() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&office("50ms", relay.port()).to_string())
        .unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "kept")
        .unwrap();
    assert_eq!(w.wait_entries("me", "sent", 1).await.len(), 1);

    let config = office("50ms", relay.port()).outbox("keep_sent", "0s");
    w.write_config(&config.to_string()).unwrap();
    run_ok(&w, &["reload"]);
    let left = w.wait_entries("me", "sent", 0).await;
    assert!(left.is_empty(), "{left:?}\n{}", w.agent_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_refusal_memory_applies_on_reload() {
    let (w, _nm, relay, _) = refused_world("1h").await;
    relay.set_script(RelayScript::default());
    let config = office("50ms", relay.port()).retry("refusal_memory", "1s");
    w.write_config(&config.to_string()).unwrap();
    run_ok(&w, &["reload"]);
    // The refusal ends a second after it was met; the message goes then, without a flush.
    relay.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_takes_the_file_config_init_wrote_for_an_agent_on_the_embedded_default() {
    let mut w = World::new().unwrap();
    w.start_agent().await.unwrap();
    assert!(cli_json(&w, &["status"])["config_path"].is_null());
    run_ok(&w, &["config", "init"]);
    assert!(w.config_path.exists());
    assert!(run_ok(&w, &["reload"]).contains("reloaded"));
    let status = cli_json(&w, &["status"]);
    assert_eq!(
        status["config_path"].as_str(),
        Some(w.config_path.to_str().unwrap()),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_that_cannot_be_bound_is_named_by_reload_and_status() {
    let mut w = World::new().unwrap();
    w.write_config(&office("50ms", 25).to_string()).unwrap();
    w.start_agent().await.unwrap();
    // Someone else holds the port the file asks the agent to listen on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = office("50ms", 25).submission("listen", [addr.as_str()]);
    w.write_config(&config.to_string()).unwrap();
    let said = run_ok(&w, &["reload"]);
    let line = format!("not in force: [submission] listen: cannot listen on {addr}");
    assert!(said.contains(&line), "{said}");
    assert!(run_ok(&w, &["status"]).contains(&line));
    let status = cli_json(&w, &["status"]);
    assert_eq!(
        status["config_not_in_force"].as_array().unwrap().len(),
        1,
        "{status}"
    );

    // The port is free again: the next reload listens there, and says nothing more.
    drop(taken);
    let said = run_ok(&w, &["reload"]);
    assert!(!said.contains("not in force"), "{said}");
    assert!(!run_ok(&w, &["status"]).contains("not in force"));
}

#[test]
fn without_a_session_bus_linkrelayd_says_so_once_with_the_fixes() {
    let w = World::new().unwrap();
    let mut cmd = Command::new(bin("linkrelayd"));
    w.env(&mut cmd);
    let nowhere = w.dir().join("no-bus");
    let address = format!("unix:path={}", nowhere.display());
    let out = cmd
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.matches(&address).count(), 1, "{err}");
    assert!(err.contains("cannot connect to the session bus"), "{err}");
    for fix in ["desktop session", "dbus-run-session", "--bus system"] {
        assert!(err.contains(fix), "{fix}: {err}");
    }
}
