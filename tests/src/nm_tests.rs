//! Tests of the fake NetworkManager, through client proxies written here (not the product's),
//! over a private system bus.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, fdo};

use crate::bus::TestBus;
use crate::nm::*;

mod manager {
    use zbus::{OwnedObjectPath, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager",
        default_service = "org.freedesktop.NetworkManager",
        default_path = "/org/freedesktop/NetworkManager"
    )]
    pub trait Manager {
        fn get_devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property)]
        fn primary_connection(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn primary_connection_type(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn active_connections(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property)]
        fn activating_connection(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn connectivity(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn metered(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn networking_enabled(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn version(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    }
}

mod active {
    use zbus::{OwnedObjectPath, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager.Connection.Active",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait Active {
        #[zbus(property)]
        fn id(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn uuid(&self) -> zbus::Result<String>;
        #[zbus(property, name = "Type")]
        fn conn_type(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<u32>;
        #[zbus(property, name = "Default")]
        fn default_route(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn default6(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn ip4_config(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn ip6_config(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn vpn(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn connection(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn specific_object(&self) -> zbus::Result<OwnedObjectPath>;
    }
}

mod device {
    use zbus::{OwnedObjectPath, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager.Device",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait Device {
        #[zbus(property)]
        fn interface(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn ip_interface(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn device_type(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn metered(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn ip4_config(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn active_connection(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn ip4_connectivity(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn ip6_connectivity(&self) -> zbus::Result<u32>;
    }
}

mod wireless {
    use zbus::{OwnedObjectPath, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager.Device.Wireless",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait Wireless {
        #[zbus(property)]
        fn active_access_point(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn access_points(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    }
}

mod access_point {
    use zbus::proxy;

    #[proxy(
        interface = "org.freedesktop.NetworkManager.AccessPoint",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait AccessPoint {
        #[zbus(property)]
        fn ssid(&self) -> zbus::Result<Vec<u8>>;
    }
}

mod ip4 {
    use std::collections::HashMap;

    use zbus::{OwnedVariant, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager.IP4Config",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait Ip4Config {
        #[zbus(property)]
        fn gateway(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn domains(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn searches(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn address_data(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
        #[zbus(property)]
        fn nameserver_data(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    }
}

mod settings {
    use std::collections::HashMap;

    use zbus::{OwnedVariant, proxy};

    #[proxy(
        interface = "org.freedesktop.NetworkManager.Settings.Connection",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait SettingsConnection {
        fn get_settings(&self) -> zbus::Result<HashMap<String, HashMap<String, OwnedVariant>>>;
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// Uncached proxies, so every read goes to the fake.
async fn manager(conn: &Connection) -> manager::ManagerProxy<'static> {
    manager::ManagerProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("manager proxy")
}

async fn active(conn: &Connection, path: &OwnedObjectPath) -> active::ActiveProxy<'static> {
    active::ActiveProxy::builder(conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("active proxy")
}

async fn device(conn: &Connection, path: &OwnedObjectPath) -> device::DeviceProxy<'static> {
    device::DeviceProxy::builder(conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("device proxy")
}

async fn ip4(conn: &Connection, path: &OwnedObjectPath) -> ip4::Ip4ConfigProxy<'static> {
    ip4::Ip4ConfigProxy::builder(conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("ip4 proxy")
}

fn path(text: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(text).expect("object path")
}

fn root() -> OwnedObjectPath {
    path("/")
}

fn string(value: &OwnedVariant) -> String {
    String::try_from(value.try_clone().expect("clone")).expect("a string")
}

fn number(value: &OwnedVariant) -> u32 {
    u32::try_from(value).expect("a u32")
}

/// A signal recorder subscribed before the action under test.
struct Signals {
    stream: MessageStream,
}

/// One PropertiesChanged or StateChanged seen by [`Signals`].
#[derive(Debug)]
enum Seen {
    Props {
        path: String,
        interface: String,
        changed: HashMap<String, OwnedVariant>,
    },
    State {
        path: String,
        state: u32,
        reason: u32,
    },
    /// ObjectManager InterfacesAdded, with the object's path and interfaces.
    Added {
        object: String,
        interfaces: Vec<String>,
    },
    /// ObjectManager InterfacesRemoved.
    Removed {
        object: String,
        interfaces: Vec<String>,
    },
}

impl Signals {
    /// Every signal from NM's well-known name.
    async fn subscribe(conn: &Connection) -> Signals {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(NM_BUS_NAME)
            .build()
            .expect("match rule");
        let stream = MessageStream::for_match_rule(rule, conn, None)
            .await
            .expect("subscribe");
        Signals { stream }
    }

    /// The next signal, or `None` after [`WAIT`] without one.
    async fn next(&mut self) -> Option<Seen> {
        let msg = tokio::time::timeout(WAIT, self.stream.next())
            .await
            .ok()??
            .expect("message");
        let header = msg.header();
        let path = header.path().expect("path").to_string();
        let interface = header.interface().expect("interface").to_string();
        let member = header.member().expect("member").to_string();
        match (interface.as_str(), member.as_str()) {
            ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
                let (interface, changed, _invalidated): (
                    String,
                    HashMap<String, OwnedVariant>,
                    Vec<String>,
                ) = msg.body().deserialize().expect("PropertiesChanged body");
                Some(Seen::Props {
                    path,
                    interface,
                    changed,
                })
            }
            ("org.freedesktop.NetworkManager.Connection.Active", "StateChanged") => {
                let (state, reason): (u32, u32) =
                    msg.body().deserialize().expect("StateChanged body");
                Some(Seen::State {
                    path,
                    state,
                    reason,
                })
            }
            ("org.freedesktop.DBus.ObjectManager", "InterfacesAdded") => {
                assert_eq!(path, NM_OBJECT_MANAGER_PATH);
                let (object, interfaces): (
                    OwnedObjectPath,
                    HashMap<String, HashMap<String, OwnedVariant>>,
                ) = msg.body().deserialize().expect("InterfacesAdded body");
                Some(Seen::Added {
                    object: object.to_string(),
                    interfaces: interfaces.into_keys().collect(),
                })
            }
            ("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved") => {
                assert_eq!(path, NM_OBJECT_MANAGER_PATH);
                let (object, interfaces): (OwnedObjectPath, Vec<String>) =
                    msg.body().deserialize().expect("InterfacesRemoved body");
                Some(Seen::Removed {
                    object: object.to_string(),
                    interfaces,
                })
            }
            (interface, member) => panic!("unexpected signal {interface}.{member} on {path}"),
        }
    }

    /// Collect signals until `done` says so; fails after [`WAIT`] without it.
    async fn until(&mut self, mut done: impl FnMut(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Some(s) => {
                    let stop = done(&s);
                    seen.push(s);
                    if stop {
                        return seen;
                    }
                }
                None => panic!("the awaited signal never came; seen: {seen:#?}"),
            }
        }
    }
}

fn is_manager_change(seen: &Seen, property: &str, value: &OwnedVariant) -> bool {
    matches!(seen, Seen::Props { path, changed, .. }
        if path == NM_PATH && changed.get(property) == Some(value))
}

fn position(seen: &[Seen], what: impl Fn(&Seen) -> bool) -> usize {
    seen.iter()
        .position(what)
        .unwrap_or_else(|| panic!("not found in {seen:#?}"))
}

async fn system_bus() -> (TestBus, Connection) {
    let bus = TestBus::system().expect("system bus");
    let client = bus.connect().await.expect("client connection");
    (bus, client)
}

#[tokio::test]
async fn primary_connection_leads_to_id_type_device_and_gateway() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1").with_domains(["isp-a.example"])],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();

    let m = manager(&client).await;
    assert_eq!(m.version().await.unwrap(), "1.42.4");
    assert!(m.networking_enabled().await.unwrap());
    assert_eq!(m.state().await.unwrap(), NM_STATE_CONNECTED_GLOBAL);
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_FULL);
    assert_eq!(m.metered().await.unwrap(), METERED_NO);
    assert_eq!(m.primary_connection_type().await.unwrap(), TYPE_ETHERNET);
    assert_eq!(m.activating_connection().await.unwrap(), root());
    let primary = m.primary_connection().await.unwrap();
    assert!(
        primary
            .as_str()
            .starts_with("/org/freedesktop/NetworkManager/ActiveConnection/"),
        "{primary}"
    );
    assert_eq!(m.active_connections().await.unwrap(), vec![primary.clone()]);
    assert_eq!(
        nm.active_path("ISP-A").await.as_deref(),
        Some(primary.as_str())
    );

    let a = active(&client, &primary).await;
    assert_eq!(a.id().await.unwrap(), "ISP-A");
    assert_eq!(a.conn_type().await.unwrap(), "802-3-ethernet");
    assert_eq!(a.state().await.unwrap(), ACTIVE_STATE_ACTIVATED);
    assert!(a.default_route().await.unwrap());
    assert!(!a.default6().await.unwrap());
    assert!(!a.vpn().await.unwrap());
    assert_eq!(a.ip6_config().await.unwrap(), root());
    assert_eq!(
        a.uuid().await.unwrap(),
        ActiveSpec::ethernet("ISP-A", "x", "192.0.2.9").uuid
    );
    let devices = a.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(m.devices().await.unwrap(), devices);
    assert_eq!(m.get_devices().await.unwrap(), devices);

    let d = device(&client, &devices[0]).await;
    assert_eq!(d.interface().await.unwrap(), "eth0");
    assert_eq!(d.ip_interface().await.unwrap(), "eth0");
    assert_eq!(d.device_type().await.unwrap(), DEVICE_TYPE_ETHERNET);
    assert_eq!(d.metered().await.unwrap(), METERED_NO);
    assert_eq!(d.state().await.unwrap(), DEVICE_STATE_ACTIVATED);
    assert_eq!(d.active_connection().await.unwrap(), primary);

    let ip4_path = a.ip4_config().await.unwrap();
    assert_eq!(d.ip4_config().await.unwrap(), ip4_path);
    let c = ip4(&client, &ip4_path).await;
    assert_eq!(c.gateway().await.unwrap(), "192.0.2.1");
    assert_eq!(c.domains().await.unwrap(), ["isp-a.example"]);
    assert_eq!(c.searches().await.unwrap(), ["isp-a.example"]);
    let addresses = c.address_data().await.unwrap();
    assert_eq!(addresses.len(), 1);
    assert_eq!(string(&addresses[0]["address"]), "192.0.2.100");
    assert_eq!(number(&addresses[0]["prefix"]), 24);
    let nameservers = c.nameserver_data().await.unwrap();
    assert_eq!(string(&nameservers[0]["address"]), "192.0.2.1");

    let profile = settings::SettingsConnectionProxy::builder(&client)
        .path(a.connection().await.unwrap())
        .build()
        .await
        .unwrap();
    let settings = profile.get_settings().await.unwrap();
    assert_eq!(string(&settings["connection"]["id"]), "ISP-A");
}

#[tokio::test]
async fn without_connections_nm_is_disconnected() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(&bus.address, vec![], CONNECTIVITY_FULL)
        .await
        .unwrap();
    let m = manager(&client).await;
    assert_eq!(m.primary_connection().await.unwrap(), root());
    assert_eq!(m.primary_connection_type().await.unwrap(), "");
    assert!(m.active_connections().await.unwrap().is_empty());
    assert_eq!(m.state().await.unwrap(), NM_STATE_DISCONNECTED);
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_NONE);
    assert_eq!(m.metered().await.unwrap(), METERED_UNKNOWN);
    assert_eq!(nm.primary_id().await, None);

    // The first link up makes connectivity full.
    let mut signals = Signals::subscribe(&client).await;
    nm.activate(ActiveSpec::ethernet("Office", "eth0", "198.51.100.1"))
        .await
        .unwrap();
    signals
        .until(|s| is_manager_change(s, "State", &OwnedVariant::from(70u32)))
        .await;
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_FULL);
}

#[tokio::test]
async fn activating_a_second_link_announces_it_like_nm() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let old = path(&nm.active_path("ISP-A").await.unwrap());

    let mut signals = Signals::subscribe(&client).await;
    let new = nm
        .activate(ActiveSpec::wifi("Home", "wlan0", "HomeNet", "203.0.113.1"))
        .await
        .unwrap();
    let new = path(&new);
    assert_ne!(new, old);
    let seen = signals
        .until(|s| {
            is_manager_change(
                s,
                "PrimaryConnection",
                &OwnedVariant::from(new.clone().into_inner()),
            )
        })
        .await;

    // The new connection shows up activating, in ActiveConnections, then is activated with
    // StateChanged, then takes the default route from the old one.
    let listed = position(&seen, |s| {
        matches!(s, Seen::Props { path, changed, .. } if path == NM_PATH
            && changed.contains_key("ActiveConnections")
            && changed.get("ActivatingConnection") == Some(&OwnedVariant::from(new.clone().into_inner())))
    });
    let activating = position(
        &seen,
        |s| matches!(s, Seen::State { path, state: 1, reason: 1 } if path == new.as_str()),
    );
    let activated = position(
        &seen,
        |s| matches!(s, Seen::State { path, state: 2, .. } if path == new.as_str()),
    );
    let state_prop = position(&seen, |s| {
        matches!(s, Seen::Props { path, interface, changed } if path == new.as_str()
            && interface == "org.freedesktop.NetworkManager.Connection.Active"
            && changed.get("State") == Some(&OwnedVariant::from(2u32)))
    });
    let old_not_default = position(&seen, |s| {
        matches!(s, Seen::Props { path, changed, .. } if path == old.as_str()
            && changed.get("Default") == Some(&OwnedVariant::from(false)))
    });
    let new_default = position(&seen, |s| {
        matches!(s, Seen::Props { path, changed, .. } if path == new.as_str()
            && changed.get("Default") == Some(&OwnedVariant::from(true)))
    });
    let primary = seen.len() - 1;
    assert!(listed < activating && activating < activated, "{seen:#?}");
    assert!(activated < state_prop, "{seen:#?}");
    assert!(
        state_prop < new_default && old_not_default < primary,
        "{seen:#?}"
    );
    assert!(new_default < primary, "{seen:#?}");
    let Seen::Props { changed, .. } = &seen[primary] else {
        unreachable!()
    };
    assert_eq!(
        changed.get("PrimaryConnectionType"),
        Some(&OwnedVariant::try_from(zbus::Variant::from(TYPE_WIFI)).unwrap())
    );
    assert_eq!(
        changed.get("ActivatingConnection"),
        Some(&OwnedVariant::from(root().into_inner()))
    );

    let m = manager(&client).await;
    assert_eq!(m.primary_connection().await.unwrap(), new);
    assert_eq!(
        m.active_connections().await.unwrap(),
        vec![old.clone(), new.clone()]
    );
    assert!(!active(&client, &old).await.default_route().await.unwrap());
    assert!(active(&client, &new).await.default_route().await.unwrap());
    assert_eq!(nm.primary_id().await.as_deref(), Some("Home"));
}

#[tokio::test]
async fn zbus_property_streams_follow_the_fake() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    // A caching proxy, as the product uses.
    let m = manager::ManagerProxy::new(&client).await.unwrap();
    let mut primary = m.receive_primary_connection_changed().await;
    let first = primary.next().await.unwrap().get().await.unwrap();
    assert_eq!(first.as_str(), nm.active_path("ISP-A").await.unwrap());
    let new = nm
        .activate(ActiveSpec::ethernet("ISP-B", "eth1", "198.51.100.1"))
        .await
        .unwrap();
    let changed = tokio::time::timeout(WAIT, primary.next())
        .await
        .expect("a change")
        .unwrap()
        .get()
        .await
        .unwrap();
    assert_eq!(changed.as_str(), new);
    assert_eq!(
        m.cached_primary_connection().unwrap().unwrap().as_str(),
        new
    );
}

#[tokio::test]
async fn deactivating_moves_the_primary_back_and_unexports_the_objects() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let a = path(&nm.active_path("ISP-A").await.unwrap());
    let b = path(
        &nm.activate(ActiveSpec::gsm("Mobile", "wwan0", "100.64.0.1"))
            .await
            .unwrap(),
    );
    let b_ip4 = active(&client, &b).await.ip4_config().await.unwrap();
    let m = manager(&client).await;
    assert_eq!(m.metered().await.unwrap(), METERED_YES);

    let mut signals = Signals::subscribe(&client).await;
    nm.deactivate("Mobile").await.unwrap();
    let seen = signals
        .until(|s| {
            matches!(s, Seen::Props { path, changed, .. } if path == NM_PATH
                && changed.get("ActiveConnections")
                    == Some(&OwnedVariant::try_from(zbus::Variant::from(vec![a.clone().into_inner()])).unwrap()))
        })
        .await;
    let states: Vec<(u32, u32)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::State {
                path,
                state,
                reason,
            } if path == b.as_str() => Some((*state, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            (ACTIVE_STATE_DEACTIVATING, ACTIVE_REASON_USER_DISCONNECTED),
            (ACTIVE_STATE_DEACTIVATED, ACTIVE_REASON_USER_DISCONNECTED)
        ]
    );
    let primary_back = position(&seen, |s| {
        is_manager_change(
            s,
            "PrimaryConnection",
            &OwnedVariant::from(a.clone().into_inner()),
        )
    });
    let deactivated = position(&seen, |s| matches!(s, Seen::State { state: 4, .. }));
    assert!(primary_back < deactivated, "{seen:#?}");

    assert_eq!(m.primary_connection().await.unwrap(), a);
    assert_eq!(m.active_connections().await.unwrap(), vec![a.clone()]);
    assert_eq!(m.metered().await.unwrap(), METERED_NO);
    assert!(active(&client, &a).await.default_route().await.unwrap());
    let gone = active(&client, &b)
        .await
        .id()
        .await
        .expect_err("unexported");
    assert!(
        matches!(gone, zbus::Error::FDO(ref e) if matches!(**e, fdo::Error::UnknownObject(_))),
        "{gone:?}"
    );
    assert!(ip4(&client, &b_ip4).await.gateway().await.is_err());
    // The device stays, disconnected.
    let wwan = path(&nm.device_path("wwan0").await.unwrap());
    let d = device(&client, &wwan).await;
    assert_eq!(d.state().await.unwrap(), DEVICE_STATE_DISCONNECTED);
    assert_eq!(d.active_connection().await.unwrap(), root());
    assert_eq!(d.ip4_config().await.unwrap(), root());

    nm.deactivate("ISP-A").await.unwrap();
    assert_eq!(m.primary_connection().await.unwrap(), root());
    assert!(m.active_connections().await.unwrap().is_empty());
    assert_eq!(m.state().await.unwrap(), NM_STATE_DISCONNECTED);
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_NONE);
    assert_eq!(m.metered().await.unwrap(), METERED_UNKNOWN);
    assert!(nm.deactivate("ISP-A").await.is_err());
}

#[tokio::test]
async fn object_paths_are_never_reused_not_even_across_a_restart() {
    let (bus, _client) = system_bus().await;
    let nm = FakeNm::start(&bus.address, vec![], CONNECTIVITY_FULL)
        .await
        .unwrap();
    let mut paths = Vec::new();
    for _ in 0..3 {
        paths.push(
            nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
                .await
                .unwrap(),
        );
        nm.deactivate("ISP-A").await.unwrap();
    }
    nm.stop().await.unwrap();
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    paths.push(nm.active_path("ISP-A").await.unwrap());
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "{paths:?}");
}

#[tokio::test]
async fn stop_makes_the_name_go_away_and_a_restart_brings_it_back() {
    let (bus, client) = system_bus().await;
    let dbus = fdo::DBusProxy::new(&client).await.unwrap();
    let nm = FakeNm::start(&bus.address, vec![], CONNECTIVITY_FULL)
        .await
        .unwrap();
    let owner = nm.connection().unique_name().unwrap().to_string();
    assert!(
        dbus.name_has_owner(NM_BUS_NAME.try_into().unwrap())
            .await
            .unwrap()
    );
    // A second NM on the same bus refuses to start.
    assert!(
        FakeNm::start(&bus.address, vec![], CONNECTIVITY_FULL)
            .await
            .is_err()
    );

    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, NM_BUS_NAME)])
        .await
        .unwrap();
    nm.stop().await.unwrap();
    let change = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("NameOwnerChanged")
        .unwrap();
    let args = change.args().unwrap();
    assert_eq!(args.name().as_str(), NM_BUS_NAME);
    assert_eq!(
        args.old_owner().as_ref().map(|o| o.to_string()),
        Some(owner.clone())
    );
    assert!(args.new_owner().is_none());
    assert!(
        !dbus
            .name_has_owner(NM_BUS_NAME.try_into().unwrap())
            .await
            .unwrap()
    );
    // Like an exiting NM, the whole connection went away, not just the name.
    assert!(
        !dbus
            .name_has_owner(owner.as_str().try_into().unwrap())
            .await
            .unwrap(),
        "the fake NM's connection {owner} is still on the bus"
    );
    assert!(manager(&client).await.state().await.is_err());

    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let change = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("NameOwnerChanged")
        .unwrap();
    assert_eq!(
        change
            .args()
            .unwrap()
            .new_owner()
            .as_ref()
            .map(|o| o.to_string()),
        Some(nm.connection().unique_name().unwrap().to_string())
    );
    // The state is there as soon as the name is.
    assert_eq!(
        manager(&client).await.state().await.unwrap(),
        NM_STATE_CONNECTED_GLOBAL
    );
}

#[tokio::test]
async fn wifi_ssid_is_readable_through_the_access_point() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::wifi(
            "Home wifi",
            "wlp2s0",
            "HomeNet-5G",
            "192.168.1.1",
        )],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let a = active(&client, &path(&nm.active_path("Home wifi").await.unwrap())).await;
    assert_eq!(a.conn_type().await.unwrap(), "802-11-wireless");
    let dev = a.devices().await.unwrap().remove(0);
    let d = device(&client, &dev).await;
    assert_eq!(d.device_type().await.unwrap(), DEVICE_TYPE_WIFI);
    assert_eq!(d.interface().await.unwrap(), "wlp2s0");
    let w = wireless::WirelessProxy::builder(&client)
        .path(dev.clone())
        .build()
        .await
        .unwrap();
    let ap_path = w.active_access_point().await.unwrap();
    assert_ne!(ap_path, root());
    assert_eq!(a.specific_object().await.unwrap(), ap_path);
    assert_eq!(w.access_points().await.unwrap(), vec![ap_path.clone()]);
    let ap = access_point::AccessPointProxy::builder(&client)
        .path(ap_path)
        .build()
        .await
        .unwrap();
    assert_eq!(ap.ssid().await.unwrap(), b"HomeNet-5G");
}

#[tokio::test]
async fn connectivity_metered_and_primary_can_be_set() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![
            ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"),
            ActiveSpec::wifi("Cafe", "wlan0", "Cafe Free", "10.0.0.1"),
        ],
        CONNECTIVITY_PORTAL,
    )
    .await
    .unwrap();
    let m = manager(&client).await;
    // The first initial connection is primary.
    assert_eq!(
        m.primary_connection().await.unwrap().as_str(),
        nm.active_path("ISP-A").await.unwrap()
    );
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_PORTAL);
    assert_eq!(m.state().await.unwrap(), NM_STATE_CONNECTED_SITE);

    let mut signals = Signals::subscribe(&client).await;
    nm.set_connectivity(CONNECTIVITY_FULL).await.unwrap();
    let seen = signals
        .until(|s| is_manager_change(s, "Connectivity", &OwnedVariant::from(4u32)))
        .await;
    let Seen::Props { changed, .. } = seen.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(changed.get("State"), Some(&OwnedVariant::from(70u32)));

    nm.set_metered("ISP-A", true).await.unwrap();
    signals
        .until(|s| is_manager_change(s, "Metered", &OwnedVariant::from(METERED_YES)))
        .await;
    let eth0 = path(&nm.device_path("eth0").await.unwrap());
    assert_eq!(
        device(&client, &eth0).await.metered().await.unwrap(),
        METERED_YES
    );

    // Metered on a non-primary link changes its device only.
    nm.set_metered_value("Cafe", METERED_GUESS_YES)
        .await
        .unwrap();
    let wlan0 = path(&nm.device_path("wlan0").await.unwrap());
    assert_eq!(
        device(&client, &wlan0).await.metered().await.unwrap(),
        METERED_GUESS_YES
    );
    assert_eq!(m.metered().await.unwrap(), METERED_YES);

    let cafe = path(&nm.active_path("Cafe").await.unwrap());
    nm.set_primary("Cafe").await.unwrap();
    signals
        .until(|s| {
            is_manager_change(
                s,
                "PrimaryConnection",
                &OwnedVariant::from(cafe.clone().into_inner()),
            )
        })
        .await;
    assert_eq!(m.metered().await.unwrap(), METERED_GUESS_YES);
    assert_eq!(m.primary_connection_type().await.unwrap(), TYPE_WIFI);
    assert!(nm.set_primary("nope").await.is_err());
}

#[tokio::test]
async fn a_new_connection_on_a_busy_interface_replaces_the_old_one() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::wifi("Home", "wlan0", "HomeNet", "192.168.1.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let dev = nm.device_path("wlan0").await.unwrap();
    nm.activate(ActiveSpec::wifi("Cafe", "wlan0", "Cafe Free", "10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(nm.active_ids().await, ["Cafe"]);
    assert_eq!(nm.device_path("wlan0").await.unwrap(), dev);
    let m = manager(&client).await;
    assert_eq!(m.active_connections().await.unwrap().len(), 1);
    // A VPN rides on top.
    let vpn = nm
        .activate(ActiveSpec::vpn("Work VPN", "tun0", "172.16.0.1"))
        .await
        .unwrap();
    assert_eq!(nm.active_ids().await, ["Cafe", "Work VPN"]);
    assert_eq!(m.primary_connection().await.unwrap().as_str(), vpn);
    assert!(active(&client, &path(&vpn)).await.vpn().await.unwrap());
    assert!(
        nm.activate(ActiveSpec::vpn("Work VPN", "tun0", "172.16.0.1"))
            .await
            .is_err()
    );
}

// ---- saved profiles and ActivateConnection --------------------------------------------------

const SETTINGS_PATH: &str = "/org/freedesktop/NetworkManager/Settings";

async fn call<B, R>(
    conn: &Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::wire::DynamicType,
    R: for<'d> serde::Deserialize<'d> + zbus::wire::Type,
{
    let reply = conn
        .call_method(Some(NM_BUS_NAME), path, Some(iface), method, body)
        .await?;
    reply.body().deserialize()
}

async fn list_connections(conn: &Connection) -> Vec<OwnedObjectPath> {
    call(
        conn,
        SETTINGS_PATH,
        "org.freedesktop.NetworkManager.Settings",
        "ListConnections",
        &(),
    )
    .await
    .expect("ListConnections")
}

#[tokio::test]
async fn saved_profiles_are_listed_and_activated_like_nm() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(&bus.address, vec![], CONNECTIVITY_NONE)
        .await
        .unwrap();
    assert!(list_connections(&client).await.is_empty());
    let a = nm
        .add_profile(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    let b = nm
        .add_profile(ActiveSpec::wifi("Home", "wlan0", "Home 5G", "192.168.1.1"))
        .await
        .unwrap();
    assert_eq!(list_connections(&client).await, [path(&a), path(&b)]);
    let by_uuid: OwnedObjectPath = call(
        &client,
        SETTINGS_PATH,
        "org.freedesktop.NetworkManager.Settings",
        "GetConnectionByUuid",
        &(ActiveSpec::wifi("Home", "wlan0", "Home 5G", "192.168.1.1").uuid,),
    )
    .await
    .unwrap();
    assert_eq!(by_uuid, path(&b));
    let settings: HashMap<String, HashMap<String, OwnedVariant>> = call(
        &client,
        &b,
        "org.freedesktop.NetworkManager.Settings.Connection",
        "GetSettings",
        &(),
    )
    .await
    .unwrap();
    assert_eq!(string(&settings["connection"]["id"]), "Home");
    assert_eq!(string(&settings["connection"]["interface-name"]), "wlan0");
    let ssid: Vec<u8> = settings["802-11-wireless"]["ssid"]
        .try_clone()
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(ssid, b"Home 5G");
    // Saved is not active.
    let m = manager(&client).await;
    assert!(m.active_connections().await.unwrap().is_empty());

    let mut signals = Signals::subscribe(&client).await;
    let active_path: OwnedObjectPath = call(
        &client,
        NM_PATH,
        "org.freedesktop.NetworkManager",
        "ActivateConnection",
        &(path(&a), root(), root()),
    )
    .await
    .unwrap();
    assert!(
        active_path
            .as_str()
            .starts_with("/org/freedesktop/NetworkManager/ActiveConnection/")
    );
    // It goes through activating to activated, and takes the default route.
    let seen = signals
        .until(|s| matches!(s, Seen::State { path, state, .. } if *path == active_path.as_str() && *state == ACTIVE_STATE_ACTIVATED))
        .await;
    assert!(seen.iter().any(|s| matches!(s, Seen::State { path, state, .. } if *path == active_path.as_str() && *state == ACTIVE_STATE_ACTIVATING)));
    let mut primary = m.primary_connection().await.unwrap();
    for _ in 0..100 {
        if primary == active_path {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        primary = m.primary_connection().await.unwrap();
    }
    assert_eq!(primary, active_path);
    let ac = active(&client, &active_path).await;
    assert_eq!(ac.id().await.unwrap(), "ISP-A");
    assert_eq!(nm.primary_id().await.as_deref(), Some("ISP-A"));
    assert_eq!(m.state().await.unwrap(), NM_STATE_CONNECTED_GLOBAL);
}

#[tokio::test]
async fn activate_connection_errors_are_nms() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(&bus.address, vec![], CONNECTIVITY_NONE)
        .await
        .unwrap();
    let a = nm
        .add_profile(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    let name = |r: zbus::Result<OwnedObjectPath>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => panic!("expected an error, got {other:?}"),
    };
    let unknown = call(
        &client,
        NM_PATH,
        "org.freedesktop.NetworkManager",
        "ActivateConnection",
        &(
            path("/org/freedesktop/NetworkManager/Settings/999999"),
            root(),
            root(),
        ),
    )
    .await;
    assert_eq!(
        name(unknown),
        "org.freedesktop.NetworkManager.UnknownConnection"
    );
    nm.set_network_control(false);
    let denied = call(
        &client,
        NM_PATH,
        "org.freedesktop.NetworkManager",
        "ActivateConnection",
        &(path(&a), root(), root()),
    )
    .await;
    assert_eq!(
        name(denied),
        "org.freedesktop.NetworkManager.PermissionDenied"
    );
    assert!(nm.active_ids().await.is_empty());
}

#[tokio::test]
async fn the_object_manager_gives_the_whole_state_and_follows_exports() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let om = fdo::ObjectManagerProxy::builder(&client)
        .destination(NM_BUS_NAME)
        .path(NM_OBJECT_MANAGER_PATH)
        .build()
        .await
        .unwrap();
    let objects = om.get_managed_objects().await.unwrap();
    let by_path: HashMap<String, _> = objects
        .into_iter()
        .map(|(path, interfaces)| (path.to_string(), interfaces))
        .collect();
    let a = nm.active_path("ISP-A").await.unwrap();
    let manager = &by_path[NM_PATH]["org.freedesktop.NetworkManager"];
    assert_eq!(
        manager["PrimaryConnection"],
        OwnedVariant::from(path(&a).into_inner())
    );
    let active = &by_path[&a]["org.freedesktop.NetworkManager.Connection.Active"];
    assert_eq!(string(&active["Id"]), "ISP-A");
    let ip4_path = OwnedObjectPath::try_from(active["Ip4Config"].try_clone().unwrap()).unwrap();
    assert_eq!(
        string(&by_path[ip4_path.as_str()]["org.freedesktop.NetworkManager.IP4Config"]["Gateway"]),
        "192.0.2.1"
    );
    let eth0 = nm.device_path("eth0").await.unwrap();
    assert_eq!(
        string(&by_path[&eth0]["org.freedesktop.NetworkManager.Device"]["Interface"]),
        "eth0"
    );
    // Only real objects, no empty intermediate nodes.
    assert!(
        by_path.values().all(|interfaces| !interfaces.is_empty()),
        "{:?}",
        by_path.keys()
    );
    assert!(!by_path.contains_key("/org/freedesktop/NetworkManager/ActiveConnection"));

    let mut signals = Signals::subscribe(&client).await;
    let home = nm
        .activate(ActiveSpec::wifi("Home", "wlan0", "HomeNet", "203.0.113.1"))
        .await
        .unwrap();
    let seen = signals
        .until(|s| matches!(s, Seen::Added { object, .. } if *object == home))
        .await;
    let Seen::Added { interfaces, .. } = seen.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(
        interfaces,
        &["org.freedesktop.NetworkManager.Connection.Active"]
    );
    // The wifi device appeared before its connection did.
    let wlan0 = nm.device_path("wlan0").await.unwrap();
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Added { object, .. } if *object == wlan0)),
        "{seen:#?}"
    );
    nm.deactivate("Home").await.unwrap();
    signals
        .until(|s| {
            matches!(s, Seen::Removed { object, interfaces } if *object == home
                && interfaces == &["org.freedesktop.NetworkManager.Connection.Active"])
        })
        .await;
    let after = om.get_managed_objects().await.unwrap();
    assert!(!after.keys().any(|p| p.as_str() == home));
    assert!(after.keys().any(|p| p.as_str() == wlan0));
}

/// NM 1.42 after the primary link lost its carrier beside a healthy one: the fake can be put in
/// that stale state (PrimaryConnection the healthy link, its device's Ip4Connectivity FULL,
/// the manager's Connectivity NONE and State CONNECTED_SITE), and a device's connectivity
/// changing is announced with PropertiesChanged, as NM does.
#[tokio::test]
async fn the_fake_holds_nm_1_42s_stale_global_connectivity() {
    let (bus, client) = system_bus().await;
    let nm = FakeNm::start(
        &bus.address,
        vec![
            ActiveSpec::ethernet("ISP-A", "veth-a", "192.0.2.1"),
            ActiveSpec::ethernet("ISP-B", "veth-b", "198.51.100.1"),
        ],
        CONNECTIVITY_FULL,
    )
    .await
    .unwrap();
    let b_device = path(&nm.device_path("veth-b").await.unwrap());
    let d = device(&client, &b_device).await;
    assert_eq!(d.ip4_connectivity().await.unwrap(), CONNECTIVITY_UNKNOWN);
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .path(b_device.clone())
        .member("PropertiesChanged")
        .build()
        .expect("match rule");
    let mut changes = MessageStream::for_match_rule(rule, &client, None)
        .await
        .unwrap();

    nm.set_device_connectivity("veth-b", CONNECTIVITY_FULL, CONNECTIVITY_NONE)
        .await
        .unwrap();
    let signal = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("PropertiesChanged for the device")
        .unwrap()
        .unwrap();
    let (iface, changed, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
        signal.body().deserialize().unwrap();
    assert_eq!(iface, "org.freedesktop.NetworkManager.Device");
    assert_eq!(number(&changed["Ip4Connectivity"]), CONNECTIVITY_FULL);
    assert_eq!(number(&changed["Ip6Connectivity"]), CONNECTIVITY_NONE);

    nm.set_connectivity(CONNECTIVITY_NONE).await.unwrap();
    nm.set_primary("ISP-B").await.unwrap();
    let m = manager(&client).await;
    assert_eq!(
        m.primary_connection().await.unwrap().as_str(),
        nm.active_path("ISP-B").await.unwrap()
    );
    assert_eq!(m.connectivity().await.unwrap(), CONNECTIVITY_NONE);
    assert_eq!(m.state().await.unwrap(), NM_STATE_CONNECTED_SITE);
    assert_eq!(d.ip4_connectivity().await.unwrap(), CONNECTIVITY_FULL);
    assert_eq!(d.ip6_connectivity().await.unwrap(), CONNECTIVITY_NONE);
}
