//! Stage one of the data flow: the link. A source watches the network (NetworkManager over the
//! system bus, or the kernel over netlink) and publishes what is up as whole [`link::LinkState`]
//! snapshots on a watch channel, which the event loop reads. Not pure: every source talks to the
//! system; the one decision here, which interface carries the default route
//! ([`netlink::choose`]), is a pure function of what netlink read, tested on its own.
//!
//! - [`choose`]: which source runs (`[agent] source`: networkmanager, netlink or auto).
//! - [`nm`], [`netlink`]: the two sources.
//! - [`link`]: what they report.
//! - [`debounce`]: when a new report applies (pure).

pub(crate) mod choose;
pub(crate) mod debounce;
pub(crate) mod link;
pub(crate) mod netlink;
pub(crate) mod nm;

pub(crate) use choose::start;
