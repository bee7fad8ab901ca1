//! The router: a pure function from (config, link state, override) to each user's route.

use std::collections::BTreeMap;

use linkrelay_config::{Config, LinkFacts, LinkName, MeteredPolicy, RelayName, UserName};
use linkrelay_dbus::nm::Connectivity;

use crate::source::link::LinkState;

/// A manual override of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Override {
    /// Act as if this link rule matched (whatever link is up).
    Link(LinkName),
    /// Send every user's mail through this relay (whatever link is up).
    Relay(RelayName),
}

/// What to do with one user's mail right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Try these relays in order; messages larger than `max_size` wait (metered links).
    Send {
        /// Relay names, in the order to try them.
        relays: Vec<RelayName>,
        /// Size limit from a metered "small" policy.
        max_size: Option<u64>,
    },
    /// Send nothing; the reason is shown to the user.
    Hold {
        /// Why, in words.
        reason: String,
    },
}

impl Route {
    fn hold(reason: impl Into<String>) -> Self {
        Route::Hold {
            reason: reason.into(),
        }
    }
}

/// The router's decision for every user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The link rule in effect (matched or overridden), if any.
    pub link_name: Option<LinkName>,
    /// Route per user name.
    pub routes: BTreeMap<UserName, Route>,
}

/// Decides every user's route. Pure: same inputs, same routes.
pub fn route(config: &Config, state: &LinkState, ovr: Option<&Override>) -> Routing {
    // A relay override bypasses link matching entirely: the user asked for it.
    if let Some(Override::Relay(relay)) = ovr {
        let link_name = state
            .link
            .as_ref()
            .and_then(|l| config.match_link(&l.facts))
            .map(|r| r.name.clone());
        let routes = config
            .users
            .iter()
            .map(|u| {
                let r = Route::Send {
                    relays: vec![relay.clone()],
                    max_size: None,
                };
                (u.name.clone(), r)
            })
            .collect();
        return Routing { link_name, routes };
    }

    let held = |reason: String| Routing {
        link_name: None,
        routes: config
            .users
            .iter()
            .map(|u| (u.name.clone(), Route::hold(reason.clone())))
            .collect(),
    };

    let rule = match ovr {
        Some(Override::Link(name)) => match config.link(name) {
            Some(rule) => rule,
            None => return held(format!("override names unknown link {name}")),
        },
        _ => {
            let Some(link) = &state.link else {
                // The source's problem is long and shown once in status; keep the reason short.
                let why = match state.problem {
                    Some(_) => "no link (the link source has a problem; see `linkrelay status`)",
                    None => "no link",
                };
                return held(why.to_string());
            };
            let rule = config.match_link(&link.facts);
            let name = link_label(rule.map(|r| r.name.as_str()), &link.facts);
            let why = match link.connectivity {
                Connectivity::Portal => Some(format!("captive portal on {name}")),
                Connectivity::Limited => Some(format!("limited connectivity on {name}")),
                Connectivity::None => Some(format!("connectivity none on {name}")),
                Connectivity::Full | Connectivity::Unknown => None,
            };
            match (rule, why) {
                (Some(rule), None) => rule,
                // The link a rule matches is up, but cannot reach the Internet: say so, and
                // name the rule (it is the link in effect, only held).
                (Some(rule), Some(why)) => {
                    return Routing {
                        link_name: Some(rule.name.clone()),
                        ..held(why)
                    };
                }
                (None, Some(why)) => return held(why),
                (None, None) => {
                    return held(format!(
                        "no relay for link {} (no [[link]] rule matches it)",
                        link.facts.id
                    ));
                }
            }
        }
    };

    // With a link override the link's metered flag is not ours to judge: the user chose.
    let metered = ovr.is_none() && state.link.as_ref().is_some_and(|l| l.facts.metered);
    let no_facts = LinkFacts::default();
    let facts = state.link.as_ref().map_or(&no_facts, |l| &l.facts);
    let routes = config
        .users
        .iter()
        .map(|user| {
            let route = match user.relays_for(&rule.name) {
                None | Some([]) => Route::hold(format!(
                    "no relay for link {} for user {}",
                    rule.name, user.name
                )),
                Some(relays) => match (&rule.metered, metered) {
                    (MeteredPolicy::Hold, true) => Route::hold(format!(
                        "metered link {}, hold",
                        link_label(Some(&rule.name), facts)
                    )),
                    (MeteredPolicy::Small { max_size }, true) => Route::Send {
                        relays: relays.to_vec(),
                        max_size: Some(*max_size),
                    },
                    _ => Route::Send {
                        relays: relays.to_vec(),
                        max_size: None,
                    },
                },
            };
            (user.name.clone(), route)
        })
        .collect();
    Routing {
        link_name: Some(rule.name.clone()),
        routes,
    }
}

/// Whether `routing` sends some user's mail (rather than holding everyone's). Pure.
pub fn sends_any(routing: &Routing) -> bool {
    routing
        .routes
        .values()
        .any(|r| matches!(r, Route::Send { .. }))
}

/// How every hold reason names a link: the `[[link]]` rule's name, then NetworkManager's
/// connection id and the interface in parentheses (`isp-b (ISP-B, veth-b)`); a link no rule
/// matches is `link ID (interface)`. The interface is left out where it is the id (netlink) or
/// unknown. Pure.
pub fn link_label(rule: Option<&str>, facts: &LinkFacts) -> String {
    let mut inside: Vec<&str> = Vec::new();
    if rule.is_some() && !facts.id.is_empty() {
        inside.push(&facts.id);
    }
    if !facts.interface.is_empty() && facts.interface != facts.id {
        inside.push(&facts.interface);
    }
    let head = match rule {
        Some(rule) => rule.to_string(),
        None => format!("link {}", facts.id),
    };
    if inside.is_empty() {
        head
    } else {
        format!("{head} ({})", inside.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::link::{Link, SourceName};
    use std::path::Path;

    const CONFIG: &str = r#"
[[link]]
name = "isp-a"
match = { id = "ISP-A" }

[[link]]
name = "isp-b"
metered = "hold"
match = { id = "ISP-B" }

[[link]]
name = "cafe"
metered = "small"
metered_max_size = 1000
match = { ssid = "Cafe*" }

[[relay]]
name = "relay-a"
host = "smtp.a.example"
tls = "starttls"

[[relay]]
name = "relay-b"
host = "smtp.b.example"
tls = "starttls"

[[user]]
name = "alice"
from = ["alice@a.example"]
routes = { isp-a = ["relay-a"], "*" = ["relay-b"] }

[[user]]
name = "bob"
from = ["*"]
default = true
routes = { isp-b = ["relay-b"], isp-a = ["relay-a", "relay-b"] }
"#;

    fn config() -> Config {
        Config::parse(CONFIG, Path::new("test.toml")).expect("test config parses")
    }

    fn up(id: &str, connectivity: Connectivity, metered: bool) -> LinkState {
        LinkState {
            source: SourceName::NetworkManager,
            problem: None,
            link: Some(Link {
                facts: LinkFacts {
                    id: id.into(),
                    interface: "eth0".into(),
                    metered,
                    ..Default::default()
                },
                connectivity,
            }),
        }
    }

    fn wifi(ssid: &str, metered: bool) -> LinkState {
        let mut s = up("whatever", Connectivity::Full, metered);
        if let Some(l) = s.link.as_mut() {
            l.facts.ssid = Some(ssid.into());
        }
        s
    }

    fn send(relays: &[&str]) -> Route {
        Route::Send {
            relays: relays.iter().map(|s| RelayName::from(*s)).collect(),
            max_size: None,
        }
    }

    #[test]
    fn link_a_routes_each_user_through_their_relays() {
        let r = route(&config(), &up("ISP-A", Connectivity::Full, false), None);
        assert_eq!(r.link_name.as_deref(), Some("isp-a"));
        assert_eq!(r.routes["alice"], send(&["relay-a"]));
        assert_eq!(r.routes["bob"], send(&["relay-a", "relay-b"]));
    }

    #[test]
    fn wildcard_route_and_missing_route() {
        let r = route(&config(), &wifi("Cafe Central", false), None);
        assert_eq!(r.link_name.as_deref(), Some("cafe"));
        assert_eq!(r.routes["alice"], send(&["relay-b"]));
        assert_eq!(
            r.routes["bob"],
            Route::hold("no relay for link cafe for user bob")
        );
    }

    #[test]
    fn offline_portal_limited_and_unmatched_hold_with_reason() {
        let c = config();
        let offline = LinkState {
            source: SourceName::NetworkManager,
            problem: None,
            link: None,
        };
        assert_eq!(
            route(&c, &offline, None).routes["alice"],
            Route::hold("no link")
        );
        // (connectivity, link id, hold reason, rule in effect): a link a rule matches is named
        // by rule, NM id and interface, and stays the link in effect while it is held.
        let table = [
            (
                Connectivity::Portal,
                "ISP-A",
                "captive portal on isp-a (ISP-A, eth0)",
                Some("isp-a"),
            ),
            (
                Connectivity::Limited,
                "ISP-A",
                "limited connectivity on isp-a (ISP-A, eth0)",
                Some("isp-a"),
            ),
            (
                Connectivity::None,
                "ISP-B",
                "connectivity none on isp-b (ISP-B, eth0)",
                Some("isp-b"),
            ),
            (
                Connectivity::None,
                "Hotel",
                "connectivity none on link Hotel (eth0)",
                None,
            ),
        ];
        for (connectivity, id, reason, rule) in table {
            let r = route(&c, &up(id, connectivity, false), None);
            assert_eq!(
                r.routes["bob"],
                Route::hold(reason),
                "{id} {connectivity:?}"
            );
            assert_eq!(
                r.routes["alice"],
                Route::hold(reason),
                "{id} {connectivity:?}"
            );
            assert_eq!(r.link_name.as_deref(), rule, "{id} {connectivity:?}");
        }
        let other = route(&c, &up("Hotel", Connectivity::Full, false), None);
        assert_eq!(other.link_name, None);
        assert!(
            matches!(&other.routes["alice"], Route::Hold { reason } if reason.contains("Hotel"))
        );
    }

    #[test]
    fn a_link_is_named_by_rule_then_nm_id_and_interface() {
        let facts = |id: &str, interface: &str| LinkFacts {
            id: id.into(),
            interface: interface.into(),
            ..Default::default()
        };
        let table = [
            (
                Some("isp-b"),
                facts("ISP-B", "veth-b"),
                "isp-b (ISP-B, veth-b)",
            ),
            (Some("isp-b"), facts("ISP-B", ""), "isp-b (ISP-B)"),
            // Netlink: the id is the interface.
            (Some("wired"), facts("eth0", "eth0"), "wired (eth0)"),
            (None, facts("Hotel", "wlan0"), "link Hotel (wlan0)"),
            (None, facts("eth0", "eth0"), "link eth0"),
        ];
        for (rule, facts, want) in table {
            assert_eq!(link_label(rule, &facts), want);
        }
    }

    #[test]
    fn source_problem_is_part_of_the_reason() {
        let s = LinkState {
            source: SourceName::None,
            problem: Some("NetworkManager is not running".into()),
            link: None,
        };
        assert_eq!(
            route(&config(), &s, None).routes["bob"],
            Route::hold("no link (the link source has a problem; see `linkrelay status`)")
        );
    }

    #[test]
    fn metered_policies() {
        let c = config();
        let b = route(&c, &up("ISP-B", Connectivity::Full, true), None);
        assert_eq!(
            b.routes["bob"],
            Route::hold("metered link isp-b (ISP-B, eth0), hold")
        );
        let b_unmetered = route(&c, &up("ISP-B", Connectivity::Full, false), None);
        assert_eq!(b_unmetered.routes["bob"], send(&["relay-b"]));
        let cafe = route(&c, &wifi("Cafe", true), None);
        assert_eq!(
            cafe.routes["alice"],
            Route::Send {
                relays: vec!["relay-b".into()],
                max_size: Some(1000)
            }
        );
    }

    #[test]
    fn overrides() {
        let c = config();
        let on_a = up("ISP-A", Connectivity::Full, false);
        let relay = route(&c, &on_a, Some(&Override::Relay("relay-b".into())));
        assert_eq!(relay.routes["alice"], send(&["relay-b"]));
        assert_eq!(relay.link_name.as_deref(), Some("isp-a"));
        let link = route(&c, &on_a, Some(&Override::Link("isp-b".into())));
        assert_eq!(link.link_name.as_deref(), Some("isp-b"));
        assert_eq!(link.routes["bob"], send(&["relay-b"]));
        // A link override works even offline: the user says which network they are on.
        let offline = LinkState {
            source: SourceName::NetworkManager,
            problem: None,
            link: None,
        };
        let forced = route(&c, &offline, Some(&Override::Link("isp-a".into())));
        assert_eq!(forced.routes["alice"], send(&["relay-a"]));
    }
}
