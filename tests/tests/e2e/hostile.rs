//! Relays that attack the agent (a reply that never ends, a reply of endless lines) and
//! password commands that do (one that prints for ever, one that hangs). Whatever they do, the
//! agent's memory stays small (`util::watch_memory_until`), the attempt ends well within the
//! stage timeout, and the message stays queued with a reason the user can read in `linkrelay
//! queue`.

use std::time::{Duration, Instant};

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{Fault, RelayScript, ScriptedRelay};
use linkrelay_tests::tls::TestCa;
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

use crate::util::{RSS_LIMIT_KIB, watch_memory_until};

/// The stage timeout of the relays under attack. A reply that never ends used to cost the
/// whole of it (and gigabytes); the agent must give up on its own, long before.
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A world on link "lan" where each user sends through a relay of their own (`<user>-r`,
/// the given relay on 127.0.0.1 with the stage timeout set), started with `linkrelay queue`
/// empty.
async fn world(users: Vec<(&str, Relay)>) -> (World, FakeNm) {
    let mut config = Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .retry("max", "2h")
        .link(Link::new("lan").id("LAN"));
    for (user, relay) in users {
        let relay_name = format!("{user}-r");
        config = config
            .relay(relay.timeout(&format!("{}s", STAGE_TIMEOUT.as_secs())))
            .user(
                User::new(user)
                    .from([format!("{user}@example.org").as_str()])
                    .route("lan", [relay_name.as_str()]),
            );
    }
    let mut w = World::new().unwrap();
    w.write_config(&config.to_string()).unwrap();
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

/// The queue as `linkrelay queue --json` lists it, by user.
fn queued_by_user(w: &World) -> std::collections::BTreeMap<String, Value> {
    cli_json(w, &["queue"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_never_end_cost_little_memory_and_end_the_attempt_soon() {
    // (user, the relay's reply that never ends, what `linkrelay queue` says)
    let ca = TestCa::new("hostile relay CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file).unwrap();
    let cases = [
        (
            "greeting-line",
            RelayScript {
                greeting: Some(Fault::endless("220-hello ", "x")),
                ..RelayScript::default()
            },
            "a reply line longer than",
        ),
        (
            "ehlo-line",
            RelayScript {
                ehlo: Some(Fault::endless("250-relay.test\r\n250-", "x")),
                ..RelayScript::default()
            },
            "a reply line longer than",
        ),
        (
            "ehlo-lines",
            RelayScript {
                ehlo: Some(Fault::endless("250-relay.test\r\n", "250-x\r\n")),
                ..RelayScript::default()
            },
            "a reply of more than",
        ),
        (
            // The same inside TLS: the bounds apply to what TLS carries.
            "tls-greeting-line",
            RelayScript {
                greeting: Some(Fault::endless("220-hello ", "x")),
                ..RelayScript::default()
                    .with_implicit_tls(ca.server_config(&["127.0.0.1"]).unwrap())
            },
            "a reply line longer than",
        ),
    ];
    let mut relays = Vec::new();
    for (user, script, _) in &cases {
        relays.push((*user, ScriptedRelay::start(script.clone()).await.unwrap()));
    }
    let users = relays
        .iter()
        .map(|(user, r)| {
            let relay = Relay::local(&format!("{user}-r"), r.port());
            let relay = if user.starts_with("tls-") {
                relay.tls("tls").ca_file(&ca_file)
            } else {
                relay
            };
            (*user, relay)
        })
        .collect();
    let (mut w, _nm) = world(users).await;
    let started = Instant::now();
    for (user, _, _) in &cases {
        w.send(&format!("{user}@example.org"), "you@example.net", user)
            .unwrap();
    }
    let peak = watch_memory_until(&mut w, "every attempt to end", STAGE_TIMEOUT * 2, |w| {
        let queue = queued_by_user(w);
        cases
            .iter()
            .all(|(user, _, _)| queue.get(*user).is_some_and(|m| m["attempts"] == 1))
    })
    .await;
    let took = started.elapsed();

    let queue = queued_by_user(&w);
    for (user, _, reason) in &cases {
        let m = &queue[*user];
        let error = m["last_error"].as_str().unwrap_or("");
        assert!(
            error.contains(&format!("the relay sent {reason}")) && error.contains("(at greeting)"),
            "{user}: the queue says why: {m}"
        );
        assert!(
            m["status"].as_str().unwrap_or("").starts_with("deferred"),
            "{user}: {m}"
        );
    }
    eprintln!("the agent's peak RSS: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "the agent peaked at {} MiB (limit {} MiB)",
        peak / 1024,
        RSS_LIMIT_KIB / 1024
    );
    // No timeout was needed: each attempt ended as soon as a bound was passed.
    assert!(
        took < STAGE_TIMEOUT / 2,
        "the attempts took {took:?}, the stage timeout is {STAGE_TIMEOUT:?}"
    );
}

/// Runs one user whose relay takes its password from `command`, and returns the queued
/// message once its attempt ended, with the agent's peak RSS.
async fn password_attempt(command: &str) -> (World, FakeNm, Value, u64) {
    let relay = ScriptedRelay::start(RelayScript::default().with_credentials("u", "p"))
        .await
        .unwrap();
    let config = Relay::local("alice-r", relay.port()).password_command("u", command);
    let (mut w, nm) = world(vec![("alice", config)]).await;
    w.send("alice@example.org", "you@example.net", "password")
        .unwrap();
    let peak = watch_memory_until(&mut w, "the attempt to end", STAGE_TIMEOUT * 2, |w| {
        queued_by_user(w)
            .get("alice")
            .is_some_and(|m| m["attempts"] == 1)
    })
    .await;
    eprintln!("the agent's peak RSS: {peak} KiB");
    let m = queued_by_user(&w).remove("alice").unwrap();
    assert!(relay.received().is_empty());
    (w, nm, m, peak)
}

/// `cat /dev/zero` as the password command: the agent reads a small bound of it, stays small,
/// and the mail waits with the reason, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_command_that_prints_for_ever_costs_little_memory() {
    let started = Instant::now();
    let (_w, _nm, m, peak) = password_attempt("cat /dev/zero").await;
    let took = started.elapsed();
    assert!(
        m["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("password_command printed more than 4096 bytes without a line end (at auth)"),
        "{m}"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "the agent peaked at {} MiB (limit {} MiB)",
        peak / 1024,
        RSS_LIMIT_KIB / 1024
    );
    assert!(
        took < STAGE_TIMEOUT / 2,
        "the attempt took {took:?}, the stage timeout is {STAGE_TIMEOUT:?}"
    );
}

/// A password command that hangs is killed at the stage timeout together with what it
/// started (its process group): no process is left behind, attempt after attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_command_that_hangs_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The shell starts a child that would hang on, says which, and waits for it.
    let command = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
    let (_w, _nm, m, _) = password_attempt(&command).await;
    assert!(
        m["last_error"].as_str().unwrap_or("").contains(&format!(
            "password_command did not finish within {}s (at auth)",
            STAGE_TIMEOUT.as_secs()
        )),
        "{m}"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed processes may take a moment to be reaped (by init, as orphans).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    };
    let mut waited = 0;
    while alive() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    if alive() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the command's child {pid} outlived it");
    }
}
