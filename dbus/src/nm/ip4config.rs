//! `org.freedesktop.NetworkManager.IP4Config`.

use std::collections::HashMap;

use zbus::{OwnedVariant, proxy};

/// IPv4 configuration of a device or active connection.
#[proxy(
    interface = "org.freedesktop.NetworkManager.IP4Config",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait Ip4Config {
    /// The addresses: one dict each, with "address" (s) and "prefix" (u).
    #[zbus(property)]
    fn address_data(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;

    /// The default gateway, "" when none.
    #[zbus(property)]
    fn gateway(&self) -> zbus::Result<String>;

    /// DNS domains of this configuration.
    #[zbus(property)]
    fn domains(&self) -> zbus::Result<Vec<String>>;

    /// DNS search domains.
    #[zbus(property)]
    fn searches(&self) -> zbus::Result<Vec<String>>;
}
