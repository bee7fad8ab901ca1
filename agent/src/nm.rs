//! The NetworkManager link source: reads NM's state over the system bus at start-up and again
//! whenever NM says anything (level-triggered), and follows NM leaving and coming back.

use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_config::LinkFacts;
use linkrelay_dbus::nm::{
    self, Connectivity, NM_BUS_NAME, access_point::AccessPointProxy, active::ActiveConnectionProxy,
    device::DeviceProxy, ip4config::Ip4ConfigProxy, manager::NetworkManagerProxy,
    wireless::WirelessProxy,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath};

use crate::link::{Link, LinkState, SourceName};

/// How long to let a burst of NM signals settle before reading the state (NM sends a dozen
/// PropertiesChanged for one activation).
const SETTLE: Duration = Duration::from_millis(15);

/// What to tell the user when NetworkManager is absent.
pub fn nm_absent_problem() -> String {
    "NetworkManager is not running (org.freedesktop.NetworkManager has no owner on the system bus); \
     start it with `systemctl start NetworkManager`, or let linkrelayd follow the kernel's default route instead ([agent] source = \"auto\" or \"netlink\")"
        .to_string()
}

/// Follows NetworkManager on `system` and publishes every change into `tx`. Returns only if the
/// bus connection itself breaks.
pub async fn run(system: Connection, tx: watch::Sender<LinkState>) -> zbus::Result<()> {
    let nm_signals = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(NM_BUS_NAME)
        .path_namespace("/org/freedesktop/NetworkManager")
        .build()?;
    let owner_changes = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(NM_BUS_NAME)
        .build()?;
    // Subscribe first, then read: nothing that happens in between is missed.
    let mut signals = MessageStream::for_match_rule(nm_signals, &system, None).await?;
    let mut owners = MessageStream::for_match_rule(owner_changes, &system, None).await?;

    loop {
        let state = read_state(&system).await;
        tx.send_if_modified(|old| {
            if *old != state {
                info!(link = ?state.link.as_ref().map(|l| &l.facts.id), problem = ?state.problem, "NetworkManager state");
                *old = state;
                true
            } else {
                false
            }
        });
        // Sleep until NM says something (no polling), then let the burst settle.
        tokio::select! {
            m = signals.next() => if m.is_none() { return Ok(()) },
            m = owners.next() => if m.is_none() { return Ok(()) },
        }
        let deadline = tokio::time::sleep(SETTLE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = signals.next() => {},
                _ = owners.next() => {},
            }
        }
    }
}

/// Reads the whole link state; NM absent or half-gone yields a state that says so.
async fn read_state(system: &Connection) -> LinkState {
    let dbus = match zbus::fdo::DBusProxy::new(system).await {
        Ok(p) => p,
        Err(e) => return problem(format!("cannot talk to the system bus: {e}")),
    };
    let name = match zbus::names::BusName::try_from(NM_BUS_NAME) {
        Ok(n) => n,
        Err(e) => return problem(e.to_string()),
    };
    match dbus.name_has_owner(name).await {
        Ok(true) => {}
        Ok(false) => return problem(nm_absent_problem()),
        Err(e) => {
            return problem(format!(
                "cannot ask the system bus about NetworkManager: {e}"
            ));
        }
    }
    // Objects can vanish between two reads (a link going down); try a few times.
    let mut last_err = None;
    for _ in 0..3 {
        match read_primary(system).await {
            Ok(link) => {
                return LinkState {
                    source: SourceName::NetworkManager,
                    problem: None,
                    link,
                };
            }
            Err(e) => {
                debug!(error = %e, "NetworkManager state changed while reading it; reading again");
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let e = last_err.map(|e| e.to_string()).unwrap_or_default();
    warn!(error = %e, "cannot read NetworkManager's state");
    problem(format!("cannot read NetworkManager's state: {e}"))
}

fn problem(text: String) -> LinkState {
    LinkState {
        source: SourceName::None,
        problem: Some(text),
        link: None,
    }
}

fn is_none(path: &OwnedObjectPath) -> bool {
    path.as_str() == "/"
}

async fn read_primary(system: &Connection) -> zbus::Result<Option<Link>> {
    let manager = NetworkManagerProxy::builder(system)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let primary = manager.primary_connection().await?;
    if is_none(&primary) {
        return Ok(None);
    }
    let connectivity = Connectivity::from_nm(manager.connectivity().await?);
    let active = ActiveConnectionProxy::builder(system)
        .path(primary)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    if active.state().await? != nm::ACTIVE_STATE_ACTIVATED {
        return Ok(None);
    }
    let mut facts = LinkFacts {
        id: active.id().await?,
        uuid: active.uuid().await?,
        conn_type: active.connection_type().await?,
        ..LinkFacts::default()
    };
    let mut ip4 = active.ip4_config().await?;
    if let Some(dev_path) = active.devices().await?.into_iter().next() {
        let device = DeviceProxy::builder(system)
            .path(dev_path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let ip_iface = device.ip_interface().await.unwrap_or_default();
        facts.interface = if ip_iface.is_empty() {
            device.interface().await?
        } else {
            ip_iface
        };
        facts.metered = nm::metered_from_nm(device.metered().await.unwrap_or(0));
        if is_none(&ip4) {
            ip4 = device.ip4_config().await.unwrap_or_else(|_| ip4.clone());
        }
        if device.device_type().await.unwrap_or(0) == nm::device::DEVICE_TYPE_WIFI {
            facts.ssid = read_ssid(system, dev_path).await;
        }
    } else {
        facts.metered = nm::metered_from_nm(manager.metered().await.unwrap_or(0));
    }
    if !is_none(&ip4) {
        let cfg = Ip4ConfigProxy::builder(system)
            .path(ip4)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let gw = cfg.gateway().await.unwrap_or_default();
        facts.gateway = (!gw.is_empty()).then_some(gw);
        let mut domains = cfg.domains().await.unwrap_or_default();
        for s in cfg.searches().await.unwrap_or_default() {
            if !domains.contains(&s) {
                domains.push(s);
            }
        }
        facts.domains = domains;
        facts.addresses = cfg
            .address_data()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| {
                let value = entry.get("address")?.try_clone().ok()?;
                String::try_from(value).ok()?.parse().ok()
            })
            .collect();
    }
    Ok(Some(Link {
        facts,
        connectivity,
    }))
}

async fn read_ssid(system: &Connection, device: OwnedObjectPath) -> Option<String> {
    let wifi = WirelessProxy::builder(system)
        .path(device)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .ok()?;
    let ap = wifi.active_access_point().await.ok()?;
    if is_none(&ap) {
        return None;
    }
    let ap = AccessPointProxy::builder(system)
        .path(ap)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .ok()?;
    let bytes = ap.ssid().await.ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
