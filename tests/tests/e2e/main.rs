//! End-to-end tests: the real `linkrelayd` and `linkrelay` binaries over private dbus-daemons,
//! against an NM-shaped service and real SMTP servers (our scripted relay, Postfix's smtp-sink).
//!
//! One test binary (as ripgrep does), one module per area.

// A failed unwrap in a test is a failed test, with the location; that is what we want here.
#![allow(clippy::unwrap_used)]

mod cli;
mod connect;
mod dbus_api;
mod delivery;
mod desktop;
mod durability;
mod faults;
mod files;
mod hostile;
mod hostile_local;
mod interop;
mod listener;
mod listener_clients;
mod listing;
mod netlink;
mod nm_source;
mod notify;
mod oauth_delivery;
mod oauth_login;
mod reload;
mod routes;
mod secrets;
mod seed;
mod sendmail_modes;
mod setup;
mod test_relay;
mod tls;
mod waits;

/// Shared helpers for the modules.
mod util;
