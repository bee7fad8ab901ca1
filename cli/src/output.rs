//! Formatting of what the agent says: text for people, JSON for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use linkrelay_dbus::agent::{
    AgentProxy, FlushResult, MessageInfo, OverrideInfo, PruneResult, QueueCount, RouteInfo,
    SeenLink,
};
use serde::Serialize;
use serde_json::{Value, json};

/// Everything `linkrelay status` shows.
pub struct Status {
    pub(crate) source: String,
    pub(crate) source_problem: String,
    pub(crate) link: HashMap<String, String>,
    pub(crate) routes: Vec<RouteInfo>,
    pub(crate) ovr: OverrideInfo,
    pub(crate) queue: Vec<QueueCount>,
    pub(crate) config_path: String,
    pub(crate) config_error: String,
    /// What the running config asks for that is not in force, each with why.
    pub(crate) not_in_force: Vec<String>,
    pub(crate) version: String,
    /// On a link no rule matches: the relays that accepted there before, with when.
    pub(crate) accepted_here: Vec<(String, u64)>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    now()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The relays that accepted on `link` before, by the history: the entries of the same
/// connection (uuid), else of the same id; most recent first.
pub fn accepted_on(link: &HashMap<String, String>, history: &[SeenLink]) -> Vec<(String, u64)> {
    let get = |k: &str| link.get(k).map(String::as_str).unwrap_or("");
    let same = |s: &&SeenLink| {
        let f = |k: &str| s.facts.get(k).map(String::as_str).unwrap_or("");
        match get("uuid") {
            "" => !get("id").is_empty() && f("id") == get("id"),
            uuid => f("uuid") == uuid,
        }
    };
    let mut out: Vec<(String, u64)> = history
        .iter()
        .filter(same)
        .flat_map(|s| s.answers.iter())
        .filter(|a| a.accepted)
        .map(|a| (a.relay.clone(), a.at))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// " for 30m" style suffix for an override of `secs` (0 = until cleared).
pub fn for_text(secs: u64) -> String {
    if secs == 0 {
        " until cleared".into()
    } else {
        format!(
            " for {}",
            humantime::format_duration(Duration::from_secs(secs))
        )
    }
}

/// How long ago `t` was, to the minute.
fn until_back(t: u64) -> String {
    let secs = now().saturating_sub(t);
    let secs = if secs < 60 { secs } else { secs / 60 * 60 };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn until(t: u64) -> String {
    let left = t.saturating_sub(now());
    humantime::format_duration(Duration::from_secs(left)).to_string()
}

impl Status {
    /// Reads every property of the agent.
    pub async fn read(agent: &AgentProxy<'_>) -> zbus::Result<Status> {
        Ok(Status {
            source: agent.source().await?,
            source_problem: agent.source_problem().await?,
            link: agent.link().await?,
            routes: agent.routes().await?,
            ovr: agent.override_().await?,
            queue: agent.queue().await?,
            config_path: agent.config_path().await?,
            config_error: agent.config_error().await?,
            // An older agent has no such property: nothing to say.
            not_in_force: agent.config_not_in_force().await.unwrap_or_default(),
            version: agent.version().await?,
            accepted_here: Vec::new(),
        }
        .with_history(agent)
        .await)
    }

    /// On a link no rule matches, adds what the agent's history says accepted there before.
    /// An agent without `LinkHistory` (older) adds nothing.
    async fn with_history(mut self, agent: &AgentProxy<'_>) -> Status {
        let unmatched = !self.link.is_empty() && self.link.get("name").is_none_or(|n| n.is_empty());
        if unmatched && let Ok(history) = agent.link_history().await {
            self.accepted_here = accepted_on(&self.link, &history);
        }
        self
    }

    /// The JSON form (stable keys).
    pub fn to_json(&self) -> Value {
        let link = if self.link.is_empty() {
            Value::Null
        } else {
            json!(self.link)
        };
        let ovr = if self.ovr.kind.is_empty() {
            Value::Null
        } else {
            json!({"kind": self.ovr.kind, "name": self.ovr.name,
                   "expires": if self.ovr.expires == 0 { Value::Null } else { json!(self.ovr.expires) }})
        };
        let users: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let q = self.queue.iter().find(|q| q.user == r.user);
                json!({
                    "user": r.user,
                    "relays": r.relays,
                    "hold": if r.hold.is_empty() { Value::Null } else { json!(r.hold) },
                    "queued": q.map(|q| q.queued).unwrap_or(0),
                    "failed": q.map(|q| q.failed).unwrap_or(0),
                    "sent": q.map(|q| q.sent).unwrap_or(0),
                })
            })
            .collect();
        json!({
            "version": self.version,
            "source": self.source,
            "source_problem": if self.source_problem.is_empty() { Value::Null } else { json!(self.source_problem) },
            "link": link,
            "override": ovr,
            "users": users,
            "config_path": if self.config_path.is_empty() { Value::Null } else { json!(self.config_path) },
            "config_error": if self.config_error.is_empty() { Value::Null } else { json!(self.config_error) },
            "config_not_in_force": self.not_in_force,
            "accepted_here_before": self.accepted_here.iter().map(|(r, at)| json!({"relay": r, "at": at})).collect::<Vec<_>>(),
        })
    }

    /// The text form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |k: &str| self.link.get(k).map(String::as_str).unwrap_or("");
        if self.link.is_empty() {
            let _ = writeln!(out, "link:      none");
        } else {
            let name = if get("name").is_empty() {
                "(no [[link]] rule matches)".to_string()
            } else {
                get("name").to_string()
            };
            let mut details = vec![format!("{} {}", get("type"), get("id"))];
            if !get("interface").is_empty() {
                details.push(format!("on {}", get("interface")));
            }
            if !get("ssid").is_empty() {
                details.push(format!("ssid {}", get("ssid")));
            }
            if !get("gateway").is_empty() {
                details.push(format!("gateway {}", get("gateway")));
            }
            if !get("addresses").is_empty() {
                details.push(format!("address {}", get("addresses").replace(',', ", ")));
            }
            if get("metered") == "yes" {
                details.push("metered".into());
            }
            details.push(format!("connectivity {}", get("connectivity")));
            let _ = writeln!(out, "link:      {name} ({})", details.join(", "));
            if !self.accepted_here.is_empty() {
                let relays: Vec<String> = self
                    .accepted_here
                    .iter()
                    .map(|(r, at)| format!("{r} ({} ago)", until_back(*at)))
                    .collect();
                let _ = writeln!(
                    out,
                    "known:     accepted on this link before: {}; `linkrelay routes suggest` proposes a rule and routes",
                    relays.join(", ")
                );
            }
        }
        let _ = writeln!(out, "source:    {}", self.source);
        if !self.source_problem.is_empty() {
            let _ = writeln!(out, "problem:   {}", self.source_problem);
        }
        if self.ovr.kind.is_empty() {
            let _ = writeln!(out, "override:  none");
        } else {
            let left = if self.ovr.expires == 0 {
                "until cleared".to_string()
            } else {
                format!("for {} more", until(self.ovr.expires))
            };
            let _ = writeln!(
                out,
                "override:  {} {} ({left})",
                self.ovr.kind, self.ovr.name
            );
        }
        let cfg = if self.config_path.is_empty() {
            "embedded default (no relays; `linkrelay config init` writes a starter)".to_string()
        } else {
            self.config_path.clone()
        };
        let _ = writeln!(out, "config:    {cfg}");
        if !self.config_error.is_empty() {
            let _ = writeln!(out, "config error (the previous config is still running):");
            for line in self.config_error.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        for line in &self.not_in_force {
            let _ = writeln!(out, "not in force: {line}");
        }
        let _ = writeln!(out, "users:");
        for r in &self.routes {
            let route = if r.hold.is_empty() {
                format!("via {}", r.relays.join(" -> "))
            } else {
                format!("held: {}", r.hold)
            };
            let q = self.queue.iter().find(|q| q.user == r.user);
            let counts = q
                .map(|q| format!("queued {}, failed {}, sent {}", q.queued, q.failed, q.sent))
                .unwrap_or_default();
            let _ = writeln!(out, "  {:<12} {route}  [{counts}]", r.user);
        }
        out
    }
}

/// JSON of a flush reply.
pub fn flush_json(results: &[FlushResult]) -> Value {
    json!(
        results
            .iter()
            .map(|r| json!({"user": r.user, "sent": r.sent, "remaining": r.remaining}))
            .collect::<Vec<_>>()
    )
}

/// JSON of a prune's results.
pub fn prune_json(results: &[PruneResult]) -> Value {
    json!(
        results
            .iter()
            .map(
                |r| json!({"user": r.user, "removed": r.removed, "freed": r.freed, "kept": r.kept})
            )
            .collect::<Vec<_>>()
    )
}

/// One line per user of a prune's results.
pub fn prune_text(results: &[PruneResult]) -> String {
    results
        .iter()
        .map(|r| {
            format!(
                "{}: removed {} sent message{} ({} bytes), {} kept\n",
                r.user,
                r.removed,
                if r.removed == 1 { "" } else { "s" },
                r.freed,
                r.kept
            )
        })
        .collect()
}

/// JSON of a queue listing.
pub fn queue_json(list: &[MessageInfo]) -> Value {
    json!(list.iter().map(MessageJson::from).collect::<Vec<_>>())
}

/// JSON of one message of a queue listing, serialised straight from the message (a listing
/// of 100,000 messages spent a third of its time building `Value`s). Fields in alphabetical
/// order, as `serde_json::Value` writes them, so that the output is what it always was.
#[derive(Serialize)]
pub struct MessageJson<'a> {
    attempts: u32,
    folder: &'a str,
    from: &'a str,
    id: &'a str,
    last_error: Option<&'a str>,
    last_relay: Option<&'a str>,
    next_attempt: Option<u64>,
    queued_at: u64,
    recipients: Vec<RecipientJson<'a>>,
    size: u64,
    status: &'a str,
    user: &'a str,
}

/// JSON of one recipient of a message of a queue listing.
#[derive(Serialize)]
struct RecipientJson<'a> {
    addr: &'a str,
    reply: Option<&'a str>,
    state: &'a str,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl<'a> From<&'a MessageInfo> for MessageJson<'a> {
    fn from(m: &'a MessageInfo) -> Self {
        MessageJson {
            attempts: m.attempts,
            folder: &m.folder,
            from: &m.from,
            id: &m.id,
            last_error: non_empty(&m.last_error),
            last_relay: non_empty(&m.last_relay),
            next_attempt: (m.next_attempt != 0).then_some(m.next_attempt),
            queued_at: m.queued_at,
            recipients: m
                .recipients
                .iter()
                .map(|r| RecipientJson {
                    addr: &r.addr,
                    reply: non_empty(&r.reply),
                    state: &r.state,
                })
                .collect(),
            size: m.size,
            status: &m.status,
            user: &m.user,
        }
    }
}

/// What the text listing says when there is nothing to list.
pub const EMPTY_QUEUE: &str = "no queued or failed messages\n";

/// Text of a queue listing.
pub fn render_queue(list: &[MessageInfo]) -> String {
    if list.is_empty() {
        return EMPTY_QUEUE.into();
    }
    let mut out = String::new();
    for m in list {
        render_message(&mut out, m);
    }
    out
}

/// Appends the text of one message of a queue listing to `out`.
pub fn render_message(out: &mut String, m: &MessageInfo) {
    let age = humantime::format_duration(Duration::from_secs(now().saturating_sub(m.queued_at)));
    let _ = writeln!(
        out,
        "{}  {}  {} bytes  from {}  queued {age} ago  attempts {}",
        m.id,
        m.user,
        m.size,
        if m.from.is_empty() { "<>" } else { &m.from },
        m.attempts
    );
    let _ = writeln!(out, "    {}", m.status);
    for r in &m.recipients {
        if r.reply.is_empty() {
            let _ = writeln!(out, "    {:<8} {}", r.state, r.addr);
        } else {
            let _ = writeln!(out, "    {:<8} {}  ({})", r.state, r.addr, r.reply);
        }
    }
}

/// One line for `linkrelay watch`, or `None` for signals it does not show.
pub fn event_line(msg: &zbus::Message, as_json: bool) -> Option<String> {
    let header = msg.header();
    let member = header.member()?.to_string();
    let body = msg.body();
    let (event, text): (Value, String) = match member.as_str() {
        "RouteChanged" => {
            let (user, relays, hold): (String, Vec<String>, String) = body.deserialize().ok()?;
            let text = if hold.is_empty() {
                format!("route  {user}: via {}", relays.join(" -> "))
            } else {
                format!("route  {user}: held: {hold}")
            };
            (
                json!({"event": "route", "user": user, "relays": relays, "hold": if hold.is_empty() { Value::Null } else { json!(hold) }}),
                text,
            )
        }
        "MessageSent" => {
            let (user, id, relay, reply): (String, String, String, String) =
                body.deserialize().ok()?;
            let text = format!("sent   {user} {id} via {relay}: {reply}");
            (
                json!({"event": "sent", "user": user, "id": id, "relay": relay, "reply": reply}),
                text,
            )
        }
        "MessageDeferred" => {
            let (user, id, reason, next): (String, String, String, u64) =
                body.deserialize().ok()?;
            let text = format!("defer  {user} {id}: {reason} (next try in {})", until(next));
            (
                json!({"event": "deferred", "user": user, "id": id, "reason": reason, "next_attempt": next}),
                text,
            )
        }
        "MessageFailed" => {
            let (user, id, reason): (String, String, String) = body.deserialize().ok()?;
            let text = format!(
                "FAILED {user} {id}: {reason} (see `linkrelay queue`; `linkrelay retry {id}` or `linkrelay drop {id}`)"
            );
            (
                json!({"event": "failed", "user": user, "id": id, "reason": reason}),
                text,
            )
        }
        "RelayRefused" => {
            let (user, relay, link, reply): (String, String, String, String) =
                body.deserialize().ok()?;
            let text =
                format!("refuse {user}: {relay} refuses us on link {link}: {reply} (mail kept)");
            (
                json!({"event": "relay_refused", "user": user, "relay": relay, "link": link, "reply": reply}),
                text,
            )
        }
        "FlushFinished" => {
            let (user, sent, remaining): (String, u32, u32) = body.deserialize().ok()?;
            let text = format!("flush  {user}: sent {sent}, {remaining} queued");
            (
                json!({"event": "flushed", "user": user, "sent": sent, "remaining": remaining}),
                text,
            )
        }
        "PropertiesChanged" => {
            let (_iface, changed, _inv): (
                String,
                HashMap<String, zbus::OwnedVariant>,
                Vec<String>,
            ) = body.deserialize().ok()?;
            let link = changed.get("Link")?;
            let map: HashMap<String, String> = link.try_clone().ok()?.try_into().ok()?;
            let text = if map.is_empty() {
                "link   none".to_string()
            } else {
                format!(
                    "link   {} ({} {})",
                    map.get("name")
                        .filter(|n| !n.is_empty())
                        .map(String::as_str)
                        .unwrap_or("(no rule)"),
                    map.get("type").map(String::as_str).unwrap_or(""),
                    map.get("id").map(String::as_str).unwrap_or("")
                )
            };
            (
                json!({"event": "link", "link": if map.is_empty() { Value::Null } else { json!(map) }}),
                text,
            )
        }
        _ => return None,
    };
    Some(if as_json { event.to_string() } else { text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkrelay_dbus::agent::RecipientInfo;

    /// The JSON of a message as `linkrelay queue --json` wrote it before `MessageJson`.
    fn as_value_did(m: &MessageInfo) -> Value {
        json!({
            "id": m.id, "user": m.user, "folder": m.folder, "from": m.from,
            "recipients": m.recipients.iter().map(|r| json!({
                "addr": r.addr, "state": r.state,
                "reply": if r.reply.is_empty() { Value::Null } else { json!(r.reply) }
            })).collect::<Vec<_>>(),
            "size": m.size, "queued_at": m.queued_at, "attempts": m.attempts,
            "next_attempt": if m.next_attempt == 0 { Value::Null } else { json!(m.next_attempt) },
            "last_relay": if m.last_relay.is_empty() { Value::Null } else { json!(m.last_relay) },
            "last_error": if m.last_error.is_empty() { Value::Null } else { json!(m.last_error) },
            "status": m.status,
        })
    }

    #[test]
    fn queue_json_is_byte_for_byte_what_it_was() {
        let full = MessageInfo {
            id: "1796000000.1.2.abcd".into(),
            user: "alice".into(),
            folder: "queue".into(),
            from: "alice@example.org".into(),
            recipients: vec![
                RecipientInfo {
                    addr: "bob@example.net".into(),
                    state: "sent".into(),
                    reply: "250 2.0.0 \"ok\" queued".into(),
                },
                RecipientInfo {
                    addr: "carol@example.net".into(),
                    state: "pending".into(),
                    reply: String::new(),
                },
            ],
            size: 4096,
            queued_at: 1_796_000_000,
            attempts: 3,
            next_attempt: 1_796_000_600,
            last_relay: "isp-a".into(),
            last_error: "isp-a: 451 4.7.1 try again".into(),
            status: "deferred, next try in 10m: isp-a: 451".into(),
        };
        let bare = MessageInfo {
            recipients: Vec::new(),
            next_attempt: 0,
            last_relay: String::new(),
            last_error: String::new(),
            from: String::new(),
            ..full.clone()
        };
        for m in [&full, &bare] {
            assert_eq!(
                serde_json::to_string_pretty(&MessageJson::from(m)).unwrap(),
                serde_json::to_string_pretty(&as_value_did(m)).unwrap()
            );
        }
    }
}
