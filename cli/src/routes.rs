//! `linkrelay routes suggest` and `linkrelay routes probe`: routes learnt per link.
//!
//! The agent remembers, per link, each relay's last answer (accepted or refused relaying for
//! us), from real flushes and from relay tests (`LinkHistory`). [`suggest`] turns that into
//! `[[link]]` rules for links no rule matches yet and routes for each user: a pure function of
//! the config and the history. `probe` asks the agent to test every configured relay from the
//! link that is up, which fills the history for this link without sending anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use linkrelay_config::{Config, LinkFacts, RelayName, User};
use linkrelay_dbus::agent::{RelayTest, SeenLink};
use serde_json::{Value, json};

use crate::edit;

/// A `[[link]]` rule proposed for a link no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    /// Its name.
    pub name: String,
    /// The `match` field (`id`, `interface` or `domain`).
    pub field: &'static str,
    /// The value it must have.
    pub value: String,
}

/// What was learnt about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// How the link showed itself (NetworkManager's id, else the interface).
    pub id: String,
    /// The rule that matches it now, or the one proposed for it.
    pub rule: String,
    /// Whether that rule is proposed (not in the config yet).
    pub new_rule: Option<NewRule>,
    /// Relays of the config that accepted there, with when (unix seconds), in file order.
    pub accepted: Vec<(String, u64)>,
    /// Relays of the config that refused there: name, when, the reply.
    pub refused: Vec<(String, u64, String)>,
}

/// A route to add: `relays` appended to user `user`'s route on link rule `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The user.
    pub user: String,
    /// The link rule.
    pub link: String,
    /// The relays to add, in order.
    pub relays: Vec<String>,
}

/// Everything `routes suggest` proposes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Suggestion {
    /// Per link seen, in the order of the history.
    pub links: Vec<LinkReport>,
    /// The routes to add.
    pub changes: Vec<RouteChange>,
}

/// The facts a rule matches on, back from the history's map.
fn facts(map: &BTreeMap<String, String>) -> LinkFacts {
    let get = |k: &str| map.get(k).cloned().unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        get(k)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let opt = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
    LinkFacts {
        id: get("id"),
        uuid: get("uuid"),
        conn_type: get("type"),
        interface: get("interface"),
        ssid: opt("ssid"),
        gateway: opt("gateway"),
        domains: list("domains"),
        addresses: list("addresses")
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        metered: false,
    }
}

/// The rule to write for a link no rule matches: NetworkManager's connection id when there is
/// one, else the DHCP domain, else the interface (all the netlink source knows).
pub fn rule_for(map: &BTreeMap<String, String>, taken: &[String]) -> Option<NewRule> {
    let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
    let nm = get("uuid").is_some();
    let (field, value) = match (nm, get("id"), get("domains"), get("interface")) {
        (true, Some(id), _, _) => ("id", id),
        (_, _, Some(domains), _) => (
            "domain",
            domains.split(',').next().unwrap_or_default().to_string(),
        ),
        (_, _, _, Some(interface)) => ("interface", interface),
        (_, Some(id), _, _) => ("id", id),
        _ => return None,
    };
    Some(NewRule {
        name: edit::fresh_name(&value, "link", taken),
        field,
        value,
    })
}

/// May `user` be offered `relay`? A relay that logs in uses someone's account: it is offered
/// to the users who already send through it, or to everyone while nobody does. A relay that
/// takes mail by the network it is reached from is offered to everyone.
fn offered(config: &Config, user: &User, relay: &RelayName) -> bool {
    let Some(r) = config.relay(relay) else {
        return false;
    };
    if r.auth.is_none() {
        return true;
    }
    let owners: Vec<&User> = config
        .users
        .iter()
        .filter(|u| u.all_relays().any(|x| x == relay))
        .collect();
    owners.is_empty() || owners.iter().any(|u| u.name == user.name)
}

/// What the history says for each link, and the rules and routes it proposes. Pure.
pub fn suggest(config: &Config, history: &[SeenLink]) -> Suggestion {
    let mut out = Suggestion::default();
    let mut taken: Vec<String> = config.links.iter().map(|l| l.name.to_string()).collect();
    let mut proposed: Vec<NewRule> = Vec::new();
    // Rule -> relay -> its latest answer on any link of that rule.
    let mut by_rule: BTreeMap<String, BTreeMap<String, (bool, u64)>> = BTreeMap::new();
    for seen in history {
        let map: BTreeMap<String, String> = seen.facts.clone().into_iter().collect();
        let f = facts(&map);
        let (rule, new_rule) = match config.match_link(&f) {
            Some(rule) => (rule.name.to_string(), None),
            None => {
                let Some(new) = rule_for(&map, &taken) else {
                    continue;
                };
                match proposed
                    .iter()
                    .find(|p| p.field == new.field && p.value == new.value)
                {
                    Some(same) => (same.name.clone(), None),
                    None => {
                        taken.push(new.name.clone());
                        proposed.push(new.clone());
                        (new.name.clone(), Some(new))
                    }
                }
            }
        };
        let known = |relay: &str| config.relay(relay).is_some();
        let mut report = LinkReport {
            id: map.get("id").cloned().unwrap_or_else(|| seen.key.clone()),
            rule: rule.clone(),
            new_rule,
            accepted: Vec::new(),
            refused: Vec::new(),
        };
        for relay in config.relays.iter().map(|r| r.name.as_str()) {
            let Some(a) = seen.answers.iter().find(|a| a.relay == relay) else {
                continue;
            };
            if a.accepted {
                report.accepted.push((a.relay.clone(), a.at));
            } else {
                report
                    .refused
                    .push((a.relay.clone(), a.at, a.reply.clone()));
            }
            let latest = by_rule.entry(rule.clone()).or_default();
            if latest.get(&a.relay).is_none_or(|(_, at)| *at <= a.at) && known(&a.relay) {
                latest.insert(a.relay.clone(), (a.accepted, a.at));
            }
        }
        out.links.push(report);
    }
    for (rule, answers) in &by_rule {
        let link = rule.as_str();
        for user in &config.users {
            let has = user.relays_for(link).unwrap_or(&[]);
            let relays: Vec<String> = config
                .relays
                .iter()
                .map(|r| &r.name)
                .filter(|r| answers.get(r.as_str()).is_some_and(|(ok, _)| *ok))
                .filter(|r| offered(config, user, r) && !has.contains(r))
                .map(|r| r.to_string())
                .collect();
            if !relays.is_empty() {
                out.changes.push(RouteChange {
                    user: user.name.to_string(),
                    link: rule.clone(),
                    relays,
                });
            }
        }
    }
    out
}

/// `s` as "5m ago".
fn ago(at: u64, now: u64) -> String {
    let secs = now.saturating_sub(at);
    let rounded = if secs < 60 { secs } else { secs / 60 * 60 };
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(rounded))
    )
}

/// The text report: per link what accepted and what refused, then what would change.
pub fn render(s: &Suggestion, now: u64) -> String {
    let mut out = String::new();
    if s.links.is_empty() {
        let _ = writeln!(
            out,
            "No relay has answered on any link yet: send mail, or run `linkrelay routes probe` on each link."
        );
        return out;
    }
    for l in &s.links {
        let rule = match &l.new_rule {
            Some(n) => format!(
                "no rule yet; proposed: {} (match {} = {:?})",
                n.name, n.field, n.value
            ),
            None => format!("rule {}", l.rule),
        };
        let _ = writeln!(out, "link {} ({rule})", l.id);
        for (relay, at) in &l.accepted {
            let _ = writeln!(out, "  accepted  {relay} ({})", ago(*at, now));
        }
        for (relay, at, reply) in &l.refused {
            let _ = writeln!(out, "  refused   {relay} ({}): {reply}", ago(*at, now));
        }
    }
    if s.changes.is_empty() && s.links.iter().all(|l| l.new_rule.is_none()) {
        let _ = writeln!(
            out,
            "The config already routes through every relay that accepted."
        );
    }
    out
}

/// The JSON form.
pub fn to_json(s: &Suggestion) -> Value {
    json!({
        "links": s.links.iter().map(|l| json!({
            "id": l.id,
            "rule": l.rule,
            "new_rule": l.new_rule.as_ref().map(|n| json!({"name": n.name, "match": {n.field: n.value}})),
            "accepted": l.accepted.iter().map(|(r, at)| json!({"relay": r, "at": at})).collect::<Vec<_>>(),
            "refused": l.refused.iter().map(|(r, at, reply)| json!({"relay": r, "at": at, "reply": reply})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "changes": s.changes.iter().map(|c| json!({"user": c.user, "link": c.link, "relays": c.relays})).collect::<Vec<_>>(),
    })
}

/// The config text with the suggestion applied (new rules appended, routes added).
pub fn apply(text: &str, path: &Path, s: &Suggestion) -> anyhow::Result<String> {
    let mut doc = edit::document(text, path)?;
    for l in &s.links {
        if let Some(n) = &l.new_rule {
            edit::add_link(
                &mut doc,
                &n.name,
                &[(n.field, n.value.as_str())],
                &format!(
                    "added by `linkrelay routes suggest`: the link {} seen by linkrelayd",
                    l.id
                ),
            )?;
        }
    }
    for c in &s.changes {
        edit::add_route(&mut doc, &c.user, &c.link, &c.relays)?;
    }
    Ok(doc.to_string())
}

/// What `routes probe` prints for one relay.
pub fn probe_line(t: &RelayTest) -> String {
    let answer = match t.may_relay.as_str() {
        "yes" => "accepted",
        "no" => "REFUSED",
        _ => "unknown",
    };
    format!("{:<16} {answer:<9} {}", t.relay, t.verdict)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use linkrelay_dbus::agent::RelayAnswer;

    use super::*;

    const CONFIG: &str = r#"
[[link]]
name = "isp-a"
match = { id = "ISP-A" }

[[relay]]
name = "relay-a"
host = "smtp.isp-a.example"
tls = "starttls"

[[relay]]
name = "relay-b"
host = "smtp.isp-b.example"
tls = "starttls"
username = "bob"
password_command = "pass smtp/b"

[[user]]
name = "me"
from = ["*"]
routes = {}
"#;

    fn seen(id: &str, uuid: &str, answers: &[(&str, bool, u64)]) -> SeenLink {
        let mut facts = HashMap::new();
        facts.insert("id".to_string(), id.to_string());
        if !uuid.is_empty() {
            facts.insert("uuid".to_string(), uuid.to_string());
        }
        SeenLink {
            key: if uuid.is_empty() { id } else { uuid }.to_string(),
            facts,
            answers: answers
                .iter()
                .map(|(r, ok, at)| RelayAnswer {
                    relay: r.to_string(),
                    accepted: *ok,
                    at: *at,
                    reply: if *ok {
                        String::new()
                    } else {
                        "554 5.7.1 Relay access denied".into()
                    },
                })
                .collect(),
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("c.toml")).unwrap()
    }

    #[test]
    fn on_link_a_relay_a_accepted_and_relay_b_refused_gives_isp_a_relay_a() {
        let c = config(CONFIG);
        let s = suggest(
            &c,
            &[seen(
                "ISP-A",
                "u-a",
                &[("relay-a", true, 10), ("relay-b", false, 11)],
            )],
        );
        assert_eq!(s.links[0].rule, "isp-a");
        assert_eq!(s.links[0].new_rule, None);
        assert_eq!(s.links[0].refused[0].0, "relay-b");
        assert_eq!(
            s.changes,
            [RouteChange {
                user: "me".into(),
                link: "isp-a".into(),
                relays: vec!["relay-a".into()]
            }]
        );
        let text = apply(CONFIG, Path::new("c.toml"), &s).unwrap();
        assert!(
            text.contains(r#"routes = { isp-a = ["relay-a"] }"#),
            "{text}"
        );
    }

    #[test]
    fn a_link_no_rule_matches_gets_a_rule_by_its_connection_id() {
        let c = config(CONFIG);
        let s = suggest(
            &c,
            &[
                seen("ISP-A", "u-a", &[("relay-a", true, 10)]),
                seen(
                    "ISP-B",
                    "u-b",
                    &[("relay-a", false, 20), ("relay-b", true, 21)],
                ),
            ],
        );
        let new = s.links[1].new_rule.clone().unwrap();
        assert_eq!(
            (new.name.as_str(), new.field, new.value.as_str()),
            ("isp-b", "id", "ISP-B")
        );
        assert_eq!(s.changes.len(), 2);
        assert_eq!(s.changes[1].link, "isp-b");
        assert_eq!(
            s.changes[1].relays,
            ["relay-b"],
            "nobody sends through relay-b yet: offered"
        );
        let text = apply(CONFIG, Path::new("c.toml"), &s).unwrap();
        let after = config(&text);
        assert_eq!(after.links[1].name.as_str(), "isp-b");
        let me = &after.users[0];
        assert_eq!(
            me.relays_for("isp-a").unwrap(),
            [RelayName::from("relay-a")]
        );
        assert_eq!(
            me.relays_for("isp-b").unwrap(),
            [RelayName::from("relay-b")]
        );
        // Applied once, there is nothing left to propose.
        let again = suggest(
            &after,
            &[
                seen("ISP-A", "u-a", &[("relay-a", true, 10)]),
                seen(
                    "ISP-B",
                    "u-b",
                    &[("relay-a", false, 20), ("relay-b", true, 21)],
                ),
            ],
        );
        assert!(again.changes.is_empty(), "{again:?}");
        assert!(again.links.iter().all(|l| l.new_rule.is_none()));
    }

    #[test]
    fn a_relay_with_someones_login_is_offered_only_to_its_users() {
        let c = config(
            r#"
[[link]]
name = "isp-b"
match = { id = "ISP-B" }
[[relay]]
name = "relay-b"
host = "smtp.isp-b.example"
tls = "starttls"
username = "bob"
password_command = "pass smtp/b"
[[user]]
name = "alice"
from = ["alice@isp-a.example"]
routes = {}
[[user]]
name = "bob"
from = ["bob@isp-b.example"]
routes = { "*" = ["relay-b"] }
"#,
        );
        let s = suggest(&c, &[seen("ISP-B", "u-b", &[("relay-b", true, 5)])]);
        assert!(
            s.changes.is_empty(),
            "bob has it through \"*\", alice may not: {s:?}"
        );
    }

    #[test]
    fn a_later_refusal_on_the_same_rule_outweighs_an_earlier_acceptance() {
        let c = config(CONFIG);
        let s = suggest(
            &c,
            &[
                seen("ISP-A", "u-a1", &[("relay-a", true, 10)]),
                seen("ISP-A", "u-a2", &[("relay-a", false, 20)]),
            ],
        );
        assert!(s.changes.is_empty(), "{s:?}");
    }

    #[test]
    fn relays_no_longer_in_the_config_are_left_out() {
        let c = config(CONFIG);
        let s = suggest(&c, &[seen("ISP-A", "u-a", &[("gone", true, 10)])]);
        assert!(s.links[0].accepted.is_empty());
        assert!(s.changes.is_empty());
    }
}
