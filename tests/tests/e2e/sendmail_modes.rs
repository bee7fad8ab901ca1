//! sendmail beyond reading one message: `mailq` and `-bp` in the format monitoring tools
//! parse, `-q` asking the agent to flush, the flag sets that cron daemons and MUAs pass, and
//! the DSN flags. (`-bs` is in `listener_clients.rs`, driven by a script.)

use std::process::Command;
use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::{Fault, RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, bin};

fn office(relay: &ScriptedRelay) -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", relay.port()).timeout("5s"))
        .user(User::new("me").from(["*"]).route("office", ["r"]))
}

/// Runs the `linkrelay` binary under the name `mailq` (a link, as an install would make).
fn mailq(w: &World) -> String {
    let link = w.dir().join("mailq");
    if !link.exists() {
        std::os::unix::fs::symlink(bin("linkrelay"), &link).unwrap();
    }
    let mut cmd = Command::new(&link);
    w.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailq_prints_the_queue_as_postfix_does_with_the_footer_tools_parse() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let w = World::new().unwrap();
    w.write_config(&office(&relay).to_string()).unwrap();
    assert_eq!(mailq(&w), "Mail queue is empty\n");
    let big = "x".repeat(76) + "\n";
    w.sendmail(
        &["-t"],
        &format!(
            "From: me@example.org\nTo: you@dest.example\nSubject: one\n\n{}",
            big.repeat(30)
        ),
    )
    .unwrap();
    w.send("me@example.org", "other@dest.example", "two")
        .unwrap();
    let listing = mailq(&w);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[0],
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    );
    assert!(lines[1].ends_with("  me@example.org"), "{listing}");
    assert!(
        lines.contains(&"                                         you@dest.example"),
        "{listing}"
    );
    assert!(
        lines.contains(&"                                         other@dest.example"),
        "{listing}"
    );
    assert_eq!(
        lines.last(),
        Some(&"-- 2 Kbytes in 2 Requests."),
        "{listing}"
    );
    // sendmail -bp is the same listing.
    let out = w.sendmail(&["-bp"], "").unwrap();
    assert_eq!(text(&out.stdout), listing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_q_asks_the_agent_to_send_now() {
    // The relay says "later" at first: the message waits an hour (retry min).
    let relay = ScriptedRelay::start(RelayScript {
        mail: Some(Fault::reply(451, "4.3.0 Try again later")),
        ..RelayScript::default()
    })
    .await
    .unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&office(&relay).to_string()).unwrap();
    // Without an agent, -q says so.
    let out = w.sendmail(&["-q"], "").unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "later")
        .unwrap();
    crate::util::eventually("the relay deferred it", &w, || {
        w.agent_log().contains("4.3.0 Try again later")
    })
    .await;
    relay.set_script(RelayScript::default());
    let out = w.sendmail(&["-q"], "").unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = relay.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert!(got[0].data_text().contains("Subject: later"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_of_cron_daemons_and_muas_are_taken_and_dsn_flags_kept() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let w = World::new().unwrap();
    w.write_config(&office(&relay).to_string()).unwrap();
    let report = "From: root@example.org (Cron Daemon)\nTo: me@example.org\nSubject: cron report\n\nall well\n";
    for args in [
        &[
            "-FCronDaemon",
            "-i",
            "-odi",
            "-oem",
            "-oi",
            "-t",
            "-f",
            "root@example.org",
        ][..],
        &["-i", "-B8BITMIME", "-oem", "me@example.org"][..],
        &["-odb", "-t"][..],
    ] {
        let out = w.sendmail(args, report).unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let out = w
        .sendmail(
            &["-N", "success,failure", "-R", "hdrs", "-V", "cron.42", "-t"],
            report,
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let queued = w.outbox_entries("me", "queue");
    assert_eq!(queued.len(), 4);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            w.data_dir
                .join("me/queue")
                .join(&queued[3])
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["dsn"]["ret"], "hdrs", "{state}");
    assert_eq!(state["dsn"]["envid"], "cron.42", "{state}");
    assert_eq!(
        state["dsn"]["recipients"][0]["notify"], "SUCCESS,FAILURE",
        "{state}"
    );
    for (args, named) in [
        (&["-Y", "x@y.example"][..], "-Y"),
        (&["-N", "sometimes", "x@y.example"][..], "-N sometimes"),
        (&["-bd"][..], "-bd"),
    ] {
        // Refused before the message is read: nothing on stdin to break the pipe.
        let out = w.sendmail(args, "").unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            text(&out.stderr).contains(named),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        w.outbox_entries("me", "queue").len(),
        4,
        "nothing more queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_mail_for_a_local_name_reaches_your_own_address_through_the_relay() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    // Without an address of yours in the config, the local name is refused and says why.
    w.write_config(&office(&relay).to_string()).unwrap();
    // Exactly what Debian's cron runs and writes for a job of user me with output.
    let cron = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "me"];
    let report = "From: root (Cron Daemon)\nTo: me\nSubject: Cron <me@laptop> backup\n\
                  MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\
                  X-Cron-Env: <SHELL=/bin/sh>\n\nbackup done\n";
    let out = w.sendmail(&cron, report).unwrap();
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("`from` address without wildcards"),
        "{}",
        text(&out.stderr)
    );

    let config = Config::new()
        .agent("debounce", "50ms")
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", relay.port()).timeout("5s"))
        .user(
            User::new("me")
                .from(["me@isp-a.example", "*"])
                .route("office", ["r"]),
        );
    w.write_config(&config.to_string()).unwrap();
    w.start_agent().await.unwrap();
    let out = w.sendmail(&cron, report).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = relay.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got[0].from, "me@isp-a.example");
    assert_eq!(got[0].rcpts, ["me@isp-a.example"]);
    let data = got[0].data_text();
    assert!(
        data.contains("From: Cron Daemon <me@isp-a.example>\r\n"),
        "{data}"
    );
    assert!(data.contains("To: me@isp-a.example\r\n"), "{data}");
    assert!(
        data.contains("Subject: Cron <me@laptop> backup\r\n"),
        "{data}"
    );
    assert!(data.ends_with("backup done\r\n"), "{data}");
}
