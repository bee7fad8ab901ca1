//! The CLI as a user meets it: config checks, the not-running error, sendmail, --json.

use std::time::Duration;

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::world::{World, cli_json, repo_root};

use crate::util::{queue_ids, seed};

#[test]
fn status_without_an_agent_says_it_is_not_running() {
    let w = World::new().unwrap();
    let out = w.run_cli(&["status"]).unwrap();
    assert_eq!(out.status.code(), Some(69), "EX_UNAVAILABLE");
    let err = text(&out.stderr);
    assert!(
        err.contains("linkrelayd is not running on the session bus"),
        "{err}"
    );
    assert!(err.contains("start it with `linkrelayd`"), "{err}");
}

#[test]
fn config_check_accepts_the_example_and_points_at_mistakes() {
    let w = World::new().unwrap();
    let example = repo_root().join("examples/config.toml");
    let out = w
        .run_cli(&["config", "check", example.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (3 links, 2 relays, 2 users)"));

    w.write_config(
        "[[relay]]\nname = \"a\"\nhost = \"smtp.example\"\ntls = \"starttls\"\nprot = 25\n\n\
         [[user]]\nname = \"me\"\nfrom = [\"*\"]\nroutes = { home = [\"b\"] }\n",
    )
    .unwrap();
    let out = w.run_cli(&["config", "check"]).unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = text(&out.stderr);
    let path = w.config_path.display().to_string();
    assert!(
        err.contains(&format!("{path}:5:1: error")),
        "unknown key `prot`: {err}"
    );
    assert!(
        err.contains(&format!("{path}:10:")),
        "unknown link/relay in routes: {err}"
    );
    assert!(err.contains("help:"), "{err}");
}

#[test]
fn config_init_writes_a_starter_that_checks() {
    let w = World::new().unwrap();
    let out = w.run_cli(&["config", "init"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.config_path.exists());
    let out = w.run_cli(&["config", "check"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second init does not overwrite the user's file.
    let out = w.run_cli(&["config", "init"]).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--force"));
}

#[test]
fn the_agent_refuses_a_broken_config_with_ex_config() {
    let w = World::new().unwrap();
    w.write_config("[agent]\nsource = \"telepathy\"\n").unwrap();
    let out = w.run_agent_once(&[]).unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}:2:10: error", w.config_path.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_config_the_agent_starts_and_holds_mail_with_a_reason() {
    let mut w = World::new().unwrap();
    // No NetworkManager on the system bus at all: "auto" falls back to netlink, which sees
    // this machine's own default route (if it has one); the embedded default has no relay.
    w.start_agent().await.unwrap();
    let status = cli_json(&w, &["status"]);
    assert_eq!(status["source"], "netlink", "{status}");
    assert_eq!(status["config_path"], serde_json::Value::Null);
    assert_eq!(status["users"][0]["user"], "default");
    let hold = status["users"][0]["hold"].as_str().unwrap();
    assert!(
        hold == "no link" || hold.starts_with("no relay for link"),
        "{status}"
    );
    let human = text(&w.run_cli(&["status"]).unwrap().stdout);
    assert!(human.contains("source:    netlink"), "{human}");
    assert!(human.contains("embedded default"), "{human}");

    // Forced to NetworkManager, the agent says what is wrong and how to fix it.
    w.stop_agent();
    w.write_config(
        "[agent]\nsource = \"networkmanager\"\n\n[[user]]\nname = \"default\"\nfrom = [\"*\"]\n",
    )
    .unwrap();
    w.start_agent().await.unwrap();
    let status = cli_json(&w, &["status"]);
    assert_eq!(status["source"], "none");
    assert!(
        status["source_problem"]
            .as_str()
            .unwrap()
            .contains("NetworkManager is not running"),
        "{status}"
    );
    assert!(
        status["users"][0]["hold"]
            .as_str()
            .unwrap()
            .starts_with("no link")
    );
    let human = text(&w.run_cli(&["status"]).unwrap().stdout);
    assert!(
        human.contains("problem:   NetworkManager is not running"),
        "{human}"
    );
    std::fs::remove_file(&w.config_path).unwrap();
    w.stop_agent();
    w.start_agent().await.unwrap();

    // sendmail still queues, and the queue says why it waits.
    w.send("me@example.org", "you@example.org", "no-config")
        .unwrap();
    let q = cli_json(&w, &["queue"]);
    assert_eq!(q.as_array().unwrap().len(), 1);
    assert_eq!(q[0]["user"], "default");
    assert_eq!(q[0]["recipients"][0]["addr"], "you@example.org");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_refuses_bad_input_with_sysexits_and_works_without_the_agent() {
    let s = seed().await;
    let w = &s.world;
    // No agent is running: sendmail still queues (and exits 0 only once it is on disk).
    let out = w
        .sendmail(
            &["-f", "bob@bob.example", "x@dest.example"],
            "Subject: hi\n\nbody\n",
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);

    let out = w.sendmail(&["-t"], "Subject: nobody\n\nbody\n").unwrap();
    assert_eq!(out.status.code(), Some(65), "no recipients is EX_DATAERR");
    assert!(
        text(&out.stderr).contains("no recipients"),
        "{}",
        text(&out.stderr)
    );

    let out = w.sendmail(&["-bd"], "").unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "EX_USAGE: {}",
        text(&out.stderr)
    );

    let out = w
        .sendmail(
            &["--user", "nobody-here", "x@dest.example"],
            "Subject: x\n\nx\n",
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(67), "EX_NOUSER");
    assert_eq!(
        w.outbox_entries("bob", "queue").len(),
        1,
        "nothing else queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcc_is_delivered_but_never_on_the_wire_and_8bit_survives() {
    let mut s = seed().await;
    s.network.set("ISP-A");
    let _nm = FakeNm::start(
        &s.world.system.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    let msg = "From: Bob <bob@bob.example>\nTo: to@dest.example\nBcc: hidden@dest.example,\n  \
               also-hidden@dest.example\nSubject: cron report\nContent-Type: text/plain; charset=utf-8\n\
               Content-Transfer-Encoding: 8bit\n\nGrüße aus Köln.\n.\nafter a lone dot\n";
    let out = s.world.sendmail(&["-t", "-oi"], msg).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = s
        .relay_a
        .wait_for(1, Duration::from_secs(10))
        .await
        .unwrap();
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "also-hidden@dest.example",
            "hidden@dest.example",
            "to@dest.example"
        ]
    );
    let data = got[0].data_text();
    assert!(!data.to_ascii_lowercase().contains("bcc:"), "{data}");
    assert!(!data.contains("hidden@"), "{data}");
    assert!(
        data.contains("Grüße aus Köln.\r\n.\r\nafter a lone dot"),
        "{data}"
    );
    assert!(
        data.ends_with("\r\nafter a lone dot\r\n") && !data.ends_with("\r\n\r\n"),
        "the message must arrive without an extra empty line: {data:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_broken_config_keeps_the_old_one_running() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    let good = std::fs::read_to_string(&w.config_path).unwrap();
    w.write_config(&format!("{good}\n[[user]]\nname = \"Bad Name\"\n"))
        .unwrap();
    let out = w.run_cli(&["reload"]).unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(err.contains(&w.config_path.display().to_string()), "{err}");
    let status = cli_json(w, &["status"]);
    assert!(
        status["config_error"].as_str().unwrap().contains("name"),
        "{status}"
    );
    assert_eq!(
        status["users"].as_array().unwrap().len(),
        2,
        "old config runs"
    );
    // SIGHUP with a fixed file clears the error.
    w.write_config(&good).unwrap();
    w.hup_agent();
    for _ in 0..250 {
        if cli_json(w, &["status"])["config_error"].is_null() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("SIGHUP did not reload: {}", w.agent_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_retry_drop_and_flush_over_the_cli() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "x@dest.example", "to-drop")
        .unwrap();
    w.send("bob@bob.example", "y@dest.example", "to-keep")
        .unwrap();
    let q = cli_json(w, &["queue", "--user", "bob"]);
    assert_eq!(q.as_array().unwrap().len(), 2);
    let id = q[0]["id"].as_str().unwrap().to_string();
    let out = w.run_cli(&["drop", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = cli_json(w, &["queue", "--user", "bob"]);
    assert_eq!(q.as_array().unwrap().len(), 1);
    assert_ne!(q[0]["id"], id.as_str());
    let out = w.run_cli(&["drop", &id]).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("UnknownId"),
        "{}",
        text(&out.stderr)
    );

    // bob's route holds his mail (no link is up): a retry says so, and why.
    let hold = cli_json(w, &["status"])["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "bob")
        .unwrap()["hold"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = q[0]["id"].as_str().unwrap();
    let out = w.run_cli(&["retry", kept]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{kept}: held: {hold}; it is due now and goes as soon as bob's route allows\n")
    );

    // A flush that waits ends with the mail still held: exit 75 (EX_TEMPFAIL), and why.
    let out = w
        .run_cli(&["flush", "--user", "bob", "--wait", "--json"])
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    let flushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(flushed[0]["user"], "bob");
    assert_eq!(flushed[0]["sent"], 0);
    assert_eq!(flushed[0]["remaining"], 1);
    assert_eq!(flushed[0]["hold"], hold.as_str());
    let out = w.run_cli(&["flush", "--user", "bob", "--wait"]).unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(
        text(&out.stdout),
        format!("bob: held: {hold}; sent 0, 1 still queued\n")
    );
    let out = w.run_cli(&["queue", "--user", "nobody"]).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no user named"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_just_handed_to_the_agent_can_be_dropped_at_once_and_stays_dropped() {
    // sendmail hands mail over through incoming/; the agent takes it in a moment later. A
    // drop in that moment must find the message, and no listing after it may show it again.
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    for round in 0..20 {
        w.send("bob@bob.example", "x@dest.example", "to-drop")
            .unwrap();
        let ids = queue_ids(w, "bob");
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        let out = w.run_cli(&["drop", &ids[0]]).unwrap();
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
        let q = cli_json(w, &["queue", "--user", "bob"]);
        assert_eq!(q.as_array().unwrap().len(), 0, "round {round}: {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_route_changes_and_deliveries_as_json_lines() {
    use std::io::BufRead;
    let mut s = seed().await;
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    let mut child = w
        .cli()
        .args(["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        first["event"], "status",
        "watch starts with where things stand"
    );
    s.network.set("ISP-A");
    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    w.send("bob@bob.example", "x@dest.example", "watched")
        .unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(v.clone());
            if v["event"] == "sent" {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let route = seen
        .iter()
        .find(|v| v["event"] == "route" && v["user"] == "bob")
        .unwrap_or_else(|| panic!("no route event: {seen:?}"));
    assert_eq!(route["relays"], serde_json::json!(["relay-a"]));
    assert!(
        seen.iter()
            .any(|v| v["event"] == "link" && v["link"]["id"] == "ISP-A"),
        "{seen:?}"
    );
    let sent = seen
        .iter()
        .find(|v| v["event"] == "sent")
        .expect("a sent event");
    assert_eq!(sent["user"], "bob");
    assert_eq!(sent["relay"], "relay-a");
}

#[test]
fn the_binary_called_sendmail_is_sendmail() {
    let w = World::new().unwrap();
    let dir = w.dir().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        linkrelay_tests::world::bin("linkrelay"),
        dir.join("sendmail"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(dir.join("sendmail"));
    w.env(&mut cmd);
    use std::io::Write;
    let mut child = cmd
        .args(["-oi", "-f", "me@example.org", "you@example.org"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: via symlink\n\nhello\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(w.outbox_entries("default", "queue").len(), 1);
}

/// Runs `linkrelay ARGS`, killing it after `limit`; `None` when it had to be killed.
fn run_cli_within(w: &World, args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let mut child = w
        .cli()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_became_a_fifo_is_refused_on_reload_and_the_agent_keeps_answering() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    std::fs::remove_file(&w.config_path).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &w.config_path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // SIGHUP reloads on the event loop; nobody ever writes to the FIFO.
    w.hup_agent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = run_cli_within(w, &["status", "--json"], Duration::from_secs(5));
    let reload = run_cli_within(w, &["reload"], Duration::from_secs(5));
    if status.is_none() || reload.is_none() {
        // Let a stuck agent go on (and stop) before failing.
        let _ = std::fs::OpenOptions::new().write(true).open(&w.config_path);
        panic!(
            "the agent stopped answering after a reload from a FIFO (status answered: {}, reload answered: {})",
            status.is_some(),
            reload.is_some()
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&status.unwrap().stdout).expect("status JSON");
    let error = status["config_error"].as_str().unwrap_or_default();
    assert!(error.contains("not a regular file"), "{status}");
    let reload = reload.unwrap();
    assert_eq!(reload.status.code(), Some(78), "{}", text(&reload.stderr));
    assert!(
        text(&reload.stderr).contains("a FIFO is not a regular file"),
        "{}",
        text(&reload.stderr)
    );
    assert_eq!(
        status["users"].as_array().unwrap().len(),
        2,
        "old config runs"
    );
}

/// `cmd`'s output, run with its stderr (or stdout) a pipe whose reader is gone, as when the
/// terminal or the program that started it went away.
fn with_closed(
    mut cmd: std::process::Command,
    stream: &str,
    stdin: &[u8],
) -> std::process::ExitStatus {
    use std::io::Write;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    match stream {
        "stderr" => cmd.stderr(writer).stdout(std::process::Stdio::null()),
        _ => cmd.stdout(writer).stderr(std::process::Stdio::null()),
    };
    let mut child = cmd.stdin(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait().unwrap()
}

#[test]
fn a_closed_stderr_or_stdout_keeps_the_exit_codes_of_sendmail_and_config_check() {
    let w = World::new().unwrap();
    let msg = b"From: me@example.org\nTo: you@example.org\nSubject: s\n\nhi\n";
    let mut verbose = w.cli();
    verbose
        .env("LINKRELAY_VERBOSE", "1")
        .args(["sendmail", "-t", "-i"]);
    assert_eq!(
        with_closed(verbose, "stderr", msg).code(),
        Some(0),
        "queued"
    );
    assert_eq!(w.outbox_entries("default", "queue").len(), 1);
    let mut bad = w.cli();
    bad.args(["sendmail", "-i"]);
    assert_eq!(
        with_closed(bad, "stderr", msg).code(),
        Some(65),
        "no recipients"
    );

    let example = repo_root().join("examples/config.toml");
    let mut ok = w.cli();
    ok.args(["config", "check"]).arg(&example);
    assert_eq!(with_closed(ok, "stdout", b"").code(), Some(0));
    w.write_config("[agent]\nsource = 1\n").unwrap();
    let mut broken = w.cli();
    broken.args(["config", "check"]);
    assert_eq!(with_closed(broken, "stderr", b"").code(), Some(78));
}

/// A config for the world's user `default` (every sender) taking messages up to `max` bytes.
fn max_size_config(max: u64) -> String {
    linkrelay_tests::config::Config::new()
        .outbox("max_message_size", max)
        .user(linkrelay_tests::config::User::new("default").from(["*"]))
        .to_string()
}

#[test]
fn sendmail_streams_a_100_mb_message_to_disk_in_under_32_mb() {
    let w = World::new().unwrap();
    w.write_config(&max_size_config(200 << 20)).unwrap();
    let body = 100 << 20;
    let (out, peak_kib) = w.sendmail_peak(&["-t", "-i"], body).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    eprintln!("sendmail peak RSS for a 100 MiB message: {peak_kib} KiB");
    assert!(peak_kib < 32 * 1024, "sendmail peaked at {peak_kib} KiB");
    let queued = w.outbox_entries("default", "queue");
    assert_eq!(queued.len(), 1);
    let eml = w
        .data_dir
        .join("default/queue")
        .join(&queued[0])
        .join("message.eml");
    let data = std::fs::read(&eml).unwrap();
    // Every line got its CR (the last, cut one its CRLF); the body is whole.
    let (lines, rest) = (body / 77, body % 77);
    let expected = lines * 78 + if rest > 0 { rest + 2 } else { 0 };
    let body_start = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(data.len() - body_start, expected, "body length");
    assert!(data.ends_with(b"\r\n"));
    assert!(
        !data[body_start..]
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
    );
}

#[test]
fn sendmail_refuses_a_message_over_max_message_size_with_65_and_leaves_nothing() {
    let w = World::new().unwrap();
    w.write_config(&max_size_config(1 << 20)).unwrap();
    // Over it as written, and only once every line ends in CRLF.
    for body in [2 << 20, 1_040_000] {
        let (out, _) = w.sendmail_peak(&["-t", "-i"], body).unwrap();
        assert_eq!(out.status.code(), Some(65), "{body}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr)
                .contains("larger than the 1048576 bytes of [outbox] max_message_size"),
            "{}",
            text(&out.stderr)
        );
        assert!(w.outbox_entries("default", "queue").is_empty());
        assert!(w.outbox_entries("default", "tmp").is_empty());
    }
}
