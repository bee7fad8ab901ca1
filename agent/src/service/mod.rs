//! The last stage of the data flow, where the agent meets its users: the
//! `org.linkrelay.Agent1` D-Bus interface ([`interface`], a thin shim that turns calls into
//! commands for the event loop and reads properties from the snapshot the loop publishes),
//! queue listings walked off the loop ([`listing`]), desktop notifications ([`notify`]),
//! pruning of sent mail ([`prune`]), `TestRelay` ([`relaytest`]) and why each user's mail waits
//! ([`waits`]). Not pure: all of it is D-Bus or file I/O, and every decision
//! stays with the event loop.

pub(crate) mod interface;
pub(crate) mod listing;
pub(crate) mod notify;
pub(crate) mod prune;
pub(crate) mod relaytest;
pub(crate) mod waits;
