//! Mail through a relay that wants OAuth2, all parts real: `linkrelay login` at panva's
//! oidc-provider, then linkrelayd submitting to Postfix on loopback, whose Dovecot checks each
//! bearer token by introspection at the provider (`passdb { driver = oauth2 }`,
//! `introspection_mode = post`). Needs root (Postfix's master runs as root), as CI does.

use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User, Value};
use linkrelay_tests::keyring::Keyring;
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::notifications::FakeNotifications;
use linkrelay_tests::oidc::{CLIENT_ID, OidcProvider};
use linkrelay_tests::postfix::{Listener, Passdb, PostfixRelays};
use linkrelay_tests::world::{World, cli_json};

use crate::oauth_login::{device_login, item};
use crate::util::eventually;

/// The parts: the provider, Postfix with Dovecot, the keyring, NetworkManager with LAN up,
/// and a world whose bob sends through relay `mail` with `mechanism`. The agent is not
/// started and nobody is logged in.
struct Parts {
    provider: OidcProvider,
    postfix: PostfixRelays,
    keyring: Keyring,
    w: World,
    _nm: FakeNm,
    _dir: tempfile::TempDir,
    port: u16,
}

fn config(
    parts_port: u16,
    provider: &OidcProvider,
    ca: &std::path::Path,
    mechanism: &str,
) -> String {
    Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .retry("max", "2h")
        .retry("refusal_memory", "0s")
        .link(Link::new("lan").id("LAN"))
        .relay(
            Relay::new("mail")
                .host("127.0.0.1")
                .port(parts_port)
                .tls("starttls")
                .ca_file(ca)
                .timeout("10s")
                .oauth2(
                    "bob",
                    mechanism,
                    Value::inline(vec![
                        ("token_url", Value::from(provider.token_url().as_str())),
                        ("device_url", Value::from(provider.device_url().as_str())),
                        ("scopes", Value::from(["openid", "offline_access"])),
                        ("client_id", Value::from(CLIENT_ID)),
                    ]),
                ),
        )
        .user(User::new("bob").from(["*"]).route("lan", ["mail"]))
        .to_string()
}

async fn parts(access_token_ttl: Duration, mechanism: &str) -> Parts {
    let provider = OidcProvider::start(access_token_ttl).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("linkrelay-oauth-postfix-")
        .tempdir()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let postfix = PostfixRelays::start_on_loopback(
        dir.path(),
        &[Listener {
            name: "submission".into(),
            hostname: "smtp.oauth.test".into(),
            addr: "127.0.0.1".into(),
            port,
            network: "127.0.0.0/8".into(),
            auth_user: Some(("bob".into(), String::new())),
        }],
        &Passdb::OAuth2 {
            introspection_url: provider.introspection_url(),
        },
    )
    .unwrap();
    let w = World::new().unwrap();
    let keyring = Keyring::start(&w.session).await.unwrap();
    w.write_config(&config(port, &provider, &postfix.ca.ca_pem, mechanism))
        .unwrap();
    let nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("LAN", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    Parts {
        provider,
        postfix,
        keyring,
        w,
        _nm: nm,
        _dir: dir,
        port,
    }
}

impl Parts {
    /// Waits until Postfix passed on a message with `subject`; how many it passed on.
    async fn delivered(&self, subject: &str) -> usize {
        let found = || !self.postfix.with_subject(subject).is_empty();
        eventually(
            &format!("{subject} delivered: {}", self.postfix.log()),
            &self.w,
            found,
        )
        .await;
        self.postfix.with_subject(subject).len()
    }

    /// Every way a token could be seen: the agent's log, and what the CLI shows.
    fn everything_shown(&self) -> String {
        let mut seen = self.w.agent_log();
        for args in [&["status", "--json"][..], &["queue", "--json"]] {
            let out = self.w.run_cli(args).unwrap();
            seen.push_str(&String::from_utf8_lossy(&out.stdout));
            seen.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        seen
    }
}

/// A bearer token or its SASL forms in `text`.
fn bearer_leaks(text: &str, refresh: &str) -> Vec<String> {
    let mut found = Vec::new();
    if text.contains(refresh) {
        found.push("the refresh token".to_owned());
    }
    for line in text.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.contains("auth=bearer") {
            found.push(format!("a bearer token: {line}"));
        }
        for mech in ["xoauth2 ", "oauthbearer "] {
            if let Some(rest) = lower.split(mech).nth(1)
                && rest.split_whitespace().next().is_some_and(|w| w.len() > 20)
            {
                found.push(format!("an AUTH {mech}response: {line}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_with_xoauth2_then_oauthbearer_and_no_token_shows_anywhere() {
    let mut p = parts(Duration::from_secs(3600), "xoauth2").await;
    device_login(&p.w, &p.provider).await;
    let refresh = p.keyring.lookup(&item()).unwrap();
    p.w.set_agent_env("RUST_LOG", "trace");
    p.w.start_agent().await.unwrap();

    p.w.send("bob@bob.example", "carol@dest.example", "oauth-xoauth2")
        .unwrap();
    assert_eq!(p.delivered("oauth-xoauth2").await, 1);
    assert_eq!(
        p.postfix.log_count("sasl_method=XOAUTH2"),
        1,
        "{}",
        p.postfix.log()
    );

    p.w.write_config(&config(
        p.port,
        &p.provider,
        &p.postfix.ca.ca_pem,
        "oauthbearer",
    ))
    .unwrap();
    let out = p.w.run_cli(&["reload"]).unwrap();
    assert!(out.status.success());
    p.w.send("bob@bob.example", "carol@dest.example", "oauth-oauthbearer")
        .unwrap();
    assert_eq!(p.delivered("oauth-oauthbearer").await, 1);
    assert_eq!(
        p.postfix.log_count("sasl_method=OAUTHBEARER"),
        1,
        "{}",
        p.postfix.log()
    );

    let out = p.w.run_cli(&["test-relay", "mail", "--json"]).unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("with an OAuth2 access token (AUTH OAUTHBEARER)"),
        "{report}"
    );

    let seen = p.everything_shown() + &report;
    assert!(seen.contains("TRACE"), "the agent logged at trace level");
    assert_eq!(bearer_leaks(&seen, &refresh), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_that_runs_out_between_messages_is_refreshed_and_nothing_is_resent() {
    let mut p = parts(Duration::from_secs(3), "xoauth2").await;
    device_login(&p.w, &p.provider).await;
    p.w.start_agent().await.unwrap();
    p.w.send("bob@bob.example", "carol@dest.example", "before-expiry")
        .unwrap();
    assert_eq!(p.delivered("before-expiry").await, 1);
    // The first access token is dead now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    p.w.send("bob@bob.example", "carol@dest.example", "after-expiry")
        .unwrap();
    assert_eq!(p.delivered("after-expiry").await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.postfix.with_subject("before-expiry").len(),
        1,
        "not resent"
    );
    assert_eq!(p.postfix.with_subject("after-expiry").len(), 1);
    let refreshed = p.w.agent_log().matches("access token refreshed").count();
    assert_eq!(refreshed, 2, "one refresh per token: {}", p.w.agent_log());
    assert_eq!(
        p.postfix.log_count("authentication failed"),
        0,
        "{}",
        p.postfix.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_holds_the_mail_until_login_again() {
    let mut p = parts(Duration::from_secs(3600), "xoauth2").await;
    device_login(&p.w, &p.provider).await;
    let refresh = p.keyring.lookup(&item()).unwrap();
    p.provider.revoke(&refresh).await.unwrap();
    let notices = FakeNotifications::start(&p.w.session.address, &["body"])
        .await
        .unwrap();
    p.w.start_agent().await.unwrap();

    p.w.send("bob@bob.example", "carol@dest.example", "held-for-login")
        .unwrap();
    p.w.send("bob@bob.example", "dave@dest.example", "held-too")
        .unwrap();
    eventually("the mail waits for a login", &p.w, || {
        let q = cli_json(&p.w, &["queue"]);
        q.as_array().is_some_and(|a| {
            a.iter().any(|m| {
                m["last_error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("mail needs login (linkrelay login mail)")
            })
        })
    })
    .await;
    let q = cli_json(&p.w, &["queue"]);
    assert_eq!(
        q.as_array().map(Vec::len),
        Some(2),
        "still queued, not failed: {q}"
    );
    assert!(p.postfix.with_subject("held-for-login").is_empty());
    let shown = notices.wait_for(1, Duration::from_secs(10)).await.unwrap();
    let flush = p.w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(flush.status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logins: Vec<_> = notices
        .shown()
        .into_iter()
        .filter(|n| n.summary == "Relay mail needs you to log in")
        .collect();
    assert_eq!(logins.len(), 1, "told once: {shown:?}");
    assert!(
        logins[0].body.contains("linkrelay login mail"),
        "{:?}",
        logins[0]
    );
    // `linkrelay status` gives the login as the reason bob's mail waits.
    let needs_login = |w: &World| {
        let status = cli_json(w, &["status"]);
        status["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["user"] == "bob"))
            .map(|bob| bob["needs_login"].clone())
            .unwrap_or(serde_json::Value::Null)
    };
    assert_eq!(needs_login(&p.w), serde_json::json!(["mail"]));
    let out = p.w.run_cli(&["status"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.lines()
            .any(|l| l.trim() == "mail needs login (linkrelay login mail)"),
        "{said}"
    );

    // Logging in again flushes at once (no waiting for the retry delay of an hour).
    let out = device_login(&p.w, &p.provider).await;
    assert!(out.contains("linkrelayd is sending the mail"), "{out}");
    assert_eq!(p.delivered("held-for-login").await, 1);
    assert_eq!(p.delivered("held-too").await, 1);
    eventually("status no longer asks for a login", &p.w, || {
        needs_login(&p.w) == serde_json::json!([])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_the_provider_ended_early_is_refreshed_once_and_the_mail_goes_out() {
    let mut p = parts(Duration::from_secs(3600), "xoauth2").await;
    device_login(&p.w, &p.provider).await;
    let notices = FakeNotifications::start(&p.w.session.address, &["body"])
        .await
        .unwrap();
    p.w.start_agent().await.unwrap();
    p.w.send(
        "bob@bob.example",
        "carol@dest.example",
        "with-the-first-token",
    )
    .unwrap();
    assert_eq!(p.delivered("with-the-first-token").await, 1);

    // The agent still holds the first access token, good for an hour by its own clock; the
    // provider ends it now, so Dovecot's introspection calls it inactive and Postfix refuses
    // the AUTH. The refresh token stays good.
    let ended = p.provider.end_access_tokens().await.unwrap();
    assert!(ended >= 1, "the provider had issued an access token");
    p.w.send(
        "bob@bob.example",
        "carol@dest.example",
        "after-the-token-ended",
    )
    .unwrap();
    assert_eq!(p.delivered("after-the-token-ended").await, 1);

    let log = p.w.agent_log();
    assert_eq!(
        log.matches("access token refused; refreshing it once")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        p.postfix.log_count("authentication failed"),
        1,
        "one refused AUTH, then the refreshed token: {}",
        p.postfix.log()
    );
    let q = cli_json(&p.w, &["queue"]);
    assert_eq!(q.as_array().map(Vec::len), Some(0), "nothing waits: {q}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.postfix.with_subject("with-the-first-token").len(),
        1,
        "not resent"
    );
    assert!(
        notices.shown().is_empty(),
        "no login asked for: {:?}",
        notices.shown()
    );
}
