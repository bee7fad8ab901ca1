//! `org.freedesktop.NetworkManager.Device.Wireless`.

use zbus::{OwnedObjectPath, proxy};

/// The wifi side of a device.
#[proxy(
    interface = "org.freedesktop.NetworkManager.Device.Wireless",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait Wireless {
    /// The access point in use, "/" when none.
    #[zbus(property)]
    fn active_access_point(&self) -> zbus::Result<OwnedObjectPath>;
}
