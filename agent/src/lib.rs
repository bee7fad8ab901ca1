//! linkrelayd: follows the network link and flushes each user's outbox through the SMTP relay
//! that matches it.
//!
//! Data flows one way, and the folders follow it:
//!
//! ```text
//! source/    the link (NetworkManager | netlink)  -> LinkState
//! router.rs  route(config, link, override)         -> each user's Route     (pure)
//! delivery/  one flusher per user: SMTP sessions   -> outcomes, outbox state
//! service/   D-Bus interface, listings, notifications, TestRelay
//! submission/ a way in: the SMTP submission listener -> the user's outbox
//! ```
//!
//! The event loop (`agent.rs`) owns all state and is the only path between the stages:
//! `lifecycle.rs` tells systemd about it, `logging.rs` sets up its logs, `clock.rs` is its one
//! wall clock.
//!
//! The library serves `linkrelayd` (`main.rs`) and the tests: it exports the agent's entry
//! point ([`run`]), [`logging`], and the netlink link source ([`NetlinkWatcher`],
//! [`LinkState`]), which a test drives inside a network namespace.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub(crate) mod agent;
pub(crate) mod clock;
pub(crate) mod delivery;
pub(crate) mod lifecycle;
pub mod logging;
pub(crate) mod router;
pub(crate) mod service;
pub(crate) mod source;
pub(crate) mod submission;

pub use agent::{Options, RunError, ServeBus, run};
pub use source::link::{Link, LinkState, SourceName};
pub use source::netlink::{NetlinkError, Watcher as NetlinkWatcher};
