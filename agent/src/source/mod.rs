//! The link source.
pub mod choose;
pub mod link;
pub mod netlink;
pub mod nm;
