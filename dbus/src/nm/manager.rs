//! `org.freedesktop.NetworkManager` at `/org/freedesktop/NetworkManager`.

use zbus::{OwnedObjectPath, proxy};

/// The NetworkManager manager object.
#[proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager"
)]
pub trait NetworkManager {
    /// The active connection that holds the default route, or "/" when there is none.
    #[zbus(property)]
    fn primary_connection(&self) -> zbus::Result<OwnedObjectPath>;

    /// Every active connection.
    #[zbus(property)]
    fn active_connections(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// `NMState`: 20 disconnected, 50 local, 60 site, 70 global.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<u32>;

    /// `NMConnectivityState`, see [`super::Connectivity`].
    #[zbus(property)]
    fn connectivity(&self) -> zbus::Result<u32>;

    /// `NMMetered` of the primary connection's device.
    #[zbus(property)]
    fn metered(&self) -> zbus::Result<u32>;

    /// NetworkManager's version string.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// Activates a saved connection on a device (both may be "/" to let NM choose).
    fn activate_connection(
        &self,
        connection: &zbus::ObjectPath<'_>,
        device: &zbus::ObjectPath<'_>,
        specific_object: &zbus::ObjectPath<'_>,
    ) -> zbus::Result<OwnedObjectPath>;
}
