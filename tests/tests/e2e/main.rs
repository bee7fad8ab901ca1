//! End-to-end tests: the real `linkrelayd` and `linkrelay` binaries over private dbus-daemons,
//! against an NM-shaped service and real SMTP servers (our scripted relay, Postfix's smtp-sink).
//!
//! One test binary (as ripgrep does), one module per area.

// Tests and their helpers may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod cli;
mod dbus_api;
mod files;
mod interop;
mod secrets;
mod seed;
mod tls;

/// Shared helpers for the modules.
mod util;
