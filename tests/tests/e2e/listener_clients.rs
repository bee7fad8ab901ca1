//! Clients we did not write hand mail to the submission listener (and to `sendmail -bs`), and
//! each message reaches the relay intact: swaks (pipelined, over TCP and the unix socket),
//! msmtp, Python's smtplib with SMTPUTF8 and a DSN request, s-nail, git send-email, and a
//! script that drives `sendmail -bs` through a pipe; and swaks logging in with the token where the
//! agent cannot ask the kernel who connected (run as on a kernel without sock_diag).

use std::process::{Command, Output};
use std::time::Duration;

use linkrelay_tests::run::{run_with_input, text};
use linkrelay_tests::world::{World, bin, repo_root};

use linkrelay_tests::smtp::RelayScript;

use crate::listener::{Desk, desk, desk_for, desk_wrapped};

/// Runs `cmd` in the desk's world (home, XDG dirs, buses) and asserts it succeeded.
fn run_ok(w: &World, cmd: &mut Command, input: &[u8]) -> Output {
    w.env(cmd);
    match run_with_input(cmd, input) {
        Ok(out) => out,
        Err(e) => panic!("{e:#}\nagent log:\n{}", w.agent_log()),
    }
}

/// The one message the relay got (waits for it).
async fn the_one_delivered(d: &Desk) -> linkrelay_tests::Received {
    let got = d.relay.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1, "{got:#?}");
    got.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelines_over_tcp_and_over_the_unix_socket() {
    let d = desk().await;
    let w = &d.world;
    // swaks dot-stuffs the last line; the relay must get it back as written.
    let body = "Grüße, pipelined.\nSecond line.\n.a line that starts with a dot\n";
    for (how, subject) in [
        ("tcp", "swaks over tcp"),
        ("socket", "swaks over the socket"),
    ] {
        let mut cmd = Command::new("swaks");
        match how {
            "tcp" => cmd.args(["--server", &format!("127.0.0.1:{}", d.port)]),
            _ => cmd.arg("--socket").arg(w.submission_socket()),
        };
        cmd.args([
            "--pipeline",
            "--from",
            "me@example.org",
            "--to",
            "you@dest.example",
        ])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--body", body]);
        let out = run_ok(w, &mut cmd, b"");
        let said = text(&out.stdout);
        assert!(said.contains("250-PIPELINING"), "{said}");
        assert!(said.contains("250 2.0.0 Ok: queued as "), "{said}");
    }
    let got = d.relay.wait_for(2, Duration::from_secs(10)).await.unwrap();
    for (r, subject) in got.iter().zip(["swaks over tcp", "swaks over the socket"]) {
        let data = r.data_text();
        assert_eq!(r.from, "me@example.org");
        assert_eq!(r.rcpts, ["you@dest.example"]);
        assert!(data.contains(&format!("Subject: {subject}\r\n")), "{data}");
        assert!(
            data.contains(
                "Grüße, pipelined.\r\nSecond line.\r\n.a line that starts with a dot\r\n"
            ),
            "the body arrives as swaks sent it: {data}"
        );
    }
}

/// swaks over loopback TCP to the desk, with `extra` arguments; what it printed and whether
/// it succeeded.
fn swaks_tcp(d: &Desk, subject: &str, extra: &[&str]) -> (String, bool) {
    let mut cmd = Command::new("swaks");
    cmd.args(["--server", &format!("127.0.0.1:{}", d.port)])
        .args(["--from", "me@example.org", "--to", "you@dest.example"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(extra);
    d.world.env(&mut cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("swaks runs (scripts/install-test-deps)");
    (text(&out.stdout), out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_kernel_cannot_name_a_tcp_client_swaks_logs_in_with_the_token() {
    // The agent runs where socket(AF_NETLINK, NETLINK_SOCK_DIAG) fails as on a kernel built
    // without sock_diag: it cannot ask who owns a loopback connection.
    let tool = repo_root().join("tests/tools/without-sock-diag");
    let d = desk_wrapped(
        RelayScript::default(),
        |c| c,
        vec![tool.display().to_string()],
    )
    .await;
    let w = &d.world;

    let (said, ok) = swaks_tcp(&d, "no login", &[]);
    assert!(!ok && said.contains("250 AUTH PLAIN"), "{said}");
    assert!(
        said.contains("530 5.7.0 Authentication required: AUTH PLAIN with the token"),
        "{said}"
    );
    let (said, ok) = swaks_tcp(
        &d,
        "wrong token",
        &["--auth", "PLAIN", "-au", "me", "-ap", "guess"],
    );
    assert!(!ok && said.contains("535 5.7.8"), "{said}");

    let out = w.run_cli(&["token"]).unwrap();
    let token = text(&out.stdout).trim().to_owned();
    assert!(out.status.success() && token.len() >= 32, "{token}");
    let (said, ok) = swaks_tcp(
        &d,
        "with the token",
        &["--auth", "PLAIN", "-au", "me", "-ap", &token],
    );
    assert!(ok && said.contains("235 2.7.0"), "{said}");
    assert!(said.contains("250 2.0.0 Ok: queued as "), "{said}");
    // The unix socket still knows its peer (SO_PEERCRED): no login there.
    let mut cmd = Command::new("swaks");
    cmd.arg("--socket").arg(w.submission_socket());
    cmd.args(["--from", "me@example.org", "--to", "you@dest.example"])
        .args(["--header", "Subject: over the socket"]);
    run_ok(w, &mut cmd, b"");

    let got = d.relay.wait_for(2, Duration::from_secs(10)).await.unwrap();
    let subjects: Vec<bool> = ["with the token", "over the socket"]
        .iter()
        .map(|s| {
            got.iter()
                .any(|r| r.data_text().contains(&format!("Subject: {s}\r\n")))
        })
        .collect();
    assert_eq!(subjects, [true, true], "{got:#?}");
    assert_eq!(got.len(), 2, "nothing refused went out: {got:#?}");
    let log = w.agent_log();
    assert_eq!(
        log.matches("the kernel cannot say who connected").count(),
        1,
        "said once: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msmtp_with_the_listener_as_its_host() {
    let d = desk().await;
    let w = &d.world;
    let message = "From: Me <me@example.org>\nTo: you@dest.example\nSubject: from msmtp\n\
                   Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
                   Ein 8-bit Text: äöü ß €.\n";
    let mut cmd = Command::new("msmtp");
    cmd.args(["--file=/dev/null", "--host=127.0.0.1"])
        .arg(format!("--port={}", d.port))
        .args(["--tls=off", "--auth=off", "--from=me@example.org", "--"])
        .arg("you@dest.example");
    run_ok(w, &mut cmd, message.as_bytes());
    let r = the_one_delivered(&d).await;
    let data = r.data_text();
    assert_eq!(r.from, "me@example.org");
    assert!(data.contains("Subject: from msmtp\r\n"), "{data}");
    assert!(data.contains("Ein 8-bit Text: äöü ß €.\r\n"), "{data}");
}

/// Python's smtplib sends a message with a UTF-8 recipient, SMTPUTF8 and a DSN request.
const SMTPLIB_DSN: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
msg = ("From: me@example.org\r\nTo: jürgen@dest.example, you@dest.example\r\n"
       "Subject: Grüße aus Python\r\n\r\nUTF-8 überall.\r\n").encode("utf-8")
with smtplib.SMTP("127.0.0.1", port) as s:
    s.ehlo()
    assert s.has_extn("smtputf8") and s.has_extn("dsn"), s.esmtp_features
    refused = s.sendmail("me@example.org", ["jürgen@dest.example", "you@dest.example"], msg,
                         mail_options=["SMTPUTF8", "RET=HDRS", "ENVID=py+2B1"],
                         rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;you@dest.example"])
    assert not refused, refused
"#;

/// The MAIL and RCPT lines the relay got.
fn envelope_lines(d: &Desk) -> Vec<String> {
    d.relay
        .commands()
        .into_iter()
        .map(|c| c.line)
        .filter(|l| l.starts_with("MAIL ") || l.starts_with("RCPT "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_with_smtputf8_and_a_dsn_request_passed_on_to_a_relay_that_offers_dsn() {
    let script = RelayScript {
        offers: vec!["DSN".into(), "SMTPUTF8".into()],
        ..RelayScript::default()
    };
    let d = desk_for(script, |c| c).await;
    let w = &d.world;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SMTPLIB_DSN, &d.port.to_string()]);
    run_ok(w, &mut cmd, b"");
    let r = the_one_delivered(&d).await;
    assert_eq!(r.rcpts, ["jürgen@dest.example", "you@dest.example"]);
    let data = r.data_text();
    assert!(data.contains("Subject: Grüße aus Python\r\n"), "{data}");
    assert!(data.contains("UTF-8 überall.\r\n"), "{data}");
    // The request reaches the relay as the client made it (smtplib gives every recipient
    // the same options).
    assert_eq!(
        envelope_lines(&d),
        [
            "MAIL FROM:<me@example.org> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=py+2B1",
            "RCPT TO:<jürgen@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;you@dest.example",
            "RCPT TO:<you@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;you@dest.example",
        ]
    );
    // And it is kept with the message.
    let sent = w.wait_entries("me", "sent", 1).await;
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.data_dir.join("me/sent").join(&sent[0]).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["dsn"]["ret"], "hdrs", "{state}");
    assert_eq!(state["dsn"]["envid"], "py+1", "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_request_is_left_out_for_a_relay_without_dsn_and_the_mail_still_goes() {
    let d = desk().await;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SMTPLIB_DSN, &d.port.to_string()]);
    run_ok(&d.world, &mut cmd, b"");
    let r = the_one_delivered(&d).await;
    assert_eq!(r.rcpts, ["jürgen@dest.example", "you@dest.example"]);
    assert_eq!(
        envelope_lines(&d),
        [
            "MAIL FROM:<me@example.org> BODY=8BITMIME",
            "RCPT TO:<jürgen@dest.example>",
            "RCPT TO:<you@dest.example>",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_nail_with_an_smtp_mta() {
    let d = desk().await;
    let w = &d.world;
    let mut cmd = Command::new("s-nail");
    cmd.args(["-n", "-S", "v15-compat"])
        .args(["-S", &format!("mta=smtp://127.0.0.1:{}", d.port)])
        .args(["-S", "smtp-auth=none", "-S", "mime-encoding=8bit"])
        .args(["-S", "ttycharset=utf-8", "-S", "sendcharsets=utf-8"])
        .args(["-r", "Me <me@example.org>", "-s", "Grüße von s-nail"])
        .arg("you@dest.example");
    // The world's environment, then s-nail's own file kept out.
    w.env(&mut cmd);
    cmd.env("MAILRC", "/dev/null");
    if let Err(e) = run_with_input(&mut cmd, "Zeile eins: äöü.\n".as_bytes()) {
        panic!("{e:#}\nagent log:\n{}", w.agent_log());
    }
    let r = the_one_delivered(&d).await;
    let data = r.data_text();
    assert_eq!(r.from, "me@example.org");
    assert!(
        data.contains("Subject: =?utf-8?") || data.contains("Subject: Grüße von s-nail"),
        "{data}"
    );
    assert!(data.contains("Zeile eins: äöü.\r\n"), "{data}");
    assert!(data.contains("User-Agent: s-nail"), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_send_email_with_smtp_server() {
    let d = desk().await;
    let w = &d.world;
    let repo = w.dir().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.current_dir(&repo).args(args);
        w.env(&mut cmd);
        cmd.env("GIT_AUTHOR_NAME", "Me")
            .env("GIT_AUTHOR_EMAIL", "me@example.org")
            .env("GIT_COMMITTER_NAME", "Me")
            .env("GIT_COMMITTER_EMAIL", "me@example.org");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        out
    };
    git(&["init", "-q", "."]);
    std::fs::write(repo.join("README"), "Grüße\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "Add a README"]);
    git(&["format-patch", "-q", "-1", "-o", "out"]);
    let patch = std::fs::read_dir(repo.join("out"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let port = d.port.to_string();
    git(&[
        "send-email",
        "--smtp-server=127.0.0.1",
        &format!("--smtp-server-port={port}"),
        "--from=Me <me@example.org>",
        "--to=you@dest.example",
        "--suppress-cc=all",
        "--confirm=never",
        &patch.display().to_string(),
    ]);
    let r = the_one_delivered(&d).await;
    let data = r.data_text();
    assert_eq!(r.rcpts, ["you@dest.example"]);
    assert!(data.contains("Subject: [PATCH] Add a README\r\n"), "{data}");
    assert!(
        data.contains("+Grüße\r\n"),
        "the patch arrives whole: {data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_driving_sendmail_bs_through_a_pipe() {
    let d = desk().await;
    let w = &d.world;
    // What symfony/mailer's SendmailTransport does with "sendmail -bs": SMTP over the pipes.
    let script = r#"
import subprocess, sys
p = subprocess.Popen([sys.argv[1], "sendmail", "-bs"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
def reply():
    lines = []
    while True:
        line = p.stdout.readline().decode()
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "".join(lines)
def say(line, expect):
    p.stdin.write((line + "\r\n").encode()); p.stdin.flush()
    r = reply()
    assert r.startswith(expect), (line, r)
    return r
assert reply().startswith("220 ")
say("EHLO php.example", "250")
for n in (1, 2):
    say("MAIL FROM:<me@example.org>", "250")
    say("RCPT TO:<you@dest.example>", "250")
    say("DATA", "354")
    say("Subject: through -bs %d\r\n\r\n..dotted\r\n." % n, "250 2.0.0 Ok: queued as")
say("QUIT", "221")
assert p.wait() == 0
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(bin("linkrelay"));
    run_ok(w, &mut cmd, b"");
    let got = d.relay.wait_for(2, Duration::from_secs(10)).await.unwrap();
    for (r, n) in got.iter().zip([1, 2]) {
        let data = r.data_text();
        assert!(
            data.contains(&format!("Subject: through -bs {n}\r\n")),
            "{data}"
        );
        assert!(data.contains("\r\n.dotted\r\n"), "{data}");
    }
}
