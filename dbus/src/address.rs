//! Where the buses are, as D-Bus clients find them: the agent records the address of the bus
//! it serves on (in its data directory's lock), and the CLI compares it with its own.

/// The session bus address: `DBUS_SESSION_BUS_ADDRESS`, else the user's bus socket in
/// `XDG_RUNTIME_DIR` (or `/run/user/UID`).
pub fn session_bus_address() -> String {
    std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|_| {
        let runtime = std::env::var("XDG_RUNTIME_DIR")
            .unwrap_or_else(|_| format!("/run/user/{}", rustix::process::geteuid().as_raw()));
        format!("unix:path={runtime}/bus")
    })
}

/// The system bus address: `DBUS_SYSTEM_BUS_ADDRESS`, else the well-known socket.
pub fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".into())
}
