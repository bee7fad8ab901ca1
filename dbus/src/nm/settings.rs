//! `org.freedesktop.NetworkManager.Settings` and `...Settings.Connection`: the saved profiles.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant, proxy};

/// The saved connection profiles, at `/org/freedesktop/NetworkManager/Settings`.
#[proxy(
    interface = "org.freedesktop.NetworkManager.Settings",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager/Settings"
)]
pub trait Settings {
    /// Every saved profile the caller may see.
    fn list_connections(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// One saved profile.
#[proxy(
    interface = "org.freedesktop.NetworkManager.Settings.Connection",
    default_service = "org.freedesktop.NetworkManager"
)]
pub trait SettingsConnection {
    /// The profile's settings, by setting name ("connection", "802-11-wireless", "ipv4", ...)
    /// then key; secrets are left out.
    fn get_settings(&self) -> zbus::Result<HashMap<String, HashMap<String, OwnedVariant>>>;
}
