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
pub mod backoff;
pub mod dropwatch;
pub mod flusher;
pub mod lifecycle;
pub mod link;
pub mod listing;
pub mod logging;
pub mod memory;
pub mod netlink;
pub mod nm;
pub mod notify;
pub mod outcome;
pub mod password;
pub mod plaintext;
pub mod relaytest;
pub mod router;
pub mod secrets;
pub mod service;
pub mod smtp;
pub mod source;
pub mod tls_hint;
