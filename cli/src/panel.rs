//! `linkrelay status --format waybar|line [--follow]`: the agent's state in one glance, for
//! desktop panels.
//!
//! - `waybar`: one JSON object per line, as a Waybar `custom` module with `"return-type":
//!   "json"` reads it: `text`, `tooltip`, `class` and `alt` (the same word as `class`, for
//!   `format-icons`). Waybar renders `text` and `tooltip` as Pango markup, so `&`, `<` and `>`
//!   (which SMTP replies are full of) are escaped.
//! - `line`: one plain line (tmux, i3status, polybar, a shell prompt).
//!
//! The class says what needs the user, most urgent first: `failed` (a message is in failed/),
//! `held` (mail is queued and its route holds it), `queued` (mail is queued and will go out),
//! `error` (the link source or the config has a problem), `ok` (nothing waiting), `down` (no
//! agent). With `--follow` a new line is printed whenever the agent changes anything, and the
//! command keeps running across agent restarts (a panel's continuous script); only its first
//! read may start the agent through D-Bus activation.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_dbus::agent::{AGENT_BUS_NAME, AGENT_PATH, AgentProxy};
use serde_json::json;

use crate::output::Status;

/// Which panel form to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelFormat {
    /// Waybar custom module JSON.
    Waybar,
    /// One plain line.
    Line,
}

/// What a panel shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    /// The short text.
    pub text: String,
    /// The longer text (one line per user).
    pub tooltip: String,
    /// `failed`, `held`, `queued`, `error`, `ok` or `down`.
    pub class: &'static str,
    /// For `held`, `error` and `down`: the first reason, in words.
    pub reason: Option<String>,
}

/// The panel for an agent that cannot be reached, with why.
pub fn down(reason: &str) -> Panel {
    Panel {
        text: "linkrelay off".into(),
        tooltip: reason.to_string(),
        class: "down",
        reason: Some(reason.to_string()),
    }
}

fn plural(n: u32, one: &str) -> String {
    format!("{n} {one}")
}

/// The panel for `s`. Pure.
pub fn summarize(s: &Status) -> Panel {
    let get = |k: &str| s.link.get(k).map(String::as_str).unwrap_or("");
    let link = if s.link.is_empty() {
        "no link".to_string()
    } else if !get("name").is_empty() {
        get("name").to_string()
    } else {
        // A link no [[link]] rule matches: its NetworkManager name says most.
        get("id").to_string()
    };
    let queued: u32 = s.queue.iter().map(|q| q.queued).sum();
    let failed: u32 = s.queue.iter().map(|q| q.failed).sum();
    let queued_of = |user: &str| {
        s.queue
            .iter()
            .find(|q| q.user == user)
            .map_or(0, |q| q.queued)
    };
    let held: Vec<&linkrelay_dbus::agent::RouteInfo> = s
        .routes
        .iter()
        .filter(|r| !r.hold.is_empty() && queued_of(&r.user) > 0)
        .collect();
    let problem = !s.source_problem.is_empty() || !s.config_error.is_empty();

    let class = if failed > 0 {
        "failed"
    } else if !held.is_empty() {
        "held"
    } else if queued > 0 {
        "queued"
    } else if problem {
        "error"
    } else {
        "ok"
    };

    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(plural(failed, "failed"));
    }
    if queued > 0 {
        parts.push(plural(queued, "queued"));
    }
    let waiting = s.queue.iter().filter(|q| q.queued > 0).count();
    let head = if class == "held" && held.len() == waiting {
        // None of the queued mail can move: say so rather than name a link.
        "held".to_string()
    } else {
        link
    };
    let text = if parts.is_empty() {
        head
    } else {
        format!("{head}: {}", parts.join(", "))
    };

    let mut tooltip = String::new();
    if s.link.is_empty() {
        let _ = writeln!(tooltip, "link: none");
    } else {
        let _ = writeln!(
            tooltip,
            "link: {} ({} {})",
            if get("name").is_empty() {
                "no [[link]] rule matches"
            } else {
                get("name")
            },
            get("type"),
            get("id")
        );
    }
    if !s.ovr.kind.is_empty() {
        let _ = writeln!(tooltip, "override: {} {}", s.ovr.kind, s.ovr.name);
    }
    for r in &s.routes {
        let route = if r.hold.is_empty() {
            format!("via {}", r.relays.join(", then "))
        } else {
            format!("held: {}", r.hold)
        };
        let q = s.queue.iter().find(|q| q.user == r.user);
        let counts = match q {
            Some(q) if q.queued > 0 || q.failed > 0 => {
                format!(" ({} queued, {} failed)", q.queued, q.failed)
            }
            _ => String::new(),
        };
        let _ = writeln!(tooltip, "{}: {route}{counts}", r.user);
        if let Some(w) = s.wait_of(&r.user) {
            for line in crate::output::wait_lines(w, s.read_at, &crate::output::clock_time) {
                let _ = writeln!(tooltip, "  {line}");
            }
        }
    }
    if !s.source_problem.is_empty() {
        let _ = writeln!(tooltip, "problem: {}", s.source_problem);
    }
    if !s.config_error.is_empty() {
        let first = s.config_error.lines().next().unwrap_or_default();
        let _ = writeln!(tooltip, "config error: {first}");
    }
    if failed > 0 {
        let _ = writeln!(
            tooltip,
            "`linkrelay queue` shows them; `linkrelay retry ID` resends"
        );
    }
    let reason = match class {
        "held" => held.first().map(|r| r.hold.clone()),
        "error" if !s.source_problem.is_empty() => Some(s.source_problem.clone()),
        "error" => s.config_error.lines().next().map(str::to_string),
        _ => None,
    };
    Panel {
        text,
        tooltip: tooltip.trim_end().to_string(),
        class,
        reason,
    }
}

/// Escapes text for Pango markup.
pub fn markup_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Waybar JSON line.
pub fn waybar(p: &Panel) -> String {
    json!({
        "text": markup_escape(&p.text),
        "tooltip": markup_escape(&p.tooltip),
        "class": p.class,
        "alt": p.class,
    })
    .to_string()
}

/// A panel has room for the gist only: the reason up to its first aside (" (" or "; ");
/// the tooltip and `linkrelay status` have the rest.
fn gist(reason: &str) -> &str {
    let end = [reason.find(" ("), reason.find("; ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(reason.len());
    &reason[..end]
}

/// The plain line: the text, and for a held, failing or down state the gist of the reason.
pub fn line(p: &Panel) -> String {
    match &p.reason {
        Some(r) => format!("{} ({})", p.text, gist(r)),
        None => p.text.clone(),
    }
}

fn render(format: PanelFormat, p: &Panel) -> String {
    match format {
        PanelFormat::Waybar => waybar(p),
        PanelFormat::Line => line(p),
    }
}

/// Reads the agent's state on `conn`; `activate` lets the bus start an agent that is not
/// running.
async fn read(conn: &zbus::Connection, system: bool, activate: bool) -> anyhow::Result<Panel> {
    if let Err(msg) = crate::ensure_agent(conn, system, activate).await? {
        return Ok(down(&msg));
    }
    let agent = AgentProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    Ok(match Status::read(&agent).await {
        Ok(s) => summarize(&s),
        Err(e) => down(&format!("the agent did not answer: {e}")),
    })
}

/// Prints the panel once, or (`follow`) again at every change until the bus goes away.
///
/// Exits 0 even when the agent is down: a panel shows that state rather than an error.
pub async fn run(system: bool, format: PanelFormat, follow: bool) -> anyhow::Result<ExitCode> {
    let conn = match crate::agent_bus(system).await {
        Ok(c) => c,
        Err(e) if !follow => {
            let which = if system { "system" } else { "session" };
            let msg = format!("cannot connect to the {which} bus ({e})");
            println!("{}", render(format, &down(&msg)));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    if !follow {
        println!("{}", render(format, &read(&conn, system, true).await?));
        return Ok(ExitCode::SUCCESS);
    }
    let from_agent = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(AGENT_BUS_NAME)
        .path(AGENT_PATH)
        .build()?;
    let owner = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(AGENT_BUS_NAME)
        .build()?;
    // Subscribe first, then read: no change between the two is missed.
    let mut changes = zbus::MessageStream::for_match_rule(from_agent, &conn, None).await?;
    let mut owners = zbus::MessageStream::for_match_rule(owner, &conn, None).await?;
    let mut last = String::new();
    // The first read may start the agent, like any linkrelay call; later ones only watch, so
    // that `systemctl --user stop linkrelayd` is not undone by a panel.
    let mut activate = true;
    // A stream that ends or fails means the bus is gone: a broken connection's streams keep
    // answering at once, so waiting on them again would spin.
    let alive = |m: Option<zbus::Result<zbus::Message>>| matches!(m, Some(Ok(_)));
    'follow: loop {
        let out = render(format, &read(&conn, system, activate).await?);
        activate = false;
        if out != last {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{out}")?;
            stdout.flush()?;
            last = out;
        }
        tokio::select! {
            m = changes.next() => if !alive(m) { break },
            m = owners.next() => if !alive(m) { break },
        }
        // Let a burst of changes (a flush sends several) settle into one line.
        let settle = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                m = changes.next() => if !alive(m) { break 'follow },
                m = owners.next() => if !alive(m) { break 'follow },
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use linkrelay_dbus::agent::{OverrideInfo, QueueCount, RefusalInfo, RouteInfo, UserWait};

    use super::*;

    fn status(routes: Vec<RouteInfo>, queue: Vec<QueueCount>) -> Status {
        let link: HashMap<String, String> = [
            ("name", "isp-a"),
            ("id", "ISP-A"),
            ("type", "802-3-ethernet"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Status {
            source: "networkmanager".into(),
            source_problem: String::new(),
            link,
            routes,
            ovr: OverrideInfo {
                kind: String::new(),
                name: String::new(),
                expires: 0,
            },
            queue,
            config_path: "/c".into(),
            config_error: String::new(),
            not_in_force: Vec::new(),
            version: "0".into(),
            accepted_here: Vec::new(),
            waits: Vec::new(),
            read_at: 1000,
        }
    }

    fn via(user: &str, relay: &str) -> RouteInfo {
        RouteInfo {
            user: user.into(),
            relays: vec![relay.into()],
            hold: String::new(),
        }
    }

    fn held(user: &str, why: &str) -> RouteInfo {
        RouteInfo {
            user: user.into(),
            relays: vec![],
            hold: why.into(),
        }
    }

    fn q(user: &str, queued: u32, failed: u32) -> QueueCount {
        QueueCount {
            user: user.into(),
            queued,
            failed,
            sent: 7,
        }
    }

    #[test]
    fn idle_shows_the_link_and_ok() {
        let p = summarize(&status(vec![via("bob", "relay-a")], vec![q("bob", 0, 0)]));
        assert_eq!(p.class, "ok");
        assert_eq!(p.text, "isp-a");
        assert_eq!(line(&p), "isp-a");
        assert!(p.tooltip.contains("bob: via relay-a"), "{}", p.tooltip);
    }

    #[test]
    fn held_mail_says_held_and_why() {
        let p = summarize(&status(
            vec![held("alice", "no relay for link isp-a")],
            vec![q("alice", 3, 0)],
        ));
        assert_eq!(p.class, "held");
        assert_eq!(p.text, "held: 3 queued");
        assert_eq!(line(&p), "held: 3 queued (no relay for link isp-a)");
    }

    #[test]
    fn a_held_user_without_mail_is_not_news() {
        let p = summarize(&status(
            vec![
                held("alice", "no relay for link isp-a"),
                via("bob", "relay-a"),
            ],
            vec![q("alice", 0, 0), q("bob", 2, 0)],
        ));
        assert_eq!(p.class, "queued");
        assert_eq!(p.text, "isp-a: 2 queued");
    }

    #[test]
    fn failures_come_first() {
        let p = summarize(&status(
            vec![held("alice", "no link"), via("bob", "relay-a")],
            vec![q("alice", 1, 0), q("bob", 0, 2)],
        ));
        assert_eq!(p.class, "failed");
        assert_eq!(p.text, "isp-a: 2 failed, 1 queued");
        assert!(p.tooltip.contains("linkrelay retry ID"));
    }

    #[test]
    fn problems_show_when_nothing_else_does() {
        let mut s = status(vec![via("bob", "relay-a")], vec![q("bob", 0, 0)]);
        s.source_problem =
            "NetworkManager is not running (org.freedesktop.NetworkManager has no owner); start it"
                .into();
        let p = summarize(&s);
        assert_eq!(p.class, "error");
        assert!(p.tooltip.contains("problem: NetworkManager is not running"));
        assert_eq!(line(&p), "isp-a (NetworkManager is not running)");
        assert!(p.tooltip.contains("has no owner); start it"));
    }

    #[test]
    fn the_tooltip_says_why_a_users_mail_waits_beyond_its_route() {
        let mut s = status(vec![via("bob", "relay-b")], vec![q("bob", 2, 0)]);
        s.waits = vec![UserWait {
            user: "bob".into(),
            refusals: vec![RefusalInfo {
                relay: "relay-b".into(),
                link: "isp-a".into(),
                reply: "554 5.7.1 relaying denied".into(),
                until: 4600,
            }],
            needs_login: vec!["relay-x".into()],
            last_error: "relay-b: cannot connect to relay-b.example:587".into(),
            last_error_at: 900,
            next_retry: 1600,
        }];
        let p = summarize(&s);
        let at = crate::output::clock_time;
        for want in [
            format!(
                "  relay-b refuses us on isp-a (554 5.7.1 relaying denied) until {}",
                at(4600)
            ),
            "  relay-x needs login (linkrelay login relay-x)".to_string(),
            format!(
                "  last error ({}): relay-b: cannot connect to relay-b.example:587",
                at(900)
            ),
            format!("  next retry {}", at(1600)),
        ] {
            assert!(p.tooltip.contains(&want), "{want:?} in {}", p.tooltip);
        }
        s.read_at = 5000;
        let later = summarize(&s);
        assert!(
            !later.tooltip.contains("refuses us"),
            "an ended refusal is not shown: {}",
            later.tooltip
        );
    }

    #[test]
    fn waybar_json_escapes_markup_and_repeats_class_as_alt() {
        let p = Panel {
            text: "a & b".into(),
            tooltip: "554 5.7.1 <x@y>: Relay access denied".into(),
            class: "held",
            reason: None,
        };
        let v: serde_json::Value = serde_json::from_str(&waybar(&p)).unwrap();
        assert_eq!(v["text"], "a &amp; b");
        assert_eq!(v["tooltip"], "554 5.7.1 &lt;x@y&gt;: Relay access denied");
        assert_eq!(v["class"], "held");
        assert_eq!(v["alt"], "held");
        assert!(!waybar(&p).contains('\n'));
    }
}
