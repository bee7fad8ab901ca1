//! An NM-shaped service: a fake NetworkManager that behaves like real NetworkManager 1.42 on the
//! (private) system bus, as far as linkrelay looks at it.
//!
//! What it serves, under the well-known name [`NM_BUS_NAME`]:
//!
//! - the manager `/org/freedesktop/NetworkManager` (`org.freedesktop.NetworkManager`):
//!   PrimaryConnection, PrimaryConnectionType, ActiveConnections, ActivatingConnection, State,
//!   Connectivity, Metered, NetworkingEnabled, Version "1.42.4", Devices, AllDevices, ... and the
//!   methods GetDevices, GetAllDevices, CheckConnectivity;
//! - active connections `/org/freedesktop/NetworkManager/ActiveConnection/<n>`
//!   (`org.freedesktop.NetworkManager.Connection.Active`, with the `StateChanged(u, u)` signal);
//! - devices `/org/freedesktop/NetworkManager/Devices/<n>` (`...Device`, and for wifi
//!   `...Device.Wireless`), one per interface name, kept when their connection goes down; their
//!   `Ip4Connectivity`/`Ip6Connectivity` are 0 (unknown) until
//!   [`FakeNm::set_device_connectivity`] sets them, apart from the manager's `Connectivity` (so
//!   NM 1.42's stale global value after a carrier loss can be played);
//! - access points `/org/freedesktop/NetworkManager/AccessPoint/<n>` (`...AccessPoint`, Ssid);
//! - IPv4 configurations `/org/freedesktop/NetworkManager/IP4Config/<n>` (`...IP4Config`);
//! - profiles `/org/freedesktop/NetworkManager/Settings/<n>`
//!   (`...Settings.Connection`, GetSettings), listed by the settings object
//!   `/org/freedesktop/NetworkManager/Settings` (`...Settings`: ListConnections,
//!   GetConnectionByUuid, Connections); [`FakeNm::add_profile`] saves one without activating
//!   it, and the manager's `ActivateConnection(connection, device, specific_object)` brings a
//!   saved profile up the way [`FakeNm::activate`] does, unless
//!   [`FakeNm::set_network_control`] took the caller's polkit permission away
//!   (`org.freedesktop.NetworkManager.PermissionDenied`). An unknown profile gets
//!   `org.freedesktop.NetworkManager.UnknownConnection`.
//! - an `org.freedesktop.DBus.ObjectManager` at `/org/freedesktop` ([`NM_OBJECT_MANAGER_PATH`]):
//!   GetManagedObjects gives the whole state in one call; InterfacesAdded and InterfacesRemoved
//!   follow objects as they are exported and unexported.
//!
//! Like real NM, every number `<n>` comes from a process-wide counter and is never reused (not
//! even by another [`FakeNm`] started later in the same test process); changes are announced
//! only with the standard `org.freedesktop.DBus.Properties.PropertiesChanged` (one signal per
//! object and step, carrying every property of that object that changed in the step) plus
//! `Connection.Active.StateChanged` (and the ObjectManager's InterfacesAdded/Removed); all
//! objects are exported before the name is requested.
//!
//! Where this model follows real NM rather than the simplest reading of NM's D-Bus API:
//! - manager `State` is 70 (connected-global) while there is a primary connection and
//!   Connectivity is full (4) or unknown (0), and 60 (connected-site) behind a portal or with
//!   limited/no connectivity, as NM computes it; 40 (connecting) while the only connection is
//!   activating; 20 without connections;
//! - manager `Metered` is 0 (unknown) when there is no primary connection;
//! - activating a connection on an interface that already carries one (VPNs aside) first
//!   deactivates the old one: a device has one active connection; so does activating a profile
//!   that is already active (NM re-activates it, under a new path);
//! - `ActivateConnection` replies with the new active connection's path as soon as the path is
//!   allocated; the object appears (state 1, then 2) right after. Real NM exports it before it
//!   replies; the fake cannot without waiting on itself. A client should not count on either
//!   order and watch for the object, as nmcli does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use zbus::object_server::{Interface, InterfaceRef, SignalEmitter};
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant, fdo, interface};

/// NetworkManager's well-known bus name.
pub const NM_BUS_NAME: &str = "org.freedesktop.NetworkManager";
/// The manager object's path.
pub const NM_PATH: &str = "/org/freedesktop/NetworkManager";
/// The version the fake reports.
pub const NM_VERSION: &str = "1.42.4";

/// `NMState`: no connection.
pub const NM_STATE_DISCONNECTED: u32 = 20;
/// `NMState`: a connection is activating and none is up.
pub const NM_STATE_CONNECTING: u32 = 40;
/// `NMState`: connected, but without a default route.
pub const NM_STATE_CONNECTED_LOCAL: u32 = 50;
/// `NMState`: connected with a default route, but the Internet is not reachable (portal,
/// limited or failed connectivity check).
pub const NM_STATE_CONNECTED_SITE: u32 = 60;
/// `NMState`: connected to the Internet.
pub const NM_STATE_CONNECTED_GLOBAL: u32 = 70;

/// `NMConnectivityState`: unknown (checking disabled).
pub const CONNECTIVITY_UNKNOWN: u32 = 0;
/// `NMConnectivityState`: no network.
pub const CONNECTIVITY_NONE: u32 = 1;
/// `NMConnectivityState`: behind a captive portal.
pub const CONNECTIVITY_PORTAL: u32 = 2;
/// `NMConnectivityState`: a network, but no Internet.
pub const CONNECTIVITY_LIMITED: u32 = 3;
/// `NMConnectivityState`: the Internet is reachable.
pub const CONNECTIVITY_FULL: u32 = 4;

/// `NMMetered`: unknown.
pub const METERED_UNKNOWN: u32 = 0;
/// `NMMetered`: metered (set by the profile).
pub const METERED_YES: u32 = 1;
/// `NMMetered`: not metered (set by the profile).
pub const METERED_NO: u32 = 2;
/// `NMMetered`: guessed metered (what real NM reports for mobile broadband by default).
pub const METERED_GUESS_YES: u32 = 3;
/// `NMMetered`: guessed not metered (what real NM reports for most ethernet and wifi).
pub const METERED_GUESS_NO: u32 = 4;

/// `NMActiveConnectionState`: activating.
pub const ACTIVE_STATE_ACTIVATING: u32 = 1;
/// `NMActiveConnectionState`: activated.
pub const ACTIVE_STATE_ACTIVATED: u32 = 2;
/// `NMActiveConnectionState`: deactivating.
pub const ACTIVE_STATE_DEACTIVATING: u32 = 3;
/// `NMActiveConnectionState`: deactivated.
pub const ACTIVE_STATE_DEACTIVATED: u32 = 4;

/// `NMActiveConnectionStateReason` sent with activation steps: none.
pub const ACTIVE_REASON_NONE: u32 = 1;
/// `NMActiveConnectionStateReason` sent by [`FakeNm::deactivate`]: the user disconnected.
pub const ACTIVE_REASON_USER_DISCONNECTED: u32 = 2;

/// `NMDeviceState`: disconnected (available, no connection).
pub const DEVICE_STATE_DISCONNECTED: u32 = 30;
/// `NMDeviceState`: preparing a connection.
pub const DEVICE_STATE_PREPARE: u32 = 40;
/// `NMDeviceState`: getting IP configuration.
pub const DEVICE_STATE_IP_CONFIG: u32 = 70;
/// `NMDeviceState`: activated.
pub const DEVICE_STATE_ACTIVATED: u32 = 100;
/// `NMDeviceState`: deactivating.
pub const DEVICE_STATE_DEACTIVATING: u32 = 110;

/// `NMDeviceType`: ethernet.
pub const DEVICE_TYPE_ETHERNET: u32 = 1;
/// `NMDeviceType`: wifi.
pub const DEVICE_TYPE_WIFI: u32 = 2;
/// `NMDeviceType`: generic.
pub const DEVICE_TYPE_GENERIC: u32 = 14;
/// `NMDeviceType`: mobile broadband modem.
pub const DEVICE_TYPE_MODEM: u32 = 8;
/// `NMDeviceType`: tun/tap (what a VPN plugin's tunnel shows up as).
pub const DEVICE_TYPE_TUN: u32 = 16;
/// `NMDeviceType`: WireGuard.
pub const DEVICE_TYPE_WIREGUARD: u32 = 29;

/// Connection type of an ethernet profile.
pub const TYPE_ETHERNET: &str = "802-3-ethernet";
/// Connection type of a wifi profile.
pub const TYPE_WIFI: &str = "802-11-wireless";
/// Connection type of a VPN profile (NM's VPN plugins).
pub const TYPE_VPN: &str = "vpn";
/// Connection type of a mobile broadband (GSM) profile.
pub const TYPE_GSM: &str = "gsm";

const ACTIVE_PREFIX: &str = "/org/freedesktop/NetworkManager/ActiveConnection";
const DEVICE_PREFIX: &str = "/org/freedesktop/NetworkManager/Devices";
const IP4_PREFIX: &str = "/org/freedesktop/NetworkManager/IP4Config";
const AP_PREFIX: &str = "/org/freedesktop/NetworkManager/AccessPoint";
const SETTINGS_PREFIX: &str = "/org/freedesktop/NetworkManager/Settings";

// Process-wide counters: object paths are never reused, not even across FakeNm instances.
static NEXT_ACTIVE: AtomicU32 = AtomicU32::new(1);
static NEXT_DEVICE: AtomicU32 = AtomicU32::new(1);
static NEXT_IP4: AtomicU32 = AtomicU32::new(1);
static NEXT_AP: AtomicU32 = AtomicU32::new(1);
static NEXT_SETTINGS: AtomicU32 = AtomicU32::new(1);

fn next_path(counter: &AtomicU32, prefix: &str) -> anyhow::Result<OwnedObjectPath> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    OwnedObjectPath::try_from(format!("{prefix}/{n}")).context("building an object path")
}

fn root_path() -> OwnedObjectPath {
    OwnedObjectPath::from(zbus::ObjectPath::from_static_str_unchecked("/"))
}

/// An active connection to bring up: the profile's identity plus what NM would learn about
/// the link (gateway, DNS domains, SSID, metered, address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSpec {
    /// The profile's name (`connection.id`), e.g. "ISP-A"; the handle used by [`FakeNm`]'s
    /// methods, so unique among active connections.
    pub id: String,
    /// The profile's UUID (the constructors derive a stable one from the id).
    pub uuid: String,
    /// The profile's type: [`TYPE_ETHERNET`], [`TYPE_WIFI`], [`TYPE_VPN`], [`TYPE_GSM`], ...
    pub conn_type: String,
    /// The kernel interface it runs on, e.g. "eth0"; one device object per interface name.
    pub interface: String,
    /// The IPv4 default gateway (also served as the one name server), if any.
    pub gateway: Option<String>,
    /// DNS domains (served as both IP4Config Domains and Searches).
    pub domains: Vec<String>,
    /// The SSID, for wifi.
    pub ssid: Option<String>,
    /// Whether the link is metered (Device.Metered 1) or not (2).
    pub metered: bool,
    /// The IPv4 address with prefix, e.g. "192.0.2.10/24"; when `None` and there is a gateway,
    /// `<gateway's /24>.100/24` (or `.101` when the gateway is `.100`).
    pub address: Option<String>,
}

impl ActiveSpec {
    fn base(id: &str, conn_type: &str, interface: &str) -> Self {
        ActiveSpec {
            id: id.to_owned(),
            uuid: uuid_from_id(id),
            conn_type: conn_type.to_owned(),
            interface: interface.to_owned(),
            gateway: None,
            domains: Vec::new(),
            ssid: None,
            metered: false,
            address: None,
        }
    }

    /// A wired connection, not metered.
    pub fn ethernet(id: &str, interface: &str, gateway: &str) -> Self {
        ActiveSpec {
            gateway: Some(gateway.to_owned()),
            ..ActiveSpec::base(id, TYPE_ETHERNET, interface)
        }
    }

    /// A wifi connection to `ssid`, not metered.
    pub fn wifi(id: &str, interface: &str, ssid: &str, gateway: &str) -> Self {
        ActiveSpec {
            gateway: Some(gateway.to_owned()),
            ssid: Some(ssid.to_owned()),
            ..ActiveSpec::base(id, TYPE_WIFI, interface)
        }
    }

    /// A mobile broadband connection, metered.
    pub fn gsm(id: &str, interface: &str, gateway: &str) -> Self {
        ActiveSpec {
            gateway: Some(gateway.to_owned()),
            metered: true,
            ..ActiveSpec::base(id, TYPE_GSM, interface)
        }
    }

    /// A VPN connection whose tunnel is `interface` (e.g. "tun0"), taking the default route.
    pub fn vpn(id: &str, interface: &str, gateway: &str) -> Self {
        ActiveSpec {
            gateway: Some(gateway.to_owned()),
            ..ActiveSpec::base(id, TYPE_VPN, interface)
        }
    }

    /// With these DNS domains.
    pub fn with_domains<I, S>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.domains = domains.into_iter().map(Into::into).collect();
        self
    }

    /// With this metered flag.
    pub fn with_metered(mut self, metered: bool) -> Self {
        self.metered = metered;
        self
    }

    /// With this address ("192.0.2.10/24").
    pub fn with_address(mut self, address: &str) -> Self {
        self.address = Some(address.to_owned());
        self
    }

    fn is_vpn(&self) -> bool {
        self.conn_type == TYPE_VPN
    }

    fn device_type(&self) -> u32 {
        match self.conn_type.as_str() {
            TYPE_ETHERNET => DEVICE_TYPE_ETHERNET,
            TYPE_WIFI => DEVICE_TYPE_WIFI,
            TYPE_GSM | "cdma" => DEVICE_TYPE_MODEM,
            TYPE_VPN | "tun" => DEVICE_TYPE_TUN,
            "wireguard" => DEVICE_TYPE_WIREGUARD,
            _ => DEVICE_TYPE_GENERIC,
        }
    }

    /// The address and prefix to serve, if any.
    fn address_and_prefix(&self) -> anyhow::Result<Option<(Ipv4Addr, u32)>> {
        if let Some(address) = &self.address {
            let (ip, prefix) = match address.split_once('/') {
                Some((ip, prefix)) => (
                    ip,
                    prefix
                        .parse::<u32>()
                        .ok()
                        .filter(|p| *p <= 32)
                        .ok_or_else(|| anyhow!("bad prefix in address {address:?}"))?,
                ),
                None => (address.as_str(), 24),
            };
            let ip = ip
                .parse::<Ipv4Addr>()
                .with_context(|| format!("bad IPv4 address {address:?}"))?;
            return Ok(Some((ip, prefix)));
        }
        let Some(gateway) = &self.gateway else {
            return Ok(None);
        };
        let gw = gateway
            .parse::<Ipv4Addr>()
            .with_context(|| format!("bad IPv4 gateway {gateway:?}"))?;
        let [a, b, c, d] = gw.octets();
        let host = if d == 100 { 101 } else { 100 };
        Ok(Some((Ipv4Addr::new(a, b, c, host), 24)))
    }
}

/// A stable UUID-shaped string derived from a profile id (FNV-1a, version nibble 5).
fn uuid_from_id(id: &str) -> String {
    fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
        let mut hash = seed;
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
    let hi = fnv1a(0xcbf2_9ce4_8422_2325, id.as_bytes());
    let lo = fnv1a(0x8422_2325_cbf2_9ce4, id.as_bytes());
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_5000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

// ---------------------------------------------------------------------------------------------
// The served objects. Each holds the values of its properties; FakeNm changes them through
// `update`, which emits one PropertiesChanged with whatever changed.

/// Errors of the fake NM, named as real NM names them.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.NetworkManager")]
pub enum NmError {
    /// A D-Bus level error.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The profile path is not a saved profile.
    UnknownConnection(String),
    /// polkit said no.
    PermissionDenied(String),
    /// Anything else.
    Failed(String),
}

struct Manager {
    /// What `ActivateConnection` works on (the fake's own state and switches).
    shared: Shared,
    devices: Vec<OwnedObjectPath>,
    active_connections: Vec<OwnedObjectPath>,
    primary_connection: OwnedObjectPath,
    primary_connection_type: String,
    activating_connection: OwnedObjectPath,
    metered: u32,
    state: u32,
    connectivity: u32,
}

#[interface(name = "org.freedesktop.NetworkManager", introspection_docs = false)]
impl Manager {
    /// The realized devices.
    fn get_devices(&self) -> Vec<OwnedObjectPath> {
        self.devices.clone()
    }

    /// All devices (the fake has no unrealized ones).
    fn get_all_devices(&self) -> Vec<OwnedObjectPath> {
        self.devices.clone()
    }

    /// Re-check connectivity: the fake answers the current value.
    fn check_connectivity(&self) -> u32 {
        self.connectivity
    }

    /// Activates saved profile `connection` (device and specific object may be "/").
    async fn activate_connection(
        &self,
        connection: OwnedObjectPath,
        _device: OwnedObjectPath,
        _specific_object: OwnedObjectPath,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, NmError> {
        if !self.shared.network_control.load(Ordering::SeqCst) {
            return Err(NmError::PermissionDenied(
                "Not authorized to control networking.".into(),
            ));
        }
        let spec = match conn
            .object_server()
            .interface::<_, SettingsConnection>(connection.as_str())
            .await
        {
            Ok(iref) => iref.get().await.spec.clone(),
            Err(_) => {
                return Err(NmError::UnknownConnection(format!(
                    "Connection '{connection}' is not available"
                )));
            }
        };
        let path =
            next_path(&NEXT_ACTIVE, ACTIVE_PREFIX).map_err(|e| NmError::Failed(e.to_string()))?;
        let nm = FakeNm {
            conn: conn.clone(),
            bus_address: self.shared.bus_address.clone(),
            inner: self.shared.inner.clone(),
            network_control: self.shared.network_control.clone(),
            registry: self.shared.registry.clone(),
        };
        let reply = path.clone();
        // Off this handler: activation updates this very object, which the handler holds.
        tokio::spawn(async move {
            let mut inner = nm.inner.lock().await;
            if inner.actives.iter().any(|a| a.spec.id == spec.id)
                && let Err(e) = nm.deactivate_locked(&mut inner, &spec.id).await
            {
                tracing::warn!("fake NM: re-activation of {}: {e:#}", spec.id);
                return;
            }
            if let Err(e) = nm.activate_at(&mut inner, spec, Some(path)).await {
                tracing::warn!("fake NM: ActivateConnection: {e:#}");
            }
        });
        Ok(reply)
    }

    #[zbus(property, name = "Devices")]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        self.devices.clone()
    }

    #[zbus(property, name = "AllDevices")]
    fn all_devices(&self) -> Vec<OwnedObjectPath> {
        self.devices.clone()
    }

    #[zbus(property, name = "NetworkingEnabled")]
    fn networking_enabled(&self) -> bool {
        true
    }

    #[zbus(property, name = "WirelessEnabled")]
    fn wireless_enabled(&self) -> bool {
        true
    }

    #[zbus(property, name = "WirelessHardwareEnabled")]
    fn wireless_hardware_enabled(&self) -> bool {
        true
    }

    #[zbus(property, name = "ActiveConnections")]
    fn active_connections(&self) -> Vec<OwnedObjectPath> {
        self.active_connections.clone()
    }

    #[zbus(property, name = "PrimaryConnection")]
    fn primary_connection(&self) -> OwnedObjectPath {
        self.primary_connection.clone()
    }

    #[zbus(property, name = "PrimaryConnectionType")]
    fn primary_connection_type(&self) -> String {
        self.primary_connection_type.clone()
    }

    #[zbus(property, name = "Metered")]
    fn metered(&self) -> u32 {
        self.metered
    }

    #[zbus(property, name = "ActivatingConnection")]
    fn activating_connection(&self) -> OwnedObjectPath {
        self.activating_connection.clone()
    }

    #[zbus(property, name = "Startup")]
    fn startup(&self) -> bool {
        false
    }

    #[zbus(property, name = "Version")]
    fn version(&self) -> String {
        NM_VERSION.to_owned()
    }

    #[zbus(property, name = "State")]
    fn state(&self) -> u32 {
        self.state
    }

    #[zbus(property, name = "Connectivity")]
    fn connectivity(&self) -> u32 {
        self.connectivity
    }

    #[zbus(property, name = "ConnectivityCheckAvailable")]
    fn connectivity_check_available(&self) -> bool {
        true
    }

    #[zbus(property, name = "ConnectivityCheckEnabled")]
    fn connectivity_check_enabled(&self) -> bool {
        true
    }
}

struct Active {
    id: String,
    uuid: String,
    conn_type: String,
    devices: Vec<OwnedObjectPath>,
    state: u32,
    default: bool,
    ip4_config: OwnedObjectPath,
    vpn: bool,
    connection: OwnedObjectPath,
    specific_object: OwnedObjectPath,
}

#[interface(
    name = "org.freedesktop.NetworkManager.Connection.Active",
    introspection_docs = false
)]
impl Active {
    #[zbus(property, name = "Connection")]
    fn connection(&self) -> OwnedObjectPath {
        self.connection.clone()
    }

    #[zbus(property, name = "SpecificObject")]
    fn specific_object(&self) -> OwnedObjectPath {
        self.specific_object.clone()
    }

    #[zbus(property, name = "Id")]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[zbus(property, name = "Uuid")]
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    #[zbus(property, name = "Type")]
    fn conn_type(&self) -> String {
        self.conn_type.clone()
    }

    #[zbus(property, name = "Devices")]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        self.devices.clone()
    }

    #[zbus(property, name = "State")]
    fn state(&self) -> u32 {
        self.state
    }

    #[zbus(property, name = "Default")]
    fn default_route(&self) -> bool {
        self.default
    }

    #[zbus(property, name = "Ip4Config")]
    fn ip4_config(&self) -> OwnedObjectPath {
        self.ip4_config.clone()
    }

    #[zbus(property, name = "Dhcp4Config")]
    fn dhcp4_config(&self) -> OwnedObjectPath {
        root_path()
    }

    #[zbus(property, name = "Default6")]
    fn default6(&self) -> bool {
        false
    }

    #[zbus(property, name = "Ip6Config")]
    fn ip6_config(&self) -> OwnedObjectPath {
        root_path()
    }

    #[zbus(property, name = "Dhcp6Config")]
    fn dhcp6_config(&self) -> OwnedObjectPath {
        root_path()
    }

    #[zbus(property, name = "Vpn")]
    fn vpn(&self) -> bool {
        self.vpn
    }

    #[zbus(property, name = "Master")]
    fn master(&self) -> OwnedObjectPath {
        root_path()
    }

    /// `StateChanged(u state, u reason)`. Renamed in Rust: the `State` property already
    /// generates a `state_changed` (PropertiesChanged) emitter.
    #[zbus(signal, name = "StateChanged")]
    async fn state_changed_signal(
        emitter: &SignalEmitter<'_>,
        state: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

struct Device {
    interface: String,
    device_type: u32,
    metered: u32,
    ip4_config: OwnedObjectPath,
    active_connection: OwnedObjectPath,
    state: u32,
    state_reason: u32,
    /// `NMConnectivityState` of the device's IPv4 and IPv6 (NM >= 1.16); 0 until set with
    /// [`FakeNm::set_device_connectivity`], so tests that only set the manager's see that.
    ip4_connectivity: u32,
    ip6_connectivity: u32,
}

#[interface(
    name = "org.freedesktop.NetworkManager.Device",
    introspection_docs = false
)]
impl Device {
    #[zbus(property, name = "Interface")]
    fn interface(&self) -> String {
        self.interface.clone()
    }

    #[zbus(property, name = "IpInterface")]
    fn ip_interface(&self) -> String {
        // NM reports "" while the device has no IP configuration.
        if self.state == DEVICE_STATE_ACTIVATED {
            self.interface.clone()
        } else {
            String::new()
        }
    }

    #[zbus(property, name = "DeviceType")]
    fn device_type(&self) -> u32 {
        self.device_type
    }

    #[zbus(property, name = "Metered")]
    fn metered(&self) -> u32 {
        self.metered
    }

    #[zbus(property, name = "Ip4Config")]
    fn ip4_config(&self) -> OwnedObjectPath {
        self.ip4_config.clone()
    }

    #[zbus(property, name = "Ip6Config")]
    fn ip6_config(&self) -> OwnedObjectPath {
        root_path()
    }

    #[zbus(property, name = "ActiveConnection")]
    fn active_connection(&self) -> OwnedObjectPath {
        self.active_connection.clone()
    }

    #[zbus(property, name = "State")]
    fn state(&self) -> u32 {
        self.state
    }

    #[zbus(property, name = "StateReason")]
    fn state_reason(&self) -> (u32, u32) {
        (self.state, self.state_reason)
    }

    #[zbus(property, name = "Ip4Connectivity")]
    fn ip4_connectivity(&self) -> u32 {
        self.ip4_connectivity
    }

    #[zbus(property, name = "Ip6Connectivity")]
    fn ip6_connectivity(&self) -> u32 {
        self.ip6_connectivity
    }

    #[zbus(property, name = "Managed")]
    fn managed(&self) -> bool {
        true
    }

    #[zbus(property, name = "Autoconnect")]
    fn autoconnect(&self) -> bool {
        true
    }
}

struct Wireless {
    active_access_point: OwnedObjectPath,
    access_points: Vec<OwnedObjectPath>,
}

#[interface(
    name = "org.freedesktop.NetworkManager.Device.Wireless",
    introspection_docs = false
)]
impl Wireless {
    /// The access points seen.
    fn get_access_points(&self) -> Vec<OwnedObjectPath> {
        self.access_points.clone()
    }

    /// The access points seen, hidden ones included.
    fn get_all_access_points(&self) -> Vec<OwnedObjectPath> {
        self.access_points.clone()
    }

    #[zbus(property, name = "ActiveAccessPoint")]
    fn active_access_point(&self) -> OwnedObjectPath {
        self.active_access_point.clone()
    }

    #[zbus(property, name = "AccessPoints")]
    fn access_points(&self) -> Vec<OwnedObjectPath> {
        self.access_points.clone()
    }

    /// `NM80211Mode`: 2 infrastructure.
    #[zbus(property, name = "Mode")]
    fn mode(&self) -> u32 {
        2
    }

    #[zbus(property, name = "Bitrate")]
    fn bitrate(&self) -> u32 {
        if self.active_access_point.as_str() == "/" {
            0
        } else {
            144_000
        }
    }
}

struct AccessPoint {
    ssid: Vec<u8>,
    hw_address: String,
}

#[interface(
    name = "org.freedesktop.NetworkManager.AccessPoint",
    introspection_docs = false
)]
impl AccessPoint {
    #[zbus(property, name = "Ssid")]
    fn ssid(&self) -> Vec<u8> {
        self.ssid.clone()
    }

    #[zbus(property, name = "HwAddress")]
    fn hw_address(&self) -> String {
        self.hw_address.clone()
    }

    #[zbus(property, name = "Strength")]
    fn strength(&self) -> u8 {
        70
    }

    #[zbus(property, name = "Frequency")]
    fn frequency(&self) -> u32 {
        2437
    }

    #[zbus(property, name = "Mode")]
    fn mode(&self) -> u32 {
        2
    }

    #[zbus(property, name = "MaxBitrate")]
    fn max_bitrate(&self) -> u32 {
        144_000
    }
}

struct Ip4Config {
    address: Option<(Ipv4Addr, u32)>,
    gateway: Option<String>,
    domains: Vec<String>,
}

fn variant_map(entries: Vec<(&str, Variant<'static>)>) -> HashMap<String, Variant<'static>> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[interface(
    name = "org.freedesktop.NetworkManager.IP4Config",
    introspection_docs = false
)]
impl Ip4Config {
    #[zbus(property, name = "AddressData")]
    fn address_data(&self) -> Vec<HashMap<String, Variant<'static>>> {
        self.address
            .iter()
            .map(|(ip, prefix)| {
                variant_map(vec![
                    ("address", Variant::from(ip.to_string())),
                    ("prefix", Variant::from(*prefix)),
                ])
            })
            .collect()
    }

    #[zbus(property, name = "Gateway")]
    fn gateway(&self) -> String {
        self.gateway.clone().unwrap_or_default()
    }

    #[zbus(property, name = "RouteData")]
    fn route_data(&self) -> Vec<HashMap<String, Variant<'static>>> {
        let mut routes = Vec::new();
        if let Some((ip, prefix)) = self.address {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let network = Ipv4Addr::from(u32::from(ip) & mask);
            routes.push(variant_map(vec![
                ("dest", Variant::from(network.to_string())),
                ("prefix", Variant::from(prefix)),
                ("metric", Variant::from(100u32)),
            ]));
        }
        if let Some(gateway) = &self.gateway {
            routes.push(variant_map(vec![
                ("dest", Variant::from("0.0.0.0".to_owned())),
                ("prefix", Variant::from(0u32)),
                ("next-hop", Variant::from(gateway.clone())),
                ("metric", Variant::from(100u32)),
            ]));
        }
        routes
    }

    #[zbus(property, name = "NameserverData")]
    fn nameserver_data(&self) -> Vec<HashMap<String, Variant<'static>>> {
        self.gateway
            .iter()
            .map(|gw| variant_map(vec![("address", Variant::from(gw.clone()))]))
            .collect()
    }

    #[zbus(property, name = "Domains")]
    fn domains(&self) -> Vec<String> {
        self.domains.clone()
    }

    #[zbus(property, name = "Searches")]
    fn searches(&self) -> Vec<String> {
        self.domains.clone()
    }

    #[zbus(property, name = "DnsOptions")]
    fn dns_options(&self) -> Vec<String> {
        Vec::new()
    }

    #[zbus(property, name = "DnsPriority")]
    fn dns_priority(&self) -> i32 {
        100
    }
}

struct SettingsConnection {
    spec: ActiveSpec,
}

#[interface(
    name = "org.freedesktop.NetworkManager.Settings.Connection",
    introspection_docs = false
)]
impl SettingsConnection {
    /// The profile's settings, the few keys the fake knows.
    fn get_settings(&self) -> HashMap<String, HashMap<String, Variant<'static>>> {
        let spec = &self.spec;
        let mut settings = HashMap::new();
        let mut connection = variant_map(vec![
            ("id", Variant::from(spec.id.clone())),
            ("uuid", Variant::from(spec.uuid.clone())),
            ("type", Variant::from(spec.conn_type.clone())),
            (
                "metered",
                Variant::from(if spec.metered { 1i32 } else { 2i32 }),
            ),
        ]);
        if !spec.is_vpn() {
            connection.insert(
                "interface-name".to_owned(),
                Variant::from(spec.interface.clone()),
            );
        }
        settings.insert("connection".to_owned(), connection);
        if let Some(ssid) = &spec.ssid {
            settings.insert(
                TYPE_WIFI.to_owned(),
                variant_map(vec![
                    ("ssid", Variant::from(ssid.as_bytes().to_vec())),
                    ("mode", Variant::from("infrastructure".to_owned())),
                ]),
            );
        }
        settings.insert(
            "ipv4".to_owned(),
            variant_map(vec![("method", Variant::from("auto".to_owned()))]),
        );
        settings
    }

    #[zbus(property, name = "Unsaved")]
    fn unsaved(&self) -> bool {
        false
    }

    #[zbus(property, name = "Flags")]
    fn flags(&self) -> u32 {
        0
    }

    #[zbus(property, name = "Filename")]
    fn filename(&self) -> String {
        format!(
            "/etc/NetworkManager/system-connections/{}.nmconnection",
            self.spec.id
        )
    }
}

struct Settings {
    connections: Vec<OwnedObjectPath>,
    by_uuid: HashMap<String, OwnedObjectPath>,
}

#[interface(
    name = "org.freedesktop.NetworkManager.Settings",
    introspection_docs = false
)]
impl Settings {
    /// The saved profiles.
    fn list_connections(&self) -> Vec<OwnedObjectPath> {
        self.connections.clone()
    }

    /// The saved profile with this UUID.
    fn get_connection_by_uuid(&self, uuid: String) -> Result<OwnedObjectPath, NmError> {
        self.by_uuid.get(&uuid).cloned().ok_or_else(|| {
            NmError::UnknownConnection(format!("No connection with the UUID '{uuid}'"))
        })
    }

    #[zbus(property, name = "Connections")]
    fn connections(&self) -> Vec<OwnedObjectPath> {
        self.connections.clone()
    }

    #[zbus(property, name = "Hostname")]
    fn hostname(&self) -> String {
        "laptop".to_owned()
    }

    #[zbus(property, name = "CanModify")]
    fn can_modify(&self) -> bool {
        true
    }
}

/// What the manager's `ActivateConnection` needs of the fake.
#[derive(Debug, Clone)]
struct Shared {
    bus_address: String,
    inner: Arc<tokio::sync::Mutex<Inner>>,
    network_control: Arc<AtomicBool>,
    registry: Registry,
}

// ---------------------------------------------------------------------------------------------
// org.freedesktop.DBus.ObjectManager at /org/freedesktop, as NM serves it: GetManagedObjects
// returns every exported NM object with all its properties; InterfacesAdded/InterfacesRemoved
// follow exports. (Written here rather than with zbus's `object-manager` feature, which would
// also list the empty intermediate nodes such as .../ActiveConnection.)

/// The kinds of objects the fake exports, to read their properties by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manager,
    Active,
    Device,
    Wireless,
    AccessPoint,
    Ip4Config,
    Settings,
    SettingsList,
}

trait Managed: Interface {
    const KIND: Kind;
}

impl Managed for Manager {
    const KIND: Kind = Kind::Manager;
}
impl Managed for Active {
    const KIND: Kind = Kind::Active;
}
impl Managed for Device {
    const KIND: Kind = Kind::Device;
}
impl Managed for Wireless {
    const KIND: Kind = Kind::Wireless;
}
impl Managed for AccessPoint {
    const KIND: Kind = Kind::AccessPoint;
}
impl Managed for Ip4Config {
    const KIND: Kind = Kind::Ip4Config;
}
impl Managed for SettingsConnection {
    const KIND: Kind = Kind::Settings;
}
impl Managed for Settings {
    const KIND: Kind = Kind::SettingsList;
}

/// Exported objects: path -> kinds of the interfaces there, in export order.
type Registry = Arc<std::sync::Mutex<BTreeMap<String, Vec<Kind>>>>;

fn registry_lock(registry: &Registry) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Kind>>> {
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type InterfacesAndProperties = HashMap<String, HashMap<String, OwnedVariant>>;

/// The properties of the `I` at `path`, if it is exported.
async fn properties_of<I: Interface>(
    conn: &Connection,
    path: &str,
) -> Option<(String, HashMap<String, OwnedVariant>)> {
    let iref = conn.object_server().interface::<_, I>(path).await.ok()?;
    let properties = snapshot(conn, &iref).await.ok()?;
    Some((I::name().to_string(), properties))
}

async fn properties_by_kind(
    conn: &Connection,
    path: &str,
    kind: Kind,
) -> Option<(String, HashMap<String, OwnedVariant>)> {
    match kind {
        Kind::Manager => properties_of::<Manager>(conn, path).await,
        Kind::Active => properties_of::<Active>(conn, path).await,
        Kind::Device => properties_of::<Device>(conn, path).await,
        Kind::Wireless => properties_of::<Wireless>(conn, path).await,
        Kind::AccessPoint => properties_of::<AccessPoint>(conn, path).await,
        Kind::Ip4Config => properties_of::<Ip4Config>(conn, path).await,
        Kind::Settings => properties_of::<SettingsConnection>(conn, path).await,
        Kind::SettingsList => properties_of::<Settings>(conn, path).await,
    }
}

/// Where NM serves its ObjectManager.
pub const NM_OBJECT_MANAGER_PATH: &str = "/org/freedesktop";

struct ObjectManager {
    registry: Registry,
}

#[interface(
    name = "org.freedesktop.DBus.ObjectManager",
    introspection_docs = false
)]
impl ObjectManager {
    /// Every exported NM object with the properties of each of its interfaces.
    async fn get_managed_objects(
        &self,
        #[zbus(connection)] conn: &Connection,
    ) -> HashMap<OwnedObjectPath, InterfacesAndProperties> {
        let objects: Vec<(String, Vec<Kind>)> = registry_lock(&self.registry)
            .iter()
            .map(|(path, kinds)| (path.clone(), kinds.clone()))
            .collect();
        let mut managed = HashMap::new();
        for (path, kinds) in objects {
            let mut interfaces = HashMap::new();
            for kind in kinds {
                if let Some((name, properties)) = properties_by_kind(conn, &path, kind).await {
                    interfaces.insert(name, properties);
                }
            }
            if let (false, Ok(path)) = (interfaces.is_empty(), OwnedObjectPath::try_from(path)) {
                managed.insert(path, interfaces);
            }
        }
        managed
    }

    #[zbus(signal, name = "InterfacesAdded")]
    async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        object_path: OwnedObjectPath,
        interfaces_and_properties: InterfacesAndProperties,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "InterfacesRemoved")]
    async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        object_path: OwnedObjectPath,
        interfaces: Vec<String>,
    ) -> zbus::Result<()>;
}

// ---------------------------------------------------------------------------------------------
// Property updates with PropertiesChanged.

async fn snapshot<I: Interface>(
    conn: &Connection,
    iref: &InterfaceRef<I>,
) -> anyhow::Result<HashMap<String, OwnedVariant>> {
    let guard = iref.get().await;
    Interface::get_all(
        &*guard,
        conn.object_server(),
        conn,
        None,
        iref.signal_emitter(),
    )
    .await
    .map_err(|e| anyhow!("reading the properties of {}: {e}", I::name()))
}

/// Change the object of type `I` at `path` with `change`, then emit one
/// `org.freedesktop.DBus.Properties.PropertiesChanged` with every property whose value changed
/// (none when nothing did), as NM does for a batch of changes on one object.
async fn update<I, F>(conn: &Connection, path: &str, change: F) -> anyhow::Result<()>
where
    I: Interface,
    F: FnOnce(&mut I),
{
    let iref = conn
        .object_server()
        .interface::<_, I>(path)
        .await
        .with_context(|| format!("no {} at {path}", I::name()))?;
    let before = snapshot(conn, &iref).await?;
    {
        let mut guard = iref.get_mut().await;
        change(&mut guard);
    }
    let after = snapshot(conn, &iref).await?;
    let mut changed: HashMap<&str, Variant<'_>> = HashMap::new();
    for (name, value) in &after {
        if before.get(name) != Some(value) {
            changed.insert(name.as_str(), Variant::try_from(value)?);
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    fdo::Properties::properties_changed(
        iref.signal_emitter(),
        I::name(),
        changed,
        Cow::Borrowed(&[]),
    )
    .await
    .with_context(|| format!("emitting PropertiesChanged for {path}"))
}

/// Set an active connection's State, emitting `StateChanged(state, reason)` and then the
/// PropertiesChanged for State.
async fn set_active_state(
    conn: &Connection,
    path: &str,
    state: u32,
    reason: u32,
) -> anyhow::Result<()> {
    let iref = conn
        .object_server()
        .interface::<_, Active>(path)
        .await
        .with_context(|| format!("no active connection at {path}"))?;
    Active::state_changed_signal(iref.signal_emitter(), state, reason)
        .await
        .with_context(|| format!("emitting StateChanged for {path}"))?;
    update::<Active, _>(conn, path, |a| a.state = state).await
}

// ---------------------------------------------------------------------------------------------
// The fake.

#[derive(Debug)]
struct ActiveRecord {
    spec: ActiveSpec,
    path: OwnedObjectPath,
    device: OwnedObjectPath,
    ip4: OwnedObjectPath,
    access_point: Option<OwnedObjectPath>,
    metered: u32,
    /// `NMActiveConnectionState` of the connection.
    state: u32,
}

impl ActiveRecord {
    fn activated(&self) -> bool {
        self.state == ACTIVE_STATE_ACTIVATED
    }
}

#[derive(Debug)]
struct DeviceRecord {
    path: OwnedObjectPath,
    wireless: bool,
    access_points: Vec<(Vec<u8>, OwnedObjectPath)>,
}

#[derive(Debug, Default)]
struct Inner {
    /// In activation order; deactivating ones stay until they are deactivated.
    actives: Vec<ActiveRecord>,
    /// The id of the active connection that holds the default route.
    primary: Option<String>,
    connectivity: u32,
    /// By interface name.
    devices: HashMap<String, DeviceRecord>,
    device_order: Vec<OwnedObjectPath>,
    /// By profile UUID.
    settings: HashMap<String, OwnedObjectPath>,
}

impl Inner {
    fn find(&self, id: &str) -> anyhow::Result<usize> {
        self.actives
            .iter()
            .position(|a| a.spec.id == id)
            .ok_or_else(|| anyhow!("no active connection with id {id:?}"))
    }

    fn primary_record(&self) -> Option<&ActiveRecord> {
        let id = self.primary.as_deref()?;
        self.actives.iter().find(|a| a.spec.id == id)
    }

    fn nm_state(&self) -> u32 {
        if self.primary_record().is_some() {
            if matches!(self.connectivity, CONNECTIVITY_FULL | CONNECTIVITY_UNKNOWN) {
                NM_STATE_CONNECTED_GLOBAL
            } else {
                NM_STATE_CONNECTED_SITE
            }
        } else if self.actives.iter().any(ActiveRecord::activated) {
            NM_STATE_CONNECTED_LOCAL
        } else if self
            .actives
            .iter()
            .any(|a| a.state == ACTIVE_STATE_ACTIVATING)
        {
            NM_STATE_CONNECTING
        } else {
            NM_STATE_DISCONNECTED
        }
    }

    /// Project the model onto the manager object.
    fn apply_to_manager(&self, m: &mut Manager) {
        let primary = self.primary_record();
        m.devices = self.device_order.clone();
        m.active_connections = self.actives.iter().map(|a| a.path.clone()).collect();
        m.primary_connection = primary.map_or_else(root_path, |a| a.path.clone());
        m.primary_connection_type = primary.map_or_else(String::new, |a| a.spec.conn_type.clone());
        m.metered = primary.map_or(METERED_UNKNOWN, |a| a.metered);
        m.activating_connection = self
            .actives
            .iter()
            .rev()
            .find(|a| a.state == ACTIVE_STATE_ACTIVATING)
            .map_or_else(root_path, |a| a.path.clone());
        m.state = self.nm_state();
        m.connectivity = self.connectivity;
    }
}

/// A fake NetworkManager on a test bus; see the [module documentation](self).
///
/// Every method that changes state emits the signals real NM would, in NM's order, and returns
/// once they are sent (so a client that then waits for them will see them).
#[derive(Debug)]
pub struct FakeNm {
    conn: Connection,
    bus_address: String,
    inner: Arc<tokio::sync::Mutex<Inner>>,
    network_control: Arc<AtomicBool>,
    registry: Registry,
}

impl FakeNm {
    /// Connect to the bus at `bus_address`, export the manager and the `initial` active
    /// connections (all activated; the first one is primary, with `Default` true), then own
    /// [`NM_BUS_NAME`]. With connections, Connectivity is `connectivity`; without, PrimaryConnection
    /// is "/", State 20 and Connectivity 1.
    ///
    /// Fails if the name already has an owner (as NM refuses to start twice).
    pub async fn start(
        bus_address: &str,
        initial: Vec<ActiveSpec>,
        connectivity: u32,
    ) -> anyhow::Result<FakeNm> {
        let conn = zbus::connection::Builder::address(bus_address)
            .build()
            .await
            .with_context(|| format!("connecting the fake NM to {bus_address}"))?;
        let shared = Shared {
            bus_address: bus_address.to_owned(),
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                connectivity: CONNECTIVITY_NONE,
                ..Inner::default()
            })),
            network_control: Arc::new(AtomicBool::new(true)),
            registry: Registry::default(),
        };
        let manager = Manager {
            shared: shared.clone(),
            devices: Vec::new(),
            active_connections: Vec::new(),
            primary_connection: root_path(),
            primary_connection_type: String::new(),
            activating_connection: root_path(),
            metered: METERED_UNKNOWN,
            state: NM_STATE_DISCONNECTED,
            connectivity: CONNECTIVITY_NONE,
        };
        let object_manager = ObjectManager {
            registry: shared.registry.clone(),
        };
        if conn
            .object_server()
            .at(NM_OBJECT_MANAGER_PATH, object_manager)
            .await?
            .is_some()
        {
            bail!("the object manager is already exported");
        }
        let nm = FakeNm {
            conn,
            bus_address: shared.bus_address,
            inner: shared.inner,
            network_control: shared.network_control,
            registry: shared.registry,
        };
        nm.export(&OwnedObjectPath::try_from(NM_PATH)?, manager)
            .await?;
        let settings = Settings {
            connections: Vec::new(),
            by_uuid: HashMap::new(),
        };
        nm.export(&OwnedObjectPath::try_from(SETTINGS_PREFIX)?, settings)
            .await?;
        {
            let mut inner = nm.inner.lock().await;
            let first = initial.first().map(|s| s.id.clone());
            for spec in initial {
                nm.activate_locked(&mut inner, spec).await?;
            }
            if let Some(first) = first {
                nm.set_primary_locked(&mut inner, &first).await?;
                inner.connectivity = connectivity;
                nm.update_manager(&inner).await?;
            }
        }
        nm.conn
            .request_name_with_flags(NM_BUS_NAME, fdo::RequestNameFlags::DO_NOT_QUEUE)
            .await
            .with_context(|| format!("owning {NM_BUS_NAME} (is another NM on this bus?)"))?;
        Ok(nm)
    }

    /// The fake's own bus connection (its unique name is NM's owner).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Bring up `spec` as real NM does: the active connection appears with State 1
    /// (activating) in ActiveConnections and ActivatingConnection, its device prepares and
    /// gets its IP4Config, the connection goes to State 2 (activated, with `StateChanged`), and
    /// then it takes the default route: `Default` true (false on the previous primary) and
    /// becomes PrimaryConnection; manager State follows. When it is the first connection up,
    /// Connectivity becomes 4 (full); otherwise Connectivity stays as it was.
    ///
    /// A connection already active on the same interface (VPNs aside) is deactivated first.
    /// Returns the new active connection's object path.
    pub async fn activate(&self, spec: ActiveSpec) -> anyhow::Result<String> {
        let mut inner = self.inner.lock().await;
        let path = self.activate_locked(&mut inner, spec).await?;
        Ok(path.to_string())
    }

    /// Save profile `spec` without activating it (as `nmcli connection add` does); returns its
    /// object path under `/org/freedesktop/NetworkManager/Settings/`. Saving a profile with the
    /// UUID of a saved one updates that one.
    pub async fn add_profile(&self, spec: ActiveSpec) -> anyhow::Result<String> {
        let mut inner = self.inner.lock().await;
        Ok(self.ensure_settings(&mut inner, &spec).await?.to_string())
    }

    /// Whether callers may activate connections (polkit's `network-control`); when false,
    /// `ActivateConnection` fails with `org.freedesktop.NetworkManager.PermissionDenied`.
    pub fn set_network_control(&self, allowed: bool) {
        self.network_control.store(allowed, Ordering::SeqCst);
    }

    /// Take down the active connection `id`: State 3 (deactivating), its default route goes
    /// (PrimaryConnection moves to the most recently activated remaining connection, or "/"),
    /// State 4 (deactivated), it leaves ActiveConnections, and its objects are unexported.
    /// Without connections left, State is 20 and Connectivity 1.
    pub async fn deactivate(&self, id: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        self.deactivate_locked(&mut inner, id).await
    }

    /// Move the default route to the activated connection `id` (as when route metrics change).
    pub async fn set_primary(&self, id: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        self.set_primary_locked(&mut inner, id).await?;
        self.update_manager(&inner).await
    }

    /// Set the manager's Connectivity (1 none, 2 portal, 3 limited, 4 full); State follows.
    pub async fn set_connectivity(&self, value: u32) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        inner.connectivity = value;
        self.update_manager(&inner).await
    }

    /// Set the `Ip4Connectivity` and `Ip6Connectivity` of the device for `interface` (values as
    /// for [`FakeNm::set_connectivity`]), with one PropertiesChanged; the manager's Connectivity
    /// and State stay as they are, as NM 1.42 leaves them when the primary link changes under
    /// a failing check.
    pub async fn set_device_connectivity(
        &self,
        interface: &str,
        ip4: u32,
        ip6: u32,
    ) -> anyhow::Result<()> {
        let inner = self.inner.lock().await;
        let device = inner
            .devices
            .get(interface)
            .ok_or_else(|| anyhow!("no device {interface:?}"))?
            .path
            .clone();
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.ip4_connectivity = ip4;
            d.ip6_connectivity = ip6;
        })
        .await
    }

    /// Mark connection `id` metered (Device.Metered 1) or not (2); the manager's Metered follows
    /// when it is the primary connection.
    pub async fn set_metered(&self, id: &str, metered: bool) -> anyhow::Result<()> {
        self.set_metered_value(id, if metered { METERED_YES } else { METERED_NO })
            .await
    }

    /// Set connection `id`'s `NMMetered` value (0..=4, e.g. [`METERED_GUESS_YES`], which is
    /// what real NM reports for an unconfigured mobile broadband link).
    pub async fn set_metered_value(&self, id: &str, value: u32) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let index = inner.find(id)?;
        inner.actives[index].metered = value;
        let device = inner.actives[index].device.clone();
        update::<Device, _>(&self.conn, device.as_str(), |d| d.metered = value).await?;
        self.update_manager(&inner).await
    }

    /// The object path of active connection `id`, if it is active.
    pub async fn active_path(&self, id: &str) -> Option<String> {
        let inner = self.inner.lock().await;
        inner
            .actives
            .iter()
            .find(|a| a.spec.id == id)
            .map(|a| a.path.to_string())
    }

    /// The object path of the device for `interface`, if one was created.
    pub async fn device_path(&self, interface: &str) -> Option<String> {
        let inner = self.inner.lock().await;
        inner.devices.get(interface).map(|d| d.path.to_string())
    }

    /// The id of the primary connection, if any.
    pub async fn primary_id(&self) -> Option<String> {
        self.inner.lock().await.primary.clone()
    }

    /// The ids of the active connections, in activation order.
    pub async fn active_ids(&self) -> Vec<String> {
        let inner = self.inner.lock().await;
        inner.actives.iter().map(|a| a.spec.id.clone()).collect()
    }

    /// Exit like NM: the connection to the bus closes, so the bus announces that
    /// [`NM_BUS_NAME`] has no owner (NameOwnerChanged). Returns once the name is gone.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _inner = self.inner.lock().await;
        self.conn
            .clone()
            .close()
            .await
            .context("closing the fake NM's bus connection")?;
        let watcher = zbus::connection::Builder::address(self.bus_address.as_str())
            .build()
            .await
            .context("connecting to check that NM's name is gone")?;
        let dbus = fdo::DBusProxy::new(&watcher).await?;
        let name = zbus::names::BusName::try_from(NM_BUS_NAME)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while dbus.name_has_owner(name.clone()).await? {
            if Instant::now() >= deadline {
                bail!("{NM_BUS_NAME} still has an owner 5 s after the fake NM closed");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn update_manager(&self, inner: &Inner) -> anyhow::Result<()> {
        update::<Manager, _>(&self.conn, NM_PATH, |m| inner.apply_to_manager(m)).await
    }

    async fn export<I: Managed>(&self, path: &OwnedObjectPath, object: I) -> anyhow::Result<()> {
        let taken = self
            .conn
            .object_server()
            .at(path.as_str(), object)
            .await
            .with_context(|| format!("exporting {} at {path}", I::name()))?;
        if taken.is_some() {
            bail!("{} is already exported at {path}", I::name());
        }
        registry_lock(&self.registry)
            .entry(path.to_string())
            .or_default()
            .push(I::KIND);
        let mut added = HashMap::new();
        if let Some((name, properties)) = properties_of::<I>(&self.conn, path.as_str()).await {
            added.insert(name, properties);
        }
        let emitter = SignalEmitter::new(&self.conn, NM_OBJECT_MANAGER_PATH)?;
        ObjectManager::interfaces_added(&emitter, path.clone(), added)
            .await
            .with_context(|| format!("emitting InterfacesAdded for {path}"))
    }

    async fn unexport<I: Managed>(&self, path: &OwnedObjectPath) -> anyhow::Result<()> {
        self.conn
            .object_server()
            .remove::<I, _>(path.as_str())
            .await
            .with_context(|| format!("unexporting {} at {path}", I::name()))?;
        {
            let mut registry = registry_lock(&self.registry);
            if let Some(kinds) = registry.get_mut(path.as_str()) {
                kinds.retain(|k| *k != I::KIND);
                if kinds.is_empty() {
                    registry.remove(path.as_str());
                }
            }
        }
        let emitter = SignalEmitter::new(&self.conn, NM_OBJECT_MANAGER_PATH)?;
        ObjectManager::interfaces_removed(&emitter, path.clone(), vec![I::name().to_string()])
            .await
            .with_context(|| format!("emitting InterfacesRemoved for {path}"))
    }

    /// The device for `spec.interface`, created (state disconnected) on first use.
    async fn ensure_device(
        &self,
        inner: &mut Inner,
        spec: &ActiveSpec,
    ) -> anyhow::Result<OwnedObjectPath> {
        if let Some(device) = inner.devices.get(&spec.interface) {
            return Ok(device.path.clone());
        }
        let path = next_path(&NEXT_DEVICE, DEVICE_PREFIX)?;
        let wireless = spec.conn_type == TYPE_WIFI;
        self.export(
            &path,
            Device {
                interface: spec.interface.clone(),
                device_type: spec.device_type(),
                metered: METERED_UNKNOWN,
                ip4_config: root_path(),
                active_connection: root_path(),
                state: DEVICE_STATE_DISCONNECTED,
                state_reason: 0,
                ip4_connectivity: CONNECTIVITY_UNKNOWN,
                ip6_connectivity: CONNECTIVITY_UNKNOWN,
            },
        )
        .await?;
        if wireless {
            self.export(
                &path,
                Wireless {
                    active_access_point: root_path(),
                    access_points: Vec::new(),
                },
            )
            .await?;
        }
        inner.devices.insert(
            spec.interface.clone(),
            DeviceRecord {
                path: path.clone(),
                wireless,
                access_points: Vec::new(),
            },
        );
        inner.device_order.push(path.clone());
        self.update_manager(inner).await?;
        Ok(path)
    }

    /// The access point for `ssid` seen by the wifi device on `interface`.
    async fn ensure_access_point(
        &self,
        inner: &mut Inner,
        interface: &str,
        ssid: &str,
    ) -> anyhow::Result<Option<OwnedObjectPath>> {
        let Some(device) = inner.devices.get_mut(interface) else {
            return Ok(None);
        };
        if !device.wireless {
            return Ok(None);
        }
        let ssid = ssid.as_bytes().to_vec();
        if let Some((_, path)) = device.access_points.iter().find(|(s, _)| *s == ssid) {
            return Ok(Some(path.clone()));
        }
        let path = next_path(&NEXT_AP, AP_PREFIX)?;
        let n = path.as_str().rsplit('/').next().unwrap_or("0").to_owned();
        let n: u32 = n.parse().unwrap_or(0);
        self.export(
            &path,
            AccessPoint {
                ssid: ssid.clone(),
                hw_address: format!("02:00:00:00:{:02X}:{:02X}", (n >> 8) & 0xff, n & 0xff),
            },
        )
        .await?;
        device.access_points.push((ssid, path.clone()));
        let all: Vec<_> = device
            .access_points
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        let device_path = device.path.clone();
        update::<Wireless, _>(&self.conn, device_path.as_str(), |w| {
            w.access_points = all;
        })
        .await?;
        Ok(Some(path))
    }

    async fn ensure_settings(
        &self,
        inner: &mut Inner,
        spec: &ActiveSpec,
    ) -> anyhow::Result<OwnedObjectPath> {
        if let Some(path) = inner.settings.get(&spec.uuid) {
            let path = path.clone();
            update::<SettingsConnection, _>(&self.conn, path.as_str(), |s| s.spec = spec.clone())
                .await?;
            return Ok(path);
        }
        let path = next_path(&NEXT_SETTINGS, SETTINGS_PREFIX)?;
        self.export(&path, SettingsConnection { spec: spec.clone() })
            .await?;
        inner.settings.insert(spec.uuid.clone(), path.clone());
        let (uuid, new) = (spec.uuid.clone(), path.clone());
        update::<Settings, _>(&self.conn, SETTINGS_PREFIX, move |s| {
            s.connections.push(new.clone());
            s.by_uuid.insert(uuid, new);
        })
        .await?;
        Ok(path)
    }

    async fn activate_locked(
        &self,
        inner: &mut Inner,
        spec: ActiveSpec,
    ) -> anyhow::Result<OwnedObjectPath> {
        self.activate_at(inner, spec, None).await
    }

    /// [`FakeNm::activate_locked`] with the active connection's path allocated already.
    async fn activate_at(
        &self,
        inner: &mut Inner,
        spec: ActiveSpec,
        path: Option<OwnedObjectPath>,
    ) -> anyhow::Result<OwnedObjectPath> {
        if inner.actives.iter().any(|a| a.spec.id == spec.id) {
            bail!("{:?} is already active", spec.id);
        }
        let address = spec.address_and_prefix()?;
        if let Some(gateway) = &spec.gateway {
            gateway
                .parse::<Ipv4Addr>()
                .with_context(|| format!("bad IPv4 gateway {gateway:?}"))?;
        }
        // One active connection per device (a VPN rides on top of another one's device).
        if !spec.is_vpn()
            && let Some(other) = inner
                .actives
                .iter()
                .find(|a| a.spec.interface == spec.interface && !a.spec.is_vpn())
        {
            let other = other.spec.id.clone();
            self.deactivate_locked(inner, &other).await?;
        }
        let first_link = !inner.actives.iter().any(ActiveRecord::activated);

        let device = self.ensure_device(inner, &spec).await?;
        let access_point = match &spec.ssid {
            Some(ssid) => {
                self.ensure_access_point(inner, &spec.interface, ssid)
                    .await?
            }
            None => None,
        };
        let settings = self.ensure_settings(inner, &spec).await?;
        let metered = if spec.metered {
            METERED_YES
        } else {
            METERED_NO
        };

        // The active connection appears, activating.
        let path = match path {
            Some(p) => p,
            None => next_path(&NEXT_ACTIVE, ACTIVE_PREFIX)?,
        };
        let ip4 = next_path(&NEXT_IP4, IP4_PREFIX)?;
        self.export(
            &path,
            Active {
                id: spec.id.clone(),
                uuid: spec.uuid.clone(),
                conn_type: spec.conn_type.clone(),
                devices: vec![device.clone()],
                state: ACTIVE_STATE_ACTIVATING,
                default: false,
                ip4_config: root_path(),
                vpn: spec.is_vpn(),
                connection: settings,
                specific_object: access_point.clone().unwrap_or_else(root_path),
            },
        )
        .await?;
        inner.actives.push(ActiveRecord {
            spec: spec.clone(),
            path: path.clone(),
            device: device.clone(),
            ip4: ip4.clone(),
            access_point: access_point.clone(),
            metered,
            state: ACTIVE_STATE_ACTIVATING,
        });
        self.update_manager(inner).await?;
        set_active_state(
            &self.conn,
            path.as_str(),
            ACTIVE_STATE_ACTIVATING,
            ACTIVE_REASON_NONE,
        )
        .await?;

        // The device prepares and gets its IP configuration.
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.active_connection = path.clone();
            d.metered = metered;
            d.state = DEVICE_STATE_PREPARE;
            d.state_reason = 0;
        })
        .await?;
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.state = DEVICE_STATE_IP_CONFIG;
        })
        .await?;
        self.export(
            &ip4,
            Ip4Config {
                address,
                gateway: spec.gateway.clone(),
                domains: spec.domains.clone(),
            },
        )
        .await?;
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.ip4_config = ip4.clone();
            d.state = DEVICE_STATE_ACTIVATED;
        })
        .await?;
        if let Some(ap) = &access_point {
            update::<Wireless, _>(&self.conn, device.as_str(), |w| {
                w.active_access_point = ap.clone();
            })
            .await?;
        }
        update::<Active, _>(&self.conn, path.as_str(), |a| a.ip4_config = ip4.clone()).await?;

        // Activated.
        set_active_state(
            &self.conn,
            path.as_str(),
            ACTIVE_STATE_ACTIVATED,
            ACTIVE_REASON_NONE,
        )
        .await?;
        if let Some(record) = inner.actives.iter_mut().find(|a| a.path == path) {
            record.state = ACTIVE_STATE_ACTIVATED;
        }

        // The policy gives it the default route.
        if first_link {
            inner.connectivity = CONNECTIVITY_FULL;
        }
        self.set_primary_locked(inner, &spec.id).await?;
        self.update_manager(inner).await?;
        Ok(path)
    }

    /// Move `Default` to `id` (and off the previous primary) and record it; the caller
    /// updates the manager.
    async fn set_primary_locked(&self, inner: &mut Inner, id: &str) -> anyhow::Result<()> {
        let index = inner.find(id)?;
        if !inner.actives[index].activated() {
            bail!("{id:?} is not activated, it cannot take the default route");
        }
        if inner.primary.as_deref() == Some(id) {
            return Ok(());
        }
        if let Some(old) = inner.primary_record() {
            let old = old.path.clone();
            update::<Active, _>(&self.conn, old.as_str(), |a| a.default = false).await?;
        }
        let new = inner.actives[index].path.clone();
        update::<Active, _>(&self.conn, new.as_str(), |a| a.default = true).await?;
        inner.primary = Some(id.to_owned());
        Ok(())
    }

    async fn deactivate_locked(&self, inner: &mut Inner, id: &str) -> anyhow::Result<()> {
        let index = inner.find(id)?;
        let path = inner.actives[index].path.clone();
        let device = inner.actives[index].device.clone();
        let ip4 = inner.actives[index].ip4.clone();
        let had_access_point = inner.actives[index].access_point.is_some();

        // Deactivating.
        inner.actives[index].state = ACTIVE_STATE_DEACTIVATING;
        set_active_state(
            &self.conn,
            path.as_str(),
            ACTIVE_STATE_DEACTIVATING,
            ACTIVE_REASON_USER_DISCONNECTED,
        )
        .await?;
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.state = DEVICE_STATE_DEACTIVATING;
            d.state_reason = 39; // NM_DEVICE_STATE_REASON_USER_REQUESTED
        })
        .await?;

        // The default route goes with it.
        if inner.primary.as_deref() == Some(id) {
            update::<Active, _>(&self.conn, path.as_str(), |a| a.default = false).await?;
            inner.primary = None;
            let next = inner
                .actives
                .iter()
                .rev()
                .find(|a| a.activated())
                .map(|a| a.spec.id.clone());
            if let Some(next) = next {
                self.set_primary_locked(inner, &next).await?;
            }
        }
        if !inner.actives.iter().any(ActiveRecord::activated) {
            inner.connectivity = CONNECTIVITY_NONE;
        }
        self.update_manager(inner).await?;

        // The device lets go.
        update::<Active, _>(&self.conn, path.as_str(), |a| a.ip4_config = root_path()).await?;
        update::<Device, _>(&self.conn, device.as_str(), |d| {
            d.ip4_config = root_path();
            d.active_connection = root_path();
            d.metered = METERED_UNKNOWN;
            d.state = DEVICE_STATE_DISCONNECTED;
        })
        .await?;
        if had_access_point {
            update::<Wireless, _>(&self.conn, device.as_str(), |w| {
                w.active_access_point = root_path();
            })
            .await?;
        }

        // Deactivated, removed, unexported.
        set_active_state(
            &self.conn,
            path.as_str(),
            ACTIVE_STATE_DEACTIVATED,
            ACTIVE_REASON_USER_DISCONNECTED,
        )
        .await?;
        inner.actives.remove(index);
        self.update_manager(inner).await?;
        self.unexport::<Active>(&path).await?;
        self.unexport::<Ip4Config>(&ip4).await?;
        Ok(())
    }
}
