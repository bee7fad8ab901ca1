//! Formatting of what the agent says: text for people, JSON for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use linkrelay_dbus::agent::{
    AgentProxy, FlushResult, MessageInfo, OverrideInfo, PruneResult, QueueCount, RouteInfo,
    SeenLink, UserWait,
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
    /// Why each user's mail waits beyond its route (empty from an agent without `Waits`).
    pub(crate) waits: Vec<UserWait>,
    /// Unix seconds when it was read (refusals that ended before are not shown).
    pub(crate) read_at: u64,
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

/// A unix time as the local clock shows it: "14:05" today, "Mon 14:05" within a week, else
/// "2026-12-24 14:05".
pub fn clock_time(t: u64) -> String {
    use chrono::{Local, TimeZone};
    let (Some(at), now) = (
        i64::try_from(t)
            .ok()
            .and_then(|t| Local.timestamp_opt(t, 0).single()),
        Local::now(),
    ) else {
        return format!("unix time {t}");
    };
    let days = (at.date_naive() - now.date_naive()).num_days();
    if days == 0 {
        at.format("%H:%M").to_string()
    } else if (0..7).contains(&days) {
        at.format("%a %H:%M").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// Why one user's mail waits beyond its route, one sentence each: the refusals remembered
/// (not those that ended by `t`), the relays that need a login, the last error and the next
/// retry. `at` writes a unix time for people ([`clock_time`]). Pure.
pub fn wait_lines(w: &UserWait, t: u64, at: &dyn Fn(u64) -> String) -> Vec<String> {
    let mut out: Vec<String> = w
        .refusals
        .iter()
        .filter(|r| r.until > t)
        .map(|r| {
            format!(
                "{} refuses us on {} ({}) until {}",
                r.relay,
                r.link,
                r.reply,
                at(r.until)
            )
        })
        .collect();
    for relay in &w.needs_login {
        out.push(format!("{relay} needs login (linkrelay login {relay})"));
    }
    if !w.last_error.is_empty() {
        out.push(format!(
            "last error ({}): {}",
            at(w.last_error_at),
            w.last_error
        ));
    }
    if w.next_retry > t {
        out.push(format!("next retry {}", at(w.next_retry)));
    } else if w.next_retry != 0 {
        out.push("next retry now".into());
    }
    out
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
            // An older agent has no `Waits`: its status shows the routes alone.
            waits: agent.waits().await.unwrap_or_default(),
            read_at: now(),
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

    /// What `Waits` says of `user`, if anything.
    pub(crate) fn wait_of(&self, user: &str) -> Option<&UserWait> {
        self.waits.iter().find(|w| w.user == user)
    }

    /// The JSON of why `user`'s mail waits beyond its route: refusals still in force,
    /// relays that need a login, the last error and the next retry, and the same in words.
    fn waits_json(&self, user: &str) -> Value {
        let t = self.read_at;
        let Some(w) = self.wait_of(user) else {
            return json!({"refusals": [], "needs_login": [], "last_error": null,
                          "last_error_at": null, "next_retry": null, "reasons": []});
        };
        let refusals: Vec<Value> = w
            .refusals
            .iter()
            .filter(|r| r.until > t)
            .map(|r| json!({"relay": r.relay, "link": r.link, "reply": r.reply, "until": r.until}))
            .collect();
        let some = |v: u64| if v == 0 { Value::Null } else { json!(v) };
        json!({
            "refusals": refusals,
            "needs_login": w.needs_login,
            "last_error": if w.last_error.is_empty() { Value::Null } else { json!(w.last_error) },
            "last_error_at": some(w.last_error_at),
            "next_retry": some(w.next_retry),
            "reasons": wait_lines(w, t, &clock_time),
        })
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
                let mut user = json!({
                    "user": r.user,
                    "relays": r.relays,
                    "hold": if r.hold.is_empty() { Value::Null } else { json!(r.hold) },
                    "queued": q.map(|q| q.queued).unwrap_or(0),
                    "failed": q.map(|q| q.failed).unwrap_or(0),
                    "sent": q.map(|q| q.sent).unwrap_or(0),
                });
                if let (Some(u), Value::Object(w)) =
                    (user.as_object_mut(), self.waits_json(&r.user))
                {
                    u.extend(w);
                }
                user
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
            if let Some(w) = self.wait_of(&r.user) {
                for line in wait_lines(w, self.read_at, &clock_time) {
                    let _ = writeln!(out, "  {:<12} {line}", "");
                }
            }
        }
        out
    }
}

/// One user's flush, with the route it ended under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// The agent's reply for the user.
    pub result: FlushResult,
    /// Why the user's route holds mail; "" when it sends.
    pub hold: String,
}

impl Flushed {
    /// Mail stays queued because the route holds it.
    pub fn held_back(&self) -> bool {
        !self.hold.is_empty() && self.result.remaining > 0
    }
}

/// Each user's flush result with the hold reason of its route in `routes`.
pub fn flushed(results: &[FlushResult], routes: &[RouteInfo]) -> Vec<Flushed> {
    results
        .iter()
        .map(|r| Flushed {
            result: r.clone(),
            hold: routes
                .iter()
                .find(|route| route.user == r.user)
                .map(|route| route.hold.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// JSON of a flush reply: per user, what was sent and what remains, and `hold`, why its
/// route holds the mail, when it does (absent when the route sends).
pub fn flush_json(flushed: &[Flushed]) -> Value {
    json!(
        flushed
            .iter()
            .map(|f| {
                let mut v = json!({"user": f.result.user, "sent": f.result.sent,
                                   "remaining": f.result.remaining});
                if !f.hold.is_empty() {
                    v["hold"] = json!(f.hold);
                }
                v
            })
            .collect::<Vec<_>>()
    )
}

/// Text of a flush reply, a line per user; `waited`: the flush is over (`--wait`).
pub fn flush_text(flushed: &[Flushed], waited: bool) -> String {
    let mut out = String::new();
    for f in flushed {
        let r = &f.result;
        let _ = match (waited, f.held_back()) {
            (true, true) => writeln!(
                out,
                "{}: held: {}; sent {}, {} still queued",
                r.user, f.hold, r.sent, r.remaining
            ),
            (true, false) => writeln!(
                out,
                "{}: sent {}, {} still queued",
                r.user, r.sent, r.remaining
            ),
            (false, true) => writeln!(out, "{}: held: {} ({} queued)", r.user, f.hold, r.remaining),
            (false, false) => writeln!(out, "{}: flushing ({} queued)", r.user, r.remaining),
        };
    }
    out
}

/// What `linkrelay retry ID` says once the message is due: that it is held, and why, when
/// the route of its `user` holds mail; else that it goes now.
pub fn retry_text(id: &str, user: Option<&str>, routes: &[RouteInfo]) -> String {
    let hold = user.and_then(|u| routes.iter().find(|r| r.user == u && !r.hold.is_empty()));
    match hold {
        Some(r) => format!(
            "{id}: held: {}; it is due now and goes as soon as {}'s route allows",
            r.hold, r.user
        ),
        None => format!("{id}: will be retried now"),
    }
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
    use linkrelay_dbus::agent::{RecipientInfo, RefusalInfo};

    fn route(user: &str, hold: &str) -> RouteInfo {
        RouteInfo {
            user: user.into(),
            relays: if hold.is_empty() {
                vec!["relay-a".into()]
            } else {
                vec![]
            },
            hold: hold.into(),
        }
    }

    #[test]
    fn a_flush_that_leaves_mail_held_says_why() {
        let results = [
            FlushResult {
                user: "alice".into(),
                sent: 0,
                remaining: 2,
            },
            FlushResult {
                user: "bob".into(),
                sent: 1,
                remaining: 0,
            },
        ];
        let routes = [route("alice", "no link"), route("bob", "")];
        let f = flushed(&results, &routes);
        assert!(f[0].held_back());
        assert!(!f[1].held_back());
        assert_eq!(
            flush_text(&f, true),
            "alice: held: no link; sent 0, 2 still queued\nbob: sent 1, 0 still queued\n"
        );
        assert_eq!(flush_json(&f)[0]["hold"], "no link");
        assert_eq!(
            flush_json(&f)[1],
            json!({"user": "bob", "sent": 1, "remaining": 0})
        );
        let empty = flushed(
            &[FlushResult {
                user: "alice".into(),
                sent: 0,
                remaining: 0,
            }],
            &routes,
        );
        assert!(
            !empty[0].held_back(),
            "nothing is held back when nothing is queued"
        );
    }

    #[test]
    fn a_retry_of_held_mail_says_it_is_held_and_why() {
        let routes = [route("alice", "no link"), route("bob", "")];
        assert_eq!(
            retry_text("1.2.3.abcd", Some("alice"), &routes),
            "1.2.3.abcd: held: no link; it is due now and goes as soon as alice's route allows"
        );
        assert_eq!(
            retry_text("1.2.3.abcd", Some("bob"), &routes),
            "1.2.3.abcd: will be retried now"
        );
        assert_eq!(
            retry_text("1.2.3.abcd", None, &routes),
            "1.2.3.abcd: will be retried now"
        );
    }

    #[test]
    fn wait_lines_name_refusals_logins_the_last_error_and_the_next_retry() {
        let w = UserWait {
            user: "alice".into(),
            refusals: vec![
                RefusalInfo {
                    relay: "relay-b".into(),
                    link: "isp-a".into(),
                    reply: "554 5.7.1 relaying denied".into(),
                    until: 2000,
                },
                RefusalInfo {
                    relay: "relay-c".into(),
                    link: "isp-a".into(),
                    reply: "554 over".into(),
                    until: 1000,
                },
            ],
            needs_login: vec!["relay-x".into()],
            last_error: "relay-a: cannot connect".into(),
            last_error_at: 900,
            next_retry: 1300,
        };
        let at = |t: u64| format!("@{t}");
        assert_eq!(
            wait_lines(&w, 1000, &at),
            vec![
                "relay-b refuses us on isp-a (554 5.7.1 relaying denied) until @2000",
                "relay-x needs login (linkrelay login relay-x)",
                "last error (@900): relay-a: cannot connect",
                "next retry @1300",
            ]
        );
        let idle = UserWait {
            refusals: vec![],
            needs_login: vec![],
            last_error: String::new(),
            last_error_at: 0,
            next_retry: 0,
            ..w
        };
        assert!(wait_lines(&idle, 1000, &at).is_empty());
    }

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
