//! `org.freedesktop.NetworkManager.AccessPoint`.

use zbus::proxy;

/// A wifi access point.
#[proxy(
    interface = "org.freedesktop.NetworkManager.AccessPoint",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait AccessPoint {
    /// The SSID, as raw bytes (not always UTF-8).
    #[zbus(property)]
    fn ssid(&self) -> zbus::Result<Vec<u8>>;
}
