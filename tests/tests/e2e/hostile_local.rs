//! What the machine itself can throw at the agent: odd files in an outbox, a second agent,
//! a user whose outbox cannot be used, hundreds of users, `sent/` that grows. Whatever it
//! is, the agent stays up and the other users' mail goes out, once.

use std::path::Path;
use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::World;

use crate::util::eventually;

const WAIT: Duration = Duration::from_secs(10);

/// A config with one relay at `port`, reached on link "office", for `users` (the first is
/// the default user; each sends as `<user>@example.org`).
fn config(port: u16, users: &[&str]) -> Config {
    let mut config = Config::new()
        .agent("debounce", "50ms")
        .agent("source", "networkmanager")
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", port).timeout("5s"));
    for (i, user) in users.iter().enumerate() {
        config = config.user(
            User::new(user)
                .from([format!("{user}@example.org").as_str()])
                .set("default", i == 0)
                .route("office", ["r"]),
        );
    }
    config
}

/// Makes `path` a sparse file claiming 64 GiB: nothing written, nothing on disk.
fn sparse_64_gib(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 30).unwrap();
}

/// The `failure` of every message of `user`'s failed/.
fn failures(w: &World, user: &str) -> Vec<String> {
    w.outbox_entries(user, "failed")
        .iter()
        .map(|id| {
            let path = w
                .data_dir
                .join(user)
                .join("failed")
                .join(id)
                .join("state.json");
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            state["failure"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_64_gib_files_everywhere_in_an_outbox_leave_the_agent_up_and_the_rest_flowing() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["me"]).to_string())
        .unwrap();
    // Four messages queued while no agent runs; two of them are then spoiled.
    for n in 0..4 {
        w.send("me@example.org", "you@dest.example", &format!("m{n}"))
            .unwrap();
    }
    let outbox = w.data_dir.join("me");
    let queued = w.outbox_entries("me", "queue");
    sparse_64_gib(&outbox.join("queue").join(&queued[1]).join("state.json"));
    sparse_64_gib(&outbox.join("queue").join(&queued[2]).join("message.eml"));
    sparse_64_gib(&outbox.join("new/huge.eml"));
    sparse_64_gib(&outbox.join("incoming/1700000000.000001.1.beef"));
    sparse_64_gib(&outbox.join("incoming/.spool"));
    sparse_64_gib(&outbox.join("journal"));
    sparse_64_gib(&w.data_dir.join(".relay-memory.json"));

    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    relay.wait_for(2, WAIT).await.unwrap();
    // Mail handed over now flows too (through the spool the agent emptied).
    w.send("me@example.org", "you@dest.example", "after")
        .unwrap();
    relay.wait_for(3, WAIT).await.unwrap();
    eventually("the spoiled ones are in failed/", &w, || {
        w.outbox_entries("me", "failed").len() == 5
    })
    .await;
    let status = w.run_cli(&["status", "--json"]).unwrap();
    assert!(
        status.status.success(),
        "the agent is up:\n{}",
        w.agent_log()
    );

    let subjects = crate::util::subjects(&relay);
    assert_eq!(subjects, ["m0", "m3", "after"]);
    let failures = failures(&w, "me").join("\n");
    for reason in [
        "unusable state.json",
        "cannot read the message",
        "larger than the 52428800 bytes of [outbox] max_message_size",
        "the file from incoming/",
        "unusable bytes in incoming/.spool",
    ] {
        assert!(failures.contains(reason), "{reason}:\n{failures}");
    }
    assert!(outbox.join("journal.oversized").exists());
    assert!(w.outbox_entries("me", "new").is_empty());
    let log = w.agent_log();
    assert!(log.contains("set aside as journal.oversized"), "{log}");
    assert!(!log.contains("memory allocation"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_for_the_spool_goes_straight_to_a_running_agents_queue_and_out() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["me"]).to_string())
        .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    let (out, peak_kib) = w.sendmail_peak(&["-t", "-i"], 3 << 20).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(peak_kib < 32 * 1024, "{peak_kib} KiB");
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data.len() > 3 << 20);
    assert!(got[0].data_text().contains("Subject: big"));
    let spool = w.data_dir.join("me/incoming/.spool");
    assert_eq!(
        std::fs::metadata(spool).unwrap().len(),
        0,
        "not through the spool"
    );
}

/// `linkrelay prune --json`, parsed.
fn prune(w: &World) -> serde_json::Value {
    let out = w.run_cli(&["prune", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_mail_goes_after_keep_sent_by_linkrelay_prune_and_at_start_up_and_drop_takes_sent_ids()
{
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(
        &config(relay.port(), &["me"])
            .outbox("keep_sent", "2s")
            .to_string(),
    )
    .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "m0").unwrap();
    relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(w.wait_entries("me", "sent", 1).await.len(), 1);
    let p = prune(&w);
    assert_eq!(
        (p[0]["removed"].as_u64(), p[0]["kept"].as_u64()),
        (Some(0), Some(1)),
        "{p}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p = prune(&w);
    assert_eq!(
        (p[0]["removed"].as_u64(), p[0]["kept"].as_u64()),
        (Some(1), Some(0)),
        "{p}"
    );
    assert!(p[0]["freed"].as_u64().unwrap() > 0, "{p}");
    assert!(w.outbox_entries("me", "sent").is_empty());

    // Aged while the agent was down: gone at its start.
    w.send("me@example.org", "you@dest.example", "m1").unwrap();
    relay.wait_for(2, WAIT).await.unwrap();
    assert_eq!(w.wait_entries("me", "sent", 1).await.len(), 1);
    w.stop_agent();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    w.start_agent().await.unwrap();
    eventually("the start-up prune emptied sent/", &w, || {
        w.outbox_entries("me", "sent").is_empty()
    })
    .await;

    // A sent id is dropped like any other.
    w.send("me@example.org", "you@dest.example", "m2").unwrap();
    relay.wait_for(3, WAIT).await.unwrap();
    let sent = w.wait_entries("me", "sent", 1).await;
    let out = w.run_cli(&["drop", &sent[0]]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(w.outbox_entries("me", "sent").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_mail_over_keep_sent_size_is_pruned_oldest_first() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    // Room for one small message.
    w.write_config(
        &config(relay.port(), &["me"])
            .outbox("keep_sent_size", 300u64)
            .to_string(),
    )
    .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    for n in 0..3 {
        w.send("me@example.org", "you@dest.example", &format!("m{n}"))
            .unwrap();
    }
    relay.wait_for(3, WAIT).await.unwrap();
    let sent = w.wait_entries("me", "sent", 3).await;
    let p = prune(&w);
    assert_eq!(
        (p[0]["removed"].as_u64(), p[0]["kept"].as_u64()),
        (Some(2), Some(1)),
        "{p}"
    );
    assert_eq!(w.outbox_entries("me", "sent"), sent[2..]);
}

/// Runs `linkrelay sendmail -t -i` in `w` with the session bus at `bus`, for message `n`.
fn send_over(w: &World, bus: &str, n: usize) {
    use std::io::Write;
    let mut child = w
        .cli()
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .args(["sendmail", "-t", "-i"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let msg = format!("From: me@example.org\nTo: you@dest.example\nSubject: n{n}\n\nhi\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_another_session_bus_gives_way_and_every_message_goes_out_once() {
    use linkrelay_tests::bus::{BusKind, TestBus};
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["me"]).to_string())
        .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    let first = w.agent_pid().unwrap();
    // An ssh session's own bus (dbus-run-session), on which D-Bus activation would start a
    // second agent for the same user and data directory.
    let ssh = TestBus::start(BusKind::Session).unwrap();
    let mut second = std::process::Command::new(linkrelay_tests::world::bin("linkrelayd"));
    w.env(&mut second);
    let mut second = second
        .env("DBUS_SESSION_BUS_ADDRESS", &ssh.address)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..150 {
        if let Some(status) = second.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Mail from both sessions, as fast as two clients hand it over.
    let n = 1000;
    std::thread::scope(|s| {
        for (part, bus) in [&w.session.address, &ssh.address].into_iter().enumerate() {
            let w = &w;
            s.spawn(move || {
                for i in (part..n).step_by(2) {
                    send_over(w, bus, i);
                }
            });
        }
    });
    relay.wait_for(n, Duration::from_secs(120)).await.unwrap();
    eventually("the queue is empty", &w, || {
        w.outbox_entries("me", "queue").is_empty()
    })
    .await;
    // Time for a second sending of anything.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if exited.is_none() {
        let _ = second.kill();
    }
    let subjects = crate::util::subjects(&relay);
    let unique: std::collections::BTreeSet<&String> = subjects.iter().collect();
    assert_eq!(
        (subjects.len(), unique.len()),
        (n, n),
        "{} of {n} messages were sent more than once",
        subjects.len() - unique.len()
    );

    let status = exited.expect("the second agent gave way");
    let out = second.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(75), "EX_TEMPFAIL: {said}");
    assert!(said.contains(&format!("pid {first}")), "{said}");
    assert!(
        said.contains(&format!("on the session bus at {}", w.session.address)),
        "{said}"
    );
    // The CLI in the other session reaches the agent that runs.
    let out = w
        .cli()
        .env("DBUS_SESSION_BUS_ADDRESS", &ssh.address)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["users"][0]["user"], "me", "{status}");
}

/// `linkrelay status --json`'s entry for `user`.
fn status_of(w: &World, user: &str) -> serde_json::Value {
    let status = linkrelay_tests::world::cli_json(w, &["status"]);
    status["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["user"] == user).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Makes bob's `queue/` a link to somewhere else: the outbox refuses it.
fn link_bobs_queue_elsewhere(w: &World) {
    let elsewhere = w.dir().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(w.data_dir.join("bob")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, w.data_dir.join("bob/queue")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_outbox_is_unusable_is_held_with_the_reason_and_the_others_send() {
    use linkrelay_tests::notifications::FakeNotifications;
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["alice", "bob"]).to_string())
        .unwrap();
    link_bobs_queue_elsewhere(&w);
    let notes = FakeNotifications::start(&w.session.address, &["body"])
        .await
        .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    w.send("alice@example.org", "you@dest.example", "from-alice")
        .unwrap();
    relay.wait_for(1, WAIT).await.unwrap();

    let bob = status_of(&w, "bob");
    let hold = bob["hold"].as_str().unwrap_or_default();
    assert!(
        hold.contains("outbox") && hold.contains("symbolic link"),
        "{bob}"
    );
    let shown = notes.wait_for(1, WAIT).await.unwrap();
    assert!(
        shown
            .iter()
            .any(|n| n.summary.contains("bob") && n.body.contains("symbolic link")),
        "{shown:?}"
    );
    // Asked for bob, the agent says why rather than "no user".
    let out = w.run_cli(&["flush", "--user", "bob"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once the link is gone, a reload gives bob his flusher.
    std::fs::remove_file(w.data_dir.join("bob/queue")).unwrap();
    let out = w.run_cli(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.send("bob@example.org", "you@dest.example", "from-bob")
        .unwrap();
    relay.wait_for(2, WAIT).await.unwrap();
    let bob = status_of(&w, "bob");
    assert!(bob["hold"].is_null(), "{bob}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_user_whose_outbox_is_fixed_sends_again_without_a_reload() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["alice", "bob"]).to_string())
        .unwrap();
    link_bobs_queue_elsewhere(&w);
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    let hold = status_of(&w, "bob")["hold"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(hold.contains("tried again every 15 s"), "{hold}");

    // bob mends it and sends; nobody reloads. sendmail queues straight into queue/ (the
    // agent holds no lock for bob), and the agent's next try takes bob in.
    std::fs::remove_file(w.data_dir.join("bob/queue")).unwrap();
    w.send("bob@example.org", "you@dest.example", "mended")
        .unwrap();
    let got = relay.wait_for(1, Duration::from_secs(30)).await.unwrap();
    assert!(got[0].data_text().contains("Subject: mended"));
    assert!(status_of(&w, "bob")["hold"].is_null());
    assert!(
        w.agent_log().contains("the outbox can be used again"),
        "{}",
        w.agent_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_bad_user_and_a_good_one_is_refused_whole_and_says_why() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&config(relay.port(), &["alice"]).to_string())
        .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    // carol's outbox belongs to another user.
    let carol = w.data_dir.join("carol");
    std::fs::create_dir_all(&carol).unwrap();
    std::os::unix::fs::chown(&carol, Some(65534), Some(65534)).unwrap();
    w.write_config(&config(relay.port(), &["alice", "carol", "dave"]).to_string())
        .unwrap();
    let out = w.run_cli(&["reload"]).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert!(
        said.contains("carol") && said.contains("owned by uid 65534"),
        "{said}"
    );
    // The old set runs on, whole: no carol, no dave.
    let status = linkrelay_tests::world::cli_json(&w, &["status"]);
    let users: Vec<&str> = status["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["user"].as_str())
        .collect();
    assert_eq!(users, ["alice"], "{status}");
    assert!(
        status["config_error"]
            .as_str()
            .unwrap_or_default()
            .contains("carol"),
        "{status}"
    );

    // Without carol, the reload applies and dave gets his flusher.
    w.write_config(&config(relay.port(), &["alice", "dave"]).to_string())
        .unwrap();
    let out = w.run_cli(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.run_cli(&["queue", "--user", "dave"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.send("dave@example.org", "you@dest.example", "from-dave")
        .unwrap();
    relay.wait_for(1, WAIT).await.unwrap();
}

/// The file descriptors process `pid` holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_users_under_a_soft_limit_of_1024_descriptors_hold_none_while_idle_and_send() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    // Two descriptors each for good used to be 1040 of the 1024 (and nothing was sent); more
    // users only make the test slower (the removal of their outboxes, at the end).
    let users: Vec<String> = (0..520).map(|n| format!("u{n:03}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    w.write_config(&config(relay.port(), &names).to_string())
        .unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    // The usual desktop limits: soft 1024, a higher hard one.
    w.set_agent_prefix(
        [
            "sh",
            "-c",
            "ulimit -Sn 1024 && ulimit -Hn 4096 && exec \"$0\" \"$@\"",
        ]
        .map(String::from)
        .to_vec(),
    );
    w.start_agent().await.unwrap();
    let pid = w.agent_pid().unwrap();
    eventually("the agent settled", &w, || fds(pid) > 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = fds(pid);
    assert!(idle < 100, "{idle} descriptors held by an idle agent");
    for user in ["u000", "u259", "u519"] {
        w.send(&format!("{user}@example.org"), "you@dest.example", user)
            .unwrap();
    }
    relay.wait_for(3, WAIT).await.unwrap();
    let out = w.run_cli(&["queue", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        open_files.split_whitespace().nth(3) == Some("4096"),
        "{open_files}"
    );
}
