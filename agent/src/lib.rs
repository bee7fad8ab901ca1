//! linkrelayd: follows the network link and flushes each user's outbox through the SMTP relay
//! that matches it.
//!
//! Data flows one way: link source ([`nm`] or [`netlink`], chosen by [`source`]) ->
//! [`link::LinkState`] -> [`router::route`] (pure)
//! -> per-user [`flusher`]s -> [`outcome`]s -> outbox state and D-Bus ([`service`]). The event
//! loop in [`agent`] owns all state.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod delivery;
pub mod lifecycle;
pub mod logging;
pub mod router;
pub mod service;
pub mod source;
