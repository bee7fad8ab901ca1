//! `linkrelay flush --connect`: connect to send. When a user's mail is held because no link
//! with a relay for them is up, ask NetworkManager to activate a saved connection whose
//! `[[link]]` rule gives them a relay, wait until the agent routes over it, then flush. The old
//! mail clients' dial-up dialog, done right.
//!
//! The CLI does this itself rather than the agent: NetworkManager asks polkit whether the
//! *caller* may control the network, and polkit allows that to processes of an active login
//! session (a terminal, a panel) while a systemd user service is in no session at all.
//!
//! Choosing the connection (pure: [`choose`]): the users are `--user`, else every user with
//! queued mail, else every user; those whose route holds are the ones to serve. Link rules are
//! tried by how many of them they serve, then in file order; for each, the saved profiles in
//! NetworkManager's order, matched on what a saved profile knows (id, uuid, type, interface,
//! ssid; `gateway`, `domain` and `address` are only known once a link is up and are not looked
//! at). A profile that is already active is skipped, and so is a metered profile for a link
//! whose metered policy is "hold".

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use linkrelay_config::{Config, LinkFacts, LinkName, MeteredPolicy};
use linkrelay_dbus::agent::{AgentProxy, FlushResult, RouteInfo};
use linkrelay_dbus::nm::active::ActiveConnectionProxy;
use linkrelay_dbus::nm::manager::NetworkManagerProxy;
use linkrelay_dbus::nm::settings::{SettingsConnectionProxy, SettingsProxy};
use zbus::{OwnedObjectPath, OwnedVariant};

/// A saved NetworkManager profile, as far as link rules can judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Its object path.
    pub path: String,
    /// What a saved profile says about the link it makes.
    pub facts: LinkFacts,
    /// Whether it is active now.
    pub active: bool,
}

/// What [`choose`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The profile to activate.
    pub profile: Profile,
    /// The `[[link]]` rule it matches.
    pub link: LinkName,
    /// The users it gives a relay to, of those whose mail is held.
    pub serves: Vec<String>,
}

/// Whether saved profile `facts` may be a link of `rule` (the fields a profile cannot know
/// are not looked at).
fn may_match(rule: &linkrelay_config::LinkRule, facts: &LinkFacts) -> bool {
    let mut m = rule.matcher.clone();
    m.gateway = None;
    m.domain = None;
    m.address = None;
    if facts.interface.is_empty() {
        // Bound to no interface: it can come up on any.
        m.interface = None;
    }
    !m.is_empty() && m.matches(facts)
}

/// Picks the profile to activate for `held` (users whose mail waits for a link). Pure.
pub fn choose(config: &Config, held: &[String], profiles: &[Profile]) -> Result<Choice, String> {
    let mut rules: Vec<(usize, usize, &linkrelay_config::LinkRule, Vec<String>)> = config
        .links
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            let serves: Vec<String> = held
                .iter()
                .filter(|u| {
                    config
                        .user(u)
                        .and_then(|u| u.relays_for(&rule.name))
                        .is_some_and(|r| !r.is_empty())
                })
                .cloned()
                .collect();
            (!serves.is_empty()).then_some((serves.len(), i, rule, serves))
        })
        .collect();
    if rules.is_empty() {
        return Err(format!(
            "no [[link]] rule has a relay for {}; add a route for one of your links to the config",
            held.join(", ")
        ));
    }
    rules.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut already_up = Vec::new();
    for (_, _, rule, serves) in &rules {
        for p in profiles {
            if !may_match(rule, &p.facts) {
                continue;
            }
            if rule.metered == MeteredPolicy::Hold && p.facts.metered {
                continue;
            }
            if p.active {
                already_up.push(format!("{} (link {})", p.facts.id, rule.name));
                continue;
            }
            return Ok(Choice {
                profile: p.clone(),
                link: rule.name.clone(),
                serves: serves.clone(),
            });
        }
    }
    let names: Vec<&str> = rules.iter().map(|(_, _, r, _)| r.name.as_str()).collect();
    if already_up.is_empty() {
        Err(format!(
            "NetworkManager has no saved connection for the links with a relay for {} ({}); \
             create one (nmcli connection add ...) or check the [[link]] match",
            held.join(", "),
            names.join(", ")
        ))
    } else {
        Err(format!(
            "{} is already up and mail is still held; `linkrelay status` says why",
            already_up.join(", ")
        ))
    }
}

fn text_of(
    settings: &HashMap<String, HashMap<String, OwnedVariant>>,
    group: &str,
    key: &str,
) -> Option<String> {
    let v = settings.get(group)?.get(key)?;
    String::try_from(v.try_clone().ok()?).ok()
}

/// The facts of a saved profile's settings.
pub fn profile_facts(settings: &HashMap<String, HashMap<String, OwnedVariant>>) -> LinkFacts {
    let ssid = settings
        .get("802-11-wireless")
        .and_then(|w| w.get("ssid"))
        .and_then(|v| Vec::<u8>::try_from(v.try_clone().ok()?).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let metered = settings
        .get("connection")
        .and_then(|c| c.get("metered"))
        .and_then(|v| i32::try_from(v).ok())
        .is_some_and(|m| m == 1 || m == 3);
    LinkFacts {
        id: text_of(settings, "connection", "id").unwrap_or_default(),
        uuid: text_of(settings, "connection", "uuid").unwrap_or_default(),
        conn_type: text_of(settings, "connection", "type").unwrap_or_default(),
        interface: text_of(settings, "connection", "interface-name").unwrap_or_default(),
        ssid,
        gateway: None,
        domains: Vec::new(),
        addresses: Vec::new(),
        metered,
    }
}

/// NetworkManager's saved profiles, with whether each is active.
async fn profiles(system: &zbus::Connection) -> anyhow::Result<Vec<Profile>> {
    let nm = NetworkManagerProxy::builder(system)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let mut active_profiles = Vec::new();
    for path in nm.active_connections().await.map_err(nm_error)? {
        let ac = ActiveConnectionProxy::builder(system)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        if let Ok(p) = ac.connection().await {
            active_profiles.push(p);
        }
    }
    let settings = SettingsProxy::new(system).await?;
    let mut out = Vec::new();
    for path in settings.list_connections().await.map_err(nm_error)? {
        let conn = SettingsConnectionProxy::builder(system)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        // A profile that vanished meanwhile is simply not a candidate.
        let Ok(s) = conn.get_settings().await else {
            continue;
        };
        out.push(Profile {
            active: active_profiles.contains(&path),
            path: path.to_string(),
            facts: profile_facts(&s),
        });
    }
    Ok(out)
}

fn nm_error(e: zbus::Error) -> anyhow::Error {
    if let zbus::Error::FDO(fdo) = &e
        && matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        )
    {
        return anyhow!(
            "NetworkManager is not running on the system bus; connect by hand, then `linkrelay flush`"
        );
    }
    match &e {
        zbus::Error::MethodError(name, _, _)
            if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"
                || name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
        {
            anyhow!(
                "NetworkManager is not running on the system bus; connect by hand, then `linkrelay flush`"
            )
        }
        zbus::Error::MethodError(name, Some(text), _)
            if name.as_str() == "org.freedesktop.NetworkManager.PermissionDenied" =>
        {
            anyhow!(
                "NetworkManager did not let you activate a connection ({text}); polkit allows it to users of an active local session"
            )
        }
        zbus::Error::MethodError(name, Some(text), _) => anyhow!("NetworkManager: {text} ({name})"),
        _ => anyhow!("NetworkManager: {e}"),
    }
}

fn sends(routes: &[RouteInfo], user: &str) -> bool {
    routes.iter().any(|r| r.user == user && r.hold.is_empty())
}

/// Connects as needed, then flushes; returns the flush results. What it does is said on
/// stdout, or on stderr when stdout carries JSON.
pub async fn connect_and_flush(
    agent: &AgentProxy<'_>,
    user: Option<&str>,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<Vec<FlushResult>> {
    let say = |text: String| {
        if json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    let path = agent.config_path().await?;
    if path.is_empty() {
        bail!(
            "the agent runs on the embedded default config, which has no links or relays; write one with `linkrelay config init`"
        );
    }
    let config = Config::load(std::path::Path::new(&path))
        .map_err(|e| anyhow!("cannot read the agent's config: {e}"))?;
    let routes = agent.routes().await?;
    let queue = agent.queue().await?;
    let users: Vec<String> = match user {
        Some(u) => {
            if config.user(u).is_none() {
                bail!("no user named {u:?} in {path}");
            }
            vec![u.to_string()]
        }
        None => {
            let waiting: Vec<String> = queue
                .iter()
                .filter(|q| q.queued > 0)
                .map(|q| q.user.clone())
                .collect();
            if waiting.is_empty() {
                config.users.iter().map(|u| u.name.to_string()).collect()
            } else {
                waiting
            }
        }
    };
    let held: Vec<String> = users
        .iter()
        .filter(|u| !sends(&routes, u))
        .cloned()
        .collect();
    if held.is_empty() {
        say(format!(
            "{}: a relay is reachable on this link already",
            users.join(", ")
        ));
    } else {
        let system = zbus::Connection::system()
            .await
            .context("cannot reach the system bus, where NetworkManager is")?;
        let profiles = profiles(&system).await?;
        let choice = choose(&config, &held, &profiles).map_err(|e| anyhow!(e))?;
        say(format!(
            "connecting {} (link {}: a relay for {})",
            choice.profile.facts.id,
            choice.link,
            choice.serves.join(", ")
        ));
        let nm = NetworkManagerProxy::new(&system).await?;
        let root = zbus::ObjectPath::from_static_str_unchecked("/");
        let profile_path = zbus::ObjectPath::try_from(choice.profile.path.as_str())?;
        let active = nm
            .activate_connection(&profile_path, &root, &root)
            .await
            .map_err(nm_error)?;
        wait_until_routed(agent, &system, &active, &choice, timeout).await?;
        let routes = agent.routes().await?;
        for u in &choice.serves {
            if let Some(r) = routes.iter().find(|r| r.user == *u) {
                say(format!("{u}: via {}", r.relays.join(" -> ")));
            }
        }
    }
    // Bringing a link up reroutes, and the agent flushes on a new route by itself: count what
    // left from the outbox counts, not only from this flush's own reply.
    let results = agent
        .flush(user.unwrap_or(""), true)
        .await
        .map_err(crate::dbus_error)?;
    let mut after = agent.queue().await?;
    for _ in 0..20 {
        let settled = results.iter().all(|r| {
            after
                .iter()
                .any(|q| q.user == r.user && q.queued == r.remaining)
        });
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = agent.queue().await?;
    }
    Ok(results
        .into_iter()
        .filter(|r| users.contains(&r.user))
        .map(|r| {
            let sent_of = |list: &[linkrelay_dbus::agent::QueueCount]| {
                list.iter().find(|q| q.user == r.user).map_or(0, |q| q.sent)
            };
            FlushResult {
                sent: r.sent.max(sent_of(&after).saturating_sub(sent_of(&queue))),
                ..r
            }
        })
        .collect())
}

/// Waits until the agent routes every user `choice` serves, failing early when NetworkManager
/// gives up on the connection.
async fn wait_until_routed(
    agent: &AgentProxy<'_>,
    system: &zbus::Connection,
    active: &OwnedObjectPath,
    choice: &Choice,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let ac = ActiveConnectionProxy::builder(system)
        .path(active.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let mut seen = false;
    loop {
        let routes = agent.routes().await?;
        if choice.serves.iter().all(|u| sends(&routes, u)) {
            return Ok(());
        }
        match ac.state().await {
            Ok(4) => bail!(
                "NetworkManager could not bring up {}",
                choice.profile.facts.id
            ),
            Ok(_) => seen = true,
            // Gone after it was there: deactivated and removed.
            Err(_) if seen => bail!(
                "NetworkManager could not bring up {}",
                choice.profile.facts.id
            ),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            let why = routes
                .iter()
                .filter(|r| choice.serves.contains(&r.user))
                .map(|r| format!("{}: {}", r.user, r.hold))
                .collect::<Vec<_>>()
                .join("; ");
            bail!(
                "{} did not give a route within {}s ({why})",
                choice.profile.facts.id,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[[link]]
name = "isp-a"
match = { id = "ISP-A" }

[[link]]
name = "phone"
match = { type = "gsm" }
metered = "hold"

[[link]]
name = "home-wifi"
match = { type = "802-11-wireless", ssid = "Home*" }

[[link]]
name = "office"
match = { gateway = "10.0.0.1" }

[[relay]]
name = "relay-a"
host = "h"
tls = "none"

[[user]]
name = "alice"
from = ["alice@a.example"]
routes = { isp-a = ["relay-a"], home-wifi = ["relay-a"], office = ["relay-a"] }

[[user]]
name = "bob"
from = ["*"]
default = true
routes = { home-wifi = ["relay-a"], phone = ["relay-a"] }
"#;

    fn config() -> Config {
        Config::parse(CONFIG, Path::new("t.toml")).unwrap()
    }

    fn profile(n: u32, id: &str, conn_type: &str, ssid: Option<&str>, metered: bool) -> Profile {
        Profile {
            path: format!("/org/freedesktop/NetworkManager/Settings/{n}"),
            facts: LinkFacts {
                id: id.into(),
                conn_type: conn_type.into(),
                ssid: ssid.map(str::to_string),
                metered,
                ..LinkFacts::default()
            },
            active: false,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_link_serving_most_held_users_wins() {
        let profiles = vec![
            profile(1, "ISP-A", "802-3-ethernet", None, false),
            profile(2, "Home 5G", "802-11-wireless", Some("Home 5G"), false),
        ];
        let c = choose(&config(), &names(&["alice", "bob"]), &profiles).unwrap();
        assert_eq!(c.link, "home-wifi");
        assert_eq!(c.profile.facts.id, "Home 5G");
        assert_eq!(c.serves, ["alice", "bob"]);
        // For alice alone, the first rule in the file wins.
        let c = choose(&config(), &names(&["alice"]), &profiles).unwrap();
        assert_eq!(c.link, "isp-a");
    }

    #[test]
    fn metered_hold_and_active_profiles_are_skipped() {
        let mut home = profile(2, "Home 5G", "802-11-wireless", Some("Home 5G"), false);
        home.active = true;
        let profiles = vec![profile(1, "Phone", "gsm", None, true), home];
        let err = choose(&config(), &names(&["bob"]), &profiles).unwrap_err();
        assert!(
            err.contains("Home 5G (link home-wifi) is already up"),
            "{err}"
        );
        let profiles = vec![profile(1, "Phone", "gsm", None, false)];
        assert_eq!(
            choose(&config(), &names(&["bob"]), &profiles).unwrap().link,
            "phone"
        );
    }

    #[test]
    fn rules_a_saved_profile_cannot_answer_are_not_guessed() {
        // "office" matches on the gateway only: unknown before the link is up.
        let profiles = vec![profile(1, "Office", "802-3-ethernet", None, false)];
        let err = choose(&config(), &names(&["alice"]), &profiles).unwrap_err();
        assert!(err.contains("no saved connection"), "{err}");
        let err = choose(&config(), &names(&["carol"]), &profiles).unwrap_err();
        assert!(
            err.contains("no [[link]] rule has a relay for carol"),
            "{err}"
        );
    }
}
