//! Delivery over time: users flushed independently, attempts abandoned when the link changes,
//! relay memory and backoff kept across restarts, the lifetime.

use std::time::{Duration, Instant};

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{Fault, Gate, RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

use crate::util::{eventually, subjects};

const WAIT: Duration = Duration::from_secs(10);

fn eth(id: &str) -> ActiveSpec {
    ActiveSpec::ethernet(id, "eth0", "192.0.2.1")
}

/// A relay of the harness with this stage `timeout`.
fn local(name: &str, relay: &ScriptedRelay, timeout: &str) -> Relay {
    Relay::local(name, relay.port()).timeout(timeout)
}

/// Links office-a, office-b and office-c (NetworkManager ids A, B and C).
fn offices() -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .link(Link::new("office-a").id("A"))
        .link(Link::new("office-b").id("B"))
        .link(Link::new("office-c").id("C"))
}

/// The only message of `user` in `linkrelay queue --json`, if any.
fn only_message(w: &World, user: &str) -> Option<Value> {
    let q = cli_json(w, &["queue", "--user", user]);
    let list = q.as_array().cloned().unwrap_or_default();
    assert!(list.len() <= 1, "{q}");
    list.into_iter().next()
}

async fn wait_message(w: &World, user: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = only_message(w, user);
        if let Some(m) = &m
            && ok(m)
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{user}'s message never became {what}: {m:?}\n{}",
            w.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_relay_does_not_hold_up_another_users_mail() {
    // Alice's relay accepts the connection and never says a word; her stage timeout is long.
    let hung = ScriptedRelay::start(RelayScript {
        greeting: Some(Fault::Stall),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let good = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .relay(local("hung", &hung, "1h"))
        .relay(local("good", &good, "5s"))
        .user(
            User::new("alice")
                .from(["alice@example.org"])
                .route("office-a", ["hung"]),
        )
        .user(
            User::new("bob")
                .from(["bob@example.org"])
                .route("office-a", ["good"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();

    w.send("alice@example.org", "carol@dest.example", "alice-1")
        .unwrap();
    eventually("alice's flusher is stuck on the hung relay", &w, || {
        hung.connections() == 1
    })
    .await;
    // Bob's mail goes out while Alice's attempt hangs, again and again.
    for i in 0..3 {
        w.send("bob@example.org", "dave@dest.example", &format!("bob-{i}"))
            .unwrap();
        good.wait_for(i + 1, WAIT).await.unwrap();
    }
    assert_eq!(subjects(&good), ["bob-0", "bob-1", "bob-2"]);
    assert_eq!(hung.connections(), 1);
    assert!(hung.received().is_empty());
    let alice = only_message(&w, "alice").expect("alice's message is still queued");
    assert_eq!(alice["attempts"], 0, "{alice}");
    assert_eq!(alice["status"], "due: sending", "{alice}");
    assert!(w.outbox_entries("bob", "queue").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_change_mid_send_abandons_the_attempt_and_the_new_route_takes_the_mail() {
    // Relay A never says go ahead to the data; its timeout is far beyond this test.
    let relay_a = ScriptedRelay::start(RelayScript {
        data: Some(Fault::Stall),
        ..RelayScript::named("a.test")
    })
    .await
    .unwrap();
    let relay_b = ScriptedRelay::start(RelayScript::named("b.test"))
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .relay(local("ra", &relay_a, "1h"))
        .relay(local("rb", &relay_b, "5s"))
        .user(
            User::new("me")
                .from(["*"])
                .route("office-a", ["ra"])
                .route("office-b", ["rb"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();

    w.send("me@example.org", "you@dest.example", "moving")
        .unwrap();
    eventually(
        "the attempt through A is waiting for the go-ahead to the data",
        &w,
        || {
            relay_a.connections() == 1
                && relay_a
                    .commands()
                    .iter()
                    .any(|c| c.line.eq_ignore_ascii_case("DATA"))
        },
    )
    .await;
    let started = Instant::now();
    nm.deactivate("A").await.unwrap();
    nm.activate(eth("B")).await.unwrap();
    relay_b.wait_for(1, WAIT).await.unwrap();
    assert!(started.elapsed() < WAIT);
    assert_eq!(subjects(&relay_b), ["moving"]);
    assert!(relay_a.received().is_empty(), "A never confirmed it");
    eventually("sent/ has it", &w, || {
        w.outbox_entries("me", "sent").len() == 1
    })
    .await;
    assert!(w.agent_log().contains("route changed during the attempt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_change_after_the_final_dot_waits_for_the_answer_and_the_message_goes_out_once() {
    // Relay A has the whole message and holds its answer until the test opens the gate; its
    // timeout is far beyond this test.
    let gate = Gate::new();
    let relay_a = ScriptedRelay::start(RelayScript::named("a.test").with_answer_gate(gate.clone()))
        .await
        .unwrap();
    let relay_b = ScriptedRelay::start(RelayScript::named("b.test"))
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .relay(local("ra", &relay_a, "1h"))
        .relay(local("rb", &relay_b, "5s"))
        .user(
            User::new("me")
                .from(["*"])
                .route("office-a", ["ra"])
                .route("office-b", ["rb"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();

    w.send("me@example.org", "you@dest.example", "in-doubt")
        .unwrap();
    relay_a.wait_for(1, WAIT).await.unwrap();
    // The route moves to B while A's answer is due.
    nm.deactivate("A").await.unwrap();
    nm.activate(eth("B")).await.unwrap();
    w.wait_route("me", "via rb", |r| r.relays == ["rb"])
        .await
        .unwrap();
    eventually("the agent waits for A's answer", &w, || {
        w.agent_log()
            .contains("waiting for it, so that the message does not go out twice")
    })
    .await;
    gate.open();
    eventually("sent/ has it", &w, || {
        w.outbox_entries("me", "sent").len() == 1
    })
    .await;
    // A flush on the new route finds nothing left to send.
    let out = w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(out.status.success(), "{}", w.agent_log());
    assert_eq!(subjects(&relay_a), ["in-doubt"]);
    assert!(relay_b.received().is_empty(), "{}", w.agent_log());
    assert!(w.outbox_entries("me", "queue").is_empty());
    assert!(w.outbox_entries("me", "failed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_mid_send_keeps_the_message_queued_as_it_was() {
    let relay = ScriptedRelay::start(RelayScript {
        data: Some(Fault::Stall),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .relay(local("r", &relay, "1h"))
        .user(User::new("me").from(["*"]).route("office-a", ["r"]));
    w.write_config(&config.to_string()).unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send(
        "me@example.org",
        "you@dest.example, two@dest.example",
        "cut",
    )
    .unwrap();
    eventually("DATA was sent", &w, || {
        relay
            .commands()
            .iter()
            .any(|c| c.line.eq_ignore_ascii_case("DATA"))
    })
    .await;
    nm.deactivate("A").await.unwrap();
    let m = wait_message(&w, "me", "held", |m| m["status"] == "held: no link").await;
    // The abandoned attempt changed nothing: not counted, no recipient marked.
    assert_eq!(m["attempts"], 0, "{m}");
    assert_eq!(m["folder"], "queue");
    for r in m["recipients"].as_array().unwrap() {
        assert_eq!(r["state"], "pending", "{m}");
        assert_eq!(r["reply"], Value::Null, "{m}");
    }
    // Back on the link with a working relay: it goes out.
    relay.set_script(RelayScript::default());
    nm.activate(eth("A")).await.unwrap();
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].rcpts, ["you@dest.example", "two@dest.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_memory_survives_a_restart() {
    // Route [slow, fast]: slow never greets (1 s timeout), fast takes the mail. Route
    // [denier]: it refuses us on this link.
    let slow = ScriptedRelay::start(RelayScript {
        greeting: Some(Fault::Stall),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let fast = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let denier = ScriptedRelay::start(RelayScript::default().refusing_relay())
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .relay(local("slow", &slow, "1s"))
        .relay(local("fast", &fast, "5s"))
        .relay(local("denier", &denier, "5s"))
        .user(
            User::new("me")
                .from(["me@example.org"])
                .route("office-a", ["slow", "fast"]),
        )
        .user(
            User::new("other")
                .from(["other@example.org"])
                .route("office-a", ["denier"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "first")
        .unwrap();
    w.send("other@example.org", "you@dest.example", "denied")
        .unwrap();
    fast.wait_for(1, WAIT).await.unwrap();
    assert_eq!(slow.connections(), 1, "tried first, timed out");
    wait_message(&w, "other", "refused", |m| {
        m["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("waiting: denier refuses us"))
    })
    .await;
    let memory = w.data_dir.join(".relay-memory.json");
    let text = std::fs::read_to_string(&memory).unwrap();
    assert!(text.contains("\"office-a\": \"fast\""), "{text}");
    assert!(text.contains("Relay access denied"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&memory).unwrap().permissions().mode() & 0o777,
        0o600
    );

    w.stop_agent();
    w.start_agent().await.unwrap();
    let denier_connections = denier.connections();
    w.send("me@example.org", "you@dest.example", "second")
        .unwrap();
    fast.wait_for(2, WAIT).await.unwrap();
    assert_eq!(subjects(&fast), ["first", "second"]);
    assert_eq!(
        slow.connections(),
        1,
        "the relay that worked is tried first"
    );
    // The refusal is remembered: the waiting message says so, and is not offered to the
    // denier again by itself (an explicit flush would try it once more).
    let m = only_message(&w, "other").unwrap();
    assert!(
        m["status"]
            .as_str()
            .unwrap()
            .starts_with("waiting: denier refuses us on link office-a (554 5.7.1"),
        "{m}"
    );
    assert_eq!(denier.connections(), denier_connections);
}

/// Seconds from now to the message's next attempt, once it has `attempts` attempts.
async fn delay_after(w: &World, attempts: u64) -> i64 {
    let m = wait_message(w, "me", &format!("{attempts} attempts"), |m| {
        m["attempts"].as_u64() == Some(attempts)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    m["next_attempt"].as_i64().unwrap() - now
}

/// Whether `delay` is the backoff of `step` (100 s doubling, jitter 0.8..1.2, a second of
/// slack each way for the clock).
fn is_step(delay: i64, step: u32) -> bool {
    let base = 100 * 2i64.pow(step - 1);
    (base * 8 / 10 - 2..=base * 12 / 10 + 1).contains(&delay)
}

async fn flush(w: &World) {
    let out = w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_grows_on_a_route_starts_again_when_the_link_changes_and_survives_a_restart() {
    let relay = ScriptedRelay::start(RelayScript {
        mail: Some(Fault::reply(451, "4.3.0 try later")),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .retry("min", "100s")
        .retry("max", "1000s")
        .relay(local("r", &relay, "5s"))
        .user(
            User::new("me")
                .from(["*"])
                .route("office-a", ["r"])
                .route("office-c", ["r"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "patient")
        .unwrap();
    // On link A: 100 s, 200 s, 400 s.
    let d = delay_after(&w, 1).await;
    assert!(is_step(d, 1), "{d}");
    flush(&w).await;
    let d = delay_after(&w, 2).await;
    assert!(is_step(d, 2), "{d}");
    flush(&w).await;
    let d = delay_after(&w, 3).await;
    assert!(is_step(d, 3), "{d}");

    // Off to B (no route there: held, no attempt), then back to A: the link changed since the
    // last attempt, so the backoff starts again although the route is the same as before.
    nm.deactivate("A").await.unwrap();
    nm.activate(eth("B")).await.unwrap();
    wait_message(&w, "me", "held", |m| {
        m["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("held: "))
    })
    .await;
    nm.deactivate("B").await.unwrap();
    nm.activate(eth("A")).await.unwrap();
    let d = delay_after(&w, 4).await;
    assert!(is_step(d, 1), "back on A: {d}");
    flush(&w).await;
    let d = delay_after(&w, 5).await;
    assert!(is_step(d, 2), "{d}");

    // Link C, same relay: another route, step 1 again.
    nm.deactivate("A").await.unwrap();
    nm.activate(eth("C")).await.unwrap();
    let d = delay_after(&w, 6).await;
    assert!(is_step(d, 1), "on C: {d}");

    // A restart is not a route change: the step is read back from disk and grows.
    w.stop_agent();
    w.start_agent().await.unwrap();
    let d = delay_after(&w, 7).await;
    assert!(is_step(d, 2), "after the restart: {d}");
    assert_eq!(relay.connections(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_lifetime_a_message_goes_to_failed_and_says_why() {
    let relay = ScriptedRelay::start(RelayScript {
        mail: Some(Fault::reply(451, "4.3.0 try later")),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let mut w = World::new().unwrap();
    let config = offices()
        .retry("min", "1s")
        .retry("max", "1s")
        .retry("lifetime", "3s")
        .relay(local("r", &relay, "5s"))
        .user(
            User::new("me")
                .from(["me@example.org"])
                .route("office-a", ["r"]),
        )
        .user(
            User::new("held")
                .from(["held@example.org"])
                .route("office-b", ["r"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let _nm = FakeNm::start(&w.system.address, vec![eth("A")], 4)
        .await
        .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "doomed")
        .unwrap();
    w.send("held@example.org", "you@dest.example", "never-routed")
        .unwrap();

    let deadline = Instant::now() + WAIT;
    let failed = loop {
        let q = cli_json(&w, &["queue"]);
        let list = q.as_array().unwrap().clone();
        if list.len() == 2 && list.iter().all(|m| m["folder"] == "failed") {
            break list;
        }
        assert!(Instant::now() < deadline, "{q}\n{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let me = failed.iter().find(|m| m["user"] == "me").unwrap();
    assert!(
        me["status"].as_str().unwrap().starts_with(
            "failed: not delivered within 3s (lifetime); last: r: 451 4.3.0 try later"
        ),
        "{me}"
    );
    assert!(me["attempts"].as_u64().unwrap() >= 2, "{me}");
    assert_eq!(me["recipients"][0]["state"], "failed");
    assert!(
        me["recipients"][0]["reply"]
            .as_str()
            .unwrap()
            .starts_with("not delivered within 3s"),
        "MAIL was refused, so no reply about the recipient itself: {me}"
    );
    let held = failed.iter().find(|m| m["user"] == "held").unwrap();
    assert_eq!(
        held["status"],
        "failed: not delivered within 3s (lifetime); last: held: no relay for link office-a for user held",
        "{held}"
    );
    assert_eq!(held["attempts"], 0);
    assert_eq!(held["recipients"][0]["state"], "failed");

    // Nothing is lost: retry puts it back in the queue with a fresh lifetime.
    let id = me["id"].as_str().unwrap();
    let out = w.run_cli(&["retry", id]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.set_script(RelayScript::default());
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_text().contains("Subject: doomed"));
}
