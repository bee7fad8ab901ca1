//! `TestRelay`: try a relay from the link that is up without sending anything.
//!
//! It runs in the agent, not in the CLI, because the question is whether *the agent* can use
//! the relay: the same code opens the session (TLS policy, `ca_file`, the password from the
//! keyring or `password_command`), from the same process environment (a systemd user service may see
//! other credentials and networks than a terminal), on the link the agent routes for. The CLI
//! stays a thin D-Bus client.
//!
//! Steps: connect and EHLO, STARTTLS and AUTH as configured (the same [`Session::open`] a
//! flush uses), EHLO again to list what the relay offers on the secured connection, then
//! `MAIL FROM` + `RCPT TO` + `RSET`. A relay that would not relay for us says so at RCPT
//! ("554 5.7.1 ... Relay access denied") or earlier ("530 5.7.0 Authentication required");
//! no DATA is ever sent. When the session cannot be opened past the greeting, a second,
//! credential-less connection lists what the relay offers, so the user sees why (no STARTTLS,
//! no AUTH mechanism we speak, ...).
//!
//! `ProbeRelay` runs the same test on a relay given by its settings rather than by name
//! (`linkrelay setup` tries a relay it found before writing it down). Either answer, when it
//! says yes or no, goes into the relay memory's history of the link.

use std::sync::{Arc, Mutex};

use linkrelay_config::{Config, LinkName, Relay, RelayName, TlsMode, UserName};
use linkrelay_dbus::agent::{AgentError, RelayStep, RelayTest};
use tracing::info;

use crate::delivery::credentials;
use crate::delivery::memory::{LinkKey, RelayMemory, lock};
use crate::delivery::outcome::{Outcome, Stage};
use crate::delivery::smtp::{Session, Verdict};
use crate::service::interface::Reply;

/// The recipient tried when none is given: a domain no ISP relay is the destination of.
pub const DEFAULT_TO: &str = "postmaster@example.com";

/// Where a test runs: the config, the link that is up, and the memory its answer goes into.
pub struct Bench {
    /// The running config.
    pub config: Arc<Config>,
    /// The link that is up, as the relay memory names it.
    pub link: LinkKey,
    /// The relay memory.
    pub memory: Arc<Mutex<RelayMemory>>,
}

/// Checks the request for the configured relay `relay`, then runs the test in a task of its
/// own and replies when it is done.
pub fn spawn(bench: Bench, relay: RelayName, from: String, to: String, reply: Reply<RelayTest>) {
    let Some(r) = bench.config.relay(&relay).cloned() else {
        let known: Vec<_> = bench
            .config
            .relays
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let known = if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        };
        let _ = reply.send(Err(AgentError::UnknownRelay(format!(
            "no relay named {relay:?}; known relays: {known}"
        ))));
        return;
    };
    start(bench, r, from, to, true, reply);
}

/// Checks the request for a relay given by its settings, then tests it like [`spawn`]. Its
/// answer is remembered unless the config has a relay of that name with other settings (the
/// history would then speak of the wrong server).
pub fn spawn_probe(bench: Bench, relay: Relay, from: String, to: String, reply: Reply<RelayTest>) {
    let record = bench.config.relay(&relay.name).is_none_or(|r| *r == relay);
    start(bench, relay, from, to, record, reply);
}

fn start(bench: Bench, r: Relay, from: String, to: String, record: bool, reply: Reply<RelayTest>) {
    for (what, addr) in [("from", &from), ("to", &to)] {
        if !addr.is_empty() && addr.parse::<lettre::Address>().is_err() {
            let _ = reply.send(Err(AgentError::InvalidArgument(format!(
                "{what} {addr:?} is not an email address"
            ))));
            return;
        }
    }
    let rule = match &bench.link {
        LinkKey::Rule(name) => Some(name.clone()),
        _ => None,
    };
    let routed_for = routed_for(&bench.config, rule.as_ref(), &r.name)
        .into_iter()
        .map(String::from)
        .collect();
    let from = if from.is_empty() {
        default_from(&bench.config, &r.name)
    } else {
        from
    };
    let to = if to.is_empty() { DEFAULT_TO.into() } else { to };
    tokio::spawn(async move {
        let link = rule.map(String::from).unwrap_or_default();
        let result = run(&r, &from, &to, link, routed_for).await;
        info!(relay = %result.relay, may_relay = %result.may_relay, "relay test: {}", result.verdict);
        if record {
            remember(&bench, &r.name, &result);
        }
        let _ = reply.send(Ok(result));
    });
}

/// Files a yes or no of `result` in the relay memory's history of the link.
fn remember(bench: &Bench, relay: &RelayName, result: &RelayTest) {
    let refusal = || {
        result
            .steps
            .iter()
            .rev()
            .find(|s| s.state == "failed")
            .map(|s| s.text.clone())
            .unwrap_or_else(|| result.verdict.clone())
    };
    let mut memory = lock(&bench.memory);
    match result.may_relay.as_str() {
        "yes" => memory.tested(&bench.link, relay, true, ""),
        "no" => memory.tested(&bench.link, relay, false, &refusal()),
        _ => {}
    }
}

/// The users whose route on `link` lists `relay`.
pub fn routed_for(config: &Config, link: Option<&LinkName>, relay: &RelayName) -> Vec<UserName> {
    let Some(link) = link else {
        return Vec::new();
    };
    config
        .users
        .iter()
        .filter(|u| u.relays_for(link).is_some_and(|rs| rs.contains(relay)))
        .map(|u| u.name.clone())
        .collect()
}

/// A sender of a user who routes through `relay` on some link, if one of their `from`
/// entries is a plain address; else the null sender.
pub fn default_from(config: &Config, relay: &RelayName) -> String {
    config
        .users
        .iter()
        .filter(|u| u.all_relays().any(|r| r == relay))
        .flat_map(|u| u.from.iter())
        .find(|f| !f.contains(['*', '?', '[']) && f.parse::<lettre::Address>().is_ok())
        .cloned()
        .unwrap_or_default()
}

fn step(stage: &str, state: &str, text: impl Into<String>) -> RelayStep {
    RelayStep {
        stage: stage.into(),
        state: state.into(),
        text: text.into(),
    }
}

/// The steps before `failed` that must have worked, for a session that failed at `failed`.
fn steps_before(relay: &Relay, failed: Stage, address: &str) -> Vec<RelayStep> {
    let mut steps = Vec::new();
    if failed == Stage::Connect {
        return steps;
    }
    steps.push(step("connect", "ok", format!("connected to {address}")));
    if failed == Stage::Tls {
        return steps;
    }
    match relay.tls {
        TlsMode::Starttls => steps.push(step("starttls", "ok", "TLS established")),
        TlsMode::Tls => {}
        TlsMode::None => steps.push(step("starttls", "skipped", "tls = \"none\"")),
    }
    steps
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Connect | Stage::Greeting => "connect",
        Stage::Tls => "starttls",
        Stage::Auth => "auth",
        Stage::Mail => "mail from",
        _ => "rcpt to",
    }
}

/// Runs the test against `relay`.
pub async fn run(
    relay: &Relay,
    from: &str,
    to: &str,
    link: String,
    routed_for: Vec<String>,
) -> RelayTest {
    let address = format!("{}:{}", relay.host, relay.port);
    let mut out = RelayTest {
        relay: relay.name.to_string(),
        address: address.clone(),
        tls: relay.tls.as_str().into(),
        link,
        routed_for,
        steps: Vec::new(),
        offers: Vec::new(),
        encrypted: false,
        may_relay: "unknown".into(),
        verdict: String::new(),
    };
    let password = match credentials::fetch(relay).await {
        Ok(p) => p,
        Err(e) => {
            out.steps.push(step("auth", "failed", e.text.clone()));
            out.verdict = format!("cannot log in: {}", e.text);
            return out;
        }
    };
    let mut opened = Session::open(relay, password).await;
    if let Err(v) = &opened
        && credentials::refused_token(relay, v)
    {
        // As the flusher does: one refresh of the access token, one more try.
        opened = match credentials::fetch_renewed(relay).await {
            Ok(token) => Session::open(relay, token).await,
            Err(e) => Err(credentials::verdict(e)),
        };
    }
    let mut session = match opened {
        Ok(s) => s,
        Err(v) => {
            out.steps = steps_before(relay, v.stage, &address);
            out.steps
                .push(step(stage_name(v.stage), "failed", v.describe()));
            if v.outcome == Outcome::RelayRefused {
                out.may_relay = "no".into();
            }
            out.verdict = format!(
                "{} at {}: {}",
                if v.outcome == Outcome::RelayRefused {
                    "the relay will not take our mail"
                } else {
                    "the test stopped"
                },
                v.stage.as_str(),
                v.describe()
            );
            if v.stage != Stage::Connect {
                out.offers = bare_offers(relay).await;
            }
            return out;
        }
    };
    out.encrypted = session.is_encrypted();
    out.steps.push(step(
        "connect",
        "ok",
        format!("{address} ({})", session.server_name()),
    ));
    match relay.tls {
        TlsMode::Starttls => out.steps.push(step("starttls", "ok", "TLS established")),
        TlsMode::Tls => {}
        TlsMode::None => out
            .steps
            .push(step("starttls", "skipped", "tls = \"none\"")),
    }
    match &relay.auth {
        Some(auth) => out.steps.push(step(
            "auth",
            "ok",
            match auth.mechanism {
                linkrelay_config::Mechanism::Password => format!("logged in as {}", auth.username),
                bearer => format!(
                    "logged in as {} with an OAuth2 access token (AUTH {})",
                    auth.username,
                    crate::delivery::sasl::name(bearer)
                ),
            },
        )),
        None => out.steps.push(step("auth", "skipped", "no username")),
    }
    out.offers = session.offers(relay).await.unwrap_or_default();
    let (mail, rcpt) = session.probe(from, to).await;
    session.close().await;
    judge(&mut out, from, to, &mail, rcpt.as_ref());
    out
}

/// Fills in the MAIL and RCPT steps and the verdict. Pure.
pub fn judge(out: &mut RelayTest, from: &str, to: &str, mail: &Verdict, rcpt: Option<&Verdict>) {
    let sender = if from.is_empty() { "<>" } else { from };
    let ok = |v: &Verdict| v.code.is_some_and(|c| (200..300).contains(&c));
    out.steps.push(step(
        "mail from",
        if ok(mail) { "ok" } else { "failed" },
        format!("{sender}: {}", mail.describe()),
    ));
    let Some(rcpt) = rcpt else {
        if mail.outcome == Outcome::RelayRefused {
            out.may_relay = "no".into();
            out.verdict = format!("the relay refuses our mail here: {}", mail.describe());
        } else {
            out.verdict = format!("the relay refused the sender: {}", mail.describe());
        }
        return;
    };
    out.steps.push(step(
        "rcpt to",
        if ok(rcpt) { "ok" } else { "failed" },
        format!("{to}: {}", rcpt.describe()),
    ));
    (out.may_relay, out.verdict) = if ok(rcpt) {
        (
            "yes".into(),
            format!("the relay takes mail for {to} from this link; nothing was sent"),
        )
    } else if rcpt.outcome == Outcome::RelayRefused {
        (
            "no".into(),
            format!(
                "the relay refuses to relay for us here: {}",
                rcpt.describe()
            ),
        )
    } else {
        (
            "unknown".into(),
            format!(
                "the relay refused the test recipient for another reason ({}); try --to with an address you know",
                rcpt.describe()
            ),
        )
    };
}

/// What the relay offers to a client that neither secures nor logs in.
async fn bare_offers(relay: &Relay) -> Vec<String> {
    let bare = Relay {
        tls: match relay.tls {
            TlsMode::Tls => TlsMode::Tls,
            _ => TlsMode::None,
        },
        auth: None,
        ..relay.clone()
    };
    match Session::open(&bare, None).await {
        Ok(mut s) => {
            let offers = s.offers(&bare).await.unwrap_or_default();
            s.close().await;
            offers
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn verdict(stage: Stage, code: u16, text: &str) -> Verdict {
        Verdict::new(stage, Some(code), text.into())
    }

    fn blank() -> RelayTest {
        RelayTest {
            relay: "r".into(),
            address: "h:25".into(),
            tls: "none".into(),
            link: "isp-a".into(),
            routed_for: vec![],
            steps: vec![],
            offers: vec![],
            encrypted: false,
            may_relay: "unknown".into(),
            verdict: String::new(),
        }
    }

    #[test]
    fn relay_access_denied_at_rcpt_means_no() {
        let mut t = blank();
        let mail = verdict(Stage::Mail, 250, "2.1.0 Ok");
        let rcpt = verdict(
            Stage::Rcpt,
            554,
            "5.7.1 <postmaster@example.com>: Recipient address rejected: Relay access denied",
        );
        judge(&mut t, "", DEFAULT_TO, &mail, Some(&rcpt));
        assert_eq!(t.may_relay, "no");
        assert!(t.verdict.contains("Relay access denied"), "{}", t.verdict);
        assert_eq!(t.steps[0].text, "<>: 250 2.1.0 Ok");
        assert_eq!(t.steps[1].state, "failed");
    }

    #[test]
    fn accepted_rcpt_means_yes_and_other_refusals_are_unknown() {
        let mut t = blank();
        let mail = verdict(Stage::Mail, 250, "2.1.0 Ok");
        judge(
            &mut t,
            "a@b.example",
            "x@y.example",
            &mail,
            Some(&verdict(Stage::Rcpt, 250, "2.1.5 Ok")),
        );
        assert_eq!(t.may_relay, "yes");
        let mut t = blank();
        let unknown = verdict(Stage::Rcpt, 550, "5.1.1 <x@y.example>: User unknown");
        judge(&mut t, "a@b.example", "x@y.example", &mail, Some(&unknown));
        assert_eq!(t.may_relay, "unknown");
        assert!(t.verdict.contains("--to"));
        let mut t = blank();
        let auth = verdict(Stage::Mail, 530, "5.7.0 Authentication required");
        judge(&mut t, "", DEFAULT_TO, &auth, None);
        assert_eq!(t.may_relay, "no");
    }

    #[test]
    fn defaults_come_from_the_users_routed_through_the_relay() {
        let c = Config::parse(
            r#"
[[link]]
name = "isp-a"
match = { id = "ISP-A" }
[[relay]]
name = "relay-a"
host = "h"
tls = "none"
[[relay]]
name = "relay-b"
host = "h"
tls = "none"
[[user]]
name = "alice"
from = ["*@alice.example", "alice@isp-a.example"]
routes = { isp-a = ["relay-a"] }
[[user]]
name = "bob"
from = ["*@bob.example"]
default = true
routes = { "*" = ["relay-b", "relay-a"] }
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(default_from(&c, &"relay-a".into()), "alice@isp-a.example");
        assert_eq!(default_from(&c, &"relay-b".into()), "");
        // bob has no isp-a entry: his "*" route applies there.
        assert_eq!(
            routed_for(&c, Some(&"isp-a".into()), &"relay-a".into()),
            ["alice", "bob"]
        );
        assert_eq!(
            routed_for(&c, Some(&"isp-a".into()), &"relay-b".into()),
            ["bob"]
        );
        assert_eq!(
            routed_for(&c, Some(&"other".into()), &"relay-a".into()),
            ["bob"]
        );
        assert!(routed_for(&c, None, &"relay-a".into()).is_empty());
    }
}
