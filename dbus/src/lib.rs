//! D-Bus pieces shared by the linkrelay agent and its CLI.
//!
//! - [`address`]: where the session and system buses are, as clients find them.
//! - [`nm`]: client proxies for the parts of NetworkManager's API the agent reads (one module
//!   per interface, so their generated signal types never clash).
//! - [`notifications`]: the client proxy of the desktop's notification service.
//! - [`secrets`]: client proxies for the Secret Service (the desktop keyring), one module per
//!   interface.
//! - [`agent`]: the client proxy of our own `org.linkrelay.Agent1` interface, the wire types its
//!   properties, methods and signals carry, and its error names. The agent serves the same
//!   interface; `org.linkrelay.Agent1.xml` beside this crate is the checked-in introspection
//!   data, compared with what the agent serves by a test.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod address;
pub mod agent;
pub mod nm;
pub mod notifications;
pub mod secrets;
