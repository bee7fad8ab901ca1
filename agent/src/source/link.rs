//! What the link sources report: the link that is up, as one level-triggered snapshot.

use linkrelay_config::LinkFacts;
use linkrelay_dbus::nm::Connectivity;
use std::collections::HashMap;

/// Which link source produced a [`LinkState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceName {
    /// NetworkManager over the system bus.
    NetworkManager,
    /// Kernel netlink (default route).
    Netlink,
    /// No source can see anything (yet).
    None,
}

impl SourceName {
    /// The word published on D-Bus and in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkManager => "networkmanager",
            Self::Netlink => "netlink",
            Self::None => "none",
        }
    }
}

/// The link that carries the default route, as the source sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The facts link rules match on.
    pub facts: LinkFacts,
    /// Internet reachability of this link.
    pub connectivity: Connectivity,
}

/// A complete snapshot of what the link source knows. Sources send a whole new snapshot on
/// every change, so a missed intermediate state can never leave the agent wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Who produced it.
    pub source: SourceName,
    /// What is wrong with the source and how to fix it (NetworkManager not running, ...).
    pub problem: Option<String>,
    /// The primary link, `None` when offline.
    pub link: Option<Link>,
}

impl LinkState {
    /// The state before any source has spoken.
    pub fn unknown() -> Self {
        Self {
            source: SourceName::None,
            problem: Some("no link source has reported yet".into()),
            link: None,
        }
    }
}

/// The link as the key/value map published in the `Link` property (`name` is the matched
/// rule, "" when no rule matches). Empty when there is no link.
pub fn link_property(link: Option<&Link>, rule: Option<&str>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let Some(link) = link else { return map };
    let f = &link.facts;
    map.insert("name".into(), rule.unwrap_or("").into());
    map.insert("id".into(), f.id.clone());
    map.insert("uuid".into(), f.uuid.clone());
    map.insert("type".into(), f.conn_type.clone());
    map.insert("interface".into(), f.interface.clone());
    map.insert("gateway".into(), f.gateway.clone().unwrap_or_default());
    map.insert("ssid".into(), f.ssid.clone().unwrap_or_default());
    map.insert("domains".into(), f.domains.join(","));
    let addresses: Vec<String> = f.addresses.iter().map(|a| a.to_string()).collect();
    map.insert("addresses".into(), addresses.join(","));
    map.insert(
        "metered".into(),
        if f.metered { "yes" } else { "no" }.into(),
    );
    map.insert("connectivity".into(), link.connectivity.as_str().into());
    map
}
