//! The SMTP submission dialogue, without I/O: what the agent's listener (loopback TCP and a
//! unix socket) and `sendmail -bs` (stdin and stdout) both speak.
//!
//! A [`Session`] takes the bytes a client sends ([`Session::input`]) and writes the replies
//! ([`Session::output`]); [`Session::next`] says what the I/O around it does next: read more,
//! make a complete message durable ([`Step::Submit`], answered with [`Session::committed`]),
//! or close. The I/O keeps the time limits (per command, and for the whole DATA phase) and
//! the number of sessions; everything else is decided here and tested as a table.
//!
//! What it offers: PIPELINING, SIZE (the configured limit), 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, DSN (`RET`, `ENVID`, `NOTIFY`, `ORCPT`, stored with the message), and
//! AUTH PLAIN (needed only when the kernel cannot tell who the peer is, see [`Peer`]). Not
//! offered: STARTTLS (the listener is local only), CHUNKING, BINARYMIME.
//!
//! Hostile input gets a reply and never more memory than the caps ([`Limits`]) allow: a
//! command line longer than `max_line` is dropped as it arrives; data past
//! `max_message_size` is counted, not kept; a bare CR or LF (SMTP smuggling) or a NUL in the
//! data refuses the message, and only `CR LF . CR LF` ends it; an HTTP request (a web page
//! aiming the browser at the port) closes the session at its first line; `max_errors`
//! refused commands close it too.

mod command;
mod data;
mod session;

pub use session::{Committed, Limits, Peer, Policy, Session, Step, Submission};

#[cfg(test)]
mod tests;
