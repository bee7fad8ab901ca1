//! A way in, beside the outbox's inotify watch (`delivery/dropwatch.rs`): the SMTP submission
//! listener, where mail clients that speak only SMTP (Thunderbird, Evolution, Geary, KMail,
//! msmtp, scripts) hand mail to linkrelay, on loopback TCP (`[submission] listen`) and on a
//! private unix socket (`$XDG_RUNTIME_DIR/linkrelay/submission.sock`).
//!
//! Its data flows into the same place as every other way in, the user's outbox: [`listener`]
//! accepts a client and asks the kernel who it is ([`peer`]: `SO_PEERCRED`, or
//! `NETLINK_SOCK_DIAG` for loopback TCP); [`session`] runs the dialogue (the pure
//! `linkrelay_outbox::submission`, which decides every reply) under its time limits; [`commit`]
//! makes each complete message durable with the messages of other sessions (group commit)
//! before the session answers 250. The flusher then finds the mail as it finds sendmail's.
//!
//! Pure: the dialogue (in the outbox crate) and [`peer::classify`]. The rest is socket and
//! disk I/O.

pub(crate) mod commit;
pub(crate) mod listener;
pub(crate) mod peer;
pub(crate) mod session;

pub(crate) use listener::Listener;
