//! `org.freedesktop.NetworkManager.Connection.Active`.

use zbus::{OwnedObjectPath, proxy};

/// An active connection: a profile applied to a device.
#[proxy(
    interface = "org.freedesktop.NetworkManager.Connection.Active",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait ActiveConnection {
    /// The profile's name (`connection.id`), e.g. "ISP-A" or "Home wifi".
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;

    /// The profile's UUID.
    #[zbus(property)]
    fn uuid(&self) -> zbus::Result<String>;

    /// The profile's type, e.g. "802-3-ethernet", "802-11-wireless", "vpn", "gsm".
    #[zbus(property, name = "Type")]
    fn connection_type(&self) -> zbus::Result<String>;

    /// The devices it runs on.
    #[zbus(property)]
    fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// `NMActiveConnectionState`: 1 activating, 2 activated, 3 deactivating, 4 deactivated.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<u32>;

    /// Whether it holds the IPv4 default route.
    #[zbus(property)]
    fn default(&self) -> zbus::Result<bool>;

    /// Its IPv4 configuration object ("/" when none).
    #[zbus(property)]
    fn ip4_config(&self) -> zbus::Result<OwnedObjectPath>;

    /// The saved profile it was activated from (`...Settings/<n>`).
    #[zbus(property)]
    fn connection(&self) -> zbus::Result<OwnedObjectPath>;

    /// Whether it is a VPN.
    #[zbus(property)]
    fn vpn(&self) -> zbus::Result<bool>;

    /// Emitted when the state changes (besides PropertiesChanged).
    #[zbus(signal, name = "StateChanged")]
    fn state_changed_signal(&self, state: u32, reason: u32) -> zbus::Result<()>;
}
