//! linkrelay's per-user durable outbox, shared by the agent (`linkrelayd`) and the CLI's
//! sendmail mode.
//!
//! Layout of an outbox (`$XDG_DATA_HOME/linkrelay/<user>/`, directories 0700, files 0600):
//!
//! ```text
//! tmp/                    work area; anything here is garbage after a crash
//! new/                    Maildir-style drop for mail clients, see Outbox::ingest_new
//! incoming/.spool         messages submitted while an agent runs, appended (Outbox::submit)
//! incoming/<id>           one file per message, from a sendmail that found no spool
//! queue/<id>/message.eml  the message bytes, never changed after enqueue
//! queue/<id>/state.json   envelope and delivery state (MessageState), replaced atomically
//! journal                 the agent's outcome journal (see Journal), usually short
//! sent/<id>/              every recipient done, at least one delivered
//! failed/<id>/            the message is bad or its lifetime ran out; state.json says why
//! ```
//!
//! A message is queued if and only if `queue/<id>/` exists: [`Outbox::enqueue`] builds the
//! directory in `tmp/`, fsyncs it, and renames it into `queue/`.
//!
//! The [`sendmail`] module holds the pure part of sendmail mode: the command line and the
//! turning of a piped-in message into an [`Envelope`] and the bytes to queue.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent_lock;
pub mod dsn;
mod error;
mod fsutil;
mod id;
mod incoming;
mod journal;
mod limits;
pub mod mailq;
mod outbox;
mod prune;
mod scan;
pub mod sendmail;
mod spool;
mod state;
pub mod submission;
pub mod token;

pub use agent_lock::{AGENT_LOCK, AgentLock, LockError, Owner, holder};
pub use error::OutboxError;
pub use fsutil::replace_file;
pub use id::validate_id;
pub use journal::{CHECKPOINT_EVERY, Journal, Replayed};
pub use limits::{JOURNAL_MAX, Limits, STATE_MAX};
pub use outbox::{Ingested, Outbox};
pub use prune::Pruned;
pub use scan::FolderReader;
pub use state::{Counts, Envelope, Folder, MessageState, RecipientState, RecipientStatus};

#[cfg(test)]
mod incoming_tests;
#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod spool_tests;
