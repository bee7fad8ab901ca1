//! Stage three of the data flow: delivery. Each user's [`flusher`] task takes the route the
//! router decided, walks the user's outbox in order and hands each message to an [`smtp`]
//! session, records every outcome durably and reports it to the event loop as a
//! [`flusher::FlushEvent`].
//!
//! The decisions are pure and tested on their own: what a relay's bytes are as a reply,
//! within bounds ([`reply`]), what a reply means ([`outcome`]), when to try again
//! ([`backoff`]), whether a password may go in clear ([`plaintext`]), what a TLS failure
//! means to the user ([`tls_hint`]), and which verdicts change a message ([`flusher`]'s
//! `apply_verdicts`). The rest is I/O at the edge: the SMTP session and the connection under
//! it ([`wire`]: TCP, TLS, replies read with bounds, the data written a piece at a time as
//! [`message`] reads it from its file), the password sources ([`credentials`]), the relay
//! memory's file ([`memory`]) and the inotify watch that wakes a flusher when mail arrives
//! ([`dropwatch`]).

pub(crate) mod backoff;
pub(crate) mod credentials;
pub(crate) mod dropwatch;
pub(crate) mod flusher;
pub(crate) mod memory;
pub(crate) mod message;
pub(crate) mod outcome;
pub(crate) mod plaintext;
pub(crate) mod reply;
pub(crate) mod sasl;
pub(crate) mod smtp;
pub(crate) mod tls_hint;
pub(crate) mod tokens;
pub(crate) mod wire;
