//! Faults at every stage of an SMTP session, against the scripted relay: for each, what happens
//! to the message (sent, deferred, relay refused, failed) and what the user sees in
//! `linkrelay queue --json` (folder, status, each recipient's state and the server's reply).
//!
//! The whole table runs in one world: one user per case, each with its own relay (and a healthy
//! fallback relay where the case is about failover), so every case has its own outbox, flusher
//! and relay memory and all of them run at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{Fault, RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

const ONE: &str = "one@dest.example";
const TWO: &str = "two@dest.example";
/// Every stage's time limit in this world: the stall cases take this long.
const STAGE_TIMEOUT: &str = "2s";

/// Where the message ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    /// Delivered to every recipient: gone from `linkrelay queue`, kept in sent/.
    Sent,
    /// Still queued (deferred, or waiting for a relay that refused us).
    Queue,
    /// In failed/: the user is told and can retry or drop it.
    Failed,
}

/// How a relay is reached and logged into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// Plain SMTP, no AUTH.
    None,
    /// `tls = "starttls"`, no AUTH.
    Starttls,
    /// AUTH PLAIN/LOGIN as "u" with this password from the password_command (the relay
    /// expects "p").
    Auth(&'static str),
}

struct Case {
    /// Also the user's name.
    name: &'static str,
    /// The first relay's behaviour.
    script: fn() -> RelayScript,
    login: Login,
    /// A healthy second relay in the route.
    fallback: bool,
    rcpts: &'static [&'static str],
    folder: Folder,
    /// A part of the message's status in `linkrelay queue` (not checked for Sent).
    status: &'static str,
    /// Per recipient, in order: its state and a part of its reply ("" = no reply recorded).
    recipients: &'static [(&'static str, &'static str)],
    /// Messages the first and the fallback relay recorded.
    received: (usize, usize),
}

fn ok() -> RelayScript {
    RelayScript::default()
}

fn reply(code: u16, text: &str) -> Option<Fault> {
    Some(Fault::reply(code, text))
}

/// A script whose RCPT for TWO gets `fault`.
fn rcpt_two(fault: Fault) -> RelayScript {
    RelayScript::default().with_rcpt(move |to| (to == TWO).then(|| fault.clone()))
}

const BOTH: &[&str] = &[ONE, TWO];
const PENDING: &[(&str, &str)] = &[("pending", ""), ("pending", "")];
const DEFERRED: &str = "deferred, next try in ";

fn cases() -> Vec<Case> {
    use Folder::*;
    let c = |name, script, folder, status, recipients, received| Case {
        name,
        script,
        login: Login::None,
        fallback: false,
        rcpts: BOTH,
        folder,
        status,
        recipients,
        received,
    };
    vec![
        // --- greeting ---
        c(
            "greeting-421",
            || RelayScript {
                greeting: reply(
                    421,
                    "4.3.2 Service not available, closing transmission channel",
                ),
                ..ok()
            },
            Queue,
            "greeting-421-a: 421 4.3.2 Service not available",
            PENDING,
            (0, 0),
        ),
        c(
            "greeting-554",
            || RelayScript {
                greeting: reply(554, "5.7.1 Client host rejected: Access denied"),
                ..ok()
            },
            Queue,
            "waiting: greeting-554-a refuses us on link office (554 5.7.1 Client host rejected: Access denied)",
            PENDING,
            (0, 0),
        ),
        Case {
            fallback: true,
            ..c(
                "greeting-554-failover",
                || RelayScript {
                    greeting: reply(554, "5.7.1 Client host rejected: Access denied"),
                    ..ok()
                },
                Sent,
                "",
                &[],
                (0, 1),
            )
        },
        c(
            "greeting-close",
            || RelayScript {
                greeting: Some(Fault::Close),
                ..ok()
            },
            Queue,
            "(at greeting)",
            PENDING,
            (0, 0),
        ),
        c(
            "greeting-reset",
            || RelayScript {
                greeting: Some(Fault::Reset),
                ..ok()
            },
            Queue,
            // A reset right after the accept may reach the client as a failed connect.
            "greeting-reset-a: ",
            PENDING,
            (0, 0),
        ),
        c(
            "greeting-stall",
            || RelayScript {
                greeting: Some(Fault::Stall),
                ..ok()
            },
            Queue,
            "greeting-stall-a: timed out after 2s (at greeting)",
            PENDING,
            (0, 0),
        ),
        Case {
            fallback: true,
            ..c(
                "greeting-stall-failover",
                || RelayScript {
                    greeting: Some(Fault::Stall),
                    ..ok()
                },
                Sent,
                "",
                &[],
                (0, 1),
            )
        },
        c(
            "greeting-garbage",
            || RelayScript {
                greeting: Some(Fault::Raw("hello, this is not SMTP\r\n".into())),
                ..ok()
            },
            Queue,
            "(at greeting)",
            PENDING,
            (0, 0),
        ),
        c(
            "greeting-multiline",
            || RelayScript {
                greeting: reply(220, "relay.test ESMTP\nno unsolicited mail\nthank you"),
                ..ok()
            },
            Sent,
            "",
            &[],
            (1, 0),
        ),
        // --- EHLO ---
        c(
            "ehlo-421",
            || RelayScript {
                ehlo: reply(421, "4.7.0 relay.test Error: too many connections"),
                ..ok()
            },
            Queue,
            "421 4.7.0 relay.test Error: too many connections",
            PENDING,
            (0, 0),
        ),
        c(
            "ehlo-550",
            || RelayScript {
                ehlo: reply(550, "5.7.1 Access denied"),
                ..ok()
            },
            Queue,
            "waiting: ehlo-550-a refuses us on link office (550 5.7.1 Access denied)",
            PENDING,
            (0, 0),
        ),
        c(
            "ehlo-close",
            || RelayScript {
                ehlo: Some(Fault::Close),
                ..ok()
            },
            Queue,
            "(at greeting)",
            PENDING,
            (0, 0),
        ),
        c(
            "ehlo-stall",
            || RelayScript {
                ehlo: Some(Fault::Stall),
                ..ok()
            },
            Queue,
            "timed out after 2s (at greeting)",
            PENDING,
            (0, 0),
        ),
        c(
            // A multi-line reply that never ends: the client waits for its last line.
            "ehlo-unfinished",
            || RelayScript {
                ehlo: Some(Fault::Raw("250-relay.test\r\n250-SIZE 1000000\r\n".into())),
                ..ok()
            },
            Queue,
            "timed out after 2s (at greeting)",
            PENDING,
            (0, 0),
        ),
        // --- STARTTLS (tls = "starttls": never falls back to plain text) ---
        Case {
            login: Login::Starttls,
            ..c(
                "starttls-missing",
                ok,
                Queue,
                "waiting: starttls-missing-a refuses us on link office (relay does not offer STARTTLS",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Starttls,
            ..c(
                "starttls-454",
                || RelayScript {
                    starttls: reply(454, "4.7.0 TLS not available due to local problem"),
                    ..ok()
                },
                Queue,
                "starttls-454-a: 454 4.7.0 TLS not available due to local problem",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Starttls,
            ..c(
                "starttls-handshake",
                || RelayScript {
                    starttls: reply(220, "2.0.0 Ready to start TLS"),
                    ..ok()
                },
                Queue,
                "(at starttls)",
                PENDING,
                (0, 0),
            )
        },
        // --- AUTH ---
        Case {
            login: Login::Auth("wrong"),
            ..c(
                "auth-535",
                || ok().with_credentials("u", "p"),
                Queue,
                "waiting: auth-535-a refuses us on link office (535 5.7.8 Error: authentication failed",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Auth("p"),
            ..c(
                "auth-454",
                || RelayScript {
                    auth: reply(454, "4.7.0 Temporary authentication failure"),
                    ..ok().with_credentials("u", "p")
                },
                Queue,
                "auth-454-a: 454 4.7.0 Temporary authentication failure",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Auth("p"),
            ..c(
                "auth-close",
                || RelayScript {
                    auth: Some(Fault::Close),
                    ..ok().with_credentials("u", "p")
                },
                Queue,
                "(at auth)",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Auth("p"),
            ..c(
                "auth-stall",
                || RelayScript {
                    auth: Some(Fault::Stall),
                    ..ok().with_credentials("u", "p")
                },
                Queue,
                "timed out after 2s (at auth)",
                PENDING,
                (0, 0),
            )
        },
        Case {
            login: Login::Auth("p"),
            ..c(
                "auth-ok",
                || ok().with_credentials("u", "p"),
                Sent,
                "",
                &[],
                (1, 0),
            )
        },
        // --- MAIL FROM ---
        c(
            "mail-451",
            || RelayScript {
                mail: reply(451, "4.3.0 Error: queue file write error"),
                ..ok()
            },
            Queue,
            "mail-451-a: 451 4.3.0 Error: queue file write error",
            PENDING,
            (0, 0),
        ),
        c(
            "mail-530",
            || RelayScript {
                mail: reply(530, "5.7.0 Authentication required"),
                ..ok()
            },
            Queue,
            "waiting: mail-530-a refuses us on link office (530 5.7.0 Authentication required)",
            PENDING,
            (0, 0),
        ),
        c(
            "mail-552",
            || RelayScript {
                mail: reply(552, "5.3.4 Message size exceeds fixed limit"),
                ..ok()
            },
            Failed,
            "failed: 552 5.3.4 Message size exceeds fixed limit",
            &[("failed", "552 5.3.4"), ("failed", "552 5.3.4")],
            (0, 0),
        ),
        c(
            "mail-close",
            || RelayScript {
                mail: Some(Fault::Close),
                ..ok()
            },
            Queue,
            "(at mail from)",
            PENDING,
            (0, 0),
        ),
        c(
            "mail-stall",
            || RelayScript {
                mail: Some(Fault::Stall),
                ..ok()
            },
            Queue,
            "timed out after 2s (at mail from)",
            PENDING,
            (0, 0),
        ),
        c(
            // A reply without a code.
            "mail-garbage",
            || RelayScript {
                mail: Some(Fault::Raw("2.1.0 Ok\r\n".into())),
                ..ok()
            },
            Queue,
            "(at mail from)",
            PENDING,
            (0, 0),
        ),
        // --- RCPT TO, per recipient ---
        c(
            "rcpt-unknown-user",
            || {
                rcpt_two(Fault::reply(
                    550,
                    "5.1.1 <two@dest.example>: Recipient address rejected: User unknown",
                ))
            },
            Failed,
            "failed: 1 of 2 recipients rejected: two@dest.example (550 5.1.1",
            &[
                ("sent", "250 2.0.0 Ok: queued as"),
                (
                    "failed",
                    "550 5.1.1 <two@dest.example>: Recipient address rejected",
                ),
            ],
            (1, 0),
        ),
        c(
            "rcpt-greylisted",
            || {
                rcpt_two(Fault::reply(
                    450,
                    "4.2.0 <two@dest.example>: Recipient address rejected: Greylisted",
                ))
            },
            Queue,
            "rcpt-greylisted-a: 450 4.2.0",
            &[
                ("sent", "250 2.0.0 Ok: queued as"),
                ("pending", "450 4.2.0"),
            ],
            (1, 0),
        ),
        c(
            "rcpt-relay-denied",
            || {
                rcpt_two(Fault::reply(
                    554,
                    "5.7.1 <two@dest.example>: Recipient address rejected: Relay access denied",
                ))
            },
            Queue,
            "waiting: rcpt-relay-denied-a refuses us on link office (554 5.7.1",
            &[
                ("sent", "250 2.0.0 Ok: queued as"),
                ("pending", "Relay access denied"),
            ],
            (1, 0),
        ),
        Case {
            fallback: true,
            ..c(
                "rcpt-relay-denied-failover",
                || {
                    rcpt_two(Fault::reply(
                        554,
                        "5.7.1 <two@dest.example>: Recipient address rejected: Relay access denied",
                    ))
                },
                Sent,
                "",
                &[],
                (1, 1),
            )
        },
        c(
            "rcpt-all-unknown",
            || {
                ok().with_rcpt(|to| {
                    Some(Fault::reply(
                        550,
                        &format!("5.1.1 <{to}>: Recipient address rejected: User unknown"),
                    ))
                })
            },
            Failed,
            "failed: every recipient was rejected",
            &[("failed", "550 5.1.1 <one@"), ("failed", "550 5.1.1 <two@")],
            (0, 0),
        ),
        c(
            "rcpt-multiline",
            || {
                rcpt_two(Fault::reply(
                    550,
                    "5.1.1 <two@dest.example>: User unknown\n5.1.1 see https://relay.test/help",
                ))
            },
            Failed,
            "1 of 2 recipients rejected",
            &[
                ("sent", "250 2.0.0"),
                (
                    "failed",
                    "550 5.1.1 <two@dest.example>: User unknown see https://relay.test/help",
                ),
            ],
            (1, 0),
        ),
        c(
            "rcpt-close",
            || rcpt_two(Fault::Close),
            Queue,
            "(at rcpt to)",
            PENDING,
            (0, 0),
        ),
        c(
            "rcpt-stall",
            || rcpt_two(Fault::Stall),
            Queue,
            "timed out after 2s (at rcpt to)",
            PENDING,
            (0, 0),
        ),
        c(
            "rcpt-garbage",
            || rcpt_two(Fault::Raw("ok\r\n".into())),
            Queue,
            "(at rcpt to)",
            PENDING,
            (0, 0),
        ),
        // --- DATA ---
        c(
            "data-451",
            || RelayScript {
                data: reply(451, "4.3.0 Error: queue file write error"),
                ..ok()
            },
            Queue,
            "data-451-a: 451 4.3.0",
            PENDING,
            (0, 0),
        ),
        c(
            "data-554",
            || RelayScript {
                data: reply(554, "5.5.1 Error: no valid recipients"),
                ..ok()
            },
            Queue,
            "waiting: data-554-a refuses us on link office (554 5.5.1",
            PENDING,
            (0, 0),
        ),
        c(
            "data-close",
            || RelayScript {
                data: Some(Fault::Close),
                ..ok()
            },
            Queue,
            "(at data)",
            PENDING,
            (0, 0),
        ),
        c(
            "data-stall",
            || RelayScript {
                data: Some(Fault::Stall),
                ..ok()
            },
            Queue,
            "timed out after 2s (at data)",
            PENDING,
            (0, 0),
        ),
        // --- the reply after the final dot ---
        c(
            "dot-451",
            || RelayScript {
                after_dot: reply(451, "4.3.0 Error: queue file write error"),
                ..ok()
            },
            Queue,
            "dot-451-a: 451 4.3.0",
            &[("pending", "451 4.3.0"), ("pending", "451 4.3.0")],
            (0, 0),
        ),
        c(
            "dot-too-big",
            || RelayScript {
                after_dot: reply(552, "5.3.4 Error: message file too big"),
                ..ok()
            },
            Failed,
            "failed: every recipient was rejected: one@dest.example (552 5.3.4",
            &[("failed", "552 5.3.4"), ("failed", "552 5.3.4")],
            (0, 0),
        ),
        c(
            "dot-spam",
            || RelayScript {
                after_dot: reply(554, "5.7.1 Message rejected as spam"),
                ..ok()
            },
            Failed,
            "failed: every recipient was rejected",
            &[
                ("failed", "554 5.7.1 Message rejected as spam"),
                ("failed", "554 5.7.1"),
            ],
            (0, 0),
        ),
        c(
            "dot-not-authorized",
            || RelayScript {
                after_dot: reply(550, "5.7.1 Delivery not authorized"),
                ..ok()
            },
            Queue,
            "waiting: dot-not-authorized-a refuses us on link office (550 5.7.1 Delivery not authorized)",
            &[("pending", "550 5.7.1"), ("pending", "550 5.7.1")],
            (0, 0),
        ),
        c(
            "dot-close",
            || RelayScript {
                after_dot: Some(Fault::Close),
                ..ok()
            },
            Queue,
            "(at end of data)",
            &[
                ("pending", "(at end of data)"),
                ("pending", "(at end of data)"),
            ],
            (0, 0),
        ),
        c(
            "dot-stall",
            || RelayScript {
                after_dot: Some(Fault::Stall),
                ..ok()
            },
            Queue,
            "timed out after 2s (at end of data)",
            &[("pending", "timed out"), ("pending", "timed out")],
            (0, 0),
        ),
        c(
            "dot-garbage",
            || RelayScript {
                after_dot: Some(Fault::Raw("queued!\r\n".into())),
                ..ok()
            },
            Queue,
            "(at end of data)",
            PENDING_END,
            (0, 0),
        ),
        c(
            // The relay took the mail, then reset the connection before answering: the
            // message is sent again later, the one duplicate SMTP cannot rule out.
            "dot-accept-then-reset",
            || RelayScript {
                after_dot: Some(Fault::Reset),
                record_before_after_dot: true,
                ..ok()
            },
            Queue,
            "(at end of data)",
            PENDING_END,
            (1, 0),
        ),
        c(
            "dot-multiline-250",
            || RelayScript {
                after_dot: reply(250, "2.0.0 Ok: queued as X1\n2.0.0 thank you"),
                ..ok()
            },
            Sent,
            "",
            &[],
            (1, 0),
        ),
    ]
}

const PENDING_END: &[(&str, &str)] = &[
    ("pending", "(at end of data)"),
    ("pending", "(at end of data)"),
];

fn config(cases: &[Case], relays: &BTreeMap<&str, (u16, Option<u16>)>) -> String {
    let mut config = Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .retry("max", "2h")
        .link(Link::new("office").id("Office"));
    for case in cases {
        let n = case.name;
        let (port, fallback) = relays[n];
        let first = Relay::local(&format!("{n}-a"), port).timeout(STAGE_TIMEOUT);
        let first = match case.login {
            Login::None => first,
            Login::Starttls => first.tls("starttls"),
            Login::Auth(password) => first.password_command("u", &format!("echo {password}")),
        };
        config = config.relay(first);
        let mut route = vec![format!("{n}-a")];
        if let Some(port) = fallback {
            config = config.relay(Relay::local(&format!("{n}-b"), port).timeout(STAGE_TIMEOUT));
            route.push(format!("{n}-b"));
        }
        let from = format!("{n}@example.org");
        config = config.user(
            User::new(n)
                .from([from.as_str()])
                .route("office", route.as_slice()),
        );
    }
    config.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_fault_has_the_right_outcome_and_shows_in_the_queue() {
    fault_matrix(false).await;
}

/// The same faults from relays that offer PIPELINING: MAIL, RCPT and DATA then go in one
/// write and their replies are read in order, refusals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_fault_has_the_right_outcome_with_pipelining_too() {
    fault_matrix(true).await;
}

async fn fault_matrix(pipelining: bool) {
    let cases = cases();
    let mut relays: BTreeMap<&str, (ScriptedRelay, Option<ScriptedRelay>)> = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for case in &cases {
        let first = ScriptedRelay::start(RelayScript {
            pipelining,
            ..(case.script)()
        })
        .await
        .unwrap();
        let fallback = if case.fallback {
            Some(
                ScriptedRelay::start(RelayScript {
                    pipelining,
                    ..RelayScript::named("fallback.test")
                })
                .await
                .unwrap(),
            )
        } else {
            None
        };
        ports.insert(
            case.name,
            (first.port(), fallback.as_ref().map(ScriptedRelay::port)),
        );
        relays.insert(case.name, (first, fallback));
    }
    let mut w = World::new().unwrap();
    w.write_config(&config(&cases, &ports)).unwrap();
    // Queue every case's message while the agent is down; it sends them all when it starts.
    for case in &cases {
        let msg = format!(
            "From: {n}@example.org\nTo: {to}\nSubject: {n}\n\nThe {n} case.\n",
            n = case.name,
            to = case.rcpts.join(", ")
        );
        let out = w.sendmail(&["-t", "-i"], &msg).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();

    // Wait until each case's message went out or had its one attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_user = loop {
        let queue = cli_json(&w, &["queue"]);
        let by_user: BTreeMap<String, Value> = queue
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["user"].as_str().unwrap().to_owned(), m.clone()))
            .collect();
        let settled = cases.iter().all(|case| match by_user.get(case.name) {
            None => w.outbox_entries(case.name, "sent").len() == 1,
            Some(m) => m["attempts"].as_u64().unwrap_or(0) >= 1,
        });
        if settled {
            break by_user;
        }
        assert!(
            Instant::now() < deadline,
            "not every case settled: {queue:#}\n{}",
            w.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut problems = Vec::new();
    for case in &cases {
        let mut problem = |what: String| problems.push(format!("{}: {what}", case.name));
        let (first, fallback) = &relays[case.name];
        // Where a message went through, its RCPTs and DATA came with its MAIL exactly when
        // the relay offered PIPELINING.
        if case.received.0 == 1 {
            for c in first.commands() {
                let batched = c.line.starts_with("RCPT TO:") || c.line == "DATA";
                if batched && c.pipelined != pipelining {
                    problem(format!(
                        "{:?} pipelined: {}, expected {pipelining}",
                        c.line, c.pipelined
                    ));
                }
            }
        }
        let got = (
            first.received().len(),
            fallback.as_ref().map_or(0, |r| r.received().len()),
        );
        if got != case.received {
            problem(format!(
                "relays received {got:?}, expected {:?}",
                case.received
            ));
        }
        let listed = by_user.get(case.name);
        match (case.folder, listed) {
            (Folder::Sent, None) => {
                if w.outbox_entries(case.name, "sent").len() != 1 {
                    problem("not in sent/".into());
                }
            }
            (Folder::Sent, Some(m)) => problem(format!("expected sent, but listed: {m}")),
            (_, None) => problem("not listed by `linkrelay queue`".into()),
            (folder, Some(m)) => {
                let want = if folder == Folder::Queue {
                    "queue"
                } else {
                    "failed"
                };
                if m["folder"] != want {
                    problem(format!("in {}, expected {want}", m["folder"]));
                }
                let status = m["status"].as_str().unwrap_or("");
                if !status.contains(case.status) {
                    problem(format!("status {status:?} lacks {:?}", case.status));
                }
                if folder == Folder::Queue
                    && !status.starts_with("waiting: ")
                    && !status.starts_with(DEFERRED)
                {
                    problem(format!(
                        "status {status:?} says neither deferred nor waiting"
                    ));
                }
                if m["attempts"] != 1 {
                    problem(format!("{} attempts, expected 1", m["attempts"]));
                }
                let rcpts = m["recipients"].as_array().cloned().unwrap_or_default();
                if rcpts.len() != case.recipients.len() {
                    problem(format!("recipients {rcpts:?}"));
                }
                for (r, (state, reply)) in rcpts.iter().zip(case.recipients) {
                    if r["state"] != *state {
                        problem(format!("{} is {}, expected {state}", r["addr"], r["state"]));
                    }
                    match r["reply"].as_str() {
                        None if reply.is_empty() => {}
                        Some(got) if !reply.is_empty() && got.contains(reply) => {}
                        got => problem(format!("{} reply {got:?}, expected {reply:?}", r["addr"])),
                    }
                }
            }
        }
    }
    // Messages split between relays reached each recipient exactly once.
    let (first, fallback) = &relays["rcpt-relay-denied-failover"];
    assert_eq!(
        first.received().first().map(|r| r.rcpts.clone()),
        Some(vec![ONE.to_owned()])
    );
    assert_eq!(
        fallback
            .as_ref()
            .and_then(|f| f.received().first().map(|r| r.rcpts.clone())),
        Some(vec![TWO.to_owned()])
    );
    let (first, _) = &relays["rcpt-unknown-user"];
    assert_eq!(first.received()[0].rcpts, [ONE]);
    assert!(
        problems.is_empty(),
        "{} of {} cases wrong:\n{}\n\nagent log:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n"),
        w.agent_log()
    );
}
