//! The D-Bus service.
pub mod interface;
pub mod listing;
pub mod notify;
pub mod relaytest;
