//! `org.freedesktop.NetworkManager.Device`.

use zbus::{OwnedObjectPath, proxy};

/// A network device.
#[proxy(
    interface = "org.freedesktop.NetworkManager.Device",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait Device {
    /// The kernel interface name, e.g. "wlp2s0".
    #[zbus(property)]
    fn interface(&self) -> zbus::Result<String>;

    /// The interface that carries IP (differs for ppp/modems), "" when none.
    #[zbus(property)]
    fn ip_interface(&self) -> zbus::Result<String>;

    /// `NMDeviceType`: 1 ethernet, 2 wifi, ...
    #[zbus(property)]
    fn device_type(&self) -> zbus::Result<u32>;

    /// `NMMetered` of this device.
    #[zbus(property)]
    fn metered(&self) -> zbus::Result<u32>;

    /// Its IPv4 configuration object ("/" when none).
    #[zbus(property)]
    fn ip4_config(&self) -> zbus::Result<OwnedObjectPath>;

    /// `NMConnectivityState` of the device's IPv4 (NM >= 1.16).
    #[zbus(property)]
    fn ip4_connectivity(&self) -> zbus::Result<u32>;

    /// `NMConnectivityState` of the device's IPv6 (NM >= 1.16).
    #[zbus(property)]
    fn ip6_connectivity(&self) -> zbus::Result<u32>;
}

/// `NMDeviceType` of a wifi device.
pub const DEVICE_TYPE_WIFI: u32 = 2;
